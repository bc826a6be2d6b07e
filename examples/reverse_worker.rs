//! The worker half of Gearman's introductory example: registers `reverse`, which returns its
//! input reversed, and serves it until interrupted.
//!
//! ```text
//! cargo run --example reverse_worker -- --servers 127.0.0.1:4730
//! cargo run --example reverse_client -- --servers 127.0.0.1:4730 "Hello World!"
//! ```

use clap::Parser;
use gearshift::client::{Worker, WorkerOptions};

/// Serves the `reverse` function.
#[derive(Parser)]
struct Args {
    /// Job servers, host:port separated by commas.
    #[arg(long, default_value = "127.0.0.1:4730")]
    servers: String,
    /// Jobs run at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Exit after this many jobs.
    #[arg(long)]
    count: Option<u64>,
}

fn main() -> Result<(), gearshift::client::Error> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let mut options = WorkerOptions::default();
    options.concurrency = args.concurrency;
    options.max_jobs = args.count;
    options.client_id = Some(format!("reverse_worker-{}", std::process::id()));
    let mut worker = Worker::with_options([args.servers.as_str()], options)?;
    worker.register("reverse", |job| {
        let text = String::from_utf8_lossy(job.data()).into_owned();
        log::info!("reversing {text:?}");
        // Report progress, as the C example's worker can.
        job.send_status(1, 1)?;
        Ok(text.chars().rev().collect::<String>().into_bytes())
    });
    worker.run()
}
