//! The soak: mixed traffic for millions of jobs while clients and workers die at random
//! moments (and, with `--kill-every`, the server itself is `kill -9`ed and restarted on the same
//! port and store), with every submission accounted for.
//!
//! **Traffic.** Submissions come in *groups*. Most groups are one submission; a quarter are two
//! to four submissions of the same function and unique id, sent one after another from
//! different clients (the next only once the previous has its JOB_CREATED), so they coalesce:
//! foreground onto background, background onto foreground, foreground onto foreground. Each
//! submission is foreground, background or SUBMIT_JOB_EPOCH (due now or 1–3 s ahead), at a random
//! priority, of one of `--functions` functions (so with several shards, owners differ), with a
//! unique id or none. Clients keep `--depth` submissions in flight (a foreground one until its
//! result), poll GET_STATUS on recent handles, and an admin connection sends `cancel job` for
//! some. Workers run the usual worker loop (half with GRAB_JOB_UNIQ, odd-numbered ones on a
//! random half of the functions); one job in a hundred is held for 1–10 ms after a WORK_STATUS.
//!
//! **Faults.** About every `--fault-every-ms` a client or a worker dies: its socket is closed
//! at once, whatever it was doing (a client waiting on foreground jobs, a worker holding a
//! job), and a new connection takes its place. A worker with a WORK_COMPLETE still on its way
//! dies at its next JOB_ASSIGN instead (holding that job), so a completion the server may not
//! have read never passes for a lost one.
//!
//! **Accounting.** Each job's number travels in its payload. The first submission of a group
//! to get a given handle created that job (the group's submissions are sequential, so this is
//! exact); later ones with the same handle coalesced onto it. At the end, with everything
//! settled and the server's `status` empty:
//! - a foreground submission whose client stayed got exactly one answer: the creator's payload
//!   in WORK_COMPLETE, or WORK_FAIL if the job was cancelled;
//! - a job is assigned again only after the worker holding it died (a *re-run*); two workers
//!   holding it at once, or a run after its completion, is a duplicate (with server kills, a run
//!   after a completion the restarted server did not know of is counted, not failed);
//! - an acknowledged background job was completed (at most once without server kills) unless
//!   cancelled; a background submission that coalesced onto a foreground job shares its fate
//!   (gearmand's rule: it "changes nothing"), so it is counted apart when all that job's
//!   clients died first;
//! - a submission whose client died before JOB_CREATED, or a foreground one whose client died
//!   before its result, is *unacknowledged* or *detached*, never lost;
//! - GET_STATUS and `cancel job` on a background job that nobody completed or cancelled must
//!   find it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use gearshift::protocol::{Frame, Packet, PacketType, encode_request};
use smallvec::SmallVec;

use crate::driver::{BUSY_BUF, IDLE_BUF, Logic, Net, Progress, Stop};
use crate::procstat;
use crate::report::{Better, RunResult};
use crate::scenarios::{Params, Payloads, Target, hex8, new_tag};
use crate::servers::{Running, ServerSpec};

type Handle = SmallVec<[u8; 32]>;

/// Groups of more than one submission (coalescing), one in this many.
const GROUP_ONE_IN: u32 = 4;
/// A client polls GET_STATUS after one JOB_CREATED in this many.
const POLL_ONE_IN: u32 = 100;
/// The admin connection cancels a recent job after one JOB_CREATED in this many.
const CANCEL_ONE_IN: u32 = 500;
/// A worker holds one job in this many for 1–10 ms (after a WORK_STATUS) before completing.
const HOLD_ONE_IN: u32 = 100;
/// Recent handles kept for polls and cancels.
const RECENT: usize = 1024;
/// How often the server's memory is sampled.
const RSS_EVERY: Duration = Duration::from_secs(2);
/// How long to wait for the connections of a killed server to close before restarting it.
const DOWN_WAIT: Duration = Duration::from_secs(3);
/// How long a restarted server may take to answer (it replays its store first).
const RESTART_LIMIT: Duration = Duration::from_secs(120);
/// How often a client sends a burst (`--burst`), on average.
const BURST_EVERY: Duration = Duration::from_secs(10);
/// Failures described in full; the rest are counted.
const DETAILS: usize = 20;

// Submission kinds (bits of `Sub::kind`).
const PRIO_MASK: u8 = 0b11;
const BG: u8 = 1 << 2;
const EPOCH: u8 = 1 << 3;
const UNIQUE: u8 = 1 << 4;

// Submission states.
const SENT: u8 = 0;
const ACKED: u8 = 1;
/// Its client died before JOB_CREATED.
const UNACKED: u8 = 2;
/// Foreground, acknowledged, its client died before the answer.
const DETACHED: u8 = 3;
/// Foreground, answered.
const ANSWERED: u8 = 4;

// Job flags (on the creator's `Sub`).
/// A worker that is alive holds it.
const HELD: u8 = 1;
/// `cancel job` was sent for it.
const CANCEL_SENT: u8 = 1 << 1;
/// `cancel job` answered OK.
const CANCELLED: u8 = 1 << 2;
/// Foreground submission answered with WORK_FAIL.
const GOT_FAIL: u8 = 1 << 3;
/// Its result differed from the creator's payload.
const BAD_RESULT: u8 = 1 << 4;

/// One submission, by number (its payload carries the number). 16 bytes: 10 million cost
/// 160 MB of the harness's memory.
#[derive(Clone, Copy)]
struct Sub {
    /// Number of the group's first submission.
    group: u32,
    /// Number of the job's creator (itself if it created the job); `NONE` before JOB_CREATED.
    job: u32,
    kind: u8,
    func: u8,
    state: u8,
    flags: u8,
    /// Results received (foreground).
    answers: u8,
    /// As a creator: times assigned to a worker.
    runs: u8,
    /// As a creator: WORK_COMPLETE written by a worker.
    completions: u8,
}

const NONE: u32 = u32::MAX;

/// A group of submissions sharing a unique id (or a single one).
struct Group {
    /// Index of its function.
    func: u8,
    /// Kinds still to submit (popped from the end).
    left: SmallVec<[u8; 4]>,
    /// The submission waiting for its JOB_CREATED.
    awaiting: Option<u32>,
    /// Clients that submitted in this group (by serial): each only once.
    clients: SmallVec<[u32; 4]>,
    /// Jobs created in this group: (handle, creator).
    jobs: SmallVec<[(Handle, u32); 2]>,
}

struct Client {
    conn: usize,
    serial: u32,
    /// Submissions waiting for JOB_CREATED, in order.
    awaiting: VecDeque<u32>,
    inflight: usize,
    /// Foreground submissions waiting for their result, by handle.
    handles: AHashMap<Handle, u32>,
    /// GET_STATUS sent and not answered: (handle, job, must the server know it).
    polls: VecDeque<(Handle, u32, bool)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WState {
    Grabbing,
    Sleeping,
    /// Holding a job until `until`.
    Holding,
}

struct Worker {
    conn: usize,
    state: WState,
    /// Held job: (handle, job number, complete at).
    held: Option<(Handle, u32, Instant)>,
    /// A WORK_COMPLETE was written and the GRAB after it not yet answered.
    completing: bool,
    /// Dies at the next safe moment (see the module notes).
    doomed: bool,
    uniq: bool,
    /// Indexes of its functions.
    fns: SmallVec<[u8; 16]>,
}

enum AdminReq {
    /// `cancel job`: (job, must the server know it).
    Cancel(u32, bool),
    /// `status`: the lines so far.
    Status(Vec<String>),
}

#[derive(Clone, Copy, Debug)]
enum Role {
    None,
    Client(usize),
    Worker(usize),
    Admin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Submitting, with faults.
    Load,
    /// Everything submitted: no more faults; waiting for every answer and every worker asleep.
    Drain,
    /// `status` sent; waiting for the answer.
    Verify,
    Done,
}

/// The server: one already running (`--addr`), or one the harness started and may kill.
pub enum SoakServer<'a> {
    External(Target),
    Started {
        spec: &'a ServerSpec,
        running: Running,
        port: u16,
    },
}

impl SoakServer<'_> {
    fn pid(&self) -> Option<u32> {
        match self {
            SoakServer::External(t) => t.rss_pid,
            SoakServer::Started { running, .. } => Some(running.pid),
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            SoakServer::External(t) => t.addr,
            SoakServer::Started { running, .. } => running.addr,
        }
    }

    /// `Some(description)` if a started server exited by itself.
    fn exited(&mut self) -> Option<String> {
        match self {
            SoakServer::External(_) => None,
            SoakServer::Started { running, spec, .. } => running.exited().map(|st| {
                format!(
                    "{} exited by itself ({st}); stderr: {}",
                    spec.name,
                    running.stderr_text()
                )
            }),
        }
    }
}

/// xorshift64*: the soak's random choices, reproducible from `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u32) -> u32 {
        (((self.next() >> 32) * n as u64) >> 32) as u32
    }

    fn one_in(&mut self, n: u32) -> bool {
        self.below(n) == 0
    }

    /// Around `mean`: uniform in [mean/2, 3 mean/2).
    fn around(&mut self, mean: Duration) -> Duration {
        mean / 2 + mean.mul_f64(self.below(1000) as f64 / 1000.0)
    }
}

#[derive(Default)]
struct Counters {
    acked: u64,
    unacked: u64,
    detached: u64,
    answered: u64,
    coalesced: u64,
    fg_on_bg: u64,
    bg_on_fg: u64,
    epoch: u64,
    epoch_future: u64,
    runs: u64,
    reruns: u64,
    runs_after_completion: u64,
    completions: u64,
    held: u64,
    polls: u64,
    polls_known: u64,
    cancels: u64,
    cancelled: u64,
    cancel_unknown: u64,
    client_deaths: u64,
    worker_deaths: u64,
    worker_deaths_holding: u64,
    server_kills: u64,
    bursts: u64,
}

/// Submissions, groups, connections and counters of one soak run.
struct Soak<'a> {
    server: SoakServer<'a>,
    crash_mode: bool,
    total: u32,
    next: u32,
    depth: usize,
    n_clients: usize,
    n_workers: usize,
    fault_every: Duration,
    kill_every: Option<Duration>,
    stall: Duration,
    /// Background submissions per burst (`--burst`; 0: none).
    burst: u32,
    next_burst: Instant,
    /// Stop submitting at this time (`--duration`).
    stop_at: Option<Instant>,
    tag: [u8; 8],
    fns: Vec<Vec<u8>>,
    payloads: Payloads,
    scratch: Vec<u8>,
    rng: Rng,
    subs: Vec<Sub>,
    groups: AHashMap<u32, Group>,
    /// Groups whose next submission may go.
    ready: VecDeque<u32>,
    /// Due time (unix seconds) of epoch submissions that have not run yet.
    epoch_due: AHashMap<u32, i64>,
    clients: Vec<Client>,
    workers: Vec<Worker>,
    admin: Option<(usize, VecDeque<AdminReq>)>,
    roles: Vec<Role>,
    serial: u32,
    /// Recent (handle, job, server generation), for polls and cancels.
    recent: Vec<(Handle, u32, u32)>,
    recent_at: usize,
    /// Server generation: bumped at each kill.
    generation: u32,
    c: Counters,
    phase: Phase,
    errors: Vec<String>,
    dup: u64,
    next_fault: Instant,
    fault_client: bool,
    next_kill: Option<Instant>,
    /// When the server was killed (waiting for its connections to close).
    down: Option<Instant>,
    next_status: Instant,
    last_work: u64,
    last_work_at: Instant,
    next_rss: Instant,
    next_exit_check: Instant,
    start: Instant,
    /// (seconds since start, jobs submitted, RSS KiB).
    rss: Vec<(f64, u32, u64)>,
    status_lines: Vec<String>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn unix_now_f() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn kind_name(kind: u8) -> String {
    let t = if kind & EPOCH != 0 {
        "epoch"
    } else if kind & BG != 0 {
        "bg"
    } else {
        "fg"
    };
    let p = ["high", "normal", "low"][(kind & PRIO_MASK) as usize];
    let u = if kind & UNIQUE != 0 {
        ""
    } else {
        ", no unique"
    };
    format!("{t} {p}{u}")
}

impl<'a> Soak<'a> {
    fn new(p: &Params, server: SoakServer<'a>) -> Soak<'a> {
        let mut tag = [0u8; 8];
        hex8(new_tag(), &mut tag);
        let fns = (0..p.functions.clamp(1, 200))
            .map(|k| format!("soak{}_{k}", std::str::from_utf8(&tag).unwrap()).into_bytes())
            .collect();
        let now = Instant::now();
        let crash_mode = p.kill_every.is_some() && matches!(server, SoakServer::Started { .. });
        Soak {
            server,
            crash_mode,
            total: p.jobs,
            next: 0,
            depth: p.depth.max(1),
            n_clients: p.clients.max(2),
            n_workers: p.workers.max(2),
            fault_every: p.fault_every,
            kill_every: p.kill_every,
            stall: p.stall,
            stop_at: p.duration.map(|d| now + d),
            burst: p.burst,
            next_burst: now + BURST_EVERY / 2,
            tag,
            fns,
            payloads: Payloads::new(p.payload),
            scratch: Vec::new(),
            rng: Rng(p.seed | 1),
            subs: Vec::with_capacity(p.jobs as usize + p.jobs as usize / 8),
            groups: AHashMap::new(),
            ready: VecDeque::new(),
            epoch_due: AHashMap::new(),
            clients: Vec::new(),
            workers: Vec::new(),
            admin: None,
            roles: Vec::new(),
            serial: 0,
            recent: Vec::with_capacity(RECENT),
            recent_at: 0,
            generation: 0,
            c: Counters::default(),
            phase: Phase::Load,
            errors: Vec::new(),
            dup: 0,
            next_fault: now + p.fault_every,
            fault_client: true,
            next_kill: None,
            down: None,
            next_status: now,
            last_work: 0,
            last_work_at: now,
            next_rss: now,
            next_exit_check: now,
            start: now,
            rss: Vec::new(),
            status_lines: Vec::new(),
        }
    }

    fn set_role(&mut self, id: usize, role: Role) {
        if self.roles.len() <= id {
            self.roles.resize(id + 1, Role::None);
        }
        self.roles[id] = role;
    }

    fn error(&mut self, e: String) {
        if self.errors.len() < DETAILS {
            self.errors.push(e);
        } else if self.errors.len() == DETAILS {
            self.errors.push("(further failures only counted)".into());
        }
    }

    // -----------------------------------------------------------------------------------------
    // Connections.

    fn connect(&mut self, net: &mut Net, buf: usize) -> Result<usize, String> {
        let addr = self.server.addr();
        net.connect(addr, buf)
            .map_err(|e| format!("connect to {addr}: {e}"))
    }

    /// Opens client `ci` (new, or in place of one that died) and fills its window. While the
    /// server is down the slot stays empty: the restart opens every slot.
    fn open_client(&mut self, net: &mut Net, ci: usize) -> Result<(), String> {
        if self.down.is_some() {
            return Ok(());
        }
        let conn = self.connect(net, BUSY_BUF)?;
        self.serial += 1;
        let c = Client {
            conn,
            serial: self.serial,
            awaiting: VecDeque::new(),
            inflight: 0,
            handles: AHashMap::new(),
            polls: VecDeque::new(),
        };
        if ci == self.clients.len() {
            self.clients.push(c);
        } else {
            self.clients[ci] = c;
        }
        self.set_role(conn, Role::Client(ci));
        self.refill(net, ci);
        Ok(())
    }

    /// Opens worker `wi`: even ones do every function, odd ones a random half; odd ones grab
    /// with GRAB_JOB_UNIQ.
    fn open_worker(&mut self, net: &mut Net, wi: usize) -> Result<(), String> {
        if self.down.is_some() {
            return Ok(());
        }
        let conn = self.connect(net, BUSY_BUF)?;
        let n = self.fns.len();
        let mut fns: SmallVec<[u8; 16]> = (0..n as u8).collect();
        if wi % 2 == 1 && n > 1 {
            for i in (1..n).rev() {
                let j = self.rng.below(i as u32 + 1) as usize;
                fns.swap(i, j);
            }
            fns.truncate(n.div_ceil(2));
        }
        let w = Worker {
            conn,
            state: WState::Grabbing,
            held: None,
            completing: false,
            doomed: false,
            uniq: wi % 2 == 1,
            fns,
        };
        let out = net.out(conn);
        for &f in &w.fns {
            encode_request(out, PacketType::CanDo, &[&self.fns[f as usize]]);
        }
        encode_request(out, grab(w.uniq), &[]);
        if wi == self.workers.len() {
            self.workers.push(w);
        } else {
            self.workers[wi] = w;
        }
        self.set_role(conn, Role::Worker(wi));
        Ok(())
    }

    fn open_admin(&mut self, net: &mut Net) -> Result<(), String> {
        let conn = self.connect(net, IDLE_BUF)?;
        self.set_role(conn, Role::Admin);
        self.admin = Some((conn, VecDeque::new()));
        Ok(())
    }

    fn open_all(&mut self, net: &mut Net) -> Result<(), String> {
        self.open_admin(net)?;
        for wi in 0..self.n_workers {
            self.open_worker(net, wi)?;
        }
        for ci in 0..self.n_clients {
            self.open_client(net, ci)?;
        }
        Ok(())
    }

    /// Client `ci` is gone (killed, or its server died): what it waited for is unacknowledged
    /// or detached, and its groups stop.
    fn client_died(&mut self, ci: usize) {
        self.c.client_deaths += 1;
        let c = &mut self.clients[ci];
        self.roles[c.conn] = Role::None;
        let awaiting = std::mem::take(&mut c.awaiting);
        let handles = std::mem::take(&mut c.handles);
        c.polls.clear();
        c.inflight = 0;
        for n in awaiting {
            let s = &mut self.subs[n as usize];
            s.state = UNACKED;
            self.c.unacked += 1;
            // Its group stops: a later submission could not tell whether it coalesced onto
            // the job this one may have made.
            self.groups.remove(&s.group);
        }
        for (_, n) in handles {
            self.subs[n as usize].state = DETACHED;
            self.c.detached += 1;
        }
    }

    /// Worker `wi` is gone: the job it held may run again.
    fn worker_died(&mut self, wi: usize) {
        self.c.worker_deaths += 1;
        let w = &mut self.workers[wi];
        self.roles[w.conn] = Role::None;
        if let Some((_, n, _)) = w.held.take() {
            self.subs[n as usize].flags &= !HELD;
        }
    }

    fn kill_client(&mut self, net: &mut Net, ci: usize) -> Result<(), String> {
        net.close(self.clients[ci].conn);
        self.client_died(ci);
        self.open_client(net, ci)
    }

    /// Kills worker `wi` now if that cannot hide a completion, else at its next safe moment.
    fn kill_worker(&mut self, net: &mut Net, wi: usize) -> Result<(), String> {
        let w = &self.workers[wi];
        let safe = match w.state {
            WState::Holding | WState::Sleeping => true,
            WState::Grabbing => !w.completing,
        } && net.unwritten(w.conn) == 0;
        if !safe {
            self.workers[wi].doomed = true;
            return Ok(());
        }
        if w.held.is_some() {
            self.c.worker_deaths_holding += 1;
        }
        net.close(w.conn);
        self.worker_died(wi);
        self.open_worker(net, wi)
    }

    // -----------------------------------------------------------------------------------------
    // Submitting.

    /// Fills client `ci`'s window: the next submission of a ready group it has not taken part
    /// in, else a new group.
    fn refill(&mut self, net: &mut Net, ci: usize) {
        if self.phase != Phase::Load || self.down.is_some() {
            return;
        }
        while self.clients[ci].inflight < self.depth {
            let serial = self.clients[ci].serial;
            let mut picked = None;
            let mut k = 0;
            while k < self.ready.len().min(8) {
                let g = self.ready[k];
                match self.groups.get(&g) {
                    Some(gr) if gr.awaiting.is_none() && !gr.left.is_empty() => {
                        if !gr.clients.contains(&serial) {
                            picked = Some(g);
                            self.ready.remove(k);
                            break;
                        }
                        k += 1;
                    }
                    _ => {
                        self.ready.remove(k);
                    }
                }
            }
            let g = match picked {
                Some(g) => g,
                None if self.next < self.total => self.new_group(false),
                None => return,
            };
            self.send(net, ci, g);
        }
    }

    /// A new group; `burst` makes it a single background submission.
    fn new_group(&mut self, burst: bool) -> u32 {
        let g = self.next;
        let size = if burst {
            1
        } else if self.rng.one_in(GROUP_ONE_IN) {
            2 + self.rng.below(3)
        } else {
            1
        };
        let unique = size > 1 || self.rng.one_in(2);
        let func = self.rng.below(self.fns.len() as u32) as u8;
        let mut left = SmallVec::new();
        for _ in 0..size {
            let r = if burst { 50 } else { self.rng.below(100) };
            let mut kind = if r < 45 {
                0
            } else if r < 90 {
                BG
            } else {
                BG | EPOCH | 1
            };
            if kind & EPOCH == 0 {
                kind |= self.rng.below(3) as u8;
            }
            if unique {
                kind |= UNIQUE;
            }
            left.push(kind);
        }
        self.groups.insert(
            g,
            Group {
                func,
                left,
                awaiting: None,
                clients: SmallVec::new(),
                jobs: SmallVec::new(),
            },
        );
        g
    }

    /// Client `ci` writes `--burst` background submissions in one go, past its window,
    /// before it reads any answer.
    fn send_burst(&mut self, net: &mut Net, ci: usize) {
        self.c.bursts += 1;
        for _ in 0..self.burst {
            if self.next >= self.total {
                break;
            }
            let g = self.new_group(true);
            self.send(net, ci, g);
        }
    }

    fn send(&mut self, net: &mut Net, ci: usize, g: u32) {
        let n = self.next;
        self.next += 1;
        let gr = self.groups.get_mut(&g).expect("ready group");
        let kind = gr.left.pop().expect("a submission left");
        gr.awaiting = Some(n);
        gr.clients.push(self.clients[ci].serial);
        let func = gr.func;
        self.subs.push(Sub {
            group: g,
            job: NONE,
            kind,
            func,
            state: SENT,
            flags: 0,
            answers: 0,
            runs: 0,
            completions: 0,
        });
        let mut uniq = [0u8; 17];
        let ulen = if kind & UNIQUE != 0 {
            uniq[..8].copy_from_slice(&self.tag);
            uniq[8] = b'-';
            hex8(g, &mut uniq[9..]);
            17
        } else {
            0
        };
        self.payloads.make(n, &mut self.scratch);
        let f = &self.fns[func as usize];
        let c = &mut self.clients[ci];
        let out = net.out(c.conn);
        if kind & EPOCH != 0 {
            self.c.epoch += 1;
            let when = unix_now()
                + if self.rng.one_in(2) {
                    0
                } else {
                    self.c.epoch_future += 1;
                    1 + self.rng.below(3) as i64
                };
            self.epoch_due.insert(n, when);
            let w = when.to_string();
            encode_request(
                out,
                PacketType::SubmitJobEpoch,
                &[f, &uniq[..ulen], w.as_bytes(), &self.scratch],
            );
        } else {
            let ty = match (kind & BG != 0, kind & PRIO_MASK) {
                (false, 0) => PacketType::SubmitJobHigh,
                (false, 1) => PacketType::SubmitJob,
                (false, _) => PacketType::SubmitJobLow,
                (true, 0) => PacketType::SubmitJobHighBg,
                (true, 1) => PacketType::SubmitJobBg,
                (true, _) => PacketType::SubmitJobLowBg,
            };
            encode_request(out, ty, &[f, &uniq[..ulen], &self.scratch]);
        }
        c.awaiting.push_back(n);
        c.inflight += 1;
    }
}

fn grab(uniq: bool) -> PacketType {
    if uniq {
        PacketType::GrabJobUniq
    } else {
        PacketType::GrabJob
    }
}

// ---------------------------------------------------------------------------------------------
// What comes back.

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Soak<'_> {
    fn remember(&mut self, handle: &[u8], job: u32) {
        let e = (Handle::from_slice(handle), job, self.generation);
        if self.recent.len() < RECENT {
            self.recent.push(e);
        } else {
            self.recent[self.recent_at] = e;
            self.recent_at = (self.recent_at + 1) % RECENT;
        }
    }

    /// Whether the server must still know job `c` (of this generation): a background job that
    /// nobody completed and nobody tried to cancel.
    fn must_know(&self, c: u32, generation: u32) -> bool {
        let s = &self.subs[c as usize];
        generation == self.generation
            && s.job == c
            && s.kind & BG != 0
            && s.completions == 0
            && s.flags & CANCEL_SENT == 0
    }

    fn on_client(&mut self, net: &mut Net, ci: usize, p: &Packet<'_>) -> Result<(), String> {
        match p.ty {
            PacketType::JobCreated => {
                let n = self.clients[ci].awaiting.pop_front().ok_or_else(|| {
                    format!("client {ci}: JOB_CREATED with no submission waiting")
                })?;
                let handle = p.arg(0);
                self.c.acked += 1;
                let s = self.subs[n as usize];
                let g = s.group;
                let mut creator = n;
                if let Some(gr) = self.groups.get_mut(&g) {
                    gr.awaiting = None;
                    match gr.jobs.iter().find(|(h, _)| h.as_slice() == handle) {
                        Some(&(_, c)) => creator = c,
                        None => gr.jobs.push((Handle::from_slice(handle), n)),
                    }
                    if gr.left.is_empty() {
                        self.groups.remove(&g);
                    } else {
                        self.ready.push_back(g);
                    }
                }
                let sub = &mut self.subs[n as usize];
                sub.state = ACKED;
                sub.job = creator;
                if creator != n {
                    self.c.coalesced += 1;
                    let ck = self.subs[creator as usize].kind;
                    match (s.kind & BG != 0, ck & BG != 0) {
                        (false, true) => self.c.fg_on_bg += 1,
                        (true, false) => self.c.bg_on_fg += 1,
                        _ => {}
                    }
                }
                if s.kind & BG == 0 {
                    self.clients[ci]
                        .handles
                        .insert(Handle::from_slice(handle), n);
                } else {
                    self.clients[ci].inflight -= 1;
                }
                // An answer read after a kill names a job of the dead server: not one to ask
                // the next about.
                if self.down.is_none() {
                    self.remember(handle, creator);
                    if self.rng.one_in(POLL_ONE_IN) {
                        self.poll(net, ci);
                    }
                    if self.rng.one_in(CANCEL_ONE_IN) {
                        self.cancel(net);
                    }
                }
                self.refill(net, ci);
            }
            PacketType::WorkComplete | PacketType::WorkFail => {
                let handle = p.arg(0);
                let n = self.clients[ci].handles.remove(handle).ok_or_else(|| {
                    format!(
                        "client {ci}: {} for a handle it does not wait on: {}",
                        p.ty.name(),
                        text(handle)
                    )
                })?;
                let c = self.subs[n as usize].job;
                let ok = p.ty == PacketType::WorkFail || self.payloads.check(c, p.arg(1));
                let s = &mut self.subs[n as usize];
                s.state = ANSWERED;
                s.answers = s.answers.saturating_add(1);
                if p.ty == PacketType::WorkFail {
                    s.flags |= GOT_FAIL;
                }
                if !ok {
                    s.flags |= BAD_RESULT;
                    let carried = Payloads::id_of(p.arg(1));
                    let what = self.describe(n);
                    let other = carried.map_or(String::new(), |x| self.describe(x));
                    self.error(format!(
                        "client {ci}: WORK_COMPLETE {} carries the payload of job {carried:?} ({other}), but its JOB_CREATED was for job {n} ({what}), generation {}",
                        text(handle),
                        self.generation
                    ));
                }
                self.c.answered += 1;
                self.clients[ci].inflight -= 1;
                self.refill(net, ci);
            }
            PacketType::WorkStatus | PacketType::WorkData | PacketType::WorkWarning => {
                if !self.clients[ci].handles.contains_key(p.arg(0)) {
                    return Err(format!(
                        "client {ci}: {} for a handle it does not wait on: {}",
                        p.ty.name(),
                        text(p.arg(0))
                    ));
                }
            }
            PacketType::StatusRes => {
                let (h, c, must) = self.clients[ci]
                    .polls
                    .pop_front()
                    .ok_or_else(|| format!("client {ci}: STATUS_RES with no GET_STATUS sent"))?;
                if p.arg(0) != h.as_slice() {
                    return Err(format!(
                        "client {ci}: STATUS_RES for {} when {} was asked",
                        text(p.arg(0)),
                        text(&h)
                    ));
                }
                self.c.polls += 1;
                // A completion or cancel sent on another connection may overtake the poll
                // however early the poll went: only one not sent even by now is excluded.
                let must = must && self.must_know(c, self.generation);
                // Workers report 1/2 while they hold a job (a requeue resets it to 0/0).
                let numbers = (p.arg(3), p.arg(4));
                if !matches!(numbers, (b"0", b"0") | (b"1", b"2"))
                    || (p.arg(1) == b"0" && (p.arg(2) != b"0" || numbers != (b"0", b"0")))
                {
                    self.error(format!(
                        "GET_STATUS {}: known={} running={} {}/{}, but workers only ever report 1/2",
                        text(&h),
                        text(p.arg(1)),
                        text(p.arg(2)),
                        text(p.arg(3)),
                        text(p.arg(4))
                    ));
                }
                match p.arg(1) {
                    b"1" => self.c.polls_known += 1,
                    b"0" if must => {
                        let what = self.describe(c);
                        self.error(format!(
                            "GET_STATUS {}: the server does not know job {c}, a background job nobody completed or cancelled ({what})",
                            text(&h)
                        ));
                    }
                    b"0" => {}
                    other => {
                        return Err(format!("client {ci}: STATUS_RES known={}", text(other)));
                    }
                }
            }
            PacketType::Error => {
                return Err(format!(
                    "client {ci}: ERROR {} {}",
                    text(p.arg(0)),
                    text(p.arg(1))
                ));
            }
            t => return Err(format!("client {ci}: unexpected {}", t.name())),
        }
        Ok(())
    }

    /// Client `ci` asks GET_STATUS for a recent job.
    fn poll(&mut self, net: &mut Net, ci: usize) {
        if self.recent.is_empty() {
            return;
        }
        let (h, c, generation) =
            self.recent[self.rng.below(self.recent.len() as u32) as usize].clone();
        let must = self.must_know(c, generation);
        let client = &mut self.clients[ci];
        encode_request(net.out(client.conn), PacketType::GetStatus, &[&h]);
        client.polls.push_back((h, c, must));
    }

    /// The admin connection cancels a recent job.
    fn cancel(&mut self, net: &mut Net) {
        if self.recent.is_empty() || self.admin.is_none() {
            return;
        }
        let (h, c, generation) =
            self.recent[self.rng.below(self.recent.len() as u32) as usize].clone();
        let must = self.must_know(c, generation);
        self.subs[c as usize].flags |= CANCEL_SENT;
        self.c.cancels += 1;
        let (conn, reqs) = self.admin.as_mut().unwrap();
        let out = net.out(*conn);
        out.extend_from_slice(b"cancel job ");
        out.extend_from_slice(&h);
        out.push(b'\n');
        reqs.push_back(AdminReq::Cancel(c, must));
    }

    fn on_admin(&mut self, line: &[u8]) -> Result<(), String> {
        let (_, reqs) = self.admin.as_mut().ok_or("admin line with no admin")?;
        match reqs.front_mut() {
            Some(AdminReq::Cancel(c, must)) => {
                let (c, must) = (*c, *must);
                reqs.pop_front();
                if line == b"OK" {
                    self.c.cancelled += 1;
                    self.subs[c as usize].flags |= CANCELLED;
                } else if line.starts_with(b"ERR UNKNOWN_JOB") {
                    self.c.cancel_unknown += 1;
                    // As for polls: a completion sent since may have overtaken the cancel; an
                    // earlier cancel of the same job answered OK before this one.
                    let s = &self.subs[c as usize];
                    if must && s.completions == 0 && s.flags & CANCELLED == 0 {
                        let what = self.describe(c);
                        self.error(format!(
                            "cancel job: the server does not know job {c}, a background job nobody completed ({what})"
                        ));
                    }
                } else {
                    return Err(format!("admin: `cancel job` answered {:?}", text(line)));
                }
            }
            Some(AdminReq::Status(lines)) => {
                if line == b"." {
                    let lines = std::mem::take(lines);
                    reqs.pop_front();
                    self.status_lines = lines;
                    self.on_status();
                } else {
                    lines.push(text(line));
                }
            }
            None => return Err(format!("admin: unexpected line {:?}", text(line))),
        }
        Ok(())
    }

    fn on_worker(&mut self, net: &mut Net, wi: usize, p: &Packet<'_>) -> Result<(), String> {
        match p.ty {
            PacketType::JobAssign | PacketType::JobAssignUniq => {
                if self.workers[wi].state != WState::Grabbing {
                    return Err(format!(
                        "worker {wi}: job assigned while {:?}",
                        self.workers[wi].state
                    ));
                }
                self.workers[wi].completing = false;
                let uniq = p.ty == PacketType::JobAssignUniq;
                let (handle, func, data) = (p.arg(0), p.arg(1), p.arg(if uniq { 3 } else { 2 }));
                let n = Payloads::id_of(data)
                    .filter(|&n| n < self.next && self.payloads.check(n, data))
                    .ok_or_else(|| {
                        format!("worker {wi}: job {} with a payload not ours", text(handle))
                    })?;
                self.assigned(wi, n, handle, func, uniq.then(|| p.arg(2)));
                self.c.runs += 1;
                let w = &mut self.workers[wi];
                w.held = Some((Handle::from_slice(handle), n, net.now));
                w.state = WState::Holding;
                if w.doomed {
                    self.c.worker_deaths_holding += 1;
                    net.close(w.conn);
                    self.worker_died(wi);
                    return self.open_worker(net, wi);
                }
                if self.rng.one_in(HOLD_ONE_IN) {
                    self.c.held += 1;
                    let until = net.now + Duration::from_millis(1 + self.rng.below(10) as u64);
                    let w = &mut self.workers[wi];
                    w.held.as_mut().unwrap().2 = until;
                    encode_request(
                        net.out(w.conn),
                        PacketType::WorkStatus,
                        &[handle, b"1", b"2"],
                    );
                } else {
                    self.complete(net, wi);
                }
            }
            PacketType::NoJob => {
                if self.workers[wi].state != WState::Grabbing {
                    return Err(format!(
                        "worker {wi}: NO_JOB while {:?}",
                        self.workers[wi].state
                    ));
                }
                let w = &mut self.workers[wi];
                w.completing = false;
                if w.doomed {
                    return self.kill_worker(net, wi);
                }
                encode_request(net.out(w.conn), PacketType::PreSleep, &[]);
                w.state = WState::Sleeping;
            }
            PacketType::Noop => {
                let w = &mut self.workers[wi];
                if w.state == WState::Sleeping {
                    encode_request(net.out(w.conn), grab(w.uniq), &[]);
                    w.state = WState::Grabbing;
                }
            }
            PacketType::Error => {
                return Err(format!(
                    "worker {wi}: ERROR {} {}",
                    text(p.arg(0)),
                    text(p.arg(1))
                ));
            }
            t => return Err(format!("worker {wi}: unexpected {}", t.name())),
        }
        Ok(())
    }

    /// Checks and counts job `n` given to worker `wi`.
    fn assigned(&mut self, wi: usize, n: u32, handle: &[u8], func: &[u8], unique: Option<&[u8]>) {
        let s = self.subs[n as usize];
        if func != self.fns[s.func as usize].as_slice() {
            self.error(format!(
                "job {n} ({}) of function {} assigned as {}",
                kind_name(s.kind),
                text(&self.fns[s.func as usize]),
                text(func)
            ));
        }
        if let Some(u) = unique {
            let mut want = [0u8; 17];
            let expected: &[u8] = if s.kind & UNIQUE != 0 {
                want[..8].copy_from_slice(&self.tag);
                want[8] = b'-';
                hex8(s.group, &mut want[9..]);
                &want
            } else {
                &[]
            };
            // After a restart, a job stored with no unique shows the one it was stored under.
            if u != expected && !(self.generation > 0 && expected.is_empty()) {
                self.error(format!(
                    "job {n} ({}) assigned with unique {:?}, expected {:?}",
                    kind_name(s.kind),
                    text(u),
                    text(expected)
                ));
            }
        }
        if s.flags & HELD != 0 {
            self.dup += 1;
            let what = self.describe(n);
            self.error(format!(
                "job {n} assigned to worker {wi} as {} while another live worker holds it ({what})",
                text(handle)
            ));
        }
        if s.completions > 0 {
            if self.crash_mode {
                self.c.runs_after_completion += 1;
            } else {
                self.dup += 1;
                let what = self.describe(n);
                self.error(format!(
                    "job {n} assigned again as {} after a worker completed it ({what})",
                    text(handle)
                ));
            }
        } else if s.runs > 0 {
            self.c.reruns += 1;
        }
        if s.job != n && s.job != NONE {
            self.dup += 1;
            let what = self.describe(n);
            self.error(format!(
                "job {n} ran as {} though its JOB_CREATED said it coalesced onto job {} ({what})",
                text(handle),
                s.job
            ));
        }
        if let Some(when) = self.epoch_due.remove(&n) {
            let now = unix_now_f();
            if now < when as f64 {
                self.error(format!(
                    "epoch job {n} ran at {now:.3}, before it was due at {when}"
                ));
            }
        }
        let s = &mut self.subs[n as usize];
        s.runs = s.runs.saturating_add(1);
        s.flags |= HELD;
    }

    /// Worker `wi` completes its job (the payload is the result) and grabs again.
    fn complete(&mut self, net: &mut Net, wi: usize) {
        let w = &mut self.workers[wi];
        let Some((h, n, _)) = w.held.take() else {
            return;
        };
        self.payloads.make(n, &mut self.scratch);
        let out = net.out(w.conn);
        encode_request(out, PacketType::WorkComplete, &[&h, &self.scratch]);
        encode_request(out, grab(w.uniq), &[]);
        w.state = WState::Grabbing;
        w.completing = true;
        let s = &mut self.subs[n as usize];
        s.completions = s.completions.saturating_add(1);
        s.flags &= !HELD;
        self.c.completions += 1;
    }

    /// What is known of job or submission `n`, for failure messages.
    fn describe(&self, n: u32) -> String {
        let Some(s) = self.subs.get(n as usize) else {
            return "no such submission".into();
        };
        let state = match s.state {
            SENT => "sent, no JOB_CREATED yet",
            ACKED => "acknowledged",
            UNACKED => "its client died before JOB_CREATED",
            DETACHED => "its client died before the result",
            ANSWERED => "answered",
            _ => "?",
        };
        let mut d = format!(
            "{} of {}, {state}",
            kind_name(s.kind),
            text(&self.fns[s.func as usize])
        );
        if s.job != NONE && s.job != n {
            d += &format!(", coalesced onto job {}", s.job);
        }
        if s.job == n || s.runs > 0 {
            d += &format!(", ran {} time(s), completed {}", s.runs, s.completions);
        }
        if s.flags & HELD != 0 {
            d += ", held by a live worker";
        }
        if s.flags & CANCELLED != 0 {
            d += ", cancelled";
        } else if s.flags & CANCEL_SENT != 0 {
            d += ", cancel sent";
        }
        if s.answers > 0 {
            d += &format!(", {} answer(s)", s.answers);
        }
        if let Some(h) = self
            .clients
            .iter()
            .find_map(|c| c.handles.iter().find(|(_, m)| **m == n).map(|(h, _)| h))
        {
            d += &format!(", handle {}", text(h));
        }
        d
    }
}

// ---------------------------------------------------------------------------------------------
// The loop's hooks: faults, kills, timers, the end.

impl Logic for Soak<'_> {
    fn on_frame(&mut self, net: &mut Net, id: usize, frame: &Frame<'_>) -> Result<(), String> {
        match (self.roles.get(id).copied().unwrap_or(Role::None), frame) {
            (Role::Client(ci), Frame::Packet(p)) => self.on_client(net, ci, p),
            (Role::Worker(wi), Frame::Packet(p)) => self.on_worker(net, wi, p),
            (Role::Admin, Frame::Line(l)) => self.on_admin(l),
            (Role::None, _) => Ok(()),
            (role, _) => Err(format!("connection {id} ({role:?}): unexpected frame")),
        }
    }

    fn on_closed(&mut self, _net: &mut Net, id: usize, why: String) -> Result<(), String> {
        let role = self.roles.get(id).copied().unwrap_or(Role::None);
        if self.down.is_none() && !matches!(role, Role::None) {
            // Nothing closes a connection of ours but a server that failed.
            let died = self
                .server
                .exited()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            return Err(format!("{why} ({role:?}){died}"));
        }
        match role {
            Role::Client(ci) => self.client_died(ci),
            Role::Worker(wi) => self.worker_died(wi),
            Role::Admin => self.admin = None,
            Role::None => {}
        }
        Ok(())
    }

    fn on_tick(&mut self, net: &mut Net) -> Result<(), String> {
        let now = net.now;
        if now >= self.next_exit_check {
            self.next_exit_check = now + Duration::from_secs(1);
            if self.down.is_none()
                && let Some(e) = self.server.exited()
            {
                return Err(format!("server died: {e}"));
            }
        }
        if now >= self.next_rss && self.down.is_none() {
            self.next_rss = now + RSS_EVERY;
            if let Some(kb) = self.server.pid().and_then(|p| procstat::rss_kb(p).ok()) {
                let t = now.duration_since(self.start).as_secs_f64();
                self.rss.push((t, self.next, kb.0));
            }
        }
        if let Some(t) = self.down {
            return self.restart_when_closed(net, t);
        }
        if self.phase == Phase::Load {
            while now >= self.next_fault {
                self.next_fault += self.rng.around(self.fault_every);
                self.fault_client = !self.fault_client;
                if self.fault_client {
                    let ci = self.rng.below(self.clients.len() as u32) as usize;
                    self.kill_client(net, ci)?;
                } else {
                    let wi = self.rng.below(self.workers.len() as u32) as usize;
                    self.kill_worker(net, wi)?;
                }
            }
            if self.burst > 0 && now >= self.next_burst {
                self.next_burst = now + self.rng.around(BURST_EVERY);
                let ci = self.rng.below(self.clients.len() as u32) as usize;
                self.send_burst(net, ci);
            }
            if let (Some(k), Some(every)) = (self.next_kill, self.kill_every)
                && now >= k
            {
                self.next_kill = Some(now + self.rng.around(every));
                self.kill_server();
                return Ok(());
            }
        }
        for wi in 0..self.workers.len() {
            let w = &self.workers[wi];
            if w.state == WState::Holding && w.held.as_ref().is_some_and(|h| h.2 <= now) {
                if w.doomed {
                    self.kill_worker(net, wi)?;
                } else {
                    self.complete(net, wi);
                }
            }
        }
        let work = self.c.acked
            + self.c.unacked
            + self.c.answered
            + self.c.runs
            + self.c.completions
            + self.c.server_kills;
        if work != self.last_work {
            self.last_work = work;
            self.last_work_at = now;
        } else if now.duration_since(self.last_work_at) > self.stall {
            return Err(format!(
                "stalled: nothing submitted, acknowledged, run or answered for {} s\n{}",
                self.stall.as_secs(),
                self.where_it_stands(net)
            ));
        }
        match self.phase {
            Phase::Load => {
                if self.stop_at.is_some_and(|t| now >= t) && self.next < self.total {
                    self.total = self.next;
                }
                if self.next >= self.total && self.groups.values().all(|g| g.left.is_empty()) {
                    self.phase = Phase::Drain;
                }
            }
            Phase::Drain => {
                let settled = self
                    .clients
                    .iter()
                    .all(|c| c.inflight == 0 && c.awaiting.is_empty())
                    && self
                        .workers
                        .iter()
                        .all(|w| w.state == WState::Sleeping && w.held.is_none())
                    && self.admin.as_ref().is_some_and(|a| a.1.is_empty());
                if settled && now >= self.next_status {
                    let (conn, reqs) = self.admin.as_mut().unwrap();
                    net.out(*conn).extend_from_slice(b"status\n");
                    reqs.push_back(AdminReq::Status(Vec::new()));
                    self.phase = Phase::Verify;
                }
            }
            Phase::Verify | Phase::Done => {}
        }
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    fn progress(&self) -> (u64, u64) {
        (self.c.acked + self.c.unacked, self.total as u64)
    }

    fn progress_note(&self) -> String {
        let rss = self
            .rss
            .last()
            .map_or(String::new(), |r| format!(", server {} MiB", r.2 / 1024));
        let kills = if self.crash_mode {
            format!(", {} kills", self.c.server_kills)
        } else {
            String::new()
        };
        format!(
            "{rss}, {} runs, {} client and {} worker deaths{kills}",
            self.c.runs, self.c.client_deaths, self.c.worker_deaths
        )
    }
}

impl Soak<'_> {
    /// `kill -9` of the server: no group submits more (a later submission could coalesce onto
    /// a replayed job under a new handle), and the loop reads what the sockets still hold until
    /// they close.
    fn kill_server(&mut self) {
        if let SoakServer::Started { running, .. } = &mut self.server {
            running.kill9();
        }
        self.c.server_kills += 1;
        self.generation += 1;
        // A group waiting for a JOB_CREATED keeps its jobs until that answer (still in the
        // socket) or its client's end: the answer may name one of them.
        self.groups.retain(|_, g| {
            g.left.clear();
            g.awaiting.is_some()
        });
        self.ready.clear();
        // A handle names another job (or none) after the restart.
        self.recent.clear();
        self.recent_at = 0;
        self.down = Some(Instant::now());
    }

    /// While the server is down: once every connection has closed (or after `DOWN_WAIT`),
    /// start it again on the same port and store, and reconnect everyone.
    fn restart_when_closed(&mut self, net: &mut Net, since: Instant) -> Result<(), String> {
        let open: Vec<usize> = self
            .roles
            .iter()
            .enumerate()
            .filter(|&(id, r)| !matches!(r, Role::None) && net.is_open(id))
            .map(|(id, _)| id)
            .collect();
        if !open.is_empty() && since.elapsed() < DOWN_WAIT {
            return Ok(());
        }
        for id in open {
            net.close(id);
            match self.roles[id] {
                Role::Client(ci) => self.client_died(ci),
                Role::Worker(wi) => self.worker_died(wi),
                Role::Admin => self.admin = None,
                Role::None => {}
            }
        }
        if let SoakServer::Started {
            spec,
            running,
            port,
        } = &mut self.server
        {
            *running = spec.start_on(Some(*port), RESTART_LIMIT)?;
        }
        self.down = None;
        self.last_work_at = Instant::now();
        self.open_all(net)
    }

    /// `status` answered: settled when no function has a job queued or running and each of
    /// this run's functions lists exactly the workers connected for it now (a dead worker's
    /// entries are gone).
    fn on_status(&mut self) {
        let mut settled = true;
        for l in &self.status_lines {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() < 4 || f[1] != "0" || f[2] != "0" {
                settled = false;
            } else if let Some(k) = self
                .fns
                .iter()
                .position(|n| n.as_slice() == f[0].as_bytes())
            {
                let connected = self
                    .workers
                    .iter()
                    .filter(|w| w.fns.contains(&(k as u8)))
                    .count();
                if f[3] != connected.to_string() {
                    settled = false;
                }
            }
        }
        if settled {
            self.phase = Phase::Done;
        } else {
            self.phase = Phase::Drain;
            self.next_status = Instant::now() + Duration::from_millis(500);
        }
    }

    /// Where the run stands, for a stall or a timeout: counts, the server's last `status`,
    /// and the first unresolved submissions with the state each was last seen in.
    fn where_it_stands(&self, net: &Net) -> String {
        let mut s = format!(
            "phase {:?}; {} of {} submitted; {} acknowledged, {} answered, {} runs, {} completions",
            self.phase,
            self.next,
            self.total,
            self.c.acked,
            self.c.answered,
            self.c.runs,
            self.c.completions
        );
        let states: Vec<String> = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                format!(
                    "{i}:{:?}{}{}",
                    w.state,
                    if w.doomed { "(doomed)" } else { "" },
                    if net.unwritten(w.conn) > 0 {
                        "(unwritten output)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        s += &format!("\n  workers: {}", states.join(" "));
        let clients: Vec<String> = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{i}:{} in flight", c.inflight))
            .collect();
        s += &format!("\n  clients: {}", clients.join(", "));
        if !self.status_lines.is_empty() {
            s += &format!(
                "\n  server status (last asked): {}",
                self.status_lines.join(" | ")
            );
        }
        let mut shown = 0;
        for n in 0..self.next {
            if shown >= DETAILS {
                s += "\n  ...";
                break;
            }
            if self.unresolved(n) {
                s += &format!("\n  job {n}: {}", self.describe(n));
                shown += 1;
            }
        }
        s
    }

    /// Whether submission `n` still waits for something it must get.
    fn unresolved(&self, n: u32) -> bool {
        let s = &self.subs[n as usize];
        match s.state {
            SENT => true,
            ACKED if s.kind & BG == 0 => true,
            ACKED => {
                let c = &self.subs[s.job as usize];
                c.kind & BG != 0 && c.completions == 0 && c.flags & CANCELLED == 0
            }
            _ => false,
        }
    }

    /// The final count, into the result.
    fn account(&mut self, r: &mut RunResult, finished: bool) {
        let mut lost = 0u64;
        let mut abandoned = 0u64;
        let mut bg_on_fg_dropped = 0u64;
        let mut ran_twice = 0u64;
        let mut completed_twice = 0u64;
        let mut wrong = Vec::new();
        for n in 0..self.next {
            let s = self.subs[n as usize];
            if s.runs > 1 {
                ran_twice += 1;
            }
            if s.completions > 1 {
                completed_twice += 1;
                if !self.crash_mode {
                    self.dup += 1;
                    wrong.push(format!(
                        "job {n} completed {} times: {}",
                        s.completions,
                        self.describe(n)
                    ));
                }
            }
            if s.job == n && s.kind & BG == 0 && s.completions == 0 && s.flags & CANCELLED == 0 {
                abandoned += 1;
            }
            match s.state {
                SENT if finished => {
                    lost += 1;
                    wrong.push(format!("job {n} never acknowledged: {}", self.describe(n)));
                }
                ACKED if s.kind & BG == 0 && finished => {
                    lost += 1;
                    wrong.push(format!("job {n} never answered: {}", self.describe(n)));
                }
                ACKED if s.kind & BG == 0 => {}
                ACKED => {
                    let c = self.subs[s.job as usize];
                    let ended = c.completions > 0
                        || c.flags & CANCELLED != 0
                        || (self.crash_mode && c.flags & CANCEL_SENT != 0);
                    if ended {
                    } else if c.kind & BG == 0 && finished {
                        // The job it joined was foreground: acknowledging the background
                        // submission made it background, so it must still run.
                        bg_on_fg_dropped += 1;
                        lost += 1;
                        wrong.push(format!(
                            "background job {n} acknowledged onto a foreground job that was \
                             dropped: {}",
                            self.describe(n)
                        ));
                    } else if finished {
                        lost += 1;
                        wrong.push(format!(
                            "background job {n} acknowledged and never completed: {}",
                            self.describe(n)
                        ));
                    }
                }
                ANSWERED => {
                    let c = self.subs[s.job as usize];
                    if s.answers > 1 {
                        self.dup += 1;
                        wrong.push(format!(
                            "job {n} answered {} times: {}",
                            s.answers,
                            self.describe(n)
                        ));
                    }
                    if s.flags & GOT_FAIL != 0 && c.flags & CANCELLED == 0 {
                        wrong.push(format!(
                            "job {n} got WORK_FAIL but was never cancelled: {}",
                            self.describe(n)
                        ));
                    }
                    if s.flags & BAD_RESULT != 0 {
                        wrong.push(format!(
                            "job {n}'s result was not its job's payload: {}",
                            self.describe(n)
                        ));
                    }
                }
                _ => {}
            }
        }
        let n_wrong = wrong.len();
        for w in wrong.into_iter().take(DETAILS) {
            self.error(w);
        }
        if n_wrong > DETAILS {
            self.error(format!("{} more such jobs", n_wrong - DETAILS));
        }
        r.jobs = self.next as u64;
        r.lost = lost;
        r.dup = self.dup;
        r.errors.append(&mut self.errors);

        // Memory: the server's RSS must not keep growing (compared between the halves of the
        // run, after the first tenth, which fills the allocator's pools).
        let half = |lo: u32, hi: u32| {
            self.rss
                .iter()
                .filter(|x| x.1 >= lo && x.1 < hi)
                .map(|x| x.2)
                .max()
        };
        let first = half(self.next / 10, self.next / 2);
        let second = half(self.next / 2, u32::MAX);
        if let (Some(a), Some(b)) = (first, second)
            && !self.crash_mode
            && b > a + a / 2 + 64 * 1024
        {
            r.errors.push(format!(
                "server memory kept growing: {} MiB at most in the first half, {} MiB in the second",
                a / 1024,
                b / 1024
            ));
        }
        if !self.rss.is_empty() {
            let step = self.rss.len().div_ceil(12);
            let series: Vec<String> = self
                .rss
                .iter()
                .step_by(step)
                .chain(self.rss.last())
                .map(|(t, n, kb)| format!("{t:.0}s/{n}:{}", kb / 1024))
                .collect();
            r.notes.push(format!(
                "server RSS MiB over time (seconds/jobs submitted:MiB): {}",
                series.join(" ")
            ));
        }

        let c = &self.c;
        let mb = |k: Option<u64>| k.map_or(f64::NAN, |k| k as f64 / 1024.0);
        let secs = self.start.elapsed().as_secs_f64();
        let figures: [(&'static str, f64); 33] = [
            ("jobs_per_s", self.next as f64 / secs),
            ("submitted", self.next as f64),
            ("acked", c.acked as f64),
            ("unacked", c.unacked as f64),
            ("answered", c.answered as f64),
            ("detached", c.detached as f64),
            ("abandoned", abandoned as f64),
            ("coalesced", c.coalesced as f64),
            ("fg_on_bg", c.fg_on_bg as f64),
            ("bg_on_fg", c.bg_on_fg as f64),
            ("bg_on_fg_dropped", bg_on_fg_dropped as f64),
            ("epoch", c.epoch as f64),
            ("epoch_future", c.epoch_future as f64),
            ("runs", c.runs as f64),
            ("reruns", c.reruns as f64),
            ("ran_twice", ran_twice as f64),
            ("completed_twice", completed_twice as f64),
            ("runs_after_completion", c.runs_after_completion as f64),
            ("held", c.held as f64),
            ("polls", c.polls as f64),
            ("polls_known", c.polls_known as f64),
            ("cancels", c.cancels as f64),
            ("cancelled", c.cancelled as f64),
            ("cancel_unknown", c.cancel_unknown as f64),
            ("client_deaths", c.client_deaths as f64),
            ("worker_deaths", c.worker_deaths as f64),
            ("worker_deaths_holding", c.worker_deaths_holding as f64),
            ("server_kills", c.server_kills as f64),
            ("bursts", c.bursts as f64),
            ("rss_first_half_mb", mb(first)),
            ("rss_max_mb", mb(self.rss.iter().map(|x| x.2).max())),
            ("rss_end_mb", mb(self.rss.last().map(|x| x.2))),
            ("elapsed_s", secs),
        ];
        for (k, v) in figures {
            let better = if k == "jobs_per_s" {
                Better::Higher
            } else {
                Better::Neither
            };
            r.add(k, "", v, better);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running it.

/// Runs the soak against `server` (started or external) and counts everything.
pub fn run(p: &Params, server: SoakServer<'_>, name: &str, round: usize) -> RunResult {
    let mut r = RunResult {
        scenario: "soak".into(),
        target: name.into(),
        round,
        jobs: p.jobs as u64,
        ..Default::default()
    };
    r.notes.push(format!("seed {}", p.seed));
    let mut net = match Net::new(None) {
        Ok(n) => n,
        Err(e) => {
            r.errors.push(e.to_string());
            return r;
        }
    };
    let mut soak = Soak::new(p, server);
    if let Err(e) = soak.open_all(&mut net) {
        r.errors.push(e);
        return r;
    }
    if soak.crash_mode {
        let every = soak.kill_every.unwrap();
        soak.next_kill = Some(Instant::now() + soak.rng.around(every));
    }
    let deadline = Instant::now() + p.timeout;
    let mut prog = Progress::new(format!("soak {name} round {round}"), p.progress);
    let res = net.run(&mut soak, deadline, &mut prog);
    let finished = res.is_ok();
    match res {
        Ok(()) => {}
        Err(Stop::Timeout) => r.errors.push(format!(
            "time limit ({} s) reached\n{}",
            p.timeout.as_secs(),
            soak.where_it_stands(&net)
        )),
        Err(Stop::Error(e)) => r.errors.push(e),
    }
    soak.account(&mut r, finished);
    if let SoakServer::Started { running, spec, .. } = &mut soak.server {
        if let Some(st) = running.exited() {
            r.errors.push(format!(
                "{} exited during the run ({st}); stderr: {}",
                spec.name,
                running.stderr_text()
            ));
        } else if let Some(note) = running.stop() {
            r.notes.push(format!("{}: {note}", spec.name));
        }
    }
    r
}

/// Starts `spec` and soaks it (killing and restarting it with `--kill-every`).
pub fn run_started(p: &Params, spec: &ServerSpec, round: usize) -> RunResult {
    let name = if p.kill_every.is_some() {
        format!("{}-kill9", spec.name)
    } else {
        spec.name.clone()
    };
    match spec.start() {
        Ok(running) => {
            let port = running.addr.port();
            run(
                p,
                SoakServer::Started {
                    spec,
                    running,
                    port,
                },
                &name,
                round,
            )
        }
        Err(e) => RunResult {
            scenario: "soak".into(),
            target: name,
            round,
            jobs: p.jobs as u64,
            errors: vec![e],
            ..Default::default()
        },
    }
}
