//! The owner's rules (PROTOCOL.md §3) against a plain model.
//!
//! A property test drives [`Owner`]s with random sequences of what home shards send them
//! (submits, worker registrations, grabs, sleeps, results, disconnects, cancels, maxqueue),
//! timers firing and the durable store's batches and acknowledgements, and compares every
//! message an owner answers with what a model written for this test expects. The model keeps
//! its jobs in a `BTreeMap` and finds everything by scanning it: no lists, indexes, heaps or
//! running counts to get wrong. It follows PROTOCOL.md §3, and README's "Compatibility notes"
//! where gearshiftd deliberately differs from gearmand. The test also plays the home shards (as `src/shard/home.rs` does:
//! grab chains, NOOP filtering, waiting and held lists, ordered replies), so it checks what
//! clients and workers end up seeing, not only what owners say.
//!
//! After every message: the owner's output matches the model's (replies by their place in the
//! client's output, results in order, NOOPs only to sleeping workers that can run a queued
//! job), `status`/`prioritystatus` counts, `show jobs` rows and GET_STATUS answers match, no
//! job is assigned while another worker holds it, and the next timer is never later than the
//! model's. Whenever nothing is in flight: every client waits on exactly the jobs the model
//! has it attached to (so every ending reached every waiting client, and nothing more did),
//! every running job is known to its worker, registrations agree, and no queued job waits
//! while a worker that could run it sleeps unwoken (with `--worker-wakeup N`, which wakes at
//! most N workers a job: while all of them do; by default, which wakes only as many workers as
//! there are queued jobs: while the jobs outnumber the wakes in flight, each of which ends
//! within `--wake-retry-ms`). By default the owner's wakes in flight (worker and function) are
//! also checked against the model's after every message, and no message wakes more workers
//! for a function than it has queued jobs. At the end, everything in flight is delivered and
//! the store acknowledges everything: every request has been answered.
//!
//! `cargo test --lib model_tests` runs 256 sequences per test (up to 120 and 160 steps);
//! `PROPTEST_CASES=100000 MODEL_STEPS=400 cargo test --release --lib model_tests -- --nocapture`
//! runs a long soak and prints how often each rule was exercised.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, TestRunner};

use super::{JobBytes, Owner, OwnerConfig, Priority, hash};
use crate::message::*;
use crate::protocol::{PacketType, RES};
use crate::store::Op;

// ---- the test's small world ----

/// Function names: few, so workers and jobs meet; the empty name is valid (§3.2).
const FUNCTIONS: [&[u8]; 4] = [b"f0", b"f1", b"f2", b""];
/// Uniques: none, `-` (coalesce by payload), a small pool, and one of the full 64 bytes.
const UNIQUES: [&[u8]; 6] = [b"", b"-", b"u0", b"u1", b"u2", &[b'u'; 64]];
/// Payloads: the empty one never coalesces under `-`.
const DATA: [&[u8]; 3] = [b"", b"x", b"y"];
/// Connections, each free to act as client, worker and admin.
const CONNS: usize = 5;
const PREFIX: &str = "H:model";
const BOOT: u64 = 0xb007;
/// The test clock's Unix time at its start, in seconds.
const UNIX0: u64 = 1_700_000_000;
/// CAN_DO_TIMEOUT values (0: plain CAN_DO; under 1000 is raised to 1000).
const TIMEOUTS: [u32; 6] = [0, 1, 500, 1000, 1500, 3000];
/// `--wake-retry-ms` (so that 1 ms clock steps reach it, and longer ones pass it).
const WAKE_RETRY_MS: u64 = 2;
/// Clock steps.
const ADVANCE_MS: [u64; 8] = [0, 1, 400, 999, 1000, 1500, 3000, 10_000];
/// WORK_STATUS numbers, some past 32 bits (read as gearmand reads them, PROTOCOL.md §3.7).
const STATUS_NUMBERS: [&[u8]; 12] = [
    b"99999999999999999999",
    b"4294967297",
    b"-2147483648",
    b"0",
    b"5",
    b"10",
    b"-3",
    b"abc",
    b" 7",
    b"4294967295",
    b"12x",
    b"",
];
/// A handle number no owner ever gives out in a test run.
const UNKNOWN_NUMBER: u64 = 999_999;

fn owner_of(shards: u16, f: usize) -> u16 {
    (hash::placement(FUNCTIONS[f]) % shards as u64) as u16
}

fn function_index(name: &[u8]) -> usize {
    FUNCTIONS.iter().position(|&f| f == name).unwrap()
}

fn handle_of(number: u64) -> Vec<u8> {
    format!("{PREFIX}:{number}").into_bytes()
}

/// A response packet, encoded here rather than with the crate's encoder.
fn packet(ty: PacketType, args: &[&[u8]]) -> Vec<u8> {
    let body = args.join(&0u8);
    let mut b = RES.to_vec();
    b.extend_from_slice(&(ty as u32).to_be_bytes());
    b.extend_from_slice(&(body.len() as u32).to_be_bytes());
    b.extend_from_slice(&body);
    b
}

fn error_packet(code: &str, text: &str) -> Vec<u8> {
    packet(PacketType::Error, &[code.as_bytes(), text.as_bytes()])
}

/// C's `atoi` as gearmand uses it for WORK_STATUS (`strtol`, then `int`, printed with `%u`).
fn gearmand_atoi(s: &[u8]) -> u32 {
    let mut i = 0;
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
        i += 1;
    }
    let negative = s.get(i) == Some(&b'-');
    if matches!(s.get(i), Some(b'-' | b'+')) {
        i += 1;
    }
    let mut v: i128 = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        v = (v * 10 + (s[i] - b'0') as i128).min(i64::MAX as i128 + 1);
        i += 1;
    }
    let v = if negative { -v } else { v };
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64 as u32
}

/// Bytes shown as packets (`JOB_CREATED "H:model:1"`) or text.
#[derive(Clone, PartialEq, Eq)]
struct Bytes(Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = &self.0[..];
        while rest.len() >= 12 && rest[..4] == RES {
            let ty = u32::from_be_bytes(rest[4..8].try_into().unwrap());
            let len = u32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize;
            let body = &rest[12..(12 + len).min(rest.len())];
            let name = PacketType::from_u32(ty).map_or("?", |t| t.name());
            write!(f, "{name} {:?} ", String::from_utf8_lossy(body))?;
            rest = &rest[(12 + len).min(rest.len())..];
        }
        if !rest.is_empty() {
            write!(f, "{:?}", String::from_utf8_lossy(rest))?;
        }
        Ok(())
    }
}

/// A message an owner sends, in a comparable form.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Out {
    Reply {
        to: ConnId,
        seq: Seq,
        bytes: Bytes,
        attach: Option<u64>,
    },
    Assign {
        to: ConnId,
        seq: Seq,
        number: u64,
        bytes: Bytes,
    },
    Empty {
        to: ConnId,
        seq: Seq,
        kind: GrabKind,
        rest: Vec<ShardId>,
    },
    Forward {
        to: ConnId,
        bytes: Bytes,
        ends: Option<u64>,
    },
    Revoked {
        to: ConnId,
        number: u64,
    },
    Noop {
        to: ConnId,
        from: ShardId,
    },
}

impl Out {
    fn of(msg: &ToHome) -> Out {
        match msg {
            ToHome::Reply {
                to,
                seq,
                bytes,
                attach,
            } => Out::Reply {
                to: *to,
                seq: *seq,
                bytes: Bytes(bytes.to_vec()),
                attach: *attach,
            },
            ToHome::Assign {
                to,
                seq,
                number,
                bytes,
            } => Out::Assign {
                to: *to,
                seq: *seq,
                number: *number,
                bytes: Bytes(bytes.to_vec()),
            },
            ToHome::Empty {
                to,
                seq,
                kind,
                rest,
            } => Out::Empty {
                to: *to,
                seq: *seq,
                kind: *kind,
                rest: rest.to_vec(),
            },
            ToHome::Forward { to, bytes, ends } => Out::Forward {
                to: *to,
                bytes: Bytes(bytes.to_vec()),
                ends: *ends,
            },
            ToHome::Revoked { to, number } => Out::Revoked {
                to: *to,
                number: *number,
            },
            ToHome::Noop { to, from } => Out::Noop {
                to: *to,
                from: *from,
            },
            other => panic!("an owner sent {other:?}"),
        }
    }

    /// The place in the recipient's ordered output, for answers to requests.
    fn seq(&self) -> Option<(ConnId, Seq)> {
        match *self {
            Out::Reply { to, seq, .. }
            | Out::Assign { to, seq, .. }
            | Out::Empty { to, seq, .. } => Some((to, seq)),
            _ => None,
        }
    }
}

// ---- the model ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MState {
    /// Its add is on the way to the store.
    Pending,
    /// An epoch job not yet due.
    Future,
    Queued,
    Running(ConnId),
}

#[derive(Clone, Debug)]
struct MJob {
    number: u64,
    owner: u16,
    function: usize,
    unique: Vec<u8>,
    reducer: Vec<u8>,
    data: Vec<u8>,
    priority: usize,
    background: bool,
    when: i64,
    state: MState,
    /// When it joined its queue: a queue is the queued jobs in this order.
    queued_at: u64,
    /// CAN_DO_TIMEOUT of the current assignment, in test-clock milliseconds.
    deadline: Option<u64>,
    /// Attached clients and their exceptions option, oldest first.
    waiters: Vec<(ConnId, bool)>,
    numerator: u32,
    denominator: u32,
    retries: u8,
    ignore: bool,
    stored: bool,
    /// The unique its store row has: its own, or one generated where the unique cannot tell
    /// jobs apart (a restored job keeps the one it was stored under).
    store_key: Vec<u8>,
}

/// The coalescing key (§3.3): by unique, by payload for `-`, none for empty uniques.
fn coalescing_key(unique: &[u8], data: &[u8]) -> Option<(bool, Vec<u8>)> {
    match unique {
        b"" => None,
        b"-" if data.is_empty() => None,
        b"-" => Some((true, data.to_vec())),
        u => Some((false, u.to_vec())),
    }
}

impl MJob {
    fn key(&self) -> Option<(bool, Vec<u8>)> {
        coalescing_key(&self.unique, &self.data)
    }

    fn handle(&self) -> Vec<u8> {
        handle_of(self.number)
    }
}

/// A worker as one owner sees it.
#[derive(Clone, Debug, Default)]
struct MWorker {
    /// (function, timeout ms), newest first, duplicates kept.
    functions: Vec<(usize, u32)>,
    /// Held jobs in the order they were assigned.
    held: Vec<u64>,
    sleeping: bool,
    noop_sent: bool,
    /// Default wake-ups: the function it was woken for and when that wake stops counting
    /// (test-clock ms), until it asks.
    woken: Option<(usize, u64)>,
}

impl MWorker {
    fn wakeable(&self) -> bool {
        self.sleeping && !self.noop_sent
    }

    fn can(&self, f: usize) -> bool {
        self.functions.iter().any(|e| e.0 == f)
    }
}

/// A submission answered once the store has its job.
#[derive(Clone, Debug)]
struct MAwait {
    number: u64,
    client: ConnId,
    seq: Seq,
    /// The batch holding the job's add, once taken.
    batch: Option<u64>,
    /// The add is for a foreground job a background submission made background (the job
    /// runs meanwhile), not for a new job waiting to be queued.
    converting: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum MOp {
    Add {
        function: Vec<u8>,
        unique: Vec<u8>,
        priority: u8,
        data: Vec<u8>,
        when: i64,
    },
    Delete {
        function: Vec<u8>,
        unique: Vec<u8>,
    },
}

impl MOp {
    fn of(op: &Op) -> MOp {
        match op {
            Op::Add(j) => MOp::Add {
                function: j.function.clone(),
                unique: j.unique.clone(),
                priority: j.priority as u8,
                data: j.data.clone(),
                when: j.when,
            },
            Op::Delete { function, unique } => MOp::Delete {
                function: function.clone(),
                unique: unique.clone(),
            },
        }
    }
}

/// A `status`/`prioritystatus` row: name, total, running, queued by priority, workers.
type StatusRow = (Vec<u8>, u32, u32, [u32; 3], u32);

/// What one message made the model's owner do.
#[derive(Default, Debug)]
struct Effects {
    outs: Vec<Out>,
    /// Functions that got a job queued (or whose NOOP a worker declined): their sleeping
    /// workers are to be woken.
    wake: Vec<usize>,
}

struct Model {
    shards: u16,
    job_retries: u8,
    worker_wakeup: Option<u8>,
    round_robin: bool,
    durable: bool,
    /// Test clock, milliseconds since its start.
    now_ms: u64,
    jobs: BTreeMap<u64, MJob>,
    /// Every job that ended, and why.
    ended: BTreeMap<u64, &'static str>,
    /// Functions with a record.
    functions: BTreeSet<usize>,
    maxqueue: BTreeMap<usize, [u32; 3]>,
    workers: BTreeMap<(u16, ConnId), MWorker>,
    next_sequence: Vec<u64>,
    tick: u64,
    store_ops: Vec<Vec<MOp>>,
    batch: Vec<u64>,
    acked: Vec<u64>,
    awaiting: Vec<Vec<MAwait>>,
    /// How often each rule was exercised, to show what the sequences reach.
    counts: BTreeMap<&'static str, u64>,
}

impl Model {
    fn new(c: &Case) -> Model {
        let n = c.shards as usize;
        Model {
            shards: c.shards,
            job_retries: c.job_retries,
            worker_wakeup: c.worker_wakeup,
            round_robin: c.round_robin,
            durable: c.durable,
            now_ms: 0,
            jobs: BTreeMap::new(),
            ended: BTreeMap::new(),
            functions: BTreeSet::new(),
            maxqueue: BTreeMap::new(),
            workers: BTreeMap::new(),
            next_sequence: vec![1; n],
            tick: 0,
            store_ops: vec![Vec::new(); n],
            batch: vec![0; n],
            acked: vec![0; n],
            awaiting: vec![Vec::new(); n],
            counts: BTreeMap::new(),
        }
    }

    fn count(&mut self, event: &'static str) {
        *self.counts.entry(event).or_default() += 1;
    }

    fn now_secs(&self) -> i64 {
        (UNIX0 + self.now_ms / 1000) as i64
    }

    fn job_on(&self, o: u16, number: u64) -> Option<&MJob> {
        self.jobs.get(&number).filter(|j| j.owner == o)
    }

    fn has_queued(&self, f: usize) -> bool {
        self.queued(f) > 0
    }

    fn queued(&self, f: usize) -> usize {
        self.jobs
            .values()
            .filter(|j| j.function == f && j.state == MState::Queued)
            .count()
    }

    /// Workers of owner `o` that can run `f`, asleep and not sent a NOOP (as the owner sees them).
    fn wakeable(&self, o: u16, f: usize) -> Vec<ConnId> {
        self.workers
            .iter()
            .filter(|((wo, _), w)| *wo == o && w.can(f) && w.wakeable())
            .map(|((_, c), _)| *c)
            .collect()
    }

    /// Workers of owner `o` woken for `f` that have not asked yet (default wake-ups).
    fn waking(&self, o: u16, f: usize) -> usize {
        self.workers
            .iter()
            .filter(|((wo, _), w)| *wo == o && w.woken.is_some_and(|(g, _)| g == f))
            .count()
    }

    fn job_created(number: u64) -> Bytes {
        Bytes(packet(PacketType::JobCreated, &[&handle_of(number)]))
    }

    fn handle(&mut self, o: u16, msg: &ToOwner) -> Effects {
        let mut fx = Effects::default();
        match msg {
            ToOwner::Submit(s) => self.submit(o, s, &mut fx),
            ToOwner::CanDo {
                worker,
                function,
                timeout_ms,
            } => {
                let f = function_index(function);
                self.functions.insert(f);
                let w = self.workers.entry((o, *worker)).or_default();
                w.functions.insert(0, (f, *timeout_ms));
            }
            ToOwner::CantDo { worker, function } => {
                let f = function_index(function);
                if self.functions.contains(&f) {
                    self.unregister(o, *worker, Some(f), &mut fx);
                }
            }
            ToOwner::WorkerGone { worker } => self.unregister(o, *worker, None, &mut fx),
            ToOwner::Grab {
                worker,
                seq,
                kind,
                rest,
            } => self.grab(o, *worker, *seq, *kind, rest.to_vec(), &mut fx),
            ToOwner::Sleep { worker } => {
                let Some(w) = self.workers.get_mut(&(o, *worker)) else {
                    return fx;
                };
                if w.woken.take().is_some() {
                    self.count("woken worker slept again");
                }
                let w = &self.workers[&(o, *worker)];
                let runnable = w.functions.iter().any(|&(f, _)| self.has_queued(f));
                // By default, NOOP only for a function whose queued jobs outnumber its wakes
                // in flight: the first such in the worker's order.
                let wake_for = match self.worker_wakeup {
                    Some(_) => None,
                    None => w
                        .functions
                        .iter()
                        .map(|e| e.0)
                        .find(|&f| self.queued(f) > self.waking(o, f)),
                };
                let noop = match self.worker_wakeup {
                    Some(_) => runnable,
                    None => wake_for.is_some(),
                };
                if noop {
                    self.count("NOOP for PRE_SLEEP");
                } else if runnable {
                    self.count("no NOOP for PRE_SLEEP: wakes in flight cover the jobs");
                }
                let deadline = self.now_ms + WAKE_RETRY_MS;
                let w = self.workers.get_mut(&(o, *worker)).unwrap();
                w.sleeping = true;
                w.noop_sent = noop;
                w.woken = wake_for.map(|f| (f, deadline));
                if !runnable {
                    // A sleeping worker's timer is removed: its job may run as long as it takes.
                    self.drop_timers(o, *worker, None);
                }
                if noop {
                    fx.outs.push(Out::Noop {
                        to: *worker,
                        from: o,
                    });
                }
            }
            ToOwner::DropTimer { worker, number } => {
                self.count("timer dropped by another owner's assignment");
                self.drop_timers(o, *worker, Some(*number));
            }
            ToOwner::NoopDeclined { worker } => {
                let Some(w) = self.workers.get_mut(&(o, *worker)) else {
                    return fx;
                };
                w.sleeping = false;
                w.noop_sent = false;
                w.woken = None;
                self.counts
                    .entry("NOOP declined")
                    .and_modify(|c| *c += 1)
                    .or_insert(1);
                let functions: Vec<usize> = w.functions.iter().map(|e| e.0).collect();
                for f in functions {
                    if self.has_queued(f) {
                        fx.wake.push(f);
                    }
                }
            }
            ToOwner::Work {
                worker,
                number,
                kind,
                packet,
            } => self.work(o, *worker, *number, *kind, packet, &mut fx),
            ToOwner::GetStatus {
                client,
                seq,
                number,
                handle,
            } => {
                let bytes = self.status(o, *number, handle);
                fx.outs.push(Out::Reply {
                    to: *client,
                    seq: *seq,
                    bytes: Bytes(bytes),
                    attach: None,
                });
            }
            ToOwner::ClientGone { client, jobs } => {
                for &n in jobs {
                    let Some(job) = self.jobs.get_mut(&n).filter(|j| j.owner == o) else {
                        continue;
                    };
                    job.waiters.retain(|w| w.0 != *client);
                    self.counts
                        .entry("client gone")
                        .and_modify(|c| *c += 1)
                        .or_insert(1);
                    if job.waiters.is_empty() && !job.background {
                        self.abandon(n);
                    }
                }
            }
            ToOwner::Cancel {
                client,
                seq,
                number,
            } => {
                let line: &[u8] = if self.job_on(o, *number).is_some() {
                    self.count("cancelled");
                    self.fail_waiters(*number, &mut fx);
                    self.abandon(*number);
                    b"OK\r\n"
                } else {
                    b"ERR UNKNOWN_JOB\r\n"
                };
                fx.outs.push(Out::Reply {
                    to: *client,
                    seq: *seq,
                    bytes: Bytes(line.to_vec()),
                    attach: None,
                });
            }
            ToOwner::Function {
                client,
                seq,
                function,
                maxqueue,
            } => {
                let f = function_index(function);
                self.functions.insert(f);
                if let Some(limits) = maxqueue {
                    self.maxqueue.insert(f, *limits);
                }
                fx.outs.push(Out::Reply {
                    to: *client,
                    seq: *seq,
                    bytes: Bytes(b"OK\r\n".to_vec()),
                    attach: None,
                });
            }
            other => panic!("the test sent an owner {other:?}"),
        }
        fx
    }

    fn submit(&mut self, o: u16, s: &Submit, fx: &mut Effects) {
        let f = function_index(&s.function);
        self.functions.insert(f);
        let key = coalescing_key(s.job.unique(), s.job.data());
        let existing = key.as_ref().and_then(|k| {
            self.jobs
                .values()
                .find(|j| j.function == f && j.key().as_ref() == Some(k))
                .map(|j| j.number)
        });
        if let Some(n) = existing {
            // Coalesced: the submission's own payload and priority are dropped.
            self.count(if s.background {
                "coalesced bg"
            } else {
                "coalesced fg"
            });
            let converting = self.awaiting[o as usize]
                .iter()
                .any(|a| a.number == n && a.converting);
            if s.background && (self.jobs[&n].state == MState::Pending || converting) {
                self.count("coalesced bg onto a job not yet stored");
                // Answered with the job itself, when the batch holding its add is durable.
                let first = self.awaiting[o as usize]
                    .iter()
                    .find(|a| a.number == n)
                    .expect("a job on its way to the store has a submission awaiting it");
                let (batch, converting) = (first.batch, first.converting);
                self.awaiting[o as usize].push(MAwait {
                    number: n,
                    client: s.client,
                    seq: s.seq,
                    batch,
                    converting,
                });
                return;
            }
            if s.background && !self.jobs[&n].background {
                self.count("bg made a fg job background");
            }
            let job = self.jobs.get_mut(&n).unwrap();
            if s.background && !job.background {
                // The submitter is told the job exists: it becomes background, so its
                // foreground clients leaving does not drop it; stored first with a store.
                job.background = true;
                if self.durable {
                    job.stored = true;
                    job.store_key = match key {
                        Some((false, u)) => u,
                        _ => format!("gs-{BOOT:x}-{n}").into_bytes(),
                    };
                    let add = MOp::Add {
                        function: FUNCTIONS[f].to_vec(),
                        unique: job.store_key.clone(),
                        priority: job.priority as u8,
                        data: job.data.clone(),
                        when: 0,
                    };
                    self.store_ops[o as usize].push(add);
                    self.awaiting[o as usize].push(MAwait {
                        number: n,
                        client: s.client,
                        seq: s.seq,
                        batch: None,
                        converting: true,
                    });
                    return;
                }
            }
            let attach = if s.background {
                None
            } else {
                job.waiters.push((s.client, s.exceptions));
                job.ignore = false;
                Some(n)
            };
            fx.outs.push(Out::Reply {
                to: s.client,
                seq: s.seq,
                bytes: Self::job_created(n),
                attach,
            });
            return;
        }
        let p = s.priority as usize;
        let limit = self.maxqueue.get(&f).map_or(0, |m| m[p]);
        let total = self.jobs.values().filter(|j| j.function == f).count() as u32;
        if limit > 0 && total >= limit {
            self.count("queue full");
            fx.outs.push(Out::Reply {
                to: s.client,
                seq: s.seq,
                bytes: Bytes(error_packet("QUEUE_ERROR", "Job queue is full")),
                attach: None,
            });
            return;
        }
        let sequence = &mut self.next_sequence[o as usize];
        let number = *sequence * self.shards as u64 + o as u64;
        *sequence += 1;
        let stored = s.background && self.durable;
        self.count("jobs created");
        let job = MJob {
            number,
            owner: o,
            function: f,
            unique: s.job.unique().to_vec(),
            reducer: s.job.reducer().to_vec(),
            data: s.job.data().to_vec(),
            priority: p,
            background: s.background,
            when: s.when,
            state: MState::Pending,
            queued_at: 0,
            deadline: None,
            waiters: if s.background {
                Vec::new()
            } else {
                vec![(s.client, s.exceptions)]
            },
            numerator: 0,
            denominator: 0,
            retries: 0,
            ignore: false,
            stored,
            store_key: match key {
                Some((false, u)) => u,
                _ => format!("gs-{BOOT:x}-{number}").into_bytes(),
            },
        };
        if stored {
            self.store_ops[o as usize].push(MOp::Add {
                function: FUNCTIONS[f].to_vec(),
                unique: job.store_key.clone(),
                priority: p as u8,
                data: job.data.clone(),
                when: s.when,
            });
            self.awaiting[o as usize].push(MAwait {
                number,
                client: s.client,
                seq: s.seq,
                batch: None,
                converting: false,
            });
            self.jobs.insert(number, job);
            return;
        }
        self.jobs.insert(number, job);
        fx.outs.push(Out::Reply {
            to: s.client,
            seq: s.seq,
            bytes: Self::job_created(number),
            attach: (!s.background).then_some(number),
        });
        self.admit(number, fx);
    }

    /// A job read back from the store at start-up: a background job with the next number,
    /// unless a job with the same function and unique was read before.
    fn restore(
        &mut self,
        o: u16,
        f: usize,
        unique: &[u8],
        data: &[u8],
        priority: usize,
        when: i64,
    ) {
        self.functions.insert(f);
        let key = coalescing_key(unique, data);
        if key.is_some()
            && self
                .jobs
                .values()
                .any(|j| j.function == f && j.key() == key)
        {
            return self.count("restored rows coalesced");
        }
        self.count("jobs restored");
        let sequence = &mut self.next_sequence[o as usize];
        let number = *sequence * self.shards as u64 + o as u64;
        *sequence += 1;
        let job = MJob {
            number,
            owner: o,
            function: f,
            unique: unique.to_vec(),
            reducer: Vec::new(),
            data: data.to_vec(),
            priority,
            background: true,
            when,
            state: MState::Pending,
            queued_at: 0,
            deadline: None,
            waiters: Vec::new(),
            numerator: 0,
            denominator: 0,
            retries: 0,
            ignore: false,
            stored: true,
            store_key: unique.to_vec(),
        };
        self.jobs.insert(number, job);
        self.admit(number, &mut Effects::default());
    }

    /// A new (or newly durable) job goes to its queue, or waits for its time.
    fn admit(&mut self, number: u64, fx: &mut Effects) {
        let now = self.now_secs();
        let job = self.jobs.get_mut(&number).unwrap();
        if job.when > 0 && job.when > now {
            job.state = MState::Future;
            self.counts
                .entry("epoch jobs not yet due")
                .and_modify(|c| *c += 1)
                .or_insert(1);
        } else {
            self.queue(number, fx);
        }
    }

    /// Appends a job to its queue, waking its sleeping workers.
    fn queue(&mut self, number: u64, fx: &mut Effects) {
        self.tick += 1;
        let job = self.jobs.get_mut(&number).unwrap();
        job.state = MState::Queued;
        job.queued_at = self.tick;
        job.deadline = None;
        fx.wake.push(job.function);
    }

    fn end(&mut self, number: u64, why: &'static str) {
        let job = self.jobs.remove(&number).unwrap();
        self.count(why);
        if job.stored {
            self.store_ops[job.owner as usize].push(MOp::Delete {
                function: FUNCTIONS[job.function].to_vec(),
                unique: job.store_key,
            });
        }
        self.ended.insert(number, why);
    }

    /// WORK_FAIL (the handle, no NUL) to every waiting client, newest first; they stop waiting.
    fn fail_waiters(&mut self, number: u64, fx: &mut Effects) {
        let job = self.jobs.get_mut(&number).unwrap();
        for &(to, _) in job.waiters.iter().rev() {
            fx.outs.push(Out::Forward {
                to,
                bytes: Bytes(packet(PacketType::WorkFail, &[&handle_of(number)])),
                ends: Some(number),
            });
        }
        job.waiters.clear();
    }

    /// Nobody waits any more: a running job finishes unseen, any other ends now.
    fn abandon(&mut self, number: u64) {
        let job = self.jobs.get_mut(&number).unwrap();
        job.waiters.clear();
        if matches!(job.state, MState::Running(_)) {
            job.ignore = true;
        } else {
            self.end(number, "abandoned");
        }
    }

    fn unregister(&mut self, o: u16, worker: ConnId, only: Option<usize>, fx: &mut Effects) {
        let Some(w) = self.workers.get_mut(&(o, worker)) else {
            return;
        };
        let dropped = |f: usize| only.is_none_or(|g| g == f);
        if w.woken.is_some_and(|(f, _)| dropped(f)) {
            w.woken = None;
        }
        // A worker leaving a function with queued jobs may have been the one awake for them:
        // the function's sleeping workers are woken as for a new job.
        let given_up: BTreeSet<usize> = w
            .functions
            .iter()
            .map(|e| e.0)
            .filter(|&f| dropped(f))
            .collect();
        w.functions.retain(|e| !dropped(e.0));
        let held = std::mem::take(&mut w.held);
        let (requeue, keep): (Vec<u64>, Vec<u64>) = held
            .into_iter()
            .partition(|n| dropped(self.jobs[n].function));
        w.held = keep;
        if w.functions.is_empty() && w.held.is_empty() {
            self.workers.remove(&(o, worker));
        }
        for n in requeue {
            self.requeue(n, fx);
        }
        for f in given_up {
            if self.has_queued(f) {
                fx.wake.push(f);
            }
        }
    }

    /// A job its worker gave up goes to the back of its queue, or ends at the retry limit.
    fn requeue(&mut self, number: u64, fx: &mut Effects) {
        let limit = self.job_retries;
        let job = self.jobs.get_mut(&number).unwrap();
        job.retries = job.retries.wrapping_add(1);
        *self.counts.entry("requeued").or_default() += 1;
        if job.ignore || (limit > 0 && job.retries >= limit) {
            let why = if job.ignore { "abandoned" } else { "retries" };
            self.fail_waiters(number, fx);
            return self.end(number, why);
        }
        job.numerator = 0;
        job.denominator = 0;
        self.queue(number, fx);
    }

    fn grab(
        &mut self,
        o: u16,
        worker: ConnId,
        seq: Seq,
        kind: GrabKind,
        rest: Vec<ShardId>,
        fx: &mut Effects,
    ) {
        let empty = Out::Empty {
            to: worker,
            seq,
            kind,
            rest,
        };
        let Some(w) = self.workers.get_mut(&(o, worker)) else {
            return fx.outs.push(empty);
        };
        w.sleeping = false;
        w.noop_sent = false;
        if w.woken.take().is_some() {
            *self.counts.entry("woken worker grabbed").or_default() += 1;
        }
        // Highest priority first over all of the worker's functions, newest registration
        // first within a priority, oldest queued first within a function.
        let mut found = None;
        'pick: for p in 0..3 {
            for &(f, _) in &w.functions {
                let head = self
                    .jobs
                    .values()
                    .filter(|j| j.function == f && j.priority == p && j.state == MState::Queued)
                    .min_by_key(|j| j.queued_at);
                if let Some(j) = head {
                    found = Some(j.number);
                    break 'pick;
                }
            }
        }
        let Some(n) = found else {
            return fx.outs.push(empty);
        };
        let f = self.jobs[&n].function;
        let timeout = w.functions.iter().find(|e| e.0 == f).map_or(0, |e| e.1);
        if self.round_robin {
            let (served, others): (Vec<_>, Vec<_>) = w.functions.iter().partition(|e| e.0 == f);
            w.functions = others.into_iter().chain(served).collect();
        }
        w.held.push(n);
        self.count("assigned");
        let now = self.now_ms;
        // One timer per worker (gearmand's per connection): this assignment moves it here,
        // or removes it when the function has no timeout.
        self.drop_timers(o, worker, None);
        let job = self.jobs.get_mut(&n).unwrap();
        job.state = MState::Running(worker);
        job.deadline = (timeout > 0).then(|| now + timeout.max(1000) as u64);
        let (h, name) = (job.handle(), FUNCTIONS[f]);
        let bytes = match kind {
            GrabKind::Plain => packet(PacketType::JobAssign, &[&h, name, &job.data]),
            GrabKind::All if !job.reducer.is_empty() => packet(
                PacketType::JobAssignAll,
                &[&h, name, &job.unique, &job.reducer, &job.data],
            ),
            GrabKind::Uniq | GrabKind::All => packet(
                PacketType::JobAssignUniq,
                &[&h, name, &job.unique, &job.data],
            ),
        };
        fx.outs.push(Out::Assign {
            to: worker,
            seq,
            number: n,
            bytes: Bytes(bytes),
        });
    }

    fn work(
        &mut self,
        o: u16,
        worker: ConnId,
        number: u64,
        kind: WorkKind,
        bytes: &[u8],
        fx: &mut Effects,
    ) {
        let holds = self
            .job_on(o, number)
            .is_some_and(|j| j.state == MState::Running(worker));
        if !holds {
            self.count("result from a non-holder");
            let text = match kind {
                WorkKind::Data | WorkKind::Warning => "Job does not exist on server",
                WorkKind::Exception => "An exception was received for a job that does not exist",
                _ => "Job given in work result not found",
            };
            return fx.outs.push(Out::Forward {
                to: worker,
                bytes: Bytes(error_packet("JOB_NOT_FOUND", text)),
                ends: None,
            });
        }
        let body = &bytes[12..];
        let job = self.jobs.get_mut(&number).unwrap();
        if kind == WorkKind::Status {
            let mut args = body.splitn(3, |&b| b == 0).skip(1);
            job.numerator = gearmand_atoi(args.next().unwrap());
            // gearmand copies the denominator into an 11-byte buffer: its first 10 bytes count.
            let denominator = args.next().unwrap();
            job.denominator = gearmand_atoi(&denominator[..denominator.len().min(10)]);
        }
        let ends = kind.ends_job().then_some(number);
        let sent_handle = body.split(|&b| b == 0).next().unwrap();
        for &(to, exceptions) in job.waiters.iter().rev() {
            let bytes = if kind == WorkKind::Exception && !exceptions {
                packet(PacketType::WorkFail, &[sent_handle, b""])
            } else {
                bytes.to_vec()
            };
            fx.outs.push(Out::Forward {
                to,
                bytes: Bytes(bytes),
                ends,
            });
        }
        if ends.is_some() {
            let why = match kind {
                WorkKind::Complete => "complete",
                WorkKind::Fail => "fail",
                _ => "exception",
            };
            self.end(number, why);
            if let Some(w) = self.workers.get_mut(&(o, worker)) {
                w.held.retain(|&n| n != number);
            }
        }
    }

    fn status(&self, o: u16, number: u64, handle: &[u8]) -> Vec<u8> {
        match self.job_on(o, number) {
            Some(j) => packet(
                PacketType::StatusRes,
                &[
                    handle,
                    b"1",
                    if matches!(j.state, MState::Running(_)) {
                        b"1"
                    } else {
                        b"0"
                    },
                    j.numerator.to_string().as_bytes(),
                    j.denominator.to_string().as_bytes(),
                ],
            ),
            None => packet(PacketType::StatusRes, &[handle, b"0", b"0", b"0", b"0"]),
        }
    }

    /// Removes the CAN_DO_TIMEOUT timer `worker` has at owner `o` (only if it guards job
    /// `only`, when given).
    fn drop_timers(&mut self, o: u16, worker: ConnId, only: Option<u64>) {
        for j in self.jobs.values_mut() {
            if j.owner == o
                && j.state == MState::Running(worker)
                && only.is_none_or(|n| n == j.number)
            {
                j.deadline = None;
            }
        }
    }

    /// Epoch jobs that fell due join their queues; held jobs past their CAN_DO_TIMEOUT are
    /// taken back.
    fn run_timers(&mut self, o: u16) -> Effects {
        let mut fx = Effects::default();
        let now = self.now_secs();
        let mut due: Vec<(i64, u64)> = self
            .jobs
            .values()
            .filter(|j| j.owner == o && j.state == MState::Future && j.when <= now)
            .map(|j| (j.when, j.number))
            .collect();
        due.sort();
        for (_, n) in due {
            self.count("epoch jobs fell due");
            self.queue(n, &mut fx);
        }
        let mut expired: Vec<(u64, u64)> = self
            .jobs
            .values()
            .filter(|j| j.owner == o && j.deadline.is_some_and(|d| d <= self.now_ms))
            .map(|j| (j.deadline.unwrap(), j.number))
            .collect();
        expired.sort();
        for (_, n) in expired {
            let MState::Running(worker) = self.jobs[&n].state else {
                unreachable!("only running jobs have a deadline")
            };
            if let Some(w) = self.workers.get_mut(&(o, worker)) {
                w.held.retain(|&h| h != n);
            }
            self.count("CAN_DO_TIMEOUT expired");
            fx.outs.push(Out::Revoked {
                to: worker,
                number: n,
            });
            self.requeue(n, &mut fx);
        }
        // Wakes not answered in time stop counting (the owner wakes others for their jobs,
        // checked by `check_noops`); the worker stays asleep with its NOOP sent.
        let now = self.now_ms;
        for ((wo, _), w) in self.workers.iter_mut() {
            if *wo == o && w.woken.is_some_and(|(_, d)| d <= now) {
                w.woken = None;
                *self.counts.entry("wake not answered in time").or_default() += 1;
            }
        }
        fx
    }

    /// The earliest timer of owner `o`, in test-clock milliseconds.
    fn next_deadline(&self, o: u16) -> Option<u64> {
        let wakes = self
            .workers
            .iter()
            .filter(|((wo, _), _)| *wo == o)
            .filter_map(|(_, w)| w.woken.map(|(_, d)| d));
        self.jobs
            .values()
            .filter(|j| j.owner == o)
            .filter_map(|j| match j.state {
                MState::Future => Some(((j.when as u64 - UNIX0) * 1000).max(self.now_ms)),
                MState::Running(_) => j.deadline,
                _ => None,
            })
            .chain(wakes)
            .min()
    }

    /// The owner's store changes since the last batch, as the next batch.
    fn take_store_ops(&mut self, o: u16) -> Option<(u64, Vec<MOp>)> {
        let o = o as usize;
        if self.store_ops[o].is_empty() {
            return None;
        }
        self.batch[o] += 1;
        self.count("store batches");
        let batch = self.batch[o];
        for a in &mut self.awaiting[o] {
            a.batch.get_or_insert(batch);
        }
        Some((batch, std::mem::take(&mut self.store_ops[o])))
    }

    /// The store made batches up to `upto` durable, or failed them.
    fn durable(&mut self, o: u16, upto: u64, ok: bool) -> Effects {
        let mut fx = Effects::default();
        self.acked[o as usize] = upto;
        self.count(if ok { "store acks" } else { "store failures" });
        let all = std::mem::take(&mut self.awaiting[o as usize]);
        let (done, keep): (Vec<MAwait>, Vec<MAwait>) = all
            .into_iter()
            .partition(|a| a.batch.is_some_and(|b| b <= upto));
        self.awaiting[o as usize] = keep;
        for a in done {
            if a.converting && !ok {
                // Not stored: foreground again (once, for the first of its submissions).
                if let Some(j) = self.jobs.get_mut(&a.number)
                    && j.stored
                {
                    j.stored = false;
                    j.background = false;
                    if j.waiters.is_empty() {
                        self.abandon(a.number);
                    }
                }
            }
            let pending = !a.converting
                && self
                    .jobs
                    .get(&a.number)
                    .is_some_and(|j| j.state == MState::Pending);
            let bytes = if ok {
                if pending {
                    self.admit(a.number, &mut fx);
                }
                Self::job_created(a.number)
            } else {
                if pending {
                    self.jobs.get_mut(&a.number).unwrap().stored = false;
                    self.fail_waiters(a.number, &mut fx);
                    self.end(a.number, "store failed");
                }
                Bytes(error_packet("QUEUE_ERROR", "QUEUE_ERROR"))
            };
            fx.outs.push(Out::Reply {
                to: a.client,
                seq: a.seq,
                bytes,
                attach: None,
            });
        }
        fx
    }

    /// `status` rows of owner `o`.
    fn function_rows(&self, o: u16) -> Vec<StatusRow> {
        let mut rows: Vec<_> = self
            .functions
            .iter()
            .filter(|&&f| owner_of(self.shards, f) == o)
            .map(|&f| {
                let jobs: Vec<&MJob> = self.jobs.values().filter(|j| j.function == f).collect();
                let count = |s: &dyn Fn(&MJob) -> bool| jobs.iter().filter(|j| s(j)).count() as u32;
                let queued = |p: usize| count(&|j| j.state == MState::Queued && j.priority == p);
                let running = count(&|j| matches!(j.state, MState::Running(_)));
                let future = count(&|j| j.state == MState::Future);
                let workers = self
                    .workers
                    .iter()
                    .filter(|((wo, _), _)| *wo == o)
                    .map(|(_, w)| w.functions.iter().filter(|e| e.0 == f).count() as u32)
                    .sum();
                (
                    FUNCTIONS[f].to_vec(),
                    jobs.len() as u32,
                    running,
                    [queued(0), queued(1) + future, queued(2)],
                    workers,
                )
            })
            .collect();
        rows.sort();
        rows
    }

    /// `show jobs` rows of owner `o`: (number, retries, ignore, background, unique).
    fn job_rows(&self, o: u16) -> Vec<(u64, u8, bool, bool, Vec<u8>)> {
        self.jobs
            .values()
            .filter(|j| j.owner == o)
            .map(|j| {
                (
                    j.number,
                    j.retries,
                    j.ignore,
                    j.background,
                    j.unique.clone(),
                )
            })
            .collect()
    }
}

// ---- the test's actions ----

#[derive(Clone, Copy, Debug)]
enum SubmitKind {
    /// SUBMIT_JOB, _HIGH, _LOW by priority index.
    Foreground(u8),
    /// SUBMIT_JOB_BG, _HIGH_BG, _LOW_BG.
    Background(u8),
    /// SUBMIT_JOB_EPOCH: -4 is "0" (now), -3 a negative time, else seconds from now.
    Epoch(i8),
    ReduceForeground,
    ReduceBackground,
}

#[derive(Clone, Debug)]
enum Action {
    Submit {
        conn: u8,
        function: u8,
        unique: u8,
        data: u8,
        kind: SubmitKind,
    },
    CanDo {
        conn: u8,
        function: u8,
        timeout: u8,
    },
    CantDo {
        conn: u8,
        function: u8,
    },
    ResetAbilities {
        conn: u8,
    },
    /// GRAB_JOB*; with `then_sleep`, PRE_SLEEP on NO_JOB, as worker libraries do.
    Grab {
        conn: u8,
        kind: u8,
        then_sleep: bool,
    },
    PreSleep {
        conn: u8,
    },
    /// WORK_*: from a worker about a job it holds (`holder`, if any worker holds one), else
    /// from `conn` about any handle. `forged` skips the home's held check, so the owner's own
    /// check is what answers.
    Work {
        conn: u8,
        job: u8,
        kind: u8,
        arg: u8,
        holder: bool,
        forged: bool,
    },
    OptionExceptions {
        conn: u8,
    },
    Disconnect {
        conn: u8,
    },
    GetStatus {
        conn: u8,
        job: u8,
    },
    Cancel {
        conn: u8,
        job: u8,
    },
    MaxQueue {
        conn: u8,
        function: u8,
        limits: Option<[u8; 3]>,
    },
    Advance {
        step: u8,
    },
    /// The end of a loop turn: every owner hands its store changes over.
    StoreTake,
    StoreAck {
        owner: u8,
        upto: u8,
        ok: bool,
    },
    /// One message crosses one ring (several shards only).
    Deliver {
        ring: u8,
    },
    /// Everything in the rings is delivered.
    Settle,
}

#[derive(Clone, Debug)]
struct Case {
    shards: u16,
    /// Store rows replayed before any connection: (function, unique, data, priority, when
    /// in seconds from now, 0 for none).
    restored: Vec<(u8, u8, u8, u8, i8)>,
    job_retries: u8,
    /// `--worker-wakeup`: `None` is the default (wake only the workers needed).
    worker_wakeup: Option<u8>,
    round_robin: bool,
    durable: bool,
    actions: Vec<Action>,
}

fn action(several_shards: bool) -> BoxedStrategy<Action> {
    let conn = || 0..CONNS as u8;
    let function = || 0..FUNCTIONS.len() as u8;
    let submit_kind = prop_oneof![
        3 => (0..3u8).prop_map(SubmitKind::Foreground),
        3 => (0..3u8).prop_map(SubmitKind::Background),
        2 => (-4i8..=8).prop_map(SubmitKind::Epoch),
        1 => Just(SubmitKind::ReduceForeground),
        1 => Just(SubmitKind::ReduceBackground),
    ];
    let mut arms: Vec<(u32, BoxedStrategy<Action>)> = vec![
        (
            16,
            (
                conn(),
                function(),
                0..UNIQUES.len() as u8,
                0..DATA.len() as u8,
                submit_kind,
            )
                .prop_map(|(conn, function, unique, data, kind)| Action::Submit {
                    conn,
                    function,
                    unique,
                    data,
                    kind,
                })
                .boxed(),
        ),
        (
            8,
            (conn(), function(), 0..TIMEOUTS.len() as u8)
                .prop_map(|(conn, function, timeout)| Action::CanDo {
                    conn,
                    function,
                    timeout,
                })
                .boxed(),
        ),
        (
            2,
            (conn(), function())
                .prop_map(|(conn, function)| Action::CantDo { conn, function })
                .boxed(),
        ),
        (
            1,
            conn()
                .prop_map(|conn| Action::ResetAbilities { conn })
                .boxed(),
        ),
        (
            16,
            (conn(), 0..3u8, any::<bool>())
                .prop_map(|(conn, kind, then_sleep)| Action::Grab {
                    conn,
                    kind,
                    then_sleep,
                })
                .boxed(),
        ),
        (6, conn().prop_map(|conn| Action::PreSleep { conn }).boxed()),
        (
            16,
            (
                conn(),
                any::<u8>(),
                0..6u8,
                any::<u8>(),
                prop::bool::weighted(0.8),
                prop::bool::weighted(0.1),
            )
                .prop_map(|(conn, job, kind, arg, holder, forged)| Action::Work {
                    conn,
                    job,
                    kind,
                    arg,
                    holder,
                    forged,
                })
                .boxed(),
        ),
        (
            1,
            conn()
                .prop_map(|conn| Action::OptionExceptions { conn })
                .boxed(),
        ),
        (
            3,
            conn().prop_map(|conn| Action::Disconnect { conn }).boxed(),
        ),
        (
            3,
            (conn(), any::<u8>())
                .prop_map(|(conn, job)| Action::GetStatus { conn, job })
                .boxed(),
        ),
        (
            2,
            (conn(), any::<u8>())
                .prop_map(|(conn, job)| Action::Cancel { conn, job })
                .boxed(),
        ),
        (
            1,
            (
                conn(),
                function(),
                prop::option::of([0..4u8, 0..4u8, 0..4u8]),
            )
                .prop_map(|(conn, function, limits)| Action::MaxQueue {
                    conn,
                    function,
                    limits,
                })
                .boxed(),
        ),
        (
            4,
            (0..ADVANCE_MS.len() as u8)
                .prop_map(|step| Action::Advance { step })
                .boxed(),
        ),
        (3, Just(Action::StoreTake).boxed()),
        (
            3,
            (any::<u8>(), any::<u8>(), prop::bool::weighted(0.8))
                .prop_map(|(owner, upto, ok)| Action::StoreAck { owner, upto, ok })
                .boxed(),
        ),
    ];
    if several_shards {
        arms.push((
            30,
            any::<u8>()
                .prop_map(|ring| Action::Deliver { ring })
                .boxed(),
        ));
        arms.push((3, Just(Action::Settle).boxed()));
    }
    Union::new_weighted(arms).boxed()
}

fn case(shards: std::ops::RangeInclusive<u16>, steps: usize) -> impl Strategy<Value = Case> {
    let several = *shards.end() > 1;
    let row = (
        0..FUNCTIONS.len() as u8,
        0..UNIQUES.len() as u8,
        0..DATA.len() as u8,
        0..3u8,
        prop_oneof![Just(0i8), -2i8..=5],
    );
    (
        shards,
        prop::collection::vec(row, 0..4),
        0..=3u8,
        prop_oneof![2 => Just(None), 1 => (0..=2u8).prop_map(Some)],
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(action(several), 1..steps),
    )
        .prop_map(
            |(shards, restored, job_retries, worker_wakeup, round_robin, durable, actions)| Case {
                shards,
                restored,
                job_retries,
                worker_wakeup,
                round_robin,
                durable,
                actions,
            },
        )
}

// ---- the test's home shards ----

/// A connection as its home shard sees it (`src/shard/conn.rs`), plus what the test needs to
/// check its answers.
struct HomeConn {
    id: ConnId,
    exceptions: bool,
    /// (function, owner), in registration order.
    abilities: Vec<(usize, u16)>,
    owners: u64,
    last_owner: u16,
    asking: u16,
    empty: u64,
    woken_by: u64,
    sleeping: bool,
    noop_sent: bool,
    held: Vec<u64>,
    waiting: Vec<u64>,
    /// The worker sends PRE_SLEEP when its grab gets NO_JOB.
    sleep_on_no_job: bool,
    /// It registered a function with a timeout; the last job assigned to it then.
    timed: bool,
    timer_job: Option<u64>,
    next_seq: Seq,
    /// Requests still to be answered, by their place in the output.
    unanswered: BTreeMap<Seq, String>,
}

impl HomeConn {
    fn new(id: ConnId) -> HomeConn {
        HomeConn {
            id,
            exceptions: false,
            abilities: Vec::new(),
            owners: 0,
            last_owner: 0,
            asking: 0,
            empty: 0,
            woken_by: 0,
            sleeping: false,
            noop_sent: false,
            held: Vec::new(),
            waiting: Vec::new(),
            sleep_on_no_job: false,
            timed: false,
            timer_job: None,
            next_seq: 0,
            unanswered: BTreeMap::new(),
        }
    }

    fn reserve(&mut self, what: String) -> Seq {
        self.next_seq += 1;
        self.unanswered.insert(self.next_seq, what);
        self.next_seq
    }

    /// The owners to ask on GRAB, as `Conn::grab_order`.
    fn grab_order(&self, home: u16) -> Vec<u16> {
        let mut owners = Vec::new();
        for a in self.abilities.iter().rev() {
            if !owners.contains(&a.1) {
                owners.push(a.1);
            }
        }
        if let Some(i) = owners.iter().position(|&o| o == self.last_owner) {
            let len = owners.len();
            owners.rotate_left((i + 1) % len);
        }
        owners.sort_by_key(|&o| {
            let class = match (self.woken_by & (1 << o) != 0, self.empty & (1 << o) != 0) {
                (true, _) => 0,
                (false, false) => 1,
                (false, true) => 2,
            };
            (class, o != home)
        });
        owners
    }
}

/// A message between shards, either way (the shards' own `Mail` without moving connections).
#[derive(Debug)]
enum Msg {
    Owner(ToOwner),
    Home(ToHome),
}

impl From<ToOwner> for Msg {
    fn from(m: ToOwner) -> Msg {
        Msg::Owner(m)
    }
}

impl From<ToHome> for Msg {
    fn from(m: ToHome) -> Msg {
        Msg::Home(m)
    }
}

struct World {
    shards: u16,
    owners: Vec<Owner>,
    model: Model,
    conns: Vec<HomeConn>,
    /// Messages between different shards, per (from, to) ring.
    rings: BTreeMap<(u16, u16), VecDeque<Msg>>,
    /// Messages a shard sends itself, handled before its next input.
    local: Vec<VecDeque<Msg>>,
    /// Who holds each assigned job, kept from the owners' messages alone.
    holders: BTreeMap<u64, (ConnId, usize)>,
    start: Instant,
}

impl World {
    fn new(case: &Case) -> World {
        let start = Instant::now();
        let owners = (0..case.shards)
            .map(|s| {
                let mut o = Owner::new(
                    s,
                    case.shards,
                    OwnerConfig {
                        handle_prefix: PREFIX.as_bytes().into(),
                        job_retries: case.job_retries,
                        worker_wakeup: case.worker_wakeup,
                        wake_retry: Duration::from_millis(WAKE_RETRY_MS),
                        round_robin: case.round_robin,
                        durable: case.durable,
                        boot: BOOT,
                    },
                );
                o.set_clock(start, Duration::from_secs(UNIX0));
                o
            })
            .collect();
        let mut world = World {
            shards: case.shards,
            owners,
            model: Model::new(case),
            conns: (0..CONNS)
                .map(|slot| {
                    HomeConn::new(ConnId {
                        shard: slot as u16 % case.shards,
                        slot: slot as u32,
                        generation: 0,
                    })
                })
                .collect(),
            rings: BTreeMap::new(),
            local: (0..case.shards).map(|_| VecDeque::new()).collect(),
            holders: BTreeMap::new(),
            start,
        };
        for &(f, unique, data, priority, when) in &case.restored {
            let (f, o) = (f as usize, owner_of(case.shards, f as usize));
            let (unique, data) = (UNIQUES[unique as usize], DATA[data as usize]);
            let when = match when {
                0 => 0,
                s => UNIX0 as i64 + s as i64,
            };
            let job = crate::store::StoredJob {
                function: FUNCTIONS[f].to_vec(),
                unique: unique.to_vec(),
                priority: [Priority::High, Priority::Normal, Priority::Low][priority as usize],
                data: data.to_vec(),
                when,
            };
            let mut out = Vec::new();
            world.owners[o as usize].restore(job, &mut out);
            assert!(out.is_empty(), "restoring sends nothing: no connection yet");
            let m = &mut world.model;
            m.restore(o, f, unique, data, priority as usize, when);
        }
        world.check_owners(&|| "after restoring".to_string());
        world
    }

    fn send(&mut self, from: u16, to: u16, msg: impl Into<Msg>) {
        let msg = msg.into();
        if from == to {
            self.local[to as usize].push_back(msg);
        } else {
            self.rings.entry((from, to)).or_default().push_back(msg);
        }
    }

    fn drain_local(&mut self, shard: u16) {
        while let Some(msg) = self.local[shard as usize].pop_front() {
            self.dispatch(shard, msg);
        }
    }

    fn dispatch(&mut self, shard: u16, msg: Msg) {
        match msg {
            Msg::Home(msg) => self.home_message(shard, msg),
            Msg::Owner(msg) => self.owner_message(shard, msg),
        }
    }

    fn quiet(&self) -> bool {
        self.rings.values().all(|r| r.is_empty())
    }

    /// Delivers everything in flight.
    fn settle(&mut self) {
        while let Some((&(_, to), _)) = self.rings.iter().find(|(_, r)| !r.is_empty()) {
            self.deliver_from(to);
        }
    }

    fn deliver_from(&mut self, to: u16) {
        let ring = self
            .rings
            .iter_mut()
            .find(|((_, t), r)| *t == to && !r.is_empty())
            .unwrap()
            .1;
        let msg = ring.pop_front().unwrap();
        self.dispatch(to, msg);
        self.drain_local(to);
    }

    fn deliver(&mut self, pick: u8) {
        let ready: Vec<(u16, u16)> = self
            .rings
            .iter()
            .filter(|(_, r)| !r.is_empty())
            .map(|(&k, _)| k)
            .collect();
        if ready.is_empty() {
            return;
        }
        let key = ready[pick as usize % ready.len()];
        let msg = self.rings.get_mut(&key).unwrap().pop_front().unwrap();
        self.dispatch(key.1, msg);
        self.drain_local(key.1);
    }

    // ---- the owner side ----

    fn owner_message(&mut self, o: u16, msg: ToOwner) {
        let label = format!("{msg:?}");
        self.release_before(o, &msg);
        let fx = self.model.handle(o, &msg);
        let mut out = Vec::new();
        self.owners[o as usize].handle(msg, &mut out);
        self.compare(o, &label, fx, out);
    }

    /// Jobs a message to owner `o` takes from their holder, for the independent "never held
    /// twice" check: the worker left or gave the function up, or ended the job.
    fn release_before(&mut self, o: u16, msg: &ToOwner) {
        let shards = self.shards as u64;
        let on_o = |n: u64| n % shards == o as u64;
        match msg {
            ToOwner::WorkerGone { worker } => {
                self.holders.retain(|&n, (w, _)| !(on_o(n) && w == worker))
            }
            ToOwner::CantDo { worker, function } => {
                let f = function_index(function);
                self.holders
                    .retain(|&n, (w, g)| !(on_o(n) && w == worker && *g == f));
            }
            ToOwner::Work {
                worker,
                number,
                kind,
                ..
            } if kind.ends_job() && self.holders.get(number).is_some_and(|h| h.0 == *worker) => {
                self.holders.remove(number);
            }
            _ => {}
        }
    }

    /// Checks what an owner sent against the model's effects, then routes it.
    fn compare(&mut self, o: u16, label: &str, fx: Effects, out: Vec<(ShardId, ToHome)>) {
        let actual: Vec<Out> = out.iter().map(|(_, m)| Out::of(m)).collect();
        let context = || format!("after {label} at owner {o}\n model: {fx:?}\n owner: {actual:?}");
        for ((to, m), a) in out.iter().zip(&actual) {
            let dest = match a {
                Out::Noop { to, .. }
                | Out::Reply { to, .. }
                | Out::Assign { to, .. }
                | Out::Empty { to, .. }
                | Out::Forward { to, .. }
                | Out::Revoked { to, .. } => to.shard,
            };
            assert_eq!(*to, dest, "{m:?} routed to the wrong shard; {}", context());
        }
        // Answers to requests: compared by their place in the recipient's output.
        let answers = |outs: &[Out]| {
            let mut v: Vec<Out> = outs.iter().filter(|x| x.seq().is_some()).cloned().collect();
            v.sort_by_key(|x| x.seq());
            v
        };
        assert_eq!(
            answers(&fx.outs),
            answers(&actual),
            "answers differ {}",
            context()
        );
        // Results, failures and revocations: compared in order (newest waiter first, §3.6).
        let unrequested = |outs: &[Out]| -> Vec<Out> {
            outs.iter()
                .filter(|x| matches!(x, Out::Forward { .. } | Out::Revoked { .. }))
                .cloned()
                .collect()
        };
        assert_eq!(
            unrequested(&fx.outs),
            unrequested(&actual),
            "results differ {}",
            context()
        );
        for a in &actual {
            if let Out::Forward { ends: Some(_), .. } = a {
                self.model.count("job ends delivered to a client");
            }
        }
        self.check_noops(o, &fx, &actual, &context);
        self.check_holders(&actual, &context);
        for (to, msg) in out {
            self.send(o, to, msg);
        }
        self.check_owners(&context);
    }

    /// NOOPs: the one PRE_SLEEP asks for exactly; others only to a sleeping worker that was
    /// not sent one since. With `--worker-wakeup N`, for a function that just got a job: with
    /// 0 to every such worker, else to at least one. By default: the owner's wakes in flight
    /// (worker, function) are the model's, no function is woken for beyond its queued jobs,
    /// and while a function's jobs outnumber its wakes, none of its workers sleeps wakeable.
    fn check_noops(&mut self, o: u16, fx: &Effects, actual: &[Out], context: &dyn Fn() -> String) {
        let mut asked: Vec<&Out> = fx
            .outs
            .iter()
            .filter(|x| matches!(x, Out::Noop { .. }))
            .collect();
        let mut woken = Vec::new();
        // Functions woken for by this message (default wake-ups).
        let mut woken_for: Vec<usize> = Vec::new();
        let in_flight: Vec<(ConnId, usize)> = self.owners[o as usize]
            .wakes_in_flight()
            .into_iter()
            .map(|(c, name)| (c, function_index(&name)))
            .collect();
        let deadline = self.model.now_ms + WAKE_RETRY_MS;
        for a in actual {
            let Out::Noop { to, from } = *a else { continue };
            assert_eq!(from, o, "a NOOP names another owner; {}", context());
            if let Some(i) = asked.iter().position(|x| **x == *a) {
                asked.remove(i);
                if let Some(w) = self.model.workers.get(&(o, to))
                    && let Some((f, _)) = w.woken
                {
                    woken_for.push(f);
                }
                continue;
            }
            let w = self.model.workers.get_mut(&(o, to));
            let w = w.unwrap_or_else(|| panic!("NOOP to {to:?}, not a worker here; {}", context()));
            assert!(
                w.wakeable(),
                "NOOP to {to:?}, which is not asleep or was already sent one; {}",
                context()
            );
            w.noop_sent = true;
            if self.model.worker_wakeup.is_none() {
                let Some(&(_, f)) = in_flight.iter().find(|(c, _)| *c == to) else {
                    panic!(
                        "NOOP to {to:?} not counted as a wake in flight; {}",
                        context()
                    );
                };
                assert!(
                    w.can(f),
                    "NOOP to {to:?} for a function it cannot do; {}",
                    context()
                );
                w.woken = Some((f, deadline));
                woken_for.push(f);
                self.model.count("NOOP for a job nobody was woken for");
            } else {
                assert!(
                    fx.wake.iter().any(|&f| w.can(f)),
                    "NOOP to {to:?}, which can do none of the functions that got work; {}",
                    context()
                );
                self.model.count("NOOP for a new job");
            }
            woken.push(to);
        }
        assert!(asked.is_empty(), "NOOP missing; {}", context());
        let Some(limit) = self.model.worker_wakeup else {
            let mut expected: Vec<(ConnId, usize)> = self
                .model
                .workers
                .iter()
                .filter(|((wo, _), _)| *wo == o)
                .filter_map(|((_, c), w)| w.woken.map(|(f, _)| (*c, f)))
                .collect();
            expected.sort();
            assert_eq!(
                in_flight,
                expected,
                "wakes in flight (worker, function) differ; {}",
                context()
            );
            for f in (0..FUNCTIONS.len()).filter(|&f| owner_of(self.shards, f) == o) {
                let (queued, waking) = (self.model.queued(f), self.model.waking(o, f));
                let name = String::from_utf8_lossy(FUNCTIONS[f]);
                assert!(
                    !woken_for.contains(&f) || waking <= queued,
                    "{name}: {waking} wakes in flight for {queued} queued jobs; {}",
                    context()
                );
                let wakeable = self.model.wakeable(o, f);
                // Only workers asleep at home too (the owner's mirror lags a GRAB still on
                // its way), and not those whose home sent a Sleep after a CAN_DO, which
                // wakes them once it arrives.
                let wakeable: Vec<ConnId> = wakeable
                    .into_iter()
                    .filter(|&c| {
                        self.conn_index(c)
                            .is_some_and(|i| self.conns[i].sleeping && !self.conns[i].noop_sent)
                            && !self.sleep_on_its_way(c, o)
                    })
                    .collect();
                assert!(
                    wakeable.is_empty() || waking >= queued,
                    "{name}: {queued} queued jobs, {waking} wakes in flight, and {wakeable:?} \
                     sleep unwoken; {}",
                    context()
                );
            }
            return;
        };
        assert!(
            in_flight.is_empty(),
            "wakes counted with --worker-wakeup; {}",
            context()
        );
        let limit = limit as usize;
        if limit > 0 {
            assert!(
                woken.len() <= limit * fx.wake.len(),
                "more NOOPs than --worker-wakeup allows; {}",
                context()
            );
        }
        for &f in &fx.wake {
            let left = self.model.wakeable(o, f);
            if left.is_empty() {
                continue;
            }
            if limit == 0 {
                panic!(
                    "{} has work but sleeping {left:?} got no NOOP; {}",
                    String::from_utf8_lossy(FUNCTIONS[f]),
                    context()
                );
            }
            let some = woken
                .iter()
                .any(|c| self.model.workers.get(&(o, *c)).is_some_and(|w| w.can(f)));
            assert!(
                some,
                "{} has work but none of its sleeping workers got a NOOP; {}",
                String::from_utf8_lossy(FUNCTIONS[f]),
                context()
            );
        }
    }

    /// A Sleep for `worker` is on its way to owner `o` (in a ring or the local queue).
    fn sleep_on_its_way(&self, worker: ConnId, o: u16) -> bool {
        let is_sleep =
            |m: &Msg| matches!(m, Msg::Owner(ToOwner::Sleep { worker: w }) if *w == worker);
        self.local[o as usize].iter().any(is_sleep)
            || self
                .rings
                .get(&(worker.shard, o))
                .is_some_and(|r| r.iter().any(is_sleep))
    }

    /// A job is assigned only while nobody holds it.
    fn check_holders(&mut self, actual: &[Out], context: &dyn Fn() -> String) {
        for a in actual {
            match *a {
                Out::Revoked { to, number } => {
                    let held = self.holders.remove(&number);
                    assert_eq!(
                        held.map(|h| h.0),
                        Some(to),
                        "revoked from a worker that did not hold it; {}",
                        context()
                    );
                }
                Out::Assign { to, number, .. } => {
                    if let Some((other, _)) = self.holders.get(&number) {
                        panic!(
                            "job {number} assigned to {to:?} while {other:?} holds it; {}",
                            context()
                        );
                    }
                    let f = self.model.jobs[&number].function;
                    self.holders.insert(number, (to, f));
                }
                _ => {}
            }
        }
    }

    /// Every owner's admin answers, GET_STATUS answers and timer against the model.
    fn check_owners(&mut self, context: &dyn Fn() -> String) {
        let admin = ConnId {
            shard: 0,
            slot: u32::MAX,
            generation: 0,
        };
        for o in 0..self.shards {
            let owner = &mut self.owners[o as usize];
            let mut out = Vec::new();
            owner.handle(
                ToOwner::Ask {
                    client: admin,
                    gather: 0,
                    query: Query::Functions,
                },
                &mut out,
            );
            owner.handle(
                ToOwner::Ask {
                    client: admin,
                    gather: 0,
                    query: Query::Jobs,
                },
                &mut out,
            );
            let mut numbers: Vec<u64> = self.model.job_rows(o).iter().map(|r| r.0).collect();
            numbers.extend(self.model.ended.keys().rev().take(2));
            numbers.push(UNKNOWN_NUMBER);
            for &number in &numbers {
                owner.handle(
                    ToOwner::GetStatus {
                        client: admin,
                        seq: number,
                        number,
                        handle: handle_of(number).into(),
                    },
                    &mut out,
                );
            }
            let mut out = out.into_iter().map(|(_, m)| m);
            let Some(ToHome::Answer {
                part: Part::Functions(rows),
                ..
            }) = out.next()
            else {
                panic!("no status answer")
            };
            let mut rows: Vec<_> = rows
                .into_iter()
                .map(|r| (r.name.to_vec(), r.total, r.running, r.queued, r.workers))
                .collect();
            rows.sort();
            assert_eq!(
                rows,
                self.model.function_rows(o),
                "status of owner {o} differs; {}",
                context()
            );
            let Some(ToHome::Answer {
                part: Part::Jobs(rows),
                ..
            }) = out.next()
            else {
                panic!("no jobs answer")
            };
            let mut rows: Vec<_> = rows
                .into_iter()
                .map(|r| {
                    (
                        r.number,
                        r.retries,
                        r.ignore,
                        r.background,
                        r.unique.to_vec(),
                    )
                })
                .collect();
            rows.sort();
            assert_eq!(
                rows,
                self.model.job_rows(o),
                "show jobs of owner {o} differs; {}",
                context()
            );
            for (&number, msg) in numbers.iter().zip(out) {
                let ToHome::Reply { bytes, .. } = msg else {
                    panic!("no status reply")
                };
                assert_eq!(
                    Bytes(bytes.to_vec()),
                    Bytes(self.model.status(o, number, &handle_of(number))),
                    "GET_STATUS {number} differs; {}",
                    context()
                );
            }
            assert_eq!(
                owner.job_count(),
                self.model.job_rows(o).len(),
                "job count of owner {o}; {}",
                context()
            );
            if let Some(due) = self.model.next_deadline(o) {
                let at = owner.next_deadline();
                assert!(
                    at.is_some_and(|at| at <= self.start + Duration::from_millis(due)),
                    "owner {o}'s next timer {:?} is after the model's {due} ms; {}",
                    at.map(|a| a - self.start),
                    context()
                );
            }
        }
    }

    // ---- the home side ----

    fn conn_index(&self, id: ConnId) -> Option<usize> {
        let i = id.slot as usize;
        (i < self.conns.len() && self.conns[i].id == id).then_some(i)
    }

    fn answer(&mut self, i: usize, seq: Seq, bytes: &[u8]) {
        let c = &mut self.conns[i];
        assert!(
            c.unanswered.remove(&seq).is_some(),
            "{:?} answered twice or unasked at {seq}: {:?}",
            c.id,
            Bytes(bytes.to_vec())
        );
    }

    /// What a home does with an owner's message (`Home::home_message` in src/shard/home.rs).
    fn home_message(&mut self, h: u16, msg: ToHome) {
        let shards = self.shards as u64;
        match msg {
            ToHome::Reply {
                to,
                seq,
                bytes,
                attach,
            } => {
                // A connection that is gone already told its owners.
                let Some(i) = self.conn_index(to) else { return };
                if let Some(n) = attach {
                    self.conns[i].waiting.push(n);
                }
                self.answer(i, seq, &bytes);
            }
            ToHome::Assign {
                to,
                seq,
                number,
                bytes,
            } => {
                let Some(i) = self.conn_index(to) else { return };
                let owner = (number % shards) as u16;
                let c = &mut self.conns[i];
                c.held.push(number);
                c.owners |= 1 << owner;
                c.last_owner = owner;
                c.empty &= !(1 << owner);
                c.sleep_on_no_job = false;
                let earlier = match c.timed {
                    true => c.timer_job.replace(number),
                    false => None,
                };
                self.answer(i, seq, &bytes);
                if let Some(m) = earlier
                    && (m % shards) as u16 != owner
                {
                    self.send(
                        h,
                        (m % shards) as u16,
                        ToOwner::DropTimer {
                            worker: to,
                            number: m,
                        },
                    );
                }
            }
            ToHome::Empty {
                to,
                seq,
                kind,
                mut rest,
            } => {
                let Some(i) = self.conn_index(to) else { return };
                let c = &mut self.conns[i];
                c.empty |= 1 << c.asking;
                if rest.is_empty() {
                    self.answer(i, seq, &packet(PacketType::NoJob, &[]));
                    if std::mem::take(&mut self.conns[i].sleep_on_no_job) {
                        self.pre_sleep(i);
                    }
                    return;
                }
                let next = rest.remove(0);
                self.conns[i].asking = next;
                self.conns[i].woken_by &= !(1 << next);
                self.send(
                    h,
                    next,
                    ToOwner::Grab {
                        worker: to,
                        seq,
                        kind,
                        rest,
                    },
                );
                if self.conns[i].sleeping {
                    self.send(h, next, ToOwner::Sleep { worker: to });
                }
            }
            ToHome::Forward { to, bytes, ends } => {
                let Some(i) = self.conn_index(to) else { return };
                let ty = u32::from_be_bytes(bytes[4..8].try_into().unwrap());
                if ty == PacketType::Error as u32 {
                    return;
                }
                // A result: only for a job this client waits on.
                let body = &bytes[12..];
                let h = body.split(|&b| b == 0).next().unwrap();
                let number: u64 = std::str::from_utf8(&h[PREFIX.len() + 1..])
                    .unwrap()
                    .parse()
                    .unwrap();
                let c = &mut self.conns[i];
                let Some(at) = c.waiting.iter().position(|&n| n == number) else {
                    panic!(
                        "{:?} got {:?} but does not wait on it",
                        c.id,
                        Bytes(bytes.to_vec())
                    );
                };
                if ends.is_some() {
                    assert_eq!(ends, Some(number));
                    c.waiting.swap_remove(at);
                }
            }
            ToHome::Noop { to, from } => {
                let Some(i) = self.conn_index(to) else { return };
                let c = &mut self.conns[i];
                c.empty &= !(1 << from);
                if !c.sleeping {
                    return self.send(h, from, ToOwner::NoopDeclined { worker: to });
                }
                c.woken_by |= 1 << from;
                c.noop_sent = true;
            }
            ToHome::Revoked { to, number } => {
                let Some(i) = self.conn_index(to) else { return };
                self.conns[i].held.retain(|&n| n != number);
            }
            other => panic!("home got {other:?}"),
        }
    }

    /// PRE_SLEEP: asleep at home, and for every owner of the worker's functions.
    fn pre_sleep(&mut self, i: usize) {
        let c = &mut self.conns[i];
        c.sleeping = true;
        c.noop_sent = false;
        let (id, home) = (c.id, c.id.shard);
        for o in c.grab_order(home) {
            self.send(home, o, ToOwner::Sleep { worker: id });
        }
    }

    /// A handle number to use: one given out before (live or ended), or one never given.
    fn pick_number(&self, pick: u8) -> u64 {
        let numbers: Vec<u64> = self
            .model
            .jobs
            .keys()
            .chain(self.model.ended.keys())
            .copied()
            .collect();
        numbers
            .get(pick as usize % (numbers.len() + 1))
            .copied()
            .unwrap_or(UNKNOWN_NUMBER)
    }

    /// One action, as its connection's home (or the store, or the clock) performs it.
    fn act(&mut self, action: &Action) {
        let shards = self.shards;
        let conn_of = |c: u8| c as usize % CONNS;
        match *action {
            Action::Submit {
                conn,
                function,
                unique,
                data,
                kind,
            } => {
                let i = conn_of(conn);
                let f = function as usize;
                let (unique, data) = (UNIQUES[unique as usize], DATA[data as usize]);
                let now = self.model.now_secs();
                let (priority, background, when, reducer): (usize, bool, i64, &[u8]) = match kind {
                    SubmitKind::Foreground(p) => (p as usize, false, 0, b""),
                    SubmitKind::Background(p) => (p as usize, true, 0, b""),
                    SubmitKind::Epoch(-4) => (1, true, 0, b""),
                    SubmitKind::Epoch(-3) => (1, true, -5, b""),
                    SubmitKind::Epoch(s) => (1, true, now + s as i64, b""),
                    SubmitKind::ReduceForeground => (1, false, 0, b"r"),
                    SubmitKind::ReduceBackground => (1, true, 0, b"r"),
                };
                let c = &mut self.conns[i];
                let seq = c.reserve(format!("{action:?}"));
                let submit = Submit {
                    client: c.id,
                    seq,
                    exceptions: c.exceptions,
                    function: FUNCTIONS[f].into(),
                    job: JobBytes::new(unique, reducer, data),
                    priority: [Priority::High, Priority::Normal, Priority::Low][priority],
                    background,
                    when,
                };
                let (home, owner) = (c.id.shard, owner_of(shards, f));
                self.send(home, owner, ToOwner::Submit(Box::new(submit)));
            }
            Action::CanDo {
                conn,
                function,
                timeout,
            } => {
                let f = function as usize;
                let owner = owner_of(shards, f);
                let c = &mut self.conns[conn_of(conn)];
                c.abilities.push((f, owner));
                c.owners |= 1 << owner;
                c.timed |= TIMEOUTS[timeout as usize] > 0;
                let (id, home, sleeping) = (c.id, c.id.shard, c.sleeping);
                self.send(
                    home,
                    owner,
                    ToOwner::CanDo {
                        worker: id,
                        function: FUNCTIONS[f].into(),
                        timeout_ms: TIMEOUTS[timeout as usize],
                    },
                );
                if sleeping {
                    self.send(home, owner, ToOwner::Sleep { worker: id });
                }
            }
            Action::CantDo { conn, function } => {
                let f = function as usize;
                let c = &mut self.conns[conn_of(conn)];
                c.abilities.retain(|a| a.0 != f);
                let (id, home) = (c.id, c.id.shard);
                self.send(
                    home,
                    owner_of(shards, f),
                    ToOwner::CantDo {
                        worker: id,
                        function: FUNCTIONS[f].into(),
                    },
                );
            }
            Action::ResetAbilities { conn } => {
                let c = &mut self.conns[conn_of(conn)];
                c.abilities.clear();
                c.held.clear();
                let owners = std::mem::take(&mut c.owners);
                let (id, home) = (c.id, c.id.shard);
                for o in 0..shards {
                    if owners & (1 << o) != 0 {
                        self.send(home, o, ToOwner::WorkerGone { worker: id });
                    }
                }
            }
            Action::PreSleep { conn } => self.pre_sleep(conn_of(conn)),
            Action::Grab {
                conn,
                kind,
                then_sleep,
            } => {
                let c = &mut self.conns[conn_of(conn)];
                c.sleeping = false;
                c.noop_sent = false;
                c.sleep_on_no_job = then_sleep;
                let mut order = c.grab_order(c.id.shard);
                if order.is_empty() {
                    // NO_JOB from the home itself.
                    if then_sleep {
                        self.pre_sleep(conn_of(conn));
                    }
                    return;
                }
                let kind = [GrabKind::Plain, GrabKind::Uniq, GrabKind::All][kind as usize];
                let first = order.remove(0);
                c.asking = first;
                c.woken_by &= !(1 << first);
                let seq = c.reserve(format!("{action:?}"));
                let (id, home) = (c.id, c.id.shard);
                self.send(
                    home,
                    first,
                    ToOwner::Grab {
                        worker: id,
                        seq,
                        kind,
                        rest: order.into_iter().collect(),
                    },
                );
            }
            Action::Work {
                conn,
                job,
                kind,
                arg,
                holder,
                forged,
            } => {
                let held: Vec<(usize, u64)> = (0..CONNS)
                    .flat_map(|i| self.conns[i].held.iter().map(move |&n| (i, n)))
                    .collect();
                let (i, number) = if holder && !held.is_empty() {
                    held[job as usize % held.len()]
                } else {
                    (conn_of(conn), self.pick_number(job))
                };
                let h = handle_of(number);
                let kind = [
                    WorkKind::Data,
                    WorkKind::Warning,
                    WorkKind::Status,
                    WorkKind::Complete,
                    WorkKind::Fail,
                    WorkKind::Exception,
                ][kind as usize];
                let (ty, body) = match kind {
                    WorkKind::Status => (
                        PacketType::WorkStatus,
                        [
                            &h[..],
                            STATUS_NUMBERS[arg as usize % STATUS_NUMBERS.len()],
                            STATUS_NUMBERS
                                [arg as usize / STATUS_NUMBERS.len() % STATUS_NUMBERS.len()],
                        ]
                        .join(&0u8),
                    ),
                    // WORK_FAIL is forwarded as sent, trailing NUL or not.
                    WorkKind::Fail if arg % 2 == 1 => {
                        (PacketType::WorkFail, [&h[..], b""].join(&0u8))
                    }
                    WorkKind::Fail => (PacketType::WorkFail, h.clone()),
                    _ => {
                        let ty = match kind {
                            WorkKind::Data => PacketType::WorkData,
                            WorkKind::Warning => PacketType::WorkWarning,
                            WorkKind::Complete => PacketType::WorkComplete,
                            _ => PacketType::WorkException,
                        };
                        (ty, [&h[..], DATA[arg as usize % 3]].join(&0u8))
                    }
                };
                let c = &mut self.conns[i];
                if !forged {
                    // The home answers JOB_NOT_FOUND itself for a job the worker does not hold.
                    let Some(at) = c.held.iter().position(|&n| n == number) else {
                        return;
                    };
                    if kind.ends_job() {
                        c.held.swap_remove(at);
                    }
                }
                let mut bytes = RES.to_vec();
                bytes.extend_from_slice(&(ty as u32).to_be_bytes());
                bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
                bytes.extend_from_slice(&body);
                let (id, home) = (c.id, c.id.shard);
                self.send(
                    home,
                    (number % shards as u64) as u16,
                    ToOwner::Work {
                        worker: id,
                        number,
                        kind,
                        packet: bytes.into(),
                    },
                );
            }
            Action::OptionExceptions { conn } => self.conns[conn_of(conn)].exceptions = true,
            Action::Disconnect { conn } => {
                // `Shard::reap`: the owners hear of the worker, then of the client.
                let i = conn_of(conn);
                let c = &self.conns[i];
                let (id, home, owners) = (c.id, c.id.shard, c.owners);
                let waiting = c.waiting.clone();
                for o in 0..shards {
                    if owners & (1 << o) != 0 {
                        self.send(home, o, ToOwner::WorkerGone { worker: id });
                    }
                }
                for o in 0..shards {
                    let jobs: Vec<u64> = waiting
                        .iter()
                        .copied()
                        .filter(|n| n % shards as u64 == o as u64)
                        .collect();
                    if !jobs.is_empty() {
                        self.send(home, o, ToOwner::ClientGone { client: id, jobs });
                    }
                }
                self.conns[i] = HomeConn::new(ConnId {
                    generation: id.generation + 1,
                    ..id
                });
            }
            Action::GetStatus { conn, job } => {
                let number = self.pick_number(job);
                let c = &mut self.conns[conn_of(conn)];
                let seq = c.reserve(format!("{action:?}"));
                let (id, home) = (c.id, c.id.shard);
                self.send(
                    home,
                    (number % shards as u64) as u16,
                    ToOwner::GetStatus {
                        client: id,
                        seq,
                        number,
                        handle: handle_of(number).into(),
                    },
                );
            }
            Action::Cancel { conn, job } => {
                let number = self.pick_number(job);
                let c = &mut self.conns[conn_of(conn)];
                let seq = c.reserve(format!("{action:?}"));
                let (id, home) = (c.id, c.id.shard);
                self.send(
                    home,
                    (number % shards as u64) as u16,
                    ToOwner::Cancel {
                        client: id,
                        seq,
                        number,
                    },
                );
            }
            Action::MaxQueue {
                conn,
                function,
                limits,
            } => {
                let f = function as usize;
                let c = &mut self.conns[conn_of(conn)];
                let seq = c.reserve(format!("{action:?}"));
                let (id, home) = (c.id, c.id.shard);
                self.send(
                    home,
                    owner_of(shards, f),
                    ToOwner::Function {
                        client: id,
                        seq,
                        function: FUNCTIONS[f].into(),
                        maxqueue: limits.map(|l| l.map(u32::from)),
                    },
                );
            }
            Action::Advance { step } => self.advance(ADVANCE_MS[step as usize]),
            Action::StoreTake => self.store_take(),
            Action::StoreAck { owner, upto, ok } => {
                let o = owner as u16 % shards;
                let (acked, taken) = (self.model.acked[o as usize], self.model.batch[o as usize]);
                if taken > acked {
                    self.store_ack(o, acked + 1 + upto as u64 % (taken - acked), ok);
                }
            }
            Action::Deliver { ring } => self.deliver(ring),
            Action::Settle => self.settle(),
        }
        for s in 0..shards {
            self.drain_local(s);
        }
    }

    /// Moves the clock on; each owner runs its timers if its next one is due, as the shard
    /// loop does.
    fn advance(&mut self, ms: u64) {
        self.model.now_ms += ms;
        let now = self.start + Duration::from_millis(self.model.now_ms);
        let unix = Duration::from_secs(UNIX0) + Duration::from_millis(self.model.now_ms);
        for o in 0..self.shards {
            let owner = &mut self.owners[o as usize];
            owner.set_clock(now, unix);
            if owner.next_deadline().is_none_or(|d| d > now) {
                continue;
            }
            let mut out = Vec::new();
            owner.run_timers(&mut out);
            let next = owner.next_deadline();
            assert!(
                next.is_none_or(|d| d > now),
                "owner {o}'s timer is still due after running timers"
            );
            let fx = self.model.run_timers(o);
            self.compare(o, &format!("timers at {} ms", self.model.now_ms), fx, out);
            self.drain_local(o);
        }
    }

    fn store_take(&mut self) {
        for o in 0..self.shards {
            let taken = self.owners[o as usize]
                .take_store_ops()
                .map(|(b, ops)| (b, ops.iter().map(MOp::of).collect::<Vec<_>>()));
            assert_eq!(
                taken,
                self.model.take_store_ops(o),
                "store batch of owner {o}"
            );
        }
    }

    fn store_ack(&mut self, o: u16, upto: u64, ok: bool) {
        let mut out = Vec::new();
        let result = if ok { Ok(()) } else { Err("disk full") };
        self.owners[o as usize].durable(upto, result, &mut out);
        let fx = self.model.durable(o, upto, ok);
        self.compare(o, &format!("store ack {upto} {ok}"), fx, out);
        self.drain_local(o);
    }

    /// With nothing in flight: what clients and workers know agrees with the model, and no
    /// queued job waits while a worker that could run it sleeps unwoken.
    fn check_quiet(&self, when: &str) {
        let model = &self.model;
        for c in &self.conns {
            let mut attached: Vec<u64> = model
                .jobs
                .values()
                .flat_map(|j| j.waiters.iter().filter(|w| w.0 == c.id).map(|_| j.number))
                .collect();
            let mut waiting = c.waiting.clone();
            attached.sort();
            waiting.sort();
            assert_eq!(
                waiting, attached,
                "{when}: {:?} waits on other jobs than it is attached to",
                c.id
            );
            for j in model.jobs.values() {
                if j.state == MState::Running(c.id) {
                    assert!(
                        c.held.contains(&j.number),
                        "{when}: {:?} runs job {} unknowingly",
                        c.id,
                        j.number
                    );
                }
            }
            for o in 0..self.shards {
                let mut home: Vec<usize> = c
                    .abilities
                    .iter()
                    .filter(|a| a.1 == o)
                    .map(|a| a.0)
                    .collect();
                let mut owner: Vec<usize> = model
                    .workers
                    .get(&(o, c.id))
                    .map(|w| w.functions.iter().map(|e| e.0).collect())
                    .unwrap_or_default();
                home.sort();
                owner.sort();
                assert_eq!(home, owner, "{when}: {:?}'s functions at owner {o}", c.id);
            }
        }
        for (f, name) in FUNCTIONS.iter().enumerate() {
            if !model.has_queued(f) {
                continue;
            }
            let o = owner_of(self.shards, f);
            let capable: Vec<&HomeConn> = self
                .conns
                .iter()
                .filter(|c| model.workers.get(&(o, c.id)).is_some_and(|w| w.can(f)))
                .collect();
            let unwoken: Vec<ConnId> = capable
                .iter()
                .filter(|c| c.sleeping && !c.noop_sent)
                .map(|c| c.id)
                .collect();
            let name = String::from_utf8_lossy(name);
            match model.worker_wakeup {
                Some(0) => assert!(
                    unwoken.is_empty(),
                    "{when}: {name} has a queued job while {unwoken:?} sleep unwoken"
                ),
                Some(_) => assert!(
                    capable.is_empty() || unwoken.len() < capable.len(),
                    "{when}: {name} has a queued job while all its workers sleep unwoken"
                ),
                None => {
                    // Every wake in flight ends by its deadline, when another sleeper is
                    // woken: no job waits longer than that while one sleeps.
                    let (queued, waking) = (model.queued(f), model.waking(o, f));
                    assert!(
                        unwoken.is_empty() || waking >= queued,
                        "{when}: {name} has {queued} queued jobs and {waking} wakes in \
                         flight while {unwoken:?} sleep unwoken"
                    );
                    let late = model.workers.iter().any(|((wo, _), w)| {
                        *wo == o
                            && w.woken.is_some_and(|(g, d)| {
                                g == f && (d <= model.now_ms || d > model.now_ms + WAKE_RETRY_MS)
                            })
                    });
                    assert!(!late, "{when}: a wake for {name} outlived its deadline");
                }
            }
        }
    }

    /// Delivers everything, lets the store acknowledge everything, then checks every request
    /// was answered.
    fn finish(&mut self) {
        loop {
            self.settle();
            let mut acked = false;
            for o in 0..self.shards {
                self.store_take();
                let (acked_upto, taken) =
                    (self.model.acked[o as usize], self.model.batch[o as usize]);
                if taken > acked_upto {
                    self.store_ack(o, taken, true);
                    acked = true;
                }
            }
            if !acked && self.quiet() {
                break;
            }
        }
        self.check_quiet("at the end");
        for c in &self.conns {
            assert!(
                c.unanswered.is_empty(),
                "{:?} never got answers to {:?}",
                c.id,
                c.unanswered
            );
        }
    }
}

/// Runs one sequence; returns how often each rule was exercised.
fn run(case: &Case) -> BTreeMap<&'static str, u64> {
    let mut world = World::new(case);
    for (i, action) in case.actions.iter().enumerate() {
        world.act(action);
        if world.quiet() {
            world.check_quiet(&format!("after step {i} {action:?}"));
        }
    }
    world.finish();
    world.model.counts
}

/// Runs `PROPTEST_CASES` sequences (256 by default), shrinking a failure to a minimal one,
/// and prints how often each rule was exercised (seen with `--nocapture`).
fn check(cases: impl Strategy<Value = Case>) {
    let config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config.clone());
    let totals = RefCell::new(BTreeMap::new());
    let result = runner.run(&cases, |case| {
        for (event, n) in run(&case) {
            *totals.borrow_mut().entry(event).or_insert(0u64) += n;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    println!("{} sequences; events: {:?}", config.cases, totals.borrow());
}

/// The longest sequence: `MODEL_STEPS`, or `default`.
fn steps(default: usize) -> usize {
    std::env::var("MODEL_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// One shard: every message is handled in order, so the model predicts everything.
#[test]
fn one_owner_follows_the_model() {
    check(case(1..=1, steps(120)));
}

/// Several shards: owners of different functions, homes apart from owners, and messages
/// crossing rings in any order the rings allow.
#[test]
fn several_owners_follow_the_model() {
    check(case(2..=4, steps(160)));
}
