//! A whole server, in this process, fed by several connections at once.
//!
//! Two servers start once per process (4 shards with `--handoff all`, 3 shards with
//! `--handoff off`) on loopback port 0. Each input picks one and is a script: which of six
//! connections writes which bytes (Gearman requests with small function and unique pools so
//! jobs meet, admin lines, garbage), where its stream is cut into writes, pauses that let the
//! shards read partial frames, sync points (an ECHO round trip that reads every answer so far,
//! from which job handles are learned for later WORK_*, GET_STATUS and `cancel job`) and
//! closes at any moment. Then every connection closes and the checks run:
//!
//! - no panic on any shard thread (a panic hook aborts the process, which libFuzzer reports);
//! - the server still answers (`getpid`), and the closes take effect: no worker and no running
//!   job remains, within a deadline (a stall fails the input);
//! - `status` totals, `prioritystatus` queues, `show jobs` and `show unique jobs` agree;
//! - no foreground job is left (nobody waits for one), every job left is a background job, and
//!   every background job whose JOB_CREATED was read is still there unless the script could
//!   have ended it (a WORK_COMPLETE/FAIL/EXCEPTION or `cancel job` naming it, garbage holding
//!   its handle or its unique, or a foreground submit of the same unique);
//! - the process's RSS stays under a fixed bound.
//!
//! Then the server is reset (every job cancelled, every function dropped) so inputs stay
//! independent: function names repeat across inputs, so their owners do too.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use gearshift::config::{self, Parsed};
use gearshift::protocol::{self, Decoded, PacketType as T};
use gearshift::server::{self, Server};
use libfuzzer_sys::fuzz_target;

/// Connections per input.
const PEERS: usize = 6;
/// `--max-packet-size` and `--max-line` of the servers: small, so announced bodies cost little
/// (buffers for announced, unsent bodies are a separate concern) and limits are reached.
const MAX_PACKET: usize = 256 << 10;
const MAX_LINE: usize = 2048;
/// The process may hold at most this much memory (libFuzzer's own limit is set above it).
const RSS_LIMIT: u64 = 1536 << 20;
/// How long an answer may take before the server counts as stalled.
const DEADLINE: Duration = Duration::from_secs(10);
const FUNCTIONS: [&[u8]; 5] = [b"f0", b"f1", b"f2", b"f3", b"F0"];
const PREFIX: &str = "H:fz";

// ---------------------------------------------------------------------------------------------
// The script.

#[derive(Arbitrary, Debug)]
struct Script {
    server: bool,
    actions: Vec<Action>,
}

#[derive(Arbitrary, Debug)]
enum Action {
    /// Queue a request on a connection (written by a later Write, Sync or Close).
    Send { peer: u8, req: Req },
    /// Queue an admin line.
    Admin { peer: u8, cmd: AdminCmd },
    /// Queue raw bytes.
    Raw { peer: u8, bytes: Vec<u8> },
    /// Write the first bytes of what is queued: frames cut at any point.
    Write { peer: u8, upto: u16 },
    /// Let the shards read what was written (and see frames half sent).
    Pause,
    /// Write everything queued, complete a half-sent frame, and read every answer so far.
    Sync { peer: u8 },
    /// Close now, with what is queued written first or not.
    Close { peer: u8, flush: bool },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    Fg,
    Bg,
    High,
    HighBg,
    Low,
    LowBg,
}

#[derive(Arbitrary, Debug)]
enum Unique {
    Empty,
    Dash,
    Pool(u8),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum HandleRef {
    Known(u8),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Number {
    Small(u8),
    Wide(u64),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum When {
    Past,
    InSeconds(u8),
    Far,
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Req {
    Submit {
        kind: Kind,
        function: u8,
        unique: Unique,
        data: Vec<u8>,
    },
    Epoch {
        function: u8,
        unique: Unique,
        when: When,
        data: Vec<u8>,
    },
    Reduce {
        bg: bool,
        function: u8,
        unique: Unique,
        reducer: u8,
        data: Vec<u8>,
    },
    CanDo {
        function: u8,
    },
    CanDoTimeout {
        function: u8,
        ms: Number,
    },
    CantDo {
        function: u8,
    },
    ResetAbilities,
    PreSleep,
    Grab {
        which: u8,
    },
    Work {
        which: u8,
        handle: HandleRef,
        data: Vec<u8>,
    },
    WorkStatus {
        handle: HandleRef,
        numerator: Number,
        denominator: Number,
    },
    GetStatus {
        handle: HandleRef,
    },
    GetStatusUnique {
        unique: Unique,
    },
    Echo {
        data: Vec<u8>,
    },
    SetClientId {
        id: Vec<u8>,
    },
    Option {
        exceptions: bool,
    },
    /// Any type number with any body, request or response magic.
    Other {
        ty: u8,
        response: bool,
        body: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
enum AdminCmd {
    Status,
    PriorityStatus,
    Workers,
    ShowJobs,
    ShowUniqueJobs,
    Cancel(HandleRef),
    Create(u8),
    Drop(u8),
    MaxQueue(u8, Vec<u8>),
    Version,
    GetPid,
    Verbose,
    Queue,
}

// ---------------------------------------------------------------------------------------------
// What the script did, as far as the checks need it.

/// A request whose answer is read at the next sync, in order.
enum Sent {
    /// A submit: JOB_CREATED or ERROR comes back.
    Submit {
        background: bool,
        key: Option<(Vec<u8>, Vec<u8>)>,
    },
    /// Something that may also answer ERROR (or JOB_CREATED), so the window cannot be mapped.
    Ambiguous,
}

#[derive(Default)]
struct Record {
    /// Handles read from JOB_CREATED and JOB_ASSIGN*, for later requests to name.
    handles: Vec<Vec<u8>>,
    /// Background jobs whose JOB_CREATED was read: handle, function, unique.
    background: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    /// (function, unique) of every foreground submit sent.
    foreground: Vec<(Vec<u8>, Vec<u8>)>,
    /// Handles named by requests that can end a job.
    ended: Vec<Vec<u8>>,
    /// Every unique a structured submit sent.
    uniques: Vec<Vec<u8>>,
    /// Bytes the script made up (raw input, other packets, cancel lines): anything in them
    /// may have ended a job or coalesced with one.
    garbage: Vec<Vec<u8>>,
}

struct Peer {
    stream: Option<TcpStream>,
    queued: Vec<u8>,
    /// Bytes written since the last whole frame, to know where the server's parser stands.
    unframed: Vec<u8>,
    /// The last bytes written, to keep `shutdown` out of any stream.
    tail: Vec<u8>,
    /// The stream broke a frame rule: the server closes it.
    rejected: bool,
    window: Vec<Sent>,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            stream: None,
            queued: Vec::new(),
            unframed: Vec::new(),
            tail: Vec::new(),
            rejected: false,
            window: Vec::new(),
        }
    }
}

fn function(i: u8) -> &'static [u8] {
    FUNCTIONS[i as usize % FUNCTIONS.len()]
}

fn unique_bytes(u: &Unique) -> Vec<u8> {
    match u {
        Unique::Empty => Vec::new(),
        Unique::Dash => b"-".to_vec(),
        Unique::Pool(n) => format!("u{}", n % 8).into_bytes(),
        Unique::Bytes(b) => b.clone(),
    }
}

fn number(n: &Number) -> Vec<u8> {
    match n {
        Number::Small(n) => n.to_string().into_bytes(),
        Number::Wide(n) => n.to_string().into_bytes(),
        Number::Bytes(b) => b.clone(),
    }
}

fn handle(record: &Record, h: &HandleRef) -> Vec<u8> {
    match h {
        HandleRef::Known(i) if !record.handles.is_empty() => {
            record.handles[*i as usize % record.handles.len()].clone()
        }
        HandleRef::Known(_) => format!("{PREFIX}:0").into_bytes(),
        HandleRef::Bytes(b) => b.clone(),
    }
}

/// A submit's coalescing key as the server sees it: only a real unique makes one that the
/// checks can follow.
fn key(function: &[u8], unique: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    (!unique.is_empty() && unique != b"-").then(|| (function.to_vec(), unique.to_vec()))
}

fn request(out: &mut Vec<u8>, ty: T, args: &[&[u8]]) {
    protocol::encode_request(out, ty, args);
}

/// Queues a submit and notes what its answer will tell.
fn submit(
    peer: &mut Peer,
    record: &mut Record,
    ty: T,
    bg: bool,
    f: &[u8],
    u: &[u8],
    rest: &[&[u8]],
) {
    record.uniques.push(u.to_vec());
    let mut args: Vec<&[u8]> = vec![f, u];
    args.extend_from_slice(rest);
    request(&mut peer.queued, ty, &args);
    if !bg {
        record.foreground.push((f.to_vec(), u.to_vec()));
    }
    peer.window.push(Sent::Submit {
        background: bg,
        key: key(f, u),
    });
}

/// Queues a request's bytes and notes what its answer will tell.
fn send(peer: &mut Peer, record: &mut Record, req: &Req) {
    match req {
        Req::Submit {
            kind,
            function: f,
            unique,
            data,
        } => {
            let (ty, bg) = match kind {
                Kind::Fg => (T::SubmitJob, false),
                Kind::Bg => (T::SubmitJobBg, true),
                Kind::High => (T::SubmitJobHigh, false),
                Kind::HighBg => (T::SubmitJobHighBg, true),
                Kind::Low => (T::SubmitJobLow, false),
                Kind::LowBg => (T::SubmitJobLowBg, true),
            };
            submit(
                peer,
                record,
                ty,
                bg,
                function(*f),
                &unique_bytes(unique),
                &[data],
            );
        }
        Req::Epoch {
            function: f,
            unique,
            when,
            data,
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let when = match when {
                When::Past => b"1".to_vec(),
                When::InSeconds(s) => (now + *s as u64 % 4).to_string().into_bytes(),
                When::Far => (now + 86400).to_string().into_bytes(),
                When::Bytes(b) => b.clone(),
            };
            let u = unique_bytes(unique);
            record.uniques.push(u.clone());
            let f = function(*f);
            request(&mut peer.queued, T::SubmitJobEpoch, &[f, &u, &when, data]);
            // An epoch out of range is refused with ERROR and a close: the answer is unknown.
            if when.iter().all(u8::is_ascii_digit) && when.len() < 12 {
                peer.window.push(Sent::Submit {
                    background: true,
                    key: key(f, &u),
                });
            } else {
                peer.window.push(Sent::Ambiguous);
            }
        }
        Req::Reduce {
            bg,
            function: f,
            unique,
            reducer,
            data,
        } => {
            let ty = if *bg {
                T::SubmitReduceJobBackground
            } else {
                T::SubmitReduceJob
            };
            let r = function(*reducer);
            submit(
                peer,
                record,
                ty,
                *bg,
                function(*f),
                &unique_bytes(unique),
                &[r, b"", data],
            );
        }
        Req::CanDo { function: f } => request(&mut peer.queued, T::CanDo, &[function(*f)]),
        Req::CanDoTimeout { function: f, ms } => {
            request(
                &mut peer.queued,
                T::CanDoTimeout,
                &[function(*f), &number(ms)],
            );
            peer.window.push(Sent::Ambiguous);
        }
        Req::CantDo { function: f } => request(&mut peer.queued, T::CantDo, &[function(*f)]),
        Req::ResetAbilities => request(&mut peer.queued, T::ResetAbilities, &[]),
        Req::PreSleep => request(&mut peer.queued, T::PreSleep, &[]),
        Req::Grab { which } => {
            let ty = [T::GrabJob, T::GrabJobUniq, T::GrabJobAll][*which as usize % 3];
            request(&mut peer.queued, ty, &[]);
        }
        Req::Work {
            which,
            handle: h,
            data,
        } => {
            let h = handle(record, h);
            let ty = [
                T::WorkComplete,
                T::WorkFail,
                T::WorkException,
                T::WorkData,
                T::WorkWarning,
            ][*which as usize % 5];
            if ty == T::WorkFail {
                request(&mut peer.queued, ty, &[&h]);
            } else {
                request(&mut peer.queued, ty, &[&h, data]);
            }
            if matches!(ty, T::WorkComplete | T::WorkFail | T::WorkException) {
                record.ended.push(h);
            }
            peer.window.push(Sent::Ambiguous);
        }
        Req::WorkStatus {
            handle: h,
            numerator,
            denominator,
        } => {
            let h = handle(record, h);
            request(
                &mut peer.queued,
                T::WorkStatus,
                &[&h, &number(numerator), &number(denominator)],
            );
            peer.window.push(Sent::Ambiguous);
        }
        Req::GetStatus { handle: h } => {
            request(&mut peer.queued, T::GetStatus, &[&handle(record, h)])
        }
        Req::GetStatusUnique { unique } => request(
            &mut peer.queued,
            T::GetStatusUnique,
            &[&unique_bytes(unique)],
        ),
        Req::Echo { data } => request(&mut peer.queued, T::EchoReq, &[data]),
        Req::SetClientId { id } => request(&mut peer.queued, T::SetClientId, &[id]),
        Req::Option { exceptions } => {
            let name: &[u8] = if *exceptions { b"exceptions" } else { b"other" };
            request(&mut peer.queued, T::OptionReq, &[name]);
            peer.window.push(Sent::Ambiguous);
        }
        Req::Other { ty, response, body } => {
            let mut bytes = if *response {
                protocol::RES
            } else {
                protocol::REQ
            }
            .to_vec();
            bytes.extend_from_slice(&(*ty as u32 % 45).to_be_bytes());
            bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
            bytes.extend_from_slice(body);
            peer.queued.extend_from_slice(&bytes);
            record.garbage.push(bytes);
            peer.window.push(Sent::Ambiguous);
        }
    }
}

fn admin_line(record: &mut Record, cmd: &AdminCmd) -> Vec<u8> {
    let mut line = match cmd {
        AdminCmd::Status => b"status".to_vec(),
        AdminCmd::PriorityStatus => b"prioritystatus".to_vec(),
        AdminCmd::Workers => b"workers".to_vec(),
        AdminCmd::ShowJobs => b"show jobs".to_vec(),
        AdminCmd::ShowUniqueJobs => b"show unique jobs".to_vec(),
        AdminCmd::Cancel(h) => {
            let h = handle(record, h);
            record.ended.push(h.clone());
            let mut l = b"cancel job ".to_vec();
            l.extend_from_slice(&h);
            record.garbage.push(l.clone());
            l
        }
        AdminCmd::Create(f) => [b"create function ", function(*f)].concat(),
        AdminCmd::Drop(f) => [b"drop function ", function(*f)].concat(),
        AdminCmd::MaxQueue(f, values) => {
            let mut l = [b"maxqueue ", function(*f)].concat();
            for v in values.iter().take(3) {
                l.extend_from_slice(format!(" {}", v % 4).as_bytes());
            }
            l
        }
        AdminCmd::Version => b"version".to_vec(),
        AdminCmd::GetPid => b"getpid".to_vec(),
        AdminCmd::Verbose => b"verbose".to_vec(),
        AdminCmd::Queue => b"queue".to_vec(),
    };
    line.extend_from_slice(b"\r\n");
    line
}

// ---------------------------------------------------------------------------------------------
// Running it.

struct Fixture {
    servers: Vec<(Server, SocketAddr)>,
}

fn start(threads: u32, handoff: &str) -> (Server, SocketAddr) {
    let args = [
        "gearshiftd",
        "--config-file=/dev/null",
        "--listen=127.0.0.1",
        "--port=0",
        "--log-file=none",
        "--threads",
        &threads.to_string(),
        "--handoff",
        handoff,
        "--job-handle-prefix",
        PREFIX,
        "--max-packet-size",
        &MAX_PACKET.to_string(),
        "--max-line",
        &MAX_LINE.to_string(),
    ];
    let Ok(Parsed::Run(config)) = config::parse(args.iter().map(|s| s.to_string()).collect())
    else {
        panic!("the fuzz server's flags do not parse");
    };
    let listeners = server::bind(&config).expect("bind a loopback port");
    let server = Server::start(&config, listeners).expect("start the server");
    let addr = server.local_addrs()[0];
    (server, addr)
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // A panic on any thread, a shard's included, must end the process so the fuzzer
        // records the input; the default hook would only end that thread.
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            std::process::abort();
        }));
        // Writes to a connection the server closed must fail with EPIPE, not kill us.
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        Fixture {
            servers: vec![start(4, "all"), start(3, "off")],
        }
    })
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the fuzz server");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Removes every `shutdown` (any case) from what is about to be written: that admin command
/// is accepted and would stop the server under test. The word may have begun in earlier bytes.
fn defuse(tail: &[u8], bytes: &mut [u8]) {
    const WORD: &[u8] = b"shutdown";
    let mut joined = tail.to_vec();
    joined.extend_from_slice(bytes);
    for end in WORD.len()..=joined.len() {
        if joined[end - WORD.len()..end].eq_ignore_ascii_case(WORD) {
            joined[end - 1] = b'_';
            bytes[end - 1 - tail.len()] = b'_';
        }
    }
}

/// Writes the first `n` queued bytes (all when `n` is None). A connection the server closed
/// just stops taking bytes.
fn write(peer: &mut Peer, n: Option<usize>) {
    let n = n.unwrap_or(peer.queued.len()).min(peer.queued.len());
    let mut bytes: Vec<u8> = peer.queued.drain(..n).collect();
    let Some(stream) = peer.stream.as_mut() else {
        return;
    };
    if bytes.is_empty() || peer.rejected {
        return;
    }
    defuse(&peer.tail, &mut bytes);
    peer.tail.extend_from_slice(&bytes);
    let keep = peer.tail.len().saturating_sub(8);
    peer.tail.drain(..keep);
    match stream.write_all(&bytes) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
            panic!("the server stopped reading a connection: {e}")
        }
        Err(_) => {
            // Closed by the server (it rejected something): a peer sees the same.
            peer.rejected = true;
            return;
        }
    }
    // Follow the server's parser: drop whole frames, note a rejection.
    peer.unframed.extend_from_slice(&bytes);
    loop {
        match protocol::decode(&peer.unframed, MAX_PACKET, MAX_LINE) {
            Ok(Decoded::Frame(_, used)) => {
                peer.unframed.drain(..used);
            }
            Ok(Decoded::Incomplete { .. }) => break,
            Err(_) => {
                peer.rejected = true;
                break;
            }
        }
    }
}

/// Bytes that end a half-sent frame, so an ECHO after them is read as a packet.
fn completion(unframed: &[u8]) -> Vec<u8> {
    let mut add = Vec::new();
    loop {
        let mut all = unframed.to_vec();
        all.extend_from_slice(&add);
        match protocol::decode(&all, MAX_PACKET, MAX_LINE) {
            Ok(Decoded::Frame(..)) | Err(_) => return add,
            Ok(Decoded::Incomplete { need: Some(n) }) => add.resize(add.len() + n - all.len(), 0),
            Ok(Decoded::Incomplete { need: None }) if all.is_empty() => return add,
            Ok(Decoded::Incomplete { need: None }) if all[0] != 0 => add.push(b'\n'),
            Ok(Decoded::Incomplete { need: None }) if all.len() < 4 => {
                add.extend_from_slice(&protocol::REQ[all.len()..])
            }
            Ok(Decoded::Incomplete { need: None }) => add.resize(add.len() + 12 - all.len(), 0),
        }
    }
}

/// Reads until `want` has arrived; None when the server closed the connection first.
fn read_until(stream: &mut TcpStream, want: &[u8], what: &str) -> Option<Vec<u8>> {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        if let Some(at) = find(&got, want) {
            got.truncate(at + want.len());
            return Some(got);
        }
        match stream.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
        if started.elapsed() > DEADLINE {
            panic!(
                "no answer to {what} within {DEADLINE:?}; got {} bytes: {:?}",
                got.len(),
                String::from_utf8_lossy(&got[got.len().saturating_sub(200)..])
            );
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Response packets in a stream of answers; text lines (admin replies) are skipped.
fn packets(mut stream: &[u8]) -> Vec<(u32, &[u8])> {
    let mut out = Vec::new();
    while !stream.is_empty() {
        if stream[0] == 0 && stream.len() >= 12 && stream[..4] == protocol::RES {
            let ty = u32::from_be_bytes(stream[4..8].try_into().unwrap());
            let size = u32::from_be_bytes(stream[8..12].try_into().unwrap()) as usize;
            if stream.len() < 12 + size {
                break;
            }
            out.push((ty, &stream[12..12 + size]));
            stream = &stream[12 + size..];
        } else {
            let end = stream
                .iter()
                .position(|&b| b == b'\n')
                .map_or(stream.len(), |i| i + 1);
            stream = &stream[end..];
        }
    }
    out
}

static SYNCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes everything, completes a half frame, sends an ECHO and reads up to its answer. The
/// answers read are mapped to the submits sent since the last sync where that is certain.
fn sync(peer: &mut Peer, record: &mut Record) {
    write(peer, None);
    let window = std::mem::take(&mut peer.window);
    if peer.rejected || peer.stream.is_none() {
        return;
    }
    let mut fill = completion(&peer.unframed);
    let token = format!(
        "sync-{}",
        SYNCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    request(&mut fill, T::EchoReq, &[token.as_bytes()]);
    peer.queued = fill;
    write(peer, None);
    if peer.rejected {
        return;
    }
    let mut echo = Vec::new();
    protocol::encode(&mut echo, T::EchoRes, &[token.as_bytes()]);
    let Some(answers) = read_until(peer.stream.as_mut().unwrap(), &echo, "an ECHO") else {
        peer.rejected = true;
        return;
    };
    let packets = packets(&answers);
    for &(ty, body) in &packets {
        let learned = match ty {
            8 => Some(body),
            11 | 31 | 40 => body.split(|&b| b == 0).next(),
            _ => None,
        };
        if let Some(h) = learned
            && !record.handles.iter().any(|k| k == h)
        {
            record.handles.push(h.to_vec());
        }
    }
    // Map JOB_CREATED/ERROR to the submits in order, only when nothing else could have
    // answered with one of them.
    if window.iter().any(|s| matches!(s, Sent::Ambiguous)) {
        return;
    }
    let answers: Vec<(u32, &[u8])> = packets
        .into_iter()
        .filter(|&(ty, _)| ty == 8 || ty == 19)
        .collect();
    if answers.len() != window.len() {
        return;
    }
    for (sent, (ty, body)) in window.iter().zip(answers) {
        if let (
            Sent::Submit {
                background: true,
                key: Some((f, u)),
            },
            8,
        ) = (sent, ty)
        {
            record
                .background
                .push((body.to_vec(), f.clone(), u.clone()));
        }
    }
}

/// The admin connection the checks use, one per server, kept across inputs.
struct Admin {
    stream: TcpStream,
}

impl Admin {
    /// Sends a command and returns its answer (everything before a `version` reply that
    /// follows it, so a listing needs no parsing to find its end).
    fn ask(&mut self, line: &[u8]) -> Vec<u8> {
        let mut req = line.to_vec();
        req.extend_from_slice(b"\r\nversion\r\n");
        self.stream
            .write_all(&req)
            .expect("write to the admin connection");
        let version = format!("OK {}\n", server::VERSION);
        let got = read_until(&mut self.stream, version.as_bytes(), "an admin command")
            .expect("the server closed the admin connection");
        got[..got.len() - version.len()].to_vec()
    }

    /// A listing's rows (each line before the closing `.`; a row may be empty).
    fn listing(&mut self, line: &[u8]) -> Vec<Vec<u8>> {
        let text = self.ask(line);
        assert!(text.ends_with(b".\n"), "listing not terminated: {text:?}");
        text[..text.len() - 2]
            .split_inclusive(|&b| b == b'\n')
            .map(|l| l[..l.len() - 1].to_vec())
            .collect()
    }
}

/// A listing row: its leading field (a name) and the numbers after it.
fn row(line: &[u8], numbers: usize) -> Option<(Vec<u8>, Vec<u64>)> {
    let fields: Vec<&[u8]> = line.rsplitn(numbers + 1, |&b| b == b'\t').collect();
    if fields.len() != numbers + 1 {
        return None;
    }
    let mut values = Vec::new();
    for f in fields[..numbers].iter().rev() {
        values.push(std::str::from_utf8(f).ok()?.parse().ok()?);
    }
    Some((fields[numbers].to_vec(), values))
}

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// What the admin listings show once every connection of an input closed.
struct Snapshot {
    /// `status` rows: name, (total, running, workers).
    functions: Vec<(Vec<u8>, Vec<u64>)>,
    /// Handles in `show jobs`.
    jobs: Vec<Vec<u8>>,
}

/// Reads the listings and checks the invariants that hold once the closes took effect.
fn observe(admin: &mut Admin, record: &Record) -> Result<Snapshot, String> {
    let functions: Vec<(Vec<u8>, Vec<u64>)> = admin
        .listing(b"status")
        .iter()
        .filter_map(|l| row(l, 3))
        .collect();
    let jobs = admin.listing(b"show jobs");
    let uniques = admin.listing(b"show unique jobs");
    let priority: Vec<(Vec<u8>, Vec<u64>)> = admin
        .listing(b"prioritystatus")
        .iter()
        .filter_map(|l| row(l, 4))
        .collect();
    if let Some((name, v)) = functions.iter().find(|(_, v)| v[1] != 0 || v[2] != 0) {
        return Err(format!(
            "function {:?} still has {} running job(s) and {} worker(s)",
            String::from_utf8_lossy(name),
            v[1],
            v[2]
        ));
    }
    let total: u64 = functions.iter().map(|(_, v)| v[0]).sum();
    if total != jobs.len() as u64 {
        return Err(format!(
            "status totals {total} but show jobs lists {}",
            jobs.len()
        ));
    }
    // A unique holding a line end spans several rows of `show unique jobs` (as in gearmand);
    // only the script's own uniques and garbage can hold one.
    let multiline = record
        .garbage
        .iter()
        .chain(&record.uniques)
        .any(|b| b.contains(&b'\n'));
    if uniques.len() != jobs.len() && !(multiline && uniques.len() > jobs.len()) {
        return Err(format!(
            "show unique jobs lists {} but show jobs {}",
            uniques.len(),
            jobs.len()
        ));
    }
    let queued: u64 = priority.iter().map(|(_, v)| v[0] + v[1] + v[2]).sum();
    if queued != total {
        return Err(format!(
            "prioritystatus queues {queued}, status totals {total}"
        ));
    }
    let mut handles = Vec::new();
    for line in &jobs {
        let (handle, v) = row(line, 3)
            .ok_or_else(|| format!("show jobs row {}", String::from_utf8_lossy(line)))?;
        // Nobody waits any more, so no foreground job may remain; a background job is
        // never ignored.
        if (v[1], v[2]) != (0, 1) {
            return Err(format!(
                "a job nobody waits for is left: {}",
                String::from_utf8_lossy(line)
            ));
        }
        handles.push(handle);
    }
    for (handle, function, unique) in &record.background {
        let touched = record.ended.iter().any(|h| h == handle)
            || record
                .foreground
                .iter()
                .any(|(f, u)| f == function && u == unique)
            || record
                .garbage
                .iter()
                .any(|g| find(g, handle).is_some() || find(g, unique).is_some());
        if !touched && !handles.contains(handle) {
            return Err(format!(
                "background job {} ({} / {}) is gone",
                String::from_utf8_lossy(handle),
                String::from_utf8_lossy(function),
                String::from_utf8_lossy(unique),
            ));
        }
    }
    Ok(Snapshot {
        functions,
        jobs: handles,
    })
}

/// Waits (up to the deadline) for the listings to show the closes taken effect with every
/// invariant holding, then resets the server for the next input.
fn check_and_reset(admin: &mut Admin, record: &Record) {
    let started = Instant::now();
    let snapshot = loop {
        match observe(admin, record) {
            Ok(s) => break s,
            Err(e) if started.elapsed() > DEADLINE => {
                panic!("{DEADLINE:?} after every connection closed: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    let (status, left) = (snapshot.functions, snapshot.jobs);
    if std::env::var_os("GEARSHIFT_FUZZ_VERBOSE").is_some() {
        let show = |v: &[Vec<u8>]| {
            v.iter()
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .collect::<Vec<_>>()
        };
        eprintln!(
            "handles read {:?}; background jobs followed {}; jobs left {:?}",
            show(&record.handles),
            record.background.len(),
            show(&left)
        );
    }
    // Reset for the next input.
    for h in &left {
        let answer = admin.ask(&[b"cancel job ", h.as_slice()].concat());
        assert_eq!(answer, b"OK\r\n", "cancel job {h:?}");
    }
    for (name, _) in &status {
        if !name.is_empty() && !name.iter().any(|b| b" \r\n\0".contains(b)) {
            admin.ask(&[b"drop function ", name.as_slice()].concat());
        }
    }
    let after = admin.listing(b"show jobs");
    assert!(
        after.is_empty(),
        "jobs left after cancelling all: {after:?}"
    );
    let rss = rss();
    assert!(rss < RSS_LIMIT, "RSS {rss} over the limit {RSS_LIMIT}");
}

fn run(script: &Script) {
    let fixture = fixture();
    let which = script.server as usize;
    let addr = fixture.servers[which].1;
    static ADMINS: OnceLock<Vec<std::sync::Mutex<Admin>>> = OnceLock::new();
    let admins = ADMINS.get_or_init(|| {
        fixture
            .servers
            .iter()
            .map(|(_, a)| {
                std::sync::Mutex::new(Admin {
                    stream: connect(*a),
                })
            })
            .collect()
    });
    let mut admin = admins[which].lock().unwrap();
    // The server answers before anything is sent.
    admin.ask(b"verbose");

    let mut record = Record::default();
    let mut peers: Vec<Peer> = (0..PEERS).map(|_| Peer::new()).collect();
    for action in script.actions.iter().take(256) {
        let index = match action {
            Action::Send { peer, .. }
            | Action::Admin { peer, .. }
            | Action::Raw { peer, .. }
            | Action::Write { peer, .. }
            | Action::Sync { peer }
            | Action::Close { peer, .. } => *peer as usize % PEERS,
            Action::Pause => {
                std::thread::sleep(Duration::from_micros(500));
                continue;
            }
        };
        let peer = &mut peers[index];
        if peer.stream.is_none() {
            *peer = Peer::new();
            peer.stream = Some(connect(addr));
        }
        match action {
            Action::Send { req, .. } => send(peer, &mut record, req),
            Action::Admin { cmd, .. } => {
                let line = admin_line(&mut record, cmd);
                peer.queued.extend_from_slice(&line);
            }
            Action::Raw { bytes, .. } => {
                peer.queued.extend_from_slice(bytes);
                record.garbage.push(bytes.clone());
                peer.window.push(Sent::Ambiguous);
            }
            Action::Write { upto, .. } => write(peer, Some(*upto as usize)),
            Action::Sync { .. } => sync(peer, &mut record),
            Action::Close { flush, .. } => {
                if *flush {
                    write(peer, None);
                }
                if let Some(s) = peer.stream.take() {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
            Action::Pause => unreachable!(),
        }
        if peer.queued.len() > MAX_PACKET * 4 {
            write(peer, None);
        }
    }
    for peer in &mut peers {
        write(peer, None);
        peer.stream = None;
    }
    // The server still answers, and the job invariants hold once the closes took effect.
    let pid = admin.ask(b"getpid");
    assert_eq!(pid, format!("OK {}\n", std::process::id()).as_bytes());
    check_and_reset(&mut admin, &record);
}

fuzz_target!(|script: Script| {
    run(&script);
});
