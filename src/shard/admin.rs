//! Admin text commands on the home shard (PROTOCOL.md §2). Listings are gathered from every
//! shard and rendered here, sorted as gearmand's hash tables would list them (§2.3).

use std::sync::atomic::Ordering;

use super::Home;
use crate::jobs::hash::{FUNCTION_BUCKETS, jenkins};
use crate::message::*;
use crate::protocol::{self, PacketType, admin::Command, encode};

/// Which answer a gather renders.
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum GatherKind {
    Status,
    PriorityStatus,
    Workers,
    ShowJobs,
    ShowUniqueJobs,
    Drop,
    StatusUnique(Box<[u8]>),
    Echo(Box<[u8]>),
    /// A scrape of the metrics port; the reply's HTTP version.
    Metrics {
        http10: bool,
    },
}

impl Home {
    pub(super) fn admin_line(&mut self, key: usize, line: &[u8]) {
        let command = match protocol::admin::parse(line) {
            Ok(c) => c,
            Err(_) => {
                self.emit(key, b"ERR INVALID_ARGUMENTS Too+many+arguments\r\n");
                return self.close_after_flush(key);
            }
        };
        if let Some(refusal) = self.admin_refusal(key, line, &command) {
            return self.emit(key, refusal.as_bytes());
        }
        match command {
            Command::Workers => self.gather(key, GatherKind::Workers, None),
            Command::Status => self.gather(key, GatherKind::Status, Some(Query::Functions)),
            Command::PriorityStatus => {
                self.gather(key, GatherKind::PriorityStatus, Some(Query::Functions))
            }
            Command::ShowJobs => self.gather(key, GatherKind::ShowJobs, Some(Query::Jobs)),
            Command::ShowUniqueJobs => {
                self.gather(key, GatherKind::ShowUniqueJobs, Some(Query::Uniques))
            }
            Command::DropFunction(name) => self.gather(
                key,
                GatherKind::Drop,
                Some(Query::DropFunction(name.into())),
            ),
            Command::CancelJob(handle) => {
                let number = self.handle_number(handle);
                match number {
                    Some(number) => {
                        let owner = (number % self.config.shards as u64) as ShardId;
                        let seq = self.conns[key].out.reserve();
                        let client = self.conns[key].id;
                        self.router.send_owner(
                            owner,
                            ToOwner::Cancel {
                                client,
                                seq,
                                number,
                            },
                        );
                    }
                    None => self.emit(key, b"ERR UNKNOWN_JOB\r\n"),
                }
            }
            Command::CreateFunction(name) => self.function_command(key, name, None),
            Command::MaxQueue(name, limits) => self.function_command(key, name, Some(limits)),
            Command::GetPid => {
                let line = format!("OK {}\n", std::process::id());
                self.emit(key, line.as_bytes());
            }
            Command::Verbose => {
                let line = format!("OK {}\n", self.config.verbose);
                self.emit(key, line.as_bytes());
            }
            Command::Queue => {
                let line = match &self.store_state {
                    Some(state) => format!("OK {}\n", state.line()),
                    None => "OK builtin\n".to_string(),
                };
                self.emit(key, line.as_bytes());
            }
            Command::Version => {
                let line = format!("OK {}\n", self.config.version);
                self.emit(key, line.as_bytes());
            }
            Command::Shutdown { graceful } => {
                self.emit(key, b"OK\r\n");
                let peers = self.router.mailbox.peers().clone();
                log::info!(
                    "shutdown{} requested by admin command",
                    if graceful { " graceful" } else { "" }
                );
                if graceful {
                    peers.control.graceful.store(true, Ordering::Release);
                } else {
                    // Let this turn's flush carry the OK before every shard stops.
                    self.flush_all();
                    peers.control.stop.store(true, Ordering::Release);
                }
                peers.wake_all();
            }
            Command::Reply(line) => self.emit(key, line.as_bytes()),
        }
    }

    /// The answer to an admin command this connection may not use, if it may not. `shutdown`
    /// is for administrators only (loopback, `--admin-allow`, an ACL grant); anyone else gets
    /// gearmand's answer to a command it does not have (§2.2). With an ACL, so are the
    /// commands that change state, refused with `ERR PERMISSION_DENIED`.
    fn admin_refusal(&self, key: usize, line: &[u8], command: &Command<'_>) -> Option<String> {
        let conn = &self.conns[key];
        let changes_state = match command {
            Command::Shutdown { .. } => {
                if conn.may_administer() {
                    return None;
                }
                log::warn!(
                    "connection {} ({}, {}): shutdown refused: not an administrator",
                    conn.fd,
                    conn.ip,
                    super::home::identity_of(conn)
                );
                let first = protocol::admin::tokens(line)
                    .ok()
                    .and_then(|t| t.first().copied())
                    .unwrap_or(b"shutdown");
                return Some(protocol::admin::unknown(first));
            }
            Command::CancelJob(_)
            | Command::CreateFunction(_)
            | Command::DropFunction(_)
            | Command::MaxQueue(..) => true,
            _ => false,
        };
        if !changes_state || self.config.acl.is_none() || conn.may_administer() {
            return None;
        }
        log::info!(
            "connection {} ({}, {}): admin command refused by the ACL: {}",
            conn.fd,
            conn.ip,
            super::home::identity_of(conn),
            String::from_utf8_lossy(line)
        );
        Some("ERR PERMISSION_DENIED grant+not+permitted+by+the+ACL\r\n".into())
    }

    fn function_command(&mut self, key: usize, name: &[u8], maxqueue: Option<[u32; 3]>) {
        let owner = self.owner_of(name);
        let seq = self.conns[key].out.reserve();
        let client = self.conns[key].id;
        self.router.send_owner(
            owner,
            ToOwner::Function {
                client,
                seq,
                function: name.into(),
                maxqueue,
            },
        );
    }

    /// Renders a gathered answer.
    pub(super) fn render(&self, kind: &GatherKind, parts: Vec<Part>) -> Vec<u8> {
        let mut out = Vec::new();
        match kind {
            GatherKind::Status | GatherKind::PriorityStatus => {
                let mut rows: Vec<FunctionRow> = parts
                    .into_iter()
                    .flat_map(|p| match p {
                        Part::Functions(r) => r,
                        _ => Vec::new(),
                    })
                    .collect();
                rows.sort_by_key(|r| {
                    (
                        jenkins(&r.name) % FUNCTION_BUCKETS,
                        std::cmp::Reverse(r.created),
                    )
                });
                for r in rows {
                    out.extend_from_slice(&r.name);
                    let line = match kind {
                        GatherKind::Status => {
                            format!("\t{}\t{}\t{}\n", r.total, r.running, r.workers)
                        }
                        _ => format!(
                            "\t{}\t{}\t{}\t{}\n",
                            r.queued[0], r.queued[1], r.queued[2], r.workers
                        ),
                    };
                    out.extend_from_slice(line.as_bytes());
                }
                out.extend_from_slice(b".\n");
            }
            GatherKind::Workers => {
                let mut rows: Vec<ConnectionRow> = parts
                    .into_iter()
                    .flat_map(|p| match p {
                        Part::Connections(r) => r,
                        _ => Vec::new(),
                    })
                    .collect();
                rows.sort_by_key(|r| r.fd);
                for r in rows {
                    out.extend_from_slice(format!("{} {} ", r.fd, r.ip).as_bytes());
                    out.extend_from_slice(&r.client_id);
                    out.extend_from_slice(b" :");
                    for f in &r.functions {
                        out.push(b' ');
                        out.extend_from_slice(f);
                    }
                    out.push(b'\n');
                }
                out.extend_from_slice(b".\n");
            }
            GatherKind::ShowJobs | GatherKind::ShowUniqueJobs => {
                let buckets = self.config.buckets;
                let prefix = &self.config.owner.handle_prefix;
                let handle = |n: u64| crate::jobs::handle(prefix, n);
                let mut rows: Vec<(u32, JobRow)> = parts
                    .into_iter()
                    .flat_map(|p| match p {
                        Part::Jobs(r) => r,
                        _ => Vec::new(),
                    })
                    .map(|r| {
                        let bucket = match kind {
                            GatherKind::ShowJobs => jenkins(&handle(r.number)) % buckets,
                            _ => r.unique_key % buckets,
                        };
                        (bucket, r)
                    })
                    .collect();
                rows.sort_by_key(|(b, r)| (*b, std::cmp::Reverse(r.number)));
                for (_, r) in rows {
                    if let GatherKind::ShowJobs = kind {
                        out.extend_from_slice(&handle(r.number));
                        let line = format!(
                            "\t{}\t{}\t{}\n",
                            r.retries, r.ignore as u8, r.background as u8
                        );
                        out.extend_from_slice(line.as_bytes());
                    } else {
                        out.extend_from_slice(&r.unique);
                        out.push(b'\n');
                    }
                }
                out.extend_from_slice(b".\n");
            }
            GatherKind::Drop => {
                let line = parts
                    .into_iter()
                    .find_map(|p| match p {
                        Part::Dropped(Some(l)) => Some(l),
                        _ => None,
                    })
                    .unwrap_or("ERR function not found\r\n");
                out.extend_from_slice(line.as_bytes());
            }
            GatherKind::Echo(data) => encode(&mut out, PacketType::EchoRes, &[data]),
            GatherKind::Metrics { http10 } => out = self.metrics_reply(*http10, parts),
            GatherKind::StatusUnique(unique) => {
                let found = parts.into_iter().find_map(|p| match p {
                    Part::StatusUnique(s) => s,
                    _ => None,
                });
                let (mut a, mut b, mut c) = ([0; 20], [0; 20], [0; 20]);
                match found {
                    Some((running, num, den, clients)) => encode(
                        &mut out,
                        PacketType::StatusResUnique,
                        &[
                            unique,
                            b"1",
                            if running { b"1" } else { b"0" },
                            protocol::num(num as u64, &mut a),
                            protocol::num(den as u64, &mut b),
                            protocol::num(clients as u64, &mut c),
                        ],
                    ),
                    None => encode(
                        &mut out,
                        PacketType::StatusResUnique,
                        &[unique, b"0", b"0", b"0", b"0", b"0"],
                    ),
                }
            }
        }
        out
    }
}
