//! `-q MySQL`: gearmand's MySQL/MariaDB queue (PROTOCOL.md §5), through the `mysql` crate
//! (a pure-Rust client, built without TLS; no libmysqlclient needed).
//!
//! The table is gearmand's:
//!
//! ```sql
//! CREATE TABLE gearman_queue(unique_key VARCHAR(64), function_name VARCHAR(255),
//!   priority INT, data LONGBLOB, when_to_run INT, unique key (unique_key, function_name))
//! ```
//!
//! Differences from gearmand 1.1.20, on purpose:
//! - an add of a key that is already stored replaces the row (`INSERT … ON DUPLICATE KEY
//!   UPDATE`): gearmand uses a plain INSERT against the unique key, so its second job with the
//!   same (unique, function) fails with QUEUE_ERROR;
//! - a batch of adds and deletes is one transaction, and [`Backend::apply`] returns after its
//!   commit, which InnoDB makes durable under its default `innodb_flush_log_at_trx_commit=1`
//!   (a table on a non-transactional engine such as MyISAM gets neither atomic batches nor
//!   that guarantee; gearmand's CREATE TABLE takes the server's default engine, InnoDB today);
//! - the batch is written by its net effect ([`NetChanges`]): one multi-row `INSERT … VALUES
//!   (?,?,?,?,?),(…) ON DUPLICATE KEY UPDATE …` for the rows it stores and one `DELETE … WHERE
//!   (unique_key, function_name) IN ((?,?),(…))` (an index range scan) for the rows it
//!   removes. A batch that needs one statement runs it alone (autocommit: its own transaction);
//!   otherwise they share START TRANSACTION … COMMIT;
//! - a statement holds at most [`MAX_STATEMENT_ROWS`] rows and, with its parameters, stays
//!   within the server's `max_allowed_packet` (read at connect) and the 16 MiB of one protocol
//!   packet; a larger batch is cut into several statements of one transaction. Row counts are
//!   rounded up to a few sizes ([`statement_rows`]; the last rows repeat the smallest one, which
//!   changes nothing), so the server keeps about ninety prepared statements per connection,
//!   not one per batch size;
//! - after a write whose commit outcome was lost with the connection (the server crashed
//!   mid-batch), the refused jobs' keys are deleted by the next write ([`Unsettled`]);
//! - `--mysql-host localhost` connects through the server's Unix socket (`MYSQL_UNIX_PORT`,
//!   else `/run/mysqld/mysqld.sock`) when it exists, as libmysqlclient does, else over TCP.
//!
//! Text columns take the connection's utf8mb4: a function name or unique that is not UTF-8 is
//! refused with an error naming the job rather than mangled by the server.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder, Row, TxOpts, Value};

use super::sqlite::{is_plain_identifier, priority_from_stored};
use super::{Backend, Key, NetChanges, Op, StoreError, StoredJob, Unsettled, split};

/// Default `--mysql-host`.
pub const DEFAULT_HOST: &str = "localhost";
/// Default `--mysql-port`.
pub const DEFAULT_PORT: u16 = 3306;
/// Default `--mysql-table`.
pub const DEFAULT_TABLE: &str = "gearman_queue";

const TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_SOCKET: &str = "/run/mysqld/mysqld.sock";

/// Most rows one statement writes: 20,480 placeholders for an INSERT, well inside the
/// protocol's 65,535, and small enough that the statements a connection keeps prepared stay
/// cheap for the server.
pub const MAX_STATEMENT_ROWS: usize = 4096;

/// The largest protocol packet (16 MiB - 1): a statement's parameters are kept within one.
const MAX_PACKET: usize = (1 << 24) - 1;

/// Room left in a packet for the statement's header, types and NULL bitmap.
const PACKET_SLACK: usize = 4096 + 2 * 5 * MAX_STATEMENT_ROWS;

/// What a row's parameters cost beyond its bytes: length prefixes and two 8-byte integers.
const ROW_OVERHEAD: usize = 48;

/// Prepared statements kept per connection: every statement size of both kinds.
const STATEMENT_CACHE: usize = 256;

/// The MySQL store: one connection, used by the store thread only.
pub struct Mysql {
    opts: OptsBuilder,
    table: String,
    described: String,
    conn: Option<Connected>,
    unsettled: Unsettled,
    /// Statement texts by (kind, rows), built once.
    sql: HashMap<(Kind, usize), String>,
}

struct Connected {
    conn: Conn,
    /// Most bytes of rows one statement may carry on this server.
    statement_bytes: usize,
}

/// The statements a batch is written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    /// The rows the batch stores.
    Upsert,
    /// The rows it removes, by `(unique_key, function_name) IN (…)`.
    Delete,
    /// The rows it removes whose key is not all ASCII, by `(unique_key = ? AND function_name
    /// = ?) OR …`. MariaDB compares a row constructor with an IN list of two or more rows
    /// without converting the connection's character set to the column's, so a non-ASCII key
    /// in, say, a latin1 table (gearmand's CREATE TABLE takes the server's default) would
    /// never match; `=` converts.
    DeleteEach,
}

impl Kind {
    /// What failed, for the error message.
    fn failed(self) -> &'static str {
        match self {
            Kind::Upsert => "INSERT failed",
            Kind::Delete | Kind::DeleteEach => "DELETE failed",
        }
    }
}

/// Most rows of a [`Kind::DeleteEach`] statement: the optimizer's work on a chain of ORs grows
/// faster than the chain.
const MAX_DELETE_EACH_ROWS: usize = 128;

/// One statement of a batch, ready to run.
struct Prepared {
    kind: Kind,
    sql: String,
    params: Vec<Value>,
}

impl Mysql {
    /// Connects with gearmand's `--mysql-host`, `--mysql-port`, `--mysql-user`,
    /// `--mysql-password`, `--mysql-db` and creates `--mysql-table` if it does not exist.
    pub fn open(
        host: &str,
        port: u16,
        user: &str,
        password: &str,
        db: &str,
        table: &str,
    ) -> Result<Mysql, StoreError> {
        let host = if host.is_empty() { DEFAULT_HOST } else { host };
        let mut opts = OptsBuilder::new()
            .ip_or_hostname(Some(host))
            .tcp_port(port)
            .user(Some(user).filter(|u| !u.is_empty()))
            .pass(Some(password).filter(|p| !p.is_empty()))
            .db_name(Some(db).filter(|d| !d.is_empty()))
            .prefer_socket(false)
            .tcp_connect_timeout(Some(TIMEOUT))
            .read_timeout(Some(TIMEOUT))
            .write_timeout(Some(TIMEOUT))
            .stmt_cache_size(Some(STATEMENT_CACHE));
        let mut via = format!("{host}:{port}");
        if host == "localhost" {
            let socket = std::env::var("MYSQL_UNIX_PORT")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_SOCKET.to_string());
            if Path::new(&socket).exists() {
                via = format!("localhost:{socket}");
                opts = opts.socket(Some(socket));
            }
        }
        let described = format!("MySQL {user}@{via}/{db} table {table}");
        if !is_plain_identifier(table, true) {
            return Err(StoreError(format!(
                "{described}: table name {table:?} is not a plain SQL identifier \
                 (letters, digits, _, $, optionally db.table)"
            )));
        }
        let mut store = Mysql {
            opts,
            table: table.to_string(),
            described,
            conn: None,
            unsettled: Unsettled::default(),
            sql: HashMap::new(),
        };
        store.connect()?;
        Ok(store)
    }

    /// The server's id for the current connection (what `KILL` and the process list show),
    /// for logs and tests.
    pub fn connection_id(&self) -> Option<u32> {
        self.conn.as_ref().map(|c| c.conn.connection_id())
    }

    fn err(&self, what: &str, e: &mysql::Error) -> StoreError {
        StoreError(format!("{}: {what}: {e}", self.described))
    }

    fn connect(&mut self) -> Result<(), StoreError> {
        self.conn = None;
        let mut conn = Conn::new(self.opts.clone()).map_err(|e| self.err("cannot connect", &e))?;
        let t = &self.table;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {t}(unique_key VARCHAR(64), \
             function_name VARCHAR(255), priority INT, data LONGBLOB, when_to_run INT, \
             unique key (unique_key, function_name))"
        ))
        .map_err(|e| self.err(&format!("cannot create table {t}"), &e))?;
        let max_allowed: Option<u64> = conn
            .query_first("SELECT @@max_allowed_packet")
            .map_err(|e| self.err("cannot read max_allowed_packet", &e))?;
        let packet = max_allowed.map_or(MAX_PACKET, |m| (m as usize).min(MAX_PACKET));
        // Statement sizes round up by at most an eighth (the repeated rows are the smallest).
        let statement_bytes = packet.saturating_sub(PACKET_SLACK) / 9 * 8;
        self.conn = Some(Connected {
            conn,
            statement_bytes,
        });
        Ok(())
    }

    /// The statement text of `kind` for `rows` rows (a size [`statement_rows`] returns).
    fn sql(&mut self, kind: Kind, rows: usize) -> String {
        let t = &self.table;
        self.sql
            .entry((kind, rows))
            .or_insert_with(|| match kind {
                // gearmand: plain INSERT, so a second job with the same key fails. Here a
                // re-added key replaces its row, as sqlite's INSERT OR REPLACE does.
                Kind::Upsert => format!(
                    "INSERT INTO {t} (unique_key, function_name, priority, data, when_to_run) \
                     VALUES {} ON DUPLICATE KEY UPDATE priority = VALUES(priority), \
                     data = VALUES(data), when_to_run = VALUES(when_to_run)",
                    vec!["(?,?,?,?,?)"; rows].join(",")
                ),
                Kind::Delete => format!(
                    "DELETE FROM {t} WHERE (unique_key, function_name) IN ({})",
                    vec!["(?,?)"; rows].join(",")
                ),
                Kind::DeleteEach => format!(
                    "DELETE FROM {t} WHERE {}",
                    vec!["(unique_key = ? AND function_name = ?)"; rows].join(" OR ")
                ),
            })
            .clone()
    }

    /// The statements of a batch's net effect, with their parameters. Fails, before anything
    /// is sent, on a job the columns cannot hold.
    fn statements(
        &mut self,
        net: &NetChanges<'_>,
        statement_bytes: usize,
    ) -> Result<Vec<Prepared>, String> {
        for job in &net.upserts {
            check_text("unique", &job.unique, job)?;
            check_text("function name", &job.function, job)?;
            when_i32(job)?;
        }
        // A key that is not UTF-8 was never stored: nothing to delete.
        let utf8 =
            |(f, u): &Key<'_>| std::str::from_utf8(f).is_ok() && std::str::from_utf8(u).is_ok();
        let (ascii, other): (Vec<Key<'_>>, Vec<Key<'_>>) = net
            .deletes
            .iter()
            .copied()
            .filter(utf8)
            .partition(|(f, u)| f.is_ascii() && u.is_ascii());
        let mut out = Vec::new();
        let key_size = |(f, u): &Key<'_>| f.len() + u.len() + ROW_OVERHEAD;
        for (kind, keys, max_rows) in [
            (Kind::Delete, &ascii, MAX_STATEMENT_ROWS),
            (Kind::DeleteEach, &other, MAX_DELETE_EACH_ROWS),
        ] {
            for run in split(keys, max_rows, statement_bytes, key_size) {
                let rows = statement_rows(run.len());
                let smallest = run
                    .iter()
                    .min_by_key(|k| key_size(k))
                    .expect("a run is not empty");
                let mut params = Vec::with_capacity(2 * rows);
                for &(function, unique) in run
                    .iter()
                    .chain(std::iter::repeat_n(smallest, rows - run.len()))
                {
                    params.push(Value::Bytes(unique.to_vec()));
                    params.push(Value::Bytes(function.to_vec()));
                }
                out.push(Prepared {
                    kind,
                    sql: self.sql(kind, rows),
                    params,
                });
            }
        }
        let job_size =
            |j: &&StoredJob| j.data.len() + j.unique.len() + j.function.len() + ROW_OVERHEAD;
        for run in split(&net.upserts, MAX_STATEMENT_ROWS, statement_bytes, job_size) {
            let rows = statement_rows(run.len());
            let smallest = run
                .iter()
                .min_by_key(|j| job_size(j))
                .expect("a run is not empty");
            let mut params = Vec::with_capacity(5 * rows);
            for job in run
                .iter()
                .chain(std::iter::repeat_n(smallest, rows - run.len()))
            {
                params.push(Value::Bytes(job.unique.clone()));
                params.push(Value::Bytes(job.function.clone()));
                params.push(Value::Int(job.priority as u8 as i64));
                params.push(Value::Bytes(job.data.clone()));
                params.push(Value::Int(job.when));
            }
            out.push(Prepared {
                kind: Kind::Upsert,
                sql: self.sql(Kind::Upsert, rows),
                params,
            });
        }
        Ok(out)
    }

    fn conn(&mut self) -> Result<&mut Connected, StoreError> {
        if self.conn.is_none() {
            self.connect()?;
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }
}

fn check_text(what: &str, bytes: &[u8], job: &StoredJob) -> Result<(), String> {
    match std::str::from_utf8(bytes) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "{what} of job {}/{} is not UTF-8, which a VARCHAR column cannot hold",
            String::from_utf8_lossy(&job.function),
            String::from_utf8_lossy(&job.unique)
        )),
    }
}

fn when_i32(job: &StoredJob) -> Result<i32, String> {
    i32::try_from(job.when).map_err(|_| {
        format!(
            "when_to_run {} of job {}/{} does not fit gearmand's INT column",
            job.when,
            String::from_utf8_lossy(&job.function),
            String::from_utf8_lossy(&job.unique)
        )
    })
}

/// Whether the connection itself is unusable after this error (not a statement's failure).
fn connection_lost(e: &mysql::Error) -> bool {
    !matches!(e, mysql::Error::MySqlError(_))
}

/// The same text as [`Backend::describe`]: never a password.
impl std::fmt::Debug for Mysql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Backend for Mysql {
    fn describe(&self) -> String {
        self.described.clone()
    }

    fn replay(&mut self) -> Result<Vec<StoredJob>, StoreError> {
        let sql = format!(
            "SELECT unique_key, function_name, priority, data, when_to_run FROM {}",
            self.table
        );
        let described = self.described.clone();
        let err = |what: &str, e: &dyn std::fmt::Display| {
            StoreError(format!("{described}: replay: {what}: {e}"))
        };
        let c = self.conn()?;
        let rows: Vec<Row> = match c.conn.query(&sql) {
            Ok(rows) => rows,
            Err(e) => {
                let out = err("SELECT failed", &e);
                if connection_lost(&e) {
                    self.conn = None;
                }
                return Err(out);
            }
        };
        let mut jobs = Vec::with_capacity(rows.len());
        for mut row in rows {
            let bytes = |row: &mut Row, i: usize| -> Result<Vec<u8>, StoreError> {
                match row.take_opt::<Option<Vec<u8>>, _>(i) {
                    Some(Ok(v)) => Ok(v.unwrap_or_default()),
                    Some(Err(e)) => Err(err("bad row", &e)),
                    None => Err(err("bad row", &"missing column")),
                }
            };
            let int = |row: &mut Row, i: usize| -> Result<Option<i64>, StoreError> {
                match row.take_opt::<Option<i64>, _>(i) {
                    Some(Ok(v)) => Ok(v),
                    Some(Err(e)) => Err(err("bad row", &e)),
                    None => Err(err("bad row", &"missing column")),
                }
            };
            jobs.push(StoredJob {
                unique: bytes(&mut row, 0)?,
                function: bytes(&mut row, 1)?,
                priority: priority_from_stored(int(&mut row, 2)?.unwrap_or(1)),
                data: bytes(&mut row, 3)?,
                when: int(&mut row, 4)?.unwrap_or(0),
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
        let fail = |msg: String| StoreError(format!("{described}: {msg}"));
        let statement_bytes = self.conn()?.statement_bytes;
        let mut statements = self.statements(&net, statement_bytes).map_err(fail)?;
        let c = self.conn.as_mut().expect("connected above");
        let mut lost = false;
        let mut sql_err = |what: &str, e: mysql::Error| {
            lost |= connection_lost(&e);
            format!("{what}: {e}")
        };
        let result = if statements.len() == 1 {
            // Alone, the statement is its own transaction (autocommit).
            let only = statements.pop().expect("one statement");
            c.conn
                .exec_drop(&only.sql, only.params)
                .map_err(|e| sql_err(only.kind.failed(), e))
        } else {
            (|| {
                let mut tx = c
                    .conn
                    .start_transaction(TxOpts::default())
                    .map_err(|e| sql_err("cannot begin a transaction", e))?;
                for st in statements {
                    tx.exec_drop(&st.sql, st.params)
                        .map_err(|e| sql_err(st.kind.failed(), e))?;
                }
                tx.commit().map_err(|e| sql_err("COMMIT failed", e))
            })()
        };
        match result {
            Ok(()) => {
                self.unsettled.clear();
                Ok(())
            }
            Err(msg) => {
                // A statement the server refused was rolled back; a connection that broke
                // may have broken after the commit.
                if lost {
                    self.unsettled.record(ops);
                    self.conn = None;
                }
                Err(fail(msg))
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

/// The row count a statement for `rows` rows is prepared with: exact up to 16, then rounded up
/// to four significant bits (at most an eighth more), so a connection prepares about ninety
/// statement sizes up to [`MAX_STATEMENT_ROWS`] instead of one per batch size.
pub fn statement_rows(rows: usize) -> usize {
    if rows <= 16 {
        return rows;
    }
    let shift = usize::BITS - rows.leading_zeros() - 4;
    rows.div_ceil(1 << shift) << shift
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_sizes_are_few_and_close() {
        let mut sizes = std::collections::BTreeSet::new();
        for rows in 1..=MAX_STATEMENT_ROWS {
            let s = statement_rows(rows);
            assert!(s >= rows && s * 8 <= rows * 9, "{rows} -> {s}");
            assert!(s <= MAX_STATEMENT_ROWS, "{rows} -> {s}");
            sizes.insert(s);
        }
        assert!(sizes.len() <= 100, "{} sizes", sizes.len());
        assert_eq!(statement_rows(17), 18);
        assert_eq!(statement_rows(100), 104);
        assert_eq!(statement_rows(4096), 4096);
    }
}
