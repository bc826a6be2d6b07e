//! Everything an owner shard holds for the functions it owns: their priority queues, unique-id
//! indexes, worker entries and jobs, and the rules of PROTOCOL.md §3 that act on them.
//!
//! No I/O here. [`Owner::handle`] takes one message and appends the messages it causes to an
//! outbox; the shard routes them. So this module is tested and benchmarked without sockets.
//!
//! This file holds the records (jobs, functions, worker entries), the [`Owner`] and the
//! dispatch of its messages; the rules are split by concern, each `impl Owner` in its file:
//! - `submit`: submissions, coalescing (§3.3), maxqueue (§3.12), queueing a new job;
//! - `dispatch`: worker registration, grabs and grab order (§3.4), PRE_SLEEP and NOOP
//!   wake-ups (§3.5), a worker leaving a function;
//! - `work`: results (§3.6), requeue and `--job-retries` (§3.9), clients leaving (§3.10),
//!   cancel (§3.13), freeing a job;
//! - `timers`: the clock, epoch jobs falling due (§3.11), CAN_DO_TIMEOUT (§3.9);
//! - `durable`: the store's batches, acknowledgements and refusals, replay at start-up;
//! - `admin`: listings, GET_STATUS and GET_STATUS_UNIQUE, `maxqueue`, `drop function`;
//! - `index`: the coalescing index and handle numbers to jobs;
//! - `blobs`: the jobs' bytes, in chunks of equal-sized slots;
//! - `list`: the intrusive priority lists; `hash`: gearmand's hashes and function placement.

mod admin;
mod blobs;
mod dispatch;
mod durable;
pub mod hash;
mod index;
pub mod list;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod rule_tests;
mod submit;
mod timers;
mod work;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use ahash::AHashMap;
use slab::Slab;
use smallvec::SmallVec;

use crate::message::*;
use crate::metrics::{ErrorCounts, FunctionCounters, Histogram};
use crate::protocol::{self, PacketType, encode};
use crate::store::Op;
use blobs::{Blob, Blobs};
use durable::Awaiting;
use index::{Hashes, Index, Numbers};
use list::{Linked, Links, List};
use timers::Clock;

pub use crate::message::{JobBytes, MAX_UNIQUE, Priority};

/// What an owner needs from the configuration.
#[derive(Clone, Debug)]
pub struct OwnerConfig {
    /// Handle prefix, e.g. `H:host`; handles are `<prefix>:<n>`.
    pub handle_prefix: Box<[u8]>,
    /// `--job-retries`: attempts before a job is dropped; 0 is unlimited.
    pub job_retries: u8,
    /// `--worker-wakeup`: `Some(n)` sends NOOPs to `n` sleeping workers per queued job, and
    /// `Some(0)` to every sleeper (gearmand's meaning); `None`, the default, wakes only as many
    /// sleepers as there are queued jobs not already covered by a wake in flight.
    pub worker_wakeup: Option<u8>,
    /// `--wake-retry-ms` (default wake-ups only): a worker woken for a job that has not asked
    /// (grabbed here, slept again, left) within this long no longer counts, and another
    /// sleeper is woken in its place.
    pub wake_retry: Duration,
    /// `--round-robin`: rotate a worker's functions after each grab.
    pub round_robin: bool,
    /// A queue store is configured: background jobs are acknowledged once durable.
    pub durable: bool,
    /// Distinguishes this process's generated store keys from any earlier one's.
    pub boot: u64,
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// On its priority list, between these neighbours (a job is on a list exactly while it is
    /// queued, so its links live here rather than beside the state).
    Queued(Links),
    /// An epoch job not yet due: on the timer heap, not on a list.
    Future,
    /// Held by the worker whose [`ConnId`] these fields are (written out rather than a
    /// `ConnId`, so the tag fits beside them: 12 bytes instead of 16).
    Running {
        shard: ShardId,
        slot: u32,
        generation: u32,
    },
    /// A background job whose add is on its way to the store: not runnable, not yet
    /// acknowledged (JOB_CREATED goes out once the store says it is durable).
    Pending,
}

impl State {
    fn queued() -> State {
        State::Queued(Links::default())
    }

    fn running(worker: ConnId) -> State {
        State::Running {
            shard: worker.shard,
            slot: worker.slot,
            generation: worker.generation,
        }
    }

    /// The worker holding the job, if it is running.
    fn holder(self) -> Option<ConnId> {
        match self {
            State::Running {
                shard,
                slot,
                generation,
            } => Some(ConnId {
                shard,
                slot,
                generation,
            }),
            _ => None,
        }
    }
}

/// A client waiting on a foreground job.
#[derive(Clone, Copy, Debug)]
struct Waiter {
    conn: ConnId,
    exceptions: bool,
}

/// What only some jobs use: the clients waiting on a foreground job, and the last WORK_STATUS
/// of a job whose worker sends one. Kept apart, so a queued background job (the kind that
/// queues up by the million) carries 8 bytes for them rather than 32.
#[derive(Default)]
struct Cold {
    /// Attach order; results go newest first (§3.6).
    waiters: SmallVec<[Waiter; 1]>,
    numerator: u32,
    denominator: u32,
}

/// A job. Its size is most of what a queued job costs (PERF.md, "fill"), so the fields a
/// queued background job does not use are in [`Cold`], and `size_tests` pins the size.
struct Job {
    number: u64,
    /// Unique, reducer and payload, packed (see [`JobBytes`]), in the owner's [`Blobs`]; the
    /// lengths of the first two are kept here, among the small fields.
    blob: Blob,
    /// Allocated for a foreground job, or by a WORK_STATUS.
    cold: Option<Box<Cold>>,
    function: u32,
    state: State,
    unique_len: u8,
    reducer_len: u8,
    priority: Priority,
    background: bool,
    retries: u8,
    /// gearmand's `ignore_job`: nobody waits any more; results are dropped.
    ignore: bool,
    /// An add for this job went to the store, so its end must delete the row.
    stored: bool,
    /// Its store key was generated (empty or `-` unique): see [`durable::store_unique`].
    generated_key: bool,
    /// When it was submitted (or requeued, or fell due), then, once assigned, when it was
    /// assigned: milliseconds of the owner's clock ([`Owner::now_ms`]), for the queue-wait
    /// and run-time histograms and the oldest queued job's age.
    stamp: u32,
    /// When it was submitted, for the foreground round trip (milliseconds, as `stamp`).
    submitted: u32,
}

impl Linked for Job {
    fn links(&mut self) -> &mut Links {
        match &mut self.state {
            State::Queued(links) => links,
            _ => unreachable!("a job on a list is queued"),
        }
    }
}

struct Function {
    name: Box<[u8]>,
    created: u64,
    queues: [List; 3],
    /// Not yet due epoch jobs (counted as NORMAL in listings, as gearmand does).
    future: u32,
    running: u32,
    /// Background jobs waiting for the store.
    pending: u32,
    /// Worker entries, duplicates included; the wake walk starts at `wake_at`.
    workers: Vec<ConnId>,
    wake_at: usize,
    /// Workers woken for this function that have not asked yet (default wake-ups only): a
    /// new job wakes someone only if the queued jobs outnumber them.
    waking: u32,
    /// Jobs by coalescing key: their unique, or for unique `-` their payload (§3.3).
    coalesce: Index,
    maxqueue: [u32; 3],
    /// What happened to its jobs, for the metrics.
    counters: FunctionCounters,
}

impl Function {
    fn total(&self) -> u32 {
        self.queues.iter().map(|q| q.len()).sum::<u32>() + self.future + self.running + self.pending
    }
}

/// A worker as one owner sees it.
#[derive(Default)]
struct Worker {
    /// (function, CAN_DO_TIMEOUT ms), most recently registered first, duplicates included.
    functions: Vec<(u32, u32)>,
    /// Jobs it holds from this owner.
    held: SmallVec<[usize; 2]>,
    sleeping: bool,
    noop_sent: bool,
    /// Its CAN_DO_TIMEOUT timer (handle number and assignment of the job it guards): one per
    /// worker as in gearmand, armed (or, for a function without a timeout, removed) by each
    /// assignment, removed by a PRE_SLEEP with nothing queued for it. Heap entries for any
    /// other job are stale.
    timer: Option<(u64, u64)>,
    /// The function it was woken for and the wake's number, until it asks (grabs here,
    /// sleeps again, leaves, declines) or the wake's retry deadline passes (default
    /// wake-ups only).
    woken: Option<(u32, u64)>,
}

impl Worker {
    /// Whether a NOOP would wake it: asleep, and not sent one since.
    fn wakeable(&self) -> bool {
        self.sleeping && !self.noop_sent
    }
}

/// How a job's coalescing key is chosen (§3.3).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key<'a> {
    None,
    Unique(&'a [u8]),
    Data(&'a [u8]),
}

fn key_of<'a>(unique: &'a [u8], data: &'a [u8]) -> Key<'a> {
    match unique {
        b"" => Key::None,
        b"-" if data.is_empty() => Key::None,
        b"-" => Key::Data(data),
        u => Key::Unique(u),
    }
}

impl Job {
    fn key<'a>(&self, blobs: &'a Blobs) -> Key<'a> {
        let (unique, _, data) = self.bytes(blobs);
        key_of(unique, data)
    }

    /// Its unique id, reducer and payload.
    fn bytes<'a>(&self, blobs: &'a Blobs) -> (&'a [u8], &'a [u8], &'a [u8]) {
        let (unique, rest) = blobs.get(&self.blob).split_at(self.unique_len as usize);
        let (reducer, data) = rest.split_at(self.reducer_len as usize);
        (unique, reducer, data)
    }

    fn unique<'a>(&self, blobs: &'a Blobs) -> &'a [u8] {
        self.bytes(blobs).0
    }

    fn data<'a>(&self, blobs: &'a Blobs) -> &'a [u8] {
        self.bytes(blobs).2
    }

    /// A foreground job with one waiting client, or a background job with none.
    fn new_cold(waiter: Option<Waiter>) -> Option<Box<Cold>> {
        waiter.map(|w| {
            Box::new(Cold {
                waiters: smallvec::smallvec![w],
                ..Cold::default()
            })
        })
    }

    /// The clients waiting on it, in attach order.
    fn waiters(&self) -> &[Waiter] {
        self.cold.as_ref().map_or(&[], |c| &c.waiters)
    }

    fn waiters_mut(&mut self) -> &mut SmallVec<[Waiter; 1]> {
        &mut self.cold.get_or_insert_default().waiters
    }

    fn take_waiters(&mut self) -> SmallVec<[Waiter; 1]> {
        self.cold
            .as_mut()
            .map(|c| std::mem::take(&mut c.waiters))
            .unwrap_or_default()
    }

    /// Numerator and denominator of the last WORK_STATUS.
    fn status(&self) -> (u32, u32) {
        self.cold
            .as_ref()
            .map_or((0, 0), |c| (c.numerator, c.denominator))
    }

    fn set_status(&mut self, numerator: u32, denominator: u32) {
        if self.cold.is_some() || (numerator, denominator) != (0, 0) {
            let c = self.cold.get_or_insert_default();
            (c.numerator, c.denominator) = (numerator, denominator);
        }
    }
}

/// Messages produced by an owner, with their destination shards.
pub type Outbox = Vec<(ShardId, ToHome)>;

/// A process-wide clock stamp for "most recently created" ordering of functions.
fn stamp() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The state one shard owns.
pub struct Owner {
    shard: ShardId,
    shards: u16,
    config: OwnerConfig,
    functions: Slab<Function>,
    by_name: AHashMap<Box<[u8]>, u32>,
    jobs: Slab<Job>,
    /// The jobs' bytes.
    blobs: Blobs,
    by_number: Numbers,
    hashes: Hashes,
    workers: AHashMap<ConnId, Worker>,
    /// Worker entries that a NOOP would wake: while none is, a new job scans no worker list
    /// (with busy workers, the usual case under load, that scan was O(workers) per submit).
    wakeable: usize,
    /// Next handle sequence; handle number = sequence * shards + shard.
    next_sequence: u64,
    epochs: BinaryHeap<Reverse<(i64, u64)>>,
    /// Store changes of this loop turn, sent as one batch by the shard.
    store_ops: Vec<Op>,
    /// The last batch handed to the store.
    batch: u64,
    /// Submissions waiting for their batch to be durable, in batch order.
    awaiting: VecDeque<Awaiting>,
    /// Background submissions that coalesced onto a job still on its way to the store, by
    /// the job's number: they share the fate of the job's own submission in `awaiting`.
    coalesced: AHashMap<u64, SmallVec<[(ConnId, Seq); 1]>>,
    /// Foreground jobs made background by a background submission, whose add is on its way
    /// to the store.
    converting: ahash::AHashSet<u64>,
    /// CAN_DO_TIMEOUT timers: (due, handle number, assignment).
    timeouts: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    /// Counts assignments, so each has its own number: a timer whose assignment is not the
    /// worker's latest is stale.
    assignments: u64,
    /// Wakes in flight by deadline (`--wake-retry-ms` after each, so in the order sent):
    /// (deadline, worker, wake number); entries whose worker has asked since are stale.
    wake_retries: VecDeque<(Instant, ConnId, u64)>,
    /// The last wake number given out.
    wake_seq: u64,
    clock: Clock,
    /// Submission to assignment, for the metrics.
    queue_wait: Histogram,
    /// Assignment to end.
    run_time: Histogram,
    /// Foreground submission to end.
    round_trip: Histogram,
    /// Error packets sent from here, by code.
    errors: ErrorCounts,
    /// The time of the shard's loop turn, milliseconds since the shard started (wrapping
    /// after 49 days), set once a turn by [`Owner::set_now_ms`]: jobs are stamped with it, so
    /// the job path reads no clock.
    now_ms: u32,
}

impl Owner {
    /// An owner with no functions, for shard `shard` of `shards`.
    pub fn new(shard: ShardId, shards: u16, config: OwnerConfig) -> Owner {
        Owner {
            shard,
            shards,
            config,
            functions: Slab::new(),
            by_name: AHashMap::new(),
            jobs: Slab::new(),
            blobs: Blobs::default(),
            by_number: Numbers::default(),
            hashes: Hashes::new(),
            workers: AHashMap::new(),
            wakeable: 0,
            next_sequence: 1,
            epochs: BinaryHeap::new(),
            store_ops: Vec::new(),
            batch: 0,
            awaiting: VecDeque::new(),
            coalesced: AHashMap::new(),
            converting: ahash::AHashSet::new(),
            timeouts: BinaryHeap::new(),
            assignments: 0,
            wake_retries: VecDeque::new(),
            wake_seq: 0,
            clock: Clock::default(),
            queue_wait: Histogram::default(),
            run_time: Histogram::default(),
            round_trip: Histogram::default(),
            errors: ErrorCounts::default(),
            now_ms: 0,
        }
    }

    /// Sets the time jobs are stamped with (see `now_ms`).
    pub fn set_now_ms(&mut self, ms: u32) {
        self.now_ms = ms;
    }

    /// Jobs held here, in any state.
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    fn job_by_number(&self, number: u64) -> Option<usize> {
        let shards = self.shards as u64;
        if number % shards != self.shard as u64 {
            return None;
        }
        self.by_number
            .get(number / shards)
            .filter(|&k| self.jobs[k].number == number)
    }

    /// The next handle number, and its sequence (the index in `by_number`).
    fn next_number(&mut self) -> (u64, u64) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        (sequence * self.shards as u64 + self.shard as u64, sequence)
    }

    fn function_id(&mut self, name: &[u8]) -> u32 {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = self.functions.insert(Function {
            name: name.into(),
            created: stamp(),
            queues: Default::default(),
            future: 0,
            running: 0,
            pending: 0,
            workers: Vec::new(),
            wake_at: 0,
            waking: 0,
            coalesce: Index::default(),
            maxqueue: [0; 3],
            counters: FunctionCounters::default(),
        }) as u32;
        self.by_name.insert(name.into(), id);
        id
    }

    /// Handles one message addressed to this owner.
    pub fn handle(&mut self, msg: ToOwner, out: &mut Outbox) {
        match msg {
            ToOwner::Submit(s) => self.submit(*s, out),
            ToOwner::CanDo {
                worker,
                function,
                timeout_ms,
            } => self.can_do(worker, &function, timeout_ms),
            ToOwner::CantDo { worker, function } => self.cant_do(worker, &function, out),
            ToOwner::WorkerGone { worker } => self.unregister(worker, None, out),
            ToOwner::Grab {
                worker,
                seq,
                kind,
                rest,
            } => self.grab(worker, seq, kind, rest, out),
            ToOwner::Sleep { worker } => self.sleep(worker, out),
            ToOwner::DropTimer { worker, number } => self.drop_timer(worker, number),
            ToOwner::NoopDeclined { worker } => self.noop_declined(worker, out),
            ToOwner::Work {
                worker,
                number,
                kind,
                packet,
            } => self.work(worker, number, kind, packet, out),
            ToOwner::GetStatus {
                client,
                seq,
                number,
                handle,
            } => self.get_status(client, seq, number, &handle, out),
            ToOwner::ClientGone { client, jobs } => self.client_gone(client, jobs),
            ToOwner::Cancel {
                client,
                seq,
                number,
            } => self.cancel(client, seq, number, out),
            ToOwner::Function {
                client,
                seq,
                function,
                maxqueue,
            } => self.set_function(client, seq, &function, maxqueue, out),
            ToOwner::Ask {
                client,
                gather,
                query,
            } => self.ask(client, gather, query, out),
        }
    }
}

/// The handle text `<prefix>:<n>`.
pub fn handle(prefix: &[u8], number: u64) -> SmallVec<[u8; 64]> {
    let mut h = SmallVec::new();
    h.extend_from_slice(prefix);
    h.push(b':');
    h.extend_from_slice(protocol::num(number, &mut [0; 20]));
    h
}

/// STATUS_RES for a handle nobody knows: `<handle>\0 0\0 0\0 0\0 0`.
pub fn unknown_status(out: &mut Vec<u8>, handle: &[u8]) {
    encode(
        out,
        PacketType::StatusRes,
        &[handle, b"0", b"0", b"0", b"0"],
    );
}

/// The JOB_NOT_FOUND error a worker gets for a result about a job it does not hold (§1.2).
pub fn not_found(kind: WorkKind) -> (&'static str, &'static str) {
    let text = match kind {
        WorkKind::Data | WorkKind::Warning => "Job does not exist on server",
        WorkKind::Exception => "An exception was received for a job that does not exist",
        _ => "Job given in work result not found",
    };
    ("JOB_NOT_FOUND", text)
}

fn reply(out: &mut Outbox, to: ConnId, seq: Seq, bytes: Vec<u8>, attach: Option<u64>) {
    out.push((
        to.shard,
        ToHome::Reply {
            to,
            seq,
            bytes: bytes.into(),
            attach,
        },
    ));
}

fn forward(out: &mut Outbox, to: ConnId, bytes: Vec<u8>, ends: Option<u64>) {
    out.push((
        to.shard,
        ToHome::Forward {
            to,
            bytes: bytes.into(),
            ends,
        },
    ));
}

#[cfg(test)]
mod size_tests {
    use std::mem::size_of;

    /// The job record is most of what a queued job costs (PERF.md, "fill": at most 170 bytes
    /// a queued job with a 64-byte payload, blob and indexes included): keep it from creeping.
    /// It is 56 bytes, the metrics' two time stamps included: about 160 bytes a queued job.
    #[test]
    fn a_job_record_stays_small() {
        assert!(size_of::<super::Job>() <= 56, "{}", size_of::<super::Job>());
        // The slab's entry (this is its shape) adds nothing: its tag fits in a niche.
        #[allow(dead_code)]
        enum Entry<T> {
            Vacant(usize),
            Occupied(T),
        }
        assert_eq!(size_of::<Entry<super::Job>>(), size_of::<super::Job>());
        assert_eq!(size_of::<super::State>(), 12);
    }
}
