//! redis, on the server `GEARSHIFT_TEST_REDIS=host:port` names. Every test here is ignored
//! unless asked for, and fails without its server (see the module above).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gearshift::jobs::Priority;
use gearshift::store::redis::Redis;
use gearshift::store::{Backend, Op};

use super::{Store, assert_same, del, fixture, job, server_var};
use crate::util::{KillOnDrop, TempDir, free_port, unique_name, wait_for_port};

/// A fresh key prefix on the shared server; its keys are removed when the guard goes.
pub struct Prefix {
    host: String,
    port: u16,
    prefix: String,
}

impl Prefix {
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

impl Store for Prefix {
    const TAG: &'static str = "rd";
    const ANY_BYTES: bool = true;
    /// gearmand 1.1.20's redis replay copies `data` as a C string (a NUL ends it).
    const GEARMAND_KEEPS_NULS: bool = false;

    fn new() -> Prefix {
        let v = server_var("GEARSHIFT_TEST_REDIS");
        let (host, port) = v
            .rsplit_once(':')
            .expect("GEARSHIFT_TEST_REDIS is host:port");
        Prefix {
            host: host.to_string(),
            port: port.parse().expect("port"),
            prefix: unique_name("rd"),
        }
    }

    fn open(&self) -> Box<dyn Backend> {
        Box::new(Redis::open(&self.host, self.port, None, &self.prefix).unwrap())
    }

    fn gearmand_args(&self) -> Vec<String> {
        vec![
            "-q".into(),
            "redis".into(),
            format!("--redis-server={}", self.host),
            format!("--redis-port={}", self.port),
            format!("--redis-prefix={}", self.prefix),
        ]
    }

    fn assert_nothing_left(&self) {
        let keys = self.keys();
        assert!(keys.is_empty(), "keys left behind: {keys:?}");
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

every_backend_must_pass!(
    Prefix,
    server: [#[ignore = "needs redis: see scripts/start-test-stores.sh"]],
    interop: [#[ignore = "needs redis, gearmand and gearman: see scripts/start-test-stores.sh"]],
);

/// gearmand's key and fields, plus ours.
#[test]
#[ignore = "needs redis: see scripts/start-test-stores.sh"]
fn key_layout_is_gearmands() {
    let p = Prefix::new();
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
#[ignore = "needs redis: see scripts/start-test-stores.sh"]
fn colliding_keys_never_overwrite() {
    let x = job(b"a", b"b-c", Priority::Normal, b"X", 0);
    let y = job(b"a-b", b"c", Priority::High, b"Y", 0);
    let z = job(b"a-b-c", b"", Priority::Low, b"Z", 0);
    for (first, second) in [(&x, &y), (&y, &x)] {
        let p = Prefix::new();
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
    let p = Prefix::new();
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
#[ignore = "needs redis: see scripts/start-test-stores.sh"]
fn gearmand_written_keys() {
    let p = Prefix::new();
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
#[ignore = "needs redis: see scripts/start-test-stores.sh"]
fn errors_and_describe() {
    let p = Prefix::new();
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
#[ignore = "needs redis: see scripts/start-test-stores.sh"]
fn server_killed_then_back() {
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
        KillOnDrop(child)
    };
    let mut server = start();
    let mut s = Redis::open("127.0.0.1", port, Some("pw secret"), "_gear_").unwrap();
    assert!(!s.describe().contains("pw"), "{}", s.describe());
    let jobs = fixture(true);
    s.apply(&jobs.iter().cloned().map(Op::Add).collect::<Vec<_>>())
        .unwrap();
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    let extra = job(b"f", b"late", Priority::Normal, b"L", 0);
    let e = s
        .apply(&[Op::Add(extra.clone())])
        .expect_err("apply with redis down fails");
    assert!(e.0.starts_with(&format!("redis 127.0.0.1:{port}:")), "{e}");
    assert!(s.reconnect().is_err(), "reconnect with redis down fails");
    let _server = start();
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
}
