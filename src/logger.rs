//! The server's logger: lines go through a bounded queue to a writer thread, so a shard never
//! blocks on a slow disk or on a pipe nobody reads (when the queue is full, lines are dropped
//! and counted). SIGHUP reopens the file, for log rotation.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use crate::config::LogTarget;

/// Lines the queue holds before new ones are dropped.
const QUEUE: usize = 4096;

enum Line {
    Text(String),
    Reopen,
}

struct Logger {
    level: log::LevelFilter,
    tx: Mutex<SyncSender<Line>>,
    dropped: AtomicU64,
}

static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();

/// gearmand's level name to a `log` filter.
pub fn level_filter(name: &str) -> log::LevelFilter {
    match name {
        "FATAL" | "ALERT" | "CRITICAL" | "ERROR" => log::LevelFilter::Error,
        "WARNING" => log::LevelFilter::Warn,
        "NOTICE" | "INFO" => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = match r.level() {
            log::Level::Error => "ERROR",
            log::Level::Warn => "WARNING",
            log::Level::Info => "INFO",
            _ => "DEBUG",
        };
        let line = format!("{:>7} {level} {}\n", unix_time(), r.args());
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(TrySendError::Full(_)) = tx.try_send(Line::Text(line)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn open(target: &LogTarget) -> Option<Box<dyn Write + Send>> {
    match target {
        LogTarget::None => None,
        LogTarget::Stderr => Some(Box::new(std::io::stderr())),
        LogTarget::File(path) => match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Some(Box::new(f) as Box<dyn Write + Send>),
            Err(e) => {
                // As gearmand: a log file that cannot be opened falls back to stderr.
                eprintln!(
                    "gearshiftd: cannot open log file {}: {e}; logging to stderr",
                    path.display()
                );
                Some(Box::new(std::io::stderr()))
            }
        },
    }
}

/// Installs the logger. Call once, before the shards start.
pub fn init(target: LogTarget, level: &str) {
    let (tx, rx) = sync_channel(QUEUE);
    let filter = level_filter(level);
    let logger = Logger {
        level: filter,
        tx: Mutex::new(tx),
        dropped: AtomicU64::new(0),
    };
    if LOGGER.set(logger).is_err() {
        return;
    }
    std::thread::Builder::new()
        .name("log".into())
        .spawn(move || writer(target, rx))
        .expect("spawn the log thread");
    let _ = log::set_logger(LOGGER.get().unwrap());
    log::set_max_level(filter);
}

/// Asks the writer to reopen its file (SIGHUP).
pub fn reopen() {
    if let Some(l) = LOGGER.get() {
        let _ =
            l.tx.lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_send(Line::Reopen);
    }
}

fn writer(target: LogTarget, rx: Receiver<Line>) {
    let mut out = open(&target);
    while let Ok(line) = rx.recv() {
        match line {
            Line::Text(t) => {
                if let Some(w) = out.as_mut() {
                    let _ = w.write_all(t.as_bytes());
                }
            }
            Line::Reopen => out = open(&target),
        }
        if let Some(l) = LOGGER.get() {
            let n = l.dropped.swap(0, Ordering::Relaxed);
            if n > 0
                && let Some(w) = out.as_mut()
            {
                let _ = writeln!(
                    w,
                    "{:>7} WARNING {n} log lines dropped (log queue full)",
                    unix_time()
                );
            }
        }
    }
}
