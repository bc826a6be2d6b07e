//! The scenarios: what the clients and workers do, what is counted, and which figures a run
//! reports.
//!
//! Every job carries its number in the first 8 bytes of its payload (hex), so a worker knows
//! which job it was given whatever the server did with handles and uniques, and a client can
//! check every result byte for byte. Each job is counted where it runs (worker) and, for
//! foreground jobs, where its result lands (client): a job never run or never answered is
//! lost, one run or answered twice is duplicated, and either fails the run.
//!
//! Workers use the real worker loop: CAN_DO, then GRAB_JOB (or GRAB_JOB_UNIQ); on NO_JOB,
//! PRE_SLEEP and wait for NOOP; on JOB_ASSIGN, WORK_COMPLETE and GRAB_JOB again in the same
//! write. A worker holds one job at a time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use gearshift::protocol::{Frame, PacketType, encode_request};
use smallvec::SmallVec;

use crate::driver::{BUSY_BUF, IDLE_BUF, Logic, Net, Progress, Stop};
use crate::echo::EchoServer;
use crate::procstat::{self, Cpu};
use crate::report::{Better, RunResult};

/// The scenarios of the issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Background jobs: clients pipeline submits, workers drain.
    Bg,
    /// Foreground jobs: clients keep `depth` jobs outstanding; latency and every result.
    Fg,
    /// Queue `jobs` background jobs with no worker, then drain: memory per queued job.
    Fill,
    /// `clients` clients submit the same unique at once; it must run once and answer all.
    Coalesce,
    /// Foreground load alone, then again while `idle-conns` idle connections are held.
    Conns,
    /// The same connection shapes against the built-in TCP echo server.
    Ceiling,
    /// Mixed traffic for millions of jobs while clients, workers (and with --kill-every the
    /// server) die at random moments; every job accounted for.
    Soak,
    /// `jobs` connections opened one after another: connect (and, with `--tls`, a full
    /// handshake with client certificate), one ECHO round trip, close.
    Handshake,
}

impl Scenario {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Bg => "bg",
            Scenario::Fg => "fg",
            Scenario::Fill => "fill",
            Scenario::Coalesce => "coalesce",
            Scenario::Conns => "conns",
            Scenario::Ceiling => "ceiling",
            Scenario::Soak => "soak",
            Scenario::Handshake => "handshake",
        }
    }
}

/// Unique ids sent with submissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UniqueMode {
    /// A distinct unique per job (`TAG-NUMBER`), as client libraries send one.
    Seq,
    /// Empty unique (the server makes one up or goes without).
    None,
}

/// The shape of the load, from the flags.
#[derive(Clone, Debug)]
pub struct Params {
    /// Jobs per run (round trips for `ceiling`, uniques for `coalesce`).
    pub jobs: u32,
    /// Payload bytes per job (at least 8: the job number).
    pub payload: usize,
    /// Client connections.
    pub clients: usize,
    /// Jobs in flight per client (uniques in flight for `coalesce`).
    pub depth: usize,
    /// Open loop (`bg`, `fg`): jobs/s offered, job `i` due at the start plus `i / rate`.
    pub rate: Option<f64>,
    /// Open loop: the timer's period is at least this, so that a wake-up sends every job due
    /// in it at once (fewer turns, each job up to this much late); zero: a wake-up per job.
    pub tick: Duration,
    /// Open loop: `depth` was given, so it caps the jobs outstanding per client (otherwise
    /// an open loop has no cap).
    pub depth_cap: bool,
    /// Worker connections.
    pub workers: usize,
    /// Distinct function names, spread over jobs round robin.
    pub functions: usize,
    /// Unique ids.
    pub unique: UniqueMode,
    /// Workers grab with GRAB_JOB_UNIQ instead of GRAB_JOB.
    pub grab_uniq: bool,
    /// Idle connections held in `conns`.
    pub idle_conns: usize,
    /// ceiling: the echo server runs on io_uring.
    pub echo_io_uring: bool,
    /// Time limit of one run.
    pub timeout: Duration,
    /// Show a progress line.
    pub progress: bool,
    /// soak: kill -9 and restart the server about this often (on average).
    pub kill_every: Option<Duration>,
    /// soak: a run with no progress for this long has stalled.
    pub stall: Duration,
    /// soak: a client or worker dies about this often (on average).
    pub fault_every: Duration,
    /// soak: seed of the random choices.
    pub seed: u64,
    /// soak: background submissions a client writes in one go about every 10 s (0: none).
    pub burst: u32,
    /// soak: stop submitting after this long (then drain and check), even short of `jobs`.
    pub duration: Option<Duration>,
    /// The servers keep a queue store: fill's drain ends only when the store has the drained
    /// jobs' deletes (see [`Goal::Stored`]).
    pub durable: bool,
}

/// Where the server's CPU time is read.
#[derive(Clone, Copy, Debug)]
pub enum CpuSource {
    /// Not known (an external server without `--server-pid`).
    Unknown,
    /// A process, all its threads.
    Process(u32),
    /// A thread of this process (the built-in echo server).
    Thread(u32),
}

/// A server to drive.
#[derive(Clone, Debug)]
pub struct Target {
    /// Name in reports.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its CPU is read.
    pub cpu: CpuSource,
    /// Process whose memory is read, if known.
    pub rss_pid: Option<u32>,
    /// The database server behind the target's queue store, whose CPU (with its children's) is
    /// reported as the store's and not counted as disturbance.
    pub store_pid: Option<u32>,
    /// TLS for every connection (the target listens with `--ssl`).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Target {
    fn server_cpu(&self) -> Option<Cpu> {
        match self.cpu {
            CpuSource::Unknown => None,
            CpuSource::Process(pid) => procstat::process_cpu(pid).ok(),
            CpuSource::Thread(tid) => procstat::thread_cpu(tid).ok(),
        }
    }

    fn store_cpu(&self) -> Option<Cpu> {
        self.store_pid.and_then(|p| procstat::tree_cpu(p).ok())
    }

    pub(crate) fn rss_kb(&self) -> Option<u64> {
        self.rss_pid
            .and_then(|p| procstat::rss_kb(p).ok())
            .map(|r| r.0)
    }
}

/// CPU and wall clock over a measured phase: the server's and this harness's own (the driver
/// thread: the harness's only busy thread).
///
/// It also reads the whole machine's busy time, so that what other processes used meanwhile
/// (a build, a test suite) shows in the result instead of silently skewing jobs/s.
struct Meter {
    t0: Instant,
    server0: Option<Cpu>,
    store0: Option<Cpu>,
    self0: Cpu,
    machine0: Option<u64>,
    tid: u32,
}

/// What a [`Meter`] measured.
struct Measured {
    secs: f64,
    server: Option<Cpu>,
    /// The database server's, with `--store-pid`.
    store: Option<Cpu>,
    harness: Cpu,
    /// Machine busy time over the phase, ns.
    machine: Option<u64>,
}

impl Meter {
    fn start(t: &Target) -> Meter {
        let tid = procstat::current_tid();
        Meter {
            server0: t.server_cpu(),
            store0: t.store_cpu(),
            self0: procstat::thread_cpu(tid).unwrap_or_default(),
            machine0: procstat::machine_busy_ns(),
            tid,
            t0: Instant::now(),
        }
    }

    fn stop(&self, t: &Target) -> Measured {
        let secs = self.t0.elapsed().as_secs_f64();
        let server = match (self.server0, t.server_cpu()) {
            (Some(a), Some(b)) => Some(a.until(&b)),
            _ => None,
        };
        let store = match (self.store0, t.store_cpu()) {
            (Some(a), Some(b)) => Some(a.until(&b)),
            _ => None,
        };
        let harness = self
            .self0
            .until(&procstat::thread_cpu(self.tid).unwrap_or_default());
        let machine = match (self.machine0, procstat::machine_busy_ns()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        Measured {
            secs,
            server,
            store,
            harness,
            machine,
        }
    }
}

impl Measured {
    /// Server CPU µs per unit of work (NaN when unknown).
    fn server_us_per(&self, n: u64) -> f64 {
        self.server
            .map(|c| c.ns as f64 / 1000.0 / n.max(1) as f64)
            .unwrap_or(f64::NAN)
    }

    /// The database server's CPU µs per unit of work (NaN without `--store-pid`).
    fn store_us_per(&self, n: u64) -> f64 {
        self.store
            .map(|c| c.ns as f64 / 1000.0 / n.max(1) as f64)
            .unwrap_or(f64::NAN)
    }

    fn harness_us_per(&self, n: u64) -> f64 {
        self.harness.ns as f64 / 1000.0 / n.max(1) as f64
    }

    /// Server's share of user time (the rest is kernel: system calls, TCP).
    fn server_user_pct(&self) -> f64 {
        self.server
            .and_then(|c| c.user_share())
            .map(|s| 100.0 * s)
            .unwrap_or(f64::NAN)
    }

    /// CPU used by everything but the server, its database server and the harness (other
    /// processes, and time the hypervisor stole), as a share of one core over the phase
    /// (machine busy time is counted in clock ticks, so a few % is noise).
    fn other_core_pct(&self) -> f64 {
        match (self.machine, self.server) {
            (Some(m), Some(s)) => {
                let store = self.store.map_or(0.0, |c| c.ns as f64);
                let other = m as f64 - s.ns as f64 - store - self.harness.ns as f64;
                (100.0 * other / 1e9 / self.secs).max(0.0)
            }
            _ => f64::NAN,
        }
    }

    /// Server CPU as a share of one core over the phase.
    fn server_core_pct(&self) -> f64 {
        self.server
            .map(|c| 100.0 * c.ns as f64 / 1e9 / self.secs)
            .unwrap_or(f64::NAN)
    }
}

// ---------------------------------------------------------------------------------------------
// Payloads and names.

pub(crate) const ID_LEN: usize = 8;

/// The job number of the barrier job in a client's queue of submissions.
const BARRIER_ID: u32 = u32::MAX;

/// Job payloads: the job number in 8 hex digits, then a fixed filler up to the payload size.
pub(crate) struct Payloads {
    template: Vec<u8>,
}

pub(crate) fn hex8(n: u32, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out[..8].iter_mut().enumerate() {
        *b = HEX[((n >> (28 - 4 * i)) & 0xf) as usize];
    }
}

impl Payloads {
    pub(crate) fn new(size: usize) -> Payloads {
        let size = size.max(ID_LEN);
        let template = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        Payloads { template }
    }

    /// Writes job `id`'s payload into `buf`.
    pub(crate) fn make(&self, id: u32, buf: &mut Vec<u8>) {
        buf.clear();
        buf.extend_from_slice(&self.template);
        hex8(id, buf);
    }

    /// The job number a payload carries.
    pub(crate) fn id_of(data: &[u8]) -> Option<u32> {
        let d = data.get(..ID_LEN)?;
        let mut n = 0u32;
        for &c in d {
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            n = (n << 4) | v as u32;
        }
        Some(n)
    }

    /// Whether `data` is exactly job `id`'s payload.
    pub(crate) fn check(&self, id: u32, data: &[u8]) -> bool {
        data.len() == self.template.len()
            && Self::id_of(data) == Some(id)
            && data[ID_LEN..] == self.template[ID_LEN..]
    }
}

/// A tag that makes this run's function names and uniques its own, so runs against a long-lived
/// server (`--addr`) never pick up each other's leftovers.
pub(crate) fn new_tag() -> u32 {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (std::process::id().wrapping_mul(2_654_435_761))
        ^ t
        ^ (SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) << 24)
}

// ---------------------------------------------------------------------------------------------
// The Gearman load: clients and workers.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Bg,
    Fg,
    Coalesce,
}

/// When the current phase of a run is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Goal {
    /// Every submission acknowledged (fill).
    Created,
    /// Every job run by a worker (bg, fill's drain).
    Executed,
    /// Every job's result received (fg).
    Completed,
    /// Every unique answered to all its clients (coalesce).
    Groups,
    /// Every worker asleep after NO_JOB (the server has nothing more to hand out) and every
    /// submission acknowledged.
    Quiet,
    /// After a durable drain: the store has every drained job's delete. Each worker's
    /// connection answers an ECHO (so the server has handled its last WORK_COMPLETE), then a
    /// background job of the same function (same owner, same store order) is submitted; its
    /// JOB_CREATED comes once the store has written it, and with it every delete before it.
    Stored,
    /// A worker has run the job that ended the durable drain (so the store is left empty).
    BarrierRan,
}

/// The payload of the job that ends a durable drain ([`Goal::Stored`]); no job number.
const BARRIER_PAYLOAD: &[u8] = b"barrier:";

/// Where the end of a durable drain stands.
#[derive(Default)]
struct Barrier {
    echoes_due: usize,
    created: bool,
    ran: bool,
}

#[derive(Clone, Copy, Debug)]
enum Role {
    None,
    Client(usize),
    Worker(usize),
}

type Handle = SmallVec<[u8; 32]>;

struct Client {
    conn: usize,
    /// Submissions waiting for JOB_CREATED, in order: (job, submit time).
    awaiting: VecDeque<(u32, Instant)>,
    /// Jobs counted against the window: until JOB_CREATED (bg), until the result (fg).
    inflight: usize,
    /// Foreground jobs created and waiting for their result, by handle.
    handles: AHashMap<Handle, (u32, Instant)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WState {
    /// GRAB sent; JOB_ASSIGN or NO_JOB to come.
    Grabbing,
    /// PRE_SLEEP sent; waiting for NOOP.
    Sleeping,
    /// Holding a coalesced job until every client has its JOB_CREATED.
    Holding,
}

struct Worker {
    conn: usize,
    state: WState,
    /// (handle, job, reply) of a held job.
    held: Option<(Handle, u32, Vec<u8>)>,
}

/// Clients and workers of one Gearman run, and everything counted about its jobs.
struct GearLoad {
    mode: Mode,
    goal: Goal,
    total: u32,
    next: u32,
    depth: usize,
    fns: Vec<Vec<u8>>,
    tag: [u8; 8],
    unique: bool,
    grab_uniq: bool,
    payloads: Payloads,
    scratch: Vec<u8>,
    roles: Vec<Role>,
    clients: Vec<Client>,
    workers: Vec<Worker>,
    submitted: u64,
    created: u64,
    /// Times each job was run by a worker.
    exec: Vec<u8>,
    exec_distinct: u64,
    exec_dup: u64,
    /// Results each job's clients received.
    results: Vec<u16>,
    results_distinct: u64,
    results_dup: u64,
    bad_results: u64,
    /// Coalesce: JOB_CREATED received per unique, and the first handle given for it.
    created_per: Vec<u16>,
    first_handle: AHashMap<u32, Handle>,
    handle_mismatch: u64,
    groups_done: u64,
    /// Submit-to-result latencies, ns.
    lat_ns: Vec<u64>,
    /// When `created` reached k tenths of `total` (index k, 0 = start).
    tenths: [Option<Instant>; 11],
    next_tenth: usize,
    barrier: Barrier,
    /// Open loop: when jobs are due, and how late they went out.
    open: Option<OpenLoop>,
    /// Open loop: due time to JOB_ASSIGN, ns.
    assign_ns: Vec<u64>,
    /// Open loop: the timer's least period ([`Params::tick`]).
    tick: Duration,
}

/// A send this much after its due time is counted late.
const LATE: Duration = Duration::from_millis(1);

/// The open loop's clock: job `i` is due at `t0 + i * period` (`period` is `1 / rate` to the
/// nanosecond), whatever the server does.
struct OpenLoop {
    /// Jobs per second.
    rate: f64,
    period_ns: u64,
    /// The start of the measured phase (set by [`GearLoad::start`]; nothing is due before).
    t0: Option<Instant>,
    /// Most jobs outstanding per client (`--depth` given), else none.
    cap: Option<usize>,
    /// The client the next turn's jobs go to (the clients take turns; with a cap, a full
    /// client passes its jobs to the next one with room).
    next_client: usize,
    /// Sends more than [`LATE`] after their due time.
    late: u64,
    /// Largest send lag (send time minus due time), ns.
    lag_max_ns: u64,
    /// Sum of send lags, ns.
    lag_sum_ns: u64,
}

impl OpenLoop {
    fn due(&self, id: u32) -> Instant {
        self.t0.unwrap_or(Instant::now()) + Duration::from_nanos(id as u64 * self.period_ns)
    }

    /// How many jobs are due by `now` (job 0 at the start; none before).
    fn due_by(&self, now: Instant) -> u64 {
        self.t0.map_or(0, |t0| {
            (now.saturating_duration_since(t0).as_nanos() / self.period_ns as u128) as u64 + 1
        })
    }
}

impl GearLoad {
    fn new(mode: Mode, p: &Params) -> GearLoad {
        let tag_n = new_tag();
        let mut tag = [0u8; 8];
        hex8(tag_n, &mut tag);
        let fns = (0..p.functions.max(1))
            .map(|k| format!("lt{}_{k}", std::str::from_utf8(&tag).unwrap()).into_bytes())
            .collect();
        let n = p.jobs as usize;
        GearLoad {
            mode,
            goal: Goal::Quiet,
            total: p.jobs,
            next: 0,
            depth: p.depth.max(1),
            fns,
            tag,
            unique: p.unique == UniqueMode::Seq || mode == Mode::Coalesce,
            grab_uniq: p.grab_uniq,
            payloads: Payloads::new(p.payload),
            scratch: Vec::new(),
            roles: Vec::new(),
            clients: Vec::new(),
            workers: Vec::new(),
            submitted: 0,
            created: 0,
            exec: vec![0; n],
            exec_distinct: 0,
            exec_dup: 0,
            results: if mode == Mode::Bg {
                Vec::new()
            } else {
                vec![0; n]
            },
            results_distinct: 0,
            results_dup: 0,
            bad_results: 0,
            created_per: if mode == Mode::Coalesce {
                vec![0; n]
            } else {
                Vec::new()
            },
            first_handle: AHashMap::new(),
            handle_mismatch: 0,
            groups_done: 0,
            lat_ns: Vec::with_capacity(if mode == Mode::Bg { 0 } else { n }),
            tenths: [None; 11],
            next_tenth: 1,
            barrier: Barrier::default(),
            open: p.rate.map(|rate| OpenLoop {
                rate,
                period_ns: ((1e9 / rate).round() as u64).max(1),
                t0: None,
                cap: p.depth_cap.then_some(p.depth.max(1)),
                next_client: 0,
                late: 0,
                lag_max_ns: 0,
                lag_sum_ns: 0,
            }),
            assign_ns: Vec::with_capacity(if p.rate.is_some() { n } else { 0 }),
            tick: p.tick,
        }
    }

    fn set_role(&mut self, id: usize, role: Role) {
        if self.roles.len() <= id {
            self.roles.resize(id + 1, Role::None);
        }
        self.roles[id] = role;
    }

    fn add_clients(&mut self, net: &mut Net, addr: SocketAddr, n: usize) -> Result<(), String> {
        for _ in 0..n {
            let conn = net
                .connect(addr, BUSY_BUF)
                .map_err(|e| format!("connect: {e}"))?;
            self.set_role(conn, Role::Client(self.clients.len()));
            self.clients.push(Client {
                conn,
                awaiting: VecDeque::with_capacity(self.depth),
                inflight: 0,
                handles: AHashMap::with_capacity(self.depth * 2),
            });
        }
        Ok(())
    }

    /// Connects workers; each registers its functions and makes its first grab.
    fn add_workers(&mut self, net: &mut Net, addr: SocketAddr, n: usize) -> Result<(), String> {
        for _ in 0..n {
            let conn = net
                .connect(addr, BUSY_BUF)
                .map_err(|e| format!("connect: {e}"))?;
            self.set_role(conn, Role::Worker(self.workers.len()));
            self.workers.push(Worker {
                conn,
                state: WState::Grabbing,
                held: None,
            });
            let out = net.out(conn);
            for f in &self.fns {
                encode_request(out, PacketType::CanDo, &[f]);
            }
            encode_request(out, self.grab(), &[]);
        }
        Ok(())
    }

    fn grab(&self) -> PacketType {
        if self.grab_uniq {
            PacketType::GrabJobUniq
        } else {
            PacketType::GrabJob
        }
    }

    /// Starts the load: fills every client's window (or the first uniques, for coalesce).
    fn start(&mut self, net: &mut Net) {
        self.tenths[0] = Some(Instant::now());
        net.now = Instant::now();
        if self.mode == Mode::Coalesce {
            for _ in 0..self.depth {
                self.start_group(net);
            }
        } else if let Some(o) = &mut self.open {
            o.t0 = Some(net.now);
            self.send_due(net);
        } else {
            for ci in 0..self.clients.len() {
                self.refill(net, ci);
            }
        }
    }

    /// Open loop: sends every job due by now, all from one client, the clients taking turns
    /// (one write per turn); with a cap, a full client passes the rest to the next with room,
    /// and when none has room they wait and will be late.
    fn send_due(&mut self, net: &mut Net) {
        let Some(o) = &self.open else { return };
        let now = Instant::now();
        let due = o.due_by(now).min(self.total as u64) as u32;
        let n = self.clients.len();
        let mut ci = o.next_client;
        let mut sent = false;
        while self.next < due {
            let o = self.open.as_mut().unwrap();
            if let Some(cap) = o.cap {
                let Some(k) = (0..n)
                    .map(|k| (ci + k) % n)
                    .find(|&k| self.clients[k].inflight < cap)
                else {
                    break;
                };
                ci = k;
            }
            sent = true;
            let id = self.next;
            let at = o.due(id);
            let lag = now.saturating_duration_since(at);
            if lag > LATE {
                o.late += 1;
            }
            o.lag_max_ns = o.lag_max_ns.max(lag.as_nanos() as u64);
            o.lag_sum_ns += lag.as_nanos() as u64;
            self.next += 1;
            self.submit(net, ci, id, at);
        }
        if sent && let Some(o) = &mut self.open {
            o.next_client = (ci + 1) % n;
        }
    }

    /// Sends job `id` from client `ci`; its latency runs from `t` (now, or its due time).
    fn submit(&mut self, net: &mut Net, ci: usize, id: u32, t: Instant) {
        let ty = if self.mode == Mode::Bg {
            PacketType::SubmitJobBg
        } else {
            PacketType::SubmitJob
        };
        let mut uniq = [0u8; 17];
        let ulen = if self.unique {
            uniq[..8].copy_from_slice(&self.tag);
            uniq[8] = b'-';
            hex8(id, &mut uniq[9..]);
            17
        } else {
            0
        };
        self.payloads.make(id, &mut self.scratch);
        let f = &self.fns[id as usize % self.fns.len()];
        let c = &mut self.clients[ci];
        encode_request(net.out(c.conn), ty, &[f, &uniq[..ulen], &self.scratch]);
        c.awaiting.push_back((id, t));
        c.inflight += 1;
        self.submitted += 1;
    }

    fn refill(&mut self, net: &mut Net, ci: usize) {
        while self.clients[ci].inflight < self.depth && self.next < self.total {
            let id = self.next;
            self.next += 1;
            self.submit(net, ci, id, net.now);
        }
    }

    /// Coalesce: every client submits the next unique, in the same turn.
    fn start_group(&mut self, net: &mut Net) {
        if self.next >= self.total {
            return;
        }
        let id = self.next;
        self.next += 1;
        for ci in 0..self.clients.len() {
            self.submit(net, ci, id, net.now);
        }
    }

    /// Starts the end of a durable drain: an ECHO on every worker's connection.
    fn start_barrier(&mut self, net: &mut Net) {
        self.barrier = Barrier {
            echoes_due: self.workers.len(),
            ..Barrier::default()
        };
        for w in &self.workers {
            encode_request(net.out(w.conn), PacketType::EchoReq, &[b"barrier"]);
        }
    }

    /// Every worker's input is handled: the barrier job goes out from the first client.
    fn submit_barrier(&mut self, net: &mut Net) {
        let mut uniq = self.tag.to_vec();
        uniq.extend_from_slice(b"-barrier");
        let c = &mut self.clients[0];
        encode_request(
            net.out(c.conn),
            PacketType::SubmitJobBg,
            &[&self.fns[0], &uniq, BARRIER_PAYLOAD],
        );
        c.awaiting.push_back((BARRIER_ID, net.now));
    }

    fn complete(&self, net: &mut Net, conn: usize, handle: &[u8], reply: &[u8]) {
        let out = net.out(conn);
        encode_request(out, PacketType::WorkComplete, &[handle, reply]);
        encode_request(out, self.grab(), &[]);
    }

    fn on_worker(
        &mut self,
        net: &mut Net,
        wi: usize,
        p: &gearshift::protocol::Packet<'_>,
    ) -> Result<(), String> {
        match p.ty {
            PacketType::JobAssign | PacketType::JobAssignUniq => {
                if self.workers[wi].state != WState::Grabbing {
                    return Err(format!(
                        "worker {wi}: job assigned while {:?}",
                        self.workers[wi].state
                    ));
                }
                let (handle, data) = if p.ty == PacketType::JobAssignUniq {
                    (p.arg(0), p.arg(3))
                } else {
                    (p.arg(0), p.arg(2))
                };
                if data == BARRIER_PAYLOAD {
                    self.barrier.ran = true;
                    let conn = self.workers[wi].conn;
                    self.complete(net, conn, handle, &[]);
                    return Ok(());
                }
                let id = Payloads::id_of(data)
                    .filter(|&id| id < self.next)
                    .ok_or_else(|| {
                        format!(
                            "worker {wi}: job {:?} with a payload not ours",
                            String::from_utf8_lossy(handle)
                        )
                    })?;
                let e = &mut self.exec[id as usize];
                if *e == 0 {
                    self.exec_distinct += 1;
                } else {
                    self.exec_dup += 1;
                }
                *e = e.saturating_add(1);
                if let Some(o) = &self.open {
                    self.assign_ns
                        .push(net.now.saturating_duration_since(o.due(id)).as_nanos() as u64);
                }
                let reply: &[u8] = if self.mode == Mode::Bg { &[] } else { data };
                let conn = self.workers[wi].conn;
                if self.mode == Mode::Coalesce
                    && (self.created_per[id as usize] as usize) < self.clients.len()
                {
                    let w = &mut self.workers[wi];
                    w.state = WState::Holding;
                    w.held = Some((handle.into(), id, reply.to_vec()));
                } else {
                    self.complete(net, conn, handle, reply);
                }
            }
            PacketType::NoJob => {
                if self.workers[wi].state != WState::Grabbing {
                    return Err(format!(
                        "worker {wi}: NO_JOB while {:?}",
                        self.workers[wi].state
                    ));
                }
                encode_request(net.out(self.workers[wi].conn), PacketType::PreSleep, &[]);
                self.workers[wi].state = WState::Sleeping;
            }
            PacketType::Noop => {
                // A NOOP while not asleep is harmless (a wake-up that crossed our GRAB).
                if self.workers[wi].state == WState::Sleeping {
                    encode_request(net.out(self.workers[wi].conn), self.grab(), &[]);
                    self.workers[wi].state = WState::Grabbing;
                }
            }
            PacketType::EchoRes if self.barrier.echoes_due > 0 => {
                self.barrier.echoes_due -= 1;
                if self.barrier.echoes_due == 0 {
                    self.submit_barrier(net);
                }
            }
            PacketType::Error => {
                return Err(format!(
                    "worker {wi}: ERROR {} {}",
                    String::from_utf8_lossy(p.arg(0)),
                    String::from_utf8_lossy(p.arg(1))
                ));
            }
            t => return Err(format!("worker {wi}: unexpected {}", t.name())),
        }
        Ok(())
    }

    /// Coalesce: the last client of `id` has its JOB_CREATED; release the worker(s) holding it.
    fn release(&mut self, net: &mut Net, id: u32) {
        for wi in 0..self.workers.len() {
            if self.workers[wi].held.as_ref().is_some_and(|h| h.1 == id) {
                let (handle, _, reply) = self.workers[wi].held.take().unwrap();
                self.workers[wi].state = WState::Grabbing;
                let conn = self.workers[wi].conn;
                self.complete(net, conn, &handle, &reply);
            }
        }
    }

    fn on_client(
        &mut self,
        net: &mut Net,
        ci: usize,
        p: &gearshift::protocol::Packet<'_>,
    ) -> Result<(), String> {
        match p.ty {
            PacketType::JobCreated => {
                let (id, t) = self.clients[ci].awaiting.pop_front().ok_or_else(|| {
                    format!("client {ci}: JOB_CREATED with no submission waiting")
                })?;
                if id == BARRIER_ID {
                    self.barrier.created = true;
                    return Ok(());
                }
                self.created += 1;
                if self.created as usize * 10 >= self.total as usize * self.next_tenth
                    && self.next_tenth <= 10
                {
                    self.tenths[self.next_tenth] = Some(net.now);
                    self.next_tenth += 1;
                }
                let handle = p.arg(0);
                match self.mode {
                    Mode::Bg => {
                        self.clients[ci].inflight -= 1;
                        if self.open.is_none() {
                            self.refill(net, ci);
                        }
                    }
                    Mode::Fg => {
                        self.clients[ci].handles.insert(handle.into(), (id, t));
                    }
                    Mode::Coalesce => {
                        self.clients[ci].handles.insert(handle.into(), (id, t));
                        match self.first_handle.get(&id) {
                            None => {
                                self.first_handle.insert(id, handle.into());
                            }
                            Some(h) if h.as_slice() != handle => self.handle_mismatch += 1,
                            Some(_) => {}
                        }
                        let c = &mut self.created_per[id as usize];
                        *c += 1;
                        if *c as usize == self.clients.len() {
                            self.release(net, id);
                        }
                    }
                }
            }
            PacketType::WorkComplete => {
                let handle = p.arg(0);
                let data = p.arg(1);
                let (id, t) = self.clients[ci].handles.remove(handle).ok_or_else(|| {
                    format!(
                        "client {ci}: WORK_COMPLETE for unknown handle {:?}",
                        String::from_utf8_lossy(handle)
                    )
                })?;
                if !self.payloads.check(id, data) {
                    self.bad_results += 1;
                }
                self.lat_ns
                    .push(net.now.duration_since(t).as_nanos() as u64);
                let r = &mut self.results[id as usize];
                *r = r.saturating_add(1);
                let k = if self.mode == Mode::Coalesce {
                    self.clients.len() as u16
                } else {
                    1
                };
                if *r == 1 {
                    self.results_distinct += 1;
                }
                if *r > k {
                    self.results_dup += 1;
                }
                if self.mode == Mode::Coalesce {
                    if *r == k {
                        self.groups_done += 1;
                        self.first_handle.remove(&id);
                        self.start_group(net);
                    }
                } else {
                    self.clients[ci].inflight -= 1;
                    if self.open.is_none() {
                        self.refill(net, ci);
                    }
                }
            }
            PacketType::WorkFail | PacketType::WorkException => {
                return Err(format!("client {ci}: {} for a job", p.ty.name()));
            }
            PacketType::WorkData | PacketType::WorkWarning | PacketType::WorkStatus => {}
            PacketType::Error => {
                return Err(format!(
                    "client {ci}: ERROR {} {}",
                    String::from_utf8_lossy(p.arg(0)),
                    String::from_utf8_lossy(p.arg(1))
                ));
            }
            t => return Err(format!("client {ci}: unexpected {}", t.name())),
        }
        Ok(())
    }

    /// Lost and duplicated jobs, into the result.
    fn count(&self, r: &mut RunResult) {
        let n = self.next as usize;
        match self.mode {
            Mode::Bg => {
                r.lost = self.exec[..n].iter().filter(|&&e| e == 0).count() as u64;
                r.dup = self.exec_dup;
                if self.created != self.submitted {
                    r.errors.push(format!(
                        "{} of {} submissions never got JOB_CREATED",
                        self.submitted - self.created,
                        self.submitted
                    ));
                }
            }
            Mode::Fg => {
                r.lost = self.results[..n].iter().filter(|&&e| e == 0).count() as u64;
                r.dup = self.exec_dup + self.results_dup;
            }
            Mode::Coalesce => {
                let k = self.clients.len() as u16;
                r.lost = self.results[..n].iter().filter(|&&e| e < k).count() as u64;
                r.dup = self.exec_dup + self.results_dup;
                if self.handle_mismatch > 0 {
                    r.errors.push(format!(
                        "{} JOB_CREATED handles differed from the first client's for the same unique",
                        self.handle_mismatch
                    ));
                }
            }
        }
        if self.bad_results > 0 {
            r.errors.push(format!(
                "{} results differed from their payload",
                self.bad_results
            ));
        }
    }

    /// Latency percentiles in µs: p50, p99, p99.9.
    fn percentiles(&mut self) -> (f64, f64, f64) {
        self.lat_ns.sort_unstable();
        let at = |q: f64| -> f64 {
            if self.lat_ns.is_empty() {
                return f64::NAN;
            }
            let i =
                ((self.lat_ns.len() as f64 * q).ceil() as usize).clamp(1, self.lat_ns.len()) - 1;
            self.lat_ns[i] as f64 / 1000.0
        };
        (at(0.50), at(0.99), at(0.999))
    }

    /// Open loop figures: the offered rate, latency from the due time (fg: to the result; bg:
    /// to the worker's JOB_ASSIGN), due time to JOB_ASSIGN (fg), and the late sends.
    fn add_open(&mut self, r: &mut RunResult) {
        let Some(o) = &self.open else { return };
        let (rate, late, lag_max, lag_mean) = (
            o.rate,
            o.late,
            o.lag_max_ns as f64 / 1000.0,
            o.lag_sum_ns as f64 / 1000.0 / self.next.max(1) as f64,
        );
        let lat = if self.mode == Mode::Bg {
            &mut self.assign_ns
        } else {
            &mut self.lat_ns
        };
        lat.sort_unstable();
        r.add("p50_us", "µs", quantile_us(lat, 0.5), Better::Lower);
        r.add("p90_us", "µs", quantile_us(lat, 0.9), Better::Lower);
        r.add("p99_us", "µs", quantile_us(lat, 0.99), Better::Lower);
        r.add("p999_us", "µs", quantile_us(lat, 0.999), Better::Lower);
        r.add("max_us", "µs", quantile_us(lat, 1.0), Better::Lower);
        if self.mode == Mode::Fg {
            self.assign_ns.sort_unstable();
            r.add(
                "assign_p50_us",
                "µs",
                quantile_us(&self.assign_ns, 0.5),
                Better::Lower,
            );
            r.add(
                "assign_p99_us",
                "µs",
                quantile_us(&self.assign_ns, 0.99),
                Better::Lower,
            );
        }
        r.add("offered_per_s", "jobs/s", rate, Better::Neither);
        r.add("late_sends", "sends", late as f64, Better::Lower);
        r.add("send_lag_max_us", "µs", lag_max, Better::Lower);
        r.add("send_lag_mean_us", "µs", lag_mean, Better::Lower);
    }
}

/// The `q` quantile of sorted nanoseconds, in µs (NaN when empty).
fn quantile_us(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

impl Logic for GearLoad {
    fn on_frame(&mut self, net: &mut Net, id: usize, frame: &Frame<'_>) -> Result<(), String> {
        let Frame::Packet(p) = frame else {
            return Err(format!("connection {id}: unexpected text line"));
        };
        match self.roles.get(id).copied().unwrap_or(Role::None) {
            Role::Client(ci) => self.on_client(net, ci, p),
            Role::Worker(wi) => self.on_worker(net, wi, p),
            Role::None => Err(format!("idle connection {id} got {}", p.ty.name())),
        }
    }

    fn is_done(&self) -> bool {
        match self.goal {
            Goal::Created => self.created >= self.total as u64,
            Goal::Executed => self.exec_distinct >= self.total as u64,
            Goal::Completed => self.results_distinct >= self.total as u64,
            Goal::Groups => self.groups_done >= self.total as u64,
            // Also every JOB_CREATED in: with several shards a job can run before its
            // JOB_CREATED (queued behind other answers) reaches the client.
            Goal::Quiet => {
                self.created >= self.submitted
                    && self.workers.iter().all(|w| w.state == WState::Sleeping)
            }
            Goal::Stored => self.barrier.created,
            Goal::BarrierRan => self.barrier.ran,
        }
    }

    fn progress(&self) -> (u64, u64) {
        let done = match self.goal {
            Goal::Created => self.created,
            Goal::Executed => self.exec_distinct,
            Goal::Completed => self.results_distinct,
            Goal::Groups => self.groups_done,
            Goal::Quiet => 0,
            Goal::Stored => self.barrier.created as u64,
            Goal::BarrierRan => self.barrier.ran as u64,
        };
        (done, self.total as u64)
    }

    fn on_tick(&mut self, net: &mut Net) -> Result<(), String> {
        self.send_due(net);
        Ok(())
    }

    fn ticks(&self) -> Option<(Instant, Duration)> {
        let o = self.open.as_ref()?;
        if o.t0.is_none() || self.next >= self.total {
            return None;
        }
        let period = Duration::from_nanos(o.period_ns).max(self.tick);
        Some((o.due(1), period))
    }
}

// ---------------------------------------------------------------------------------------------
// Idle connections (conns) and echo round trips (ceiling).

/// Opens idle connections, each proved accepted by one ECHO_REQ answered, keeping at most
/// `batch` unanswered so the server's accept queue (gearmand's backlog is 32) never overflows.
struct IdleOpener {
    addr: SocketAddr,
    want: usize,
    opened: usize,
    answered: usize,
    batch: usize,
}

impl IdleOpener {
    fn open_more(&mut self, net: &mut Net) -> Result<(), String> {
        while self.opened - self.answered < self.batch && self.opened < self.want {
            let id = net
                .connect(self.addr, IDLE_BUF)
                .map_err(|e| format!("idle connection {}: connect: {e}", self.opened))?;
            encode_request(net.out(id), PacketType::EchoReq, &[b"idle"]);
            self.opened += 1;
        }
        Ok(())
    }
}

impl Logic for IdleOpener {
    fn on_frame(&mut self, net: &mut Net, id: usize, frame: &Frame<'_>) -> Result<(), String> {
        match frame {
            Frame::Packet(p) if p.ty == PacketType::EchoRes => {
                self.answered += 1;
                self.open_more(net)
            }
            _ => Err(format!(
                "idle connection {id}: unexpected answer to ECHO_REQ"
            )),
        }
    }

    fn is_done(&self) -> bool {
        self.answered >= self.want
    }

    fn progress(&self) -> (u64, u64) {
        (self.answered as u64, self.want as u64)
    }
}

/// Echo round trips: each connection keeps `depth` ECHO_REQ packets in flight; every answer
/// is checked against what was sent.
struct EchoLoad {
    total: u32,
    next: u32,
    done: u64,
    depth: usize,
    payloads: Payloads,
    scratch: Vec<u8>,
    /// Per connection: (job, send time) in order.
    fifo: Vec<VecDeque<(u32, Instant)>>,
    lat_ns: Vec<u64>,
    bad: u64,
}

impl EchoLoad {
    fn send(&mut self, net: &mut Net, conn: usize) {
        while self.fifo[conn].len() < self.depth && self.next < self.total {
            let id = self.next;
            self.next += 1;
            self.payloads.make(id, &mut self.scratch);
            encode_request(net.out(conn), PacketType::EchoReq, &[&self.scratch]);
            self.fifo[conn].push_back((id, net.now));
        }
    }
}

impl Logic for EchoLoad {
    fn on_frame(&mut self, net: &mut Net, id: usize, frame: &Frame<'_>) -> Result<(), String> {
        let Frame::Packet(p) = frame else {
            return Err(format!("echo connection {id}: text line"));
        };
        // A raw echo returns our request as is; a Gearman server answers ECHO_RES.
        if p.ty != PacketType::EchoReq && p.ty != PacketType::EchoRes {
            return Err(format!("echo connection {id}: unexpected {}", p.ty.name()));
        }
        let (job, t) = self.fifo[id]
            .pop_front()
            .ok_or_else(|| format!("echo connection {id}: answer with nothing sent"))?;
        if !self.payloads.check(job, p.arg(0)) {
            self.bad += 1;
        }
        self.lat_ns
            .push(net.now.duration_since(t).as_nanos() as u64);
        self.done += 1;
        self.send(net, id);
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.done >= self.total as u64
    }

    fn progress(&self) -> (u64, u64) {
        (self.done, self.total as u64)
    }
}

// ---------------------------------------------------------------------------------------------
// Running a scenario.

/// Runs one scenario once against one target. Never panics on server misbehaviour: every
/// failure ends up in the result's errors.
pub fn run(s: Scenario, p: &Params, t: &Target, round: usize) -> RunResult {
    let mut r = RunResult {
        scenario: s.name().into(),
        target: t.name.clone(),
        round,
        jobs: p.jobs as u64,
        ..Default::default()
    };
    let deadline = Instant::now() + p.timeout;
    let label = format!("{} {} round {round}", s.name(), t.name);
    let out = match s {
        Scenario::Bg => run_bg(p, t, deadline, &label, &mut r),
        Scenario::Fg => run_fg(p, t, deadline, &label, &mut r, "").map(|_| ()),
        Scenario::Fill => run_fill(p, t, deadline, &label, &mut r),
        Scenario::Coalesce => run_coalesce(p, t, deadline, &label, &mut r),
        Scenario::Conns => run_conns(p, t, deadline, &label, &mut r),
        Scenario::Ceiling => run_ceiling(p, deadline, &label, &mut r),
        Scenario::Soak => Err("soak runs through soak::run".into()),
        Scenario::Handshake => run_handshake(p, t, deadline, &mut r),
    };
    if let Err(e) = out {
        r.errors.push(e);
    }
    r
}

fn stop_msg(e: Stop, what: &str, progress: (u64, u64), timeout: Duration) -> String {
    match e {
        Stop::Timeout => format!(
            "{what}: timed out (run limit {} s) at {}/{}",
            timeout.as_secs(),
            progress.0,
            progress.1
        ),
        Stop::Error(e) => format!("{what}: {e}"),
    }
}

/// Runs `logic` to its goal; on failure the error names the phase and how far it got.
fn drive<L: Logic>(
    net: &mut Net,
    logic: &mut L,
    deadline: Instant,
    label: &str,
    phase: &str,
    p: &Params,
) -> Result<(), String> {
    let mut prog = Progress::new(format!("{label} {phase}"), p.progress);
    net.run(logic, deadline, &mut prog)
        .map_err(|e| stop_msg(e, phase, logic.progress(), p.timeout))
}

/// Waits until every worker sleeps (registration done, or queue drained). Up to 2 s.
fn settle(net: &mut Net, load: &mut GearLoad, deadline: Instant, r: &mut RunResult, what: &str) {
    load.goal = Goal::Quiet;
    let until = deadline.min(Instant::now() + Duration::from_secs(2));
    let mut prog = Progress::new(String::new(), false);
    if let Err(e) = net.run(load, until, &mut prog) {
        match e {
            Stop::Timeout => r
                .notes
                .push(format!("{what}: workers not all asleep after 2 s")),
            Stop::Error(e) => r.errors.push(format!("{what}: {e}")),
        }
    }
}

fn rss_mb(t: &Target) -> f64 {
    t.rss_kb().map(|k| k as f64 / 1024.0).unwrap_or(f64::NAN)
}

/// Percent of a core other processes may use during a measured phase before the run gets a
/// note saying its figures are disturbed.
const OTHER_CPU_NOTE_PCT: f64 = 10.0;

/// Records what other processes used during a measured phase, with a note if it was much.
fn add_other(r: &mut RunResult, m: &Measured, key: &'static str) {
    let o = m.other_core_pct();
    r.add(key, "% of one core", o, Better::Neither);
    if o > OTHER_CPU_NOTE_PCT {
        r.disturbed = true;
        r.notes.push(format!(
            "other processes used {o:.0}% of a core during the measured phase ({key}): figures disturbed"
        ));
    }
}

fn add_cpu(r: &mut RunResult, m: &Measured, n: u64, per: &'static str) {
    r.add(
        "server_cpu_us_per_job",
        per,
        m.server_us_per(n),
        Better::Lower,
    );
    r.add(
        "server_user_pct",
        "% of server CPU in user space",
        m.server_user_pct(),
        Better::Neither,
    );
    r.add(
        "server_core_pct",
        "% of one core",
        m.server_core_pct(),
        Better::Neither,
    );
    if m.store.is_some() {
        r.add(
            "store_cpu_us_per_job",
            per,
            m.store_us_per(n),
            Better::Lower,
        );
    }
    r.add(
        "harness_cpu_us_per_job",
        per,
        m.harness_us_per(n),
        Better::Lower,
    );
    add_other(r, m, "other_cpu_pct");
}

fn run_bg(
    p: &Params,
    t: &Target,
    deadline: Instant,
    label: &str,
    r: &mut RunResult,
) -> Result<(), String> {
    let mut net = Net::new(t.tls.clone()).map_err(|e| e.to_string())?;
    let mut load = GearLoad::new(Mode::Bg, p);
    load.add_clients(&mut net, t.addr, p.clients)?;
    load.add_workers(&mut net, t.addr, p.workers)?;
    settle(&mut net, &mut load, deadline, r, "registration");
    let m = Meter::start(t);
    load.goal = Goal::Executed;
    load.start(&mut net);
    let res = drive(&mut net, &mut load, deadline, label, "jobs", p);
    let meas = m.stop(t);
    let rss = rss_mb(t);
    if res.is_ok() {
        settle(&mut net, &mut load, deadline, r, "drain");
    }
    load.count(r);
    res?;
    let n = load.total as u64;
    r.add("jobs_per_s", "jobs/s", n as f64 / meas.secs, Better::Higher);
    load.add_open(r);
    add_cpu(r, &meas, n, "µs/job");
    r.add("server_rss_mb", "MiB", rss, Better::Lower);
    r.add("elapsed_s", "s", meas.secs, Better::Neither);
    Ok(())
}

/// fg load; `suffix` distinguishes the two fg phases of `conns` in metric keys.
fn run_fg(
    p: &Params,
    t: &Target,
    deadline: Instant,
    label: &str,
    r: &mut RunResult,
    suffix: &str,
) -> Result<(), String> {
    let mut net = Net::new(t.tls.clone()).map_err(|e| e.to_string())?;
    fg_on(&mut net, p, t, deadline, label, r, suffix)
}

fn fg_on(
    net: &mut Net,
    p: &Params,
    t: &Target,
    deadline: Instant,
    label: &str,
    r: &mut RunResult,
    suffix: &str,
) -> Result<(), String> {
    let mut load = GearLoad::new(Mode::Fg, p);
    load.add_clients(net, t.addr, p.clients)?;
    load.add_workers(net, t.addr, p.workers)?;
    settle(net, &mut load, deadline, r, "registration");
    let m = Meter::start(t);
    load.goal = Goal::Completed;
    load.start(net);
    let res = drive(net, &mut load, deadline, label, "jobs", p);
    let meas = m.stop(t);
    let rss = rss_mb(t);
    if res.is_ok() {
        settle(net, &mut load, deadline, r, "drain");
    }
    let mut sub = RunResult::default();
    load.count(&mut sub);
    r.lost += sub.lost;
    r.dup += sub.dup;
    r.errors.extend(sub.errors);
    res?;
    let n = load.total as u64;
    let (p50, p99, p999) = load.percentiles();
    if suffix.is_empty() {
        r.add("jobs_per_s", "jobs/s", n as f64 / meas.secs, Better::Higher);
        if load.open.is_some() {
            load.add_open(r);
        } else {
            r.add("p50_us", "µs", p50, Better::Lower);
            r.add("p99_us", "µs", p99, Better::Lower);
            r.add("p999_us", "µs", p999, Better::Lower);
        }
        add_cpu(r, &meas, n, "µs/job");
        r.add("server_rss_mb", "MiB", rss, Better::Lower);
    } else {
        // conns: "_base" (no idle connections) and "_idle" (with them).
        let k = |a: &'static str, b: &'static str| if suffix == "_base" { a } else { b };
        r.add(
            k("jobs_per_s_base", "jobs_per_s_idle"),
            "jobs/s",
            n as f64 / meas.secs,
            Better::Higher,
        );
        r.add(k("p99_us_base", "p99_us_idle"), "µs", p99, Better::Lower);
        r.add(
            k("server_cpu_us_per_job_base", "server_cpu_us_per_job_idle"),
            "µs/job",
            meas.server_us_per(n),
            Better::Lower,
        );
        add_other(r, &meas, k("other_cpu_pct_base", "other_cpu_pct_idle"));
    }
    Ok(())
}

fn run_fill(
    p: &Params,
    t: &Target,
    deadline: Instant,
    label: &str,
    r: &mut RunResult,
) -> Result<(), String> {
    let mut net = Net::new(t.tls.clone()).map_err(|e| e.to_string())?;
    let mut load = GearLoad::new(Mode::Bg, p);
    load.add_clients(&mut net, t.addr, p.clients)?;
    let rss0 = t.rss_kb();
    let m = Meter::start(t);
    load.goal = Goal::Created;
    load.start(&mut net);
    let res = drive(&mut net, &mut load, deadline, label, "fill", p);
    let fill = m.stop(t);
    let rss1 = t.rss_kb();
    if let Err(e) = res {
        load.count(r);
        return Err(e);
    }
    // Drain (with a store: until the store has the deletes too).
    let m2 = Meter::start(t);
    load.add_workers(&mut net, t.addr, p.workers)?;
    load.goal = Goal::Executed;
    let mut res = drive(&mut net, &mut load, deadline, label, "drain", p);
    if res.is_ok() && p.durable {
        load.start_barrier(&mut net);
        load.goal = Goal::Stored;
        res = drive(&mut net, &mut load, deadline, label, "drain stored", p);
    }
    let drain = m2.stop(t);
    if res.is_ok() && p.durable {
        // Not measured: a worker takes the barrier job, so no row is left behind.
        load.goal = Goal::BarrierRan;
        res = drive(&mut net, &mut load, deadline, label, "drain barrier", p);
    }
    if res.is_ok() {
        settle(&mut net, &mut load, deadline, r, "drain");
    }
    let rss2 = t.rss_kb();
    load.count(r);
    res?;
    let n = load.total as u64;
    let tenth = |a: usize, b: usize| -> f64 {
        match (load.tenths[a], load.tenths[b]) {
            (Some(x), Some(y)) => {
                let jobs = (n * b as u64 / 10) - (n * a as u64 / 10);
                jobs as f64 / y.duration_since(x).as_secs_f64()
            }
            _ => f64::NAN,
        }
    };
    let first = tenth(0, 1);
    let last = tenth(9, 10);
    r.add(
        "fill_jobs_per_s",
        "submits/s",
        n as f64 / fill.secs,
        Better::Higher,
    );
    r.add("first_tenth_per_s", "submits/s", first, Better::Higher);
    r.add("last_tenth_per_s", "submits/s", last, Better::Higher);
    r.add(
        "last_over_first_pct",
        "%",
        100.0 * last / first,
        Better::Higher,
    );
    let per_job = match (rss0, rss1) {
        (Some(a), Some(b)) => (b.saturating_sub(a) * 1024) as f64 / n as f64,
        _ => f64::NAN,
    };
    r.add("bytes_per_queued_job", "bytes", per_job, Better::Lower);
    r.add(
        "server_cpu_us_per_submit",
        "µs/submit",
        fill.server_us_per(n),
        Better::Lower,
    );
    if fill.store.is_some() {
        r.add(
            "store_cpu_us_per_submit",
            "µs/submit",
            fill.store_us_per(n),
            Better::Lower,
        );
    }
    r.add(
        "harness_cpu_us_per_submit",
        "µs/submit",
        fill.harness_us_per(n),
        Better::Lower,
    );
    add_other(r, &fill, "other_cpu_pct_fill");
    r.add(
        "drain_jobs_per_s",
        "jobs/s",
        n as f64 / drain.secs,
        Better::Higher,
    );
    r.add(
        "server_cpu_us_per_drained_job",
        "µs/job",
        drain.server_us_per(n),
        Better::Lower,
    );
    if drain.store.is_some() {
        r.add(
            "store_cpu_us_per_drained_job",
            "µs/job",
            drain.store_us_per(n),
            Better::Lower,
        );
    }
    add_other(r, &drain, "other_cpu_pct_drain");
    let mb = |k: Option<u64>| k.map(|k| k as f64 / 1024.0).unwrap_or(f64::NAN);
    r.add("rss_full_mb", "MiB", mb(rss1), Better::Lower);
    r.add("rss_drained_mb", "MiB", mb(rss2), Better::Lower);
    Ok(())
}

fn run_coalesce(
    p: &Params,
    t: &Target,
    deadline: Instant,
    label: &str,
    r: &mut RunResult,
) -> Result<(), String> {
    let mut net = Net::new(t.tls.clone()).map_err(|e| e.to_string())?;
    let mut load = GearLoad::new(Mode::Coalesce, p);
    load.add_clients(&mut net, t.addr, p.clients.max(2))?;
    load.add_workers(&mut net, t.addr, p.workers)?;
    settle(&mut net, &mut load, deadline, r, "registration");
    let m = Meter::start(t);
    load.goal = Goal::Groups;
    load.start(&mut net);
    let res = drive(&mut net, &mut load, deadline, label, "uniques", p);
    let meas = m.stop(t);
    if res.is_ok() {
        settle(&mut net, &mut load, deadline, r, "drain");
    }
    load.count(r);
    res?;
    let n = load.total as u64;
    let (_, p99, _) = load.percentiles();
    r.add(
        "uniques_per_s",
        "uniques/s",
        n as f64 / meas.secs,
        Better::Higher,
    );
    r.add(
        "results_per_s",
        "results/s",
        load.lat_ns.len() as f64 / meas.secs,
        Better::Higher,
    );
    r.add(
        "runs_per_unique",
        "runs",
        (load.exec_distinct + load.exec_dup) as f64 / n as f64,
        Better::Neither,
    );
    r.add("p99_us", "µs", p99, Better::Lower);
    r.add(
        "server_cpu_us_per_unique",
        "µs/unique",
        meas.server_us_per(n),
        Better::Lower,
    );
    r.add(
        "harness_cpu_us_per_unique",
        "µs/unique",
        meas.harness_us_per(n),
        Better::Lower,
    );
    add_other(r, &meas, "other_cpu_pct");
    Ok(())
}

/// Makes sure this process may open the idle connections of `conns` (and the rest): raises the
/// soft open-files limit if needed, which servers started afterwards inherit.
pub fn ensure_fd_limit(p: &Params) -> Result<(), String> {
    let need = p.idle_conns as u64 + (p.clients + p.workers) as u64 * 2 + 64;
    match procstat::open_files_limit() {
        Some(l) if l < need => gearshift::sys::set_file_limit(need).map_err(|e| {
            format!("the open-files limit is {l}, {need} are needed and raising it failed ({e}): run `ulimit -n {need}` first")
        }),
        _ => Ok(()),
    }
}

fn run_conns(
    p: &Params,
    t: &Target,
    deadline: Instant,
    label: &str,
    r: &mut RunResult,
) -> Result<(), String> {
    ensure_fd_limit(p)?;
    run_fg(p, t, deadline, label, r, "_base")?;
    let mut net = Net::new(t.tls.clone()).map_err(|e| e.to_string())?;
    let rss0 = t.rss_kb();
    let t0 = Instant::now();
    let mut opener = IdleOpener {
        addr: t.addr,
        want: p.idle_conns,
        opened: 0,
        answered: 0,
        batch: 16,
    };
    opener.open_more(&mut net)?;
    drive(
        &mut net,
        &mut opener,
        deadline,
        label,
        "idle connections",
        p,
    )?;
    let open_secs = t0.elapsed().as_secs_f64();
    let rss1 = t.rss_kb();
    fg_on(&mut net, p, t, deadline, label, r, "_idle")?;
    let base = r.get("jobs_per_s_base").unwrap_or(f64::NAN);
    let idle = r.get("jobs_per_s_idle").unwrap_or(f64::NAN);
    r.add(
        "idle_over_base_pct",
        "%",
        100.0 * idle / base,
        Better::Higher,
    );
    r.add(
        "idle_conns",
        "connections",
        p.idle_conns as f64,
        Better::Neither,
    );
    r.add(
        "opens_per_s",
        "connections/s",
        p.idle_conns as f64 / open_secs,
        Better::Higher,
    );
    let per = match (rss0, rss1) {
        (Some(a), Some(b)) => (b.saturating_sub(a) * 1024) as f64 / p.idle_conns.max(1) as f64,
        _ => f64::NAN,
    };
    r.add("bytes_per_idle_conn", "bytes", per, Better::Lower);
    r.add("server_rss_mb", "MiB", rss_mb(t), Better::Lower);
    Ok(())
}

/// Connections (and handshakes) per second, one at a time, each proved by an ECHO.
fn run_handshake(
    p: &Params,
    t: &Target,
    deadline: Instant,
    r: &mut RunResult,
) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut echo = Vec::new();
    gearshift::protocol::encode_request(
        &mut echo,
        gearshift::protocol::PacketType::EchoReq,
        &[b"x"],
    );
    // Every handshake a full one: no session resumption.
    let full = t.tls.as_ref().map(|c| {
        let mut c = (**c).clone();
        c.resumption = rustls::client::Resumption::disabled();
        std::sync::Arc::new(c)
    });
    let n = p.jobs as u64;
    let m = Meter::start(t);
    for i in 0..n {
        if Instant::now() > deadline {
            return Err(format!("timed out after {i} connections"));
        }
        let e = |e: std::io::Error| format!("connection {i}: {e}");
        let mut s =
            std::net::TcpStream::connect_timeout(&t.addr, Duration::from_secs(5)).map_err(e)?;
        s.set_nodelay(true).map_err(e)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(e)?;
        let mut answer = [0u8; 13];
        match &t.tls {
            None => {
                s.write_all(&echo).map_err(e)?;
                s.read_exact(&mut answer).map_err(e)?;
            }
            Some(config) => {
                let name = rustls::pki_types::ServerName::from(t.addr.ip());
                let mut tls =
                    rustls::ClientConnection::new(full.clone().unwrap_or(config.clone()), name)
                        .map_err(|x| format!("connection {i}: {x}"))?;
                let mut stream = rustls::Stream::new(&mut tls, &mut s);
                stream.write_all(&echo).map_err(e)?;
                stream.read_exact(&mut answer).map_err(e)?;
            }
        }
        if answer[12] != b'x' {
            return Err(format!("connection {i}: a wrong ECHO_RES"));
        }
    }
    let meas = m.stop(t);
    r.add(
        "jobs_per_s",
        "connections/s",
        n as f64 / meas.secs,
        Better::Higher,
    );
    add_cpu(r, &meas, n, "µs/connection");
    Ok(())
}

fn run_ceiling(
    p: &Params,
    deadline: Instant,
    label: &str,
    r: &mut RunResult,
) -> Result<(), String> {
    let echo = EchoServer::start(p.echo_io_uring).map_err(|e| format!("echo server: {e}"))?;
    let t = Target {
        name: "echo".into(),
        addr: echo.addr,
        cpu: CpuSource::Thread(echo.tid),
        rss_pid: None,
        store_pid: None,
        tls: None,
    };
    let mut net = Net::new(t.tls.clone()).map_err(|e| e.to_string())?;
    let conns = p.clients.max(1);
    for _ in 0..conns {
        net.connect(t.addr, BUSY_BUF)
            .map_err(|e| format!("connect: {e}"))?;
    }
    let mut load = EchoLoad {
        total: p.jobs,
        next: 0,
        done: 0,
        depth: p.depth.max(1),
        payloads: Payloads::new(p.payload),
        scratch: Vec::new(),
        fifo: vec![VecDeque::new(); conns],
        lat_ns: Vec::with_capacity(p.jobs as usize),
        bad: 0,
    };
    let m = Meter::start(&t);
    net.now = Instant::now();
    for c in 0..conns {
        load.send(&mut net, c);
    }
    let res = drive(&mut net, &mut load, deadline, label, "round trips", p);
    let meas = m.stop(&t);
    r.lost = load.next as u64 - load.done;
    if load.bad > 0 {
        r.errors
            .push(format!("{} echoes differed from what was sent", load.bad));
    }
    res?;
    let n = load.done;
    load.lat_ns.sort_unstable();
    let at = |q: f64| {
        let i = ((n as f64 * q).ceil() as usize).clamp(1, n as usize) - 1;
        load.lat_ns[i] as f64 / 1000.0
    };
    r.add(
        "jobs_per_s",
        "round trips/s",
        n as f64 / meas.secs,
        Better::Higher,
    );
    r.add("p50_us", "µs", at(0.5), Better::Lower);
    r.add("p99_us", "µs", at(0.99), Better::Lower);
    r.add("p999_us", "µs", at(0.999), Better::Lower);
    add_cpu(r, &meas, n, "µs/round trip");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_and_checks_its_job() {
        let p = Payloads::new(64);
        let mut b = Vec::new();
        p.make(0xdead_beef, &mut b);
        assert_eq!(b.len(), 64);
        assert_eq!(Payloads::id_of(&b), Some(0xdead_beef));
        assert!(p.check(0xdead_beef, &b));
        assert!(!p.check(1, &b));
        b[40] ^= 1;
        assert!(!p.check(0xdead_beef, &b));
        assert_eq!(Payloads::new(2).template.len(), ID_LEN);
    }
}
