//! SQLite: the database is a file in a temp dir, so these run in every `cargo test`; only the
//! gearmand interop tests are ignored unless asked for (they need gearmand and gearman).

use std::path::{Path, PathBuf};
use std::time::Duration;

use gearshift::jobs::Priority;
use gearshift::store::sqlite::Sqlite;
use gearshift::store::{Backend, Op};

use super::gearmand::{check_to_gearmand, require_gearmand, worker_jobs};
use super::{Store, assert_same, job};
use crate::util::TempDir;

/// A database file `q.db` in a temp dir of its own, table `gearman_queue` (gearmand's default).
pub struct File {
    dir: TempDir,
    path: PathBuf,
}

impl File {
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Store for File {
    const TAG: &'static str = "sq";
    const ANY_BYTES: bool = true;

    fn new() -> File {
        let dir = TempDir::new("sqlite");
        let path = dir.path().join("q.db");
        File { dir, path }
    }

    fn open(&self) -> Box<dyn Backend> {
        Box::new(Sqlite::open(&self.path, "gearman_queue").unwrap())
    }

    fn gearmand_args(&self) -> Vec<String> {
        vec![
            "-q".into(),
            "libsqlite3".into(),
            format!("--libsqlite3-db={}", self.path.display()),
        ]
    }
}

every_backend_must_pass!(
    File,
    server: [],
    interop: [#[ignore = "needs gearmand and gearman: see scripts/install-test-deps.sh"]],
);

#[test]
fn table_layout_and_column_types_are_gearmands() {
    let f = File::new();
    let path = f.path();
    let mut s = Sqlite::open(path, "gearman_queue").unwrap();
    s.apply(&[Op::Add(job(b"f", b"u", Priority::Low, b"d\0", 5))])
        .unwrap();
    let conn = rusqlite::Connection::open(path).unwrap();
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
    let f = File::new();
    let path = f.path();
    {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch(
            "CREATE TABLE old_q ( unique_key TEXT, function_name TEXT, priority INTEGER, \
             data BLOB, PRIMARY KEY (unique_key, function_name));
             INSERT INTO old_q VALUES ('u1', 'f1', 0, x'00ff');
             INSERT INTO old_q VALUES (x'7532', x'6632', NULL, 'text data');",
        )
        .unwrap();
    }
    let mut s = Sqlite::open(path, "old_q").unwrap();
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
    let f = File::new();
    let bad = f.dir.path().join("no/such/dir/q.db");
    let e = Sqlite::open(&bad, "gearman_queue").expect_err("opening in a missing dir fails");
    assert!(
        e.0.starts_with(&format!("libsqlite3 {}", bad.display())),
        "{e}"
    );
    assert!(e.0.contains("unable to open database file"), "{e}");
    let e = Sqlite::open(f.path(), "bad name; drop").err().unwrap();
    assert!(e.0.contains("table name"), "{e}");
    let s = Sqlite::open(f.path(), "t").unwrap();
    assert!(s.describe().starts_with("libsqlite3 "), "{}", s.describe());
}

/// Another connection holds the write lock: apply fails with an error (and writes nothing);
/// once the lock is gone, reconnect and apply work.
#[test]
fn locked_database_fails_then_recovers() {
    let f = File::new();
    let path = f.path();
    let mut s = Sqlite::open(path, "gearman_queue").unwrap();
    s.set_busy_timeout(Duration::from_millis(100)).unwrap();
    let a = job(b"f", b"a", Priority::Normal, b"A", 0);

    let other = rusqlite::Connection::open(path).unwrap();
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

/// A custom table name is honoured the same way by both.
#[test]
#[ignore = "needs gearmand and gearman: see scripts/install-test-deps.sh"]
fn interop_custom_table() {
    require_gearmand();
    let f = File::new();
    let mut args = f.gearmand_args();
    args.push("--libsqlite3-table=other_q".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let jobs = worker_jobs("gssqtab");
    let mut open = || -> Box<dyn Backend> { Box::new(Sqlite::open(f.path(), "other_q").unwrap()) };
    check_to_gearmand(&args, &mut open, "gssqtab", &jobs, true);
}
