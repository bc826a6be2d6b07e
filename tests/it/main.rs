//! Integration tests for gearshiftd, proven first against the C gearmand 1.1.20
//! (`GEARSHIFT_TEST_SERVER=gearmand cargo test`). See `util.rs` for the switches.

/// Server start-up and raw protocol helpers shared by every module.
mod util;

/// Byte-level exchange per packet type (PROTOCOL.md §1.3/§1.4), ERROR packets (§1.2) and malformed input.
mod protocol;

/// Job life cycle as seen by clients: priorities, coalescing, status, result forwarding, epoch, reduce.
mod jobs;

/// Worker side: sleep/wake-up, requeue, abilities, timeouts, retries, disconnect rules.
mod workers;

/// Text admin protocol (PROTOCOL.md §2): every command with byte-exact output.
mod admin;

/// Several shards: connections handed off to their function's owner, with pipelined input.
mod shards;

/// Bursts far larger than a ring between shards: backpressure and liveness.
mod backpressure;

/// `--event-loop io-uring`: a ring per shard, large packets in parts both ways, cut peers.
mod event_loop;

/// Command line, daemon mode and the explicit limits.
mod cli;

/// systemd's readiness notifications (`Type=notify`, `$NOTIFY_SOCKET`).
mod notify;

/// Log lines in gearmand's format, syslog and JSON lines; gearmand config files.
mod logs;

/// Durable background jobs on the queue stores: kill -9, restart, replay.
mod durable;

/// Real independent clients: gearman/gearadmin CLIs, Perl Gearman::*, Python gear.
mod compat;

/// The client, worker and admin library and the `gearshift` CLI, against the server under test.
mod client;

/// The `gearshift` tool's admin side: gearadmin's flags against gearadmin, --json, errors.
mod admin_tool;

/// TLS on gearmand's flags, client identities and the ACL, who may shut the server down.
mod tls;

/// The queue-store backends on real stores, and interop with gearmand's stores; the tests that
/// need an external server are ignored unless asked for (see the module's header).
mod store;

/// gearmand's HTTP protocol module (`-r http`): requests, replies, refusals and limits.
mod http;

/// Prometheus metrics (`--metrics-port`): values after known traffic, promtool, the cap on
/// series, and a real prometheus server scraping it.
mod metrics;
