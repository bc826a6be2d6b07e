//! Queue-store backends against real servers on loopback, no mocks (src/store/*.rs).
//!
//! - SQLite always runs (the database is a file in a temp dir).
//! - PostgreSQL, MariaDB/MySQL and redis run when their variable is set, as
//!   `scripts/start-test-stores.sh` exports them:
//!   `eval "$(scripts/start-test-stores.sh)"; cargo test --test store; scripts/start-test-stores.sh stop`.
//!   Unset, a test prints a note and passes, unless `GEARSHIFT_REQUIRE_STORES=1`, which makes a
//!   missing server (or a missing gearmand/gearman for the interop tests) a failure.
//! - The interop tests run the real C gearmand 1.1.20 (`/usr/sbin/gearmand`, or `GEARMAND_BIN`)
//!   and its `gearman` client on the same store, both ways: what gearmand queued is replayed by
//!   our backend, and what our backend wrote is delivered by gearmand to a worker.
//!
//! Every test works in its own table (SQL) or key prefix (redis), so they run in parallel on
//! one server.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gearshift::jobs::Priority;
use gearshift::store::{Backend, Op, StoredJob};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this test process and call, for temp dirs, tables and key prefixes.
fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("gs_{tag}_{}_{n}", std::process::id())
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique_name(tag));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn required() -> bool {
    std::env::var("GEARSHIFT_REQUIRE_STORES").is_ok_and(|v| v == "1")
}

/// The value of a store variable, or None after a note (panics under GEARSHIFT_REQUIRE_STORES=1).
fn store_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if required() {
                panic!(
                    "{var} is unset but GEARSHIFT_REQUIRE_STORES=1: run scripts/start-test-stores.sh"
                );
            }
            eprintln!(
                "skipped: {var} is unset (eval \"$(scripts/start-test-stores.sh)\" to run it)"
            );
            None
        }
    }
}

fn gearmand_bin() -> String {
    std::env::var("GEARMAND_BIN").unwrap_or_else(|_| "/usr/sbin/gearmand".to_string())
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// True when the real gearmand and the `gearman` client are there; a note (or a panic under
/// GEARSHIFT_REQUIRE_STORES=1) otherwise.
fn have_gearmand() -> bool {
    if Path::new(&gearmand_bin()).is_file() && on_path("gearman") {
        return true;
    }
    if required() {
        panic!("gearmand or gearman missing but GEARSHIFT_REQUIRE_STORES=1");
    }
    eprintln!("skipped: gearmand or gearman not installed (scripts/install-test-deps.sh)");
    false
}

fn job(function: &[u8], unique: &[u8], priority: Priority, data: &[u8], when: i64) -> StoredJob {
    StoredJob {
        function: function.to_vec(),
        unique: unique.to_vec(),
        priority,
        data: data.to_vec(),
        when,
    }
}

fn del(j: &StoredJob) -> Op {
    Op::Delete {
        function: j.function.clone(),
        unique: j.unique.clone(),
    }
}

/// Jobs keyed by (function, unique), so scan order does not matter.
fn by_key(jobs: Vec<StoredJob>) -> BTreeMap<(Vec<u8>, Vec<u8>), StoredJob> {
    let mut m = BTreeMap::new();
    for j in jobs {
        let k = (j.function.clone(), j.unique.clone());
        assert!(m.insert(k, j.clone()).is_none(), "replayed twice: {j:?}");
    }
    m
}

fn assert_same(got: Vec<StoredJob>, want: &[StoredJob]) {
    let got = by_key(got);
    let want = by_key(want.to_vec());
    if got != want {
        let show = |m: &BTreeMap<(Vec<u8>, Vec<u8>), StoredJob>| {
            m.values()
                .map(|j| {
                    format!(
                        "{:?}/{:?} p={:?} when={} data={} bytes {:?}",
                        String::from_utf8_lossy(&j.function),
                        String::from_utf8_lossy(&j.unique),
                        j.priority,
                        j.when,
                        j.data.len(),
                        String::from_utf8_lossy(&j.data[..j.data.len().min(24)])
                    )
                })
                .collect::<Vec<_>>()
        };
        panic!(
            "replay differs\n got: {:#?}\nwant: {:#?}",
            show(&got),
            show(&want)
        );
    }
}

/// A 36-character UUID-shaped unique, as libgearman generates.
fn uuid(n: u32) -> Vec<u8> {
    format!("{n:08x}-e7f2-11f1-a8f2-02fc00000001").into_bytes()
}

/// The jobs every backend must keep: binary data with NULs, all priorities, an epoch time,
/// function names with `-`, 64-byte uniques, UUID uniques, an empty payload, a large payload,
/// and two keys that collide if (function, unique) is joined with `-` naively.
fn fixture(text_only: bool) -> Vec<StoredJob> {
    let mut binary: Vec<u8> = (0..=255u8).collect();
    binary.extend_from_slice(b"\0\0tail\0");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let u64a = [b'x'; 64];
    let mut u64b = [b'y'; 64];
    u64b[10] = b'-';
    let mut jobs = vec![
        job(b"plain", b"u1", Priority::Normal, b"hello world", 0),
        job(b"plain", b"u2", Priority::High, b"second", 0),
        job(b"resize-image", &uuid(1), Priority::Low, b"img", 0),
        job(b"resize-image", &uuid(2), Priority::High, &binary, 0),
        job(b"bin", &u64a, Priority::Normal, &binary, 1_700_000_000),
        job(b"bin-ary-fn", &u64b, Priority::Low, b"\0", 2_000_000_000),
        job(b"empty", b"e1", Priority::Normal, b"", 0),
        job(b"big", b"b1", Priority::Normal, &big, 0),
        job(b"a", b"b-c", Priority::Normal, b"first of the pair", 0),
        job(b"a-b", b"c", Priority::High, b"second of the pair", 0),
        job(
            "fünction".as_bytes(),
            "ünique".as_bytes(),
            Priority::Normal,
            b"utf8",
            0,
        ),
    ];
    if !text_only {
        jobs.push(job(
            b"raw\xff\xfefn",
            b"raw\x80u",
            Priority::Low,
            b"\xff",
            0,
        ));
    }
    jobs
}

/// Round trip: add the fixture in one batch, delete some in another, replay gives the rest.
fn check_round_trip(store: &mut dyn Backend, text_only: bool) {
    let jobs = fixture(text_only);
    assert_same(store.replay().unwrap(), &[]);
    store
        .apply(&jobs.iter().cloned().map(Op::Add).collect::<Vec<_>>())
        .unwrap();
    assert_same(store.replay().unwrap(), &jobs);

    // Delete every other job, plus one that was never stored (a no-op).
    let mut kept = Vec::new();
    let mut ops = vec![Op::Delete {
        function: b"plain".to_vec(),
        unique: b"never-stored".to_vec(),
    }];
    for (i, j) in jobs.iter().enumerate() {
        if i % 2 == 0 {
            ops.push(del(j));
        } else {
            kept.push(j.clone());
        }
    }
    store.apply(&ops).unwrap();
    assert_same(store.replay().unwrap(), &kept);

    // Re-adding an existing key replaces its row (one row per key).
    let mut changed = kept[0].clone();
    changed.data = b"replaced".to_vec();
    changed.priority = Priority::Low;
    store.apply(&[Op::Add(changed.clone())]).unwrap();
    kept[0] = changed;
    assert_same(store.replay().unwrap(), &kept);

    // Single-op batches work too.
    for j in &kept {
        store.apply(&[del(j)]).unwrap();
    }
    assert_same(store.replay().unwrap(), &[]);
    store.apply(&[]).unwrap();
}

/// One batch is one transaction: an add and the delete of the same job leave nothing; the
/// ops of a batch apply in order.
fn check_batch(store: &mut dyn Backend) {
    let a = job(b"batch", b"a", Priority::Normal, b"A", 0);
    let b = job(b"batch", b"b", Priority::High, b"B", 0);
    let mut b2 = b.clone();
    b2.data = b"B2".to_vec();
    store
        .apply(&[
            Op::Add(a.clone()),
            Op::Add(b.clone()),
            del(&a),
            Op::Add(b2.clone()),
            del(&b),
            Op::Add(b2.clone()),
        ])
        .unwrap();
    assert_same(store.replay().unwrap(), std::slice::from_ref(&b2));
    store
        .apply(&[Op::Add(a.clone()), del(&a), del(&b2)])
        .unwrap();
    assert_same(store.replay().unwrap(), &[]);
}

/// Jobs written through one backend are replayed by a new one on the same store.
fn check_reopen(open: &mut dyn FnMut() -> Box<dyn Backend>) {
    let jobs = fixture(true);
    {
        let mut s = open();
        s.apply(&jobs.iter().cloned().map(Op::Add).collect::<Vec<_>>())
            .unwrap();
    }
    let mut s = open();
    assert_same(s.replay().unwrap(), &jobs);
    // And the rows the new one deletes are gone for the next one.
    s.apply(&jobs.iter().map(del).collect::<Vec<_>>()).unwrap();
    drop(s);
    assert_same(open().replay().unwrap(), &[]);
}

/// How many submissions, and how big, the large-batch tests write in one batch.
const LARGE_BATCH: usize = 100_000;
const LARGE_PAYLOAD: usize = 1024;

/// One batch of 100,000 adds with 1 KiB payloads (100 MiB: more than any server takes in one
/// statement or packet, so the backend must split it), then one batch deleting them all. Every
/// payload is different, so a row written with another's data shows.
fn check_large_batch(store: &mut dyn Backend) {
    let jobs: Vec<StoredJob> = (0..LARGE_BATCH)
        .map(|i| {
            let mut data = format!("{i:08}").into_bytes();
            data.extend((0..LARGE_PAYLOAD - 8).map(|k| (k * 31 + i) as u8));
            let priority = [Priority::High, Priority::Normal, Priority::Low][i % 3];
            job(b"large", format!("{i:08}").as_bytes(), priority, &data, 0)
        })
        .collect();
    let t = Instant::now();
    store
        .apply(&jobs.iter().cloned().map(Op::Add).collect::<Vec<_>>())
        .unwrap();
    let added = t.elapsed();
    let got = store.replay().unwrap();
    assert_eq!(got.len(), LARGE_BATCH);
    assert_same(got, &jobs);
    let t = Instant::now();
    store
        .apply(&jobs.iter().map(del).collect::<Vec<_>>())
        .unwrap();
    eprintln!(
        "{}: {LARGE_BATCH} adds of {LARGE_PAYLOAD} B in {:.2} s, deleted in {:.2} s",
        store.describe(),
        added.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    assert_same(store.replay().unwrap(), &[]);
}

/// A TCP proxy in front of a database server that can lose the server's next answer: once
/// armed, the next bytes the server sends are dropped and both connections closed, as if the
/// server had crashed just after it committed. The client cannot tell whether it did.
struct LossyProxy {
    port: u16,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LossyProxy {
    fn to(upstream: u16) -> LossyProxy {
        use std::io::{Read, Write};
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let arm = armed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Both);
                });
                let arm = arm.clone();
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if arm.swap(false, Ordering::SeqCst) {
                            // The answer is lost with the connection.
                            break;
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_in.shutdown(std::net::Shutdown::Both);
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        LossyProxy { port, armed }
    }

    /// The server's next answer, on any connection, will be lost.
    fn lose_next_answer(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

/// A commit whose answer is lost: the batch is refused (an error), yet the server committed
/// it. The next write must delete the refused job's row (it was never acknowledged, so it must
/// not be replayed), unless it adds the job again, as the store thread's retry does.
/// `via_proxy` writes through `proxy`; `direct` reads the server as it is.
fn check_lost_commit(
    proxy: &LossyProxy,
    via_proxy: &mut dyn Backend,
    direct: &mut dyn FnMut() -> Box<dyn Backend>,
) {
    let w = job(b"lost", b"warm-up", Priority::Normal, b"W", 0);
    let x = job(b"lost", b"x", Priority::Normal, b"X", 0);
    let y = job(b"lost", b"y", Priority::High, b"Y", 0);
    let z = job(b"lost", b"z", Priority::Low, b"Z", 0);
    // Warm up: every statement a one-job batch needs is prepared, so the next answer the
    // server sends is the one to the commit.
    via_proxy.apply(&[Op::Add(w.clone())]).unwrap();
    via_proxy.apply(&[del(&w)]).unwrap();
    proxy.lose_next_answer();
    via_proxy
        .apply(&[Op::Add(x.clone())])
        .expect_err("the answer to the commit was lost");
    assert_same(direct().replay().unwrap(), std::slice::from_ref(&x));
    // The next write, of another job, removes the refused one.
    via_proxy.reconnect().unwrap();
    via_proxy.apply(&[Op::Add(y.clone())]).unwrap();
    assert_same(direct().replay().unwrap(), std::slice::from_ref(&y));
    // The store thread's retry: the same batch again after a reconnect stores it, once.
    proxy.lose_next_answer();
    via_proxy
        .apply(&[Op::Add(z.clone())])
        .expect_err("the answer to the commit was lost");
    via_proxy.reconnect().unwrap();
    via_proxy.apply(&[Op::Add(z.clone())]).unwrap();
    assert_same(direct().replay().unwrap(), &[y.clone(), z.clone()]);
    // Nothing is left to clean up: the next batch deletes only what it says.
    via_proxy.apply(&[del(&y)]).unwrap();
    assert_same(direct().replay().unwrap(), &[z]);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The real gearmand on a queue store, stopped with SIGTERM (its clean shutdown) on drop.
struct Gearmand {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Gearmand {
    fn start(dir: &Path, queue_args: &[&str]) -> Gearmand {
        let port = free_port();
        let log = dir.join(format!("gearmand-{port}.log"));
        let child = Command::new(gearmand_bin())
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--log-file={}", log.display()))
            .arg("--verbose=INFO")
            .arg(format!(
                "--pid-file={}",
                dir.join(format!("gearmand-{port}.pid")).display()
            ))
            .args(queue_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gearmand");
        let mut g = Gearmand {
            child: Some(child),
            port,
            log,
        };
        if !wait_for_port(port, Duration::from_secs(10)) {
            let log = std::fs::read_to_string(&g.log).unwrap_or_default();
            g.stop();
            panic!("gearmand did not start on {port}; its log:\n{log}");
        }
        g
    }

    /// SIGTERM, then wait (gearmand closes its queue store on the way out).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `gearman -b`: a background job with an explicit unique, data from stdin.
    fn submit_bg(&self, function: &str, unique: &str, priority: Priority, data: &[u8]) {
        use std::io::Write;
        let mut cmd = Command::new("gearman");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-b",
            "-f",
            function,
        ]);
        cmd.args(["-u", unique]);
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

    /// `gearadmin --status` as function -> queued count.
    fn status(&self) -> BTreeMap<String, u64> {
        let out = Command::new("gearadmin")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--status"])
            .output()
            .expect("gearadmin");
        let mut m = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() == 4 {
                m.insert(f[0].to_string(), f[1].parse().unwrap());
            }
        }
        m
    }

    /// Runs `gearman -w -f FUNCTION -c N`, whose command appends each job's payload (and a
    /// separator) to a file; returns the payloads in delivery order.
    fn drain(&self, dir: &Path, function: &str, n: usize) -> Vec<Vec<u8>> {
        let out = dir.join(unique_name("drained"));
        let script = format!(
            "cat >> '{}'; printf '\\n<<END>>\\n' >> '{}'",
            out.display(),
            out.display()
        );
        let mut child = Command::new("gearman")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-w",
                "-f",
                function,
            ])
            .args(["-c", &n.to_string(), "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gearman -w");
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "gearman -w -f {function} -c {n} did not finish: gearmand delivered fewer jobs"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
}

impl Drop for Gearmand {
    fn drop(&mut self) {
        self.stop();
    }
}

/// gearmand -> us: jobs submitted to the real gearmand with no worker are replayed by our
/// backend with their function, unique, data and priority; our deletes then remove its rows.
fn check_from_gearmand(
    dir: &Path,
    queue_args: &[&str],
    open: &mut dyn FnMut() -> Box<dyn Backend>,
    jobs: &[StoredJob],
) {
    let mut g = Gearmand::start(dir, queue_args);
    for j in jobs {
        g.submit_bg(
            std::str::from_utf8(&j.function).unwrap(),
            std::str::from_utf8(&j.unique).unwrap(),
            j.priority,
            &j.data,
        );
    }
    let status = g.status();
    for j in jobs {
        let f = String::from_utf8_lossy(&j.function).into_owned();
        assert!(
            status.get(&f).copied().unwrap_or(0) >= 1,
            "gearmand lost {f}: {status:?}"
        );
    }
    g.stop();
    let mut s = open();
    assert_same(s.replay().unwrap(), jobs);
    s.apply(&jobs.iter().map(del).collect::<Vec<_>>()).unwrap();
    assert_same(s.replay().unwrap(), &[]);
}

/// us -> gearmand: jobs our backend wrote are queued by gearmand at start-up, delivered to a
/// worker with their payloads in priority order, and gearmand's own deletes remove our rows.
fn check_to_gearmand(
    dir: &Path,
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
    let g = Gearmand::start(dir, queue_args);
    assert_eq!(
        g.status().get(function).copied(),
        Some(jobs.len() as u64),
        "gearmand's status after replay"
    );
    let got = g.drain(dir, function, jobs.len());
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
    drop(g);
    assert_same(open().replay().unwrap(), &[]);
}

/// Jobs the gearman CLI can submit (text function/unique, no `-` in the function: gearmand's
/// redis replay splits there).
fn cli_jobs(tag: &str) -> Vec<StoredJob> {
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
fn worker_jobs(function: &str) -> Vec<StoredJob> {
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

// ---------------------------------------------------------------------------------------------
// SQLite
// ---------------------------------------------------------------------------------------------

mod sqlite {
    use super::*;
    use gearshift::store::sqlite::Sqlite;

    fn open(path: &Path) -> Box<dyn Backend> {
        Box::new(Sqlite::open(path, "gearman_queue").unwrap())
    }

    #[test]
    fn round_trip() {
        let dir = TempDir::new("sqlite");
        let mut s = Sqlite::open(dir.path().join("q.db"), "gearman_queue").unwrap();
        check_round_trip(&mut s, false);
    }

    #[test]
    fn batch_is_one_transaction() {
        let dir = TempDir::new("sqlite");
        let mut s = Sqlite::open(dir.path().join("q.db"), "my_table").unwrap();
        check_batch(&mut s);
    }

    #[test]
    fn a_batch_of_100k_jobs_of_1k() {
        let dir = TempDir::new("sqlite");
        let mut s = Sqlite::open(dir.path().join("q.db"), "gearman_queue").unwrap();
        check_large_batch(&mut s);
    }

    #[test]
    fn reopen_replays_the_same_rows() {
        let dir = TempDir::new("sqlite");
        let path = dir.path().join("q.db");
        check_reopen(&mut || open(&path));
    }

    #[test]
    fn table_layout_and_column_types_are_gearmands() {
        let dir = TempDir::new("sqlite");
        let path = dir.path().join("q.db");
        let mut s = Sqlite::open(&path, "gearman_queue").unwrap();
        s.apply(&[Op::Add(job(b"f", b"u", Priority::Low, b"d\0", 5))])
            .unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name='gearman_queue'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            sql,
            "CREATE TABLE gearman_queue ( unique_key TEXT, function_name TEXT, priority INTEGER, \
             data BLOB, when_to_run INTEGER, PRIMARY KEY (unique_key, function_name))"
        );
        let row: (String, String, String, String, String, i64, i64) = conn
            .query_row(
                "SELECT typeof(unique_key), typeof(function_name), typeof(priority), typeof(data), \
                 typeof(when_to_run), priority, when_to_run FROM gearman_queue",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .unwrap();
        assert_eq!(
            row,
            (
                "text".into(),
                "text".into(),
                "integer".into(),
                "blob".into(),
                "integer".into(),
                2,
                5
            )
        );
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    /// A table from before epoch jobs gets when_to_run; rows with BLOB keys or NULLs replay.
    #[test]
    fn old_table_is_altered_and_odd_rows_replay() {
        let dir = TempDir::new("sqlite");
        let path = dir.path().join("q.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE old_q ( unique_key TEXT, function_name TEXT, priority INTEGER, \
                 data BLOB, PRIMARY KEY (unique_key, function_name));
                 INSERT INTO old_q VALUES ('u1', 'f1', 0, x'00ff');
                 INSERT INTO old_q VALUES (x'7532', x'6632', NULL, 'text data');",
            )
            .unwrap();
        }
        let mut s = Sqlite::open(&path, "old_q").unwrap();
        assert_same(
            s.replay().unwrap(),
            &[
                job(b"f1", b"u1", Priority::High, b"\0\xff", 0),
                job(b"f2", b"u2", Priority::Normal, b"text data", 0),
            ],
        );
        s.apply(&[Op::Add(job(b"f3", b"u3", Priority::Low, b"x", 42))])
            .unwrap();
        assert!(s.replay().unwrap().iter().any(|j| j.when == 42));
    }

    #[test]
    fn errors_name_the_store() {
        let dir = TempDir::new("sqlite");
        let bad = dir.path().join("no/such/dir/q.db");
        let e = Sqlite::open(&bad, "gearman_queue").expect_err("opening in a missing dir fails");
        assert!(
            e.0.starts_with(&format!("libsqlite3 {}", bad.display())),
            "{e}"
        );
        assert!(e.0.contains("unable to open database file"), "{e}");
        let e = Sqlite::open(dir.path().join("q.db"), "bad name; drop")
            .err()
            .unwrap();
        assert!(e.0.contains("table name"), "{e}");
        let s = Sqlite::open(dir.path().join("q.db"), "t").unwrap();
        assert!(s.describe().starts_with("libsqlite3 "), "{}", s.describe());
    }

    /// Another connection holds the write lock: apply fails with an error (and writes nothing);
    /// once the lock is gone, reconnect and apply work.
    #[test]
    fn locked_database_fails_then_recovers() {
        let dir = TempDir::new("sqlite");
        let path = dir.path().join("q.db");
        let mut s = Sqlite::open(&path, "gearman_queue").unwrap();
        s.set_busy_timeout(Duration::from_millis(100)).unwrap();
        let a = job(b"f", b"a", Priority::Normal, b"A", 0);

        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let e = s
            .apply(&[Op::Add(a.clone())])
            .expect_err("apply under a held lock fails");
        assert!(e.0.contains("locked") || e.0.contains("busy"), "{e}");
        other.execute_batch("ROLLBACK").unwrap();
        drop(other);

        s.reconnect().unwrap();
        s.apply(&[Op::Add(a.clone())]).unwrap();
        assert_same(s.replay().unwrap(), &[a]);
    }

    /// The database file's directory is removed under a running store: the next apply or
    /// reconnect fails; when the directory is back, reconnect works.
    #[test]
    fn store_directory_gone_then_back() {
        let dir = TempDir::new("sqlite");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("q.db");
        let mut s = Sqlite::open(&path, "gearman_queue").unwrap();
        std::fs::remove_dir_all(&sub).unwrap();
        let e = s
            .reconnect()
            .expect_err("reconnect without the directory fails");
        assert!(e.0.contains("unable to open database file"), "{e}");
        let e = s
            .apply(&[Op::Add(job(b"f", b"a", Priority::Normal, b"A", 0))])
            .err();
        assert!(e.is_some(), "apply without a database fails");
        std::fs::create_dir(&sub).unwrap();
        s.reconnect().unwrap();
        let b = job(b"f", b"b", Priority::Normal, b"B", 0);
        s.apply(&[Op::Add(b.clone())]).unwrap();
        assert_same(s.replay().unwrap(), &[b]);
    }

    #[test]
    fn interop_gearmand_writes_we_replay() {
        if !have_gearmand() {
            return;
        }
        let dir = TempDir::new("sqlite");
        let path = dir.path().join("q.db");
        let db_arg = format!("--libsqlite3-db={}", path.display());
        let jobs = cli_jobs("sq");
        check_from_gearmand(
            dir.path(),
            &["-q", "libsqlite3", &db_arg],
            &mut || open(&path),
            &jobs,
        );
    }

    #[test]
    fn interop_we_write_gearmand_delivers() {
        if !have_gearmand() {
            return;
        }
        let dir = TempDir::new("sqlite");
        let path = dir.path().join("q.db");
        let db_arg = format!("--libsqlite3-db={}", path.display());
        let jobs = worker_jobs("gssqwork");
        check_to_gearmand(
            dir.path(),
            &["-q", "libsqlite3", &db_arg],
            &mut || open(&path),
            "gssqwork",
            &jobs,
            true,
        );
    }

    /// A custom table name is honoured the same way by both.
    #[test]
    fn interop_custom_table() {
        if !have_gearmand() {
            return;
        }
        let dir = TempDir::new("sqlite");
        let path = dir.path().join("q.db");
        let db_arg = format!("--libsqlite3-db={}", path.display());
        let jobs = worker_jobs("gssqtab");
        let args = ["-q", "libsqlite3", &db_arg, "--libsqlite3-table=other_q"];
        let mut open = || -> Box<dyn Backend> { Box::new(Sqlite::open(&path, "other_q").unwrap()) };
        check_to_gearmand(dir.path(), &args, &mut open, "gssqtab", &jobs, true);
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL (GEARSHIFT_TEST_PG, a libpq conninfo)
// ---------------------------------------------------------------------------------------------

mod postgres_store {
    use super::*;
    use gearshift::store::postgres::Postgres;

    /// A fresh table name, dropped again when the guard goes.
    struct Table {
        conninfo: String,
        name: String,
    }

    impl Table {
        fn new(conninfo: &str) -> Table {
            Table {
                conninfo: conninfo.to_string(),
                name: unique_name("pg"),
            }
        }
        fn open(&self) -> Box<dyn Backend> {
            Box::new(Postgres::open(&self.conninfo, &self.name).unwrap())
        }
    }

    impl Drop for Table {
        fn drop(&mut self) {
            if let Ok(mut c) = ::postgres::Client::connect(&self.conninfo, ::postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP TABLE IF EXISTS {}", self.name));
            }
        }
    }

    #[test]
    fn round_trip() {
        let Some(ci) = store_env("GEARSHIFT_TEST_PG") else {
            return;
        };
        let t = Table::new(&ci);
        let mut s = Postgres::open(&ci, &t.name).unwrap();
        check_round_trip(&mut s, true);
    }

    #[test]
    fn batch_is_one_transaction() {
        let Some(ci) = store_env("GEARSHIFT_TEST_PG") else {
            return;
        };
        let t = Table::new(&ci);
        check_batch(&mut *t.open());
    }

    /// A batch that fails half-way (a job whose `when` does not fit INTEGER) stores nothing.
    #[test]
    fn failed_batch_stores_nothing() {
        let Some(ci) = store_env("GEARSHIFT_TEST_PG") else {
            return;
        };
        let t = Table::new(&ci);
        let mut s = t.open();
        let a = job(b"f", b"a", Priority::Normal, b"A", 0);
        let bad = job(b"f", b"b", Priority::Normal, b"B", i64::MAX);
        let e = s
            .apply(&[Op::Add(a.clone()), Op::Add(bad)])
            .expect_err("fails");
        assert!(e.0.contains("when_to_run"), "{e}");
        assert_same(s.replay().unwrap(), &[]);
        let bad = job(b"f\xff", b"b", Priority::Normal, b"B", 0);
        let e = s
            .apply(&[Op::Add(a.clone()), Op::Add(bad)])
            .expect_err("fails");
        assert!(e.0.contains("not UTF-8"), "{e}");
        assert_same(s.replay().unwrap(), &[]);
        s.apply(&[Op::Add(a.clone())]).unwrap();
        assert_same(s.replay().unwrap(), &[a]);
    }

    #[test]
    fn reopen_replays_the_same_rows() {
        let Some(ci) = store_env("GEARSHIFT_TEST_PG") else {
            return;
        };
        let t = Table::new(&ci);
        check_reopen(&mut || t.open());
    }

    #[test]
    fn a_batch_of_100k_jobs_of_1k() {
        let Some(ci) = store_env("GEARSHIFT_TEST_PG") else {
            return;
        };
        let t = Table::new(&ci);
        check_large_batch(&mut *t.open());
    }

    /// The conninfo with its port replaced.
    fn with_port(conninfo: &str, port: u16) -> String {
        conninfo
            .split_whitespace()
            .map(|kv| {
                if kv.starts_with("port=") {
                    format!("port={port}")
                } else {
                    kv.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_lost_commit_leaves_no_refused_job_behind() {
        let Some(ci) = store_env("GEARSHIFT_TEST_PG") else {
            return;
        };
        let t = Table::new(&ci);
        let port: u16 = ci
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("port="))
            .expect("GEARSHIFT_TEST_PG names its port")
            .parse()
            .unwrap();
        let proxy = LossyProxy::to(port);
        let mut via = Postgres::open(&with_port(&ci, proxy.port), &t.name).unwrap();
        check_lost_commit(&proxy, &mut via, &mut || t.open());
    }

    #[test]
    fn table_layout_is_gearmands() {
        let Some(ci) = store_env("GEARSHIFT_TEST_PG") else {
            return;
        };
        let t = Table::new(&ci);
        let _s = t.open();
        let mut c = ::postgres::Client::connect(&ci, ::postgres::NoTls).unwrap();
        let cols: Vec<(String, String)> = c
            .query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                 WHERE table_name = $1 ORDER BY ordinal_position",
                &[&t.name],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let want = [
            ("unique_key", "character varying"),
            ("function_name", "character varying"),
            ("priority", "integer"),
            ("data", "bytea"),
            ("when_to_run", "integer"),
        ];
        assert_eq!(
            cols,
            want.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn describe_and_errors_never_show_the_password() {
        let Some(ci) = store_env("GEARSHIFT_TEST_PG") else {
            return;
        };
        let t = Table::new(&ci);
        let s = Postgres::open(&ci, &t.name).unwrap();
        let d = s.describe();
        assert!(d.starts_with("Postgres host=127.0.0.1 port="), "{d}");
        assert!(d.contains(&t.name), "{d}");
        assert!(
            !d.contains("password") && !d.contains("gs-pg-secret"),
            "{d}"
        );
        let wrong = format!("{ci} password='wrong secret'");
        let e = Postgres::open(&wrong, &t.name).expect_err("a wrong password fails");
        assert!(e.0.starts_with("Postgres host=127.0.0.1"), "{e}");
        assert!(e.0.contains("cannot connect"), "{e}");
        assert!(!e.0.contains("wrong secret"), "{e}");
        let e = Postgres::open("host=127.0.0.1 nonsense_key=1 password=pw1", "t")
            .err()
            .unwrap();
        assert!(
            e.0.contains("--libpq-conninfo") && !e.0.contains("pw1"),
            "{e}"
        );
        let e = Postgres::open(&ci, "robert'); DROP TABLE students;--")
            .err()
            .unwrap();
        assert!(e.0.contains("table name"), "{e}");
        let e = Postgres::open("host=127.0.0.1 port=1 user=x", "t")
            .err()
            .unwrap();
        assert!(e.0.contains("cannot connect"), "{e}");
    }

    /// The server drops our connection (pg_terminate_backend, as a restart would): apply
    /// fails; reconnect works; the store is intact.
    #[test]
    fn connection_killed_then_reconnect() {
        let Some(ci) = store_env("GEARSHIFT_TEST_PG") else {
            return;
        };
        let t = Table::new(&ci);
        let app = unique_name("app");
        let mut s = Postgres::open(&format!("{ci} application_name={app}"), &t.name).unwrap();
        let a = job(b"f", b"a", Priority::Normal, b"A", 0);
        s.apply(&[Op::Add(a.clone())]).unwrap();
        let mut admin = ::postgres::Client::connect(&ci, ::postgres::NoTls).unwrap();
        let n: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = $1",
                &[&app],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
        std::thread::sleep(Duration::from_millis(100));
        let b = job(b"f", b"b", Priority::Normal, b"B", 0);
        let e = s
            .apply(&[Op::Add(b.clone())])
            .expect_err("apply on a killed connection fails");
        assert!(e.0.starts_with("Postgres host="), "{e}");
        s.reconnect().unwrap();
        s.apply(&[Op::Add(b.clone())]).unwrap();
        assert_same(s.replay().unwrap(), &[a, b]);
    }

    fn gearmand_args(ci: &str, table: &str) -> Vec<String> {
        vec![
            "-q".into(),
            "Postgres".into(),
            format!("--libpq-conninfo={ci}"),
            format!("--libpq-table={table}"),
        ]
    }

    #[test]
    fn interop_gearmand_writes_we_replay() {
        let Some(ci) = store_env("GEARSHIFT_TEST_PG") else {
            return;
        };
        if !have_gearmand() {
            return;
        }
        let dir = TempDir::new("pg");
        let t = Table::new(&ci);
        let args = gearmand_args(&ci, &t.name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check_from_gearmand(dir.path(), &args, &mut || t.open(), &cli_jobs("pg"));
    }

    #[test]
    fn interop_we_write_gearmand_delivers() {
        let Some(ci) = store_env("GEARSHIFT_TEST_PG") else {
            return;
        };
        if !have_gearmand() {
            return;
        }
        let dir = TempDir::new("pg");
        let t = Table::new(&ci);
        let args = gearmand_args(&ci, &t.name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // gearmand 1.1.20's Postgres replay asks for binary results and atoi()s the 4-byte
        // priority, so every replayed job is HIGH there: only the payloads are compared.
        let jobs = worker_jobs("gspgwork");
        check_to_gearmand(
            dir.path(),
            &args,
            &mut || t.open(),
            "gspgwork",
            &jobs,
            false,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// redis (GEARSHIFT_TEST_REDIS=host:port)
// ---------------------------------------------------------------------------------------------

mod redis_store {
    use super::*;
    use gearshift::store::redis::Redis;

    fn addr(v: &str) -> (String, u16) {
        let (h, p) = v
            .rsplit_once(':')
            .expect("GEARSHIFT_TEST_REDIS is host:port");
        (h.to_string(), p.parse().expect("port"))
    }

    /// A fresh key prefix on the shared server; its keys are removed when the guard goes.
    struct Prefix {
        host: String,
        port: u16,
        prefix: String,
    }

    impl Prefix {
        fn new(v: &str) -> Prefix {
            let (host, port) = addr(v);
            Prefix {
                host,
                port,
                prefix: unique_name("rd"),
            }
        }
        fn open(&self) -> Box<dyn Backend> {
            Box::new(Redis::open(&self.host, self.port, None, &self.prefix).unwrap())
        }
        fn raw(&self) -> ::redis::Connection {
            ::redis::Client::open(format!("redis://{}:{}/", self.host, self.port))
                .unwrap()
                .get_connection()
                .unwrap()
        }
        /// Every key under the prefix (SCAN).
        fn keys(&self) -> Vec<Vec<u8>> {
            let mut c = self.raw();
            let mut out = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<Vec<u8>>) = ::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{}*", self.prefix))
                    .query(&mut c)
                    .unwrap();
                out.extend(keys);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            out.sort();
            out.dedup();
            out
        }
    }

    impl Drop for Prefix {
        fn drop(&mut self) {
            let keys = self.keys();
            let mut c = self.raw();
            for k in keys {
                let _: Result<(), _> = ::redis::cmd("DEL").arg(k).query(&mut c);
            }
        }
    }

    #[test]
    fn round_trip() {
        let Some(v) = store_env("GEARSHIFT_TEST_REDIS") else {
            return;
        };
        let p = Prefix::new(&v);
        check_round_trip(&mut *p.open(), false);
        assert!(p.keys().is_empty(), "keys left behind: {:?}", p.keys());
    }

    #[test]
    fn a_batch_of_100k_jobs_of_1k() {
        let Some(v) = store_env("GEARSHIFT_TEST_REDIS") else {
            return;
        };
        let p = Prefix::new(&v);
        check_large_batch(&mut *p.open());
        assert!(p.keys().is_empty(), "keys left behind");
    }

    #[test]
    fn batch_is_one_transaction() {
        let Some(v) = store_env("GEARSHIFT_TEST_REDIS") else {
            return;
        };
        let p = Prefix::new(&v);
        check_batch(&mut *p.open());
    }

    #[test]
    fn reopen_replays_the_same_rows() {
        let Some(v) = store_env("GEARSHIFT_TEST_REDIS") else {
            return;
        };
        let p = Prefix::new(&v);
        check_reopen(&mut || p.open());
    }

    /// gearmand's key and fields, plus ours.
    #[test]
    fn key_layout_is_gearmands() {
        let Some(v) = store_env("GEARSHIFT_TEST_REDIS") else {
            return;
        };
        let p = Prefix::new(&v);
        let mut s = p.open();
        s.apply(&[Op::Add(job(b"fn", b"u-1", Priority::Low, b"d\0x", 77))])
            .unwrap();
        let key = format!("{}-fn-u-1", p.prefix);
        assert_eq!(p.keys(), vec![key.clone().into_bytes()]);
        let h: BTreeMap<String, Vec<u8>> = ::redis::cmd("HGETALL")
            .arg(&key)
            .query(&mut p.raw())
            .unwrap();
        let want: BTreeMap<String, Vec<u8>> = [
            ("data", &b"d\0x"[..]),
            ("priority", b"2"),
            ("function", b"fn"),
            ("unique", b"u-1"),
            ("when", b"77"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect();
        assert_eq!(h, want);
    }

    /// (a-b, c) and (a, b-c) share gearmand's key: neither overwrites the other, in any
    /// order, in one batch or two, and each delete removes its own job only.
    #[test]
    fn colliding_keys_never_overwrite() {
        let Some(v) = store_env("GEARSHIFT_TEST_REDIS") else {
            return;
        };
        let x = job(b"a", b"b-c", Priority::Normal, b"X", 0);
        let y = job(b"a-b", b"c", Priority::High, b"Y", 0);
        let z = job(b"a-b-c", b"", Priority::Low, b"Z", 0);
        for (first, second) in [(&x, &y), (&y, &x)] {
            let p = Prefix::new(&v);
            let mut s = p.open();
            s.apply(&[Op::Add(first.clone())]).unwrap();
            s.apply(&[Op::Add(second.clone())]).unwrap();
            assert_same(s.replay().unwrap(), &[x.clone(), y.clone()]);
            // A fresh store (knowing the functions only from replay) sees the same.
            let mut s = p.open();
            assert_same(s.replay().unwrap(), &[x.clone(), y.clone()]);
            s.apply(&[del(first)]).unwrap();
            assert_same(s.replay().unwrap(), std::slice::from_ref(second));
            s.apply(&[del(second)]).unwrap();
            assert!(p.keys().is_empty(), "{:?}", p.keys());
        }
        let p = Prefix::new(&v);
        let mut s = p.open();
        s.apply(&[Op::Add(x.clone()), Op::Add(y.clone()), Op::Add(z.clone())])
            .unwrap();
        assert_same(s.replay().unwrap(), &[x.clone(), y.clone(), z.clone()]);
        let mut y2 = y.clone();
        y2.data = b"Y2".to_vec();
        s.apply(&[Op::Add(y2.clone()), del(&x)]).unwrap();
        assert_same(p.open().replay().unwrap(), &[y2.clone(), z.clone()]);
        s.apply(&[del(&y2), del(&z)]).unwrap();
        assert!(p.keys().is_empty(), "{:?}", p.keys());
    }

    /// Keys as gearmand 1.1.20 writes them (hash with data and priority only) and as
    /// gearmand <= 1.1.15 did (a string): replayed by the first-`-` rule, deleted by ours, and
    /// a new job whose key the old one occupies does not overwrite it.
    #[test]
    fn gearmand_written_keys() {
        let Some(v) = store_env("GEARSHIFT_TEST_REDIS") else {
            return;
        };
        let p = Prefix::new(&v);
        let mut c = p.raw();
        let pre = &p.prefix;
        let hset = |c: &mut ::redis::Connection, k: String, data: &[u8], prio: &str| {
            let _: () = ::redis::cmd("HMSET")
                .arg(k)
                .arg("data")
                .arg(data)
                .arg("priority")
                .arg(prio)
                .query(c)
                .unwrap();
        };
        hset(&mut c, format!("{pre}-plain-u1"), b"one\0", "0");
        hset(
            &mut c,
            format!("{pre}-nouniq-ebe1c86e-e7f2-11f1-a8f2-02fc00000001"),
            b"two",
            "2",
        );
        hset(&mut c, format!("{pre}-my-func-uniq-1-x"), b"three", "1");
        let _: () = ::redis::cmd("SET")
            .arg(format!("{pre}-old-u9"))
            .arg("four")
            .query(&mut c)
            .unwrap();
        // Not ours: no `-` after the prefix, or another type.
        let _: () = ::redis::cmd("SET")
            .arg(format!("{pre}x-a-b"))
            .arg("no")
            .query(&mut c)
            .unwrap();
        let _: () = ::redis::cmd("RPUSH")
            .arg(format!("{pre}-list-u"))
            .arg("no")
            .query(&mut c)
            .unwrap();

        let one = job(b"plain", b"u1", Priority::High, b"one\0", 0);
        let two = job(
            b"nouniq",
            b"ebe1c86e-e7f2-11f1-a8f2-02fc00000001",
            Priority::Low,
            b"two",
            0,
        );
        let three = job(b"my", b"func-uniq-1-x", Priority::Normal, b"three", 0);
        let four = job(b"old", b"u9", Priority::Normal, b"four", 0);
        let mut s = Redis::open(&p.host, p.port, Some(""), pre).unwrap();
        assert_same(
            s.replay().unwrap(),
            &[one.clone(), two.clone(), three.clone(), four.clone()],
        );

        // Our ("my-func", "uniq-1-x") has the key gearmand's job holds: it goes elsewhere.
        let mine = job(b"my-func", b"uniq-1-x", Priority::High, b"mine", 0);
        s.apply(&[Op::Add(mine.clone())]).unwrap();
        let all = [
            one.clone(),
            two.clone(),
            three.clone(),
            four.clone(),
            mine.clone(),
        ];
        assert_same(s.replay().unwrap(), &all);
        s.apply(&[del(&one), del(&two), del(&three), del(&four), del(&mine)])
            .unwrap();
        let left: Vec<String> = p
            .keys()
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(left, vec![format!("{pre}-list-u"), format!("{pre}x-a-b")]);
        // A job re-added over a gearmand <= 1.1.15 string key replaces it.
        let _: () = ::redis::cmd("SET")
            .arg(format!("{pre}-old-u9"))
            .arg("four")
            .query(&mut c)
            .unwrap();
        let four2 = job(b"old", b"u9", Priority::Low, b"new four", 0);
        s.apply(&[Op::Add(four2.clone())]).unwrap();
        assert_same(s.replay().unwrap(), &[four2]);
    }

    #[test]
    fn errors_and_describe() {
        let Some(v) = store_env("GEARSHIFT_TEST_REDIS") else {
            return;
        };
        let p = Prefix::new(&v);
        let s = Redis::open(&p.host, p.port, Some("some-secret"), &p.prefix);
        // The shared server has no password: AUTH fails, without echoing the password.
        let e = s.expect_err("AUTH against a server without a password fails");
        assert!(
            e.0.starts_with(&format!("redis {}:{}: cannot connect", p.host, p.port)),
            "{e}"
        );
        assert!(!e.0.contains("some-secret"), "{e}");
        let s = Redis::open(&p.host, p.port, None, &p.prefix).unwrap();
        assert_eq!(
            s.describe(),
            format!("redis {}:{} prefix {}", p.host, p.port, p.prefix)
        );
        let e = Redis::open("127.0.0.1", free_port(), None, "_gear_")
            .err()
            .unwrap();
        assert!(e.0.contains("cannot connect"), "{e}");
    }

    /// A private redis-server (password, appendonly, appendfsync always) is killed with
    /// SIGKILL: apply fails; when it is back on the same port and directory, reconnect works
    /// and every acknowledged job is still there.
    #[test]
    fn server_killed_then_back() {
        let Some(_) = store_env("GEARSHIFT_TEST_REDIS") else {
            return;
        };
        let dir = TempDir::new("redis");
        let port = free_port();
        let start = || {
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ])
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                .args(["--requirepass", "pw secret"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            assert!(
                wait_for_port(port, Duration::from_secs(10)),
                "redis-server did not start"
            );
            child
        };
        let mut server = start();
        let mut s = Redis::open("127.0.0.1", port, Some("pw secret"), "_gear_").unwrap();
        assert!(!s.describe().contains("pw"), "{}", s.describe());
        let jobs = fixture(false);
        s.apply(&jobs.iter().cloned().map(Op::Add).collect::<Vec<_>>())
            .unwrap();
        server.kill().unwrap();
        server.wait().unwrap();
        let extra = job(b"f", b"late", Priority::Normal, b"L", 0);
        let e = s
            .apply(&[Op::Add(extra.clone())])
            .expect_err("apply with redis down fails");
        assert!(e.0.starts_with(&format!("redis 127.0.0.1:{port}:")), "{e}");
        assert!(s.reconnect().is_err(), "reconnect with redis down fails");
        let mut server = start();
        let end = Instant::now() + Duration::from_secs(10);
        while s.reconnect().is_err() {
            assert!(Instant::now() < end, "reconnect never worked");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_same(s.replay().unwrap(), &jobs);
        s.apply(&[Op::Add(extra.clone())]).unwrap();
        let mut all = jobs.clone();
        all.push(extra);
        assert_same(s.replay().unwrap(), &all);
        let _ = server.kill();
        let _ = server.wait();
    }

    fn gearmand_args(p: &Prefix) -> Vec<String> {
        vec![
            "-q".into(),
            "redis".into(),
            format!("--redis-server={}", p.host),
            format!("--redis-port={}", p.port),
            format!("--redis-prefix={}", p.prefix),
        ]
    }

    #[test]
    fn interop_gearmand_writes_we_replay() {
        let Some(v) = store_env("GEARSHIFT_TEST_REDIS") else {
            return;
        };
        if !have_gearmand() {
            return;
        }
        let dir = TempDir::new("redis");
        let p = Prefix::new(&v);
        let args = gearmand_args(&p);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check_from_gearmand(dir.path(), &args, &mut || p.open(), &cli_jobs("rd"));
        assert!(p.keys().is_empty());
    }

    #[test]
    fn interop_we_write_gearmand_delivers() {
        let Some(v) = store_env("GEARSHIFT_TEST_REDIS") else {
            return;
        };
        if !have_gearmand() {
            return;
        }
        let dir = TempDir::new("redis");
        let p = Prefix::new(&v);
        let args = gearmand_args(&p);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // gearmand 1.1.20's redis replay copies `data` as a C string (a NUL ends it), so the
        // payloads it is given here have none.
        let jobs: Vec<StoredJob> = worker_jobs("gsrdwork")
            .into_iter()
            .map(|mut j| {
                j.data.retain(|&b| b != 0);
                j
            })
            .collect();
        check_to_gearmand(dir.path(), &args, &mut || p.open(), "gsrdwork", &jobs, true);
        assert!(p.keys().is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// MySQL / MariaDB (GEARSHIFT_TEST_MYSQL=host:port:user:password:db)
// ---------------------------------------------------------------------------------------------

mod mysql_store {
    use super::*;
    use ::mysql::prelude::Queryable;
    use gearshift::store::mysql::Mysql;

    struct Server {
        host: String,
        port: u16,
        user: String,
        password: String,
        db: String,
    }

    fn server(v: &str) -> Server {
        let f: Vec<&str> = v.splitn(5, ':').collect();
        assert_eq!(
            f.len(),
            5,
            "GEARSHIFT_TEST_MYSQL is host:port:user:password:db"
        );
        Server {
            host: f[0].into(),
            port: f[1].parse().unwrap(),
            user: f[2].into(),
            password: f[3].into(),
            db: f[4].into(),
        }
    }

    /// A fresh table, dropped when the guard goes.
    struct Table {
        s: Server,
        name: String,
    }

    impl Table {
        fn new(v: &str) -> Table {
            Table {
                s: server(v),
                name: unique_name("my"),
            }
        }
        fn store(&self) -> Mysql {
            let s = &self.s;
            Mysql::open(&s.host, s.port, &s.user, &s.password, &s.db, &self.name).unwrap()
        }
        fn open(&self) -> Box<dyn Backend> {
            Box::new(self.store())
        }
        fn raw(&self) -> ::mysql::Conn {
            let s = &self.s;
            let opts = ::mysql::OptsBuilder::new()
                .ip_or_hostname(Some(s.host.clone()))
                .tcp_port(s.port)
                .user(Some(s.user.clone()))
                .pass(Some(s.password.clone()))
                .db_name(Some(s.db.clone()))
                .prefer_socket(false);
            ::mysql::Conn::new(opts).unwrap()
        }
    }

    impl Drop for Table {
        fn drop(&mut self) {
            let _ = self
                .raw()
                .query_drop(format!("DROP TABLE IF EXISTS {}", self.name));
        }
    }

    #[test]
    fn round_trip() {
        let Some(v) = store_env("GEARSHIFT_TEST_MYSQL") else {
            return;
        };
        let t = Table::new(&v);
        check_round_trip(&mut t.store(), true);
    }

    #[test]
    fn batch_is_one_transaction() {
        let Some(v) = store_env("GEARSHIFT_TEST_MYSQL") else {
            return;
        };
        let t = Table::new(&v);
        check_batch(&mut t.store());
    }

    /// A batch that fails half-way stores nothing.
    #[test]
    fn failed_batch_stores_nothing() {
        let Some(v) = store_env("GEARSHIFT_TEST_MYSQL") else {
            return;
        };
        let t = Table::new(&v);
        let mut s = t.store();
        let a = job(b"f", b"a", Priority::Normal, b"A", 0);
        let bad = job(b"f", b"b", Priority::Normal, b"B", i64::MAX);
        let e = s
            .apply(&[Op::Add(a.clone()), Op::Add(bad)])
            .expect_err("fails");
        assert!(e.0.contains("when_to_run"), "{e}");
        assert_same(s.replay().unwrap(), &[]);
        // A unique longer than VARCHAR(64): the server refuses it after `a` was inserted.
        let long = job(b"f", &[b'u'; 65], Priority::Normal, b"B", 0);
        let e = s
            .apply(&[Op::Add(a.clone()), Op::Add(long)])
            .expect_err("fails");
        assert!(e.0.contains("INSERT failed"), "{e}");
        assert_same(s.replay().unwrap(), &[]);
        s.apply(&[Op::Add(a.clone())]).unwrap();
        assert_same(s.replay().unwrap(), &[a]);
    }

    #[test]
    fn reopen_replays_the_same_rows() {
        let Some(v) = store_env("GEARSHIFT_TEST_MYSQL") else {
            return;
        };
        let t = Table::new(&v);
        check_reopen(&mut || t.open());
    }

    /// 100 MiB in one batch: more than max_allowed_packet (16 MiB on the test server) and
    /// more placeholders than one statement may have.
    #[test]
    fn a_batch_of_100k_jobs_of_1k() {
        let Some(v) = store_env("GEARSHIFT_TEST_MYSQL") else {
            return;
        };
        let t = Table::new(&v);
        check_large_batch(&mut t.store());
    }

    #[test]
    fn a_lost_commit_leaves_no_refused_job_behind() {
        let Some(v) = store_env("GEARSHIFT_TEST_MYSQL") else {
            return;
        };
        let t = Table::new(&v);
        let proxy = LossyProxy::to(t.s.port);
        let s = &t.s;
        let mut via =
            Mysql::open(&s.host, proxy.port, &s.user, &s.password, &s.db, &t.name).unwrap();
        check_lost_commit(&proxy, &mut via, &mut || t.open());
    }

    #[test]
    fn table_layout_is_gearmands() {
        let Some(v) = store_env("GEARSHIFT_TEST_MYSQL") else {
            return;
        };
        let t = Table::new(&v);
        let _s = t.store();
        let cols: Vec<(String, String, Option<u64>)> = t
            .raw()
            .exec(
                "SELECT column_name, data_type, character_maximum_length \
                 FROM information_schema.columns \
                 WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position",
                (t.name.as_str(),),
            )
            .unwrap();
        let want = [
            ("unique_key", "varchar", Some(64)),
            ("function_name", "varchar", Some(255)),
            ("priority", "int", None),
            ("data", "longblob", Some(4294967295)),
            ("when_to_run", "int", None),
        ];
        let want: Vec<(String, String, Option<u64>)> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
            .collect();
        assert_eq!(cols, want);
    }

    #[test]
    fn describe_and_errors_never_show_the_password() {
        let Some(v) = store_env("GEARSHIFT_TEST_MYSQL") else {
            return;
        };
        let t = Table::new(&v);
        let s = t.store();
        let d = s.describe();
        assert_eq!(
            d,
            format!(
                "MySQL {}@{}:{}/{} table {}",
                t.s.user, t.s.host, t.s.port, t.s.db, t.name
            )
        );
        assert!(!d.contains(&t.s.password), "{d}");
        let e = Mysql::open(
            &t.s.host,
            t.s.port,
            &t.s.user,
            "wrong-secret",
            &t.s.db,
            &t.name,
        )
        .expect_err("a wrong password fails");
        assert!(
            e.0.starts_with("MySQL ") && e.0.contains("cannot connect"),
            "{e}"
        );
        assert!(!e.0.contains("wrong-secret"), "{e}");
        let e = Mysql::open(
            &t.s.host,
            t.s.port,
            &t.s.user,
            &t.s.password,
            &t.s.db,
            "a b",
        )
        .err();
        assert!(e.unwrap().0.contains("table name"));
        let e = Mysql::open("127.0.0.1", free_port(), "u", "p", "d", "t")
            .err()
            .unwrap();
        assert!(e.0.contains("cannot connect"), "{e}");
    }

    /// The server drops our connection (KILL, as a restart would): apply fails; reconnect
    /// works; the table is intact.
    #[test]
    fn connection_killed_then_reconnect() {
        let Some(v) = store_env("GEARSHIFT_TEST_MYSQL") else {
            return;
        };
        let t = Table::new(&v);
        let mut s = t.store();
        let a = job(b"f", b"a", Priority::Normal, b"A", 0);
        s.apply(&[Op::Add(a.clone())]).unwrap();
        let id = s.connection_id().unwrap();
        t.raw().query_drop(format!("KILL {id}")).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let b = job(b"f", b"b", Priority::Normal, b"B", 0);
        let e = s
            .apply(&[Op::Add(b.clone())])
            .expect_err("apply on a killed connection fails");
        assert!(e.0.starts_with("MySQL "), "{e}");
        s.reconnect().unwrap();
        s.apply(&[Op::Add(b.clone())]).unwrap();
        assert_same(s.replay().unwrap(), &[a, b]);
    }

    fn gearmand_args(t: &Table) -> Vec<String> {
        let s = &t.s;
        vec![
            "-q".into(),
            "MySQL".into(),
            format!("--mysql-host={}", s.host),
            format!("--mysql-port={}", s.port),
            format!("--mysql-user={}", s.user),
            format!("--mysql-password={}", s.password),
            format!("--mysql-db={}", s.db),
            format!("--mysql-table={}", t.name),
        ]
    }

    #[test]
    fn interop_gearmand_writes_we_replay() {
        let Some(v) = store_env("GEARSHIFT_TEST_MYSQL") else {
            return;
        };
        if !have_gearmand() {
            return;
        }
        let dir = TempDir::new("my");
        let t = Table::new(&v);
        let args = gearmand_args(&t);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check_from_gearmand(dir.path(), &args, &mut || t.open(), &cli_jobs("my"));
    }

    #[test]
    fn interop_we_write_gearmand_delivers() {
        let Some(v) = store_env("GEARSHIFT_TEST_MYSQL") else {
            return;
        };
        if !have_gearmand() {
            return;
        }
        let dir = TempDir::new("my");
        let t = Table::new(&v);
        let args = gearmand_args(&t);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let jobs = worker_jobs("gsmywork");
        check_to_gearmand(dir.path(), &args, &mut || t.open(), "gsmywork", &jobs, true);
    }
}
