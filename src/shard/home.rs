//! The home role: what a shard does with the packets its connections send (PROTOCOL.md §1,
//! §3), and with the answers owners send back for them.

use super::Home;
use super::admin::GatherKind;
use super::conn::{Closing, Sleep, Timer};
use crate::jobs::{self, Priority, hash};
use crate::message::*;
use crate::protocol::{self, DecodeError, Frame, Magic, Packet, PacketType, encode};

/// Longest job handle gearmand accepts (a 64-byte buffer).
const MAX_HANDLE: usize = 63;
/// Longest SET_CLIENT_ID kept, as gearmand.
const MAX_CLIENT_ID: usize = 127;

impl Home {
    /// The owner shard of a function.
    pub(super) fn owner_of(&self, function: &[u8]) -> ShardId {
        (hash::placement(function) % self.config.shards as u64) as ShardId
    }

    /// Writes bytes to a connection's output, in order, and marks it for flushing.
    pub(super) fn emit(&mut self, key: usize, bytes: &[u8]) {
        self.conns[key].out.emit(bytes);
        self.queue_flush(key);
    }

    fn emit_error(&mut self, key: usize, code: &str, text: &str) {
        let mut b = Vec::new();
        protocol::encode_error(&mut b, code, text);
        self.stats.errors.add(code);
        self.emit(key, &b);
    }

    /// Answers input that can never be valid, then closes after the answer is written.
    pub(super) fn reject(&mut self, key: usize, e: &DecodeError) {
        let (code, text) = e.error_packet();
        log::info!("closing connection {}: {code} {text}", self.conns[key].fd);
        if matches!(e, DecodeError::LineTooLong(_)) {
            let line = format!("ERR {code} {}\r\n", text.replace(' ', "+"));
            self.stats.errors.add(code);
            self.emit(key, line.as_bytes());
        } else {
            self.emit_error(key, code, &text);
        }
        self.close_after_flush(key);
    }

    pub(super) fn close_after_flush(&mut self, key: usize) {
        self.conns[key].closing = Closing::AfterFlush;
        self.queue_flush(key);
    }

    /// The sequence an answer from `owner` goes to: written straight away when the owner is
    /// this shard and nothing is outstanding (it will answer within this turn), else a slot.
    /// Only for requests the owner answers at once (not a durable background submit).
    pub(super) fn seq_for(&mut self, key: usize, owner: ShardId) -> Seq {
        let out = &mut self.conns[key].out;
        if owner == self.id && out.in_order() {
            DIRECT
        } else {
            out.reserve()
        }
    }

    /// The handle number of `handle` if it has this server's shape `<prefix>:<n>`.
    pub(super) fn handle_number(&self, handle: &[u8]) -> Option<u64> {
        let prefix = &self.config.owner.handle_prefix;
        let rest = handle.strip_prefix(&prefix[..])?.strip_prefix(b":")?;
        if rest.is_empty() || rest.len() > 20 || !rest.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(rest).ok()?.parse().ok()
    }

    /// With an ACL, whether connection `key` may exercise `permission` on `function`. A
    /// refusal is answered with an ERROR naming the permission (the connection stays usable)
    /// and logged. Without an ACL, everything is allowed (gearmand's behaviour).
    pub(super) fn permitted(
        &mut self,
        key: usize,
        permission: Permission,
        function: &[u8],
    ) -> bool {
        if self.config.acl.is_none() {
            return true;
        }
        let conn = &self.conns[key];
        let allowed = conn.grant.as_ref().is_some_and(|g| match permission {
            Permission::Register => g.may_register(function),
            Permission::Invoke => g.may_invoke(function),
        });
        if !allowed {
            let name = permission.name();
            log::info!(
                "connection {} ({}, {}): {name} of {:?} refused by the ACL",
                conn.fd,
                conn.ip,
                identity_of(conn),
                String::from_utf8_lossy(function)
            );
            self.emit_error(
                key,
                "PERMISSION_DENIED",
                &format!("{name} not permitted by the ACL"),
            );
        }
        allowed
    }

    fn handle_owner(&self, number: u64) -> ShardId {
        (number % self.config.shards as u64) as ShardId
    }

    pub(super) fn handle_frame(&mut self, key: usize, frame: Frame<'_>) {
        match frame {
            Frame::Line(line) => self.admin_line(key, line),
            Frame::Packet(p) if p.magic == Magic::Response => {
                self.emit_error(key, "INVALID_MAGIC", "Request magic expected")
            }
            Frame::Packet(p) if p.ty.is_server_only() => {
                self.emit_error(key, "INVALID_COMMAND", "Command not expected")
            }
            Frame::Packet(p) => self.packet(key, p),
        }
    }

    fn packet(&mut self, key: usize, p: Packet<'_>) {
        use PacketType::*;
        match p.ty {
            SubmitJob => self.submit(key, &p, Priority::Normal, false),
            SubmitJobBg => self.submit(key, &p, Priority::Normal, true),
            SubmitJobHigh => self.submit(key, &p, Priority::High, false),
            SubmitJobHighBg => self.submit(key, &p, Priority::High, true),
            SubmitJobLow => self.submit(key, &p, Priority::Low, false),
            SubmitJobLowBg => self.submit(key, &p, Priority::Low, true),
            SubmitJobEpoch => self.submit(key, &p, Priority::Normal, true),
            SubmitReduceJob => self.submit(key, &p, Priority::Normal, false),
            SubmitReduceJobBackground => self.submit(key, &p, Priority::Normal, true),
            GetStatus => self.get_status(key, &p),
            GetStatusUnique => self.get_status_unique(key, &p),
            EchoReq if self.config.shards == 1 => {
                let mut b = Vec::new();
                encode(&mut b, EchoRes, &[p.body]);
                self.emit(key, &b);
            }
            EchoReq => self.gather(key, GatherKind::Echo(p.body.into()), Some(Query::Barrier)),
            OptionReq => {
                if p.body.eq_ignore_ascii_case(b"exceptions") {
                    self.conns[key].exceptions = true;
                    let mut b = Vec::new();
                    encode(&mut b, OptionRes, &[p.body]);
                    self.emit(key, &b);
                } else {
                    self.emit_error(
                        key,
                        "UNKNOWN_OPTION",
                        "Server does not recognize given option",
                    );
                }
            }
            SetClientId => {
                let id = &p.body[..p.body.len().min(MAX_CLIENT_ID)];
                self.conns[key].client_id = id.into();
            }
            CanDo => {
                if self.permitted(key, Permission::Register, p.body) {
                    self.can_do(key, p.body, 0)
                }
            }
            CanDoTimeout => {
                let Some(ms) = parse_timeout(p.arg(1)) else {
                    self.emit_error(key, "INVALID_PACKET", "CAN_DO_TIMEOUT timeout out of range");
                    return self.close_after_flush(key);
                };
                if self.permitted(key, Permission::Register, p.arg(0)) {
                    self.can_do(key, p.arg(0), ms)
                }
            }
            CantDo => {
                let owner = self.owner_of(p.body);
                let conn = &mut self.conns[key];
                conn.abilities.retain(|a| &a.function[..] != p.body);
                let id = conn.id;
                self.router.send_owner(
                    owner,
                    ToOwner::CantDo {
                        worker: id,
                        function: p.body.into(),
                    },
                );
            }
            ResetAbilities => {
                let conn = &mut self.conns[key];
                conn.abilities.clear();
                conn.held.clear();
                let (id, owners) = (conn.id, std::mem::take(&mut conn.owners));
                for owner in 0..self.config.shards {
                    if owners & (1 << owner) != 0 {
                        self.router
                            .send_owner(owner, ToOwner::WorkerGone { worker: id });
                    }
                }
            }
            PreSleep => {
                let conn = &mut self.conns[key];
                conn.sleep = Sleep::Asleep;
                let id = conn.id;
                for owner in conn.grab_order(self.id) {
                    self.router.send_owner(owner, ToOwner::Sleep { worker: id });
                }
            }
            GrabJob => self.grab(key, GrabKind::Plain),
            GrabJobUniq => self.grab(key, GrabKind::Uniq),
            GrabJobAll => self.grab(key, GrabKind::All),
            WorkData => self.work(key, &p, WorkKind::Data),
            WorkWarning => self.work(key, &p, WorkKind::Warning),
            WorkStatus => self.work(key, &p, WorkKind::Status),
            WorkComplete => self.work(key, &p, WorkKind::Complete),
            WorkFail => self.work(key, &p, WorkKind::Fail),
            WorkException => self.work(key, &p, WorkKind::Exception),
            // Server-only types were answered by `handle_frame`.
            _ => self.emit_error(key, "INVALID_COMMAND", "Command not expected"),
        }
    }

    fn submit(&mut self, key: usize, p: &Packet<'_>, priority: Priority, background: bool) {
        let mut when = 0;
        let mut reducer: &[u8] = &[];
        let data = match p.ty {
            PacketType::SubmitJobEpoch => {
                let Some(w) = parse_epoch(p.arg(2)) else {
                    self.emit_error(key, "INVALID_PACKET", "SUBMIT_JOB_EPOCH epoch out of range");
                    return self.close_after_flush(key);
                };
                when = w;
                p.arg(3)
            }
            PacketType::SubmitReduceJob | PacketType::SubmitReduceJobBackground => {
                reducer = p.arg(2);
                p.arg(4)
            }
            _ => p.arg(2),
        };
        let (function, unique) = (p.arg(0), p.arg(1));
        if !self.permitted(key, Permission::Invoke, function) {
            return;
        }
        if unique.len() > jobs::MAX_UNIQUE || reducer.len() > jobs::MAX_UNIQUE {
            // Answered here: gearmand makes no function record for such a submission.
            return self.emit_error(key, "ARGUMENT_TOO_LARGE", "Unique value too large");
        }
        let owner = self.owner_of(function);
        let seq = if background && self.config.owner.durable {
            // Answered only once the store has the job, turns later: its answer keeps its
            // place in the output (and the connection, having a reply due, is not handed off).
            self.conns[key].out.reserve()
        } else {
            self.seq_for(key, owner)
        };
        let conn = &self.conns[key];
        let submit = Submit {
            client: conn.id,
            seq,
            exceptions: conn.exceptions,
            function: function.into(),
            job: jobs::JobBytes::new(unique, reducer, data),
            priority,
            background,
            when,
        };
        self.router
            .send_owner(owner, ToOwner::Submit(Box::new(submit)));
    }

    fn get_status(&mut self, key: usize, p: &Packet<'_>) {
        // The handle is echoed up to its first NUL (§1.4).
        let handle = p.body.split(|&b| b == 0).next().unwrap_or_default();
        if handle.len() > MAX_HANDLE {
            self.emit_error(key, "ARGUMENT_TOO_LARGE", "Job handle too long");
            return self.close_after_flush(key);
        }
        match self.handle_number(handle) {
            Some(number) => {
                let owner = self.handle_owner(number);
                let seq = self.seq_for(key, owner);
                let client = self.conns[key].id;
                self.router.send_owner(
                    owner,
                    ToOwner::GetStatus {
                        client,
                        seq,
                        number,
                        handle: handle.into(),
                    },
                );
            }
            None => {
                let mut b = Vec::new();
                jobs::unknown_status(&mut b, handle);
                self.emit(key, &b);
            }
        }
    }

    fn get_status_unique(&mut self, key: usize, p: &Packet<'_>) {
        let unique = p.body;
        if unique.len() > jobs::MAX_UNIQUE {
            self.emit_error(key, "ARGUMENT_TOO_LARGE", "Unique value too large");
            return self.close_after_flush(key);
        }
        if unique.is_empty() {
            let mut b = Vec::new();
            encode(
                &mut b,
                PacketType::StatusResUnique,
                &[b"", b"0", b"0", b"0", b"0", b"0"],
            );
            return self.emit(key, &b);
        }
        self.gather(
            key,
            super::admin::GatherKind::StatusUnique(unique.into()),
            Some(Query::StatusUnique(unique.into())),
        );
    }

    fn can_do(&mut self, key: usize, function: &[u8], timeout_ms: u32) {
        let owner = self.owner_of(function);
        let conn = &mut self.conns[key];
        conn.abilities.push(super::conn::Ability {
            function: function.into(),
            owner,
        });
        conn.owners |= 1 << owner;
        if timeout_ms > 0 && conn.timer == Timer::Untimed {
            conn.timer = Timer::Timed(None);
        }
        let (id, sleeping) = (conn.id, conn.sleep.is_asleep());
        self.router.send_owner(
            owner,
            ToOwner::CanDo {
                worker: id,
                function: function.into(),
                timeout_ms,
            },
        );
        if sleeping {
            // Asleep for this owner too, which did not hear the PRE_SLEEP: woken by the
            // function's next job (as gearmand's per-connection flag does), or at once if
            // it has one queued.
            self.router.send_owner(owner, ToOwner::Sleep { worker: id });
        }
    }

    fn grab(&mut self, key: usize, kind: GrabKind) {
        let conn = &mut self.conns[key];
        conn.sleep = Sleep::Awake;
        let mut order = conn.grab_order(self.id);
        if order.is_empty() {
            let mut b = Vec::new();
            encode(&mut b, PacketType::NoJob, &[]);
            return self.emit(key, &b);
        }
        let first = order.remove(0);
        conn.asking = first;
        conn.woken_by &= !(1 << first);
        let seq = self.seq_for(key, first);
        let worker = self.conns[key].id;
        self.router.send_owner(
            first,
            ToOwner::Grab {
                worker,
                seq,
                kind,
                rest: order,
            },
        );
    }

    fn work(&mut self, key: usize, p: &Packet<'_>, kind: WorkKind) {
        // WORK_FAIL's handle runs to the end of the body and may carry a trailing NUL, which is
        // forwarded as sent (§3.6) but is not part of the handle.
        let handle = p.arg(0).split(|&b| b == 0).next().unwrap_or_default();
        if kind == WorkKind::Fail && handle.len() > MAX_HANDLE {
            return self.emit_error(
                key,
                "ARGUMENT_TOO_LARGE",
                "Error occurred due to GEARMAND_JOB_HANDLE_SIZE being too small from snprintf",
            );
        }
        let number = self.handle_number(handle);
        let conn = &mut self.conns[key];
        let held = number.and_then(|n| conn.held.iter().position(|&h| h == n));
        let (Some(number), Some(i)) = (number, held) else {
            let (code, text) = jobs::not_found(kind);
            return self.emit_error(key, code, text);
        };
        if kind.ends_job() {
            conn.held.swap_remove(i);
        }
        // Forwarded byte for byte: the same packet with the response magic.
        let mut packet = Vec::with_capacity(protocol::HEADER_LEN + p.body.len());
        packet.extend_from_slice(&protocol::RES);
        packet.extend_from_slice(&p.ty.number().to_be_bytes());
        packet.extend_from_slice(&(p.body.len() as u32).to_be_bytes());
        packet.extend_from_slice(p.body);
        let worker = conn.id;
        let owner = self.handle_owner(number);
        self.router.send_owner(
            owner,
            ToOwner::Work {
                worker,
                number,
                kind,
                packet: packet.into(),
            },
        );
    }

    /// Sends an admin question to every shard (to its owner role, or for a listing of
    /// connections, `None`, to its home role) and answers once all have replied.
    pub(super) fn gather(&mut self, key: usize, kind: GatherKind, query: Option<Query>) {
        let seq = self.conns[key].out.reserve();
        let conn = self.conns[key].id;
        let gather = self.gathers.insert(super::Gather {
            conn,
            seq,
            kind,
            parts: Vec::with_capacity(self.config.shards as usize),
            remaining: self.config.shards as usize,
        }) as u32;
        for shard in 0..self.config.shards {
            match &query {
                Some(query) => self.router.send_owner(
                    shard,
                    ToOwner::Ask {
                        client: conn,
                        gather,
                        query: query.clone(),
                    },
                ),
                None => self.router.send_home(
                    shard,
                    ToHome::ListConnections {
                        client: conn,
                        gather,
                    },
                ),
            }
        }
    }

    /// Messages for the home role.
    pub(super) fn home_message(&mut self, msg: ToHome) {
        match msg {
            ToHome::Reply {
                to,
                seq,
                bytes,
                attach,
            } => {
                let Some(key) = self.conn_key(to) else {
                    // The client was reaped (a reset) before this submit was answered, so
                    // the ClientGone it left did not name the job: hand the attachment back,
                    // or a foreground job would stay queued for nobody.
                    if let Some(n) = attach {
                        let owner = self.handle_owner(n);
                        let jobs = vec![n];
                        self.router
                            .send_owner(owner, ToOwner::ClientGone { client: to, jobs });
                    }
                    return;
                };
                let bytes = match self.conns[key].http.is_some() {
                    true => self.http_packets(key, &bytes).into(),
                    false => bytes,
                };
                let conn = &mut self.conns[key];
                if let Some(n) = attach {
                    conn.waiting.push(n);
                }
                conn.out.fill(seq, bytes);
                self.queue_flush(key);
            }
            ToHome::Assign {
                to,
                seq,
                number,
                bytes,
            } => {
                // A worker that is gone already told its owners, which requeued this job.
                let Some(key) = self.conn_key(to) else { return };
                let owner = self.handle_owner(number);
                let conn = &mut self.conns[key];
                conn.held.push(number);
                conn.owners |= 1 << owner;
                conn.last_owner = owner;
                conn.empty &= !(1 << owner);
                conn.out.fill(seq, bytes);
                // A connection has one CAN_DO_TIMEOUT timer (gearmand's): this assignment
                // re-armed it at its owner, so one another owner armed is gone.
                let earlier = match &mut conn.timer {
                    Timer::Timed(last) => last.replace(number),
                    Timer::Untimed => None,
                };
                self.queue_flush(key);
                if let Some(m) = earlier
                    && self.handle_owner(m) != owner
                {
                    let owner = self.handle_owner(m);
                    self.router.send_owner(
                        owner,
                        ToOwner::DropTimer {
                            worker: to,
                            number: m,
                        },
                    );
                }
            }
            ToHome::Empty {
                to,
                seq,
                kind,
                mut rest,
            } => {
                let Some(key) = self.conn_key(to) else { return };
                let conn = &mut self.conns[key];
                // A hint for the next grab's order (see `Conn::grab_order`); with grabs
                // pipelined it may name the wrong owner, which costs a hop, never a job.
                conn.empty |= 1 << conn.asking;
                if rest.is_empty() {
                    let mut b = Vec::new();
                    encode(&mut b, PacketType::NoJob, &[]);
                    self.conns[key].out.fill(seq, b.into());
                    return self.queue_flush(key);
                }
                let next = rest.remove(0);
                conn.asking = next;
                conn.woken_by &= !(1 << next);
                let seq = if seq == DIRECT && next != self.id {
                    // Still within the turn that asked, so nothing has been written since.
                    self.conns[key].out.reserve()
                } else {
                    seq
                };
                self.router.send_owner(
                    next,
                    ToOwner::Grab {
                        worker: to,
                        seq,
                        kind,
                        rest,
                    },
                );
                if self.conns[key].sleep.is_asleep() {
                    // A PRE_SLEEP came after this GRAB, and its Sleep reached `next` before
                    // this late Grab, which wakes the worker there: it sleeps again after.
                    self.router.send_owner(next, ToOwner::Sleep { worker: to });
                }
            }
            ToHome::Forward { to, bytes, ends } => {
                let Some(key) = self.conn_key(to) else { return };
                let bytes = match self.conns[key].http.is_some() {
                    true => self.http_packets(key, &bytes).into(),
                    false => bytes,
                };
                let conn = &mut self.conns[key];
                if let Some(n) = ends
                    && let Some(i) = conn.waiting.iter().position(|&w| w == n)
                {
                    conn.waiting.swap_remove(i);
                }
                conn.out.emit_unrequested(&bytes);
                self.queue_flush(key);
            }
            ToHome::Noop { to, from } => {
                let Some(key) = self.conn_key(to) else { return };
                let conn = &mut self.conns[key];
                // The owner has work for this worker: no longer asked last.
                conn.empty &= !(1 << from);
                match conn.sleep {
                    Sleep::Awake => {
                        return self
                            .router
                            .send_owner(from, ToOwner::NoopDeclined { worker: to });
                    }
                    Sleep::Woken => {
                        conn.woken_by |= 1 << from;
                        return;
                    }
                    Sleep::Asleep => {}
                }
                conn.woken_by |= 1 << from;
                conn.sleep = Sleep::Woken;
                let mut b = Vec::new();
                encode(&mut b, PacketType::Noop, &[]);
                conn.out.emit_unrequested(&b);
                self.queue_flush(key);
            }
            ToHome::Revoked { to, number } => {
                let Some(key) = self.conn_key(to) else { return };
                self.conns[key].held.retain(|&mut h| h != number);
            }
            ToHome::Answer { to, gather, part } => {
                let g = &mut self.gathers[gather as usize];
                debug_assert_eq!(g.conn, to);
                g.parts.push(part);
                g.remaining -= 1;
                if g.remaining == 0 {
                    let g = self.gathers.remove(gather as usize);
                    let bytes = self.render(&g.kind, g.parts);
                    if let Some(key) = self.conn_key(g.conn) {
                        self.conns[key].out.fill(g.seq, bytes.into());
                        if let GatherKind::Metrics { .. } = g.kind {
                            // One reply per connection.
                            self.conns[key].closing = super::conn::Closing::AfterFlush;
                        }
                        self.queue_flush(key);
                    }
                }
            }
            ToHome::HomeMetrics { client, gather } => {
                let part = Part::HomeMetrics(Box::new(self.metrics_snapshot()));
                self.router.send_home(
                    client.shard,
                    ToHome::Answer {
                        to: client,
                        gather,
                        part,
                    },
                );
            }
            ToHome::ListConnections { client, gather } => {
                let rows = self
                    .conns
                    .iter()
                    .map(|(_, c)| ConnectionRow {
                        fd: c.fd,
                        ip: c.ip.clone(),
                        client_id: c.client_id.clone(),
                        functions: c
                            .abilities
                            .iter()
                            .rev()
                            .map(|a| a.function.clone())
                            .collect(),
                    })
                    .collect();
                self.router.send_home(
                    client.shard,
                    ToHome::Answer {
                        to: client,
                        gather,
                        part: Part::Connections(rows),
                    },
                );
            }
        }
    }
}

/// CAN_DO_TIMEOUT's milliseconds, read like gearmand's `strtol`: garbage is 0 (no timeout),
/// negatives are no timeout; an argument over 20 bytes or a value past `i64` is refused.
fn parse_timeout(arg: &[u8]) -> Option<u32> {
    if arg.len() > 20 {
        return None;
    }
    let v = protocol::strtol(arg).ok()?;
    Some(v.clamp(0, u32::MAX as i64) as u32)
}

/// SUBMIT_JOB_EPOCH's time, read like `strtoll`: garbage or empty is 0 (run now); overflow is
/// refused (gearmand closes the connection).
fn parse_epoch(arg: &[u8]) -> Option<i64> {
    protocol::strtol(arg).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_arguments_like_c() {
        assert_eq!(parse_epoch(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_epoch(b"9223372036854775808"), None);
        assert_eq!(parse_timeout(b"99999999999999999999"), None);
        assert_eq!(parse_timeout(b"123456789012345678901"), None);
        assert_eq!(parse_timeout(b"-1"), Some(0));
        assert_eq!(parse_timeout(b"1500"), Some(1500));
    }
}

/// What an ACL grants per function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Permission {
    /// Register as a worker (CAN_DO, CAN_DO_TIMEOUT).
    Register,
    /// Submit jobs (SUBMIT_*).
    Invoke,
}

impl Permission {
    /// Its name in the ACL file.
    pub(super) fn name(self) -> &'static str {
        match self {
            Permission::Register => "register",
            Permission::Invoke => "invoke",
        }
    }
}

/// A connection's identity for log lines.
pub(super) fn identity_of(conn: &super::conn::Conn) -> &str {
    match conn.tls.as_ref().map(|t| t.identity.as_deref()) {
        Some(Some(id)) => id,
        Some(None) => "no client certificate",
        None => "plain",
    }
}
