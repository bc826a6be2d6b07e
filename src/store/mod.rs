//! Durable background jobs: the queue stores of gearmand (PROTOCOL.md §5), written by a store
//! thread in batches so that no event loop ever waits on a disk or a database.
//!
//! The contract a [`Backend`] keeps:
//! - [`Backend::apply`] writes a batch of adds and deletes in one transaction and returns only
//!   once the batch is durable (committed, fsynced): the owner shard acknowledges the jobs of a
//!   batch (JOB_CREATED) only after that. An error means nothing of the batch may be assumed
//!   stored.
//! - [`Backend::replay`] returns every stored job, in the backend's scan order, before the
//!   server accepts connections.
//! - Rows use gearmand's table and key layouts, so a queue written by gearmand 1.1.20 is
//!   replayed by gearshiftd and the other way round. The key is (unique, function); jobs
//!   submitted with an empty unique are given a generated unique by the caller before they
//!   reach the store, so one job never overwrites another.
//!
//! The SQL server stores write a batch by its net effect ([`NetChanges`]): one statement for
//! every row it leaves stored and every row it removes, split only where a server limit
//! ([`split`]) demands it. Writing the net effect is idempotent, which makes the store thread's
//! retry after a reconnect safe, and lets [`Unsettled`] clean up after a commit whose outcome
//! was lost with the connection.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;

pub mod open;
pub mod writer;

use crate::message::Priority;

/// Which persistent queue, with its gearmand options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Queue {
    /// In memory only.
    Builtin,
    /// `-q libsqlite3`
    Sqlite {
        /// `--libsqlite3-db`
        db: PathBuf,
        /// `--libsqlite3-table`
        table: String,
        /// `--store-queue-on-shutdown`
        store_on_shutdown: bool,
    },
    /// `-q Postgres`
    Postgres {
        /// `--libpq-conninfo`
        conninfo: String,
        /// `--libpq-table`
        table: String,
    },
    /// `-q MySQL`
    MySql {
        /// `--mysql-host`
        host: String,
        /// `--mysql-port`
        port: u16,
        /// `--mysql-user`
        user: Option<String>,
        /// `--mysql-password`
        password: Option<String>,
        /// `--mysql-db`
        db: Option<String>,
        /// `--mysql-table`
        table: String,
    },
    /// `-q redis`
    Redis {
        /// `--redis-server`
        server: String,
        /// `--redis-port`
        port: u16,
        /// `--redis-password`
        password: Option<String>,
        /// `--redis-prefix`
        prefix: String,
    },
}

/// A background job as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredJob {
    /// Function name.
    pub function: Vec<u8>,
    /// Unique id (never empty once stored).
    pub unique: Vec<u8>,
    /// Priority (stored as gearmand's 0 high, 1 normal, 2 low).
    pub priority: Priority,
    /// Payload, binary-safe.
    pub data: Vec<u8>,
    /// SUBMIT_JOB_EPOCH time (unix seconds), 0 for none.
    pub when: i64,
}

/// One change to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new background job.
    Add(StoredJob),
    /// A job ended (complete, fail, exception, cancel, retry limit): delete its row.
    Delete {
        /// Function name.
        function: Vec<u8>,
        /// Unique id.
        unique: Vec<u8>,
    },
}

/// A store failure, with the store's own words.
#[derive(Debug, Clone)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// A queue store. Runs on the store thread only.
pub trait Backend: Send {
    /// For logs and `status`-like views, e.g. `libsqlite3 /var/lib/gearman/queue.db`.
    fn describe(&self) -> String;
    /// Every stored job, before connections are accepted.
    fn replay(&mut self) -> Result<Vec<StoredJob>, StoreError>;
    /// Writes `ops` in order, durably, as one transaction.
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError>;
    /// Tries to get a working connection again after an error.
    fn reconnect(&mut self) -> Result<(), StoreError>;
    /// Whether an earlier failed write may have left rows behind that the next write removes
    /// (see [`Unsettled`]): the store thread then writes an empty batch as soon as the store
    /// answers again, rather than waiting for new jobs.
    fn unsettled(&self) -> bool {
        false
    }
}

/// A job's key in every store: (function, unique).
pub type Key<'a> = (&'a [u8], &'a [u8]);

/// What a batch leaves behind once it has committed: for every key it touches, its last
/// change. A batch is one transaction, so nothing in between is visible to anyone; writing
/// only the net effect lets one statement carry every row the batch stores (an upsert may not
/// touch the same row twice) and one every row it removes, and makes writing it twice the
/// same as writing it once.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NetChanges<'a> {
    /// Jobs whose last change is an add: stored, replacing any row with their key. In the
    /// order their keys first appear in the batch.
    pub upserts: Vec<&'a StoredJob>,
    /// Keys whose last change is a delete: no row afterwards. In first-appearance order.
    pub deletes: Vec<Key<'a>>,
    /// Some upsert is of a key the batch deleted first: its row is likely there already (a
    /// job ended and its unique came back), so a plain INSERT would conflict.
    pub readds: bool,
}

impl NetChanges<'_> {
    /// The net effect of `ops`, applied in order.
    pub fn of(ops: &[Op]) -> NetChanges<'_> {
        // Per key: its last change, and whether a delete came before it.
        let mut last: Vec<(&Op, bool)> = Vec::with_capacity(ops.len());
        let mut index: HashMap<Key<'_>, usize> = HashMap::with_capacity(ops.len());
        for op in ops {
            let key = match op {
                Op::Add(job) => (&job.function[..], &job.unique[..]),
                Op::Delete { function, unique } => (&function[..], &unique[..]),
            };
            match index.get(&key) {
                Some(&i) => {
                    let deleted = last[i].1 || matches!(last[i].0, Op::Delete { .. });
                    last[i] = (op, deleted);
                }
                None => {
                    index.insert(key, last.len());
                    last.push((op, false));
                }
            }
        }
        let mut net = NetChanges::default();
        for (op, deleted_before) in last {
            match op {
                Op::Add(job) => {
                    net.upserts.push(job);
                    net.readds |= deleted_before;
                }
                Op::Delete { function, unique } => net.deletes.push((function, unique)),
            }
        }
        net
    }

    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
}

/// Cuts `items` into consecutive runs of at most `max_items` whose `size`s add up to at most
/// `max_bytes`; an item bigger than `max_bytes` on its own is a run of one (the server then
/// judges it). How the SQL stores keep one statement within a server's limits.
pub fn split<T>(
    items: &[T],
    max_items: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<&[T]> {
    let max_items = max_items.max(1);
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, item) in items.iter().enumerate() {
        let s = size(item);
        if i > start && (i - start >= max_items || bytes.saturating_add(s) > max_bytes) {
            runs.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes = bytes.saturating_add(s);
    }
    if start < items.len() {
        runs.push(&items[start..]);
    }
    runs
}

/// Keys of refused jobs whose rows may exist anyway.
///
/// When the connection breaks after a batch was sent and before its commit was confirmed (the
/// database server crashed or restarted mid-batch), nobody can tell whether it committed. The
/// store thread refuses the batch's jobs (QUEUE_ERROR), so their rows must not stay behind to
/// be replayed: the next write first deletes every key such a batch added, unless that write
/// adds the key again. That is right whichever way the lost commit went. (A key a failed
/// batch added was never the key of a job still queued: a submission with a queued job's key
/// coalesces onto it instead of being written; so what the delete can remove is that batch's
/// own row, or the row of a job that had ended.)
#[derive(Debug, Default)]
pub struct Unsettled {
    keys: HashSet<(Vec<u8>, Vec<u8>)>,
}

impl Unsettled {
    /// Remembers the adds of a batch whose outcome is unknown.
    pub fn record(&mut self, ops: &[Op]) {
        for op in ops {
            if let Op::Add(job) = op {
                self.keys.insert((job.function.clone(), job.unique.clone()));
            }
        }
    }

    /// Nothing to clean up.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// `ops` with the clean-up in front: what the next write must apply.
    pub fn before(&self, ops: &[Op]) -> Vec<Op> {
        let mut all: Vec<Op> = self
            .keys
            .iter()
            .map(|(function, unique)| Op::Delete {
                function: function.clone(),
                unique: unique.clone(),
            })
            .collect();
        all.extend_from_slice(ops);
        all
    }

    /// The clean-up has been committed.
    pub fn clear(&mut self) {
        self.keys.clear();
    }
}
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sqlite;

#[cfg(test)]
mod tests {
    use super::*;

    fn add(f: &str, u: &str, data: &str) -> Op {
        Op::Add(StoredJob {
            function: f.into(),
            unique: u.into(),
            priority: Priority::Normal,
            data: data.into(),
            when: 0,
        })
    }

    fn del(f: &str, u: &str) -> Op {
        Op::Delete {
            function: f.into(),
            unique: u.into(),
        }
    }

    /// (function, unique, data) of each upsert and (function, unique) of each delete.
    type Shown = (Vec<(String, String, String)>, Vec<(String, String)>);

    fn keys_of(net: &NetChanges<'_>) -> Shown {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (
            net.upserts
                .iter()
                .map(|j| (s(&j.function), s(&j.unique), s(&j.data)))
                .collect(),
            net.deletes.iter().map(|(f, u)| (s(f), s(u))).collect(),
        )
    }

    #[test]
    fn net_changes_keep_the_last_change_of_each_key() {
        let ops = [
            add("f", "a", "A"),
            add("f", "b", "B"),
            del("f", "a"),
            add("f", "b", "B2"),
            del("g", "x"),
            add("g", "x", "X"),
            add("f", "c", "C"),
            del("f", "c"),
            // Same unique, other function: another key.
            add("g", "a", "GA"),
        ];
        let net = NetChanges::of(&ops);
        let (up, deleted) = keys_of(&net);
        let own = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(
            up,
            [own("f", "b", "B2"), own("g", "x", "X"), own("g", "a", "GA")]
        );
        assert_eq!(
            deleted,
            [("f".to_string(), "a".to_string()), ("f".into(), "c".into())]
        );
        // g/x was deleted, then added again.
        assert!(net.readds);
        assert!(!NetChanges::of(&ops[..2]).readds);
        assert!(!NetChanges::of(&[add("f", "a", "A"), del("f", "a")]).readds);
        assert!(NetChanges::of(&[del("f", "a"), add("f", "a", "A"), add("f", "a", "B")]).readds);
        assert!(NetChanges::of(&[]).is_empty());
    }

    #[test]
    fn split_respects_both_limits() {
        let sizes = [3usize, 3, 3, 10, 1, 1, 1, 1, 1];
        let runs = split(&sizes, 4, 6, |s| *s);
        let lens: Vec<Vec<usize>> = runs.iter().map(|r| r.to_vec()).collect();
        // 3+3 fits 6; the third 3 starts a run; 10 alone (too big on its own); then at most
        // four items per run.
        assert_eq!(
            lens,
            [vec![3, 3], vec![3], vec![10], vec![1, 1, 1, 1], vec![1]]
        );
        assert!(split(&[] as &[usize], 4, 6, |s| *s).is_empty());
        assert_eq!(split(&sizes, 100, usize::MAX, |s| *s).len(), 1);
    }

    #[test]
    fn unsettled_deletes_come_first_and_a_new_add_wins() {
        let mut u = Unsettled::default();
        assert!(u.is_empty());
        u.record(&[add("f", "a", "A"), del("f", "z"), add("f", "b", "B")]);
        u.record(&[add("f", "a", "A")]);
        let next = [add("f", "b", "B again")];
        let all = u.before(&next);
        let (up, mut del) = keys_of(&NetChanges::of(&all));
        del.sort();
        assert_eq!(
            up,
            [("f".to_string(), "b".to_string(), "B again".to_string())]
        );
        assert_eq!(del, [("f".to_string(), "a".to_string())]);
        u.clear();
        assert!(u.is_empty());
    }
}
