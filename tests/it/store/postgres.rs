//! PostgreSQL, on the server `GEARSHIFT_TEST_PG` names (a libpq conninfo). Every test here is
//! ignored unless asked for, and fails without its server (see the module above).

use std::time::{Duration, Instant};

use gearshift::jobs::Priority;
use gearshift::store::postgres::Postgres;
use gearshift::store::{Backend, Op};

use super::sql::{LossyProxy, check_failed_batch, check_lost_commit};
use super::{Store, assert_same, job, server_var};
use crate::util::unique_name;

/// A fresh table name on the shared server, dropped again when the guard goes.
pub struct Table {
    conninfo: String,
    name: String,
}

impl Store for Table {
    const TAG: &'static str = "pg";
    const ANY_BYTES: bool = false;
    /// gearmand 1.1.20's Postgres replay asks for binary results and atoi()s the 4-byte
    /// priority, so every replayed job is HIGH there: only the payloads are compared.
    const GEARMAND_KEEPS_PRIORITIES: bool = false;

    fn new() -> Table {
        Table {
            conninfo: server_var("GEARSHIFT_TEST_PG"),
            name: unique_name("pg"),
        }
    }

    fn open(&self) -> Box<dyn Backend> {
        Box::new(Postgres::open(&self.conninfo, &self.name).unwrap())
    }

    fn gearmand_args(&self) -> Vec<String> {
        vec![
            "-q".into(),
            "Postgres".into(),
            format!("--libpq-conninfo={}", self.conninfo),
            format!("--libpq-table={}", self.name),
        ]
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        if let Ok(mut c) = ::postgres::Client::connect(&self.conninfo, ::postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP TABLE IF EXISTS {}", self.name));
        }
    }
}

every_backend_must_pass!(
    Table,
    server: [#[ignore = "needs PostgreSQL: see scripts/start-test-stores.sh"]],
    interop: [#[ignore = "needs PostgreSQL, gearmand and gearman: see scripts/start-test-stores.sh"]],
);

/// A batch that fails half-way (a job whose `when` does not fit INTEGER, a function name
/// that is not UTF-8) stores nothing.
#[test]
#[ignore = "needs PostgreSQL: see scripts/start-test-stores.sh"]
fn failed_batch_stores_nothing() {
    let t = Table::new();
    let bad = job(b"f\xff", b"b", Priority::Normal, b"B", 0);
    check_failed_batch(&mut *t.open(), bad, "not UTF-8");
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
#[ignore = "needs PostgreSQL: see scripts/start-test-stores.sh"]
fn a_lost_commit_leaves_no_refused_job_behind() {
    let t = Table::new();
    let port: u16 = t
        .conninfo
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .expect("GEARSHIFT_TEST_PG names its port")
        .parse()
        .unwrap();
    let proxy = LossyProxy::to(port);
    let mut via = Postgres::open(&with_port(&t.conninfo, proxy.port), &t.name).unwrap();
    check_lost_commit(&proxy, &mut via, &mut || t.open());
}

#[test]
#[ignore = "needs PostgreSQL: see scripts/start-test-stores.sh"]
fn table_layout_is_gearmands() {
    let t = Table::new();
    let _s = t.open();
    let mut c = ::postgres::Client::connect(&t.conninfo, ::postgres::NoTls).unwrap();
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
#[ignore = "needs PostgreSQL: see scripts/start-test-stores.sh"]
fn describe_and_errors_never_show_the_password() {
    let t = Table::new();
    let ci = &t.conninfo;
    let s = Postgres::open(ci, &t.name).unwrap();
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
    let e = Postgres::open(ci, "robert'); DROP TABLE students;--")
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
#[ignore = "needs PostgreSQL: see scripts/start-test-stores.sh"]
fn connection_killed_then_reconnect() {
    let t = Table::new();
    let ci = &t.conninfo;
    let app = unique_name("app");
    let mut s = Postgres::open(&format!("{ci} application_name={app}"), &t.name).unwrap();
    let a = job(b"f", b"a", Priority::Normal, b"A", 0);
    s.apply(&[Op::Add(a.clone())]).unwrap();
    let mut admin = ::postgres::Client::connect(ci, ::postgres::NoTls).unwrap();
    let n: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1",
            &[&app],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    // pg_terminate_backend only signals: wait until the backend is gone.
    let end = Instant::now() + Duration::from_secs(10);
    while admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(
            Instant::now() < end,
            "the terminated backend is still there"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let b = job(b"f", b"b", Priority::Normal, b"B", 0);
    let e = s
        .apply(&[Op::Add(b.clone())])
        .expect_err("apply on a killed connection fails");
    assert!(e.0.starts_with("Postgres host="), "{e}");
    s.reconnect().unwrap();
    s.apply(&[Op::Add(b.clone())]).unwrap();
    assert_same(s.replay().unwrap(), &[a, b]);
}
