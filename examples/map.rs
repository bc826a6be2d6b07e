//! The distributed map of the Gearman demo, and map/reduce as a map plus a local fold.
//!
//! Squares the numbers 1..=N on every available `square` worker, gets the squares back in input
//! order, and sums them locally. With `--workers K` the example also runs K worker sessions
//! itself, so it works against an empty server:
//!
//! ```text
//! cargo run --release --example map -- --servers 127.0.0.1:4730 --items 10000 --workers 4
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use gearshift::client::{Client, MapOptions, WorkError, Worker, WorkerOptions};

/// Distributed map/reduce over Gearman.
#[derive(Parser)]
struct Args {
    /// Job servers, host:port separated by commas.
    #[arg(long, default_value = "127.0.0.1:4730")]
    servers: String,
    /// How many numbers to square.
    #[arg(long, default_value_t = 1000)]
    items: u64,
    /// Also run this many `square` worker sessions in this process.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Resubmissions of a failed item.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Jobs in flight at once.
    #[arg(long, default_value_t = 1000)]
    in_flight: usize,
}

/// The job function: the square of a decimal number.
fn square(data: &[u8]) -> Result<Vec<u8>, WorkError> {
    let n: u64 = std::str::from_utf8(data)?.trim().parse()?;
    let sq = n
        .checked_mul(n)
        .ok_or_else(|| WorkError::fail(format!("{n} squared overflows")))?;
    Ok(sq.to_string().into_bytes())
}

fn main() -> Result<(), gearshift::client::Error> {
    env_logger::init();
    let args = Args::parse();
    let mut stop = None;
    if args.workers > 0 {
        let mut options = WorkerOptions::default();
        options.concurrency = args.workers;
        let mut worker = Worker::with_options([args.servers.as_str()], options)?;
        worker.register("square", |job| square(job.data()));
        stop = Some(worker.stop_handle());
        std::thread::spawn(move || worker.run());
    }

    let mut client = Client::new([args.servers.as_str()])?;
    let mut options = MapOptions::with_retries(args.retries);
    options.timeout = Some(Duration::from_secs(30));
    options.max_in_flight = args.in_flight;
    let started = Instant::now();
    let items: Vec<String> = (1..=args.items).map(|n| n.to_string()).collect();
    // Map: one job per item, results in input order.
    let squares = client.map("square", &items, &options)?;
    // Reduce: locally.
    let sum: u128 = squares
        .iter()
        .map(|s| String::from_utf8_lossy(s).parse::<u128>().unwrap_or(0))
        .sum();
    let n = args.items as u128;
    assert_eq!(sum, n * (n + 1) * (2 * n + 1) / 6, "sum of squares");
    println!(
        "sum of squares of 1..={} = {sum} ({} jobs in {:.2?})",
        args.items,
        squares.len(),
        started.elapsed()
    );
    if let Some(stop) = stop {
        stop.stop();
    }
    Ok(())
}
