//! Queue-store backends (src/store/*.rs) against real stores, no mocks: a SQLite file, and
//! PostgreSQL, MariaDB/MySQL and redis servers on loopback.
//!
//! Which tests run, and when:
//! - A test that needs nothing but a temp dir (SQLite) is a plain `#[test]`: it runs in every
//!   `cargo test`.
//! - A test that needs an external server (PostgreSQL, MariaDB/MySQL, redis), or the real C
//!   gearmand 1.1.20 (`/usr/sbin/gearmand`, or `GEARMAND_BIN`) and its `gearman` client for the
//!   interop tests, is `#[ignore = "needs <server>: see scripts/...sh"]`. libtest cannot decide
//!   at run time that a test is ignored, so it is always reported as ignored unless asked for:
//!
//!   ```text
//!   eval "$(bash scripts/start-test-stores.sh)"
//!   cargo test --test it -- --ignored store::
//!   bash scripts/start-test-stores.sh stop "$GEARSHIFT_TEST_STORES_DIR"
//!   ```
//!
//!   as `scripts/test.sh` does. A test asked for whose server variable
//!   (`GEARSHIFT_TEST_PG`, `GEARSHIFT_TEST_MYSQL`, `GEARSHIFT_TEST_REDIS`) is unset, or whose
//!   gearmand or gearman is missing, fails: no store test ever passes untested.
//! - None of them talks to the server under test, so `GEARSHIFT_TEST_THREADS` and
//!   `GEARSHIFT_TEST_SERVER` change nothing here; `scripts/test.sh` runs them once, in its
//!   first stage and its store stage, and leaves them out (`--skip store::`) of the 4-shard
//!   and gearmand passes of the suite.
//!
//! The tests every backend must pass are written once, generic over [`Store`], and given to
//! each backend's module by [`every_backend_must_pass!`]; each gets its own name
//! (`store::postgres::round_trip`). The rest are specific to one backend. Every test works in
//! its own SQLite file, SQL table or redis key prefix, so they run in parallel on one server.

use std::collections::BTreeMap;
use std::time::Instant;

use gearshift::jobs::Priority;
use gearshift::store::{Backend, Op, StoredJob};

/// The tests every backend must pass, one `#[test]` each in the module that invokes it, on the
/// backend `$store` (a [`Store`]). `server` holds the attributes of the tests that need only the
/// store (its `#[ignore]` when that is an external server), `interop` those of the tests that
/// also run the real gearmand.
macro_rules! every_backend_must_pass {
    ($store:ty, server: [$(#[$server:meta])*], interop: [$(#[$interop:meta])*] $(,)?) => {
        /// Add the fixture in one batch, delete some in another: replay gives the rest.
        #[test]
        $(#[$server])*
        fn round_trip() {
            $crate::store::round_trip::<$store>();
        }

        /// One batch is one transaction, its ops applied in order.
        #[test]
        $(#[$server])*
        fn batch_is_one_transaction() {
            $crate::store::batch_is_one_transaction::<$store>();
        }

        /// Jobs written through one backend are replayed by a new one on the same store.
        #[test]
        $(#[$server])*
        fn reopen_replays_the_same_rows() {
            $crate::store::reopen_replays_the_same_rows::<$store>();
        }

        /// 100 MiB in one batch, then one batch deleting it all.
        #[test]
        $(#[$server])*
        fn a_batch_of_100k_jobs_of_1k() {
            $crate::store::a_batch_of_100k_jobs_of_1k::<$store>();
        }

        /// What gearmand queued on this store, our backend replays.
        #[test]
        $(#[$interop])*
        fn interop_gearmand_writes_we_replay() {
            $crate::store::interop_gearmand_writes_we_replay::<$store>();
        }

        /// What our backend wrote, gearmand delivers to a worker.
        #[test]
        $(#[$interop])*
        fn interop_we_write_gearmand_delivers() {
            $crate::store::interop_we_write_gearmand_delivers::<$store>();
        }
    };
}

mod gearmand;
mod sql;

/// SQLite: a file in a temp dir; always runs (its gearmand interop needs gearmand).
mod sqlite;

/// PostgreSQL (`GEARSHIFT_TEST_PG`, a libpq conninfo).
mod postgres;

/// MariaDB/MySQL (`GEARSHIFT_TEST_MYSQL=host:port:user:password:db`).
mod mysql;

/// redis (`GEARSHIFT_TEST_REDIS=host:port`).
mod redis;

// ---------------------------------------------------------------------------------------------
// The store under test
// ---------------------------------------------------------------------------------------------

/// The value of the variable that names a test server, as `scripts/start-test-stores.sh`
/// exports it. Panics when it is unset: the tests that call this are ignored unless asked
/// for, and once asked for they fail without their server.
pub fn server_var(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is unset, and this test needs its server: \
             eval \"$(bash scripts/start-test-stores.sh)\" first"
        ),
    }
}

/// A backend under test on a store of its own (a fresh SQLite file, SQL table or redis key
/// prefix), removed when the value is dropped.
pub trait Store {
    /// Short tag for the function names of the interop tests (`gs<tag>`, `gs<tag>work`).
    const TAG: &'static str;
    /// True when function names and uniques may be any bytes, not only UTF-8 text.
    const ANY_BYTES: bool;
    /// False when gearmand 1.1.20's replay from this store loses the priority.
    const GEARMAND_KEEPS_PRIORITIES: bool = true;
    /// False when gearmand 1.1.20's replay from this store ends a payload at its first NUL.
    const GEARMAND_KEEPS_NULS: bool = true;

    /// A fresh, empty store; panics when its server is not configured.
    fn new() -> Self;
    /// A new backend (a new connection) on the store.
    fn open(&self) -> Box<dyn Backend>;
    /// gearmand's `-q ...` arguments for the same store.
    fn gearmand_args(&self) -> Vec<String>;
    /// Asserts that the store holds nothing but empty tables (redis: no key under the prefix).
    fn assert_nothing_left(&self) {}
}

// ---------------------------------------------------------------------------------------------
// Jobs and how they are compared
// ---------------------------------------------------------------------------------------------

pub fn job(
    function: &[u8],
    unique: &[u8],
    priority: Priority,
    data: &[u8],
    when: i64,
) -> StoredJob {
    StoredJob {
        function: function.to_vec(),
        unique: unique.to_vec(),
        priority,
        data: data.to_vec(),
        when,
    }
}

pub fn del(j: &StoredJob) -> Op {
    Op::Delete {
        function: j.function.clone(),
        unique: j.unique.clone(),
    }
}

type ByKey = BTreeMap<(Vec<u8>, Vec<u8>), StoredJob>;

/// Jobs keyed by (function, unique), so scan order does not matter.
fn by_key(jobs: Vec<StoredJob>) -> ByKey {
    let mut m = BTreeMap::new();
    for j in jobs {
        let k = (j.function.clone(), j.unique.clone());
        assert!(m.insert(k, j.clone()).is_none(), "replayed twice: {j:?}");
    }
    m
}

/// Asserts that a replay gave exactly `want`, in any order.
#[track_caller]
pub fn assert_same(got: Vec<StoredJob>, want: &[StoredJob]) {
    let got = by_key(got);
    let want = by_key(want.to_vec());
    if got != want {
        let show = |m: &ByKey| {
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
pub fn uuid(n: u32) -> Vec<u8> {
    format!("{n:08x}-e7f2-11f1-a8f2-02fc00000001").into_bytes()
}

/// The jobs every backend must keep: binary data with NULs, all priorities, an epoch time,
/// function names with `-`, 64-byte uniques, UUID uniques, an empty payload, a large payload,
/// and two keys that collide if (function, unique) is joined with `-` naively; with
/// `any_bytes`, a function name and a unique that are not UTF-8.
pub fn fixture(any_bytes: bool) -> Vec<StoredJob> {
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
    if any_bytes {
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

// ---------------------------------------------------------------------------------------------
// The tests every backend must pass (instantiated by every_backend_must_pass!)
// ---------------------------------------------------------------------------------------------

/// Round trip: add the fixture in one batch, delete some in another, replay gives the rest.
pub fn round_trip<S: Store>() {
    let st = S::new();
    let mut store = st.open();
    let jobs = fixture(S::ANY_BYTES);
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
    st.assert_nothing_left();
}

/// One batch is one transaction: an add and the delete of the same job leave nothing; the
/// ops of a batch apply in order.
pub fn batch_is_one_transaction<S: Store>() {
    let st = S::new();
    let mut store = st.open();
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
    st.assert_nothing_left();
}

/// Jobs written through one backend are replayed by a new one on the same store.
pub fn reopen_replays_the_same_rows<S: Store>() {
    let st = S::new();
    let jobs = fixture(false);
    {
        let mut s = st.open();
        s.apply(&jobs.iter().cloned().map(Op::Add).collect::<Vec<_>>())
            .unwrap();
    }
    let mut s = st.open();
    assert_same(s.replay().unwrap(), &jobs);
    // And the rows the new one deletes are gone for the next one.
    s.apply(&jobs.iter().map(del).collect::<Vec<_>>()).unwrap();
    drop(s);
    assert_same(st.open().replay().unwrap(), &[]);
    st.assert_nothing_left();
}

/// How many submissions, and how big, the large-batch tests write in one batch.
const LARGE_BATCH: usize = 100_000;
const LARGE_PAYLOAD: usize = 1024;

/// One batch of 100,000 adds with 1 KiB payloads (100 MiB: more than any server takes in one
/// statement or packet, so the backend must split it), then one batch deleting them all. Every
/// payload is different, so a row written with another's data shows.
pub fn a_batch_of_100k_jobs_of_1k<S: Store>() {
    let st = S::new();
    let mut store = st.open();
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
    st.assert_nothing_left();
}

/// gearmand -> us on this store (see `gearmand::check_from_gearmand`).
pub fn interop_gearmand_writes_we_replay<S: Store>() {
    gearmand::require_gearmand();
    let st = S::new();
    let args = st.gearmand_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let jobs = gearmand::cli_jobs(S::TAG);
    gearmand::check_from_gearmand(&args, &mut || st.open(), &jobs);
    st.assert_nothing_left();
}

/// us -> gearmand on this store (see `gearmand::check_to_gearmand`).
pub fn interop_we_write_gearmand_delivers<S: Store>() {
    gearmand::require_gearmand();
    let st = S::new();
    let args = st.gearmand_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let function = format!("gs{}work", S::TAG);
    let mut jobs = gearmand::worker_jobs(&function);
    if !S::GEARMAND_KEEPS_NULS {
        // The payloads gearmand is given here have no NUL, or it would cut them.
        for j in &mut jobs {
            j.data.retain(|&b| b != 0);
        }
    }
    gearmand::check_to_gearmand(
        &args,
        &mut || st.open(),
        &function,
        &jobs,
        S::GEARMAND_KEEPS_PRIORITIES,
    );
    st.assert_nothing_left();
}
