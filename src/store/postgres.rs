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
//! - a batch of adds and deletes is one transaction, written as one statement: the batch's net
//!   effect ([`NetChanges`]) as arrays, one element per row, unnested by the server:
//!
//!   ```sql
//!   WITH gone AS (DELETE FROM queue AS q USING unnest($6::text[], $7::text[]) AS d(u, f)
//!                 WHERE q.unique_key = d.u AND q.function_name = d.f)
//!   INSERT INTO queue (priority, unique_key, function_name, data, when_to_run)
//!     SELECT * FROM unnest($1::integer[], $2::text[], $3::text[], $4::bytea[], $5::integer[])
//!   ```
//!
//!   with `ON CONFLICT (unique_key, function_name) DO UPDATE SET …` only where a row may be
//!   there already (the batch deleted the key first, or the plain INSERT met one and the
//!   statement, rolled back, runs again as an upsert): an upsert costs the server about half as
//!   much again per row.
//!
//!   Prepared once, seven parameters whatever the batch size (far from the protocol's 65,535),
//!   one round trip, and its own transaction: [`Backend::apply`] returns once the server has
//!   answered the Sync that commits it, which PostgreSQL makes durable (WAL flushed) under its
//!   default `synchronous_commit=on`. A batch whose rows add up to more than
//!   [`MAX_STATEMENT_BYTES`] is cut into several such statements inside BEGIN … COMMIT;
//! - after a write whose commit outcome was lost with the connection (the server crashed
//!   mid-batch), the refused jobs' keys are deleted by the next write ([`Unsettled`]);
//! - no TLS: `sslmode=prefer` (libpq's default) connects in clear, `sslmode=require` fails.
//!
//! Text columns are PostgreSQL text: a function name or unique that is not UTF-8 cannot be
//! stored (gearmand cannot store it either); the batch fails with an error naming the job.

use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use postgres::config::Host;
use postgres::error::{Severity, SqlState};
use postgres::{Client, Config, NoTls, Statement};

use super::sqlite::{is_plain_identifier, priority_from_stored};
use super::{Backend, NetChanges, Op, StoreError, StoredJob, Unsettled, split};

/// Default `--libpq-table`.
pub const DEFAULT_TABLE: &str = "queue";

/// Most bytes of rows (payloads, keys and a little per row) one statement carries. The client
/// builds each statement in memory and the server holds each array whole (a value may not
/// exceed 1 GiB), so a larger batch is cut into several statements of one transaction.
pub const MAX_STATEMENT_BYTES: usize = 32 << 20;

/// What a row costs in a statement beyond its keys and payload: array element headers and the
/// two integers.
const ROW_OVERHEAD: usize = 32;

/// Connect timeout used when the conninfo gives none (libpq would wait for the OS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The Postgres store: one connection, used by the store thread only.
pub struct Postgres {
    config: Config,
    table: String,
    described: String,
    conn: Option<Conn>,
    unsettled: Unsettled,
}

struct Conn {
    client: Client,
    /// The net effect of a batch, or of a part of one, in one statement: its deletes and its
    /// adds as a plain INSERT, which costs PostgreSQL about a third less per row than an
    /// upsert (no speculative insertion) and fails if a row with the key is there already.
    insert: Statement,
    /// The same with `ON CONFLICT … DO UPDATE`: for batches that re-add a key they deleted,
    /// and again for a batch whose plain INSERT met a row with its key.
    upsert: Statement,
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
            unsettled: Unsettled::default(),
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
        // Keys are compared as text with the VARCHAR columns, which the unique index on
        // (unique_key, function_name) serves; the INSERT casts them back, so a value too long
        // for its column fails the statement as a single-row INSERT would.
        let write = |on_conflict: &str| {
            format!(
                "WITH gone AS (DELETE FROM {t} AS q \
                 USING unnest($6::text[], $7::text[]) AS d(unique_key, function_name) \
                 WHERE q.unique_key = d.unique_key AND q.function_name = d.function_name) \
                 INSERT INTO {t} (priority, unique_key, function_name, data, when_to_run) \
                 SELECT * FROM unnest($1::integer[], $2::text[], $3::text[], $4::bytea[], \
                 $5::integer[]){on_conflict}"
            )
        };
        let insert = client
            .prepare(&write(""))
            .map_err(|e| self.err("prepare the batch statement", &e))?;
        let upsert = client
            .prepare(&write(
                " ON CONFLICT (unique_key, function_name) DO UPDATE SET \
                 priority = EXCLUDED.priority, data = EXCLUDED.data, \
                 when_to_run = EXCLUDED.when_to_run",
            ))
            .map_err(|e| self.err("prepare the batch statement", &e))?;
        self.conn = Some(Conn {
            client,
            insert,
            upsert,
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
        match env("PGUSER").or_else(crate::sys::effective_user_name) {
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
        let with_cleanup;
        let ops = if self.unsettled.is_empty() {
            ops
        } else {
            with_cleanup = self.unsettled.before(ops);
            &with_cleanup[..]
        };
        let net = NetChanges::of(ops);
        if net.is_empty() {
            return Ok(());
        }
        let described = self.described.clone();
        let statements =
            statements(&net).map_err(|msg| StoreError(format!("{described}: {msg}")))?;
        let conn = self.conn()?;
        let mut result = if net.readds {
            write(&mut conn.client, &conn.upsert, &statements)
        } else {
            write(&mut conn.client, &conn.insert, &statements)
        };
        if !net.readds
            && let Err((_, e)) = &result
            && e.code() == Some(&SqlState::UNIQUE_VIOLATION)
        {
            // Rolled back whole: write it again, replacing the rows that are there.
            result = write(&mut conn.client, &conn.upsert, &statements);
        }
        let closed = conn.client.is_closed();
        match result {
            Ok(()) => {
                self.unsettled.clear();
                Ok(())
            }
            Err((what, e)) => {
                if outcome_unknown(&e) {
                    self.unsettled.record(ops);
                }
                if closed {
                    self.conn = None;
                }
                Err(StoreError(format!(
                    "{described}: {what}: {}",
                    pg_error_text(&e)
                )))
            }
        }
    }

    fn reconnect(&mut self) -> Result<(), StoreError> {
        self.connect()
    }

    fn unsettled(&self) -> bool {
        !self.unsettled.is_empty()
    }
}

/// One statement's rows: the seven arrays of the batch statement.
#[derive(Default)]
struct Columns<'a> {
    priorities: Vec<i32>,
    uniques: Vec<&'a str>,
    functions: Vec<&'a str>,
    data: Vec<&'a [u8]>,
    whens: Vec<i32>,
    gone_uniques: Vec<&'a str>,
    gone_functions: Vec<&'a str>,
}

impl Columns<'_> {
    fn params(&self) -> [&(dyn postgres::types::ToSql + Sync); 7] {
        [
            &self.priorities,
            &self.uniques,
            &self.functions,
            &self.data,
            &self.whens,
            &self.gone_uniques,
            &self.gone_functions,
        ]
    }
}

/// The net effect as batch statements of at most [`MAX_STATEMENT_BYTES`] of rows each (one,
/// unless the batch is larger). Fails, before anything is sent, on a job the columns cannot
/// hold.
fn statements<'a>(net: &NetChanges<'a>) -> Result<Vec<Columns<'a>>, String> {
    let upserts = split(&net.upserts, usize::MAX, MAX_STATEMENT_BYTES, |j| {
        j.data.len() + j.unique.len() + j.function.len() + ROW_OVERHEAD
    });
    let deletes = split(&net.deletes, usize::MAX, MAX_STATEMENT_BYTES, |(f, u)| {
        f.len() + u.len() + ROW_OVERHEAD
    });
    let mut out = Vec::with_capacity(upserts.len().max(deletes.len()));
    for i in 0..upserts.len().max(deletes.len()) {
        let mut c = Columns::default();
        for job in upserts.get(i).copied().unwrap_or_default() {
            c.priorities.push(job.priority as u8 as i32);
            c.uniques.push(text("unique", &job.unique, job)?);
            c.functions.push(text("function name", &job.function, job)?);
            c.data.push(&job.data);
            c.whens.push(when_i32(job)?);
        }
        for &(function, unique) in deletes.get(i).copied().unwrap_or_default() {
            // A key that is not UTF-8 was never stored: nothing to delete.
            if let (Ok(u), Ok(f)) = (std::str::from_utf8(unique), std::str::from_utf8(function)) {
                c.gone_uniques.push(u);
                c.gone_functions.push(f);
            }
        }
        out.push(c);
    }
    Ok(out)
}

/// Runs `statement` with each statement's rows: one alone is its own transaction (committed at
/// its Sync, before the server answers); several share BEGIN … COMMIT.
fn write(
    client: &mut Client,
    statement: &Statement,
    statements: &[Columns<'_>],
) -> Result<(), (&'static str, postgres::Error)> {
    if let [only] = statements {
        return client
            .execute(statement, &only.params())
            .map(drop)
            .map_err(|e| ("the batch statement failed", e));
    }
    let mut tx = client
        .transaction()
        .map_err(|e| ("cannot begin a transaction", e))?;
    for c in statements {
        tx.execute(statement, &c.params())
            .map_err(|e| ("a batch statement failed", e))?;
    }
    tx.commit().map_err(|e| ("COMMIT failed", e))
}

/// Whether a failed write may have committed all the same: anything but the server's
/// statement-level ERROR (which rolls the transaction back) — a connection that broke, or a
/// FATAL from a server going down — may have come after the commit was flushed.
fn outcome_unknown(e: &postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => db
            .parsed_severity()
            .map_or(db.severity() != "ERROR", |s| s != Severity::Error),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Priority;
    use crate::store::Key;

    /// Keys as a statement's arrays hold them.
    fn keys_of<'a>(c: &Columns<'a>) -> Vec<Key<'a>> {
        c.functions
            .iter()
            .zip(&c.uniques)
            .map(|(f, u)| (f.as_bytes(), u.as_bytes()))
            .collect()
    }

    #[test]
    fn a_large_batch_is_cut_within_the_statement_budget() {
        let payload = vec![7u8; 1 << 20];
        let jobs: Vec<Op> = (0..80)
            .map(|i| {
                Op::Add(StoredJob {
                    function: b"f".to_vec(),
                    unique: format!("u{i}").into_bytes(),
                    priority: Priority::Normal,
                    data: payload.clone(),
                    when: 0,
                })
            })
            .collect();
        let net = NetChanges::of(&jobs);
        let st = statements(&net).unwrap();
        // 80 MiB of payload in statements of at most 32 MiB.
        assert_eq!(st.len(), 3);
        let mut seen = Vec::new();
        for c in &st {
            let bytes: usize = c.data.iter().map(|d| d.len()).sum();
            assert!(bytes <= MAX_STATEMENT_BYTES, "{bytes}");
            seen.extend(keys_of(c));
        }
        assert_eq!(seen.len(), 80);
        assert_eq!(seen[79], (&b"f"[..], &b"u79"[..]));
    }
}
