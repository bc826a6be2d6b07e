//! gearshift: a Gearman job server (`gearshiftd`) that speaks gearmand 1.1's protocol, built
//! on sharded single-threaded event loops.
//!
//! ```text
//!                 accepting shard (0) hands sockets out round robin
//!                                    │
//!        ┌───────────── shard 0 ─────┴──────┐        ┌───────────── shard 1 ────────────┐
//!        │ home: sockets, buffers, parsing  │◀══════▶│ home: sockets, buffers, parsing  │
//!        │ owner: functions hashed here,    │ SPSC   │ owner: functions hashed here,    │
//!        │   their queues, jobs, workers    │ rings  │   their queues, jobs, workers    │
//!        └──────────────────────────────────┘ +waker └──────────────────────────────────┘
//! ```
//!
//! A connection lives on its **home** shard, which reads, parses and writes it. A function
//! lives on its **owner** shard (a stable hash of its name), which holds its queues, unique
//! index, worker entries and jobs. Home and owner talk by the typed messages of `message`
//! (`message::ToOwner`, `message::ToHome`); when they are the same shard the message is
//! handled in the same loop turn. A job handle carries its
//! owner (`n mod shards`), so WORK_* and GET_STATUS route without a shared table.
//!
//! Modules, each depending only on those listed before it:
//! - [`protocol`]: the wire format, no I/O;
//! - `metrics`: what shards count for Prometheus, snapshots and the text format, no I/O;
//! - `message`: what shards say to one another (ids, owner- and home-bound messages, listing
//!   rows);
//! - `store`: durable background jobs (gearmand's queue stores) and the thread that writes
//!   them in batches;
//! - `jobs`: the owner role's state and rules, no I/O;
//! - [`tls`] (rustls configurations, identities), `acl` (who may submit, work and
//!   administer), `config` (gearmand's flags), `logger` (the log thread), `sys` (the few
//!   process-level system calls);
//! - `shard`: the event loop, the home role, the mailbox between shards;
//! - `notify`: systemd's readiness notifications (`$NOTIFY_SOCKET`);
//! - `server`: listeners, threads, signals;
//! - [`client`]: the client and worker library, which uses only `protocol` and `tls`.
//!
//! Features: `server` (default) builds everything above and `gearshiftd`; `cli` (default)
//! builds the `gearshift` tool. With `default-features = false` the crate is the library
//! alone: [`client`], [`protocol`] and [`tls`], without the shards, the stores or their
//! database drivers.
//!
//! ARCHITECTURE.md walks through a job's life.

#![deny(missing_docs)]

#[cfg(feature = "server")]
pub mod acl;
pub mod client;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod jobs;
#[cfg(feature = "server")]
pub mod logger;
#[cfg(feature = "server")]
pub mod message;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod notify;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod shard;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod sys;
pub mod tls;
