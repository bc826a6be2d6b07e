//! `-q Postgres`: gearmand's PostgreSQL queue (PROTOCOL.md §5), through the synchronous
//! `postgres` crate (a pure-Rust client; no libpq needed).
//!
//! The table is gearmand's:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS queue (unique_key VARCHAR(64), function_name VARCHAR(255),
//!   priority INTEGER, data BYTEA, when_to_run INTEGER, UNIQUE (unique_key, function_name))
//! ```
//!
//! Differences from gearmand 1.1.20, on purpose:
//! - every statement is parameterised (gearmand builds its DELETE by pasting the unique and
//!   function into the SQL text: an injection, fixed in gearmand 2.0);
//! - an add of a key that is already stored replaces the row (`INSERT … ON CONFLICT … DO
//!   UPDATE`, PostgreSQL 9.5+), where gearmand's plain INSERT fails the job with QUEUE_ERROR;
//! - a batch of adds and deletes is one transaction; [`Backend::apply`] returns after COMMIT,
//!   which PostgreSQL makes durable (WAL flushed) under its default `synchronous_commit=on`;
//! - no TLS: `sslmode=prefer` (libpq's default) connects in clear, `sslmode=require` fails.
//!
//! Text columns are PostgreSQL text: a function name or unique that is not UTF-8 cannot be
//! stored (gearmand cannot store it either); the batch fails with an error naming the job.

use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use postgres::config::Host;
use postgres::{Client, Config, NoTls, Statement};

use super::sqlite::{is_plain_identifier, priority_from_stored};
use super::{Backend, Op, StoreError, StoredJob};

/// Default `--libpq-table`.
pub const DEFAULT_TABLE: &str = "queue";

/// Connect timeout used when the conninfo gives none (libpq would wait for the OS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The Postgres store: one connection, used by the store thread only.
pub struct Postgres {
    config: Config,
    table: String,
    described: String,
    conn: Option<Conn>,
}

struct Conn {
    client: Client,
    insert: Statement,
    delete: Statement,
}

impl Postgres {
    /// Connects with `--libpq-conninfo` (a libpq `key=value …` string or a `postgresql://`
    /// URL; empty means libpq's defaults: `PGHOST`/`PGPORT`/`PGUSER`/`PGPASSWORD`/`PGDATABASE`,
    /// else the local socket in `/var/run/postgresql`, port 5432, the OS user, database = user)
    /// and creates `--libpq-table` if it does not exist.
    pub fn open(conninfo: &str, table: &str) -> Result<Postgres, StoreError> {
        let config = parse_conninfo(conninfo)?;
        let described = describe_config(&config, table);
        if !is_plain_identifier(table, true) {
            return Err(StoreError(format!(
                "{described}: table name {table:?} is not a plain SQL identifier \
                 (letters, digits, _, $, optionally schema.table)"
            )));
        }
        let mut store = Postgres {
            config,
            table: table.to_string(),
            described,
            conn: None,
        };
        store.connect()?;
        Ok(store)
    }

    fn err(&self, what: &str, e: &postgres::Error) -> StoreError {
        StoreError(format!("{}: {what}: {}", self.described, pg_error_text(e)))
    }

    fn connect(&mut self) -> Result<(), StoreError> {
        self.conn = None;
        let mut client = self
            .config
            .connect(NoTls)
            .map_err(|e| self.err("cannot connect", &e))?;
        let t = &self.table;
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {t} (unique_key VARCHAR(64), \
                 function_name VARCHAR(255), priority INTEGER, data BYTEA, \
                 when_to_run INTEGER, UNIQUE (unique_key, function_name))"
            ))
            .map_err(|e| self.err(&format!("cannot create table {t}"), &e))?;
        let insert = client
            .prepare(&format!(
                "INSERT INTO {t} (priority, unique_key, function_name, data, when_to_run) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (unique_key, function_name) DO UPDATE SET \
                 priority = EXCLUDED.priority, data = EXCLUDED.data, \
                 when_to_run = EXCLUDED.when_to_run"
            ))
            .map_err(|e| self.err("prepare INSERT", &e))?;
        let delete = client
            .prepare(&format!(
                "DELETE FROM {t} WHERE unique_key = $1 AND function_name = $2"
            ))
            .map_err(|e| self.err("prepare DELETE", &e))?;
        self.conn = Some(Conn {
            client,
            insert,
            delete,
        });
        Ok(())
    }

    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.connect()?;
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }
}

/// The conninfo with libpq's environment defaults filled in.
fn parse_conninfo(conninfo: &str) -> Result<Config, StoreError> {
    let mut config = Config::from_str(conninfo).map_err(|e| {
        // Never echo the conninfo: it may hold a password.
        StoreError(format!(
            "Postgres: bad --libpq-conninfo: {}",
            pg_error_text(&e)
        ))
    })?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        match env("PGHOST") {
            Some(h) => {
                for h in h.split(',') {
                    config.host(h);
                }
            }
            None => {
                config.host_path("/var/run/postgresql");
            }
        }
    }
    if config.get_ports().is_empty()
        && let Some(p) = env("PGPORT").and_then(|p| p.parse::<u16>().ok())
    {
        config.port(p);
    }
    if config.get_user().is_none() {
        match env("PGUSER").or_else(os_user) {
            Some(u) => config.user(&u),
            None => {
                return Err(StoreError(
                    "Postgres: no user in --libpq-conninfo, PGUSER or the OS account".into(),
                ));
            }
        };
    }
    if config.get_password().is_none()
        && let Some(p) = env("PGPASSWORD")
    {
        config.password(&p);
    }
    if config.get_dbname().is_none()
        && let Some(d) = env("PGDATABASE")
    {
        config.dbname(&d);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok(config)
}

/// The effective user's login name (libpq's default user).
fn os_user() -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: passwd is a plain C struct of integers and pointers, for which all-zero bytes
    // are a valid value; getpwuid_r fills it before it is read.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into pwd and buf (of the given length) and sets out to &pwd
    // on success; pw_name then points into buf, which outlives its use here.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() || pwd.pw_name.is_null() {
        return std::env::var("USER").ok();
    }
    // SAFETY: on success pw_name is non-null (checked above) and points to a NUL-terminated
    // string inside `buf`, which is alive for this borrow.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// `Postgres host=… port=… dbname=… user=… table=…`, never the password.
fn describe_config(config: &Config, table: &str) -> String {
    let mut s = String::from("Postgres");
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        })
        .chain(config.get_hostaddrs().iter().map(|a| a.to_string()))
        .collect();
    if !hosts.is_empty() {
        let _ = write!(s, " host={}", hosts.join(","));
    }
    let ports: Vec<String> = config.get_ports().iter().map(|p| p.to_string()).collect();
    let _ = write!(
        s,
        " port={}",
        if ports.is_empty() {
            "5432".into()
        } else {
            ports.join(",")
        }
    );
    let user = config.get_user().unwrap_or("");
    let _ = write!(s, " dbname={}", config.get_dbname().unwrap_or(user));
    let _ = write!(s, " user={user} table={table}");
    s
}

/// The server's own words for a database error, else the client's, with its causes.
fn pg_error_text(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        let _ = write!(s, ": {cause}");
        src = cause.source();
    }
    s
}

fn text<'a>(what: &str, bytes: &'a [u8], job: &StoredJob) -> Result<&'a str, String> {
    std::str::from_utf8(bytes).map_err(|_| {
        format!(
            "{what} of job {}/{} is not UTF-8, which a VARCHAR column cannot hold",
            String::from_utf8_lossy(&job.function),
            String::from_utf8_lossy(&job.unique)
        )
    })
}

fn when_i32(job: &StoredJob) -> Result<i32, String> {
    i32::try_from(job.when).map_err(|_| {
        format!(
            "when_to_run {} of job {}/{} does not fit gearmand's INTEGER column",
            job.when,
            String::from_utf8_lossy(&job.function),
            String::from_utf8_lossy(&job.unique)
        )
    })
}

/// The same text as [`Backend::describe`]: never a password.
impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Backend for Postgres {
    fn describe(&self) -> String {
        self.described.clone()
    }

    fn replay(&mut self) -> Result<Vec<StoredJob>, StoreError> {
        let sql = format!(
            "SELECT unique_key, function_name, priority, data, when_to_run FROM {}",
            self.table
        );
        let described = self.described.clone();
        let err = |what: &str, e: &postgres::Error| {
            StoreError(format!("{described}: replay: {what}: {}", pg_error_text(e)))
        };
        let conn = self.conn()?;
        let rows = conn
            .client
            .query(&sql, &[])
            .map_err(|e| err("SELECT failed", &e))?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            let s = |i: usize| -> Result<Vec<u8>, StoreError> {
                Ok(row
                    .try_get::<_, Option<String>>(i)
                    .map_err(|e| err("bad row", &e))?
                    .unwrap_or_default()
                    .into_bytes())
            };
            // INTEGER as gearmand creates it; BIGINT in a hand-made table also reads.
            let n = |i: usize| -> Result<Option<i64>, StoreError> {
                match row.try_get::<_, Option<i32>>(i) {
                    Ok(v) => Ok(v.map(i64::from)),
                    Err(_) => row
                        .try_get::<_, Option<i64>>(i)
                        .map_err(|e| err("bad row", &e)),
                }
            };
            jobs.push(StoredJob {
                unique: s(0)?,
                function: s(1)?,
                priority: priority_from_stored(n(2)?.unwrap_or(1)),
                data: row
                    .try_get::<_, Option<Vec<u8>>>(3)
                    .map_err(|e| err("bad row", &e))?
                    .unwrap_or_default(),
                when: n(4)?.unwrap_or(0),
            });
        }
        Ok(jobs)
    }

    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let described = self.described.clone();
        let fail = |msg: String| StoreError(format!("{described}: {msg}"));
        let conn = self.conn()?;
        let result = (|| -> Result<(), StoreError> {
            let mut tx = conn
                .client
                .transaction()
                .map_err(|e| fail(format!("cannot begin a transaction: {}", pg_error_text(&e))))?;
            for op in ops {
                match op {
                    Op::Add(job) => {
                        let unique = text("unique", &job.unique, job).map_err(&fail)?;
                        let function = text("function name", &job.function, job).map_err(&fail)?;
                        let when = when_i32(job).map_err(&fail)?;
                        let priority = job.priority as u8 as i32;
                        tx.execute(
                            &conn.insert,
                            &[&priority, &unique, &function, &job.data.as_slice(), &when],
                        )
                        .map_err(|e| fail(format!("INSERT failed: {}", pg_error_text(&e))))?;
                    }
                    Op::Delete { function, unique } => {
                        // A key that is not UTF-8 was never stored: nothing to delete.
                        let (Ok(unique), Ok(function)) =
                            (std::str::from_utf8(unique), std::str::from_utf8(function))
                        else {
                            continue;
                        };
                        tx.execute(&conn.delete, &[&unique, &function])
                            .map_err(|e| fail(format!("DELETE failed: {}", pg_error_text(&e))))?;
                    }
                }
            }
            tx.commit()
                .map_err(|e| fail(format!("COMMIT failed: {}", pg_error_text(&e))))
        })();
        if result.is_err() && conn.client.is_closed() {
            self.conn = None;
        }
        result
    }

    fn reconnect(&mut self) -> Result<(), StoreError> {
        self.connect()
    }
}
