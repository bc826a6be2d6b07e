//! Everything an owner shard holds for the functions it owns: their priority queues, unique-id
//! indexes, worker entries and jobs, and the rules of PROTOCOL.md §3 that act on them.
//!
//! No I/O here. [`Owner::handle`] takes one message and appends the messages it causes to an
//! outbox; the shard routes them. So this module is tested and benchmarked without sockets.

pub mod hash;
pub mod list;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod rule_tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use hashbrown::HashTable;
use slab::Slab;
use smallvec::SmallVec;

use crate::message::*;
use crate::protocol::{self, PacketType, encode};
use crate::store::{Op, StoredJob};
use list::{Linked, Links, List};

pub use crate::message::{JobBytes, MAX_UNIQUE, Priority};

/// What an owner needs from the configuration.
#[derive(Clone, Debug)]
pub struct OwnerConfig {
    /// Handle prefix, e.g. `H:host`; handles are `<prefix>:<n>`.
    pub handle_prefix: Box<[u8]>,
    /// `--job-retries`: attempts before a job is dropped; 0 is unlimited.
    pub job_retries: u8,
    /// `--worker-wakeup`: NOOPs per queued job; 0 wakes every sleeper.
    pub worker_wakeup: u8,
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
    /// On its priority list.
    Queued,
    /// An epoch job not yet due: on the timer heap, not on a list.
    Future,
    /// Held by a worker.
    Running(ConnId),
    /// A background job whose add is on its way to the store: not runnable, not yet
    /// acknowledged (JOB_CREATED goes out once the store says it is durable).
    Pending,
}

/// A client waiting on a foreground job.
#[derive(Clone, Copy, Debug)]
struct Waiter {
    conn: ConnId,
    exceptions: bool,
}

struct Job {
    number: u64,
    /// Unique, reducer and payload in one allocation (see [`JobBytes`]); the lengths are
    /// kept beside the job's other small fields rather than in a padded `JobBytes`, which
    /// saves 8 bytes a job (a million queued jobs is the case that matters).
    blob: Box<[u8]>,
    unique_len: u8,
    reducer_len: u8,
    function: u32,
    priority: Priority,
    background: bool,
    state: State,
    /// Attach order; results go newest first (§3.6).
    /// (A `Vec`: background jobs, the ones that queue up by the million, have none, and an
    /// empty `Vec` is 8 bytes smaller than an inline one-element `SmallVec`.)
    waiters: Vec<Waiter>,
    numerator: u32,
    denominator: u32,
    retries: u8,
    /// gearmand's `ignore_job`: nobody waits any more; results are dropped.
    ignore: bool,
    /// Bumped on each assignment, so a stale CAN_DO_TIMEOUT timer is recognised.
    assignment: u32,
    /// An add for this job went to the store, so its end must delete the row.
    stored: bool,
    /// Its store key was generated (empty or `-` unique): see [`Owner::store_unique`].
    generated_key: bool,
    links: Links,
}

impl Linked for Job {
    fn links(&mut self) -> &mut Links {
        &mut self.links
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
    /// Jobs by coalescing key: their unique, or for unique `-` their payload (§3.3).
    coalesce: Index,
    maxqueue: [u32; 3],
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
    timer: Option<(u64, u32)>,
}

impl Worker {
    /// Whether a NOOP would wake it: asleep, and not sent one since.
    fn wakeable(&self) -> bool {
        self.sleeping && !self.noop_sent
    }
}

/// Sets a worker entry's wake flags, keeping `count` (the owner's number of wakeable entries)
/// in step.
fn set_wake_flags(count: &mut usize, w: &mut Worker, sleeping: bool, noop_sent: bool) {
    *count -= w.wakeable() as usize;
    w.sleeping = sleeping;
    w.noop_sent = noop_sent;
    *count += w.wakeable() as usize;
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
    fn key(&self) -> Key<'_> {
        key_of(self.unique(), self.data())
    }

    fn unique(&self) -> &[u8] {
        &self.blob[..self.unique_len as usize]
    }

    fn reducer(&self) -> &[u8] {
        let u = self.unique_len as usize;
        &self.blob[u..u + self.reducer_len as usize]
    }

    fn data(&self) -> &[u8] {
        &self.blob[self.unique_len as usize + self.reducer_len as usize..]
    }
}

/// Jobs by coalescing key. Each entry is the job's slab key and 32 bits of its hash, never a
/// second copy of the unique: 8 bytes a job. Keeping the hash bits means growing the table
/// rehashes from the entries alone; hashing through the jobs would touch every job record
/// (a cache miss each), which stalled submissions for a tenth of a second at a million jobs.
#[derive(Default)]
struct Index(HashTable<(u32, u32)>);

/// A 32-bit hash spread over 64 bits, so the table's bucket bits (low) and tag bits (high)
/// both come from the 32 bits an entry keeps.
fn spread(h: u32) -> u64 {
    (h as u64) << 32 | h as u64
}

impl Index {
    fn find(&self, hash: u32, eq: impl Fn(usize) -> bool) -> Option<usize> {
        self.0
            .find(spread(hash), |&(k, h)| h == hash && eq(k as usize))
            .map(|&(k, _)| k as usize)
    }

    fn insert(&mut self, hash: u32, key: usize) {
        self.0
            .insert_unique(spread(hash), (key as u32, hash), |&(_, h)| spread(h));
    }

    fn remove(&mut self, hash: u32, key: usize) {
        if let Ok(e) = self.0.find_entry(spread(hash), |&(k, _)| k as usize == key) {
            e.remove();
        }
    }
}

/// The hashes of coalescing keys, keyed once per owner.
struct Hashes(ahash::RandomState);

impl Hashes {
    fn key(&self, key: Key<'_>) -> u32 {
        let h = match key {
            Key::None => 0,
            Key::Unique(u) => self.0.hash_one((0u8, u)),
            Key::Data(d) => self.0.hash_one((1u8, d)),
        };
        (h >> 32) as u32 ^ h as u32
    }
}

/// Jobs by handle number. An owner numbers its jobs in sequence and most end in roughly the
/// order they came, so the live ones sit in a window of sequence numbers: a ring of slab keys
/// indexed by sequence (4 bytes a job, no hashing, never rehashed). A job that stays while
/// many later ones come and go (a long-running or far-future job) would stretch the window;
/// once the window is more than twice the live jobs, the oldest entries move to a small map.
#[derive(Default)]
struct Numbers {
    /// Sequence of `window[0]`.
    base: u64,
    /// Slab key per sequence, `u32::MAX` once the job ended.
    window: VecDeque<u32>,
    /// Live jobs older than the window.
    old: AHashMap<u64, u32>,
    live: usize,
}

impl Numbers {
    const GONE: u32 = u32::MAX;

    fn insert(&mut self, sequence: u64, key: usize) {
        if self.window.is_empty() {
            self.base = sequence;
        }
        debug_assert_eq!(
            self.base + self.window.len() as u64,
            sequence,
            "sequences are dense"
        );
        self.window.push_back(key as u32);
        self.live += 1;
        while self.window.len() > 2 * self.live + 1024 {
            let k = self.window.pop_front().unwrap();
            if k != Self::GONE {
                self.old.insert(self.base, k);
            }
            self.base += 1;
        }
    }

    fn get(&self, sequence: u64) -> Option<usize> {
        match sequence.checked_sub(self.base) {
            Some(i) => self
                .window
                .get(i as usize)
                .copied()
                .filter(|&k| k != Self::GONE),
            None => self.old.get(&sequence).copied(),
        }
        .map(|k| k as usize)
    }

    fn remove(&mut self, sequence: u64) {
        match sequence.checked_sub(self.base) {
            Some(i) => {
                if let Some(k) = self.window.get_mut(i as usize) {
                    *k = Self::GONE;
                }
                while self.window.front() == Some(&Self::GONE) {
                    self.window.pop_front();
                    self.base += 1;
                }
            }
            None => {
                self.old.remove(&sequence);
            }
        }
        self.live -= 1;
    }
}

/// A submission acknowledged once the store batch holding its job is durable.
#[derive(Clone, Copy, Debug)]
struct Awaiting {
    batch: u64,
    number: u64,
    client: ConnId,
    seq: Seq,
    when: i64,
    /// What the acknowledgement completes: a new job waiting (`Pending`) to be queued, or a
    /// foreground job a background submission made background (`Converting`), which runs
    /// meanwhile.
    kind: AwaitKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AwaitKind {
    Pending,
    Converting,
}

/// Messages produced by an owner, with their destination shards.
pub type Outbox = Vec<(ShardId, ToHome)>;

/// Where an owner reads the time: the system clocks, or a time a test sets, so that epoch
/// jobs and CAN_DO_TIMEOUT are tested without sleeping. Read only for epoch jobs and timeouts,
/// never on the plain submit/grab/complete path.
#[derive(Clone, Copy, Debug, Default)]
struct Clock {
    /// A fixed (monotonic instant, time since the Unix epoch) instead of the system clocks.
    fixed: Option<(Instant, Duration)>,
}

impl Clock {
    fn instant(&self) -> Instant {
        self.fixed.map_or_else(Instant::now, |(i, _)| i)
    }

    /// Time since the Unix epoch.
    fn unix(&self) -> Duration {
        self.fixed.map_or_else(
            || {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
            },
            |(_, u)| u,
        )
    }

    /// Whole seconds since the Unix epoch.
    fn unix_secs(&self) -> i64 {
        self.unix().as_secs() as i64
    }
}

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
    timeouts: BinaryHeap<Reverse<(Instant, u64, u32)>>,
    clock: Clock,
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
            by_number: Numbers::default(),
            hashes: Hashes(ahash::RandomState::new()),
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
            clock: Clock::default(),
        }
    }

    /// Makes the owner read `instant` and `unix` (time since the Unix epoch) as the time.
    #[cfg(test)]
    fn set_clock(&mut self, instant: Instant, unix: Duration) {
        self.clock.fixed = Some((instant, unix));
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
            coalesce: Index::default(),
            maxqueue: [0; 3],
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
            } => {
                let f = self.function_id(&function);
                self.functions[f as usize].workers.push(worker);
                self.workers
                    .entry(worker)
                    .or_default()
                    .functions
                    .insert(0, (f, timeout_ms));
            }
            ToOwner::CantDo { worker, function } => {
                if let Some(&f) = self.by_name.get(&function[..]) {
                    self.unregister(worker, Some(f), out);
                }
            }
            ToOwner::WorkerGone { worker } => self.unregister(worker, None, out),
            ToOwner::Grab {
                worker,
                seq,
                kind,
                rest,
            } => self.grab(worker, seq, kind, rest, out),
            ToOwner::Sleep { worker } => {
                let Some(w) = self.workers.get_mut(&worker) else {
                    return;
                };
                let runnable = w.functions.iter().any(|&(f, _)| {
                    self.functions[f as usize]
                        .queues
                        .iter()
                        .any(|q| !q.is_empty())
                });
                set_wake_flags(&mut self.wakeable, w, true, runnable);
                if !runnable {
                    // gearmand removes a sleeping connection's timeout: the job it holds may
                    // now run as long as it takes.
                    w.timer = None;
                }
                if runnable {
                    out.push((
                        worker.shard,
                        ToHome::Noop {
                            to: worker,
                            from: self.shard,
                        },
                    ));
                }
            }
            ToOwner::DropTimer { worker, number } => {
                // Another owner assigned this worker a job: that re-armed (or removed) the
                // connection's one timer, so the one guarding `number` here is gone.
                if let Some(w) = self.workers.get_mut(&worker)
                    && w.timer.is_some_and(|(n, _)| n == number)
                {
                    w.timer = None;
                }
            }
            ToOwner::NoopDeclined { worker } => {
                let Some(w) = self.workers.get_mut(&worker) else {
                    return;
                };
                set_wake_flags(&mut self.wakeable, w, false, false);
                let functions: SmallVec<[u32; 4]> = w.functions.iter().map(|&(f, _)| f).collect();
                for f in functions {
                    if self.functions[f as usize]
                        .queues
                        .iter()
                        .any(|q| !q.is_empty())
                    {
                        self.wake(f, out);
                    }
                }
            }
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
            } => {
                let mut bytes = Vec::new();
                match self.job_by_number(number).map(|k| &self.jobs[k]) {
                    Some(job) => {
                        let running = matches!(job.state, State::Running(_));
                        let (mut a, mut b) = ([0; 20], [0; 20]);
                        encode(
                            &mut bytes,
                            PacketType::StatusRes,
                            &[
                                &handle,
                                b"1",
                                if running { b"1" } else { b"0" },
                                protocol::num(job.numerator as u64, &mut a),
                                protocol::num(job.denominator as u64, &mut b),
                            ],
                        );
                    }
                    None => unknown_status(&mut bytes, &handle),
                }
                reply(out, client, seq, bytes, None);
            }
            ToOwner::ClientGone { client, jobs } => {
                for number in jobs {
                    let Some(key) = self.job_by_number(number) else {
                        continue;
                    };
                    let job = &mut self.jobs[key];
                    job.waiters.retain(|w| w.conn != client);
                    if job.waiters.is_empty() && !job.background {
                        self.abandon(key);
                    }
                }
            }
            ToOwner::Cancel {
                client,
                seq,
                number,
            } => {
                let line: &[u8] = match self.job_by_number(number) {
                    Some(key) => {
                        let handle = handle(&self.config.handle_prefix, number);
                        let waiters = std::mem::take(&mut self.jobs[key].waiters);
                        for w in waiters.iter().rev() {
                            let mut bytes = Vec::new();
                            encode(&mut bytes, PacketType::WorkFail, &[&handle]);
                            forward(out, w.conn, bytes, Some(number));
                        }
                        self.abandon(key);
                        b"OK\r\n"
                    }
                    None => b"ERR UNKNOWN_JOB\r\n",
                };
                reply(out, client, seq, line.to_vec(), None);
            }
            ToOwner::Function {
                client,
                seq,
                function,
                maxqueue,
            } => {
                let f = self.function_id(&function);
                if let Some(limits) = maxqueue {
                    self.functions[f as usize].maxqueue = limits;
                }
                reply(out, client, seq, b"OK\r\n".to_vec(), None);
            }
            ToOwner::Ask {
                client,
                gather,
                query,
            } => {
                let part = self.answer(query);
                out.push((
                    client.shard,
                    ToHome::Answer {
                        to: client,
                        gather,
                        part,
                    },
                ));
            }
        }
    }

    fn submit(&mut self, s: Submit, out: &mut Outbox) {
        let client = s.client;
        let f = self.function_id(&s.function);
        let function = &mut self.functions[f as usize];
        let wanted = key_of(s.job.unique(), s.job.data());
        let hash = self.hashes.key(wanted);
        let jobs = &self.jobs;
        let existing = match wanted {
            Key::None => None,
            _ => function.coalesce.find(hash, |k| jobs[k].key() == wanted),
        };
        let coalescable = wanted != Key::None;
        // A store key is generated where the unique cannot tell jobs apart (PROTOCOL.md
        // "Our decisions" 3: one job never overwrites another in a store).
        let generated_key = !matches!(wanted, Key::Unique(_));
        if let Some(key) = existing {
            // Coalesce: the new submission's data and priority are dropped (§3.3).
            let job = &mut self.jobs[key];
            let number = job.number;
            let in_flight = job.state == State::Pending
                || (!self.converting.is_empty() && self.converting.contains(&number));
            if s.background && in_flight {
                // Answered with the job's own submission, once the batch holding its add is
                // durable (that add may have left in an earlier batch than this turn's).
                return self
                    .coalesced
                    .entry(number)
                    .or_default()
                    .push((client, s.seq));
            }
            if s.background && !job.background {
                // This submitter is told the job exists, so it must not be dropped when its
                // foreground clients go away: it becomes a background job (gearmand drops it).
                // With a store it is stored first, and acknowledged once durable.
                job.background = true;
                if self.config.durable {
                    job.stored = true;
                    job.generated_key = generated_key;
                    let job = &self.jobs[key];
                    self.store_ops.push(Op::Add(StoredJob {
                        function: s.function.into_vec(),
                        unique: store_unique(self.config.boot, job),
                        priority: job.priority,
                        data: job.data().to_vec(),
                        when: 0,
                    }));
                    self.converting.insert(number);
                    return self.awaiting.push_back(Awaiting {
                        batch: self.batch + 1,
                        number,
                        client,
                        seq: s.seq,
                        when: 0,
                        kind: AwaitKind::Converting,
                    });
                }
            }
            let mut attach = None;
            if !s.background {
                job.waiters.push(Waiter {
                    conn: client,
                    exceptions: s.exceptions,
                });
                job.ignore = false;
                attach = Some(number);
            }
            return reply(out, client, s.seq, self.job_created(number), attach);
        }
        let p = s.priority as usize;
        if function.maxqueue[p] > 0 && function.total() >= function.maxqueue[p] {
            let mut bytes = Vec::new();
            protocol::encode_error(&mut bytes, "QUEUE_ERROR", "Job queue is full");
            return reply(out, client, s.seq, bytes, None);
        }
        let (blob, unique_len, reducer_len) = s.job.into_parts();
        let (number, sequence) = self.next_number();
        let stored = s.background && self.config.durable;
        let mut waiters = Vec::new();
        if !s.background {
            waiters.push(Waiter {
                conn: client,
                exceptions: s.exceptions,
            });
        }
        let key = self.jobs.insert(Job {
            number,
            blob,
            unique_len,
            reducer_len,
            function: f,
            priority: s.priority,
            background: s.background,
            state: State::Pending,
            waiters,
            numerator: 0,
            denominator: 0,
            retries: 0,
            ignore: false,
            assignment: 0,
            stored,
            generated_key: stored && generated_key,
            links: Links::default(),
        });
        self.by_number.insert(sequence, key);
        if coalescable {
            self.functions[f as usize].coalesce.insert(hash, key);
        }
        if stored {
            // Group commit: the add leaves with this loop turn's batch, and JOB_CREATED
            // once the store says the batch is durable (`durable`).
            let job = &self.jobs[key];
            let add = StoredJob {
                function: s.function.into_vec(),
                unique: store_unique(self.config.boot, job),
                priority: s.priority,
                data: job.data().to_vec(),
                when: s.when,
            };
            self.store_ops.push(Op::Add(add));
            self.functions[f as usize].pending += 1;
            self.awaiting.push_back(Awaiting {
                batch: self.batch + 1,
                number,
                client,
                seq: s.seq,
                when: s.when,
                kind: AwaitKind::Pending,
            });
            return;
        }
        reply(
            out,
            client,
            s.seq,
            self.job_created(number),
            (!s.background).then_some(number),
        );
        self.admit(key, s.when, out);
    }

    fn job_created(&self, number: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode(
            &mut bytes,
            PacketType::JobCreated,
            &[&handle(&self.config.handle_prefix, number)],
        );
        bytes
    }

    /// Puts a new (or newly durable) job where it belongs: on its queue, waking workers, or on
    /// the epoch timer if not yet due.
    fn admit(&mut self, key: usize, when: i64, out: &mut Outbox) {
        let job = &mut self.jobs[key];
        let (f, p, number) = (job.function, job.priority as usize, job.number);
        if when > 0 && when > self.clock.unix_secs() {
            job.state = State::Future;
            self.functions[f as usize].future += 1;
            self.epochs.push(Reverse((when, number)));
        } else {
            job.state = State::Queued;
            self.functions[f as usize].queues[p].push_back(&mut self.jobs, key);
            self.wake(f, out);
        }
    }

    /// Store changes made since the last call, as the next batch (numbered from 1).
    pub fn take_store_ops(&mut self) -> Option<(u64, Vec<Op>)> {
        if self.store_ops.is_empty() {
            return None;
        }
        self.batch += 1;
        Some((self.batch, std::mem::take(&mut self.store_ops)))
    }

    /// The store made every batch up to `upto` durable (or failed them): acknowledge their
    /// jobs, or refuse them with QUEUE_ERROR and drop them.
    pub fn durable(&mut self, upto: u64, result: Result<(), &str>, out: &mut Outbox) {
        while let Some(a) = self.awaiting.front().copied() {
            if a.batch > upto {
                break;
            }
            self.awaiting.pop_front();
            if a.kind == AwaitKind::Converting {
                self.converting.remove(&a.number);
                let key = self.job_by_number(a.number);
                let bytes = match (result, key) {
                    (Ok(()), _) => self.job_created(a.number),
                    (Err(why), key) => {
                        if let Some(key) = key {
                            // Not stored: the job is foreground again, as before the submission.
                            log::error!("queue store failed, refusing job {}: {why}", a.number);
                            let job = &mut self.jobs[key];
                            job.stored = false;
                            job.background = false;
                            if job.waiters.is_empty() {
                                self.abandon(key);
                            }
                        }
                        let mut bytes = Vec::new();
                        protocol::encode_error(&mut bytes, "QUEUE_ERROR", "QUEUE_ERROR");
                        bytes
                    }
                };
                self.answer_awaiting(a, bytes, out);
                continue;
            }
            let key = self
                .job_by_number(a.number)
                .filter(|&k| self.jobs[k].state == State::Pending);
            let bytes = match result {
                Ok(()) => {
                    if let Some(key) = key {
                        self.functions[self.jobs[key].function as usize].pending -= 1;
                        self.admit(key, a.when, out);
                    }
                    self.job_created(a.number)
                }
                Err(why) => {
                    if let Some(key) = key {
                        log::error!("queue store failed, refusing job {}: {why}", a.number);
                        let job = &mut self.jobs[key];
                        job.stored = false;
                        let handle = handle(&self.config.handle_prefix, a.number);
                        for w in std::mem::take(&mut job.waiters).iter().rev() {
                            let mut bytes = Vec::new();
                            encode(&mut bytes, PacketType::WorkFail, &[&handle]);
                            forward(out, w.conn, bytes, Some(a.number));
                        }
                        self.finish(key);
                    }
                    let mut bytes = Vec::new();
                    protocol::encode_error(&mut bytes, "QUEUE_ERROR", "QUEUE_ERROR");
                    bytes
                }
            };
            self.answer_awaiting(a, bytes, out);
        }
    }

    /// Answers an acknowledged (or refused) submission and those that coalesced onto it.
    fn answer_awaiting(&mut self, a: Awaiting, bytes: Vec<u8>, out: &mut Outbox) {
        let others = match self.coalesced.is_empty() {
            true => None,
            false => self.coalesced.remove(&a.number),
        };
        for (client, seq) in others.into_iter().flatten() {
            reply(out, client, seq, bytes.clone(), None);
        }
        reply(out, a.client, a.seq, bytes, None);
    }

    /// Takes back a job read from the store at start-up (before any connection): queued as a
    /// background job with the next handle number, as gearmand replays.
    pub fn restore(&mut self, job: StoredJob, out: &mut Outbox) {
        let f = self.function_id(&job.function);
        let unique = &job.unique[..job.unique.len().min(MAX_UNIQUE)];
        let wanted = key_of(unique, &job.data);
        let hash = self.hashes.key(wanted);
        let jobs = &self.jobs;
        if wanted != Key::None
            && self.functions[f as usize]
                .coalesce
                .find(hash, |k| jobs[k].key() == wanted)
                .is_some()
        {
            return; // rows with the same (function, unique) coalesce, as in gearmand
        }
        let (number, sequence) = self.next_number();
        let key = self.jobs.insert(Job {
            number,
            blob: [unique, &job.data[..]].concat().into(),
            unique_len: unique.len() as u8,
            reducer_len: 0,
            function: f,
            priority: job.priority,
            background: true,
            state: State::Pending,
            waiters: Vec::new(),
            numerator: 0,
            denominator: 0,
            retries: 0,
            ignore: false,
            assignment: 0,
            stored: true,
            generated_key: false,
            links: Links::default(),
        });
        self.by_number.insert(sequence, key);
        if wanted != Key::None {
            self.functions[f as usize].coalesce.insert(hash, key);
        }
        self.admit(key, job.when, out);
    }

    /// Sends NOOP to sleeping workers of `f`, walking its entries round robin (§3.5).
    fn wake(&mut self, f: u32, out: &mut Outbox) {
        if self.wakeable == 0 {
            return;
        }
        let function = &mut self.functions[f as usize];
        let n = function.workers.len();
        if n == 0 {
            return;
        }
        let limit = self.config.worker_wakeup as usize;
        let start = function.wake_at % n;
        let mut sent = 0;
        let mut examined = 0;
        while examined < n {
            let conn = function.workers[(start + examined) % n];
            examined += 1;
            if let Some(w) = self.workers.get_mut(&conn)
                && w.wakeable()
            {
                set_wake_flags(&mut self.wakeable, w, true, true);
                out.push((
                    conn.shard,
                    ToHome::Noop {
                        to: conn,
                        from: self.shard,
                    },
                ));
                sent += 1;
                if limit > 0 && sent == limit {
                    break;
                }
            }
        }
        function.wake_at = (start + examined) % n;
    }

    fn grab(
        &mut self,
        worker: ConnId,
        seq: Seq,
        kind: GrabKind,
        rest: SmallVec<[ShardId; 4]>,
        out: &mut Outbox,
    ) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return out.push((
                worker.shard,
                ToHome::Empty {
                    to: worker,
                    seq,
                    kind,
                    rest,
                },
            ));
        };
        set_wake_flags(&mut self.wakeable, w, false, false);
        // Priority first across all of the worker's functions here (gearmand 2.0), then the
        // worker's function order (most recently registered first, gearmand 1.1).
        let mut found = None;
        'pick: for p in 0..3 {
            for &(f, _) in w.functions.iter() {
                if let Some(key) = self.functions[f as usize].queues[p].head() {
                    found = Some((f, p, key));
                    break 'pick;
                }
            }
        }
        let Some((f, p, key)) = found else {
            return out.push((
                worker.shard,
                ToHome::Empty {
                    to: worker,
                    seq,
                    kind,
                    rest,
                },
            ));
        };
        if self.config.round_robin {
            // Move every entry of the served function to the end of the worker's list.
            let (served, others): (Vec<_>, Vec<_>) =
                w.functions.iter().partition(|&&(g, _)| g == f);
            w.functions = others.into_iter().chain(served).collect();
        }
        let timeout = w
            .functions
            .iter()
            .find(|&&(g, _)| g == f)
            .map_or(0, |&(_, t)| t);
        w.held.push(key);
        let function = &mut self.functions[f as usize];
        function.queues[p].remove(&mut self.jobs, key);
        function.running += 1;
        let job = &mut self.jobs[key];
        job.state = State::Running(worker);
        job.assignment = job.assignment.wrapping_add(1);
        // gearmand's one timer per connection: this assignment re-arms it, or removes it
        // when the function has no timeout.
        w.timer = None;
        if timeout > 0 {
            let after = Duration::from_millis(timeout.max(1000) as u64);
            self.timeouts.push(Reverse((
                self.clock.instant() + after,
                job.number,
                job.assignment,
            )));
            w.timer = Some((job.number, job.assignment));
        }
        let handle = handle(&self.config.handle_prefix, job.number);
        let name = &self.functions[f as usize].name;
        let (unique, reducer, data) = (job.unique(), job.reducer(), job.data());
        // `encode` reserves the exact size, so the boxing below does not reallocate.
        let mut bytes = Vec::new();
        match kind {
            GrabKind::Plain => encode(&mut bytes, PacketType::JobAssign, &[&handle, name, data]),
            GrabKind::All if !reducer.is_empty() => encode(
                &mut bytes,
                PacketType::JobAssignAll,
                &[&handle, name, unique, reducer, data],
            ),
            GrabKind::Uniq | GrabKind::All => encode(
                &mut bytes,
                PacketType::JobAssignUniq,
                &[&handle, name, unique, data],
            ),
        }
        out.push((
            worker.shard,
            ToHome::Assign {
                to: worker,
                seq,
                number: job.number,
                bytes: bytes.into(),
            },
        ));
    }

    fn work(
        &mut self,
        worker: ConnId,
        number: u64,
        kind: WorkKind,
        packet: Box<[u8]>,
        out: &mut Outbox,
    ) {
        let key = match self.job_by_number(number) {
            Some(k) if self.jobs[k].state == State::Running(worker) => k,
            _ => {
                let mut bytes = Vec::new();
                let (code, text) = not_found(kind);
                protocol::encode_error(&mut bytes, code, text);
                return forward(out, worker, bytes, None);
            }
        };
        let job = &mut self.jobs[key];
        if kind == WorkKind::Status {
            let p = protocol::split_args(
                protocol::Magic::Response,
                PacketType::WorkStatus,
                &packet[protocol::HEADER_LEN..],
            );
            if let Ok(p) = p {
                // gearmand reads both with atoi, the denominator from its first 10 bytes
                // (an 11-byte buffer; past 11 bytes it closes the worker's connection, where
                // gearshiftd reads the first 10 as it would have).
                let denominator = p.arg(2);
                job.numerator = protocol::atoi(p.arg(1)) as u32;
                job.denominator = protocol::atoi(&denominator[..denominator.len().min(10)]) as u32;
            }
        }
        let ends = kind.ends_job().then_some(number);
        // Newest waiter first (§3.6); the last recipient takes the packet itself, so the common
        // single-client case forwards without a copy.
        let waiters: SmallVec<[Waiter; 2]> = job.waiters.iter().rev().copied().collect();
        let mut packet = Some(packet);
        for (i, w) in waiters.iter().enumerate() {
            let bytes: Box<[u8]> = if kind == WorkKind::Exception && !w.exceptions {
                // A client without the exceptions option gets WORK_FAIL "<handle>\0" (§3.6).
                let mut b = Vec::new();
                let body = &packet.as_ref().unwrap()[protocol::HEADER_LEN..];
                let handle = body.split(|&c| c == 0).next().unwrap_or_default();
                encode(&mut b, PacketType::WorkFail, &[handle, b""]);
                b.into()
            } else if i + 1 == waiters.len() {
                packet.take().unwrap()
            } else {
                packet.clone().unwrap()
            };
            out.push((
                w.conn.shard,
                ToHome::Forward {
                    to: w.conn,
                    bytes,
                    ends,
                },
            ));
        }
        if ends.is_some() {
            self.finish(key);
            if let Some(w) = self.workers.get_mut(&worker) {
                w.held.retain(|&mut k| k != key);
            }
        }
    }

    /// Frees a job that ended or was dropped, in any state: lists, counters, indexes, slab.
    fn finish(&mut self, key: usize) {
        let (f, p, state) = {
            let job = &self.jobs[key];
            (job.function as usize, job.priority as usize, job.state)
        };
        let function = &mut self.functions[f];
        match state {
            State::Running(_) => function.running -= 1,
            State::Queued => function.queues[p].remove(&mut self.jobs, key),
            State::Future => function.future -= 1,
            State::Pending => function.pending -= 1,
        }
        let job = &self.jobs[key];
        if job.stored {
            let delete = Op::Delete {
                function: function.name.to_vec(),
                unique: store_unique(self.config.boot, job),
            };
            self.store_ops.push(delete);
        }
        if job.key() != Key::None {
            function.coalesce.remove(self.hashes.key(job.key()), key);
        }
        self.by_number.remove(job.number / self.shards as u64);
        self.jobs.remove(key);
    }

    /// Nobody waits for the job any more: a queued one goes at once, a running one finishes
    /// unseen (§3.10, "Our decisions" 5 and 6).
    fn abandon(&mut self, key: usize) {
        let job = &mut self.jobs[key];
        job.waiters.clear();
        match job.state {
            State::Running(_) => job.ignore = true,
            State::Queued | State::Future | State::Pending => self.finish(key),
        }
    }

    /// Removes a worker's entries (all, or one function's) and requeues the jobs it held for them.
    fn unregister(&mut self, worker: ConnId, only: Option<u32>, out: &mut Outbox) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        let mut touched: SmallVec<[u32; 4]> = SmallVec::new();
        w.functions.retain(|&(f, _)| {
            let drop = only.is_none_or(|o| o == f);
            if drop && !touched.contains(&f) {
                touched.push(f);
            }
            !drop
        });
        let jobs = &self.jobs;
        let mut requeue: SmallVec<[usize; 2]> = SmallVec::new();
        w.held.retain(|&mut k| {
            let drop = only.is_none_or(|o| o == jobs[k].function);
            if drop {
                requeue.push(k);
            }
            !drop
        });
        if w.functions.is_empty() && w.held.is_empty() {
            self.wakeable -= w.wakeable() as usize;
            self.workers.remove(&worker);
        }
        for &f in &touched {
            self.functions[f as usize].workers.retain(|&c| c != worker);
        }
        for key in requeue {
            self.requeue(key, out);
        }
        // A worker leaving a function with jobs queued may have been the one awake for them
        // (woken by their NOOP, or busy with another job): with --worker-wakeup, the other
        // workers may all be asleep unwoken, so wake them as a new job would.
        for f in touched {
            if self.functions[f as usize]
                .queues
                .iter()
                .any(|q| !q.is_empty())
            {
                self.wake(f, out);
            }
        }
    }

    /// A held job goes back to its queue's tail, or is dropped at the retry limit (§3.9).
    fn requeue(&mut self, key: usize, out: &mut Outbox) {
        let job = &mut self.jobs[key];
        job.retries = job.retries.wrapping_add(1);
        let limit = self.config.job_retries;
        if job.ignore || (limit > 0 && job.retries >= limit) {
            let handle = handle(&self.config.handle_prefix, job.number);
            let number = job.number;
            for w in std::mem::take(&mut job.waiters).iter().rev() {
                let mut bytes = Vec::new();
                encode(&mut bytes, PacketType::WorkFail, &[&handle]);
                forward(out, w.conn, bytes, Some(number));
            }
            return self.finish(key);
        }
        job.numerator = 0;
        job.denominator = 0;
        job.state = State::Queued;
        let (f, p) = (job.function, job.priority as usize);
        let function = &mut self.functions[f as usize];
        function.running -= 1;
        function.queues[p].push_back(&mut self.jobs, key);
        self.wake(f, out);
    }

    /// When the next timer is due, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let epoch = self.epochs.peek().map(|Reverse((when, _))| {
            let due = Duration::from_secs((*when).max(0) as u64);
            self.clock.instant() + due.saturating_sub(self.clock.unix())
        });
        let timeout = self.timeouts.peek().map(|Reverse((at, _, _))| *at);
        match (epoch, timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs due timers: epoch jobs that fell due are queued and wake workers; held jobs past
    /// their CAN_DO_TIMEOUT are taken back and requeued.
    pub fn run_timers(&mut self, out: &mut Outbox) {
        let now = self.clock.unix_secs();
        while let Some(&Reverse((when, number))) = self.epochs.peek() {
            if when > now {
                break;
            }
            self.epochs.pop();
            let Some(key) = self.job_by_number(number) else {
                continue;
            };
            let job = &mut self.jobs[key];
            if job.state != State::Future {
                continue;
            }
            job.state = State::Queued;
            let (f, p) = (job.function, job.priority as usize);
            self.functions[f as usize].future -= 1;
            self.functions[f as usize].queues[p].push_back(&mut self.jobs, key);
            self.wake(f, out);
        }
        let instant = self.clock.instant();
        while let Some(&Reverse((at, number, assignment))) = self.timeouts.peek() {
            if at > instant {
                break;
            }
            self.timeouts.pop();
            let Some(key) = self.job_by_number(number) else {
                continue;
            };
            let job = &self.jobs[key];
            let State::Running(worker) = job.state else {
                continue;
            };
            let Some(w) = self.workers.get_mut(&worker) else {
                continue;
            };
            if job.assignment != assignment || w.timer != Some((number, assignment)) {
                // Re-armed by a later assignment, removed by PRE_SLEEP, or for an old run.
                continue;
            }
            w.timer = None;
            w.held.retain(|&mut k| k != key);
            out.push((worker.shard, ToHome::Revoked { to: worker, number }));
            self.requeue(key, out);
        }
    }

    fn answer(&mut self, query: Query) -> Part {
        match query {
            Query::Functions => Part::Functions(
                self.functions
                    .iter()
                    .map(|(_, f)| FunctionRow {
                        name: f.name.clone(),
                        created: f.created,
                        total: f.total(),
                        running: f.running,
                        queued: [
                            f.queues[0].len(),
                            f.queues[1].len() + f.future,
                            f.queues[2].len(),
                        ],
                        workers: f.workers.len() as u32,
                    })
                    .collect(),
            ),
            Query::Jobs | Query::Uniques => Part::Jobs(
                self.jobs
                    .iter()
                    .map(|(_, j)| JobRow {
                        number: j.number,
                        retries: j.retries,
                        ignore: j.ignore,
                        background: j.background,
                        unique: j.unique().into(),
                        unique_key: match j.key() {
                            Key::None => 0,
                            Key::Unique(u) => hash::jenkins(u),
                            Key::Data(d) => hash::jenkins(d),
                        },
                    })
                    .collect(),
            ),
            Query::DropFunction(name) => {
                let found = self
                    .functions
                    .iter()
                    .find(|(_, f)| f.name.eq_ignore_ascii_case(&name))
                    .map(|(id, _)| id);
                Part::Dropped(found.map(|id| {
                    let f = &self.functions[id];
                    if !f.workers.is_empty() || f.running > 0 {
                        "ERR there are still connected workers or executing clients\r\n"
                    } else if f.total() > 0 {
                        "ERR there are still queued jobs\r\n"
                    } else {
                        let f = self.functions.remove(id);
                        self.by_name.remove(&f.name);
                        "OK\r\n"
                    }
                }))
            }
            Query::StatusUnique(unique) => Part::StatusUnique({
                let wanted = Key::Unique(&unique);
                let hash = self.hashes.key(wanted);
                let jobs = &self.jobs;
                self.functions
                    .iter()
                    .find_map(|(_, f)| f.coalesce.find(hash, |k| jobs[k].key() == wanted))
                    .map(|k| {
                        let j = &self.jobs[k];
                        (
                            matches!(j.state, State::Running(_)),
                            j.numerator,
                            j.denominator,
                            j.waiters.len() as u32,
                        )
                    })
            }),
            Query::Barrier => Part::Barrier,
        }
    }
}

/// The unique a job is stored under: its own, or one generated from this process's boot
/// stamp and the handle number for an empty or `-` unique.
fn store_unique(boot: u64, job: &Job) -> Vec<u8> {
    if job.generated_key {
        format!("gs-{boot:x}-{}", job.number).into_bytes()
    } else {
        job.unique().to_vec()
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
    /// The fill target (a quarter of gearmand's 880 bytes per queued job) leaves about 100
    /// bytes for the slab entry: keep the job record small.
    #[test]
    fn a_job_record_stays_small() {
        assert!(
            std::mem::size_of::<super::Job>() <= 96,
            "{}",
            std::mem::size_of::<super::Job>()
        );
    }
}

#[cfg(test)]
mod numbers_tests {
    use super::Numbers;
    use std::collections::HashMap;

    /// Random inserts and removals against a map model, with a few jobs that live long (the
    /// window must move them aside rather than grow).
    #[test]
    fn numbers_match_a_map_and_stay_bounded() {
        let mut n = Numbers::default();
        let mut model: HashMap<u64, usize> = HashMap::new();
        let mut seed: u64 = 0x2545F4914F6CDD1D;
        for seq in 0..200_000u64 {
            n.insert(seq, seq as usize % 1000);
            model.insert(seq, seq as usize % 1000);
            assert!(n.window.len() <= 2 * n.live + 1024);
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Remove a random recent job, keeping every 50,000th forever.
            let victim = seq.saturating_sub(seed % 64);
            if victim % 50_000 != 0 && model.remove(&victim).is_some() {
                n.remove(victim);
            }
        }
        for (seq, key) in &model {
            assert_eq!(n.get(*seq), Some(*key), "{seq}");
        }
        assert_eq!(n.live, model.len());
        assert_eq!(n.get(199_999 + 10), None);
    }
}
