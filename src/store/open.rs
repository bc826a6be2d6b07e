//! Opening the queue store a configuration names.

use super::{Backend, StoreError};
use crate::config::Queue;

/// The configured store, opened and ready to replay; `None` for the in-memory queue. A store
/// that cannot be opened or reached is an error naming it: the server does not start.
pub fn open(queue: &Queue) -> Result<Option<Box<dyn Backend>>, StoreError> {
    let name = match queue {
        Queue::Builtin => return Ok(None),
        Queue::Sqlite { .. } => "libsqlite3",
        Queue::Postgres { .. } => "Postgres",
        Queue::MySql { .. } => "MySQL",
        Queue::Redis { .. } => "redis",
    };
    Err(StoreError(format!(
        "queue type '{name}' is not available in this build of gearshiftd"
    )))
}
