//! `-q libsqlite3`: gearmand's SQLite queue (PROTOCOL.md §5), the embedded default store.
//!
//! The table is gearmand's, byte for byte, so a queue file written by gearmand 1.1.20 is
//! replayed here and the other way round:
//!
//! ```sql
//! CREATE TABLE gearman_queue ( unique_key TEXT, function_name TEXT, priority INTEGER,
//!   data BLOB, when_to_run INTEGER, PRIMARY KEY (unique_key, function_name))
//! ```
//!
//! - `unique_key` and `function_name` are bound as TEXT holding the raw bytes (SQLite does not
//!   check TEXT for UTF-8), as gearmand's `sqlite3_bind_text` does: the primary key compares
//!   TEXT with TEXT, so a row gearmand wrote is found by our DELETE and ours by its DELETE.
//!   Replay accepts TEXT or BLOB in every column.
//! - `data` is a BLOB, binary-safe (NULs included).
//! - A table from before epoch jobs, without `when_to_run`, gets it with `ALTER TABLE`, as
//!   gearmand does.
//!
//! Where we differ from gearmand, on purpose: the database is switched to WAL with
//! `synchronous=FULL`, so a commit is fsynced before [`Backend::apply`] returns; and a whole
//! batch is one transaction (gearmand commits each add and each done on its own). WAL is
//! recorded in the file; gearmand 1.1.20 opens such a file as it is.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql, TransactionBehavior, params};

use super::{Backend, Op, StoreError, StoredJob};
use crate::message::Priority;

/// Default `--libsqlite3-table`.
pub const DEFAULT_TABLE: &str = "gearman_queue";

/// How long a writer waits for a lock held by another connection (gearmand: 6 s).
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(6);

/// The libsqlite3 store: one connection, used by the store thread only.
pub struct Sqlite {
    path: PathBuf,
    table: String,
    busy_timeout: Duration,
    conn: Option<Connection>,
    insert_sql: String,
    delete_sql: String,
}

impl Sqlite {
    /// Opens (creating if needed) `--libsqlite3-db` and makes sure `--libsqlite3-table`
    /// exists with gearmand's layout.
    pub fn open(db: impl AsRef<Path>, table: &str) -> Result<Sqlite, StoreError> {
        let path = db.as_ref().to_path_buf();
        if path.as_os_str().is_empty() {
            return Err(StoreError("libsqlite3: --libsqlite3-db is required".into()));
        }
        if !is_plain_identifier(table, false) {
            return Err(StoreError(format!(
                "libsqlite3 {}: table name {table:?} is not a plain SQL identifier \
                 (letters, digits, _)",
                path.display()
            )));
        }
        let mut store = Sqlite {
            insert_sql: format!(
                "INSERT OR REPLACE INTO {table} \
                 (priority, unique_key, function_name, data, when_to_run) \
                 VALUES (?1, ?2, ?3, ?4, ?5)"
            ),
            delete_sql: format!("DELETE FROM {table} WHERE unique_key=?1 and function_name=?2"),
            path,
            table: table.to_string(),
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            conn: None,
        };
        store.connect()?;
        Ok(store)
    }

    /// Changes how long a write waits for another connection's lock before it fails
    /// (default [`DEFAULT_BUSY_TIMEOUT`]). Takes effect now and on every reconnect.
    pub fn set_busy_timeout(&mut self, timeout: Duration) -> Result<(), StoreError> {
        self.busy_timeout = timeout;
        if let Some(conn) = &self.conn {
            conn.busy_timeout(timeout)
                .map_err(|e| self.err("set busy timeout", e))?;
        }
        Ok(())
    }

    fn err(&self, what: &str, e: rusqlite::Error) -> StoreError {
        StoreError(format!("libsqlite3 {}: {what}: {e}", self.path.display()))
    }

    fn connect(&mut self) -> Result<(), StoreError> {
        self.conn = None;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)
            .map_err(|e| self.err("cannot open", e))?;
        conn.busy_timeout(self.busy_timeout)
            .map_err(|e| self.err("set busy timeout", e))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| self.err("set journal_mode=WAL", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!(
                "libsqlite3 {}: journal_mode is {mode}, not WAL (file system without shared \
                 memory?); commits are still fsynced",
                self.path.display()
            );
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.err("set synchronous=FULL", e))?;
        self.create_table(&conn)?;
        self.conn = Some(conn);
        Ok(())
    }

    /// gearmand's `_sqlite_init`: create the table when missing; add `when_to_run` to a table
    /// that predates epoch jobs.
    fn create_table(&self, conn: &Connection) -> Result<(), StoreError> {
        let t = &self.table;
        let exists: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?1 COLLATE NOCASE",
                [t],
                |row| row.get::<_, i64>(0).map(|n| n > 0),
            )
            .map_err(|e| self.err("cannot read sqlite_master", e))?;
        if !exists {
            conn.execute_batch(&format!(
                "CREATE TABLE {t} ( unique_key TEXT, function_name TEXT, priority INTEGER, \
                 data BLOB, when_to_run INTEGER, PRIMARY KEY (unique_key, function_name))"
            ))
            .map_err(|e| self.err(&format!("cannot create table {t}"), e))?;
            return Ok(());
        }
        let mut has_when = false;
        {
            let mut stmt = conn
                .prepare(&format!("PRAGMA table_info({t})"))
                .map_err(|e| self.err(&format!("cannot read the columns of {t}"), e))?;
            let mut rows = stmt
                .query([])
                .map_err(|e| self.err("PRAGMA table_info", e))?;
            while let Some(row) = rows.next().map_err(|e| self.err("PRAGMA table_info", e))? {
                let name: String = row.get(1).map_err(|e| self.err("PRAGMA table_info", e))?;
                has_when |= name.eq_ignore_ascii_case("when_to_run");
            }
        }
        if !has_when {
            log::info!(
                "libsqlite3 {}: adding when_to_run to {t}",
                self.path.display()
            );
            conn.execute_batch(&format!("ALTER TABLE {t} ADD COLUMN when_to_run INTEGER"))
                .map_err(|e| self.err(&format!("cannot add when_to_run to {t}"), e))?;
        }
        Ok(())
    }

    fn conn(&mut self) -> Result<&mut Connection, StoreError> {
        if self.conn.is_none() {
            self.connect()?;
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    fn write(&mut self, ops: &[Op]) -> Result<(), (&'static str, rusqlite::Error)> {
        let (insert_sql, delete_sql) = (self.insert_sql.clone(), self.delete_sql.clone());
        let conn = self.conn.as_mut().expect("connected by apply");
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| ("cannot begin a transaction", e))?;
        {
            let mut insert = tx
                .prepare_cached(&insert_sql)
                .map_err(|e| ("prepare INSERT", e))?;
            let mut delete = tx
                .prepare_cached(&delete_sql)
                .map_err(|e| ("prepare DELETE", e))?;
            for op in ops {
                match op {
                    Op::Add(job) => {
                        insert
                            .execute(params![
                                job.priority as u8 as i64,
                                Text(&job.unique),
                                Text(&job.function),
                                job.data.as_slice(),
                                job.when,
                            ])
                            .map_err(|e| ("INSERT failed", e))?;
                    }
                    Op::Delete { function, unique } => {
                        delete
                            .execute(params![Text(unique), Text(function)])
                            .map_err(|e| ("DELETE failed", e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| ("COMMIT failed", e))
    }
}

/// Binds raw bytes as SQLite TEXT (what gearmand's `sqlite3_bind_text` stores).
struct Text<'a>(&'a [u8]);

impl ToSql for Text<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(self.0)))
    }
}

/// A column read back as bytes, whatever its storage class.
fn bytes_of(v: ValueRef<'_>) -> Vec<u8> {
    match v {
        ValueRef::Null => Vec::new(),
        ValueRef::Integer(i) => i.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
        ValueRef::Text(b) | ValueRef::Blob(b) => b.to_vec(),
    }
}

fn int_of(v: ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Integer(i) => Some(i),
        ValueRef::Real(f) => Some(f as i64),
        ValueRef::Text(t) => std::str::from_utf8(t).ok()?.trim().parse().ok(),
        ValueRef::Null | ValueRef::Blob(_) => None,
    }
}

/// gearmand's stored priority (0 high, 1 normal, 2 low); anything else replays as NORMAL,
/// like an unknown priority in gearmand's queue code.
pub(crate) fn priority_from_stored(p: i64) -> Priority {
    match p {
        0 => Priority::High,
        2 => Priority::Low,
        _ => Priority::Normal,
    }
}

/// A table name we put into SQL text: `[A-Za-z_][A-Za-z0-9_$]*`, optionally one
/// `schema.` in front when `qualified`. gearmand pastes the name in unquoted, so we keep it
/// unquoted (same case folding as gearmand) and refuse anything that would need quoting.
pub(crate) fn is_plain_identifier(name: &str, qualified: bool) -> bool {
    let part = |p: &str| {
        let mut chars = p.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
            && p.len() <= 64
    };
    match name.split_once('.') {
        Some((schema, table)) if qualified => part(schema) && part(table),
        Some(_) => false,
        None => part(name),
    }
}

/// The same text as [`Backend::describe`]: never a password.
impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Backend for Sqlite {
    fn describe(&self) -> String {
        format!("libsqlite3 {} (table {})", self.path.display(), self.table)
    }

    fn replay(&mut self) -> Result<Vec<StoredJob>, StoreError> {
        let sql = format!(
            "SELECT unique_key,function_name,priority,data,when_to_run FROM {}",
            self.table
        );
        let path = self.path.display().to_string();
        let err = |what: &str, e: rusqlite::Error| {
            StoreError(format!("libsqlite3 {path}: replay: {what}: {e}"))
        };
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&sql).map_err(|e| err("prepare SELECT", e))?;
        let mut rows = stmt.query([]).map_err(|e| err("SELECT failed", e))?;
        let mut jobs = Vec::new();
        while let Some(row) = rows.next().map_err(|e| err("SELECT failed", e))? {
            let col = |i: usize| row.get_ref(i).map_err(|e| err("bad row", e));
            jobs.push(StoredJob {
                unique: bytes_of(col(0)?),
                function: bytes_of(col(1)?),
                priority: priority_from_stored(int_of(col(2)?).unwrap_or(1)),
                data: bytes_of(col(3)?),
                when: int_of(col(4)?).unwrap_or(0),
            });
        }
        Ok(jobs)
    }

    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.conn()?;
        self.write(ops).map_err(|(what, e)| {
            // The transaction was rolled back when it was dropped; the connection may be
            // broken (file removed, disk full): reconnect() opens a new one.
            self.err(what, e)
        })
    }

    fn reconnect(&mut self) -> Result<(), StoreError> {
        self.connect()
    }
}
