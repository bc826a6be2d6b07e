//! The client half of Gearman's introductory example: asks a `reverse` worker to reverse each
//! argument (or "Hello World!") and prints the result.
//!
//! ```text
//! cargo run --example reverse_client -- --servers 127.0.0.1:4730 "Hello World!"
//! Result: !dlroW olleH
//! ```

use std::time::Duration;

use clap::Parser;
use gearshift::client::{Client, ClientOptions, Event, Job};

/// Reverses text on a Gearman worker.
#[derive(Parser)]
struct Args {
    /// Job servers, host:port separated by commas.
    #[arg(long, default_value = "127.0.0.1:4730")]
    servers: String,
    /// Submit as a background job (prints the handle only).
    #[arg(long)]
    background: bool,
    /// Seconds to wait for each result.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Text to reverse; each argument is one job, all in flight at once.
    text: Vec<String>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reverse_client: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), gearshift::client::Error> {
    let mut options = ClientOptions::default();
    options.timeout = Duration::from_secs(args.timeout);
    let mut client = Client::with_options([args.servers.as_str()], options)?;
    let texts = if args.text.is_empty() {
        vec!["Hello World!".to_string()]
    } else {
        args.text
    };
    if args.background {
        for t in texts {
            let handle = client.submit_background(Job::new("reverse", t))?;
            println!("Job handle: {handle}");
        }
        return Ok(());
    }
    // Submit everything, then print results in input order as they complete.
    let tasks = texts
        .iter()
        .map(|t| client.submit(Job::new("reverse", t.as_str())))
        .collect::<Result<Vec<_>, _>>()?;
    for task in tasks {
        let out = client.wait_with(task, Duration::from_secs(args.timeout), |ev| {
            if let Event::Status {
                numerator,
                denominator,
                ..
            } = ev
            {
                eprintln!("Status: {numerator}/{denominator}");
            }
        })?;
        println!("Result: {}", String::from_utf8_lossy(&out.data));
    }
    Ok(())
}
