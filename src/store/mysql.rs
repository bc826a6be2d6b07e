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
//! - a batch of adds and deletes is one transaction, and [`Backend::apply`] returns after
//!   COMMIT, which InnoDB makes durable under its default `innodb_flush_log_at_trx_commit=1`
//!   (a table on a non-transactional engine such as MyISAM gets neither atomic batches nor
//!   that guarantee; gearmand's CREATE TABLE takes the server's default engine, InnoDB today);
//! - `--mysql-host localhost` connects through the server's Unix socket (`MYSQL_UNIX_PORT`,
//!   else `/run/mysqld/mysqld.sock`) when it exists, as libmysqlclient does, else over TCP.
//!
//! Text columns take the connection's utf8mb4: a function name or unique that is not UTF-8 is
//! refused with an error naming the job rather than mangled by the server.

use std::path::Path;
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder, Row, Statement, TxOpts};

use super::sqlite::{is_plain_identifier, priority_from_stored};
use super::{Backend, Op, StoreError, StoredJob};

/// Default `--mysql-host`.
pub const DEFAULT_HOST: &str = "localhost";
/// Default `--mysql-port`.
pub const DEFAULT_PORT: u16 = 3306;
/// Default `--mysql-table`.
pub const DEFAULT_TABLE: &str = "gearman_queue";

const TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_SOCKET: &str = "/run/mysqld/mysqld.sock";

/// The MySQL store: one connection, used by the store thread only.
pub struct Mysql {
    opts: OptsBuilder,
    table: String,
    described: String,
    conn: Option<Connected>,
}

struct Connected {
    conn: Conn,
    insert: Statement,
    delete: Statement,
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
            .write_timeout(Some(TIMEOUT));
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
        // gearmand: plain INSERT, so a second job with the same key fails. Here a re-added
        // key replaces its row, as sqlite's INSERT OR REPLACE does.
        let insert = conn
            .prep(format!(
                "INSERT INTO {t} (unique_key, function_name, priority, data, when_to_run) \
                 VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE priority = VALUES(priority), \
                 data = VALUES(data), when_to_run = VALUES(when_to_run)"
            ))
            .map_err(|e| self.err("prepare INSERT", &e))?;
        let delete = conn
            .prep(format!(
                "DELETE FROM {t} WHERE unique_key = ? AND function_name = ?"
            ))
            .map_err(|e| self.err("prepare DELETE", &e))?;
        self.conn = Some(Connected {
            conn,
            insert,
            delete,
        });
        Ok(())
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
        if ops.is_empty() {
            return Ok(());
        }
        let described = self.described.clone();
        let c = self.conn()?;
        let mut lost = false;
        let result = (|| -> Result<(), String> {
            let sql_err = |what: &str, e: mysql::Error, lost: &mut bool| {
                *lost |= connection_lost(&e);
                format!("{what}: {e}")
            };
            let mut tx = c
                .conn
                .start_transaction(TxOpts::default())
                .map_err(|e| sql_err("cannot begin a transaction", e, &mut lost))?;
            for op in ops {
                match op {
                    Op::Add(job) => {
                        check_text("unique", &job.unique, job)?;
                        check_text("function name", &job.function, job)?;
                        let when = when_i32(job)?;
                        tx.exec_drop(
                            &c.insert,
                            (
                                job.unique.as_slice(),
                                job.function.as_slice(),
                                job.priority as u8 as i32,
                                job.data.as_slice(),
                                when,
                            ),
                        )
                        .map_err(|e| sql_err("INSERT failed", e, &mut lost))?;
                    }
                    Op::Delete { function, unique } => {
                        tx.exec_drop(&c.delete, (unique.as_slice(), function.as_slice()))
                            .map_err(|e| sql_err("DELETE failed", e, &mut lost))?;
                    }
                }
            }
            tx.commit()
                .map_err(|e| sql_err("COMMIT failed", e, &mut lost))
        })();
        if lost {
            self.conn = None;
        }
        result.map_err(|msg| StoreError(format!("{described}: {msg}")))
    }

    fn reconnect(&mut self) -> Result<(), StoreError> {
        self.connect()
    }
}
