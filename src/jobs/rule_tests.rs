//! The owner's rules (PROTOCOL.md §3, and README's "Compatibility notes" where gearshiftd
//! differs), one at a time: each test drives an [`Owner`] directly, as home shards and the
//! store would, and checks every message it sends (the packets' bytes included).
//!
//! Sections, in the order of the owner's files: coalescing and maxqueue (`submit`), grab order
//! and wake-ups (`dispatch`), requeue, retries, clients leaving and cancel (`work`), epoch
//! jobs and CAN_DO_TIMEOUT (`timers`), the store's acknowledgements and replay (`durable`),
//! GET_STATUS and listings (`admin`).

use std::time::{Duration, Instant};

use super::{JobBytes, Outbox, Owner, OwnerConfig, Priority};
use crate::message::*;
use crate::protocol::{PacketType, RES};
use crate::store::{Op, StoredJob};

// ---- the test rig ----

/// The test clock's Unix time at its start, in seconds.
const UNIX0: u64 = 1_700_000_000;

/// `--wake-retry-ms` in these tests.
const WAKE_RETRY_MS: u64 = 5;

fn config(durable: bool, worker_wakeup: Option<u8>) -> OwnerConfig {
    OwnerConfig {
        handle_prefix: b"H:t"[..].into(),
        job_retries: 0,
        worker_wakeup,
        wake_retry: Duration::from_millis(WAKE_RETRY_MS),
        round_robin: false,
        durable,
        boot: 1,
    }
}

fn owner(durable: bool) -> Owner {
    owner_waking(durable, None)
}

fn owner_waking(durable: bool, worker_wakeup: Option<u8>) -> Owner {
    Owner::new(0, 1, config(durable, worker_wakeup))
}

fn conn(slot: u32) -> ConnId {
    ConnId {
        shard: 0,
        slot,
        generation: 0,
    }
}

/// A response packet, encoded here rather than with the crate's encoder.
fn packet(ty: PacketType, args: &[&[u8]]) -> Box<[u8]> {
    let body = args.join(&0u8);
    let mut b = RES.to_vec();
    b.extend_from_slice(&(ty as u32).to_be_bytes());
    b.extend_from_slice(&(body.len() as u32).to_be_bytes());
    b.extend_from_slice(&body);
    b.into()
}

/// Bytes as text: one response packet as `NAME body` (NULs shown as `|`), checking its header
/// and length, or an admin line as it is.
fn show_bytes(bytes: &[u8]) -> String {
    if bytes.len() < 12 || bytes[..4] != RES {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let ty = u32::from_be_bytes(bytes[4..8].try_into().unwrap());
    let len = u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
    assert_eq!(len, bytes.len() - 12, "one packet, its length right");
    let name = PacketType::from_u32(ty)
        .expect("a known packet type")
        .name();
    let body = String::from_utf8_lossy(&bytes[12..]).replace('\0', "|");
    format!("{name} {body}")
}

/// A message an owner sent, as text: `reply 1#2 JOB_CREATED H:t:1 +1` (to slot 1, its place
/// 2 in the output, attaching job 1), `assign 10#3 …`, `empty 10#3 …`, `forward 1 … end1`
/// (ending job 1 for the client), `noop 10`, `revoked 10 1`, `answer 5 …`.
fn show(msg: &ToHome) -> String {
    match msg {
        ToHome::Reply {
            to,
            seq,
            bytes,
            attach,
        } => {
            let attach = attach.map_or(String::new(), |n| format!(" +{n}"));
            format!("reply {}#{seq} {}{attach}", to.slot, show_bytes(bytes))
        }
        ToHome::Assign {
            to,
            seq,
            number,
            bytes,
        } => {
            let shown = show_bytes(bytes);
            assert!(
                shown.contains(&format!("H:t:{number}|")),
                "{shown}: {number}"
            );
            format!("assign {}#{seq} {shown}", to.slot)
        }
        ToHome::Empty {
            to,
            seq,
            kind,
            rest,
        } => format!("empty {}#{seq} {kind:?} {:?}", to.slot, &rest[..]),
        ToHome::Forward { to, bytes, ends } => {
            let ends = ends.map_or(String::new(), |n| format!(" end{n}"));
            format!("forward {} {}{ends}", to.slot, show_bytes(bytes))
        }
        ToHome::Noop { to, from } => {
            assert_eq!(*from, 0, "the owner names itself");
            format!("noop {}", to.slot)
        }
        ToHome::Revoked { to, number } => format!("revoked {} {number}", to.slot),
        ToHome::Answer { to, part, .. } => format!("answer {} {part:?}", to.slot),
        ToHome::ListConnections { .. } => "list connections".into(),
        ToHome::HomeMetrics { .. } => "home metrics".into(),
    }
}

/// A submission; `fg`/`bg` make one, the methods change it.
#[derive(Clone, Copy)]
struct Sub {
    function: &'static str,
    unique: &'static str,
    reducer: &'static str,
    data: &'static str,
    priority: Priority,
    background: bool,
    when: i64,
}

fn fg(function: &'static str, unique: &'static str, data: &'static str) -> Sub {
    Sub {
        function,
        unique,
        reducer: "",
        data,
        priority: Priority::Normal,
        background: false,
        when: 0,
    }
}

fn bg(function: &'static str, unique: &'static str, data: &'static str) -> Sub {
    Sub {
        background: true,
        ..fg(function, unique, data)
    }
}

impl Sub {
    fn high(self) -> Sub {
        Sub {
            priority: Priority::High,
            ..self
        }
    }

    fn low(self) -> Sub {
        Sub {
            priority: Priority::Low,
            ..self
        }
    }

    /// SUBMIT_JOB_EPOCH at `UNIX0 + secs`.
    fn at(self, secs: i64) -> Sub {
        Sub {
            when: UNIX0 as i64 + secs,
            ..self
        }
    }

    fn reducer(self, reducer: &'static str) -> Sub {
        Sub { reducer, ..self }
    }
}

/// An owner (shard 0 of 1, handles `H:t:<n>`) on a test clock, and what it sent.
struct Rig {
    o: Owner,
    out: Outbox,
    t0: Instant,
}

impl Rig {
    fn new() -> Rig {
        Rig::with(|_| {})
    }

    fn with(configure: impl FnOnce(&mut OwnerConfig)) -> Rig {
        let mut c = config(false, None);
        configure(&mut c);
        let mut o = Owner::new(0, 1, c);
        let t0 = Instant::now();
        o.set_clock(t0, Duration::from_secs(UNIX0));
        Rig {
            o,
            out: Vec::new(),
            t0,
        }
    }

    /// What the owner sent since the last call, in order.
    fn take(&mut self) -> Vec<String> {
        self.out.drain(..).map(|(_, m)| show(&m)).collect()
    }

    /// The same, sorted: for messages to different connections, whose order does not matter.
    fn take_sorted(&mut self) -> Vec<String> {
        let mut v = self.take();
        v.sort();
        v
    }

    /// Sets the clock `ms` after the start and runs the timers due.
    fn at_ms(&mut self, ms: u64) {
        let d = Duration::from_millis(ms);
        self.o
            .set_clock(self.t0 + d, Duration::from_secs(UNIX0) + d);
        self.o.run_timers(&mut self.out);
    }

    fn submit(&mut self, client: u32, seq: Seq, s: Sub) {
        let msg = ToOwner::Submit(Box::new(Submit {
            client: conn(client),
            seq,
            exceptions: false,
            function: s.function.as_bytes().into(),
            job: JobBytes::new(s.unique.as_bytes(), s.reducer.as_bytes(), s.data.as_bytes()),
            priority: s.priority,
            background: s.background,
            when: s.when,
        }));
        self.o.handle(msg, &mut self.out);
    }

    fn can_do(&mut self, worker: u32, function: &str, timeout_ms: u32) {
        let msg = ToOwner::CanDo {
            worker: conn(worker),
            function: function.as_bytes().into(),
            timeout_ms,
        };
        self.o.handle(msg, &mut self.out);
    }

    fn cant_do(&mut self, worker: u32, function: &str) {
        let msg = ToOwner::CantDo {
            worker: conn(worker),
            function: function.as_bytes().into(),
        };
        self.o.handle(msg, &mut self.out);
    }

    fn sleep(&mut self, worker: u32) {
        let msg = ToOwner::Sleep {
            worker: conn(worker),
        };
        self.o.handle(msg, &mut self.out);
    }

    fn grab_as(&mut self, worker: u32, seq: Seq, kind: GrabKind) {
        let msg = ToOwner::Grab {
            worker: conn(worker),
            seq,
            kind,
            rest: Default::default(),
        };
        self.o.handle(msg, &mut self.out);
    }

    fn grab(&mut self, worker: u32, seq: Seq) {
        self.grab_as(worker, seq, GrabKind::Plain);
    }

    /// Grabs and returns the handle number assigned, or None for no job.
    fn grab_number(&mut self, worker: u32) -> Option<u64> {
        self.grab(worker, 1);
        let assigned = self.out.iter().find_map(|(_, m)| match m {
            ToHome::Assign { number, .. } => Some(*number),
            _ => None,
        });
        self.out.clear();
        assigned
    }

    /// WORK_* from `worker` about job `number`: `args` after the handle.
    fn work(&mut self, worker: u32, number: u64, kind: WorkKind, args: &[&str]) {
        let ty = match kind {
            WorkKind::Data => PacketType::WorkData,
            WorkKind::Warning => PacketType::WorkWarning,
            WorkKind::Status => PacketType::WorkStatus,
            WorkKind::Complete => PacketType::WorkComplete,
            WorkKind::Fail => PacketType::WorkFail,
            WorkKind::Exception => PacketType::WorkException,
        };
        let handle = format!("H:t:{number}");
        let mut parts: Vec<&[u8]> = vec![handle.as_bytes()];
        parts.extend(args.iter().map(|a| a.as_bytes()));
        let msg = ToOwner::Work {
            worker: conn(worker),
            number,
            kind,
            packet: packet(ty, &parts),
        };
        self.o.handle(msg, &mut self.out);
    }

    fn complete(&mut self, worker: u32, number: u64) {
        self.work(worker, number, WorkKind::Complete, &["done"]);
    }

    fn worker_gone(&mut self, worker: u32) {
        let msg = ToOwner::WorkerGone {
            worker: conn(worker),
        };
        self.o.handle(msg, &mut self.out);
    }

    fn client_gone(&mut self, client: u32, jobs: &[u64]) {
        let msg = ToOwner::ClientGone {
            client: conn(client),
            jobs: jobs.to_vec(),
        };
        self.o.handle(msg, &mut self.out);
    }

    fn cancel(&mut self, admin: u32, seq: Seq, number: u64) {
        let msg = ToOwner::Cancel {
            client: conn(admin),
            seq,
            number,
        };
        self.o.handle(msg, &mut self.out);
    }

    fn get_status(&mut self, client: u32, seq: Seq, number: u64) {
        let msg = ToOwner::GetStatus {
            client: conn(client),
            seq,
            number,
            handle: format!("H:t:{number}").into_bytes().into(),
        };
        self.o.handle(msg, &mut self.out);
    }

    fn ask(&mut self, admin: u32, query: Query) -> Part {
        let msg = ToOwner::Ask {
            client: conn(admin),
            gather: 0,
            query,
        };
        self.o.handle(msg, &mut self.out);
        match self.out.pop() {
            Some((_, ToHome::Answer { part, .. })) if self.out.is_empty() => part,
            other => panic!("one answer expected, got {other:?}"),
        }
    }

    /// The store changes since the last call, as (batch, ops).
    fn store_ops(&mut self) -> Option<(u64, Vec<Op>)> {
        self.o.take_store_ops()
    }

    fn durable(&mut self, upto: u64, result: Result<(), &str>) {
        self.o.durable(upto, result, &mut self.out);
    }
}

fn add(function: &str, unique: &str, priority: Priority, data: &str, when: i64) -> Op {
    Op::Add(StoredJob {
        function: function.as_bytes().to_vec(),
        unique: unique.as_bytes().to_vec(),
        priority,
        data: data.as_bytes().to_vec(),
        when,
    })
}

fn delete(function: &str, unique: &str) -> Op {
    Op::Delete {
        function: function.as_bytes().to_vec(),
        unique: unique.as_bytes().to_vec(),
    }
}

/// A background submission of `f`, for tests that drive an owner and outbox of their own.
fn submit_bg(o: &mut Owner, out: &mut Outbox, client: ConnId, seq: Seq, unique: &[u8]) {
    submit_to(o, out, (client, seq), b"f", unique, Priority::Normal);
}

fn submit_to(
    o: &mut Owner,
    out: &mut Outbox,
    (client, seq): (ConnId, Seq),
    function: &[u8],
    unique: &[u8],
    priority: Priority,
) {
    o.handle(
        ToOwner::Submit(Box::new(Submit {
            client,
            seq,
            exceptions: false,
            function: function.into(),
            job: JobBytes::new(unique, b"", b"data"),
            priority,
            background: true,
            when: 0,
        })),
        out,
    );
}

/// The replies in `out`, as (recipient slot, seq, body after the 12-byte header).
fn replies(out: &mut Outbox) -> Vec<(u32, Seq, String)> {
    let mut r: Vec<_> = out
        .drain(..)
        .filter_map(|(_, m)| match m {
            ToHome::Reply { to, seq, bytes, .. } => Some((
                to.slot,
                seq,
                String::from_utf8_lossy(&bytes[12..]).into_owned(),
            )),
            _ => None,
        })
        .collect();
    r.sort();
    r
}

/// The workers sent NOOP in `out`, by slot.
fn noops(out: &mut Outbox) -> Vec<u32> {
    out.drain(..)
        .filter_map(|(_, m)| match m {
            ToHome::Noop { to, .. } => Some(to.slot),
            _ => None,
        })
        .collect()
}

// ---- submit: coalescing (§3.3) and maxqueue (§3.12) ----

/// A foreground submission onto a foreground job attaches its client; the job keeps its first
/// payload and priority, and its results go to every client, newest first (§3.6).
#[test]
fn coalescing_fg_onto_fg_attaches_the_client_and_keeps_the_job() {
    let mut r = Rig::new();
    r.can_do(10, "f", 0);
    r.submit(1, 1, fg("f", "u", "first"));
    r.submit(2, 1, fg("f", "u", "second").high());
    r.submit(3, 1, fg("f", "v", "other").high());
    assert_eq!(
        r.take(),
        [
            "reply 1#1 JOB_CREATED H:t:1 +1",
            "reply 2#1 JOB_CREATED H:t:1 +1",
            "reply 3#1 JOB_CREATED H:t:2 +2",
        ]
    );
    assert_eq!(r.o.job_count(), 2);
    // The HIGH job first: the coalesced submission did not make job 1 HIGH.
    r.grab(10, 1);
    r.grab(10, 2);
    assert_eq!(
        r.take(),
        [
            "assign 10#1 JOB_ASSIGN H:t:2|f|other",
            "assign 10#2 JOB_ASSIGN H:t:1|f|first",
        ]
    );
    r.work(10, 1, WorkKind::Data, &["part"]);
    r.complete(10, 1);
    assert_eq!(
        r.take(),
        [
            "forward 2 WORK_DATA H:t:1|part",
            "forward 1 WORK_DATA H:t:1|part",
            "forward 2 WORK_COMPLETE H:t:1|done end1",
            "forward 1 WORK_COMPLETE H:t:1|done end1",
        ]
    );
    assert_eq!(r.o.job_count(), 1);
}

/// A foreground submission onto a background job attaches its client, and the job stays
/// when that client goes away (README: a background job is never dropped for it).
#[test]
fn coalescing_fg_onto_bg_attaches_and_the_job_outlives_the_client() {
    let mut r = Rig::new();
    r.submit(1, 1, bg("f", "u", "d"));
    r.submit(2, 1, fg("f", "u", "x"));
    assert_eq!(
        r.take(),
        [
            "reply 1#1 JOB_CREATED H:t:1",
            "reply 2#1 JOB_CREATED H:t:1 +1"
        ]
    );
    r.client_gone(2, &[1]);
    assert_eq!(r.take(), Vec::<String>::new());
    assert_eq!(r.o.job_count(), 1);
    r.can_do(10, "f", 0);
    r.grab(10, 1);
    assert_eq!(r.take(), ["assign 10#1 JOB_ASSIGN H:t:1|f|d"]);
}

/// A background submission onto a foreground job makes it background: it is not attached,
/// and the job runs after its foreground clients went away (a foreground job alone is
/// removed when its client goes).
#[test]
fn coalescing_bg_onto_fg_makes_the_job_background() {
    let mut r = Rig::new();
    r.submit(1, 1, fg("f", "alone", "d"));
    r.submit(1, 2, fg("f", "u", "d"));
    r.submit(2, 1, bg("f", "u", "x"));
    assert_eq!(
        r.take(),
        [
            "reply 1#1 JOB_CREATED H:t:1 +1",
            "reply 1#2 JOB_CREATED H:t:2 +2",
            "reply 2#1 JOB_CREATED H:t:2",
        ]
    );
    r.client_gone(1, &[1, 2]);
    assert_eq!(r.take(), Vec::<String>::new());
    assert_eq!(
        r.o.job_count(),
        1,
        "job 1 went with its client, job 2 stays"
    );
    let Part::Jobs(rows) = r.ask(5, Query::Jobs) else {
        panic!("rows expected")
    };
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].number, rows[0].background), (2, true));
    r.can_do(10, "f", 0);
    r.grab(10, 1);
    assert_eq!(r.take(), ["assign 10#1 JOB_ASSIGN H:t:2|f|d"]);
}

/// With a store, a background submission onto a foreground job stores the job first and is
/// answered once that is durable, with any background submission that came meanwhile.
#[test]
fn coalescing_bg_onto_fg_with_a_store_is_answered_once_durable() {
    let mut r = Rig::with(|c| c.durable = true);
    r.submit(1, 1, fg("f", "u", "d"));
    assert_eq!(r.take(), ["reply 1#1 JOB_CREATED H:t:1 +1"]);
    assert_eq!(r.store_ops(), None, "a foreground job is not stored");
    r.submit(2, 1, bg("f", "u", "x"));
    r.submit(3, 1, bg("f", "u", "y").high());
    assert_eq!(
        r.take(),
        Vec::<String>::new(),
        "nothing before it is durable"
    );
    assert_eq!(
        r.store_ops(),
        Some((1, vec![add("f", "u", Priority::Normal, "d", 0)]))
    );
    r.durable(1, Ok(()));
    assert_eq!(
        r.take_sorted(),
        ["reply 2#1 JOB_CREATED H:t:1", "reply 3#1 JOB_CREATED H:t:1"]
    );
    r.client_gone(1, &[1]);
    assert_eq!(r.o.job_count(), 1, "background now");
    r.can_do(10, "f", 0);
    r.grab(10, 1);
    r.complete(10, 1);
    assert_eq!(r.take(), ["assign 10#1 JOB_ASSIGN H:t:1|f|d"]);
    assert_eq!(r.store_ops(), Some((2, vec![delete("f", "u")])));
}

/// ... and if the store fails, those submissions get QUEUE_ERROR and the job is foreground
/// again: it goes with its client, and no row is deleted (none was written).
#[test]
fn coalescing_bg_onto_fg_refused_by_the_store_leaves_the_job_foreground() {
    let mut r = Rig::with(|c| c.durable = true);
    r.submit(1, 1, fg("f", "u", "d"));
    r.submit(2, 1, bg("f", "u", "x"));
    r.take();
    let (batch, _) = r.store_ops().unwrap();
    r.durable(batch, Err("disk full"));
    assert_eq!(r.take(), ["reply 2#1 ERROR QUEUE_ERROR|QUEUE_ERROR"]);
    assert_eq!(r.o.job_count(), 1, "its foreground client still waits");
    r.client_gone(1, &[1]);
    assert_eq!(r.o.job_count(), 0);
    assert_eq!(r.store_ops(), None);
}

/// The coalescing key: the unique, or the payload for unique `-` (never an empty one); an
/// empty unique never coalesces; keys are per function; a unique never matches a payload.
#[test]
fn coalescing_keys() {
    let mut r = Rig::new();
    let subs = [
        bg("f", "-", "same"),
        bg("f", "-", "same"),
        bg("f", "-", ""),
        bg("f", "-", ""),
        bg("f", "", "x"),
        bg("f", "", "x"),
        bg("g", "-", "same"),
        bg("f", "same", "zzz"),
        bg("f", "same", "other"),
        bg("g", "same", "zzz"),
    ];
    for (seq, s) in subs.into_iter().enumerate() {
        r.submit(1, seq as Seq, s);
    }
    let numbers: Vec<String> = r
        .take()
        .iter()
        .map(|m| m.rsplit(':').next().unwrap().to_string())
        .collect();
    assert_eq!(numbers, ["1", "1", "2", "3", "4", "5", "6", "7", "7", "8"]);
}

/// maxqueue refuses a new job once the function holds that many (of any priority), with
/// no handle number used; a coalesced submission is not checked.
#[test]
fn maxqueue_refuses_new_jobs_not_coalesced_ones() {
    let mut r = Rig::new();
    r.o.handle(
        ToOwner::Function {
            client: conn(5),
            seq: 1,
            function: b"f"[..].into(),
            maxqueue: Some([0, 2, 0]),
        },
        &mut r.out,
    );
    r.submit(1, 1, bg("f", "a", "d"));
    r.submit(1, 2, fg("f", "b", "d").low());
    r.submit(1, 3, bg("f", "c", "d"));
    r.submit(1, 4, bg("f", "a", "d"));
    r.submit(1, 5, bg("f", "c", "d").high());
    assert_eq!(
        r.take(),
        [
            "reply 5#1 OK\r\n",
            "reply 1#1 JOB_CREATED H:t:1",
            "reply 1#2 JOB_CREATED H:t:2 +2",
            "reply 1#3 ERROR QUEUE_ERROR|Job queue is full",
            "reply 1#4 JOB_CREATED H:t:1",
            "reply 1#5 JOB_CREATED H:t:3",
        ]
    );
}

// ---- dispatch: grab order (§3.4) and wake-ups (§3.5) ----

/// HIGH before NORMAL before LOW, first come first served within a priority; then NO_JOB.
#[test]
fn grab_order_is_high_normal_low_and_fifo_within_a_priority() {
    let mut r = Rig::new();
    r.can_do(10, "f", 0);
    let subs = [
        bg("f", "l1", "d").low(),
        bg("f", "n1", "d"),
        bg("f", "h1", "d").high(),
        bg("f", "n2", "d"),
        bg("f", "h2", "d").high(),
        bg("f", "l2", "d").low(),
    ];
    for (seq, s) in subs.into_iter().enumerate() {
        r.submit(1, seq as Seq, s);
    }
    r.take();
    let order: Vec<_> = (0..7).map(|_| r.grab_number(10)).collect();
    assert_eq!(
        order,
        [Some(3), Some(5), Some(2), Some(4), Some(1), Some(6), None]
    );
    r.grab(10, 9);
    assert_eq!(r.take(), ["empty 10#9 Plain []"]);
}

/// Priority is global across a worker's functions (README); within one, the most recently
/// registered function comes first (gearmand 1.1).
#[test]
fn grab_order_across_functions() {
    let mut r = Rig::new();
    r.can_do(10, "f", 0);
    r.can_do(10, "g", 0);
    r.submit(1, 1, bg("f", "a", "d"));
    r.submit(1, 2, bg("g", "b", "d").low());
    r.submit(1, 3, bg("f", "c", "d").high());
    r.submit(1, 4, bg("g", "e", "d"));
    r.take();
    let order: Vec<_> = (0..5).map(|_| r.grab_number(10)).collect();
    assert_eq!(order, [Some(3), Some(4), Some(1), Some(2), None]);
}

/// GRAB_JOB gets JOB_ASSIGN (handle, function, payload); GRAB_JOB_UNIQ gets JOB_ASSIGN_UNIQ
/// (with the unique); GRAB_JOB_ALL gets JOB_ASSIGN_ALL (with the reducer) for a job with a
/// reducer, else JOB_ASSIGN_UNIQ. A worker with no functions here gets NO_JOB's message,
/// with the owners still to ask.
#[test]
fn grab_answers_with_the_packet_asked_for() {
    let mut r = Rig::new();
    r.can_do(10, "f", 0);
    r.submit(1, 1, bg("f", "u1", "d1"));
    r.submit(1, 2, bg("f", "u2", "d2").reducer("r"));
    r.submit(1, 3, bg("f", "u3", "d3"));
    r.submit(1, 4, bg("f", "u4", "d4").reducer("r"));
    r.take();
    r.grab_as(10, 1, GrabKind::Uniq);
    r.grab_as(10, 2, GrabKind::All);
    r.grab_as(10, 3, GrabKind::All);
    r.grab_as(10, 4, GrabKind::Plain);
    assert_eq!(
        r.take(),
        [
            "assign 10#1 JOB_ASSIGN_UNIQ H:t:1|f|u1|d1",
            "assign 10#2 JOB_ASSIGN_ALL H:t:2|f|u2|r|d2",
            "assign 10#3 JOB_ASSIGN_UNIQ H:t:3|f|u3|d3",
            "assign 10#4 JOB_ASSIGN H:t:4|f|d4",
        ]
    );
    r.submit(1, 5, bg("f", "u5", "d5"));
    r.take();
    r.o.handle(
        ToOwner::Grab {
            worker: conn(11),
            seq: 7,
            kind: GrabKind::Uniq,
            rest: [2, 3].into_iter().collect(),
        },
        &mut r.out,
    );
    assert_eq!(r.take(), ["empty 11#7 Uniq [2, 3]"]);
}

/// With `--round-robin`, a worker's functions take turns.
#[test]
fn round_robin_rotates_the_functions_of_a_worker() {
    let mut r = Rig::with(|c| c.round_robin = true);
    r.can_do(10, "f", 0);
    r.can_do(10, "g", 0);
    for seq in 0..2 {
        r.submit(1, seq, bg("f", ["f0", "f1"][seq as usize], "d"));
    }
    for seq in 0..2 {
        r.submit(1, 2 + seq, bg("g", ["g0", "g1"][seq as usize], "d"));
    }
    r.take();
    let order: Vec<_> = (0..4).map(|_| r.grab_number(10)).collect();
    assert_eq!(order, [Some(3), Some(1), Some(4), Some(2)]);
}

/// `--worker-wakeup 0` (gearmand's default): PRE_SLEEP with nothing queued puts a worker to
/// sleep; a new job wakes each sleeper once (not one that never slept), a second job wakes
/// nobody already woken, and PRE_SLEEP with a job queued is answered with NOOP at once, even
/// after one.
#[test]
fn wake_ups_go_to_sleepers_once() {
    let mut r = Rig::with(|c| c.worker_wakeup = Some(0));
    for w in [10, 11, 12] {
        r.can_do(w, "f", 0);
    }
    r.sleep(10);
    r.sleep(11);
    assert_eq!(r.take(), Vec::<String>::new());
    r.submit(1, 1, bg("f", "a", "d"));
    assert_eq!(
        r.take(),
        ["reply 1#1 JOB_CREATED H:t:1", "noop 10", "noop 11"]
    );
    r.submit(1, 2, bg("f", "b", "d"));
    assert_eq!(r.take(), ["reply 1#2 JOB_CREATED H:t:2"]);
    r.sleep(10);
    assert_eq!(r.take(), ["noop 10"]);
    // A grab wakes the worker: it is not woken again until it sleeps.
    r.grab(11, 1);
    r.grab(11, 2);
    r.take();
    r.submit(1, 3, bg("f", "c", "d"));
    assert_eq!(r.take(), ["reply 1#3 JOB_CREATED H:t:3"]);
}

/// `--worker-wakeup 1`: each job wakes one sleeper, in turn round the function's workers;
/// once all were woken, a job wakes nobody.
#[test]
fn worker_wakeup_rotates_through_the_sleepers() {
    let mut r = Rig::with(|c| c.worker_wakeup = Some(1));
    for w in [10, 11, 12] {
        r.can_do(w, "f", 0);
        r.sleep(w);
    }
    let mut woken = Vec::new();
    for seq in 1..=4 {
        r.submit(1, seq, bg("f", ["a", "b", "c", "e"][seq as usize - 1], "d"));
        let noops: Vec<_> = r
            .take()
            .into_iter()
            .filter(|m| m.starts_with("noop"))
            .collect();
        woken.push(noops);
    }
    assert_eq!(
        woken,
        [
            vec!["noop 10".to_string()],
            vec!["noop 11".to_string()],
            vec!["noop 12".to_string()],
            vec![],
        ]
    );
}

/// With `--worker-wakeup 1`, and by default, a woken worker that leaves (or stops doing the
/// function) before it grabs passes the wake-up on: the job does not wait while another
/// worker sleeps.
#[test]
fn a_woken_worker_that_leaves_passes_its_wake_up_on() {
    for (leave, wakeup) in [
        ("gone", Some(1)),
        ("cant_do", Some(1)),
        ("gone", None),
        ("cant_do", None),
    ] {
        let mut o = owner_waking(false, wakeup);
        let mut out = Vec::new();
        for w in [1, 2] {
            o.handle(
                ToOwner::CanDo {
                    worker: conn(w),
                    function: b"f"[..].into(),
                    timeout_ms: 0,
                },
                &mut out,
            );
            o.handle(ToOwner::Sleep { worker: conn(w) }, &mut out);
        }
        submit_bg(&mut o, &mut out, conn(9), 1, b"u");
        assert_eq!(noops(&mut out), vec![1], "one worker woken");
        let msg = match leave {
            "gone" => ToOwner::WorkerGone { worker: conn(1) },
            _ => ToOwner::CantDo {
                worker: conn(1),
                function: b"f"[..].into(),
            },
        };
        o.handle(msg, &mut out);
        assert_eq!(
            noops(&mut out),
            vec![2],
            "{leave} {wakeup:?}: the other is woken instead"
        );
    }
}

/// ... and so does a worker that was woken for one function, took a job of another, and left:
/// a queued job never waits with all its workers asleep because an awake one went away.
#[test]
fn a_worker_that_leaves_with_work_queued_passes_a_wake_up_on() {
    let mut o = owner_waking(false, Some(1));
    let mut out = Vec::new();
    for (w, f) in [(1, "g"), (2, "g"), (1, "f")] {
        o.handle(
            ToOwner::CanDo {
                worker: conn(w),
                function: f.as_bytes().into(),
                timeout_ms: 0,
            },
            &mut out,
        );
    }
    for w in [1, 2] {
        o.handle(ToOwner::Sleep { worker: conn(w) }, &mut out);
    }
    submit_to(&mut o, &mut out, (conn(9), 1), b"g", b"g", Priority::Normal);
    assert_eq!(noops(&mut out), vec![1]);
    submit_to(&mut o, &mut out, (conn(9), 2), b"f", b"f", Priority::High);
    o.handle(
        ToOwner::Grab {
            worker: conn(1),
            seq: 3,
            kind: GrabKind::Plain,
            rest: Default::default(),
        },
        &mut out,
    );
    assert!(
        out.iter()
            .any(|(_, m)| matches!(m, ToHome::Assign { number: 2, .. })),
        "worker 1 took the HIGH f job"
    );
    out.clear();
    o.handle(ToOwner::WorkerGone { worker: conn(1) }, &mut out);
    assert_eq!(noops(&mut out), vec![2], "worker 2 is woken for the g job");
}

/// By default a function wakes as many sleepers as it has queued jobs that no wake in flight
/// covers: N jobs wake N workers, one each, and PRE_SLEEP gets a NOOP at once only for a job
/// nobody was woken for.
#[test]
fn by_default_each_queued_job_wakes_one_sleeper() {
    let mut r = Rig::new();
    for w in [10, 11, 12] {
        r.can_do(w, "f", 0);
        r.sleep(w);
    }
    r.submit(1, 1, bg("f", "a", "d"));
    assert_eq!(r.take(), ["reply 1#1 JOB_CREATED H:t:1", "noop 10"]);
    r.submit(1, 2, bg("f", "b", "d"));
    assert_eq!(r.take(), ["reply 1#2 JOB_CREATED H:t:2", "noop 11"]);
    // A coalesced submission is no new job.
    r.submit(1, 3, bg("f", "b", "d"));
    assert_eq!(r.take(), ["reply 1#3 JOB_CREATED H:t:2"]);
    // 10 takes a job: one queued, one wake (11's) in flight, so nobody more.
    r.grab(10, 1);
    assert_eq!(r.take(), ["assign 10#1 JOB_ASSIGN H:t:1|f|d"]);
    r.submit(1, 4, bg("f", "c", "d"));
    assert_eq!(r.take(), ["reply 1#4 JOB_CREATED H:t:3", "noop 12"]);
    // Every sleeper woken: a fourth job wakes nobody, and a worker that sleeps again is
    // woken at once for it (the other two are covered by 11's and 12's wakes).
    r.submit(1, 5, bg("f", "e", "d"));
    assert_eq!(r.take(), ["reply 1#5 JOB_CREATED H:t:4"]);
    r.sleep(10);
    assert_eq!(r.take(), ["noop 10"]);
    // ... but not for jobs that wakes in flight cover.
    r.grab(10, 2);
    r.take();
    r.sleep(10);
    assert_eq!(r.take(), Vec::<String>::new());
    // Epoch jobs not yet due wake nobody; due, they do.
    r.grab(11, 3);
    r.grab(12, 4);
    r.take();
    for w in [11, 12] {
        r.sleep(w);
    }
    assert_eq!(r.take(), Vec::<String>::new(), "nothing queued");
    r.submit(1, 6, bg("f", "later", "d").at(2));
    assert_eq!(r.take(), ["reply 1#6 JOB_CREATED H:t:5"]);
    r.at_ms(2000);
    assert_eq!(r.take().len(), 1, "one sleeper woken for the due job");
}

/// A woken worker that does not ask within `--wake-retry-ms` (it took another owner's job,
/// is slow, or is gone) stops counting: another sleeper is woken, and the job waits no
/// longer than that while one sleeps.
#[test]
fn a_wake_not_answered_in_time_wakes_another_sleeper() {
    let mut r = Rig::new();
    for w in [10, 11] {
        r.can_do(w, "f", 0);
        r.sleep(w);
    }
    r.submit(1, 1, bg("f", "a", "d"));
    assert_eq!(r.take(), ["reply 1#1 JOB_CREATED H:t:1", "noop 10"]);
    assert_eq!(
        r.o.next_deadline(),
        Some(r.t0 + Duration::from_millis(WAKE_RETRY_MS))
    );
    r.at_ms(WAKE_RETRY_MS - 1);
    assert_eq!(r.take(), Vec::<String>::new());
    r.at_ms(WAKE_RETRY_MS);
    assert_eq!(r.take(), ["noop 11"]);
    // Nobody left to wake: the next deadline passes quietly, and the late worker still
    // gets the job when it asks.
    r.at_ms(3 * WAKE_RETRY_MS);
    assert_eq!(r.take(), Vec::<String>::new());
    assert_eq!(r.o.next_deadline(), None);
    r.grab(10, 1);
    assert_eq!(r.take(), ["assign 10#1 JOB_ASSIGN H:t:1|f|d"]);
}

/// A wake is settled when its worker asks, whatever the answer: a worker woken for `f` that
/// takes a job of `g` (higher priority) leaves `f`'s job to another sleeper at once, and so
/// does one whose home declines the NOOP; a settled wake's deadline wakes nobody.
#[test]
fn a_woken_worker_that_takes_other_work_passes_its_wake_up_on() {
    let mut r = Rig::new();
    r.can_do(10, "g", 0);
    r.can_do(10, "f", 0);
    r.can_do(11, "f", 0);
    r.can_do(12, "f", 0);
    for w in [10, 11, 12] {
        r.sleep(w);
    }
    r.submit(1, 1, bg("f", "a", "d"));
    assert_eq!(r.take(), ["reply 1#1 JOB_CREATED H:t:1", "noop 10"]);
    r.submit(1, 2, bg("g", "b", "d").high());
    assert_eq!(
        r.take(),
        ["reply 1#2 JOB_CREATED H:t:2"],
        "10 is awake already"
    );
    r.grab(10, 1);
    assert_eq!(r.take(), ["assign 10#1 JOB_ASSIGN H:t:2|g|d", "noop 11"]);
    r.o.handle(ToOwner::NoopDeclined { worker: conn(11) }, &mut r.out);
    assert_eq!(r.take(), ["noop 12"]);
    r.grab(12, 2);
    assert_eq!(r.take(), ["assign 12#2 JOB_ASSIGN H:t:1|f|d"]);
    assert_eq!(r.o.next_deadline(), None, "settled wakes leave no deadline");
    r.at_ms(10 * WAKE_RETRY_MS);
    assert_eq!(r.take(), Vec::<String>::new());
}

/// A woken worker that sends PRE_SLEEP over and over, while another woken worker has not
/// asked, re-arms its wake each time: the retry queue keeps one live entry per wake in flight
/// and does not grow with the PRE_SLEEPs (a peer's packets must cost bounded memory, whatever
/// `--wake-retry-ms`).
#[test]
fn pre_sleep_floods_do_not_grow_the_retry_queue() {
    let mut r = Rig::new();
    r.can_do(10, "f", 0);
    r.can_do(11, "f", 0);
    r.sleep(10);
    r.sleep(11);
    r.submit(1, 1, bg("f", "a", "d"));
    r.submit(1, 2, bg("f", "b", "d"));
    assert_eq!(r.take().len(), 4, "two jobs, two wakes");
    for _ in 0..10_000 {
        r.sleep(11);
    }
    assert_eq!(r.take().len(), 10_000, "a NOOP for each PRE_SLEEP");
    assert_eq!(r.o.wakes_in_flight().len(), 2);
    assert!(
        r.o.wake_retries.len() <= 100,
        "{} retry entries for 2 wakes in flight",
        r.o.wake_retries.len()
    );
    // The wakes still end at their deadlines.
    r.at_ms(2 * WAKE_RETRY_MS);
    assert_eq!(r.o.wakes_in_flight().len(), 0);
    assert_eq!(r.o.next_deadline(), None);
}

// ---- work: results (§3.6), requeue and retries (§3.9), clients leaving (§3.10), cancel ----

/// Results go to the job's clients; WORK_EXCEPTION to a client without the exceptions option
/// is WORK_FAIL `<handle>\0`; a result from a worker not holding the job gets JOB_NOT_FOUND.
#[test]
fn results_reach_the_clients_and_strangers_get_job_not_found() {
    let mut r = Rig::new();
    r.can_do(10, "f", 0);
    r.submit(1, 1, fg("f", "u", "d"));
    r.o.handle(
        ToOwner::Submit(Box::new(Submit {
            client: conn(2),
            seq: 1,
            exceptions: true,
            function: b"f"[..].into(),
            job: JobBytes::new(b"u", b"", b"d"),
            priority: Priority::Normal,
            background: false,
            when: 0,
        })),
        &mut r.out,
    );
    r.grab(10, 1);
    r.take();
    r.work(11, 1, WorkKind::Data, &["x"]);
    r.work(10, 2, WorkKind::Warning, &["x"]);
    r.work(10, 1, WorkKind::Status, &["1", "4"]);
    r.work(10, 1, WorkKind::Exception, &["oops"]);
    assert_eq!(
        r.take(),
        [
            "forward 11 ERROR JOB_NOT_FOUND|Job does not exist on server",
            "forward 10 ERROR JOB_NOT_FOUND|Job does not exist on server",
            "forward 2 WORK_STATUS H:t:1|1|4",
            "forward 1 WORK_STATUS H:t:1|1|4",
            "forward 2 WORK_EXCEPTION H:t:1|oops end1",
            "forward 1 WORK_FAIL H:t:1| end1",
        ]
    );
    r.complete(10, 1);
    assert_eq!(
        r.take(),
        ["forward 10 ERROR JOB_NOT_FOUND|Job given in work result not found"]
    );
}

/// A worker that goes away, or sends CANT_DO, gives its job back: to the tail of its queue,
/// its status reset, no word to its client, sleepers woken; its late results are refused.
#[test]
fn a_lost_worker_s_job_is_requeued_at_the_tail() {
    let mut r = Rig::new();
    r.can_do(10, "f", 0);
    r.can_do(11, "f", 0);
    r.submit(1, 1, fg("f", "a", "d"));
    r.submit(1, 2, bg("f", "b", "d"));
    r.grab(10, 1);
    r.work(10, 1, WorkKind::Status, &["3", "10"]);
    r.get_status(5, 1, 1);
    assert_eq!(
        r.take(),
        [
            "reply 1#1 JOB_CREATED H:t:1 +1",
            "reply 1#2 JOB_CREATED H:t:2",
            "assign 10#1 JOB_ASSIGN H:t:1|f|d",
            "forward 1 WORK_STATUS H:t:1|3|10",
            "reply 5#1 STATUS_RES H:t:1|1|1|3|10",
        ]
    );
    r.sleep(11);
    assert_eq!(r.take(), ["noop 11"], "job 2 is queued");
    r.worker_gone(10);
    r.get_status(5, 2, 1);
    assert_eq!(
        r.take(),
        ["reply 5#2 STATUS_RES H:t:1|1|0|0|0"],
        "queued again, its status reset, its client not told"
    );
    assert_eq!(r.grab_number(11), Some(2), "job 1 went to the tail");
    assert_eq!(r.grab_number(11), Some(1));
    r.complete(11, 2);
    r.cant_do(11, "f");
    r.sleep(11);
    assert_eq!(r.take(), Vec::<String>::new());
    r.can_do(12, "f", 0);
    r.sleep(12);
    assert_eq!(r.take(), ["noop 12"], "CANT_DO gave job 1 back");
    assert_eq!(r.grab_number(12), Some(1));
    r.complete(11, 1);
    r.complete(12, 1);
    assert_eq!(
        r.take(),
        [
            "forward 11 ERROR JOB_NOT_FOUND|Job given in work result not found",
            "forward 1 WORK_COMPLETE H:t:1|done end1",
        ]
    );
}

/// `--job-retries N`: the Nth loss of a job drops it; its clients get WORK_FAIL (no NUL), and
/// a stored job's row is deleted.
#[test]
fn job_retries_drop_a_job_after_n_tries() {
    let mut r = Rig::with(|c| c.job_retries = 2);
    r.submit(1, 1, fg("f", "u", "d"));
    r.take();
    r.can_do(10, "f", 0);
    assert_eq!(r.grab_number(10), Some(1));
    r.worker_gone(10);
    assert_eq!(r.take(), Vec::<String>::new(), "the first loss requeues");
    r.can_do(11, "f", 0);
    assert_eq!(r.grab_number(11), Some(1));
    r.worker_gone(11);
    assert_eq!(r.take(), ["forward 1 WORK_FAIL H:t:1 end1"]);
    assert_eq!(r.o.job_count(), 0);
    r.get_status(5, 1, 1);
    assert_eq!(r.take(), ["reply 5#1 STATUS_RES H:t:1|0|0|0|0"]);

    let mut r = Rig::with(|c| {
        c.job_retries = 1;
        c.durable = true;
    });
    r.submit(1, 1, bg("f", "u", "d"));
    let (batch, _) = r.store_ops().unwrap();
    r.durable(batch, Ok(()));
    r.can_do(10, "f", 0);
    r.grab(10, 1);
    r.take();
    r.worker_gone(10);
    assert_eq!(r.take(), Vec::<String>::new(), "nobody waits on it");
    assert_eq!(
        r.o.job_count(),
        0,
        "--job-retries 1: the first loss drops it"
    );
    assert_eq!(r.store_ops(), Some((2, vec![delete("f", "u")])));
}

/// A queued foreground job whose clients all went away is removed at once; a running one
/// runs on, its results dropped; one with a client left goes on for it.
#[test]
fn clients_leaving_abandon_their_jobs() {
    let mut r = Rig::new();
    r.can_do(10, "f", 0);
    r.submit(1, 1, fg("f", "running", "d"));
    r.submit(1, 2, fg("f", "queued", "d"));
    r.submit(1, 3, fg("f", "shared", "d"));
    r.submit(2, 1, fg("f", "shared", "d"));
    r.take();
    assert_eq!(r.grab_number(10), Some(1));
    r.client_gone(1, &[1, 2, 3]);
    assert_eq!(r.take(), Vec::<String>::new());
    assert_eq!(
        r.o.job_count(),
        2,
        "job 1 runs, job 2 went, job 3 has client 2"
    );
    r.complete(10, 1);
    assert_eq!(
        r.take(),
        Vec::<String>::new(),
        "job 1's result reaches nobody"
    );
    assert_eq!(r.o.job_count(), 1);
    assert_eq!(r.grab_number(10), Some(3));
    r.complete(10, 3);
    assert_eq!(r.take(), ["forward 2 WORK_COMPLETE H:t:3|done end3"]);
}

/// `cancel job`: WORK_FAIL (no NUL) to each client, newest first, and OK; a queued job goes
/// at once, a running one finishes unseen (README); a stored job's row is deleted; an
/// unknown handle is `ERR UNKNOWN_JOB`.
#[test]
fn cancel_fails_the_clients_and_drops_the_job() {
    let mut r = Rig::new();
    r.can_do(10, "f", 0);
    r.submit(1, 1, fg("f", "u", "d"));
    r.submit(2, 1, fg("f", "u", "d"));
    r.take();
    r.cancel(5, 1, 1);
    assert_eq!(
        r.take(),
        [
            "forward 2 WORK_FAIL H:t:1 end1",
            "forward 1 WORK_FAIL H:t:1 end1",
            "reply 5#1 OK\r\n",
        ]
    );
    assert_eq!(r.o.job_count(), 0);
    assert_eq!(r.grab_number(10), None);
    r.cancel(5, 2, 1);
    assert_eq!(r.take(), ["reply 5#2 ERR UNKNOWN_JOB\r\n"]);

    r.submit(1, 2, fg("f", "v", "d"));
    assert_eq!(r.grab_number(10), Some(2));
    r.cancel(5, 3, 2);
    assert_eq!(
        r.take(),
        ["forward 1 WORK_FAIL H:t:2 end2", "reply 5#3 OK\r\n"]
    );
    assert_eq!(r.o.job_count(), 1, "still running");
    r.complete(10, 2);
    assert_eq!(r.take(), Vec::<String>::new(), "its clients were detached");
    assert_eq!(r.o.job_count(), 0);

    let mut r = Rig::with(|c| c.durable = true);
    r.submit(1, 1, bg("f", "u", "d"));
    let (batch, _) = r.store_ops().unwrap();
    r.durable(batch, Ok(()));
    r.take();
    r.cancel(5, 1, 1);
    assert_eq!(r.take(), ["reply 5#1 OK\r\n"]);
    assert_eq!(r.store_ops(), Some((2, vec![delete("f", "u")])));
}

// ---- timers: epoch jobs (§3.11) and CAN_DO_TIMEOUT (§3.9) ----

/// An epoch job is not handed out, nor wakes anyone, before its time; when it falls due it
/// is queued and wakes the sleepers (README: gearmand 2.0). A time in the past is now.
#[test]
fn an_epoch_job_waits_for_its_time() {
    let mut r = Rig::new();
    r.can_do(10, "f", 0);
    r.submit(1, 1, bg("f", "e", "d").at(10));
    assert_eq!(r.take(), ["reply 1#1 JOB_CREATED H:t:1"]);
    assert_eq!(r.o.next_deadline(), Some(r.t0 + Duration::from_secs(10)));
    r.grab(10, 1);
    r.sleep(10);
    assert_eq!(r.take(), ["empty 10#1 Plain []"], "not runnable, no NOOP");
    r.at_ms(9_999);
    assert_eq!(r.take(), Vec::<String>::new());
    assert_eq!(r.grab_number(10), None);
    r.sleep(10);
    r.at_ms(10_000);
    assert_eq!(r.take(), ["noop 10"]);
    assert_eq!(
        r.o.next_deadline(),
        Some(r.t0 + Duration::from_millis(10_000 + WAKE_RETRY_MS)),
        "only the wake's retry"
    );
    r.grab(10, 2);
    assert_eq!(r.take(), ["assign 10#2 JOB_ASSIGN H:t:1|f|d"]);
    assert_eq!(r.o.next_deadline(), None);

    r.sleep(10);
    r.submit(1, 2, bg("f", "past", "d").at(-5));
    assert_eq!(r.take(), ["reply 1#2 JOB_CREATED H:t:2", "noop 10"]);
}

/// A job not yet due never hides a due one (README: gearmand 2.0).
#[test]
fn a_future_job_does_not_hide_a_due_one() {
    let mut r = Rig::new();
    r.can_do(10, "f", 0);
    r.submit(1, 1, bg("f", "later", "d").high().at(60));
    r.submit(1, 2, bg("f", "now", "d").low());
    r.take();
    assert_eq!(r.grab_number(10), Some(2));
    assert_eq!(r.grab_number(10), None);
    r.at_ms(60_000);
    assert_eq!(r.grab_number(10), Some(1));
}

/// A job held past its function's CAN_DO_TIMEOUT (under a second counts as one) is taken
/// back: the worker is told (`Revoked`), the job requeued and a sleeper woken; the worker's
/// late result is refused.
#[test]
fn can_do_timeout_takes_the_job_back() {
    let mut r = Rig::new();
    r.can_do(10, "f", 500);
    r.can_do(11, "f", 0);
    r.submit(1, 1, fg("f", "u", "d"));
    assert_eq!(r.grab_number(10), Some(1));
    r.sleep(11);
    assert_eq!(r.o.next_deadline(), Some(r.t0 + Duration::from_secs(1)));
    r.at_ms(999);
    assert_eq!(r.take(), Vec::<String>::new());
    r.at_ms(1_000);
    assert_eq!(r.take(), ["revoked 10 1", "noop 11"]);
    r.complete(10, 1);
    assert_eq!(
        r.take(),
        ["forward 10 ERROR JOB_NOT_FOUND|Job given in work result not found"]
    );
    assert_eq!(r.grab_number(11), Some(1));
    r.at_ms(10_000);
    assert_eq!(r.take(), Vec::<String>::new(), "worker 11 has no timeout");
}

/// One timer per connection: each assignment re-arms it for the new job, so the earlier
/// job's timer never fires.
#[test]
fn can_do_timeout_is_one_timer_per_connection_re_armed_by_each_assignment() {
    let mut r = Rig::new();
    r.can_do(10, "f", 2_000);
    r.submit(1, 1, bg("f", "a", "d"));
    r.submit(1, 2, bg("f", "b", "d"));
    r.take();
    assert_eq!(r.grab_number(10), Some(1));
    r.at_ms(1_000);
    assert_eq!(r.grab_number(10), Some(2));
    r.at_ms(2_000);
    assert_eq!(
        r.take(),
        Vec::<String>::new(),
        "job 1's timer was re-armed for job 2"
    );
    r.at_ms(2_999);
    assert_eq!(r.take(), Vec::<String>::new());
    r.at_ms(3_000);
    assert_eq!(r.take(), ["revoked 10 2"]);
}

/// An assignment of a function without a timeout removes the connection's timer, and so does
/// a worker's home telling the owner another owner's assignment took it (`DropTimer`).
#[test]
fn can_do_timeout_is_removed_by_an_untimed_assignment_or_elsewhere() {
    let mut r = Rig::new();
    r.can_do(10, "f", 1_000);
    r.can_do(10, "g", 0);
    r.submit(1, 1, bg("f", "a", "d"));
    assert_eq!(r.grab_number(10), Some(1));
    r.submit(1, 2, bg("g", "b", "d"));
    assert_eq!(r.grab_number(10), Some(2));
    r.at_ms(5_000);
    assert_eq!(r.take(), Vec::<String>::new());

    let mut r = Rig::new();
    r.can_do(10, "f", 1_000);
    r.submit(1, 1, bg("f", "a", "d"));
    assert_eq!(r.grab_number(10), Some(1));
    for number in [2, 1] {
        let msg = ToOwner::DropTimer {
            worker: conn(10),
            number,
        };
        r.o.handle(msg, &mut r.out);
    }
    r.at_ms(5_000);
    assert_eq!(r.take(), Vec::<String>::new());
}

/// PRE_SLEEP removes the connection's timer when nothing is queued for the worker (the job it
/// holds may run as long as it takes), and keeps it when something is.
#[test]
fn can_do_timeout_is_removed_by_pre_sleep_with_nothing_queued() {
    let mut r = Rig::new();
    r.can_do(10, "f", 1_000);
    r.submit(1, 1, bg("f", "a", "d"));
    assert_eq!(r.grab_number(10), Some(1));
    r.sleep(10);
    r.at_ms(5_000);
    assert_eq!(r.take(), Vec::<String>::new());
    assert_eq!(r.o.job_count(), 1);

    let mut r = Rig::new();
    r.can_do(10, "f", 1_000);
    r.submit(1, 1, bg("f", "a", "d"));
    r.submit(1, 2, bg("f", "b", "d"));
    assert_eq!(r.grab_number(10), Some(1));
    r.sleep(10);
    assert_eq!(r.take(), ["noop 10"]);
    r.at_ms(1_000);
    assert_eq!(r.take(), ["revoked 10 1"]);
}

// ---- durable: the store's acknowledgements, refusals and replay ----

/// With a store, a background job is stored with the loop turn's batch and neither answered
/// nor runnable until the store says the batch is durable; then JOB_CREATED, and it is queued
/// and wakes the sleepers. An acknowledgement covers every batch up to the one it names.
#[test]
fn job_created_only_once_durable() {
    let mut r = Rig::with(|c| c.durable = true);
    r.can_do(10, "f", 0);
    r.submit(1, 1, bg("f", "u", "d").high());
    r.grab(10, 1);
    r.sleep(10);
    assert_eq!(r.take(), ["empty 10#1 Plain []"], "no answer, not runnable");
    assert_eq!(
        r.store_ops(),
        Some((1, vec![add("f", "u", Priority::High, "d", 0)]))
    );
    assert_eq!(r.store_ops(), None);
    r.submit(2, 1, bg("f", "v", "e").at(30));
    assert_eq!(
        r.store_ops(),
        Some((
            2,
            vec![add("f", "v", Priority::Normal, "e", UNIX0 as i64 + 30)]
        ))
    );
    r.submit(3, 1, bg("f", "w", "x").low());
    let (third, _) = r.store_ops().unwrap();
    r.durable(2, Ok(()));
    assert_eq!(
        r.take(),
        [
            "noop 10",
            "reply 1#1 JOB_CREATED H:t:1",
            "reply 2#1 JOB_CREATED H:t:2"
        ]
    );
    assert_eq!(r.grab_number(10), Some(1));
    assert_eq!(
        r.grab_number(10),
        None,
        "job 2 is not due, job 3 not durable"
    );
    r.durable(third, Ok(()));
    assert_eq!(r.take(), ["reply 3#1 JOB_CREATED H:t:3"]);
    assert_eq!(r.grab_number(10), Some(3));
}

/// A failed batch refuses its jobs with QUEUE_ERROR and drops them; the next job takes the
/// next handle. Foreground jobs are never stored and are answered at once.
#[test]
fn a_failed_batch_refuses_its_jobs() {
    let mut r = Rig::with(|c| c.durable = true);
    r.submit(1, 1, bg("f", "u", "d"));
    let (batch, _) = r.store_ops().unwrap();
    r.durable(batch, Err("disk full"));
    assert_eq!(r.take(), ["reply 1#1 ERROR QUEUE_ERROR|QUEUE_ERROR"]);
    assert_eq!(r.o.job_count(), 0);
    r.submit(1, 2, fg("f", "u", "d"));
    assert_eq!(r.take(), ["reply 1#2 JOB_CREATED H:t:2 +2"]);
    assert_eq!(r.store_ops(), None);
}

/// A job with no unique of its own (empty, or `-`) is stored under one generated from the
/// boot stamp and its handle, and its row deleted under the same when it ends.
#[test]
fn a_job_without_a_unique_is_stored_under_a_generated_one() {
    let mut r = Rig::with(|c| c.durable = true);
    r.submit(1, 1, bg("f", "", "d"));
    r.submit(1, 2, bg("f", "-", "e"));
    assert_eq!(
        r.store_ops(),
        Some((
            1,
            vec![
                add("f", "gs-1-1", Priority::Normal, "d", 0),
                add("f", "gs-1-2", Priority::Normal, "e", 0)
            ]
        ))
    );
    r.durable(1, Ok(()));
    r.can_do(10, "f", 0);
    assert_eq!(r.grab_number(10), Some(1));
    r.complete(10, 1);
    assert_eq!(r.store_ops(), Some((2, vec![delete("f", "gs-1-1")])));
}

/// Jobs read back from the store at start-up are queued as background jobs under the next
/// handles, rows with the same function and unique coalescing, epoch jobs waiting for their
/// time; their rows are deleted when they end.
#[test]
fn restored_jobs_are_queued_background() {
    let mut r = Rig::with(|c| c.durable = true);
    let stored = |unique: &str, priority, data: &str, when| StoredJob {
        function: b"f".to_vec(),
        unique: unique.as_bytes().to_vec(),
        priority,
        data: data.as_bytes().to_vec(),
        when,
    };
    for job in [
        stored("a", Priority::Low, "d1", 0),
        stored("a", Priority::High, "again", 0),
        stored("b", Priority::High, "d2", 0),
        stored("c", Priority::High, "d3", UNIX0 as i64 + 60),
    ] {
        r.o.restore(job, &mut r.out);
    }
    assert_eq!(r.take(), Vec::<String>::new());
    assert_eq!(r.o.job_count(), 3);
    r.can_do(10, "f", 0);
    r.grab_as(10, 1, GrabKind::Uniq);
    r.grab_as(10, 2, GrabKind::Uniq);
    r.grab_as(10, 3, GrabKind::Uniq);
    assert_eq!(
        r.take(),
        [
            "assign 10#1 JOB_ASSIGN_UNIQ H:t:2|f|b|d2",
            "assign 10#2 JOB_ASSIGN_UNIQ H:t:1|f|a|d1",
            "empty 10#3 Uniq []",
        ]
    );
    r.complete(10, 2);
    assert_eq!(r.store_ops(), Some((1, vec![delete("f", "b")])));
    r.at_ms(60_000);
    assert_eq!(r.grab_number(10), Some(3));
}

/// A background submission coalescing onto a job whose add already left for the store is
/// answered when that add is durable: no later batch may be coming to answer it.
#[test]
fn a_background_submit_coalesced_onto_a_stored_job_is_answered_with_it() {
    let mut o = owner(true);
    let mut out = Vec::new();
    submit_bg(&mut o, &mut out, conn(1), 1, b"u");
    let (batch, _) = o.take_store_ops().unwrap();
    submit_bg(&mut o, &mut out, conn(2), 7, b"u");
    assert!(
        o.take_store_ops().is_none(),
        "a coalesced submit stores nothing"
    );
    o.durable(batch, Ok(()), &mut out);
    assert_eq!(
        replies(&mut out),
        vec![(1, 1, "H:t:1".to_string()), (2, 7, "H:t:1".to_string())]
    );
}

/// ... and shares its job's fate: if that batch fails, a later batch's success does not
/// acknowledge a job that was never stored.
#[test]
fn a_background_submit_coalesced_onto_a_failed_job_is_refused_with_it() {
    let mut o = owner(true);
    let mut out = Vec::new();
    submit_bg(&mut o, &mut out, conn(1), 1, b"u");
    let (first, _) = o.take_store_ops().unwrap();
    submit_bg(&mut o, &mut out, conn(2), 7, b"u");
    submit_bg(&mut o, &mut out, conn(3), 1, b"other");
    let (second, _) = o.take_store_ops().unwrap();
    o.durable(first, Err("disk full"), &mut out);
    o.durable(second, Ok(()), &mut out);
    let refused = "QUEUE_ERROR\0QUEUE_ERROR".to_string();
    assert_eq!(
        replies(&mut out),
        vec![
            (1, 1, refused.clone()),
            (2, 7, refused),
            (3, 1, "H:t:2".to_string())
        ]
    );
}

// ---- admin: GET_STATUS (§3.7) and listings ----

/// GET_STATUS: known and queued, then running with the worker's numbers, then unknown once
/// it ended.
#[test]
fn get_status_follows_the_job() {
    let mut r = Rig::new();
    r.submit(1, 1, bg("f", "u", "d"));
    r.get_status(5, 1, 1);
    r.can_do(10, "f", 0);
    r.grab(10, 1);
    r.work(10, 1, WorkKind::Status, &["7", "4294967297"]);
    r.get_status(5, 2, 1);
    r.complete(10, 1);
    r.get_status(5, 3, 1);
    r.get_status(5, 4, 99);
    assert_eq!(
        r.take(),
        [
            "reply 1#1 JOB_CREATED H:t:1",
            "reply 5#1 STATUS_RES H:t:1|1|0|0|0",
            "assign 10#1 JOB_ASSIGN H:t:1|f|d",
            "reply 5#2 STATUS_RES H:t:1|1|1|7|1",
            "reply 5#3 STATUS_RES H:t:1|0|0|0|0",
            "reply 5#4 STATUS_RES H:t:99|0|0|0|0",
        ]
    );
}

/// `status`'s counts: total, running, queued per priority (a job not yet due counts as
/// NORMAL, as in gearmand), worker entries (duplicates included).
#[test]
fn status_counts_queued_running_and_future_jobs() {
    let mut r = Rig::new();
    r.can_do(10, "f", 0);
    r.can_do(10, "f", 0);
    r.submit(1, 1, bg("f", "a", "d").high());
    r.submit(1, 2, bg("f", "b", "d").high());
    r.submit(1, 3, bg("f", "c", "d").low());
    r.submit(1, 4, bg("f", "e", "d").low().at(60));
    assert_eq!(r.grab_number(10), Some(1));
    let Part::Functions(rows) = r.ask(5, Query::Functions) else {
        panic!("function rows expected")
    };
    let row = &rows[0];
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            &row.name[..],
            row.total,
            row.running,
            row.queued,
            row.workers
        ),
        (&b"f"[..], 4, 1, [1, 1, 1], 2)
    );
}

/// The metrics an owner counts: per function what happened to its jobs, the gauges of
/// `prioritystatus`, the oldest queued job's age, the histograms from the job stamps (the
/// shard's turn time, set here by hand), and the cap on functions with their own figures.
#[test]
fn metrics_count_what_happened_to_jobs() {
    let mut r = Rig::new();
    r.o.set_now_ms(1_000);
    r.submit(1, 1, fg("f", "a", "d"));
    r.submit(2, 1, fg("f", "a", "d")); // coalesced
    r.submit(1, 2, bg("f", "b", "d").high());
    r.submit(1, 3, bg("f", "c", "d").low());
    r.submit(1, 4, bg("g", "", "d"));
    r.can_do(10, "f", 0);
    r.o.set_now_ms(1_004);
    assert_eq!(r.grab_number(10), Some(2), "high first, after 4 ms");
    r.o.set_now_ms(1_010);
    assert_eq!(r.grab_number(10), Some(1), "after 10 ms");
    r.o.set_now_ms(1_040);
    r.complete(10, 1); // ran 30 ms; its clients waited 40 ms
    r.work(10, 2, WorkKind::Exception, &["x"]);
    r.worker_gone(10); // holds nothing any more
    r.can_do(11, "f", 0);
    assert_eq!(r.grab_number(11), Some(3));
    r.worker_gone(11); // job 3 requeued
    r.cancel(5, 1, 3);
    r.work(12, 99, WorkKind::Complete, &[]); // JOB_NOT_FOUND
    r.o.set_now_ms(1_500);
    r.take();
    let Part::OwnerMetrics(m) = r.ask(5, Query::Metrics { max_functions: 10 }) else {
        panic!("metrics expected")
    };
    let f = m.functions.iter().find(|f| &f.name[..] == b"f").unwrap();
    let g = m.functions.iter().find(|f| &f.name[..] == b"g").unwrap();
    let c = f.counters;
    assert_eq!(
        (
            c.submitted,
            c.coalesced,
            c.completed,
            c.exceptions,
            c.requeued,
            c.cancelled
        ),
        (3, 1, 1, 1, 1, 1)
    );
    assert_eq!((f.queued, f.running, f.workers), ([0, 0, 0], 0, 0));
    assert_eq!((g.queued, g.oldest_ms), ([0, 1, 0], 500));
    assert_eq!(m.jobs, 1);
    // Queue waits: 4, 10 and 40 ms (job 3, grabbed at 1,040); run times 30 and 36 ms.
    assert_eq!(m.queue_wait.count(), 3);
    assert_eq!(m.queue_wait.sum_ms, 4 + 10 + 40);
    assert_eq!(m.run_time.count(), 2);
    assert_eq!(m.run_time.sum_ms, 30 + 36);
    assert_eq!((m.round_trip.count(), m.round_trip.sum_ms), (1, 40));
    assert_eq!(m.errors.0, [("JOB_NOT_FOUND".into(), 1)]);
    let Part::OwnerMetrics(m) = r.ask(5, Query::Metrics { max_functions: 1 }) else {
        panic!("metrics expected")
    };
    assert_eq!(m.functions.len(), 1);
    assert_eq!(
        &m.functions[0].name[..],
        b"f",
        "the first created keeps its series"
    );
    assert_eq!((m.other_count, m.other.queued), (1, [0, 1, 0]));
}
