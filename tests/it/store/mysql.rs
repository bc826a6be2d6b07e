//! MariaDB/MySQL, on the server `GEARSHIFT_TEST_MYSQL=host:port:user:password:db` names. Every
//! test here is ignored unless asked for, and fails without its server (see the module above).

use std::time::{Duration, Instant};

use ::mysql::prelude::Queryable;
use gearshift::jobs::Priority;
use gearshift::store::mysql::Mysql;
use gearshift::store::{Backend, Op};

use super::sql::{LossyProxy, check_failed_batch, check_lost_commit};
use super::{Store, assert_same, job, server_var};
use crate::util::{free_port, unique_name};

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

/// A fresh table on the shared server, dropped when the guard goes.
pub struct Table {
    s: Server,
    name: String,
}

impl Table {
    fn store(&self) -> Mysql {
        let s = &self.s;
        Mysql::open(&s.host, s.port, &s.user, &s.password, &s.db, &self.name).unwrap()
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

impl Store for Table {
    const TAG: &'static str = "my";
    const ANY_BYTES: bool = false;

    fn new() -> Table {
        Table {
            s: server(&server_var("GEARSHIFT_TEST_MYSQL")),
            name: unique_name("my"),
        }
    }

    fn open(&self) -> Box<dyn Backend> {
        Box::new(self.store())
    }

    fn gearmand_args(&self) -> Vec<String> {
        let s = &self.s;
        vec![
            "-q".into(),
            "MySQL".into(),
            format!("--mysql-host={}", s.host),
            format!("--mysql-port={}", s.port),
            format!("--mysql-user={}", s.user),
            format!("--mysql-password={}", s.password),
            format!("--mysql-db={}", s.db),
            format!("--mysql-table={}", self.name),
        ]
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let _ = self
            .raw()
            .query_drop(format!("DROP TABLE IF EXISTS {}", self.name));
    }
}

every_backend_must_pass!(
    Table,
    server: [#[ignore = "needs MariaDB: see scripts/start-test-stores.sh"]],
    interop: [#[ignore = "needs MariaDB, gearmand and gearman: see scripts/start-test-stores.sh"]],
);

/// A batch that fails half-way (a job whose `when` does not fit INT, a unique longer than
/// VARCHAR(64), which the server refuses after the first job was inserted) stores nothing.
#[test]
#[ignore = "needs MariaDB: see scripts/start-test-stores.sh"]
fn failed_batch_stores_nothing() {
    let t = Table::new();
    let long = job(b"f", &[b'u'; 65], Priority::Normal, b"B", 0);
    check_failed_batch(&mut t.store(), long, "INSERT failed");
}

#[test]
#[ignore = "needs MariaDB: see scripts/start-test-stores.sh"]
fn a_lost_commit_leaves_no_refused_job_behind() {
    let t = Table::new();
    let proxy = LossyProxy::to(t.s.port);
    let s = &t.s;
    let mut via = Mysql::open(&s.host, proxy.port, &s.user, &s.password, &s.db, &t.name).unwrap();
    check_lost_commit(&proxy, &mut via, &mut || t.open());
}

#[test]
#[ignore = "needs MariaDB: see scripts/start-test-stores.sh"]
fn table_layout_is_gearmands() {
    let t = Table::new();
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
#[ignore = "needs MariaDB: see scripts/start-test-stores.sh"]
fn describe_and_errors_never_show_the_password() {
    let t = Table::new();
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
#[ignore = "needs MariaDB: see scripts/start-test-stores.sh"]
fn connection_killed_then_reconnect() {
    let t = Table::new();
    let mut s = t.store();
    let a = job(b"f", b"a", Priority::Normal, b"A", 0);
    s.apply(&[Op::Add(a.clone())]).unwrap();
    let id = s.connection_id().unwrap();
    let mut admin = t.raw();
    admin.query_drop(format!("KILL {id}")).unwrap();
    // KILL marks the thread: wait until it is gone from the process list.
    let end = Instant::now() + Duration::from_secs(10);
    while admin
        .exec_first::<u64, _, _>(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?",
            (id,),
        )
        .unwrap()
        != Some(0)
    {
        assert!(Instant::now() < end, "the killed connection is still there");
        std::thread::sleep(Duration::from_millis(20));
    }
    let b = job(b"f", b"b", Priority::Normal, b"B", 0);
    let e = s
        .apply(&[Op::Add(b.clone())])
        .expect_err("apply on a killed connection fails");
    assert!(e.0.starts_with("MySQL "), "{e}");
    s.reconnect().unwrap();
    s.apply(&[Op::Add(b.clone())]).unwrap();
    assert_same(s.replay().unwrap(), &[a, b]);
}
