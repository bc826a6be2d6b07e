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
