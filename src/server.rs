//! Starting and stopping the server: bind the listeners, build the shards and their rings,
//! run one thread per shard, turn signals into control flags, and join everything.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use mio::net::TcpListener;
use mio::{Poll, Waker};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};

use crate::acl::Acl;
use crate::config::{Config, EventLoop};
use crate::jobs::OwnerConfig;
use crate::shard::mailbox::{self, Control, Peers, Shared};
use crate::shard::{Listener, Shard, ShardConfig, WAKER};
use crate::store::{
    self, Backend,
    writer::{GroupCommit, StoreLink, StoreState},
};

/// The version the `version` admin command reports: gearmand's protocol version first, so
/// tools that parse it keep working, then ours.
pub const VERSION: &str = concat!("1.1.20-gearshift-", env!("CARGO_PKG_VERSION"));

/// A running server.
pub struct Server {
    peers: Arc<Peers>,
    threads: Vec<JoinHandle<()>>,
    /// The store thread; it ends once every shard has dropped its link.
    writer: Option<JoinHandle<()>>,
    addrs: Vec<SocketAddr>,
    /// Whether each of `addrs` speaks TLS.
    addrs_tls: Vec<bool>,
    /// Whether each of `addrs` speaks HTTP.
    addrs_http: Vec<bool>,
    /// Whether each of `addrs` serves metrics.
    addrs_metrics: Vec<bool>,
}

/// What the server checks about its peers, loaded from the files the configuration names
/// (before the server binds or detaches, so a bad file stops the start with a message).
#[derive(Default)]
pub struct Security {
    /// The TLS configuration, with `--ssl` or `--ssl-port`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `--acl`.
    pub acl: Option<Arc<Acl>>,
}

impl Security {
    /// Reads the certificates, key and ACL the configuration names.
    pub fn load(config: &Config) -> Result<Security, String> {
        let tls = match &config.tls {
            None => None,
            Some(t) => Some(
                crate::tls::server_config(&t.certificate, &t.key, t.ca.as_deref())
                    .map_err(|e| format!("TLS: {e}"))?,
            ),
        };
        let acl = match &config.acl {
            None => None,
            Some(path) => Some(Arc::new(
                Acl::load(path).map_err(|e| format!("--acl: {e}"))?,
            )),
        };
        Ok(Security { tls, acl })
    }
}

/// Binds every listening socket the configuration asks for: the Gearman port (speaking TLS
/// with `--ssl`), the TLS port of `--ssl-port` and the HTTP port of `-r http`, on every
/// address.
pub fn bind(config: &Config) -> io::Result<Vec<Listener>> {
    let mut listeners = Vec::new();
    let side_tls = config.tls.as_ref().and_then(|t| t.side_port);
    let main_tls = config.tls.is_some() && side_tls.is_none();
    for l in bind_port(config, config.port)? {
        listeners.push(Listener {
            socket: l,
            tls: main_tls,
            http: false,
            metrics: false,
        });
    }
    if let Some(port) = side_tls {
        for l in bind_port(config, port)? {
            listeners.push(Listener {
                socket: l,
                tls: true,
                http: false,
                metrics: false,
            });
        }
    }
    if let Some(port) = config.http_port {
        for l in bind_port(config, port)? {
            listeners.push(Listener {
                socket: l,
                tls: false,
                http: true,
                metrics: false,
            });
        }
    }
    if let Some(port) = config.metrics_port {
        let listen = config.metrics_listen.as_ref().or(config.listen.as_ref());
        for l in bind_addr(config, listen, port)? {
            listeners.push(Listener {
                socket: l,
                tls: false,
                http: false,
                metrics: true,
            });
        }
    }
    Ok(listeners)
}

/// Binds `port` on every address the configuration asks for.
fn bind_port(config: &Config, port: u16) -> io::Result<Vec<TcpListener>> {
    bind_addr(config, config.listen.as_ref(), port)
}

/// Binds `port` on `listen` (None: every address).
fn bind_addr(config: &Config, host: Option<&String>, port: u16) -> io::Result<Vec<TcpListener>> {
    let addrs: Vec<SocketAddr> = match host {
        Some(host) => (host.as_str(), port).to_socket_addrs()?.collect(),
        None => vec![
            SocketAddr::from(([0, 0, 0, 0], port)),
            SocketAddr::from(([0u16; 8], port)),
        ],
    };
    let mut listeners = Vec::new();
    let mut port = port;
    let mut last_err = None;
    for mut addr in addrs {
        // With port 0, every address gets the port the first one was given.
        if port != 0 {
            addr.set_port(port);
        }
        match listen(addr, config) {
            Ok(l) => {
                port = l.local_addr()?.port();
                listeners.push(l);
            }
            // An unset --listen binds IPv6 only where the machine has it.
            Err(e) if host.is_none() && addr.is_ipv6() => {
                log::info!("not listening on {addr}: {e}");
            }
            Err(e) => {
                last_err = Some(io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr}: {e}"),
                ));
            }
        }
    }
    match last_err {
        Some(e) => Err(e),
        None if listeners.is_empty() => Err(io::Error::other("no address to listen on")),
        None => Ok(listeners),
    }
}

/// Binds and listens on `addr`. While the address is in use (a server that just stopped, say),
/// bind() is tried again after 1, 2, 4, 6, 9, 13, ... seconds, as gearmand does, until
/// `--bind-timeout` seconds have been waited; each retry is said on stderr (the log is not
/// open yet).
fn listen(addr: SocketAddr, config: &Config) -> io::Result<TcpListener> {
    let mut waited = 0;
    for retry in 1u32.. {
        match listen_once(addr, config) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && waited < config.bind_timeout => {
                let wait = retry * retry / 3 + 1;
                eprintln!("gearshiftd: bind({addr}): {e}; trying again in {wait} s");
                std::thread::sleep(std::time::Duration::from_secs(wait.into()));
                waited += wait;
            }
            r => return r,
        }
    }
    unreachable!("retries are counted until bind succeeds or the wait is over")
}

fn listen_once(addr: SocketAddr, config: &Config) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    let (on, idle, interval, count) = config.keepalive;
    if on {
        let mut k = TcpKeepalive::new();
        if idle >= 0 {
            k = k.with_time(std::time::Duration::from_secs(idle as u64));
        }
        if interval >= 0 {
            k = k.with_interval(std::time::Duration::from_secs(interval as u64));
        }
        if count >= 0 {
            k = k.with_retries(count as u32);
        }
        socket.set_tcp_keepalive(&k)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(config.backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

impl Server {
    /// Starts the shards on already bound listeners (all handed to shard 0, which accepts and
    /// spreads connections round robin), loading the files the configuration names.
    pub fn start(config: &Config, listeners: Vec<Listener>) -> io::Result<Server> {
        let security = Security::load(config).map_err(io::Error::other)?;
        Self::start_with_store(config, listeners, None, security)
    }

    /// Like [`start`](Server::start), with a queue store (its jobs are replayed into the
    /// owners before any connection is served, and a store thread writes new ones) and the
    /// security settings already loaded.
    pub fn start_with_store(
        config: &Config,
        listeners: Vec<Listener>,
        store: Option<(Box<dyn Backend>, GroupCommit)>,
        security: Security,
    ) -> io::Result<Server> {
        let n = config.threads.max(1);
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let event_loop = match config.event_loop {
            EventLoop::IoUring => match crate::shard::uring::Uring::probe() {
                Ok(()) => {
                    log::debug!("event loop: io_uring");
                    EventLoop::IoUring
                }
                Err(e) => {
                    log::warn!(
                        "--event-loop io-uring: io_uring cannot be used here ({e}); using epoll"
                    );
                    EventLoop::Epoll
                }
            },
            EventLoop::Epoll => EventLoop::Epoll,
        };
        let shard_config = Arc::new(ShardConfig {
            shards: n,
            owner: OwnerConfig {
                handle_prefix: config.handle_prefix.as_bytes().into(),
                job_retries: config.job_retries,
                worker_wakeup: config.worker_wakeup,
                wake_retry: config.wake_retry,
                round_robin: config.round_robin,
                durable: store.is_some(),
                boot,
            },
            max_packet: config.max_packet,
            max_line: config.max_line,
            max_input: config.max_input,
            max_output: config.max_output,
            max_connections: config.max_connections,
            exceptions: config.exceptions,
            handoff: config.handoff,
            event_loop,
            buckets: config.buckets,
            verbose: config.verbose.clone(),
            version: VERSION.into(),
            tls: security.tls,
            handshake_timeout: config
                .tls
                .as_ref()
                .map_or(std::time::Duration::from_secs(10), |t| t.handshake_timeout),
            acl: security.acl,
            admin_nets: config.admin_allow.clone(),
            metrics_max_functions: config.metrics_max_functions,
            metrics_max_connections: config.metrics_max_connections,
            metrics_timeout: config.metrics_timeout,
            metrics_min_interval: config.metrics_min_interval,
        });
        let (addrs, kinds): (Vec<_>, Vec<_>) = listeners
            .iter()
            .filter_map(|l| Some((l.socket.local_addr().ok()?, (l.tls, (l.http, l.metrics)))))
            .unzip();
        let (addrs_tls, kinds): (Vec<bool>, Vec<(bool, bool)>) = kinds.into_iter().unzip();
        let (addrs_http, addrs_metrics) = kinds.into_iter().unzip();
        let mut polls = Vec::new();
        let mut shared = Vec::new();
        for _ in 0..n {
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), WAKER)?;
            shared.push(Shared::new(waker));
            polls.push(poll);
        }
        let peers = Arc::new(Peers {
            shards: shared,
            control: Control::default(),
        });
        let mailboxes = mailbox::build(peers.clone(), mailbox::RING_CAPACITY);
        let mut replayed = Vec::new();
        let mut links: Vec<Option<(StoreLink, Arc<StoreState>)>> = (0..n).map(|_| None).collect();
        let mut writer = None;
        if let Some((mut backend, limits)) = store {
            replayed = backend
                .replay()
                .map_err(|e| io::Error::other(format!("queue store: {e}")))?;
            log::info!(
                "queue store {}: {} job(s) to replay",
                backend.describe(),
                replayed.len()
            );
            let (w, l, state) = store::writer::build(backend, n as usize, peers.clone(), limits);
            for (slot, link) in links.iter_mut().zip(l) {
                *slot = Some((link, state.clone()));
            }
            writer = Some(w);
        }
        let mut listeners = Some(listeners);
        let mut shards = Vec::new();
        for (i, ((poll, mailbox), link)) in polls.into_iter().zip(mailboxes).zip(links).enumerate()
        {
            let l = if i == 0 {
                listeners.take().unwrap()
            } else {
                Vec::new()
            };
            shards.push(Shard::new(
                i as u16,
                shard_config.clone(),
                poll,
                mailbox,
                l,
                link,
            )?);
        }
        // Replay before anything is served; each job goes to its function's owner.
        for job in replayed {
            let owner = (crate::jobs::hash::placement(&job.function) % n as u64) as usize;
            shards[owner].restore(job);
        }
        let mut threads = Vec::new();
        for (i, shard) in shards.into_iter().enumerate() {
            threads.push(
                std::thread::Builder::new()
                    .name(format!("shard-{i}"))
                    .spawn(move || shard.run())?,
            );
        }
        let writer = match writer {
            Some(w) => Some(
                std::thread::Builder::new()
                    .name("store".into())
                    .spawn(move || w.run())?,
            ),
            None => None,
        };
        Ok(Server {
            peers,
            threads,
            writer,
            addrs,
            addrs_tls,
            addrs_http,
            addrs_metrics,
        })
    }

    /// The addresses listened on.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The addresses listened on whose connections speak TLS.
    pub fn tls_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.addrs_where(&self.addrs_tls)
    }

    /// The addresses listened on whose connections speak HTTP.
    pub fn http_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.addrs_where(&self.addrs_http)
    }

    /// The addresses listened on whose flag in `kind` (one per address) is set.
    fn addrs_where<'a>(&'a self, kind: &'a [bool]) -> impl Iterator<Item = SocketAddr> + 'a {
        self.addrs
            .iter()
            .zip(kind)
            .filter(|(_, k)| **k)
            .map(|(a, _)| *a)
    }

    /// The addresses listened on that serve metrics.
    pub fn metrics_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.addrs_where(&self.addrs_metrics)
    }

    /// Stops every shard: at once, or (graceful) once no jobs remain.
    pub fn shutdown(&self, graceful: bool) {
        let flag = if graceful {
            &self.peers.control.graceful
        } else {
            &self.peers.control.stop
        };
        flag.store(true, Ordering::Release);
        self.peers.wake_all();
    }

    /// Waits for every shard thread to end.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(w) = self.writer {
            let _ = w.join();
        }
    }

    /// Turns SIGTERM/SIGINT into a stop, SIGUSR1 into a graceful stop and SIGHUP into a log
    /// reopen (PROTOCOL.md §3.14), on a thread of its own, telling systemd of each
    /// ([`notify`](crate::notify): `STOPPING=1`, `RELOADING=1` then `READY=1`). Close the returned handle after
    /// [`join`](Server::join) to end that thread.
    pub fn watch_signals(&self) -> io::Result<(signal_hook::iterator::Handle, JoinHandle<()>)> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGHUP])?;
        let handle = signals.handle();
        let peers = self.peers.clone();
        let watcher = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    match signal {
                        SIGTERM | SIGINT => {
                            log::info!("stopping on signal {signal}");
                            crate::notify::send("STOPPING=1");
                            peers.control.stop.store(true, Ordering::Release);
                            peers.wake_all();
                        }
                        SIGUSR1 => {
                            log::info!("graceful shutdown on SIGUSR1");
                            crate::notify::send("STOPPING=1");
                            peers.control.graceful.store(true, Ordering::Release);
                            peers.wake_all();
                        }
                        SIGHUP => {
                            crate::notify::send(&crate::notify::reloading());
                            crate::logger::reopen();
                            crate::notify::send("READY=1");
                        }
                        _ => {}
                    }
                }
            })?;
        Ok((handle, watcher))
    }
}
