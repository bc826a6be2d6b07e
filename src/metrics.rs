//! Prometheus metrics (`--metrics-port`): what the shards count, the snapshots a scrape
//! gathers, and the text format they render to. No I/O, no locks.
//!
//! Each shard counts in plain fields that it alone writes: its owner role per function
//! ([`FunctionCounters`]) and in three [`Histogram`]s (queue wait, run time, foreground round
//! trip), its home role in [`HomeCounters`]. Nothing is shared on the job path. A scrape is a
//! connection to the metrics port on some shard, which asks every shard's owner and home
//! role for a snapshot by message (as the `status` listing does), merges the parts and renders
//! them with [`render`]. The store thread keeps its own figures in [`StoreCounters`]
//! (atomics it alone writes, read by the scrape).
//!
//! Per-function series are capped (`--metrics-max-functions`): the functions created first
//! get their own series, the rest are summed into `function="_other"`. Creation order keeps the
//! choice stable from scrape to scrape (only dropping a function changes it), so the `_other`
//! counters do not jump when a new function appears.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the histogram buckets, in milliseconds (the job stamps' resolution).
pub const BUCKETS_MS: [u32; 18] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
    1_800_000, 3_600_000,
];

/// The label value of the series that sums the functions past the cap.
pub const OTHER: &str = "_other";

/// A Prometheus histogram over [`BUCKETS_MS`] (one count per bucket, not cumulative; the last
/// is +Inf), with the sum of the observations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket; index `BUCKETS_MS.len()` is past the last bound.
    pub counts: [u64; BUCKETS_MS.len() + 1],
    /// Sum of the observations, milliseconds.
    pub sum_ms: u64,
}

impl Histogram {
    /// Records one duration of `ms` milliseconds.
    #[inline]
    pub fn observe(&mut self, ms: u32) {
        let i = BUCKETS_MS.partition_point(|&b| b < ms);
        self.counts[i] += 1;
        self.sum_ms += ms as u64;
    }

    /// Adds another histogram's observations to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_ms += other.sum_ms;
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What an owner counts per function: jobs by what happened to them. Counters only grow
/// (until the function is dropped with `drop function`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FunctionCounters {
    /// Submissions that made a job (not coalesced, not refused).
    pub submitted: u64,
    /// Submissions coalesced onto an existing job (§3.3).
    pub coalesced: u64,
    /// Jobs ended with WORK_COMPLETE.
    pub completed: u64,
    /// Jobs ended with WORK_FAIL, or dropped at the `--job-retries` limit.
    pub failed: u64,
    /// Jobs ended with WORK_EXCEPTION.
    pub exceptions: u64,
    /// Jobs removed by `cancel job`.
    pub cancelled: u64,
    /// Jobs put back on their queue after their worker was lost (or timed out).
    pub requeued: u64,
    /// Wakes (default wake-ups only) whose worker had not asked within `--wake-retry-ms`, so
    /// another sleeper was woken in its place.
    pub wake_retries: u64,
}

impl FunctionCounters {
    fn add(&mut self, o: &FunctionCounters) {
        self.submitted += o.submitted;
        self.coalesced += o.coalesced;
        self.completed += o.completed;
        self.failed += o.failed;
        self.exceptions += o.exceptions;
        self.cancelled += o.cancelled;
        self.requeued += o.requeued;
        self.wake_retries += o.wake_retries;
    }
}

/// One function's figures in a snapshot.
#[derive(Clone, Debug, Default)]
pub struct FunctionStats {
    /// Its name (empty for the sum of the functions past the cap).
    pub name: Box<[u8]>,
    /// When it was created (the process-wide stamp `status` sorts by): the cap keeps the
    /// oldest.
    pub created: u64,
    /// Queued jobs per priority (high, normal, low); epoch jobs not yet due count as normal,
    /// as in `prioritystatus`.
    pub queued: [u64; 3],
    /// Running jobs.
    pub running: u64,
    /// Worker entries (duplicates count, as in `status`).
    pub workers: u64,
    /// Age of the oldest queued job, milliseconds (0 with none queued).
    pub oldest_ms: u64,
    /// The counters.
    pub counters: FunctionCounters,
}

impl FunctionStats {
    /// Adds `o` into this one (gauges and counters summed, the oldest age kept).
    pub fn add(&mut self, o: &FunctionStats) {
        for (a, b) in self.queued.iter_mut().zip(&o.queued) {
            *a += b;
        }
        self.running += o.running;
        self.workers += o.workers;
        self.oldest_ms = self.oldest_ms.max(o.oldest_ms);
        self.counters.add(&o.counters);
    }
}

/// Error packets (or error lines) sent, by code; a handful of codes, so a list.
#[derive(Clone, Debug, Default)]
pub struct ErrorCounts(pub Vec<(Box<str>, u64)>);

impl ErrorCounts {
    /// Counts one error with `code`.
    pub fn add(&mut self, code: &str) {
        self.add_n(code, 1);
    }

    fn add_n(&mut self, code: &str, n: u64) {
        match self.0.iter_mut().find(|(c, _)| &**c == code) {
            Some((_, count)) => *count += n,
            None => self.0.push((code.into(), n)),
        }
    }

    fn merge(&mut self, o: &ErrorCounts) {
        for (code, n) in &o.0 {
            self.add_n(code, *n);
        }
    }
}

/// An owner's part of a scrape.
#[derive(Clone, Debug, Default)]
pub struct OwnerSnapshot {
    /// Its oldest functions, at most the cap, each with its own figures.
    pub functions: Vec<FunctionStats>,
    /// The sum of its other functions.
    pub other: FunctionStats,
    /// How many functions `other` sums.
    pub other_count: u64,
    /// Submission to assignment.
    pub queue_wait: Histogram,
    /// Assignment to the job's end.
    pub run_time: Histogram,
    /// Submission to the end of a foreground job that a client waited for.
    pub round_trip: Histogram,
    /// Jobs held, in any state.
    pub jobs: u64,
    /// Background submissions waiting for the store to make them durable.
    pub store_backlog: u64,
    /// Error packets the owner sent (QUEUE_ERROR, JOB_NOT_FOUND).
    pub errors: ErrorCounts,
}

/// The role of a connection, for `gearshiftd_connections`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Anything that registered no function: clients and admin connections.
    Client,
    /// Registered at least one function.
    Worker,
    /// A connection to the HTTP port.
    Http,
    /// A connection to the metrics port.
    Metrics,
}

impl Role {
    /// Every role, in index order.
    pub const ALL: [Role; 4] = [Role::Client, Role::Worker, Role::Http, Role::Metrics];

    fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Http => "http",
            Role::Metrics => "metrics",
        }
    }
}

/// What a home counts as it reads and writes; only its shard writes them.
#[derive(Clone, Debug, Default)]
pub struct HomeCounters {
    /// Bytes read from connections (plaintext, for TLS).
    pub bytes_in: u64,
    /// Bytes written to connections (plaintext, for TLS).
    pub bytes_out: u64,
    /// Connections accepted by this shard (the accepting shard).
    pub accepted: u64,
    /// Error packets and error lines the home sent, by code.
    pub errors: ErrorCounts,
    /// Nanoseconds the loop spent outside `poll` (working).
    pub busy_ns: u64,
}

/// A home's part of a scrape.
#[derive(Clone, Debug, Default)]
pub struct HomeSnapshot {
    /// The shard.
    pub shard: u16,
    /// Its counters.
    pub counters: HomeCounters,
    /// Connections it holds, by [`Role`] index.
    pub connections: [u64; 4],
    /// Messages waiting in its inbound rings.
    pub ring_messages: u64,
    /// The fullest inbound ring's fill, 0 to 1.
    pub ring_occupancy: f64,
    /// Messages waiting in its outboxes for room in a full ring.
    pub outbox_messages: u64,
}

/// The store thread's figures, atomics written by that thread only.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Transactions written (successfully or not).
    pub transactions: AtomicU64,
    /// Changes (adds and deletes) written successfully.
    pub changes: AtomicU64,
    /// Transactions that failed (their jobs were refused with QUEUE_ERROR).
    pub failures: AtomicU64,
    /// Commit latency, microseconds per bucket of [`BUCKETS_MS`] (as milliseconds) and +Inf.
    pub commit_buckets: [AtomicU64; BUCKETS_MS.len() + 1],
    /// Sum of the commit latencies, microseconds.
    pub commit_sum_us: AtomicU64,
}

impl StoreCounters {
    /// Records one transaction that took `us` microseconds.
    pub fn commit(&self, us: u64, ok: bool, changes: usize) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.changes.fetch_add(changes as u64, Ordering::Relaxed);
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let i = BUCKETS_MS.partition_point(|&b| (b as u64) * 1000 < us);
        self.commit_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.commit_sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// The store's part of a scrape.
pub struct StoreView<'a> {
    /// The store thread's counters.
    pub counters: &'a StoreCounters,
    /// Whether its last write succeeded.
    pub healthy: bool,
}

/// Everything a scrape renders.
pub struct Scrape<'a> {
    /// Each owner's part.
    pub owners: Vec<OwnerSnapshot>,
    /// Each home's part.
    pub homes: Vec<HomeSnapshot>,
    /// The queue store, if any.
    pub store: Option<StoreView<'a>>,
    /// `--metrics-max-functions`.
    pub max_functions: usize,
    /// The server's version string.
    pub version: &'a str,
}

/// Cuts an owner's functions to the cap: the `max` created first keep their own figures, the
/// rest are summed into `other`.
pub fn cap(mut functions: Vec<FunctionStats>, max: usize, snapshot: &mut OwnerSnapshot) {
    if functions.len() > max {
        functions.sort_unstable_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        for f in functions.drain(max..) {
            snapshot.other.add(&f);
            snapshot.other_count += 1;
        }
    }
    snapshot.functions = functions;
}

/// A label value in the text format: `\`, `"` and line feeds escaped; bytes that are not
/// UTF-8 replaced.
fn label(out: &mut String, value: &[u8]) {
    for c in String::from_utf8_lossy(value).chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn histogram(out: &mut String, name: &str, help: &str, buckets: &[u64], sum_seconds: f64) {
    header(out, name, "histogram", help);
    let mut total = 0;
    for (i, n) in buckets.iter().enumerate() {
        total += n;
        match BUCKETS_MS.get(i) {
            Some(&b) => {
                let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {total}", seconds(b as u64));
            }
            None => {
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
            }
        }
    }
    let _ = writeln!(out, "{name}_sum {sum_seconds}");
    let _ = writeln!(out, "{name}_count {total}");
}

/// Renders a scrape in the Prometheus text format (version 0.0.4).
pub fn render(s: Scrape<'_>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    header(
        &mut out,
        "gearshiftd_info",
        "gauge",
        "Server version (always 1).",
    );
    let _ = writeln!(out, "gearshiftd_info{{version=\"{}\"}} 1", s.version);
    header(&mut out, "gearshiftd_shards", "gauge", "Shard threads.");
    let _ = writeln!(out, "gearshiftd_shards {}", s.homes.len());

    // Functions: the oldest `max_functions` across all owners, the rest summed.
    let mut all: Vec<FunctionStats> = Vec::new();
    let mut other = FunctionStats::default();
    let mut other_count = 0;
    let mut jobs = 0;
    let mut backlog = 0;
    let (mut wait, mut run, mut trip) = (
        Histogram::default(),
        Histogram::default(),
        Histogram::default(),
    );
    let mut errors = ErrorCounts::default();
    for o in &s.owners {
        all.extend(o.functions.iter().cloned());
        other.add(&o.other);
        other_count += o.other_count;
        jobs += o.jobs;
        backlog += o.store_backlog;
        wait.merge(&o.queue_wait);
        run.merge(&o.run_time);
        trip.merge(&o.round_trip);
        errors.merge(&o.errors);
    }
    let mut summed = OwnerSnapshot::default();
    cap(all, s.max_functions, &mut summed);
    other.add(&summed.other);
    other_count += summed.other_count;
    let mut functions = summed.functions;
    functions.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    // Each row's label value, escaped. Two names can render alike (bytes that are not UTF-8
    // all become U+FFFD, and a function may be called `_other`): duplicate series would be
    // rejected or dropped by the scraper, so a name whose label is taken joins `_other`.
    let mut taken: HashSet<String> = HashSet::from([OTHER.to_string()]);
    let mut kept: Vec<(String, &FunctionStats)> = Vec::with_capacity(functions.len());
    for f in &functions {
        let mut l = String::new();
        label(&mut l, &f.name);
        if taken.insert(l.clone()) {
            kept.push((l, f));
        } else {
            other.add(f);
            other_count += 1;
        }
    }
    let named = kept.len() as u64;
    let rows: Vec<(String, &FunctionStats)> = kept
        .into_iter()
        .chain((other_count > 0).then(|| (OTHER.to_string(), &other)))
        .collect();

    header(
        &mut out,
        "gearshiftd_functions",
        "gauge",
        "Functions known to the server.",
    );
    let _ = writeln!(out, "gearshiftd_functions {}", named + other_count);
    header(
        &mut out,
        "gearshiftd_functions_other",
        "gauge",
        "Functions past --metrics-max-functions, summed into function=\"_other\".",
    );
    let _ = writeln!(out, "gearshiftd_functions_other {other_count}");
    header(
        &mut out,
        "gearshiftd_jobs",
        "gauge",
        "Jobs held, in any state.",
    );
    let _ = writeln!(out, "gearshiftd_jobs {jobs}");

    type Gauge = fn(&FunctionStats) -> String;
    let per_function: [(&str, &str, &str, Gauge); 3] = [
        (
            "gearshiftd_function_running",
            "gauge",
            "Jobs running, per function.",
            |f| f.running.to_string(),
        ),
        (
            "gearshiftd_function_workers",
            "gauge",
            "Worker registrations, per function.",
            |f| f.workers.to_string(),
        ),
        (
            "gearshiftd_function_oldest_queued_seconds",
            "gauge",
            "Age of the oldest queued job, per function (0 when none is queued).",
            |f| seconds(f.oldest_ms).to_string(),
        ),
    ];
    header(
        &mut out,
        "gearshiftd_function_queued",
        "gauge",
        "Jobs queued (not running), per function and priority.",
    );
    for (name, f) in &rows {
        for (p, pname) in ["high", "normal", "low"].iter().enumerate() {
            out.push_str("gearshiftd_function_queued{function=\"");
            out.push_str(name);
            let _ = writeln!(out, "\",priority=\"{pname}\"}} {}", f.queued[p]);
        }
    }
    for (metric, kind, help, value) in per_function {
        header(&mut out, metric, kind, help);
        for (name, f) in &rows {
            let _ = write!(out, "{metric}{{function=\"");
            out.push_str(name);
            let _ = writeln!(out, "\"}} {}", value(f));
        }
    }
    type Counter = fn(&FunctionCounters) -> u64;
    let counters: [(&str, &str, Counter); 8] = [
        ("jobs_submitted", "Submissions that made a new job.", |c| {
            c.submitted
        }),
        (
            "jobs_coalesced",
            "Submissions coalesced onto an existing job.",
            |c| c.coalesced,
        ),
        ("jobs_completed", "Jobs ended with WORK_COMPLETE.", |c| {
            c.completed
        }),
        (
            "jobs_failed",
            "Jobs ended with WORK_FAIL or dropped at the --job-retries limit.",
            |c| c.failed,
        ),
        ("jobs_exceptions", "Jobs ended with WORK_EXCEPTION.", |c| {
            c.exceptions
        }),
        ("jobs_cancelled", "Jobs removed by `cancel job`.", |c| {
            c.cancelled
        }),
        (
            "jobs_requeued",
            "Jobs put back on their queue after their worker was lost or timed out.",
            |c| c.requeued,
        ),
        (
            "wake_retries",
            "Wakes whose worker had not asked within --wake-retry-ms, so another sleeper was woken.",
            |c| c.wake_retries,
        ),
    ];
    for (what, help, value) in counters {
        let metric = format!("gearshiftd_function_{what}_total");
        header(&mut out, &metric, "counter", help);
        for (name, f) in &rows {
            let _ = write!(out, "{metric}{{function=\"");
            out.push_str(name);
            let _ = writeln!(out, "\"}} {}", value(&f.counters));
        }
    }

    for (name, help, h) in [
        (
            "gearshiftd_queue_wait_seconds",
            "Time from submission (or requeue, or an epoch job falling due) to assignment.",
            &wait,
        ),
        (
            "gearshiftd_run_seconds",
            "Time from assignment to the job's end.",
            &run,
        ),
        (
            "gearshiftd_foreground_round_trip_seconds",
            "Time from a foreground submission to the end of the job its client waited for.",
            &trip,
        ),
    ] {
        histogram(&mut out, name, help, &h.counts, seconds(h.sum_ms));
    }

    // Homes: connections, bytes, errors, loops and rings.
    let mut connections = [0u64; 4];
    let (mut bytes_in, mut bytes_out, mut accepted) = (0, 0, 0);
    for h in &s.homes {
        for (a, b) in connections.iter_mut().zip(&h.connections) {
            *a += b;
        }
        bytes_in += h.counters.bytes_in;
        bytes_out += h.counters.bytes_out;
        accepted += h.counters.accepted;
        errors.merge(&h.counters.errors);
    }
    header(
        &mut out,
        "gearshiftd_connections",
        "gauge",
        "Open connections by role.",
    );
    for r in Role::ALL {
        let _ = writeln!(
            out,
            "gearshiftd_connections{{role=\"{}\"}} {}",
            r.name(),
            connections[r as usize]
        );
    }
    header(
        &mut out,
        "gearshiftd_connections_accepted_total",
        "counter",
        "Connections accepted.",
    );
    let _ = writeln!(out, "gearshiftd_connections_accepted_total {accepted}");
    header(
        &mut out,
        "gearshiftd_received_bytes_total",
        "counter",
        "Bytes read from connections (plaintext with TLS).",
    );
    let _ = writeln!(out, "gearshiftd_received_bytes_total {bytes_in}");
    header(
        &mut out,
        "gearshiftd_sent_bytes_total",
        "counter",
        "Bytes written to connections (plaintext with TLS).",
    );
    let _ = writeln!(out, "gearshiftd_sent_bytes_total {bytes_out}");
    header(
        &mut out,
        "gearshiftd_errors_sent_total",
        "counter",
        "ERROR packets and admin error lines sent, by code.",
    );
    errors.0.sort();
    for (code, n) in &errors.0 {
        out.push_str("gearshiftd_errors_sent_total{code=\"");
        label(&mut out, code.as_bytes());
        let _ = writeln!(out, "\"}} {n}");
    }
    type PerShard = fn(&HomeSnapshot) -> String;
    let per_shard: [(&str, &str, &str, PerShard); 4] = [
        (
            "gearshiftd_shard_busy_seconds_total",
            "counter",
            "Time each shard's loop spent working (outside poll); its rate is the busy fraction.",
            |h| (h.counters.busy_ns as f64 / 1e9).to_string(),
        ),
        (
            "gearshiftd_shard_ring_messages",
            "gauge",
            "Messages waiting in each shard's inbound rings.",
            |h| h.ring_messages.to_string(),
        ),
        (
            "gearshiftd_shard_ring_occupancy",
            "gauge",
            "Fill of each shard's fullest inbound ring, 0 to 1.",
            |h| h.ring_occupancy.to_string(),
        ),
        (
            "gearshiftd_shard_outbox_messages",
            "gauge",
            "Messages each shard has queued for other shards and not yet pushed into their rings (this turn's, or waiting for room in a full ring).",
            |h| h.outbox_messages.to_string(),
        ),
    ];
    for (metric, kind, help, value) in per_shard {
        header(&mut out, metric, kind, help);
        for h in &s.homes {
            let _ = writeln!(out, "{metric}{{shard=\"{}\"}} {}", h.shard, value(h));
        }
    }

    // The queue store.
    header(
        &mut out,
        "gearshiftd_store_backlog_jobs",
        "gauge",
        "Background submissions waiting for the queue store to make them durable.",
    );
    let _ = writeln!(out, "gearshiftd_store_backlog_jobs {backlog}");
    if let Some(store) = &s.store {
        let c = store.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        header(
            &mut out,
            "gearshiftd_store_healthy",
            "gauge",
            "1 if the queue store's last write succeeded.",
        );
        let _ = writeln!(out, "gearshiftd_store_healthy {}", store.healthy as u8);
        header(
            &mut out,
            "gearshiftd_store_transactions_total",
            "counter",
            "Transactions (group commits) the store thread wrote or tried.",
        );
        let _ = writeln!(
            out,
            "gearshiftd_store_transactions_total {}",
            load(&c.transactions)
        );
        header(
            &mut out,
            "gearshiftd_store_changes_total",
            "counter",
            "Adds and deletes written to the queue store.",
        );
        let _ = writeln!(out, "gearshiftd_store_changes_total {}", load(&c.changes));
        header(
            &mut out,
            "gearshiftd_store_failures_total",
            "counter",
            "Transactions that failed (their jobs were refused with QUEUE_ERROR).",
        );
        let _ = writeln!(out, "gearshiftd_store_failures_total {}", load(&c.failures));
        let buckets: Vec<u64> = c.commit_buckets.iter().map(load).collect();
        histogram(
            &mut out,
            "gearshiftd_store_commit_seconds",
            "Time one group commit took.",
            &buckets,
            load(&c.commit_sum_us) as f64 / 1e6,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(name: &str, created: u64, submitted: u64) -> FunctionStats {
        FunctionStats {
            name: name.as_bytes().into(),
            created,
            counters: FunctionCounters {
                submitted,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let mut h = Histogram::default();
        for ms in [0, 1, 2, 3, 3_600_000, 3_600_001] {
            h.observe(ms);
        }
        assert_eq!(h.counts[0], 2); // le 1 ms
        assert_eq!(h.counts[1], 1); // le 2 ms
        assert_eq!(h.counts[2], 1); // le 5 ms
        assert_eq!(h.counts[BUCKETS_MS.len() - 1], 1);
        assert_eq!(h.counts[BUCKETS_MS.len()], 1);
        assert_eq!(h.count(), 6);
        assert_eq!(h.sum_ms, 7_200_007);
    }

    #[test]
    fn the_cap_keeps_the_oldest_and_sums_the_rest() {
        let fs = (0..10)
            .map(|i| function(&format!("f{i}"), 100 - i, 1))
            .collect();
        let mut s = OwnerSnapshot::default();
        cap(fs, 3, &mut s);
        let kept: Vec<_> = s.functions.iter().map(|f| f.created).collect();
        assert_eq!(kept, [91, 92, 93]);
        assert_eq!(s.other_count, 7);
        assert_eq!(s.other.counters.submitted, 7);
    }

    /// Names that render to the same label value (bytes that are not UTF-8 all become U+FFFD;
    /// a function may be called `_other`) would make duplicate series, which a scraper rejects
    /// or drops: every series of a scrape is distinct whatever the names.
    #[test]
    fn every_series_is_distinct_whatever_the_names() {
        let mut a = OwnerSnapshot::default();
        let names: [&[u8]; 5] = [b"_other", b"\xff", b"\xfe", b"a\xffb", b"a\xfeb"];
        let fs = names
            .iter()
            .enumerate()
            .map(|(i, n)| FunctionStats {
                name: (*n).into(),
                created: i as u64,
                ..function("", 0, 1)
            })
            .chain([function("late", 99, 1)])
            .collect();
        cap(fs, 5, &mut a);
        let text = render(Scrape {
            owners: vec![a],
            homes: vec![HomeSnapshot::default()],
            store: None,
            max_functions: 5,
            version: "v",
        });
        let mut seen = std::collections::HashSet::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, _) = line.rsplit_once(' ').unwrap();
            assert!(seen.insert(series), "{series} twice in\n{text}");
        }
        // Nothing is lost: the submissions of all six functions are counted once.
        let submitted: u64 = text
            .lines()
            .filter(|l| l.starts_with("gearshiftd_function_jobs_submitted_total{"))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum();
        assert_eq!(submitted, 6, "{text}");
        assert!(text.contains("gearshiftd_functions 6\n"));
    }

    #[test]
    fn render_caps_across_owners_and_escapes_labels() {
        let mut a = OwnerSnapshot::default();
        cap(
            vec![function("a\"b\\c\nd", 1, 5), function("late", 9, 2)],
            1,
            &mut a,
        );
        let mut b = OwnerSnapshot::default();
        cap(vec![function("mid", 5, 3)], 1, &mut b);
        b.queue_wait.observe(3);
        let text = render(Scrape {
            owners: vec![a, b],
            homes: vec![HomeSnapshot::default()],
            store: None,
            max_functions: 1,
            version: "v",
        });
        assert!(text.contains(
            "gearshiftd_function_jobs_submitted_total{function=\"a\\\"b\\\\c\\nd\"} 5\n"
        ));
        assert!(text.contains("gearshiftd_function_jobs_submitted_total{function=\"_other\"} 5\n"));
        assert!(!text.contains("function=\"mid\""));
        assert!(text.contains("gearshiftd_functions_other 2\n"));
        assert!(text.contains("gearshiftd_queue_wait_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("gearshiftd_queue_wait_seconds_count 1\n"));
    }
}
