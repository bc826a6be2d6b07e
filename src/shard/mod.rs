//! A shard: one thread, one `mio::Poll` loop over a slab of connections, and the owner state of
//! the functions hashed to it.
//!
//! Each shard plays two roles. As **home** it reads, parses and writes the sockets it holds
//! (`home.rs`, `admin.rs`). As **owner** it holds the queues, jobs and worker entries of its
//! functions (`crate::jobs::Owner`). Roles talk only through [`message::Msg`]: to another
//! shard through the [`mailbox`], to itself through a local queue drained after every packet,
//! so with one shard nothing crosses a thread and the output order equals the input order.
//!
//! One loop turn (after redis and pelikan):
//! 1. poll (not blocking when work is left over, see `mailbox` for the sleep protocol);
//! 2. accept, read and dispatch every ready connection, draining local messages after each
//!    packet;
//! 3. handle messages from other shards; revisit connections with input left over;
//! 4. run due timers (epoch jobs, CAN_DO_TIMEOUT);
//! 5. flush every connection written to in this turn, once;
//! 6. reap connections marked for closing and tell their owners;
//! 7. push outboxes into the rings and wake sleeping peers.

mod admin;
pub mod conn;
mod home;
pub mod mailbox;
pub mod message;

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

pub use crate::config::Handoff;
use crate::jobs::{Outbox, Owner, OwnerConfig};
use crate::protocol::{self, Decoded};
use crate::store::writer::{StoreLink, StoreState};
use conn::{Closing, Conn};
use mailbox::Mailbox;
use message::{ConnId, Msg, ShardId};

/// The token of the shard's waker.
pub const WAKER: Token = Token(usize::MAX);
const LISTENER_BASE: usize = usize::MAX - 64;

/// Bytes read per system call into the shard's read buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes one connection may feed per loop turn before others get a go.
const READ_BUDGET: usize = 1024 * 1024;
/// Messages taken from each inbound ring per loop turn.
const RING_BUDGET: usize = 4096;

/// What a shard needs from the configuration.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// Number of shards.
    pub shards: u16,
    /// Owner rules.
    pub owner: OwnerConfig,
    /// Largest packet body accepted.
    pub max_packet: usize,
    /// Longest admin text line.
    pub max_line: usize,
    /// Unwritten output a connection may have before it is closed as too slow.
    pub max_output: usize,
    /// Open connections allowed; more are accepted and closed at once.
    pub max_connections: usize,
    /// `--exceptions`: every connection starts with the exceptions option.
    pub exceptions: bool,
    /// `--hashtable-buckets`, for the order of `show jobs` listings.
    pub buckets: u32,
    /// `--verbose` level name, for the `verbose` command.
    pub verbose: String,
    /// Version string for the `version` command.
    pub version: String,
    /// Which connections move to the shard that owns their function (`--handoff`).
    pub handoff: Handoff,
}

/// A gathered admin answer in progress.
struct Gather {
    conn: ConnId,
    seq: message::Seq,
    kind: admin::GatherKind,
    parts: Vec<message::Part>,
    remaining: usize,
}

/// One shard thread's state.
pub struct Shard {
    id: ShardId,
    config: Arc<ShardConfig>,
    poll: Poll,
    conns: Slab<Conn>,
    /// Generation of each slab slot, bumped when the slot is freed.
    generations: Vec<u32>,
    listeners: Vec<TcpListener>,
    next_home: usize,
    owner: Owner,
    mailbox: Mailbox,
    /// Messages to this shard itself, handled before the next packet.
    local: VecDeque<Msg>,
    inbound: VecDeque<Msg>,
    owner_out: Outbox,
    /// The read buffer every connection reads into; only an incomplete frame is kept per
    /// connection, so idle connections hold no input memory.
    scratch: Vec<u8>,
    flush_list: Vec<usize>,
    read_again: Vec<usize>,
    closing: Vec<usize>,
    gathers: Slab<Gather>,
    /// The store thread, when a queue store is configured.
    store: Option<StoreLink>,
    /// What the `queue` admin command shows.
    store_state: Option<Arc<StoreState>>,
}

impl Shard {
    /// A shard with its poll (whose waker is in `mailbox`'s peers) and, for the accepting
    /// shard, the listeners.
    pub fn new(
        id: ShardId,
        config: Arc<ShardConfig>,
        poll: Poll,
        mailbox: Mailbox,
        mut listeners: Vec<TcpListener>,
        store: Option<(StoreLink, Arc<StoreState>)>,
    ) -> io::Result<Shard> {
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(l, Token(LISTENER_BASE + i), Interest::READABLE)?;
        }
        Ok(Shard {
            id,
            owner: Owner::new(id, config.shards, config.owner.clone()),
            config,
            poll,
            conns: Slab::new(),
            generations: Vec::new(),
            listeners,
            next_home: 0,
            mailbox,
            local: VecDeque::new(),
            inbound: VecDeque::new(),
            owner_out: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            flush_list: Vec::new(),
            read_again: Vec::new(),
            closing: Vec::new(),
            gathers: Slab::new(),
            store_state: store.as_ref().map(|s| s.1.clone()),
            store: store.map(|s| s.0),
        })
    }

    /// Queues a job read back from the store at start-up (before any connection).
    pub fn restore(&mut self, job: crate::store::StoredJob) {
        let mut out = std::mem::take(&mut self.owner_out);
        self.owner.restore(job, &mut out);
        self.route_all(&mut out);
        self.owner_out = out;
        self.drain_local();
    }

    /// Runs until told to stop.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let peers = self.mailbox.peers().clone();
        loop {
            let control = &peers.control;
            if control.stop.load(Ordering::Acquire) {
                break;
            }
            let graceful = control.graceful.load(Ordering::Acquire);
            if graceful {
                self.graceful_step();
            }
            let mut timeout = self
                .owner
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if graceful {
                timeout = Some(timeout.map_or(Duration::from_millis(50), |t| {
                    t.min(Duration::from_millis(50))
                }));
            }
            let busy = !self.read_again.is_empty()
                || !self.local.is_empty()
                || !self.flush_list.is_empty()
                || !self.closing.is_empty();
            if busy || !self.mailbox.prepare_sleep() {
                timeout = Some(Duration::ZERO);
            }
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                log::error!("shard {}: poll failed: {e}", self.id);
                break;
            }
            self.mailbox.awake();
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE),
                    Token(key) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            // A peer that closed must be read to its end: no later event
                            // will tell of the EOF.
                            let to_end = event.is_read_closed() || event.is_error();
                            self.read_conn(key, to_end);
                        }
                        if event.is_writable() {
                            self.queue_flush(key);
                        }
                    }
                }
            }
            self.store_acks();
            self.mailbox.receive(RING_BUDGET, &mut self.inbound);
            while let Some(msg) = self.inbound.pop_front() {
                self.dispatch(msg);
                self.drain_local();
            }
            for key in std::mem::take(&mut self.read_again) {
                if let Some(c) = self.conns.get_mut(key) {
                    c.read_again = false;
                    self.read_conn(key, true);
                }
            }
            if self
                .owner
                .next_deadline()
                .is_some_and(|d| d <= Instant::now())
            {
                let mut out = std::mem::take(&mut self.owner_out);
                self.owner.run_timers(&mut out);
                self.route_all(&mut out);
                self.owner_out = out;
                self.drain_local();
            }
            self.flush_all();
            self.reap();
            // Reaping tells owners, whose answers (a requeue's NOOP, say) go out this turn.
            self.flush_all();
            self.store_send();
            self.mailbox.flush();
        }
        self.listeners.clear();
    }

    /// While a graceful shutdown waits: drop the listeners and publish the job count; the
    /// accepting shard stops everyone once all counts are zero.
    fn graceful_step(&mut self) {
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let peers = self.mailbox.peers().clone();
        peers.shards[self.id as usize]
            .jobs
            .store(self.owner.job_count(), Ordering::Release);
        if self.id == 0
            && peers
                .shards
                .iter()
                .all(|s| s.jobs.load(Ordering::Acquire) == 0)
        {
            log::info!("graceful shutdown: no jobs left, stopping");
            peers.control.stop.store(true, Ordering::Release);
            peers.wake_all();
        }
    }

    // ---- the queue store ----

    /// Hands this turn's store changes to the store thread as one batch.
    fn store_send(&mut self) {
        let Some(store) = &self.store else { return };
        if let Some((id, ops)) = self.owner.take_store_ops() {
            let batch = crate::store::writer::Batch {
                shard: self.id,
                id,
                ops,
            };
            if store.tx.send(batch).is_err() {
                log::error!("shard {}: the store thread is gone", self.id);
            }
        }
    }

    /// Acknowledges (or refuses) the jobs of batches the store thread finished.
    fn store_acks(&mut self) {
        let Some(store) = &self.store else { return };
        let acks: Vec<_> = store.acks.try_iter().collect();
        for ack in acks {
            let mut out = std::mem::take(&mut self.owner_out);
            self.owner.durable(
                ack.upto,
                ack.result.as_ref().map(|_| ()).map_err(|e| e.as_str()),
                &mut out,
            );
            self.route_all(&mut out);
            self.owner_out = out;
            self.drain_local();
        }
    }

    // ---- accepting ----

    fn accept(&mut self, i: usize) {
        loop {
            let Some(listener) = self.listeners.get(i) else {
                return;
            };
            let (stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: leave the connection pending, as gearmand does.
                    log::error!("accept failed: {e}");
                    return;
                }
            };
            let control = &self.mailbox.peers().control;
            if control.connections.load(Ordering::Relaxed) >= self.config.max_connections {
                log::warn!(
                    "refusing a connection: --max-connections {} reached",
                    self.config.max_connections
                );
                drop(stream);
                continue;
            }
            control.connections.fetch_add(1, Ordering::Relaxed);
            let sock = socket2::SockRef::from(&stream);
            let _ = sock.set_tcp_nodelay(true);
            let _ = sock.set_keepalive(true);
            let home = (self.next_home % self.config.shards as usize) as ShardId;
            self.next_home += 1;
            if home == self.id {
                self.adopt(stream);
            } else {
                self.mailbox.send(home, Msg::Adopt(stream));
            }
        }
    }

    fn adopt(&mut self, stream: TcpStream) {
        let fd = stream.as_raw_fd();
        let ip = stream
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| "-".into());
        let conn = Conn::new(self.next_id(), stream, fd, ip, self.config.exceptions);
        self.settle(conn, &[]);
    }

    /// The id the next connection settled here gets.
    fn next_id(&mut self) -> ConnId {
        let key = self.conns.vacant_key();
        if self.generations.len() <= key {
            self.generations.resize(key + 1, 0);
        }
        ConnId {
            shard: self.id,
            slot: key as u32,
            generation: self.generations[key],
        }
    }

    /// Makes this shard the home of `conn`: registers its socket, handles the input it
    /// brought (a hand-off's), then reads whatever else is waiting.
    fn settle(&mut self, mut conn: Conn, pending: &[u8]) {
        conn.id = self.next_id();
        let key = conn.id.slot as usize;
        if let Err(e) = self.poll.registry().register(
            &mut conn.socket,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::error!("cannot register a connection: {e}");
            self.mailbox
                .peers()
                .control
                .connections
                .fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let inserted = self.conns.insert(conn);
        debug_assert_eq!(inserted, key);
        if !pending.is_empty() {
            let used = self.dispatch_input(key, pending);
            if let Some(conn) = self.conns.get_mut(key) {
                conn.partial.extend_from_slice(&pending[used..]);
            }
        }
        // Bytes may already be waiting; edge-triggered polling would not tell us again.
        self.read_conn(key, true);
    }

    /// Where a connection should live, decided once, at the first CAN_DO or SUBMIT that finds
    /// it idle: on the shard that owns that function, so a worker's grab, assign and results
    /// (and a client's submits and replies) never cross a ring. One that does several
    /// functions keeps that first owner as home.
    fn handoff_target(&mut self, key: usize, frame: &protocol::Frame<'_>) -> Option<ShardId> {
        use protocol::PacketType::*;
        let protocol::Frame::Packet(p) = frame else {
            return None;
        };
        if p.magic != protocol::Magic::Request {
            return None;
        }
        let function = match p.ty {
            CanDo => p.body,
            CanDoTimeout => p.arg(0),
            SubmitJob
            | SubmitJobBg
            | SubmitJobHigh
            | SubmitJobHighBg
            | SubmitJobLow
            | SubmitJobLowBg
            | SubmitJobEpoch
            | SubmitReduceJob
            | SubmitReduceJobBackground
                if self.config.handoff == Handoff::All =>
            {
                p.arg(0)
            }
            _ => return None,
        };
        let conn = self.conns.get(key)?;
        if conn.placed {
            return None;
        }
        // Only a connection with nothing in flight can move (nothing may refer to its id);
        // one that is busy now is placed at a later CAN_DO or SUBMIT that finds it idle.
        let idle = conn.closing == Closing::No
            && conn.out.backlog() == 0
            && conn.out.in_order()
            && conn.abilities.is_empty()
            && conn.owners == 0
            && conn.waiting.is_empty()
            && conn.held.is_empty()
            && !conn.sleeping;
        if !idle {
            return None;
        }
        let owner = self.owner_of(function);
        self.conns[key].placed = true;
        (owner != self.id).then_some(owner)
    }

    /// Moves a connection to shard `to` with the input it has not handled yet.
    fn hand_off(&mut self, key: usize, to: ShardId, pending: &[u8]) {
        let mut conn = self.conns.remove(key);
        self.generations[key] = self.generations[key].wrapping_add(1);
        if conn.flush_queued {
            // Its slot may be reused this turn; the list must not name it for the newcomer.
            self.flush_list.retain(|&k| k != key);
        }
        let _ = self.poll.registry().deregister(&mut conn.socket);
        conn.flush_queued = false;
        conn.read_again = false;
        conn.partial_need = 0;
        self.mailbox.send(
            to,
            Msg::HandOff(Box::new(message::HandOff {
                conn,
                pending: pending.to_vec(),
            })),
        );
    }

    /// The live connection `id` refers to, by slot and generation.
    fn conn_key(&self, id: ConnId) -> Option<usize> {
        let key = id.slot as usize;
        (id.shard == self.id && self.conns.contains(key) && self.generations[key] == id.generation)
            .then_some(key)
    }

    // ---- reading ----

    /// Reads and dispatches what a connection sent. Unless `to_end`, a short read is taken
    /// to mean the socket is drained.
    fn read_conn(&mut self, key: usize, to_end: bool) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut total = 0;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                break;
            };
            if conn.closing != Closing::No {
                break;
            }
            let have = conn.partial.len();
            let want = conn.partial_need.max(have);
            let (n, room) = if want + 4096 <= scratch.len() {
                scratch[..have].copy_from_slice(&conn.partial);
                match read(&mut conn.socket, &mut scratch[have..]) {
                    Ok(0) => {
                        conn.closing = Closing::AfterFlush;
                        self.closing.push(key);
                        break;
                    }
                    Ok(n) => {
                        conn.partial.clear();
                        let end = have + n;
                        let used = self.dispatch_input(key, &scratch[..end]);
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.partial.extend_from_slice(&scratch[used..end]);
                        }
                        (n, scratch.len() - have)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        conn.closing = Closing::Now;
                        self.closing.push(key);
                        break;
                    }
                }
            } else {
                // A frame larger than the read buffer: read it into its own buffer, sized
                // from its header (already checked against --max-packet-size).
                let target = want.max(have + READ_CHUNK);
                conn.partial.resize(target, 0);
                let r = read(&mut conn.socket, &mut conn.partial[have..]);
                let n = match r {
                    Ok(n) => n,
                    Err(_) => 0,
                };
                conn.partial.truncate(have + n);
                match r {
                    Ok(0) => {
                        conn.closing = Closing::AfterFlush;
                        self.closing.push(key);
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        conn.closing = Closing::Now;
                        self.closing.push(key);
                        break;
                    }
                }
                let buf = std::mem::take(&mut conn.partial);
                let used = self.dispatch_input(key, &buf);
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.partial = buf[used..].to_vec();
                }
                (n, target - have)
            };
            // A read shorter than the room offered drained the socket: on Linux an
            // edge-triggered poll reports every later arrival, so the extra read that would
            // only return WouldBlock is skipped (one system call less per message).
            if n < room && !to_end {
                break;
            }
            total += n;
            if total >= READ_BUDGET {
                if let Some(conn) = self.conns.get_mut(key)
                    && !conn.read_again
                {
                    conn.read_again = true;
                    self.read_again.push(key);
                }
                break;
            }
        }
        self.scratch = scratch;
    }

    /// Dispatches every complete frame at the start of `buf`; returns the bytes used.
    fn dispatch_input(&mut self, key: usize, buf: &[u8]) -> usize {
        let mut pos = 0;
        loop {
            if self.conns.get(key).is_none_or(|c| c.closing != Closing::No) {
                return buf.len();
            }
            match protocol::decode(&buf[pos..], self.config.max_packet, self.config.max_line) {
                Ok(Decoded::Frame(frame, used)) => {
                    if self.config.shards > 1
                        && self.config.handoff != Handoff::Off
                        && let Some(to) = self.handoff_target(key, &frame)
                    {
                        self.hand_off(key, to, &buf[pos..]);
                        return buf.len();
                    }
                    pos += used;
                    self.conns[key].partial_need = 0;
                    self.handle_frame(key, frame);
                    self.drain_local();
                }
                Ok(Decoded::Incomplete { need }) => {
                    self.conns[key].partial_need = need.unwrap_or(0);
                    return pos;
                }
                Err(e) => {
                    self.reject(key, &e);
                    return buf.len();
                }
            }
        }
    }

    // ---- routing ----

    fn route(&mut self, to: ShardId, msg: Msg) {
        if to == self.id {
            self.local.push_back(msg);
        } else {
            self.mailbox.send(to, msg);
        }
    }

    fn route_all(&mut self, out: &mut Outbox) {
        for (to, msg) in out.drain(..) {
            self.route(to, msg);
        }
    }

    fn drain_local(&mut self) {
        while let Some(msg) = self.local.pop_front() {
            self.dispatch(msg);
        }
    }

    fn dispatch(&mut self, msg: Msg) {
        match msg {
            Msg::Reply { .. }
            | Msg::Assign { .. }
            | Msg::Empty { .. }
            | Msg::Forward { .. }
            | Msg::Noop { .. }
            | Msg::Revoked { .. }
            | Msg::Answer { .. }
            | Msg::Ask {
                query: message::Query::Connections,
                ..
            } => self.home_message(msg),
            Msg::Adopt(stream) => self.adopt(stream),
            Msg::HandOff(h) => {
                let message::HandOff { conn, pending } = *h;
                self.settle(conn, &pending);
            }
            msg => {
                let mut out = std::mem::take(&mut self.owner_out);
                self.owner.handle(msg, &mut out);
                self.route_all(&mut out);
                self.owner_out = out;
            }
        }
    }

    // ---- writing and closing ----

    /// Marks a connection to be flushed at the end of the turn.
    fn queue_flush(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key)
            && !c.flush_queued
        {
            c.flush_queued = true;
            self.flush_list.push(key);
        }
    }

    fn flush_all(&mut self) {
        for key in std::mem::take(&mut self.flush_list) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.flush_queued = false;
            if conn.out.backlog() > self.config.max_output {
                log::warn!(
                    "closing connection {} ({}): more than {} bytes of output unread",
                    conn.fd,
                    conn.ip,
                    self.config.max_output
                );
                conn.closing = Closing::Now;
                self.closing.push(key);
                continue;
            }
            match conn.out.flush(&mut conn.socket) {
                Ok(true) => {
                    if conn.closing == Closing::AfterFlush && conn.out.in_order() {
                        self.closing.push(key);
                    }
                }
                Ok(false) => {}
                Err(_) => {
                    conn.closing = Closing::Now;
                    self.closing.push(key);
                }
            }
        }
    }

    fn reap(&mut self) {
        for key in std::mem::take(&mut self.closing) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            // A connection closing after its output waits until that output is written.
            if conn.closing == Closing::AfterFlush && (conn.out.has_bytes() || !conn.out.in_order())
            {
                if conn.out.has_bytes() {
                    self.queue_flush(key);
                }
                continue;
            }
            let mut conn = self.conns.remove(key);
            self.generations[key] = self.generations[key].wrapping_add(1);
            // Read what the peer still sent before closing: closing a socket with unread input
            // sends a reset, which can destroy the answer just written (an ERROR, say).
            for _ in 0..16 {
                match read(&mut conn.socket, &mut self.scratch) {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
            let _ = self.poll.registry().deregister(&mut conn.socket);
            self.mailbox
                .peers()
                .control
                .connections
                .fetch_sub(1, Ordering::Relaxed);
            for owner in 0..self.config.shards {
                if conn.owners & (1 << owner) != 0 {
                    self.route(owner, Msg::WorkerGone { worker: conn.id });
                }
            }
            if !conn.waiting.is_empty() {
                let shards = self.config.shards as u64;
                for owner in 0..self.config.shards {
                    let jobs: Vec<u64> = conn
                        .waiting
                        .iter()
                        .copied()
                        .filter(|n| n % shards == owner as u64)
                        .collect();
                    if !jobs.is_empty() {
                        self.route(
                            owner,
                            Msg::ClientGone {
                                client: conn.id,
                                jobs,
                            },
                        );
                    }
                }
            }
            self.drain_local();
        }
    }
}

fn read(socket: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match socket.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}
