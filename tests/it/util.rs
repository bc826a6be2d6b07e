//! Test harness: starts a server (gearshiftd by default, the C gearmand with
//! `GEARSHIFT_TEST_SERVER=gearmand`) on a free loopback port, and speaks the raw
//! binary and text protocols of PROTOCOL.md §1 and §2.
//!
//! Environment:
//! - `GEARSHIFT_TEST_SERVER=gearmand` runs `/usr/sbin/gearmand` (or `GEARMAND_BIN`).
//! - `GEARSHIFTD_BIN` overrides the gearshiftd binary (default: the one Cargo built).
//! - `GEARSHIFT_TEST_THREADS=N` passes `--threads=N` to gearshiftd (not to gearmand).
//! - `GEARSHIFT_TEST_EVENT_LOOP=io-uring` passes `--event-loop=io-uring` to gearshiftd.
//!
//! Nothing here sleeps to wait for server state: readiness of gearshiftd is its
//! `listening on ...` line; gearmand is polled with the admin `version` line.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Packet types (PROTOCOL.md §1.3)
// ---------------------------------------------------------------------------

pub const TEXT: u32 = 0;
pub const CAN_DO: u32 = 1;
pub const CANT_DO: u32 = 2;
pub const RESET_ABILITIES: u32 = 3;
pub const PRE_SLEEP: u32 = 4;
pub const UNUSED: u32 = 5;
pub const NOOP: u32 = 6;
pub const SUBMIT_JOB: u32 = 7;
pub const JOB_CREATED: u32 = 8;
pub const GRAB_JOB: u32 = 9;
pub const NO_JOB: u32 = 10;
pub const JOB_ASSIGN: u32 = 11;
pub const WORK_STATUS: u32 = 12;
pub const WORK_COMPLETE: u32 = 13;
pub const WORK_FAIL: u32 = 14;
pub const GET_STATUS: u32 = 15;
pub const ECHO_REQ: u32 = 16;
pub const ECHO_RES: u32 = 17;
pub const SUBMIT_JOB_BG: u32 = 18;
pub const ERROR: u32 = 19;
pub const STATUS_RES: u32 = 20;
pub const SUBMIT_JOB_HIGH: u32 = 21;
pub const SET_CLIENT_ID: u32 = 22;
pub const CAN_DO_TIMEOUT: u32 = 23;
pub const ALL_YOURS: u32 = 24;
pub const WORK_EXCEPTION: u32 = 25;
pub const OPTION_REQ: u32 = 26;
pub const OPTION_RES: u32 = 27;
pub const WORK_DATA: u32 = 28;
pub const WORK_WARNING: u32 = 29;
pub const GRAB_JOB_UNIQ: u32 = 30;
pub const JOB_ASSIGN_UNIQ: u32 = 31;
pub const SUBMIT_JOB_HIGH_BG: u32 = 32;
pub const SUBMIT_JOB_LOW: u32 = 33;
pub const SUBMIT_JOB_LOW_BG: u32 = 34;
pub const SUBMIT_JOB_SCHED: u32 = 35;
pub const SUBMIT_JOB_EPOCH: u32 = 36;
pub const SUBMIT_REDUCE_JOB: u32 = 37;
pub const SUBMIT_REDUCE_JOB_BACKGROUND: u32 = 38;
pub const GRAB_JOB_ALL: u32 = 39;
pub const JOB_ASSIGN_ALL: u32 = 40;
pub const GET_STATUS_UNIQUE: u32 = 41;
pub const STATUS_RES_UNIQUE: u32 = 42;

pub const REQ_MAGIC: &[u8; 4] = b"\0REQ";
pub const RES_MAGIC: &[u8; 4] = b"\0RES";

/// Default read timeout of a test connection: nothing in the suite may hang longer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Human-readable name of a packet type, for assertion messages.
pub fn type_name(ty: u32) -> &'static str {
    const NAMES: [&str; 43] = [
        "TEXT",
        "CAN_DO",
        "CANT_DO",
        "RESET_ABILITIES",
        "PRE_SLEEP",
        "UNUSED",
        "NOOP",
        "SUBMIT_JOB",
        "JOB_CREATED",
        "GRAB_JOB",
        "NO_JOB",
        "JOB_ASSIGN",
        "WORK_STATUS",
        "WORK_COMPLETE",
        "WORK_FAIL",
        "GET_STATUS",
        "ECHO_REQ",
        "ECHO_RES",
        "SUBMIT_JOB_BG",
        "ERROR",
        "STATUS_RES",
        "SUBMIT_JOB_HIGH",
        "SET_CLIENT_ID",
        "CAN_DO_TIMEOUT",
        "ALL_YOURS",
        "WORK_EXCEPTION",
        "OPTION_REQ",
        "OPTION_RES",
        "WORK_DATA",
        "WORK_WARNING",
        "GRAB_JOB_UNIQ",
        "JOB_ASSIGN_UNIQ",
        "SUBMIT_JOB_HIGH_BG",
        "SUBMIT_JOB_LOW",
        "SUBMIT_JOB_LOW_BG",
        "SUBMIT_JOB_SCHED",
        "SUBMIT_JOB_EPOCH",
        "SUBMIT_REDUCE_JOB",
        "SUBMIT_REDUCE_JOB_BACKGROUND",
        "GRAB_JOB_ALL",
        "JOB_ASSIGN_ALL",
        "GET_STATUS_UNIQUE",
        "STATUS_RES_UNIQUE",
    ];
    NAMES.get(ty as usize).copied().unwrap_or("?")
}

/// Builds a request packet: `\0REQ`, type, size, then `args` joined by NUL
/// (the last argument has no trailing NUL).
pub fn req(ty: u32, args: &[&[u8]]) -> Vec<u8> {
    let body = args.join(&0u8);
    let mut p = Vec::with_capacity(12 + body.len());
    p.extend_from_slice(REQ_MAGIC);
    p.extend_from_slice(&ty.to_be_bytes());
    p.extend_from_slice(&(body.len() as u32).to_be_bytes());
    p.extend_from_slice(&body);
    p
}

/// Builds a response packet (`\0RES`), e.g. to compare against received bytes.
pub fn res(ty: u32, args: &[&[u8]]) -> Vec<u8> {
    let mut p = req(ty, args);
    p[..4].copy_from_slice(RES_MAGIC);
    p
}

/// Shows bytes readably in assertion messages (`\0` for NUL, `\xNN` for others).
pub fn show(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        match b {
            0 => s.push_str("\\0"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

/// A response packet read from the server.
#[derive(Clone, PartialEq, Eq)]
pub struct Packet {
    pub ty: u32,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}({}) \"{}\"",
            type_name(self.ty),
            self.ty,
            show(&self.body)
        )
    }
}

impl Packet {
    pub fn new(ty: u32, args: &[&[u8]]) -> Packet {
        Packet {
            ty,
            body: args.join(&0u8),
        }
    }

    /// The body split on every NUL.
    pub fn args(&self) -> Vec<Vec<u8>> {
        self.body.split(|&b| b == 0).map(|a| a.to_vec()).collect()
    }

    /// The body split into at most `n` parts (the last part keeps any further NULs).
    pub fn argn(&self, n: usize) -> Vec<Vec<u8>> {
        self.body
            .splitn(n, |&b| b == 0)
            .map(|a| a.to_vec())
            .collect()
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts type and exact body.
    #[track_caller]
    pub fn assert_is(&self, ty: u32, args: &[&[u8]]) {
        let want = Packet::new(ty, args);
        assert_eq!(*self, want, "unexpected packet");
    }
}

// ---------------------------------------------------------------------------
// Temp dirs
// ---------------------------------------------------------------------------

static TEMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name no other call in this test process gives, usable as an SQL table name or a key
/// prefix: `gs_<tag>_<pid>_<n>`, `n` of fixed width so that no name is the start of another
/// (a redis test lists its keys by prefix: `gs_rd_1_1*` would match `gs_rd_1_12`'s keys).
pub fn unique_name(tag: &str) -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("gs_{tag}_{}_{n:06}", std::process::id())
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("gearshift-it-{}-{}-{}", tag, std::process::id(), n));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the dir and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// True when the suite runs against the C gearmand (`GEARSHIFT_TEST_SERVER=gearmand`).
/// Used only to guard assertions on the documented decisions where gearshiftd
/// deliberately differs (PROTOCOL.md "Our decisions").
pub fn is_gearmand() -> bool {
    std::env::var("GEARSHIFT_TEST_SERVER")
        .map(|v| v == "gearmand")
        .unwrap_or(false)
}

/// Prints a skip note for a test (or part of one) that does not apply to gearmand.
pub fn skip_under_gearmand(what: &str) -> bool {
    if is_gearmand() {
        eprintln!("skipped under gearmand: {what}");
        true
    } else {
        false
    }
}

pub fn gearmand_bin() -> String {
    std::env::var("GEARMAND_BIN").unwrap_or_else(|_| "/usr/sbin/gearmand".to_string())
}

pub fn gearshiftd_bin() -> String {
    if let Ok(p) = std::env::var("GEARSHIFTD_BIN") {
        return p;
    }
    match option_env!("CARGO_BIN_EXE_gearshiftd") {
        Some(p) => p.to_string(),
        None => panic!(
            "no gearshiftd binary: set GEARSHIFTD_BIN, or GEARSHIFT_TEST_SERVER=gearmand to test gearmand"
        ),
    }
}

/// A running server process, killed on drop.
pub struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    /// The TLS port of `--ssl-port=0`, from its `listening with TLS on` line.
    tls_addr: Option<SocketAddr>,
    dir: TempDir,
    /// Kept open so the server never writes stdout into a closed pipe.
    _stdout: Option<ChildStdout>,
}

impl Server {
    /// Starts the server under test with extra `args`, on a free loopback port,
    /// and returns once it accepts connections.
    pub fn start(args: &[&str]) -> Server {
        if is_gearmand() {
            Self::start_gearmand(args)
        } else {
            Self::start_gearshiftd(args)
        }
    }

    /// Like `start`, but also passes `gearshiftd_only` when the server is gearshiftd
    /// (for gearshiftd-specific flags such as `--max-packet-size`).
    pub fn start_with(args: &[&str], gearshiftd_only: &[&str]) -> Server {
        if is_gearmand() {
            Self::start_gearmand(args)
        } else {
            let mut all: Vec<&str> = args.to_vec();
            all.extend_from_slice(gearshiftd_only);
            Self::start_gearshiftd(&all)
        }
    }

    /// Like `start`, with extra arguments for one server only: `gearmand_only`
    /// (e.g. `--threads=0` where gearmand's threaded mode is racy) and
    /// `gearshiftd_only` (gearshiftd-specific flags).
    pub fn start3(args: &[&str], gearmand_only: &[&str], gearshiftd_only: &[&str]) -> Server {
        let mut all: Vec<&str> = args.to_vec();
        if is_gearmand() {
            all.extend_from_slice(gearmand_only);
            Self::start_gearmand(&all)
        } else {
            all.extend_from_slice(gearshiftd_only);
            Self::start_gearshiftd(&all)
        }
    }

    /// Like `start`, but gearshiftd runs one shard whatever `GEARSHIFT_TEST_THREADS` says: for
    /// tests of orders that are exact only within one owner shard (grab order across
    /// functions, consecutive handle numbers), as the README's compatibility notes say.
    pub fn start_one_shard(args: &[&str]) -> Server {
        Self::start3(args, &[], &["--threads=1"])
    }

    /// Like `start`, on a given port (which may still be taken when this is called: the
    /// server retries bind). Readiness is polled with the admin `version` line.
    pub fn start_on_port(port: u16, args: &[&str]) -> Server {
        if is_gearmand() {
            return Self::start_gearmand_on(port, args);
        }
        let dir = TempDir::new("gearshiftd");
        let pid_file = dir.path().join("pid");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
        let mut cmd = Command::new(gearshiftd_bin());
        cmd.arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg("--log-file=stderr")
            .arg(format!("--pid-file={}", pid_file.display()));
        if let Ok(t) = std::env::var("GEARSHIFT_TEST_THREADS")
            && !t.is_empty()
        {
            cmd.arg(format!("--threads={t}"));
        }
        if let Ok(e) = std::env::var("GEARSHIFT_TEST_EVENT_LOOP")
            && !e.is_empty()
        {
            cmd.arg(format!("--event-loop={e}"));
        }
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", gearshiftd_bin()));
        let mut server = Server {
            child: Some(child),
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            tls_addr: None,
            dir,
            _stdout: None,
        };
        server.wait_ready("gearshiftd");
        server
    }

    /// Like `start3`, with the server's log going to `log` (`--log-file`'s value) instead of
    /// nowhere (gearmand) or stderr (gearshiftd).
    pub fn start_logging(log: &str, args: &[&str], gearshiftd_only: &[&str]) -> Server {
        let log = format!("--log-file={log}");
        if is_gearmand() {
            return Self::start_gearmand_logging(free_port(), &log, args);
        }
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(gearshiftd_only);
        all.push(&log);
        Self::start_gearshiftd(&all)
    }

    fn start_gearmand(args: &[&str]) -> Server {
        Self::start_gearmand_on(free_port(), args)
    }

    fn start_gearmand_on(port: u16, args: &[&str]) -> Server {
        Self::spawn_gearmand(port, args, None)
    }

    fn start_gearmand_logging(port: u16, log: &str, args: &[&str]) -> Server {
        Self::spawn_gearmand(port, args, Some(log))
    }

    /// The real C gearmand whatever `GEARSHIFT_TEST_SERVER` says, logging at INFO into
    /// `gearmand.log` in its dir (`log` shows it): for tests of gearmand's own queue stores.
    pub fn start_real_gearmand(args: &[&str]) -> Server {
        Self::spawn_gearmand(free_port(), args, Some(""))
    }

    /// gearmand on `port`; `log` is its `--log-file=…` flag (`None`: no log; `Some("")`: at
    /// INFO into `gearmand.log` in its dir).
    fn spawn_gearmand(port: u16, args: &[&str], log: Option<&str>) -> Server {
        let dir = TempDir::new("gearmand");
        let pid_file = dir.path().join("pid");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
        let mut cmd = Command::new(gearmand_bin());
        match log {
            Some("") => {
                cmd.arg(format!(
                    "--log-file={}",
                    dir.path().join("gearmand.log").display()
                ))
                .arg("--verbose=INFO");
            }
            Some(flag) => {
                cmd.arg(flag);
            }
            None => {
                cmd.arg("--log-file=none");
            }
        }
        let child = cmd
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--pid-file={}", pid_file.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", gearmand_bin()));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut server = Server {
            child: Some(child),
            addr,
            tls_addr: None,
            dir,
            _stdout: None,
        };
        server.wait_ready("gearmand");
        server
    }

    /// Polls the server with the admin `version` line until it answers (10 s at most).
    fn wait_ready(&mut self, what: &str) {
        let addr = self.addr;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{what} exited early ({status}): {}", self.log());
            }
            if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                if s.write_all(b"version\n").is_ok() {
                    let mut line = String::new();
                    if BufReader::new(&s).read_line(&mut line).is_ok() && line.ends_with('\n') {
                        // Close the probe and wait for the server's EOF, so it
                        // is (normally) gone before a test lists connections.
                        let _ = s.shutdown(Shutdown::Write);
                        let _ = s.read_to_end(&mut Vec::new());
                        return;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!("{what} did not become ready on {addr}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn start_gearshiftd(args: &[&str]) -> Server {
        let dir = TempDir::new("gearshiftd");
        let pid_file = dir.path().join("pid");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
        let mut cmd = Command::new(gearshiftd_bin());
        cmd.arg("--listen=127.0.0.1")
            .arg("--port=0")
            .arg("--log-file=stderr")
            .arg(format!("--pid-file={}", pid_file.display()));
        if let Ok(t) = std::env::var("GEARSHIFT_TEST_THREADS")
            && !t.is_empty()
        {
            cmd.arg(format!("--threads={t}"));
        }
        if let Ok(e) = std::env::var("GEARSHIFT_TEST_EVENT_LOOP")
            && !e.is_empty()
        {
            cmd.arg(format!("--event-loop={e}"));
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", gearshiftd_bin()));
        // Readiness: one line `listening on 127.0.0.1:<port>` on stdout, and with
        // `--ssl-port=0` a second one, `listening with TLS on 127.0.0.1:<port>`.
        let stdout = child.stdout.take().unwrap();
        let tls_line = args.contains(&"--ssl-port=0");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let mut r = reader.read_line(&mut line);
            if tls_line && r.is_ok() {
                r = reader.read_line(&mut line);
            }
            let _ = tx.send((r.map(|_| line), reader.into_inner()));
        });
        let mut server = Server {
            child: Some(child),
            addr: "127.0.0.1:0".parse().unwrap(),
            tls_addr: None,
            dir,
            _stdout: None,
        };
        let (line, stdout) = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok((Ok(line), stdout)) => (line, stdout),
            Ok((Err(e), _)) => panic!("reading gearshiftd stdout: {e}: {}", server.log()),
            Err(_) => panic!(
                "gearshiftd printed no `listening on` line in 10 s: {}",
                server.log()
            ),
        };
        server._stdout = Some(stdout);
        let mut lines = line.lines();
        let line = lines.next().unwrap_or_default().to_string();
        if let Some(tls) = lines.next() {
            server.tls_addr = tls
                .strip_prefix("listening with TLS on ")
                .and_then(|a| a.parse().ok());
            assert!(server.tls_addr.is_some(), "unexpected line {tls:?}");
        }
        let addr = line
            .trim_end()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "unexpected gearshiftd readiness line {line:?}: {}",
                    server.log()
                )
            });
        server.addr = addr;
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The TLS port of a server started with `--ssl-port=0`.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addr
            .expect("the server was started with --ssl-port=0")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server already stopped").id()
    }

    /// The server's temp dir (holds `pid` and `stderr.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the server wrote to stderr so far, then the log of `start_real_gearmand`'s gearmand.
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name));
        let mut log = read("stderr.log").unwrap_or_default();
        if let Ok(more) = read("gearmand.log") {
            log.push_str(&more);
        }
        log
    }

    /// Opens a raw protocol connection to the server.
    pub fn conn(&self) -> Conn {
        Conn::connect(self.addr)
    }

    /// Sends a signal by name (e.g. "TERM", "USR1") with kill(1).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("server already stopped");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let st = child.wait();
                self.child = None;
                panic!(
                    "server did not exit within {limit:?} (killed: {st:?}); log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(10))
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls until something accepts TCP connections on loopback `port`; false after `limit`.
pub fn wait_for_port(port: u16, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A loopback port that was free a moment ago: for servers that cannot report the port
/// they bound (gearmand, redis-server), and for an address where nothing listens.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------
// Raw connection
// ---------------------------------------------------------------------------

/// The result of waiting for one packet.
#[derive(Debug)]
pub enum Recv {
    Packet(Packet),
    /// The server closed the connection (EOF or reset) on a packet boundary.
    Eof,
    /// Nothing (complete) arrived in time.
    Timeout,
}

/// A raw protocol connection with a read buffer and a read timeout, plain or through TLS.
pub struct Conn {
    stream: TcpStream,
    tls: Option<rustls::ClientConnection>,
    buf: Vec<u8>,
    eof: bool,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Conn {
            stream,
            tls: None,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Connects and completes a TLS handshake (checking the server's certificate against
    /// `name`); the error is the handshake's.
    pub fn connect_tls(
        addr: SocketAddr,
        config: std::sync::Arc<rustls::ClientConfig>,
        name: &str,
    ) -> std::io::Result<Conn> {
        let mut conn = Conn::connect(addr);
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut tls = rustls::ClientConnection::new(config, name).unwrap();
        while tls.is_handshaking() {
            tls.complete_io(&mut conn.stream)?;
        }
        conn.tls = Some(tls);
        Ok(conn)
    }

    /// The TLS session, for a connection made with `connect_tls`.
    pub fn tls(&self) -> &rustls::ClientConnection {
        self.tls.as_ref().expect("a TLS connection")
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.tls {
            None => self.stream.write_all(bytes),
            Some(tls) => rustls::Stream::new(tls, &mut self.stream).write_all(bytes),
        }
    }

    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.tls {
            None => self.stream.read(buf),
            Some(tls) => rustls::Stream::new(tls, &mut self.stream).read(buf),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }

    /// Sends a request packet with `args` joined by NUL.
    pub fn send(&mut self, ty: u32, args: &[&[u8]]) {
        let p = req(ty, args);
        self.send_raw(&p);
    }

    /// Sends bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.write_all(bytes)
            .unwrap_or_else(|e| panic!("write: {e}"));
    }

    /// Like `send_raw`, but returns the error instead of panicking (the server
    /// may already have closed the connection).
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes)
    }

    /// Closes our sending side (the server sees EOF).
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads more bytes into the buffer. Ok(false) on EOF/reset; Err on timeout.
    fn fill(&mut self, timeout: Duration) -> Result<bool, ()> {
        if self.eof {
            return Ok(false);
        }
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let mut tmp = [0u8; 65536];
        let r = self.read_some(&mut tmp);
        self.stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        match r {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                Err(())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(_) => {
                // ECONNRESET and friends: the server closed on us.
                self.eof = true;
                Ok(false)
            }
        }
    }

    /// Waits up to `timeout` for one whole response packet.
    pub fn recv_any(&mut self, timeout: Duration) -> Recv {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 12 {
                assert_eq!(
                    &self.buf[..4],
                    RES_MAGIC,
                    "expected a \\0RES packet, got bytes \"{}\"",
                    show(&self.buf[..self.buf.len().min(64)])
                );
                let ty = u32::from_be_bytes(self.buf[4..8].try_into().unwrap());
                let len = u32::from_be_bytes(self.buf[8..12].try_into().unwrap()) as usize;
                if self.buf.len() >= 12 + len {
                    let body = self.buf[12..12 + len].to_vec();
                    self.buf.drain(..12 + len);
                    return Recv::Packet(Packet { ty, body });
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Recv::Timeout;
            }
            match self.fill(deadline - now) {
                Ok(true) => {}
                Ok(false) => {
                    assert!(
                        self.buf.is_empty(),
                        "connection closed in the middle of a packet: \"{}\"",
                        show(&self.buf)
                    );
                    return Recv::Eof;
                }
                Err(()) => return Recv::Timeout,
            }
        }
    }

    /// Reads one response packet; panics on EOF or after the read timeout.
    #[track_caller]
    pub fn recv(&mut self) -> Packet {
        match self.recv_any(READ_TIMEOUT) {
            Recv::Packet(p) => p,
            Recv::Eof => panic!("expected a packet, got EOF"),
            Recv::Timeout => panic!("expected a packet, got nothing within {READ_TIMEOUT:?}"),
        }
    }

    /// Reads one packet within `timeout`; None if nothing arrived. Panics on EOF.
    #[track_caller]
    pub fn recv_with_timeout(&mut self, timeout: Duration) -> Option<Packet> {
        match self.recv_any(timeout) {
            Recv::Packet(p) => Some(p),
            Recv::Eof => panic!("expected a packet, got EOF"),
            Recv::Timeout => None,
        }
    }

    /// Reads one packet and asserts its type and exact body.
    #[track_caller]
    pub fn expect(&mut self, ty: u32, args: &[&[u8]]) {
        let p = self.recv();
        p.assert_is(ty, args);
    }

    /// Reads one packet and asserts its type; returns it.
    #[track_caller]
    pub fn expect_type(&mut self, ty: u32) -> Packet {
        let p = self.recv();
        assert_eq!(p.ty, ty, "expected {}, got {p:?}", type_name(ty));
        p
    }

    /// Asserts that no byte arrives within `ms` milliseconds (keep windows short).
    #[track_caller]
    pub fn expect_nothing(&mut self, ms: u64) {
        if !self.buf.is_empty() {
            panic!(
                "expected nothing, but have buffered \"{}\"",
                show(&self.buf)
            );
        }
        match self.fill(Duration::from_millis(ms)) {
            Err(()) => {}
            Ok(true) => panic!("expected nothing, got \"{}\"", show(&self.buf)),
            Ok(false) => panic!("expected nothing, but the connection was closed"),
        }
    }

    /// Asserts that the server closes the connection without sending anything.
    #[track_caller]
    pub fn expect_eof(&mut self) {
        match self.recv_any(READ_TIMEOUT) {
            Recv::Eof => {}
            Recv::Packet(p) => panic!("expected EOF, got {p:?}"),
            Recv::Timeout => panic!("expected EOF, connection still open after {READ_TIMEOUT:?}"),
        }
    }

    /// Malformed input (decision 1): the server closes the connection; gearshiftd
    /// sends one ERROR packet first (with `code` if given), gearmand may or may not.
    #[track_caller]
    pub fn expect_error_then_close(&mut self, code: Option<&str>) {
        match self.recv_any(READ_TIMEOUT) {
            Recv::Eof => {
                assert!(
                    is_gearmand(),
                    "gearshiftd must send an ERROR packet before closing"
                );
            }
            Recv::Packet(p) => {
                assert_eq!(p.ty, ERROR, "expected ERROR then close, got {p:?}");
                // `CODE\0text`, CODE in gearmand's style (upper case, `_`).
                let a = p.args();
                assert_eq!(a.len(), 2, "ERROR body is CODE\\0TEXT: {p:?}");
                assert!(
                    !a[0].is_empty() && a[0].iter().all(|b| b.is_ascii_uppercase() || *b == b'_'),
                    "ERROR code in {p:?}"
                );
                if let Some(code) = code
                    && !is_gearmand()
                {
                    assert_eq!(p.args()[0], code.as_bytes(), "ERROR code in {p:?}");
                }
                self.expect_eof();
            }
            Recv::Timeout => panic!("expected close, connection still open after {READ_TIMEOUT:?}"),
        }
    }

    /// Round trip: ECHO_REQ with a token, asserting the very next packet is its ECHO_RES.
    /// Everything sent earlier on this connection has been processed afterwards.
    #[track_caller]
    pub fn sync(&mut self) {
        self.send(ECHO_REQ, &[b"sync"]);
        self.expect(ECHO_RES, &[b"sync"]);
    }

    /// Round trip that returns every packet that arrived before the ECHO_RES.
    #[track_caller]
    pub fn sync_collect(&mut self) -> Vec<Packet> {
        self.send(ECHO_REQ, &[b"sync-collect"]);
        let mut out = Vec::new();
        loop {
            let p = self.recv();
            if p.ty == ECHO_RES && p.body == b"sync-collect" {
                return out;
            }
            out.push(p);
        }
    }

    // ----- text admin -----

    /// Sends one admin line (`\n` appended) and returns the full response:
    /// one line for `OK`/`ERR` answers, else everything through the `.\n` line.
    #[track_caller]
    pub fn admin(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\n").as_bytes());
        self.read_admin_response()
    }

    /// Reads one admin response (see `admin`).
    #[track_caller]
    pub fn read_admin_response(&mut self) -> String {
        let first = self.read_line();
        if first.starts_with("OK") || first.starts_with("ERR") || first == ".\n" {
            return first;
        }
        let mut out = first;
        loop {
            let l = self.read_line();
            out.push_str(&l);
            if l == ".\n" {
                return out;
            }
        }
    }

    /// Reads one text line including its `\n`.
    #[track_caller]
    pub fn read_line(&mut self) -> String {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return String::from_utf8(line).expect("admin output is UTF-8");
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "no complete line within {READ_TIMEOUT:?}; have \"{}\"",
                    show(&self.buf)
                );
            }
            match self.fill(deadline - now) {
                Ok(true) => {}
                Ok(false) => panic!("EOF while reading a line; have \"{}\"", show(&self.buf)),
                Err(()) => panic!("no complete line; have \"{}\"", show(&self.buf)),
            }
        }
    }

    // ----- common exchanges -----

    /// SUBMIT_* (`ty`) and returns the handle from JOB_CREATED.
    #[track_caller]
    pub fn submit(&mut self, ty: u32, func: &str, unique: &str, data: &[u8]) -> Vec<u8> {
        self.send(ty, &[func.as_bytes(), unique.as_bytes(), data]);
        self.expect_type(JOB_CREATED).body
    }

    /// CAN_DO for each function, then a sync round trip.
    #[track_caller]
    pub fn can_do(&mut self, funcs: &[&str]) {
        for f in funcs {
            self.send(CAN_DO, &[f.as_bytes()]);
        }
        self.sync();
    }

    /// GRAB_JOB and expects JOB_ASSIGN; returns (handle, function, data).
    #[track_caller]
    pub fn grab(&mut self) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        self.send(GRAB_JOB, &[]);
        let p = self.expect_type(JOB_ASSIGN);
        let a = p.argn(3);
        (a[0].clone(), a[1].clone(), a[2].clone())
    }

    /// GRAB_JOB_UNIQ and expects JOB_ASSIGN_UNIQ; returns (handle, function, unique, data).
    #[track_caller]
    pub fn grab_uniq(&mut self) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        self.send(GRAB_JOB_UNIQ, &[]);
        let p = self.expect_type(JOB_ASSIGN_UNIQ);
        let a = p.argn(4);
        (a[0].clone(), a[1].clone(), a[2].clone(), a[3].clone())
    }

    /// GRAB_JOB and expects NO_JOB.
    #[track_caller]
    pub fn grab_none(&mut self) {
        self.send(GRAB_JOB, &[]);
        self.expect(NO_JOB, &[]);
    }

    /// GET_STATUS; returns the STATUS_RES fields after the handle as strings
    /// (known, running, num, den).
    #[track_caller]
    pub fn status(&mut self, handle: &[u8]) -> [String; 4] {
        self.send(GET_STATUS, &[handle]);
        let p = self.expect_type(STATUS_RES);
        let a = p.args();
        assert_eq!(a.len(), 5, "STATUS_RES has 5 fields: {p:?}");
        assert_eq!(a[0], handle, "STATUS_RES handle: {p:?}");
        let s = |i: usize| String::from_utf8(a[i].clone()).unwrap();
        [s(1), s(2), s(3), s(4)]
    }
}

/// A worker that announced PRE_SLEEP: registers `funcs`, sends PRE_SLEEP and syncs.
pub fn sleeping_worker(server: &Server, funcs: &[&str]) -> Conn {
    let mut w = server.conn();
    for f in funcs {
        w.send(CAN_DO, &[f.as_bytes()]);
    }
    w.send(PRE_SLEEP, &[]);
    w.sync();
    w
}

/// Polls `check` (each call should do a round trip to the server, never sleep)
/// until it returns true, for at most 5 seconds. Used only where the event to
/// wait for happens on another connection (e.g. a disconnect being processed)
/// and no packet announces it.
#[track_caller]
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + READ_TIMEOUT;
    while !check() {
        if Instant::now() > deadline {
            panic!("timed out waiting until {what}");
        }
        std::thread::yield_now();
    }
}

static DISCONNECT_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A client waiting on a foreground job of `function` while the job's worker streams 16 MiB
/// of WORK_DATA at it (until the server stops taking them), the client reading nothing.
/// Returns the client.
#[track_caller]
pub fn flood_a_client_that_reads_nothing(server: &Server, function: &str) -> Conn {
    let mut client = server.conn();
    let h = client.submit(SUBMIT_JOB, function, "", b"");
    let mut w = server.conn();
    w.can_do(&[function]);
    w.grab();
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..256 {
        if w.try_send_raw(&req(WORK_DATA, &[&h, &chunk])).is_err() {
            break;
        }
    }
    w.sync();
    client
}

/// Closes `conn` and waits until the server has processed the disconnect.
/// The connection is first tagged with a unique SET_CLIENT_ID, then dropped;
/// `admin` polls `workers` (round trips, no sleeps) until the tag is gone.
#[track_caller]
pub fn disconnect(admin: &mut Conn, mut conn: Conn) {
    let id = format!(
        "bye-{}-{}",
        std::process::id(),
        DISCONNECT_COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    conn.send(SET_CLIENT_ID, &[id.as_bytes()]);
    conn.sync();
    drop(conn);
    wait_until(&format!("the server drops connection {id}"), || {
        !admin
            .admin("workers")
            .lines()
            .any(|l| l.split(' ').nth(2) == Some(id.as_str()))
    });
}

/// Parses admin `status` output into (func, total, running, workers) rows.
pub fn status_rows(out: &str) -> Vec<(String, u32, u32, u32)> {
    out.lines()
        .filter(|l| *l != ".")
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "status line {l:?}");
            (
                f[0].to_string(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            )
        })
        .collect()
}

/// The `status` row of one function, if listed.
pub fn status_of(admin: &mut Conn, func: &str) -> Option<(u32, u32, u32)> {
    let out = admin.admin("status");
    status_rows(&out)
        .into_iter()
        .find(|r| r.0 == func)
        .map(|r| (r.1, r.2, r.3))
}

// ---------------------------------------------------------------------------
// External tools (compat tests)
// ---------------------------------------------------------------------------

/// Finds an executable by absolute path or on PATH.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Returns true if the compat test may run; false (after printing a line) if the
/// tool is missing and `GEARSHIFT_REQUIRE_COMPAT` is unset. Panics if it is missing
/// and `GEARSHIFT_REQUIRE_COMPAT` is set.
pub fn require_tool(present: bool, what: &str) -> bool {
    if present {
        return true;
    }
    if std::env::var_os("GEARSHIFT_REQUIRE_COMPAT").is_some() {
        panic!("{what} is required (GEARSHIFT_REQUIRE_COMPAT is set) but missing");
    }
    eprintln!("skipped: {what} not available");
    false
}

/// Runs a command with a time limit; returns (status, stdout, stderr).
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> (ExitStatus, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = collect_output(&mut child);
    let st = wait_child(&mut child, limit, &format!("{cmd:?}"));
    let (o, e) = out.join();
    (st, o, e)
}

/// Background readers of a child's stdout and stderr.
pub struct Output {
    out: std::thread::JoinHandle<String>,
    err: std::thread::JoinHandle<String>,
}

impl Output {
    pub fn join(self) -> (String, String) {
        (self.out.join().unwrap(), self.err.join().unwrap())
    }
}

/// Starts threads draining the child's piped stdout and stderr.
pub fn collect_output(child: &mut Child) -> Output {
    let mut o = child.stdout.take().expect("stdout piped");
    let mut e = child.stderr.take().expect("stderr piped");
    Output {
        out: std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = o.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        }),
        err: std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = e.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        }),
    }
}

/// Waits for a child with a time limit; kills it and panics when over.
pub fn wait_child(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child process killed on drop (for long-running workers in compat tests).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Conn {
    /// Reads one text line, or None if the server closed the connection first.
    #[track_caller]
    pub fn recv_line_or_eof(&mut self) -> Option<String> {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "neither a line nor EOF within {READ_TIMEOUT:?}; have \"{}\"",
                    show(&self.buf)
                );
            }
            match self.fill(deadline - now) {
                Ok(true) => {}
                Ok(false) if self.buf.is_empty() => return None,
                Ok(false) => panic!("EOF after a partial line \"{}\"", show(&self.buf)),
                Err(()) => panic!("neither a line nor EOF; have \"{}\"", show(&self.buf)),
            }
        }
    }
}
