//! Interop with the real C gearmand 1.1.20 on the same store, both ways: what gearmand queued
//! is replayed by our backend, and what our backend wrote is delivered by gearmand to a worker.
//! gearmand is started by the shared harness (`Server::start_real_gearmand`), jobs go in with
//! its `gearman -b` client and come out through `gearman -w`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use gearshift::jobs::Priority;
use gearshift::store::{Backend, Op, StoredJob};

use super::{assert_same, del, job, uuid};
use crate::util::{Server, find_tool, gearmand_bin, status_rows, unique_name, wait_child};

/// Panics unless the real gearmand and its `gearman` client are installed: an interop test
/// that runs (it is ignored unless asked for) never passes without them.
pub fn require_gearmand() {
    assert!(
        Path::new(&gearmand_bin()).is_file() && find_tool("gearman").is_some(),
        "this test needs gearmand ({}) and gearman: run scripts/install-test-deps.sh",
        gearmand_bin()
    );
}

/// `gearman -b`: a background job with an explicit unique, data from stdin.
fn submit_bg(g: &Server, function: &str, unique: &str, priority: Priority, data: &[u8]) {
    use std::io::Write;
    let mut cmd = Command::new("gearman");
    cmd.args(["-h", "127.0.0.1", "-p", &g.port().to_string(), "-b"])
        .args(["-f", function, "-u", unique]);
    match priority {
        Priority::High => {
            cmd.arg("-I");
        }
        Priority::Low => {
            cmd.arg("-L");
        }
        Priority::Normal => {}
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gearman");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "gearman -b -f {function} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How many jobs gearmand's admin `status` lists as queued for `function`.
fn queued(g: &Server, function: &str) -> Option<u32> {
    status_rows(&g.conn().admin("status"))
        .into_iter()
        .find(|r| r.0 == function)
        .map(|r| r.1)
}

/// Runs `gearman -w -f FUNCTION -c N`, whose command appends each job's payload (and a
/// separator) to a file; returns the payloads in delivery order.
fn drain(g: &Server, function: &str, n: usize) -> Vec<Vec<u8>> {
    let out = g.dir().join(unique_name("drained"));
    let script = format!(
        "cat >> '{}'; printf '\\n<<END>>\\n' >> '{}'",
        out.display(),
        out.display()
    );
    let mut child = Command::new("gearman")
        .args(["-h", "127.0.0.1", "-p", &g.port().to_string(), "-w"])
        .args([
            "-f",
            function,
            "-c",
            &n.to_string(),
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gearman -w");
    wait_child(
        &mut child,
        Duration::from_secs(20),
        &format!("gearman -w -f {function} -c {n} (gearmand delivered fewer jobs)"),
    );
    let bytes = std::fs::read(&out).unwrap_or_default();
    let mut jobs = Vec::new();
    let mut rest = &bytes[..];
    let sep = b"\n<<END>>\n";
    while let Some(i) = rest.windows(sep.len()).position(|w| w == sep) {
        jobs.push(rest[..i].to_vec());
        rest = &rest[i + sep.len()..];
    }
    jobs
}

/// gearmand -> us: jobs submitted to the real gearmand with no worker are replayed by our
/// backend with their function, unique, data and priority; our deletes then remove its rows.
pub fn check_from_gearmand(
    queue_args: &[&str],
    open: &mut dyn FnMut() -> Box<dyn Backend>,
    jobs: &[StoredJob],
) {
    let mut g = Server::start_real_gearmand(queue_args);
    for j in jobs {
        submit_bg(
            &g,
            std::str::from_utf8(&j.function).unwrap(),
            std::str::from_utf8(&j.unique).unwrap(),
            j.priority,
            &j.data,
        );
    }
    for j in jobs {
        let f = String::from_utf8_lossy(&j.function).into_owned();
        assert!(
            queued(&g, &f).unwrap_or(0) >= 1,
            "gearmand lost {f}: {}",
            g.log()
        );
    }
    // SIGTERM: gearmand closes its queue store on the way out.
    g.stop();
    let mut s = open();
    assert_same(s.replay().unwrap(), jobs);
    s.apply(&jobs.iter().map(del).collect::<Vec<_>>()).unwrap();
    assert_same(s.replay().unwrap(), &[]);
}

/// us -> gearmand: jobs our backend wrote are queued by gearmand at start-up, delivered to a
/// worker with their payloads in priority order, and gearmand's own deletes remove our rows.
pub fn check_to_gearmand(
    queue_args: &[&str],
    open: &mut dyn FnMut() -> Box<dyn Backend>,
    function: &str,
    jobs: &[StoredJob],
    priorities_kept: bool,
) {
    {
        let mut s = open();
        s.apply(&jobs.iter().cloned().map(Op::Add).collect::<Vec<_>>())
            .unwrap();
    }
    let mut g = Server::start_real_gearmand(queue_args);
    assert_eq!(
        queued(&g, function),
        Some(jobs.len() as u32),
        "gearmand's status after replay: {}",
        g.log()
    );
    let got = drain(&g, function, jobs.len());
    // gearmand hands out HIGH, then NORMAL, then LOW.
    let mut want = jobs.to_vec();
    want.sort_by_key(|j| j.priority as u8);
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want_sorted: Vec<Vec<u8>> = want.iter().map(|j| j.data.clone()).collect();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted, "payloads gearmand delivered");
    if priorities_kept {
        let prio_of = |d: &Vec<u8>| want.iter().find(|j| &j.data == d).unwrap().priority as u8;
        let prios: Vec<u8> = got.iter().map(prio_of).collect();
        let mut sorted = prios.clone();
        sorted.sort();
        assert_eq!(prios, sorted, "gearmand delivered in priority order");
    }
    g.stop();
    assert_same(open().replay().unwrap(), &[]);
}

/// Jobs the gearman CLI can submit (text function/unique, no `-` in the function: gearmand's
/// redis replay splits there).
pub fn cli_jobs(tag: &str) -> Vec<StoredJob> {
    let f = format!("gs{tag}");
    vec![
        job(
            f.as_bytes(),
            &uuid(7),
            Priority::Normal,
            b"from gearmand 1",
            0,
        ),
        job(f.as_bytes(), b"u-2", Priority::High, b"from gearmand 2", 0),
        job(f.as_bytes(), b"u3", Priority::Low, b"bin\0ary\xff", 0),
        // 63, not 64: gearmand 1.1.20 (or its CLI) cuts a 64-byte unique to 63 bytes.
        job(
            format!("{f}x").as_bytes(),
            &[b'z'; 63],
            Priority::Normal,
            b"",
            0,
        ),
    ]
}

/// Jobs for gearmand to deliver; one function, all priorities, binary payloads.
pub fn worker_jobs(function: &str) -> Vec<StoredJob> {
    let f = function.as_bytes();
    vec![
        job(f, b"w1", Priority::Low, b"low one", 0),
        job(f, &uuid(3), Priority::Normal, b"normal\0with nul", 0),
        job(f, b"w-3", Priority::High, b"high one", 0),
        // 63, not 64: gearmand 1.1.20 replays a 64-byte unique but then hands the worker a
        // payload with a NUL in front (its unique buffer has no room for the terminator).
        job(f, &[b'q'; 63], Priority::Normal, b"\xff\xfe binary", 0),
    ]
}
