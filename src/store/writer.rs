//! The store thread: group commit for every shard.
//!
//! Each shard sends, once per loop turn, the adds and deletes its owner made in that turn as a
//! numbered [`Batch`]. The writer takes every batch waiting (up to `max_ops`, or until
//! `max_wait` passes, or until no batch has come for a fifth of `max_wait`: once the
//! submissions in flight are all in, waiting longer only delays them), writes them in order as
//! one transaction, and tells each shard the
//! highest batch of its that is now durable ([`Ack`]), waking it. While one transaction
//! commits, the next batches pile up, so under load one fsync covers many jobs and nobody
//! waits on a disk but this thread.
//!
//! A failed write is retried once after reconnecting (writing a batch twice is the same as
//! writing it once: the stores write its net effect); if it still fails, the batches are
//! acknowledged as failed (their submissions get QUEUE_ERROR, nothing is acknowledged that was
//! not stored) and reconnects back off, up to [`MAX_BACKOFF`], until the store answers again.
//! If the failure may have come after the commit (the connection broke mid-batch), the store
//! deletes the refused jobs' rows with its next write, which the thread then makes as soon as
//! it can, without waiting for new jobs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Backend, Op};
use crate::message::ShardId;

/// A group stops waiting for more batches once none has come for this fraction of
/// `max_wait` (see [`GroupCommit`]).
pub const QUIET_GAP_DIVISOR: u32 = 5;

/// Longest pause between reconnect attempts to a failed store.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One shard's store changes from one loop turn.
pub struct Batch {
    /// The sending shard.
    pub shard: ShardId,
    /// Its batch number (1, 2, 3, … per shard).
    pub id: u64,
    /// The changes, in order.
    pub ops: Vec<Op>,
}

/// Every batch of a shard up to `upto` is durable (or failed, with the store's words).
pub struct Ack {
    /// Highest batch number covered.
    pub upto: u64,
    /// The outcome.
    pub result: Result<(), String>,
}

/// A shard's end of the store thread.
pub struct StoreLink {
    /// Batches to the writer.
    pub tx: Sender<Batch>,
    /// Acknowledgements from it.
    pub acks: Receiver<Ack>,
}

/// What admin and logs can see of the store.
pub struct StoreState {
    /// The store's description (no password).
    pub describe: String,
    /// Whether the last write succeeded.
    pub healthy: AtomicBool,
    /// The last error, if any.
    pub last_error: Mutex<Option<String>>,
    /// Transactions, changes, failures and commit latency, for the metrics.
    pub metrics: crate::metrics::StoreCounters,
}

impl StoreState {
    /// One line for the `queue` admin command.
    pub fn line(&self) -> String {
        if self.healthy.load(Ordering::Relaxed) {
            format!("{} ok", self.describe)
        } else {
            let e = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
            format!(
                "{} failing: {}",
                self.describe,
                e.as_deref().unwrap_or("unknown error")
            )
        }
    }
}

/// Limits of one group commit.
#[derive(Clone, Copy, Debug)]
pub struct GroupCommit {
    /// Most changes written in one transaction.
    pub max_ops: usize,
    /// Longest a batch waits for more to join it; it stops waiting once none has come for
    /// `max_wait / QUIET_GAP_DIVISOR`.
    pub max_wait: Duration,
}

/// How the store thread gets a shard to look at its acknowledgements: wake its event loop.
pub trait WakeShard: Send + Sync {
    /// Wakes shard `shard`.
    fn wake(&self, shard: usize);
}

/// The store thread's state.
pub struct Writer {
    backend: Box<dyn Backend>,
    rx: Receiver<Batch>,
    acks: Vec<Sender<Ack>>,
    wake: Arc<dyn WakeShard>,
    limits: GroupCommit,
    state: Arc<StoreState>,
    backoff: Duration,
    retry_at: Instant,
}

/// Builds the writer and one link per shard.
pub fn build(
    backend: Box<dyn Backend>,
    shards: usize,
    wake: Arc<dyn WakeShard>,
    limits: GroupCommit,
) -> (Writer, Vec<StoreLink>, Arc<StoreState>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut acks = Vec::new();
    let mut links = Vec::new();
    for _ in 0..shards {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        acks.push(ack_tx);
        links.push(StoreLink {
            tx: tx.clone(),
            acks: ack_rx,
        });
    }
    let state = Arc::new(StoreState {
        describe: backend.describe(),
        healthy: AtomicBool::new(true),
        last_error: Mutex::new(None),
        metrics: Default::default(),
    });
    let writer = Writer {
        backend,
        rx,
        acks,
        wake,
        limits,
        state: state.clone(),
        backoff: Duration::from_millis(100),
        retry_at: Instant::now(),
    };
    (writer, links, state)
}

impl Writer {
    /// Runs until every shard has dropped its link, writing what they sent last.
    pub fn run(mut self) {
        while let Some(first) = self.next_batch() {
            let mut batches = vec![first];
            let mut count = batches[0].ops.len();
            let deadline = Instant::now() + self.limits.max_wait;
            let gap = self.limits.max_wait / QUIET_GAP_DIVISOR;
            while count < self.limits.max_ops {
                let next = match self.rx.try_recv() {
                    Ok(b) => Ok(b),
                    Err(TryRecvError::Empty) => {
                        // The last batch has just arrived: wait for the next one while batches
                        // keep coming, not the whole allowance once they have stopped.
                        let now = Instant::now();
                        let until = deadline.min(now + gap);
                        if now < until {
                            self.rx.recv_timeout(until - now)
                        } else {
                            Err(RecvTimeoutError::Timeout)
                        }
                    }
                    Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                };
                match next {
                    Ok(b) => {
                        count += b.ops.len();
                        batches.push(b);
                    }
                    Err(_) => break,
                }
            }
            let ops: Vec<Op> = batches
                .iter_mut()
                .flat_map(|b| std::mem::take(&mut b.ops))
                .collect();
            let result = self.write(&ops);
            let mut upto: Vec<Option<u64>> = vec![None; self.acks.len()];
            for b in &batches {
                let u = &mut upto[b.shard as usize];
                *u = Some(u.map_or(b.id, |x: u64| x.max(b.id)));
            }
            for (shard, u) in upto.into_iter().enumerate() {
                if let Some(upto) = u {
                    let _ = self.acks[shard].send(Ack {
                        upto,
                        result: result.clone(),
                    });
                    self.wake.wake(shard);
                }
            }
        }
    }

    /// The next batch to write, `None` once every shard has gone. While the backend has rows of
    /// refused jobs to clean up ([`Backend::unsettled`]), it does not wait for new jobs to do
    /// it: it writes an empty batch whenever the reconnect back-off allows, and once more
    /// before the thread ends.
    fn next_batch(&mut self) -> Option<Batch> {
        loop {
            if !self.backend.unsettled() {
                return self.rx.recv().ok();
            }
            let pause = self
                .retry_at
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10));
            match self.rx.recv_timeout(pause) {
                Ok(batch) => return Some(batch),
                Err(RecvTimeoutError::Timeout) => {
                    if Instant::now() >= self.retry_at {
                        let _ = self.write(&[]);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.write(&[]);
                    return None;
                }
            }
        }
    }

    fn write(&mut self, ops: &[Op]) -> Result<(), String> {
        let started = Instant::now();
        let first = if Instant::now() >= self.retry_at {
            self.backend.apply(ops)
        } else {
            Err(super::StoreError(
                "store unavailable; waiting to reconnect".into(),
            ))
        };
        let result = first.or_else(|e| {
            log::error!("queue store {}: {e}", self.state.describe);
            if Instant::now() < self.retry_at {
                return Err(e);
            }
            self.backend
                .reconnect()
                .and_then(|()| self.backend.apply(ops))
                .inspect_err(|_| {
                    self.retry_at = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                })
        });
        self.state.metrics.commit(
            started.elapsed().as_micros() as u64,
            result.is_ok(),
            ops.len(),
        );
        match &result {
            Ok(()) => {
                if !self.state.healthy.swap(true, Ordering::Relaxed) {
                    log::error!("queue store {} is writable again", self.state.describe);
                }
                self.backoff = Duration::from_millis(100);
            }
            Err(e) => {
                self.state.healthy.store(false, Ordering::Relaxed);
                *self
                    .state
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
            }
        }
        result.map_err(|e| e.to_string())
    }
}
