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

use std::fmt;

pub mod open;
pub mod writer;

use crate::jobs::Priority;

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
}
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sqlite;
