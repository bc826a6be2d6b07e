//! Durable background jobs (issue: queue stores): acknowledged means stored. Background load,
//! `kill -9` at random moments, restart on the same store, drain: every acknowledged job runs,
//! none is invented, none runs twice, and a finished job never comes back. Runs against
//! gearmand too (`-q libsqlite3` is in Debian's build), which keeps the same promise one
//! transaction at a time. The server stores (PostgreSQL, MySQL, Redis) run when
//! `scripts/start-test-stores.sh` has exported their addresses.

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

/// The address `scripts/start-test-stores.sh` exported for a server store, or `None` (the test
/// then skips, unless `GEARSHIFT_REQUIRE_STORES=1` says every store must be tested).
fn store_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("GEARSHIFT_REQUIRE_STORES").as_deref() == Ok("1") => {
            panic!("{var} is not set: run `eval \"$(scripts/start-test-stores.sh)\"` first")
        }
        _ => {
            eprintln!("skipping: {var} is not set (scripts/start-test-stores.sh)");
            None
        }
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
