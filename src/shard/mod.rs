//! A shard: one thread, one `mio::Poll` loop over a slab of connections, and the owner state of
//! the functions hashed to it. With `--event-loop io-uring` the loop waits on an io_uring ring
//! instead, which moves the Gearman connections' bytes and watches the poll for the rest
//! (`uring.rs`, `home_ring.rs`); the turn below is the same.
//!
//! Each shard plays two roles, each a type: `Home` reads, parses and writes the sockets it
//! holds (here, `home.rs` for packets, `admin.rs` for admin commands); `OwnerRole` holds the
//! queues, jobs and worker entries of its functions (`crate::jobs::Owner`). [`Shard`] holds
//! both and runs the loop; the home gets the owner only to hand it the messages it sent
//! itself, never to look inside. Roles talk only through the typed messages of
//! [`crate::message`] (`ToOwner`, `ToHome`), wrapped with the loop's own connection moves in
//! [`mail::Mail`]. `router.rs` decides where each goes: to another shard through the
//! [`mailbox`], to itself through a local queue drained after every packet, so with one shard
//! nothing crosses a thread and the output order equals the input order. Every step of the
//! owner role (a message, timers, a store acknowledgement) goes through `Shard::run_owner`.
//!
//! One loop turn (after redis and pelikan):
//! 1. poll (not blocking when work is left over, see `mailbox` for the sleep protocol);
//! 2. accept, read and dispatch every ready connection, draining local messages after each
//!    packet;
//! 3. handle messages from other shards; revisit connections with input left over;
//! 4. run due timers (epoch jobs, CAN_DO_TIMEOUT);
//! 5. flush every connection written to in this turn, once;
//! 6. reap connections marked for closing and tell their owners;
//! 7. push outboxes into the rings and wake sleeping peers; read again the connections held
//!    back while a peer they feed was congested (see `mailbox`, and ARCHITECTURE.md
//!    "Backpressure").

mod admin;
pub mod conn;
mod home;
mod home_ring;
pub mod http;
pub mod mail;
pub mod mailbox;
mod metrics;
mod router;
pub mod tls;
pub(crate) mod uring;

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::acl::{Acl, AdminNets};
pub use crate::config::{EventLoop, Handoff};
use crate::jobs::{Outbox, Owner, OwnerConfig};
use crate::message::{ConnId, ShardId, ToOwner};
use crate::protocol::{self, Decoded};
use crate::store::writer::{StoreLink, StoreState};
use conn::{Closing, Conn};
use mail::Mail;
use mailbox::Mailbox;
use router::Router;
use tls::TlsState;
use uring::Uring;

/// Readiness events taken per poll.
const EVENTS: usize = 1024;

/// The token of the shard's waker.
pub const WAKER: Token = Token(usize::MAX);
const LISTENER_BASE: usize = usize::MAX - 64;

/// Bytes read per system call into the shard's read buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes one connection may feed per loop turn before others get a go.
const READ_BUDGET: usize = 1024 * 1024;
/// Messages taken from each inbound ring per loop turn.
const RING_BUDGET: usize = 4096;
/// How often accepting is tried again while out of descriptors, when no connection closes.
const ACCEPT_RETRY: Duration = Duration::from_secs(1);
/// How often connections waiting for the input budget are tried again.
const STARVED_RETRY: Duration = Duration::from_millis(10);

/// A listening socket, and whether its connections speak TLS.
pub struct Listener {
    /// The socket.
    pub socket: mio::net::TcpListener,
    /// Connections accepted here start with a TLS handshake.
    pub tls: bool,
    /// Connections accepted here speak HTTP (`-r http`).
    pub http: bool,
    /// Connections accepted here scrape the metrics (`--metrics-port`).
    pub metrics: bool,
}

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
    /// Bytes of incomplete frames larger than the read buffer held across the server.
    pub max_input: usize,
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
    /// `--event-loop`, after the probe: io-uring only where it works.
    pub event_loop: EventLoop,
    /// The TLS configuration of the TLS ports (`--ssl`, `--ssl-port`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// `--acl`: what each identity may do; None: everything, as gearmand.
    pub acl: Option<Arc<Acl>>,
    /// `--admin-allow`: addresses that may administer.
    pub admin_nets: AdminNets,
    /// `--metrics-max-functions`: functions with series of their own in a scrape.
    pub metrics_max_functions: u32,
    /// `--metrics-max-connections`: metrics connections open at once, server-wide.
    pub metrics_max_connections: usize,
    /// `--metrics-timeout`: how long a metrics connection may stay open.
    pub metrics_timeout: Duration,
    /// `--metrics-min-interval`: the least time between two scrapes this shard starts.
    pub metrics_min_interval: Duration,
}

/// The first connection of a deadline-ordered queue (TLS handshakes, metrics connections)
/// whose deadline has come, taken off the queue.
fn pop_due(queue: &mut VecDeque<(Instant, ConnId)>, now: Instant) -> Option<ConnId> {
    match queue.front() {
        Some(&(deadline, _)) if deadline <= now => queue.pop_front().map(|(_, id)| id),
        _ => None,
    }
}

/// A gathered admin answer in progress.
struct Gather {
    conn: ConnId,
    seq: crate::message::Seq,
    kind: admin::GatherKind,
    parts: Vec<crate::message::Part>,
    remaining: usize,
}

/// One shard thread: its home role, its owner role, and the loop that drives both.
pub struct Shard {
    home: Home,
    owner: OwnerRole,
    /// The store thread, when a queue store is configured.
    store: Option<StoreLink>,
}

/// The owner role: the jobs of the functions hashed to this shard (`crate::jobs::Owner`),
/// reached only by messages.
struct OwnerRole {
    owner: Owner,
    /// What the owner said in its last step, on its way through the router.
    out: Outbox,
}

impl OwnerRole {
    /// One step of the owner (a message, timers, a store acknowledgement, a restored job),
    /// with what it says sent on through `router`.
    fn step(&mut self, router: &mut Router, step: impl FnOnce(&mut Owner, &mut Outbox)) {
        step(&mut self.owner, &mut self.out);
        router.send_all(&mut self.out);
    }
}

/// The home role: the connections this shard holds, read, parsed and written here. It
/// reaches owners, its own included, only through `router`.
struct Home {
    id: ShardId,
    config: Arc<ShardConfig>,
    poll: Poll,
    conns: Slab<Conn>,
    /// Generation of each slab slot, bumped when the slot is freed.
    generations: Vec<u32>,
    listeners: Vec<Listener>,
    next_home: usize,
    router: Router,
    inbound: VecDeque<Mail>,
    /// The read buffer every connection reads into; only an incomplete frame is kept per
    /// connection, so idle connections hold no input memory.
    scratch: Vec<u8>,
    /// Where TLS connections' ciphertext is read to before it is decrypted into `scratch`
    /// (empty without TLS ports).
    wire: Vec<u8>,
    /// TLS connections in their handshake, by deadline (all get the same timeout, so the
    /// queue is in deadline order).
    handshakes: VecDeque<(Instant, ConnId)>,
    /// Metrics connections by the deadline (`--metrics-timeout` after they came) past which
    /// they are closed, whatever they are doing; one delay for all, so in deadline order.
    metrics_deadlines: VecDeque<(Instant, ConnId)>,
    /// Metrics requests waiting for their turn (`--metrics-min-interval`), oldest first, with
    /// whether each asked in HTTP/1.0.
    scrapes_waiting: VecDeque<(ConnId, bool)>,
    flush_list: Vec<usize>,
    read_again: Vec<usize>,
    closing: Vec<usize>,
    /// Connections not read while a shard they feed is congested.
    paused: Vec<usize>,
    /// Connections in the middle of a large frame, waiting for the input budget.
    starved: Vec<usize>,
    /// When the starved connections are tried again, and when their plight was last logged.
    starved_retry: Option<Instant>,
    starved_logged: Option<Instant>,
    /// Paused or starved connections to read again this turn.
    resume: Vec<usize>,
    /// While accepting is blocked (out of descriptors): when to try again regardless.
    accept_retry: Option<Instant>,
    accept_logged: Option<Instant>,
    gathers: Slab<Gather>,
    /// What the `queue` admin command shows (and the store's metrics).
    store_state: Option<Arc<StoreState>>,
    /// What this home counts for the metrics; only this shard writes it.
    stats: crate::metrics::HomeCounters,
    /// With `--event-loop io-uring`: the ring the Gearman connections' reads and writes go
    /// through (see `uring`); `poll` then keeps the rest, and the ring waits on it.
    uring: Option<Uring>,
    /// The ring's completions of this turn (kept to reuse the allocation).
    done: Vec<uring::Done>,
    /// The last epoll poll filled the events buffer: poll again without waiting for the ring
    /// to say so (it says so only when something new arrives).
    epoll_again: bool,
}

impl Shard {
    /// A shard with its poll (whose waker is in `mailbox`'s peers) and, for the accepting
    /// shard, the listeners.
    pub fn new(
        id: ShardId,
        config: Arc<ShardConfig>,
        poll: Poll,
        mailbox: Mailbox,
        mut listeners: Vec<Listener>,
        store: Option<(StoreLink, Arc<StoreState>)>,
    ) -> io::Result<Shard> {
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry().register(
                &mut l.socket,
                Token(LISTENER_BASE + i),
                Interest::READABLE,
            )?;
        }
        let wire = if config.tls.is_some() {
            vec![0; tls::WIRE_CHUNK]
        } else {
            Vec::new()
        };
        let owner = OwnerRole {
            owner: Owner::new(id, config.shards, config.owner.clone()),
            out: Vec::new(),
        };
        let home = Home {
            id,
            config,
            poll,
            conns: Slab::new(),
            generations: Vec::new(),
            listeners,
            next_home: 0,
            router: Router::new(id, mailbox),
            inbound: VecDeque::new(),
            scratch: vec![0; READ_CHUNK],
            wire,
            handshakes: VecDeque::new(),
            metrics_deadlines: VecDeque::new(),
            scrapes_waiting: VecDeque::new(),
            flush_list: Vec::new(),
            read_again: Vec::new(),
            closing: Vec::new(),
            paused: Vec::new(),
            starved: Vec::new(),
            starved_retry: None,
            starved_logged: None,
            resume: Vec::new(),
            accept_retry: None,
            accept_logged: None,
            gathers: Slab::new(),
            store_state: store.as_ref().map(|s| s.1.clone()),
            stats: Default::default(),
            uring: None,
            done: Vec::new(),
            epoll_again: false,
        };
        Ok(Shard {
            home,
            owner,
            store: store.map(|s| s.0),
        })
    }

    /// Queues a job read back from the store at start-up (before any connection).
    pub fn restore(&mut self, job: crate::store::StoredJob) {
        let (home, owner) = (&mut self.home, &mut self.owner);
        owner.step(&mut home.router, |o, out| o.restore(job, out));
        home.drain_local(owner);
    }

    /// Runs until told to stop.
    pub fn run(mut self) {
        if self.home.config.event_loop == EventLoop::IoUring {
            // Made here, on the shard's own thread: the ring accepts submissions from the
            // thread that made it only (IORING_SETUP_SINGLE_ISSUER).
            match Uring::new(self.home.poll.as_raw_fd()) {
                Ok(u) => self.home.uring = Some(u),
                Err(e) => log::warn!("shard {}: io_uring: {e}; using epoll", self.home.id),
            }
        }
        let mut events = Events::with_capacity(EVENTS);
        let peers = self.home.router.mailbox.peers().clone();
        // The loop's clock: read once before and once after each poll, for the busy time and
        // for the owner's job stamps (so the job path itself reads no clock).
        let start = Instant::now();
        let mut woke = start;
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
                .owner
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if graceful {
                timeout = Some(timeout.map_or(Duration::from_millis(50), |t| {
                    t.min(Duration::from_millis(50))
                }));
            }
            let handshake = self.home.handshakes.front().map(|h| h.0);
            let scrape = self.home.metrics_deadlines.front().map(|h| h.0);
            let scrape_turn = self.home.next_scrape_turn();
            for retry in [
                self.home.starved_retry,
                self.home.accept_retry,
                handshake,
                scrape,
                scrape_turn,
            ]
            .into_iter()
            .flatten()
            {
                let wait = retry.saturating_duration_since(Instant::now());
                timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
            }
            let busy = !self.home.read_again.is_empty()
                || !self.home.resume.is_empty()
                || self.home.router.has_local()
                || !self.home.flush_list.is_empty()
                || !self.home.closing.is_empty()
                || self.home.epoll_again;
            if busy || !self.home.router.mailbox.prepare_sleep() {
                timeout = Some(Duration::ZERO);
            }
            let sleeps = Instant::now();
            self.home.stats.busy_ns += sleeps.saturating_duration_since(woke).as_nanos() as u64;
            let waited = match &mut self.home.uring {
                Some(uring) => uring.wait(timeout),
                None => self.home.poll.poll(&mut events, timeout),
            };
            if let Err(e) = waited
                && e.kind() != io::ErrorKind::Interrupted
            {
                log::error!("shard {}: poll failed: {e}", self.home.id);
                break;
            }
            woke = Instant::now();
            self.owner
                .owner
                .set_now_ms(woke.duration_since(start).as_millis() as u32);
            self.home.router.mailbox.awake();
            let mut polled = true;
            if self.home.uring.is_some() {
                let readable = self.home.complete_io(&mut self.owner);
                polled = readable || self.home.epoll_again;
                if polled {
                    if let Err(e) = self.home.poll.poll(&mut events, Some(Duration::ZERO))
                        && e.kind() != io::ErrorKind::Interrupted
                    {
                        log::error!("shard {}: poll failed: {e}", self.home.id);
                        break;
                    }
                    self.home.epoll_again = events.iter().count() >= EVENTS;
                }
            }
            for event in events.iter().filter(|_| polled) {
                match event.token() {
                    WAKER => {}
                    Token(t) if t >= LISTENER_BASE => {
                        self.home.accept(&mut self.owner, t - LISTENER_BASE)
                    }
                    Token(key) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            // A peer that closed must be read to its end: no later event
                            // will tell of the EOF.
                            let to_end = event.is_read_closed() || event.is_error();
                            self.home.read_conn(&mut self.owner, key, to_end);
                        }
                        if event.is_writable() {
                            self.home.queue_flush(key);
                        }
                    }
                }
            }
            self.home.accept_again(&mut self.owner);
            self.store_acks();
            self.home
                .router
                .mailbox
                .receive(RING_BUDGET, &mut self.home.inbound);
            while let Some(msg) = self.home.inbound.pop_front() {
                self.home.dispatch(&mut self.owner, msg);
                self.home.drain_local(&mut self.owner);
            }
            for key in std::mem::take(&mut self.home.resume) {
                self.home.resume_conn(&mut self.owner, key);
            }
            for key in std::mem::take(&mut self.home.read_again) {
                if let Some(c) = self.home.conns.get_mut(key) {
                    c.read_again = false;
                    self.home.read_conn(&mut self.owner, key, true);
                }
            }
            if self
                .owner
                .owner
                .next_deadline()
                .is_some_and(|d| d <= Instant::now())
            {
                self.owner
                    .step(&mut self.home.router, |o, out| o.run_timers(out));
                self.home.drain_local(&mut self.owner);
            }
            if !self.home.handshakes.is_empty() {
                self.home.expire_handshakes();
            }
            if !self.home.metrics_deadlines.is_empty() {
                self.home.expire_metrics();
            }
            if !self.home.scrapes_waiting.is_empty() {
                self.home.start_waiting_scrape(&mut self.owner);
            }
            self.home.flush_all();
            self.home.reap(&mut self.owner);
            // Reaping tells owners, whose answers (a requeue's NOOP, say) go out this turn.
            self.home.flush_all();
            self.store_send();
            self.home.router.mailbox.flush();
            self.home.release_held();
        }
        self.home.finish_io();
        self.home.listeners.clear();
    }

    /// While a graceful shutdown waits: drop the listeners and publish the job count; the
    /// accepting shard stops everyone once all counts are zero.
    fn graceful_step(&mut self) {
        for mut l in self.home.listeners.drain(..) {
            let _ = self.home.poll.registry().deregister(&mut l.socket);
        }
        let peers = self.home.router.mailbox.peers().clone();
        peers.shards[self.home.id as usize]
            .jobs
            .store(self.owner.owner.job_count(), Ordering::Release);
        if self.home.id == 0
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
        if let Some((id, ops)) = self.owner.owner.take_store_ops() {
            let batch = crate::store::writer::Batch {
                shard: self.home.id,
                id,
                ops,
            };
            if store.tx.send(batch).is_err() {
                log::error!("shard {}: the store thread is gone", self.home.id);
            }
        }
    }

    /// Acknowledges (or refuses) the jobs of batches the store thread finished.
    fn store_acks(&mut self) {
        let Some(store) = &self.store else { return };
        let acks: Vec<_> = store.acks.try_iter().collect();
        for ack in acks {
            let result = ack.result.as_ref().map(|_| ()).map_err(|e| e.as_str());
            self.owner.step(&mut self.home.router, |o, out| {
                o.durable(ack.upto, result, out)
            });
            self.home.drain_local(&mut self.owner);
        }
    }
}

impl Home {
    // ---- accepting ----

    /// Accepts every connection waiting on listener `i` (the listener is edge-triggered, so
    /// until it would block). Out of descriptors, it stops (see [`Shard::accept_blocked`]).
    fn accept(&mut self, owner: &mut OwnerRole, i: usize) {
        loop {
            let Some(listener) = self.listeners.get(i) else {
                return;
            };
            let (tls, http, metrics) = (listener.tls, listener.http, listener.metrics);
            let (stream, addr) = match listener.socket.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => return self.accept_blocked(e),
            };
            let control = &self.router.mailbox.peers().control;
            if control.connections.load(Ordering::Relaxed) >= self.config.max_connections {
                log::warn!(
                    "refusing a connection: --max-connections {} reached",
                    self.config.max_connections
                );
                drop(stream);
                continue;
            }
            if metrics
                && control.metrics_connections.load(Ordering::Relaxed)
                    >= self.config.metrics_max_connections
            {
                log::warn!(
                    "refusing a metrics connection: --metrics-max-connections {} reached",
                    self.config.metrics_max_connections
                );
                drop(stream);
                continue;
            }
            if metrics {
                control.metrics_connections.fetch_add(1, Ordering::Relaxed);
            }
            control.connections.fetch_add(1, Ordering::Relaxed);
            self.stats.accepted += 1;
            let sock = socket2::SockRef::from(&stream);
            let _ = sock.set_tcp_nodelay(true);
            let _ = sock.set_keepalive(true);
            let home = (self.next_home % self.config.shards as usize) as ShardId;
            self.next_home += 1;
            if home == self.id {
                self.adopt(owner, stream, addr, tls, http, metrics);
            } else {
                self.router.send(
                    home,
                    Mail::Adopt(Box::new(mail::Adopt {
                        stream,
                        addr,
                        tls,
                        http,
                        metrics,
                    })),
                );
            }
        }
    }

    /// accept() failed, most often for want of a descriptor (EMFILE, ENFILE): the pending
    /// connections stay in the listen queue, the connections already open go on, and
    /// accepting resumes when a connection closes on any shard (which wakes this one) or,
    /// for descriptors freed elsewhere, after [`ACCEPT_RETRY`]. Logged once a second at most.
    fn accept_blocked(&mut self, e: io::Error) {
        let now = Instant::now();
        self.accept_retry = Some(now + ACCEPT_RETRY);
        self.router
            .mailbox
            .peers()
            .control
            .accept_blocked
            .store(true, Ordering::SeqCst);
        if self
            .accept_logged
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.accept_logged = Some(now);
            log::error!(
                "accept failed: {e} ({} connections open); accepting again when one closes",
                self.router
                    .mailbox
                    .peers()
                    .control
                    .connections
                    .load(Ordering::Relaxed)
            );
        }
    }

    /// Accepts again after [`Shard::accept_blocked`], once a connection closed or the retry
    /// time came.
    fn accept_again(&mut self, owner: &mut OwnerRole) {
        let Some(retry) = self.accept_retry else {
            return;
        };
        let freed = !self
            .router
            .mailbox
            .peers()
            .control
            .accept_blocked
            .load(Ordering::SeqCst);
        if freed || retry <= Instant::now() {
            self.accept_retry = None;
            for i in 0..self.listeners.len() {
                self.accept(owner, i);
            }
        }
    }

    fn adopt(
        &mut self,
        owner: &mut OwnerRole,
        stream: TcpStream,
        addr: std::net::SocketAddr,
        tls: bool,
        http: bool,
        metrics: bool,
    ) {
        let fd = stream.as_raw_fd();
        let mut conn = Conn::new(
            self.next_id(),
            stream,
            fd,
            addr.ip().to_string(),
            self.config.exceptions,
        );
        conn.admin_addr = self.config.admin_nets.allows(addr.ip());
        if http {
            conn.http = Some(Box::default());
        }
        if metrics {
            conn.metrics = Some(false);
        }
        if tls && let Some(config) = &self.config.tls {
            match rustls::ServerConnection::new(config.clone()) {
                Ok(session) => conn.tls = Some(Box::new(TlsState::new(session))),
                Err(e) => {
                    log::error!("closing connection {fd} ({}): TLS: {e}", conn.ip);
                    self.router
                        .mailbox
                        .peers()
                        .control
                        .connections
                        .fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        // A fresh socket needs no first read: registering one with bytes already waiting
        // reports it readable at once.
        if let Some(key) = self.settle(owner, conn, &[], false) {
            if tls {
                let deadline = Instant::now() + self.config.handshake_timeout;
                self.handshakes.push_back((deadline, self.conns[key].id));
            }
            if metrics {
                let deadline = Instant::now() + self.config.metrics_timeout;
                self.metrics_deadlines
                    .push_back((deadline, self.conns[key].id));
            }
        }
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
    /// brought (a hand-off's), then reads whatever else is waiting. Returns its key.
    fn settle(
        &mut self,
        owner: &mut OwnerRole,
        mut conn: Conn,
        pending: &[u8],
        read_now: bool,
    ) -> Option<usize> {
        conn.id = self.next_id();
        let key = conn.id.slot as usize;
        // On an io_uring shard, plain Gearman connections are read and written through the
        // ring; TLS, HTTP and metrics connections stay on epoll.
        let on_ring = self.uring.is_some()
            && conn.tls.is_none()
            && conn.http.is_none()
            && conn.metrics.is_none();
        if let Some(uring) = self.uring.as_mut().filter(|_| on_ring) {
            conn.io = Some(uring.attach(key, conn.fd));
        } else if let Err(e) = self.poll.registry().register(
            &mut conn.socket,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::error!("cannot register a connection: {e}");
            let control = &self.router.mailbox.peers().control;
            control.connections.fetch_sub(1, Ordering::Relaxed);
            if conn.metrics.is_some() {
                control.metrics_connections.fetch_sub(1, Ordering::Relaxed);
            }
            return None;
        }
        let inserted = self.conns.insert(conn);
        debug_assert_eq!(inserted, key);
        if !pending.is_empty() {
            let used = self.dispatch_input(owner, key, pending);
            if let Some(conn) = self.conns.get_mut(key) {
                conn.partial.extend_from_slice(&pending[used..]);
                self.recharge(key);
            }
        }
        if read_now || on_ring {
            // Bytes may already be waiting; edge-triggered polling would not tell us again
            // (and on the ring, a connection is read only once a receive is armed).
            self.read_conn(owner, key, true);
        }
        Some(key)
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
        if self.config.acl.is_some() {
            // A packet the ACL refuses is answered here; it decides no home.
            let allowed = conn.grant.as_ref().is_some_and(|g| match p.ty {
                CanDo | CanDoTimeout => g.may_register(function),
                _ => g.may_invoke(function),
            });
            if !allowed {
                return None;
            }
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
            && !conn.sleep.is_asleep();
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
        // Moved only between packets of a completed receive, never with one armed: bytes a
        // receive took after the move would be lost.
        debug_assert!(
            conn.io
                .is_none_or(|slot| !self.uring.as_ref().is_some_and(|u| u.receiving(slot)))
        );
        self.release_socket(&mut conn);
        self.return_input(&mut conn);
        conn.flush_queued = false;
        conn.read_again = false;
        conn.partial_need = 0;
        conn.feeds = 0;
        self.router.send(
            to,
            Mail::HandOff(Box::new(mail::HandOff {
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
    fn read_conn(&mut self, owner: &mut OwnerRole, key: usize, to_end: bool) {
        if self.conns.get(key).is_some_and(|c| c.io.is_some()) {
            return self.arm_recv(key);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut wire = std::mem::take(&mut self.wire);
        let mut total = 0;
        while let Some(conn) = self.conns.get_mut(key) {
            if conn.closing != Closing::No || conn.paused {
                break;
            }
            let tls = conn.tls.is_some();
            let have = conn.partial.len();
            let want = conn.partial_need.max(have);
            let (n, room) = if want + 4096 <= scratch.len() {
                scratch[..have].copy_from_slice(&conn.partial);
                let r = read_from(conn, &mut wire, &mut scratch[have..]);
                if tls && !self.tls_progress(key, &r) {
                    break;
                }
                let conn = &mut self.conns[key];
                match r {
                    Ok(0) => {
                        conn.closing = Closing::AfterFlush;
                        self.closing.push(key);
                        break;
                    }
                    Ok(n) => {
                        self.stats.bytes_in += n as u64;
                        conn.partial.clear();
                        let end = have + n;
                        let used = self.dispatch_input(owner, key, &scratch[..end]);
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
                // A frame larger than the read buffer: read into its own buffer, which grows
                // with the bytes that arrive (at most doubling what is held, never past the
                // frame its header announced), not with what the header announced, and draws
                // on the server-wide input budget.
                let need = conn.partial_need;
                let room = if need > have {
                    (need - have).min(have.max(READ_CHUNK))
                } else {
                    READ_CHUNK
                };
                if !self.grow_partial(key, have + room) {
                    self.starve(key);
                    break;
                }
                let conn = &mut self.conns[key];
                conn.partial.resize(have + room, 0);
                let mut partial = std::mem::take(&mut conn.partial);
                let r = read_from(conn, &mut wire, &mut partial[have..]);
                conn.partial = partial;
                if tls && !self.tls_progress(key, &r) {
                    let conn = &mut self.conns[key];
                    conn.partial.truncate(have);
                    break;
                }
                let conn = &mut self.conns[key];
                let n = match r {
                    Ok(n) => n,
                    Err(_) => 0,
                };
                self.stats.bytes_in += n as u64;
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
                self.dispatch_partial(owner, key);
                (n, room)
            };
            // A read shorter than the room offered drained the socket: on Linux an
            // edge-triggered poll reports every later arrival, so the extra read that would
            // only return WouldBlock is skipped (one system call less per message). Not so
            // through TLS, where plaintext and ciphertext lengths differ.
            if n < room && !to_end && !tls {
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
        self.wire = wire;
    }

    /// Dispatches the complete frames at the start of a connection's own buffer (`partial`)
    /// and keeps the rest; a buffer that a large frame grew is given back once it is done.
    fn dispatch_partial(&mut self, owner: &mut OwnerRole, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let buf = std::mem::take(&mut conn.partial);
        let used = self.dispatch_input(owner, key, &buf);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.partial = buf;
            conn.partial.drain(..used);
            if conn.partial.capacity() > READ_CHUNK && conn.partial.len() <= READ_CHUNK {
                // The large frame is done: give its buffer back.
                conn.partial.shrink_to(READ_CHUNK);
            }
            self.recharge(key);
        }
    }

    /// Dispatches every complete frame at the start of `buf`; returns the bytes used.
    fn dispatch_input(&mut self, owner: &mut OwnerRole, key: usize, buf: &[u8]) -> usize {
        match self.conns.get(key) {
            Some(c) if c.http.is_some() => return self.http_input(owner, key, buf),
            Some(c) if c.metrics.is_some() => return self.metrics_input(owner, key, buf),
            _ => {}
        }
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
                    self.router.take_sent();
                    self.handle_frame(key, frame);
                    self.drain_local(owner);
                    let sent = self.router.take_sent();
                    if let Some(conn) = self.conns.get_mut(key)
                        && {
                            conn.feeds |= sent;
                            conn.feeds & self.router.mailbox.congested() != 0
                        }
                        && conn.closing == Closing::No
                    {
                        // A shard this connection feeds has a full ring and a full outbox:
                        // read nothing more from it (the rest of `buf` waits in `partial`)
                        // until that drains.
                        conn.paused = true;
                        self.paused.push(key);
                        return pos;
                    }
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

    // ---- holding input back ----

    /// Grows a connection's large-frame buffer to `len` bytes if the server-wide input budget
    /// has room for it.
    fn grow_partial(&mut self, key: usize, len: usize) -> bool {
        let conn = &mut self.conns[key];
        if len <= conn.partial.capacity() {
            return true;
        }
        let more = len.saturating_sub(conn.partial_charged);
        let control = &self.router.mailbox.peers().control;
        let total = &control.input_buffered;
        if total.fetch_add(more, Ordering::Relaxed) + more > self.config.max_input
            && !conn.overdraft
        {
            // Past the budget, one connection at a time may still finish its frame, so
            // connections that each hold part of the budget never wait on one another.
            if control
                .overdraft_taken
                .compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                total.fetch_sub(more, Ordering::Relaxed);
                return false;
            }
            conn.overdraft = true;
        }
        conn.partial_charged += more;
        conn.partial.reserve_exact(len - conn.partial.len());
        true
    }

    /// Brings a connection's draw on the input budget in line with its buffer: a buffer
    /// larger than the read buffer draws its whole capacity, a smaller one nothing.
    fn recharge(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let cap = conn.partial.capacity();
        let due = if cap > READ_CHUNK { cap } else { 0 };
        let control = &self.router.mailbox.peers().control;
        if due == 0 && conn.overdraft {
            conn.overdraft = false;
            control.overdraft_taken.store(false, Ordering::Relaxed);
        }
        if due == conn.partial_charged {
            return;
        }
        let total = &control.input_buffered;
        if due > conn.partial_charged {
            total.fetch_add(due - conn.partial_charged, Ordering::Relaxed);
        } else {
            total.fetch_sub(conn.partial_charged - due, Ordering::Relaxed);
        }
        conn.partial_charged = due;
    }

    /// Gives back what a connection that leaves this shard drew on the input budget.
    fn return_input(&self, conn: &mut Conn) {
        let control = &self.router.mailbox.peers().control;
        let bytes = std::mem::take(&mut conn.partial_charged);
        if bytes > 0 {
            control.input_buffered.fetch_sub(bytes, Ordering::Relaxed);
        }
        if std::mem::take(&mut conn.overdraft) {
            control.overdraft_taken.store(false, Ordering::Relaxed);
        }
    }

    /// Stops reading a connection whose large frame cannot grow within the input budget; it
    /// is tried again every [`STARVED_RETRY`].
    fn starve(&mut self, key: usize) {
        self.conns[key].paused = true;
        self.starved.push(key);
        let now = Instant::now();
        self.starved_retry.get_or_insert(now + STARVED_RETRY);
        if self
            .starved_logged
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.starved_logged = Some(now);
            log::warn!(
                "shard {}: --max-input-buffer {} reached; {} connection(s) in the middle of a \
                 large packet wait for room",
                self.id,
                self.config.max_input,
                self.starved.len()
            );
        }
    }

    /// At the end of a turn: reads again the connections that no congested shard holds back,
    /// and (every [`STARVED_RETRY`]) those that waited for the input budget.
    fn release_held(&mut self) {
        if !self.paused.is_empty() {
            let congested = self.router.mailbox.congested();
            let (conns, resume) = (&self.conns, &mut self.resume);
            self.paused.retain(|&key| match conns.get(key) {
                Some(c) if c.paused && c.feeds & congested != 0 => true,
                Some(c) if c.paused => {
                    resume.push(key);
                    false
                }
                _ => false,
            });
        }
        if let Some(retry) = self.starved_retry
            && retry <= Instant::now()
        {
            self.starved_retry = None;
            self.resume.append(&mut self.starved);
        }
    }

    /// Handles the complete frames a held connection still has, then reads it again.
    fn resume_conn(&mut self, owner: &mut OwnerRole, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.paused {
            // Closed meanwhile, its slot taken by a newer connection, or listed twice.
            return;
        }
        conn.paused = false;
        self.dispatch_partial(owner, key);
        if self.conns.contains(key) {
            self.read_conn(owner, key, true);
        }
    }

    // ---- routing ----

    /// Handles the messages this shard sent itself, and those they cause.
    fn drain_local(&mut self, owner: &mut OwnerRole) {
        while let Some(msg) = self.router.next_local() {
            self.dispatch(owner, msg);
        }
    }

    fn dispatch(&mut self, owner: &mut OwnerRole, mail: Mail) {
        match mail {
            Mail::Home(msg) => self.home_message(msg),
            Mail::Owner(msg) => owner.step(&mut self.router, |o, out| o.handle(msg, out)),
            Mail::Adopt(a) => self.adopt(owner, a.stream, a.addr, a.tls, a.http, a.metrics),
            Mail::HandOff(h) => {
                let mail::HandOff { conn, pending } = *h;
                self.settle(owner, conn, &pending, true);
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
            if let Some(slot) = conn.io {
                self.flush_ring(key, slot);
                continue;
            }
            let unsent = conn.out.unsent();
            let flushed = conn.flush();
            self.stats.bytes_out += (unsent - conn.out.unsent()) as u64;
            match flushed {
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

    fn reap(&mut self, owner: &mut OwnerRole) {
        for key in std::mem::take(&mut self.closing) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            // A connection closing after its output waits until that output is written.
            if conn.closing == Closing::AfterFlush && (conn.has_output() || !conn.out.in_order()) {
                if conn.has_output() {
                    self.queue_flush(key);
                }
                continue;
            }
            let mut conn = self.conns.remove(key);
            self.generations[key] = self.generations[key].wrapping_add(1);
            self.return_input(&mut conn);
            // Read what the peer still sent before closing: closing a socket with unread input
            // sends a reset, which can destroy the answer just written (an ERROR, say).
            for _ in 0..16 {
                match read(&mut conn.socket, &mut self.scratch) {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
            if let Some(tls) = &mut conn.tls {
                tls.close(&mut conn.socket);
            }
            self.release_socket(&mut conn);
            drop(conn.socket);
            let peers = self.router.mailbox.peers();
            peers.control.connections.fetch_sub(1, Ordering::Relaxed);
            if conn.metrics.is_some() {
                peers
                    .control
                    .metrics_connections
                    .fetch_sub(1, Ordering::Relaxed);
            }
            if peers.control.accept_blocked.swap(false, Ordering::SeqCst) {
                // A descriptor is free: the accepting shard may take a waiting connection.
                let _ = peers.shards[0].waker.wake();
            }
            for owner in 0..self.config.shards {
                if conn.owners & (1 << owner) != 0 {
                    self.router
                        .send_owner(owner, ToOwner::WorkerGone { worker: conn.id });
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
                        self.router.send_owner(
                            owner,
                            ToOwner::ClientGone {
                                client: conn.id,
                                jobs,
                            },
                        );
                    }
                }
            }
            self.drain_local(owner);
        }
    }
}

/// Reads what a connection sent into `buf`: from the socket, or decrypted by its TLS session
/// (reading ciphertext into `wire`).
fn read_from(conn: &mut Conn, wire: &mut [u8], buf: &mut [u8]) -> io::Result<usize> {
    match &mut conn.tls {
        None => read(&mut conn.socket, buf),
        Some(tls) => tls.read(&mut conn.socket, wire, buf),
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
