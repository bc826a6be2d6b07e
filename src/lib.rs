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
//! index, worker entries and jobs. Home and owner talk by [`shard::message::Msg`]; when they
//! are the same shard the message is handled in the same loop turn. A job handle carries its
//! owner (`n mod shards`), so WORK_* and GET_STATUS route without a shared table.
//!
//! Modules: [`protocol`] (wire format, no I/O), [`jobs`] (owner state and rules, no I/O),
//! [`shard`] (event loop, home role, mailbox), [`server`] (threads, signals), [`config`]
//! (gearmand's flags), [`tls`] (rustls configurations, identities) and [`acl`] (who may
//! submit, work and administer). ARCHITECTURE.md walks through a job's life.

#![deny(missing_docs)]

pub mod acl;
pub mod client;
pub mod config;
pub mod jobs;
pub mod logger;
pub mod message;
pub mod protocol;
pub mod server;
pub mod shard;
pub mod store;
pub mod sys;
pub mod tls;
