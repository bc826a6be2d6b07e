//! Opening the queue store a configuration names.

use super::{Backend, Queue, StoreError};

/// The configured store, opened and ready to replay; `None` for the in-memory queue. A store
/// that cannot be opened or reached is an error naming it: the server does not start.
pub fn open(queue: &Queue) -> Result<Option<Box<dyn Backend>>, StoreError> {
    Ok(Some(match queue {
        Queue::Builtin => return Ok(None),
        Queue::Sqlite {
            store_on_shutdown: true,
            ..
        } => {
            return Err(StoreError(
                "--store-queue-on-shutdown is not available in gearshiftd: every background job \
                 is stored when it is acknowledged, so nothing is left to write at shutdown"
                    .into(),
            ));
        }
        Queue::Sqlite { db, table, .. } => Box::new(super::sqlite::Sqlite::open(db, table)?),
        Queue::Postgres { conninfo, table } => {
            Box::new(super::postgres::Postgres::open(conninfo, table)?)
        }
        Queue::MySql {
            host,
            port,
            user,
            password,
            db,
            table,
        } => Box::new(super::mysql::Mysql::open(
            host,
            *port,
            user.as_deref().unwrap_or(""),
            password.as_deref().unwrap_or(""),
            db.as_deref().unwrap_or(""),
            table,
        )?),
        Queue::Redis {
            server,
            port,
            password,
            prefix,
        } => Box::new(super::redis::Redis::open(
            server,
            *port,
            password.as_deref(),
            prefix,
        )?),
    }))
}
