//! Smoke test of the harness itself: tiny runs of the built `loadtest` binary, against its
//! built-in echo server and against a gearshiftd given by `GEARSHIFTD_BIN` (skipped with a
//! note when that is unset). Each must finish in a few seconds.

use std::process::{Command, Output};

fn loadtest(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .args(["--quiet", "--timeout", "20"])
        .output()
        .expect("run loadtest");
    eprintln!(
        "loadtest {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `result:` lines of a run's output.
fn results(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("result: "))
        .map(str::to_string)
        .collect()
}

fn assert_clean(out: &Output, runs: usize) {
    assert!(out.status.success(), "exit status {:?}", out.status);
    let r = results(out);
    assert_eq!(r.len(), runs, "{r:?}");
    for line in r {
        assert!(line.contains(" ok=true lost=0 dup=0 "), "{line}");
    }
}

#[test]
fn ceiling_echo_round_trips() {
    let out = loadtest(&[
        "ceiling",
        "--jobs",
        "2000",
        "--clients",
        "4",
        "--depth",
        "2",
    ]);
    assert_clean(&out, 1);
    assert!(results(&out)[0].contains("jobs_per_s="));
}

fn gearshiftd() -> Option<String> {
    let bin = std::env::var("GEARSHIFTD_BIN").ok();
    if bin.is_none() {
        println!("note: GEARSHIFTD_BIN is unset; skipping the runs against gearshiftd");
    }
    bin
}

#[test]
fn bg_and_fg_against_gearshiftd() {
    let Some(bin) = gearshiftd() else { return };
    let shape = [
        "--jobs",
        "2000",
        "--clients",
        "2",
        "--depth",
        "8",
        "--workers",
        "2",
    ];
    let mut args = vec!["bg", "--gearshiftd", &bin];
    args.extend(shape);
    assert_clean(&loadtest(&args), 1);
    let mut args = vec!["fg", "--gearshiftd", &bin, "--functions", "3"];
    args.extend(shape);
    let out = loadtest(&args);
    assert_clean(&out, 1);
    assert!(results(&out)[0].contains("p99_us="));
    let out = loadtest(&[
        "coalesce",
        "--gearshiftd",
        &bin,
        "--jobs",
        "200",
        "--clients",
        "4",
        "--depth",
        "2",
        "--workers",
        "2",
    ]);
    assert_clean(&out, 1);
    assert!(results(&out)[0].contains("runs_per_unique=1.00"));
}

#[test]
fn a_run_that_cannot_finish_fails() {
    let Some(bin) = gearshiftd() else { return };
    // Far more jobs than one second allows: the run must time out, count the jobs it never
    // saw run as lost, and exit 1.
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "bg",
            "--gearshiftd",
            &bin,
            "--jobs",
            "50000000",
            "--timeout",
            "1",
            "--quiet",
        ])
        .output()
        .expect("run loadtest");
    assert_eq!(out.status.code(), Some(1));
    let r = results(&out);
    assert!(
        r[0].contains("ok=false") && !r[0].contains("lost=0 "),
        "{r:?}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("timed out"));
}

/// With four shards, under each `--handoff` setting, every job of a one-function load (every
/// connection moves to the owner) and of a five-function load (workers that do all five live
/// with one owner and grab across the others) runs once and is answered once.
#[test]
fn every_job_once_across_shards_and_handoffs() {
    let Some(bin) = gearshiftd() else { return };
    for handoff in ["off", "workers", "all"] {
        let flag = format!("--gearshiftd-arg=--handoff={handoff}");
        for (scenario, functions) in [("bg", "1"), ("fg", "1"), ("bg", "5"), ("fg", "5")] {
            let out = loadtest(&[
                scenario,
                "--gearshiftd",
                &bin,
                "--gearshiftd-threads",
                "4",
                &flag,
                "--functions",
                functions,
                "--jobs",
                "4000",
                "--clients",
                "6",
                "--depth",
                "8",
                "--workers",
                "6",
            ]);
            assert_clean(&out, 1);
        }
    }
}

/// The open loop: jobs go out at the offered rate, not as fast as the server answers, and
/// every job still runs once and (fg) is answered once; also with a cap on what a client may
/// have outstanding, which a slow answer makes a job wait for (and count late).
#[test]
fn open_loop_offers_the_rate_and_accounts_for_every_job() {
    let Some(bin) = gearshiftd() else { return };
    for (scenario, cap) in [("fg", None), ("bg", None), ("fg", Some("2"))] {
        let mut args = vec![
            scenario,
            "--gearshiftd",
            &bin,
            "--rate",
            "3000",
            "--jobs",
            "6000",
            "--clients",
            "3",
            "--workers",
            "4",
        ];
        if let Some(c) = cap {
            args.extend(["--depth", c]);
        }
        let out = loadtest(&args);
        assert_clean(&out, 1);
        let line = &results(&out)[0];
        assert_eq!(figure(line, "offered_per_s"), 3000.0, "{line}");
        // Two seconds of due times: a closed loop would finish far sooner, and a harness or
        // server that fell behind would take longer.
        let achieved = figure(line, "jobs_per_s");
        assert!(
            (0.8 * 3000.0..=1.01 * 3000.0).contains(&achieved),
            "achieved {achieved} jobs/s against 3000 offered: {line}"
        );
        assert!(figure(line, "p99_us") >= figure(line, "p50_us"), "{line}");
        assert!(figure(line, "max_us") >= figure(line, "p999_us"), "{line}");
        assert!(figure(line, "late_sends") <= 6000.0, "{line}");
    }
}

/// A figure of a `result:` line.
fn figure(line: &str, key: &str) -> f64 {
    let k = format!(" {key}=");
    let at = line
        .find(&k)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + k.len();
    line[at..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad {key} in {line}"))
}

/// A small soak at one and two shards: clients and workers die every few milliseconds, and
/// still every submission is accounted for (the run itself fails on any loss or duplicate).
#[test]
fn soak_accounts_for_every_job_while_peers_die() {
    let Some(bin) = gearshiftd() else { return };
    let out = loadtest(&[
        "soak",
        "--gearshiftd",
        &bin,
        "--gearshiftd-threads",
        "1,2",
        "--jobs",
        "20000",
        "--fault-every-ms",
        "10",
        "--stall",
        "10",
    ]);
    assert_clean(&out, 2);
    for line in results(&out) {
        for key in [
            "client_deaths",
            "worker_deaths_holding",
            "reruns",
            "coalesced",
            "fg_on_bg",
            "epoch_future",
            "polls",
            "cancels",
        ] {
            assert!(figure(&line, key) > 0.0, "{key} is 0: {line}");
        }
        assert_eq!(figure(&line, "completed_twice"), 0.0, "{line}");
    }
}

/// The durable variant: the server is killed with SIGKILL about every 0.2 s and
/// restarted on its SQLite file; no acknowledged background job is lost.
#[test]
fn soak_with_kill9_keeps_every_acknowledged_background_job() {
    let Some(bin) = gearshiftd() else { return };
    let db = std::env::temp_dir().join(format!("loadtest-soak-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let db_flag = format!("--gearshiftd-arg=--libsqlite3-db={}", db.display());
    let out = loadtest(&[
        "soak",
        "--gearshiftd",
        &bin,
        "--gearshiftd-threads",
        "2",
        "--gearshiftd-arg=-q",
        "--gearshiftd-arg=libsqlite3",
        &db_flag,
        // Kills happen only while submitting, which on a fast machine takes a fraction of a
        // second for 15,000 jobs: the first kill (0.1–0.3 s in) must come within it.
        "--kill-every",
        "0.2",
        "--jobs",
        "30000",
        "--stall",
        "10",
    ]);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    assert_clean(&out, 1);
    assert!(figure(&results(&out)[0], "server_kills") >= 1.0);
}

/// The soak can fail: gearmand 1.1.20 never wakes its sleeping workers when an epoch job
/// falls due (PROTOCOL.md §3.11), so jobs are left queued; it drops a background job when a
/// foreground client that joined it (or that it joined) disconnects (§3.10); and it answers
/// the client of a cancelled running job twice (§3.13). Whichever the soak meets first, it
/// says what happened (for a stall: which jobs, in what state; for a drop: which acknowledged
/// background jobs never ran) and exits 1.
#[test]
fn soak_fails_on_a_server_that_leaves_jobs_behind() {
    let gearmand = std::path::Path::new("/usr/sbin/gearmand");
    if !gearmand.exists() {
        println!("note: no gearmand; skipping");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let pid_file = std::env::temp_dir().join(format!("loadtest-soak-{port}.pid"));
    let mut server = Command::new(gearmand)
        .args([
            "--listen=127.0.0.1".to_string(),
            format!("--port={port}"),
            "--threads=1".to_string(),
            "--log-file=none".to_string(),
            format!("--pid-file={}", pid_file.display()),
        ])
        .spawn()
        .expect("start gearmand");
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = loadtest(&[
        "soak",
        "--addr",
        &addr,
        "--jobs",
        "10000",
        "--fault-every-ms",
        "10",
        "--stall",
        "3",
    ]);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(&pid_file);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(results(&out)[0].contains("ok=false"), "{stdout}");
    assert!(
        (stdout.contains("stalled") && stdout.contains("ran 0 time(s)"))
            || stdout.contains("acknowledged onto a foreground job that was dropped")
            || (stdout.contains("acknowledged and never completed")
                && stdout.contains("ran 0 time(s)"))
            || stdout.contains("WORK_COMPLETE for a handle it does not wait on"),
        "{stdout}"
    );
}

/// `fill --durable` against gearshiftd on SQLite: the drain waits for the store's deletes, and
/// the job that marks its end is run too, so nothing is left in the store afterwards.
#[test]
fn a_durable_fill_leaves_the_store_empty() {
    let Some(bin) = gearshiftd() else { return };
    let dir = std::env::temp_dir().join(format!("loadtest-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("queue.db");
    let db_arg = format!("--gearshiftd-arg=--libsqlite3-db={}", db.display());
    let out = loadtest(&[
        "fill",
        "--gearshiftd",
        &bin,
        "--jobs",
        "500",
        "--durable",
        "--gearshiftd-arg=-q",
        "--gearshiftd-arg=libsqlite3",
        &db_arg,
    ]);
    assert_clean(&out, 1);
    assert!(results(&out)[0].contains("drain_jobs_per_s="));
    let mut store = gearshift::store::sqlite::Sqlite::open(&db, "gearman_queue").unwrap();
    let left = gearshift::store::Backend::replay(&mut store).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        left.is_empty(),
        "{} jobs left in the store: {left:?}",
        left.len()
    );
}
