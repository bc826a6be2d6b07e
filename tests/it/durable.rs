//! Durable background jobs (issue: queue stores): acknowledged means stored. Background load,
//! `kill -9` at random moments, restart on the same store, drain: every acknowledged job runs,
//! none is invented, none runs twice, and a finished job never comes back. Runs against
//! gearmand too (`-q libsqlite3` is in Debian's build), which keeps the same promise one
//! transaction at a time. The server stores' tests (PostgreSQL, MySQL, Redis) are ignored
//! unless asked for (`--ignored durable::`), and then need the addresses
//! `scripts/start-test-stores.sh` exports.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::util::*;

/// A tiny xorshift, seeded per test, for the kill moments.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Submits background jobs, a window of 32 in flight, until `stop` passes or the server dies;
/// returns the uniques submitted and those acknowledged with JOB_CREATED.
fn submit_until(
    s: &Server,
    func: &str,
    next: &mut u64,
    stop: Instant,
) -> (Vec<String>, Vec<String>) {
    use std::io::{Read, Write};
    let mut stream = s.conn().stream().try_clone().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (mut sent, mut acked) = (Vec::new(), Vec::new());
    let mut in_flight = std::collections::VecDeque::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    'outer: loop {
        while in_flight.len() < 32 && Instant::now() < stop {
            let unique = format!("job-{next}");
            *next += 1;
            if stream
                .write_all(&req(
                    SUBMIT_JOB_BG,
                    &[func.as_bytes(), unique.as_bytes(), unique.as_bytes()],
                ))
                .is_err()
            {
                break 'outer;
            }
            sent.push(unique.clone());
            in_flight.push_back(unique);
        }
        if in_flight.is_empty() {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) => break, // killed
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        // Each complete JOB_CREATED acknowledges the oldest submission in flight.
        while buf.len() >= 12 {
            let size = u32::from_be_bytes(buf[8..12].try_into().unwrap()) as usize;
            if buf.len() < 12 + size {
                break;
            }
            let ty = u32::from_be_bytes(buf[4..8].try_into().unwrap());
            assert_eq!(ty, JOB_CREATED, "unexpected packet {}", type_name(ty));
            acked.push(in_flight.pop_front().unwrap());
            buf.drain(..12 + size);
        }
    }
    (sent, acked)
}

/// Runs every queued job of `func` with one worker, returning the uniques it ran.
fn drain(s: &Server, func: &str) -> Vec<String> {
    let mut w = s.conn();
    w.can_do(&[func]);
    let mut ran = Vec::new();
    loop {
        w.send(GRAB_JOB_UNIQ, &[]);
        let p = w.recv();
        match p.ty {
            NO_JOB => break,
            JOB_ASSIGN_UNIQ => {
                let a = p.argn(4);
                ran.push(String::from_utf8(a[2].clone()).unwrap());
                w.send(WORK_COMPLETE, &[&a[0], b""]);
            }
            other => panic!("worker got {}", type_name(other)),
        }
    }
    ran
}

fn crash_and_drain(store_args: &[&str], seed: u64) {
    let func = format!("durable{seed:x}");
    let mut rng = Rng(seed | 1);
    let mut next = 0u64;
    let (mut sent, mut acked) = (HashSet::new(), HashSet::new());
    for _ in 0..3 {
        let mut s = Server::start(store_args);
        // Let the load run 50-300 ms, then pull the plug.
        let stop = Instant::now() + Duration::from_millis(50 + rng.below(250));
        let killer = {
            let pid = s.pid();
            std::thread::spawn(move || {
                std::thread::sleep(stop.saturating_duration_since(Instant::now()));
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            })
        };
        let (s_sent, s_acked) =
            submit_until(&s, &func, &mut next, stop + Duration::from_secs(3600));
        killer.join().unwrap();
        let _ = s.wait_exit(Duration::from_secs(10));
        sent.extend(s_sent);
        acked.extend(s_acked);
    }
    assert!(
        !acked.is_empty(),
        "no job was acknowledged before the kills"
    );
    let mut s = Server::start(store_args);
    let ran = drain(&s, &func);
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for u in &ran {
        *counts.entry(u).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "jobs run twice: {twice:?}");
    let invented: Vec<_> = ran.iter().filter(|u| !sent.contains(*u)).collect();
    assert!(invented.is_empty(), "jobs nobody submitted: {invented:?}");
    let lost: Vec<_> = acked.iter().filter(|u| !counts.contains_key(u)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged jobs lost of {}: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!(
        "{} submitted, {} acknowledged, {} run after 3 kills",
        sent.len(),
        acked.len(),
        ran.len()
    );
    // A clean stop writes the last deletes; nothing comes back after it.
    s.stop();
    let s = Server::start(store_args);
    assert_eq!(
        drain(&s, &func),
        Vec::<String>::new(),
        "finished jobs came back"
    );
}

#[test]
fn sqlite_kill_9_loses_no_acknowledged_job() {
    let dir = TempDir::new("sqlite-crash");
    let db = format!("--libsqlite3-db={}", dir.path().join("queue.db").display());
    crash_and_drain(&["-q", "libsqlite3", &db], 0x5eed_0001);
}

#[test]
fn sqlite_replays_priorities_epochs_and_coalesces_on_replayed_uniques() {
    let dir = TempDir::new("sqlite-replay");
    let db = format!("--libsqlite3-db={}", dir.path().join("queue.db").display());
    let args = ["-q", "libsqlite3", db.as_str()];
    let mut s = Server::start(&args);
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_LOW_BG, "f", "low", b"l");
    c.submit(SUBMIT_JOB_BG, "f", "normal", b"n");
    c.submit(SUBMIT_JOB_HIGH_BG, "f", "high", b"h");
    let far = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600)
        .to_string();
    // (On another function: gearmand 1.1 lets a not-yet-due NORMAL job hide due LOW ones.)
    c.send(SUBMIT_JOB_EPOCH, &[b"g", b"later", far.as_bytes(), b"e"]);
    c.expect_type(JOB_CREATED);
    // A foreground job is never stored.
    c.send(SUBMIT_JOB, &[b"f", b"fg", b"x"]);
    c.expect_type(JOB_CREATED);
    drop(c);
    s.signal("KILL");
    let _ = s.wait_exit(Duration::from_secs(10));
    let s = Server::start(&args);
    let mut c = s.conn();
    // Coalescing works on a replayed job: same handle back.
    let mut a = s.conn();
    let listed = a.admin("show unique jobs");
    for u in ["low", "normal", "high", "later"] {
        assert!(listed.lines().any(|l| l == u), "{u} not replayed: {listed}");
    }
    assert!(
        !listed.lines().any(|l| l == "fg"),
        "a foreground job was stored: {listed}"
    );
    let h1 = c.submit(SUBMIT_JOB_BG, "f", "normal", b"n");
    assert_eq!(c.submit(SUBMIT_JOB_BG, "f", "normal", b"n"), h1);
    // Priorities survive: high, normal, low.
    let mut w = s.conn();
    w.can_do(&["f"]);
    let order: Vec<Vec<u8>> = (0..3).map(|_| w.grab_uniq().2).collect();
    assert_eq!(
        order,
        [b"high".to_vec(), b"normal".to_vec(), b"low".to_vec()]
    );
    w.grab_none();
    // The epoch job came back not yet due.
    let mut g = s.conn();
    g.can_do(&["g"]);
    g.grab_none();
}

/// A background submission that coalesces onto a queued foreground job is acknowledged only
/// once the job is stored: after a `kill -9` the job comes back, though its foreground client
/// went away, and it runs (gearmand neither stores nor keeps such a job).
#[test]
fn a_background_submission_onto_a_foreground_job_stores_it() {
    if skip_under_gearmand("gearmand drops such a job with its foreground clients") {
        return;
    }
    let dir = TempDir::new("sqlite-bg-onto-fg");
    let db = format!("--libsqlite3-db={}", dir.path().join("queue.db").display());
    let args = ["-q", "libsqlite3", db.as_str()];
    let mut s = Server::start(&args);
    let mut fg = s.conn();
    let h = fg.submit(SUBMIT_JOB, "f", "shared", b"payload");
    let mut bg = s.conn();
    assert_eq!(bg.submit(SUBMIT_JOB_BG, "f", "shared", b"ignored"), h);
    drop(fg);
    drop(bg);
    s.signal("KILL");
    let _ = s.wait_exit(Duration::from_secs(10));
    let s = Server::start(&args);
    let mut w = s.conn();
    w.can_do(&["f"]);
    let (_, _, unique, data) = w.grab_uniq();
    assert_eq!(
        (unique.as_slice(), data.as_slice()),
        (&b"shared"[..], &b"payload"[..])
    );
}

/// The address `scripts/start-test-stores.sh` exported for a server store. The tests that need
/// one are `#[ignore]`d, so they run only when asked for (`--ignored durable::`, as
/// scripts/test.sh does after starting the stores), and then fail without it: a store test never
/// passes untested.
fn store_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => panic!("{var} is not set: run `eval \"$(scripts/start-test-stores.sh)\"` first"),
    }
}

/// A table or prefix name no other test run uses, so every run starts on an empty queue.
fn fresh_name(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("gs_{tag}_{}_{nanos}", std::process::id())
}

#[test]
#[ignore = "needs PostgreSQL: see scripts/start-test-stores.sh"]
fn postgres_kill_9_loses_no_acknowledged_job() {
    let Some(conninfo) = store_env("GEARSHIFT_TEST_PG") else {
        return;
    };
    let table = fresh_name("pg");
    let args = [
        "-q",
        "Postgres",
        "--libpq-conninfo",
        &conninfo,
        "--libpq-table",
        &table,
    ];
    crash_and_drain(&args, 0x5eed_0002);
}

#[test]
#[ignore = "needs MariaDB: see scripts/start-test-stores.sh"]
fn mysql_kill_9_loses_no_acknowledged_job() {
    let Some(spec) = store_env("GEARSHIFT_TEST_MYSQL") else {
        return;
    };
    let parts: Vec<&str> = spec.splitn(5, ':').collect();
    let [host, port, user, password, db] = parts[..] else {
        panic!("GEARSHIFT_TEST_MYSQL={spec}")
    };
    let table = fresh_name("my");
    let (host, port, user, password, db) = (
        format!("--mysql-host={host}"),
        format!("--mysql-port={port}"),
        format!("--mysql-user={user}"),
        format!("--mysql-password={password}"),
        format!("--mysql-db={db}"),
    );
    let args = [
        "-q",
        "MySQL",
        &host,
        &port,
        &user,
        &password,
        &db,
        "--mysql-table",
        &table,
    ];
    crash_and_drain(&args, 0x5eed_0003);
}

#[test]
#[ignore = "needs redis: see scripts/start-test-stores.sh"]
fn redis_kill_9_loses_no_acknowledged_job() {
    let Some(addr) = store_env("GEARSHIFT_TEST_REDIS") else {
        return;
    };
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let prefix = fresh_name("rd");
    let args = [
        "-q",
        "redis",
        "--redis-server",
        host,
        "--redis-port",
        port,
        "--redis-prefix",
        &prefix,
    ];
    crash_and_drain(&args, 0x5eed_0004);
}

/// A durable background submission is answered only once the store has the job, possibly
/// turns later; answers to what the client pipelined behind it must still come in request
/// order, with one shard, with two, and whatever `--handoff` does with the connection.
#[test]
fn answers_keep_request_order_behind_a_durable_submission() {
    for (threads, handoff) in [("1", "all"), ("2", "off"), ("2", "workers"), ("2", "all")] {
        let dir = TempDir::new("sqlite-order");
        let db = format!("--libsqlite3-db={}", dir.path().join("queue.db").display());
        let threads = format!("--threads={threads}");
        let handoff = format!("--handoff={handoff}");
        let s = Server::start_with(&["-q", "libsqlite3", &db], &[&threads, &handoff]);
        let mut c = s.conn();
        // Functions that land on different owners with two shards.
        let mut bytes = Vec::new();
        for f in ["f0", "f1", "f2", "f3"] {
            bytes.extend(req(SUBMIT_JOB_BG, &[f.as_bytes(), b"", f.as_bytes()]));
            bytes.extend(req(SUBMIT_JOB, &[f.as_bytes(), b"", b"fg"]));
        }
        // A worker registration after a durable submit, then a round trip.
        bytes.extend(req(CAN_DO, &[b"f5"]));
        bytes.extend(req(ECHO_REQ, &[b"last"]));
        c.send_raw(&bytes);
        let mut handles = Vec::new();
        for _ in 0..8 {
            handles.push(c.expect_type(JOB_CREATED).body);
        }
        c.expect(ECHO_RES, &[b"last"]);
        // Each JOB_CREATED names the job submitted in its place: ask a worker which function
        // and payload every handle carries.
        let mut w = s.conn();
        w.can_do(&["f0", "f1", "f2", "f3"]);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..8 {
            let (h, f, data) = w.grab();
            seen.insert(h, (f, data));
        }
        for (i, f) in ["f0", "f1", "f2", "f3"].iter().enumerate() {
            let bg = &seen[&handles[2 * i]];
            assert_eq!(
                (&bg.0[..], &bg.1[..]),
                (f.as_bytes(), f.as_bytes()),
                "{threads} {handoff}"
            );
            let fg = &seen[&handles[2 * i + 1]];
            assert_eq!(
                (&fg.0[..], &fg.1[..]),
                (f.as_bytes(), &b"fg"[..]),
                "{threads} {handoff}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The database server itself killed mid-batch.

/// A database server of a test's own, which the test may freeze, kill and restart: started by
/// `scripts/start-test-stores.sh` (the shared servers other tests use are never touched),
/// stopped and its folder removed on drop.
struct OwnDatabase {
    dir: String,
    store: &'static str,
    /// The `export` lines the script printed, as (name, value).
    env: HashMap<String, String>,
}

const STORES_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/start-test-stores.sh");

impl OwnDatabase {
    /// Starts `store` (postgres or mariadb). `None` after a note when it cannot be started and
    /// the store tests are not required; a panic when they are.
    fn start(store: &'static str, var: &str) -> Option<OwnDatabase> {
        let out = std::process::Command::new("bash")
            .args([STORES_SCRIPT, store])
            .output()
            .expect("run start-test-stores.sh");
        let mut env = HashMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                env.insert(k.to_string(), v.trim_matches('\'').to_string());
            }
        }
        let db = OwnDatabase {
            dir: env
                .get("GEARSHIFT_TEST_STORES_DIR")
                .cloned()
                .unwrap_or_default(),
            store,
            env,
        };
        if db.env.contains_key(var) {
            return Some(db);
        }
        let why = String::from_utf8_lossy(&out.stderr).into_owned();
        panic!("could not start a {store} of the test's own: {why}");
    }

    fn var(&self, name: &str) -> &str {
        &self.env[name]
    }

    /// `kill -SIG` to every process of the server.
    fn signal(&self, sig: &str) {
        let st = std::process::Command::new("bash")
            .args([STORES_SCRIPT, "signal", &self.dir, self.store, sig])
            .status()
            .unwrap();
        assert!(st.success(), "signal {sig} to {}", self.store);
    }

    /// Starts it again on its data (crash recovery) and port.
    fn restart(&self) {
        let st = std::process::Command::new("bash")
            .args([STORES_SCRIPT, "restart", &self.dir, self.store])
            .status()
            .unwrap();
        assert!(st.success(), "restart {}", self.store);
    }
}

impl Drop for OwnDatabase {
    fn drop(&mut self) {
        if !self.dir.is_empty() {
            // A frozen server must run again to be stopped.
            let _ = std::process::Command::new("bash")
                .args([STORES_SCRIPT, "signal", &self.dir, self.store, "CONT"])
                .stderr(std::process::Stdio::null())
                .status();
            let _ = std::process::Command::new("bash")
                .args([STORES_SCRIPT, "stop", &self.dir])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Background submissions on one connection, a window of 32 in flight, each answered in order
/// with JOB_CREATED (acknowledged) or `ERROR QUEUE_ERROR` (refused). Anything else fails the
/// test.
struct Submitter {
    conn: Conn,
    func: String,
    next: u64,
    in_flight: std::collections::VecDeque<u64>,
    buf: Vec<u8>,
    acked: Vec<u64>,
    refused: Vec<u64>,
}

impl Submitter {
    fn new(s: &Server, func: &str) -> Submitter {
        let conn = s.conn();
        conn.stream()
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        Submitter {
            conn,
            func: func.to_string(),
            next: 0,
            in_flight: Default::default(),
            buf: Vec::new(),
            acked: Vec::new(),
            refused: Vec::new(),
        }
    }

    fn unique(n: u64) -> String {
        format!("job-{n}")
    }

    /// Keeps the window full (when `submit`) and reads answers until `done` or `limit`.
    fn run(&mut self, submit: bool, limit: Duration, done: impl Fn(&Submitter) -> bool) -> bool {
        use std::io::{Read, Write};
        let end = Instant::now() + limit;
        let mut chunk = [0u8; 65536];
        while !done(self) {
            if Instant::now() > end {
                return false;
            }
            let mut out = Vec::new();
            while submit && self.in_flight.len() < 32 {
                let u = Self::unique(self.next);
                out.extend(req(
                    SUBMIT_JOB_BG,
                    &[self.func.as_bytes(), u.as_bytes(), u.as_bytes()],
                ));
                self.in_flight.push_back(self.next);
                self.next += 1;
            }
            if !out.is_empty() {
                self.conn.stream().write_all(&out).unwrap();
            }
            match self.conn.stream().read(&mut chunk) {
                Ok(0) => panic!("gearshiftd closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading answers: {e}"),
            }
            while self.buf.len() >= 12 {
                let size = u32::from_be_bytes(self.buf[8..12].try_into().unwrap()) as usize;
                if self.buf.len() < 12 + size {
                    break;
                }
                let ty = u32::from_be_bytes(self.buf[4..8].try_into().unwrap());
                let body = self.buf[12..12 + size].to_vec();
                self.buf.drain(..12 + size);
                let n = self
                    .in_flight
                    .pop_front()
                    .unwrap_or_else(|| panic!("{} with no submission waiting", type_name(ty)));
                match ty {
                    JOB_CREATED => self.acked.push(n),
                    ERROR if body.starts_with(b"QUEUE_ERROR\0") => self.refused.push(n),
                    _ => panic!(
                        "submission {n} answered {} {:?}",
                        type_name(ty),
                        String::from_utf8_lossy(&body)
                    ),
                }
            }
        }
        true
    }

    /// Submits and reads for `d`.
    fn load_for(&mut self, d: Duration) {
        self.run(true, d, |_| false);
    }

    /// Submits until a job submitted from now on is acknowledged: the store is written again.
    fn load_until_acked(&mut self, what: &str) {
        let from = self.next;
        let ok = self.run(true, Duration::from_secs(60), |s| {
            s.acked.last().is_some_and(|&n| n >= from)
        });
        assert!(ok, "no submission acknowledged within 60 s {what}");
    }

    /// Stops submitting and waits for every answer.
    fn finish(&mut self) {
        let ok = self.run(false, Duration::from_secs(60), |s| s.in_flight.is_empty());
        assert!(ok, "{} submissions never answered", self.in_flight.len());
    }
}

/// The database server itself dies mid-batch, three times, while gearshiftd keeps running:
/// - first frozen (SIGSTOP) while the store thread waits on a batch it sent, then killed, so
///   the batch is certainly lost mid-way; the load stops, and the store thread must clean up
///   after that batch by itself once the server is back (`queue` says `ok` with no new job);
/// - then killed (SIGKILL, every process of it) at random moments under load.
///
/// Meanwhile every submission gets exactly one answer, JOB_CREATED or QUEUE_ERROR; after the
/// server restarts, submissions are acknowledged again. At the end gearshiftd is killed and
/// started again on the store: exactly the acknowledged jobs come back, each once. Nothing
/// acknowledged is lost, and nothing refused comes back, even from a batch whose commit
/// outcome the store thread never learned.
fn database_killed_mid_batch(db: &OwnDatabase, args: &[&str], seed: u64) {
    let func = format!("dbcrash{seed:x}");
    let mut rng = Rng(seed | 1);
    let mut s = Server::start(args);
    let mut load = Submitter::new(&s, &func);
    load.load_until_acked("at the start");

    // Frozen with a batch in flight, then killed.
    load.load_for(Duration::from_millis(50 + rng.below(200)));
    db.signal("STOP");
    load.load_for(Duration::from_millis(300));
    db.signal("KILL");
    load.load_for(Duration::from_millis(200));
    load.finish();
    db.restart();
    let mut admin = s.conn();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let line = admin.admin("queue");
        if line.ends_with(" ok\n") {
            break;
        }
        assert!(
            Instant::now() < end,
            "the store thread did not write again after the restart: {line}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    load.load_until_acked("after the first restart");

    // Killed at random moments under load.
    for round in 0..2 {
        load.load_for(Duration::from_millis(50 + rng.below(250)));
        db.signal("KILL");
        load.load_for(Duration::from_millis(200));
        db.restart();
        load.load_until_acked(&format!("after restart {}", round + 2));
    }
    load.finish();
    assert!(!load.refused.is_empty(), "no submission was refused");

    s.signal("KILL");
    let _ = s.wait_exit(Duration::from_secs(10));
    let s = Server::start(args);
    let ran = drain(&s, &func);
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for u in &ran {
        *counts.entry(u).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "jobs run twice: {twice:?}");
    let acked: HashSet<String> = load.acked.iter().map(|&n| Submitter::unique(n)).collect();
    let refused: HashSet<String> = load.refused.iter().map(|&n| Submitter::unique(n)).collect();
    let lost: Vec<_> = acked.iter().filter(|u| !counts.contains_key(u)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged jobs lost of {}: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    let back: Vec<_> = ran.iter().filter(|u| refused.contains(*u)).collect();
    assert!(
        back.is_empty(),
        "{} refused jobs came back: {:?}",
        back.len(),
        &back[..back.len().min(5)]
    );
    let invented: Vec<_> = ran.iter().filter(|u| !acked.contains(*u)).collect();
    assert!(
        invented.is_empty(),
        "jobs nobody had acknowledged: {invented:?}"
    );
    eprintln!(
        "{} submitted, {} acknowledged, {} refused, {} run after 3 database crashes",
        load.next,
        acked.len(),
        refused.len(),
        ran.len()
    );
}

#[test]
#[ignore = "needs PostgreSQL: see scripts/start-test-stores.sh"]
fn postgres_killed_mid_batch_loses_no_acknowledged_job_and_revives_no_refused_one() {
    if skip_under_gearmand("gearshiftd's store thread") || store_env("GEARSHIFT_TEST_PG").is_none()
    {
        return;
    }
    let Some(db) = OwnDatabase::start("postgres", "GEARSHIFT_TEST_PG") else {
        return;
    };
    let table = fresh_name("pgcrash");
    let conninfo = db.var("GEARSHIFT_TEST_PG").to_string();
    let args = [
        "-q",
        "Postgres",
        "--libpq-conninfo",
        &conninfo,
        "--libpq-table",
        &table,
    ];
    database_killed_mid_batch(&db, &args, 0x5eed_0005);
}

#[test]
#[ignore = "needs MariaDB: see scripts/start-test-stores.sh"]
fn mysql_killed_mid_batch_loses_no_acknowledged_job_and_revives_no_refused_one() {
    if skip_under_gearmand("gearshiftd's store thread")
        || store_env("GEARSHIFT_TEST_MYSQL").is_none()
    {
        return;
    }
    let Some(db) = OwnDatabase::start("mariadb", "GEARSHIFT_TEST_MYSQL") else {
        return;
    };
    let spec = db.var("GEARSHIFT_TEST_MYSQL").to_string();
    let parts: Vec<&str> = spec.splitn(5, ':').collect();
    let [host, port, user, password, db_name] = parts[..] else {
        panic!("GEARSHIFT_TEST_MYSQL={spec}")
    };
    let table = fresh_name("mycrash");
    let (host, port, user, password, db_name) = (
        format!("--mysql-host={host}"),
        format!("--mysql-port={port}"),
        format!("--mysql-user={user}"),
        format!("--mysql-password={password}"),
        format!("--mysql-db={db_name}"),
    );
    let args = [
        "-q",
        "MySQL",
        &host,
        &port,
        &user,
        &password,
        &db_name,
        "--mysql-table",
        &table,
    ];
    database_killed_mid_batch(&db, &args, 0x5eed_0006);
}

/// Group commit waits up to `--store-max-wait` for more submissions to join a batch, but stops
/// once none has come for a fifth of it: a lone submission is not held for the whole wait.
#[test]
fn a_lone_durable_submission_waits_a_fifth_of_store_max_wait() {
    if skip_under_gearmand("gearshiftd's --store-max-wait") {
        return;
    }
    let dir = TempDir::new("sqlite-gap");
    let db = format!("--libsqlite3-db={}", dir.path().join("queue.db").display());
    let s = Server::start(&["-q", "libsqlite3", &db, "--store-max-wait=5000000"]);
    let mut c = s.conn();
    let t = Instant::now();
    c.submit(SUBMIT_JOB_BG, "f", "lone", b"x");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(4000),
        "acknowledged after {took:?}: expected about 1 s (a fifth of 5 s) plus a commit"
    );
}
