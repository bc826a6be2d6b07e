//! The worker: registers functions on every server and runs the grab/sleep loop.
//!
//! Each session (one per concurrent job) holds its own connection to every server and loops:
//! GRAB_JOB_UNIQ on each connected server in turn; run the first job assigned and report the
//! result; when no server has work, PRE_SLEEP everywhere and wait on one [`mio::Poll`] for a
//! NOOP, a stop request, a reconnect falling due, or the poll interval. A server that goes away
//! is reconnected with exponential back-off, and the session's functions are registered again.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use std::{fmt, thread};

use mio::{Events, Poll, Token, Waker};

use crate::protocol::PacketType;

use super::connection::{Connection, Fill, Incoming, deadline_after};
use super::{Error, Result, collect_servers};

/// A job function: gets the job, returns the result or how it failed.
pub type JobFn =
    dyn Fn(&mut JobContext<'_>) -> std::result::Result<Vec<u8>, WorkError> + Send + Sync;

/// How a job function fails.
///
/// Any `std::error::Error` converts into [`WorkError::Exception`], so `?` works in job
/// functions:
///
/// ```
/// use gearshift::client::{JobContext, WorkError};
///
/// fn parse(job: &mut JobContext<'_>) -> Result<Vec<u8>, WorkError> {
///     let text = std::str::from_utf8(job.data())?; // a Utf8Error becomes an exception
///     let n: u64 = text.trim().parse()?;
///     if n == 0 {
///         return Err(WorkError::fail("zero is not allowed"));
///     }
///     Ok((n * 2).to_string().into_bytes())
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkError {
    /// Sends WORK_FAIL. A non-empty message is sent just before as WORK_WARNING (WORK_FAIL
    /// carries no data), where this library's client reports it in [`Error::JobFailed`].
    Fail(Vec<u8>),
    /// Sends WORK_EXCEPTION with this message; the client gets [`Error::JobException`].
    Exception(Vec<u8>),
}

impl WorkError {
    /// A failure with a message (empty for none).
    pub fn fail(message: impl Into<Vec<u8>>) -> WorkError {
        WorkError::Fail(message.into())
    }

    /// An exception with a message.
    pub fn exception(message: impl Into<Vec<u8>>) -> WorkError {
        WorkError::Exception(message.into())
    }
}

impl fmt::Display for WorkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkError::Fail(m) => write!(f, "failed: {}", String::from_utf8_lossy(m)),
            WorkError::Exception(m) => write!(f, "exception: {}", String::from_utf8_lossy(m)),
        }
    }
}

impl<E: std::error::Error> From<E> for WorkError {
    fn from(e: E) -> WorkError {
        WorkError::Exception(e.to_string().into_bytes())
    }
}

/// The job in hand, given to a job function: its payload and identity, and the way to send
/// data, warnings and progress to the clients while it runs.
pub struct JobContext<'a> {
    handle: Vec<u8>,
    function: Vec<u8>,
    unique: Vec<u8>,
    data: Vec<u8>,
    conn: &'a mut Connection,
    timeout: Duration,
    stop: &'a StopHandle,
    broken: Option<String>,
}

impl JobContext<'_> {
    /// The job handle.
    pub fn handle(&self) -> &[u8] {
        &self.handle
    }

    /// The function name.
    pub fn function(&self) -> &[u8] {
        &self.function
    }

    /// The unique id the client gave (or generated).
    pub fn unique(&self) -> &[u8] {
        &self.unique
    }

    /// The payload.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Takes the payload out, leaving it empty (avoids a copy for large payloads).
    pub fn take_data(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.data)
    }

    /// True once the worker was asked to stop: a long job may wind up early.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_stopped()
    }

    fn send(&mut self, ty: PacketType, args: &[&[u8]]) -> Result<()> {
        if let Some(why) = &self.broken {
            return Err(Error::io(
                self.conn.addr(),
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, why.clone()),
            ));
        }
        self.conn.queue(ty, args);
        let r = self.conn.flush_blocking(deadline_after(self.timeout));
        if let Err(e) = &r {
            self.broken = Some(e.to_string());
        }
        r
    }

    /// Sends WORK_DATA: a piece of the result, forwarded to waiting clients at once.
    pub fn send_data(&mut self, data: impl AsRef<[u8]>) -> Result<()> {
        let h = self.handle.clone();
        self.send(PacketType::WorkData, &[&h, data.as_ref()])
    }

    /// Sends WORK_WARNING.
    pub fn send_warning(&mut self, warning: impl AsRef<[u8]>) -> Result<()> {
        let h = self.handle.clone();
        self.send(PacketType::WorkWarning, &[&h, warning.as_ref()])
    }

    /// Sends WORK_STATUS: `numerator` of `denominator` done. Clients and GET_STATUS see it.
    pub fn send_status(&mut self, numerator: u64, denominator: u64) -> Result<()> {
        let h = self.handle.clone();
        let (n, d) = (numerator.to_string(), denominator.to_string());
        self.send(PacketType::WorkStatus, &[&h, n.as_bytes(), d.as_bytes()])
    }
}

/// Options of a [`Worker`]. Start from `WorkerOptions::default()` and change fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// Sent with SET_CLIENT_ID (shown by the admin `workers` command).
    pub client_id: Option<String>,
    /// Jobs run at once; each has its own connection to every server. Default 1.
    pub concurrency: usize,
    /// How long a connection attempt may take. Default 2 s.
    pub connect_timeout: Duration,
    /// How long a reply (to GRAB_JOB) or a write may take before the connection is given up.
    /// Default 10 s.
    pub timeout: Duration,
    /// First back-off after a server fails; doubles on each further failure. Default 250 ms.
    pub retry_min: Duration,
    /// Longest back-off. Default 10 s.
    pub retry_max: Duration,
    /// While asleep, ask for work anyway this often (covers a lost NOOP, and gearmand's epoch
    /// jobs, which wake nobody when they fall due). None: only NOOP wakes. Default 5 s.
    pub poll_interval: Option<Duration>,
    /// Stop after this many jobs (all sessions together). Default: no limit.
    pub max_jobs: Option<u64>,
    /// Reach the servers through TLS (every reconnect makes a new handshake). Default None.
    pub tls: Option<super::Tls>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            client_id: None,
            concurrency: 1,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
            retry_min: Duration::from_millis(250),
            retry_max: Duration::from_secs(10),
            poll_interval: Some(Duration::from_secs(5)),
            max_jobs: None,
            tls: None,
        }
    }
}

/// Stops a running [`Worker`] from another thread: each session finishes the job in hand,
/// then [`Worker::run`] returns. Cheap to clone.
#[derive(Clone, Default)]
pub struct StopHandle {
    inner: Arc<StopInner>,
}

#[derive(Default)]
struct StopInner {
    stopped: AtomicBool,
    wakers: Mutex<Vec<Arc<Waker>>>,
}

impl StopHandle {
    /// Asks the worker to stop. Sleeping sessions wake at once.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        for w in self.inner.wakers.lock().unwrap().iter() {
            let _ = w.wake();
        }
    }

    /// True once [`StopHandle::stop`] was called (or the job limit was reached).
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    fn add_waker(&self, w: Arc<Waker>) {
        self.inner.wakers.lock().unwrap().push(w);
        // A stop that raced with the registration must still wake this session.
        if self.is_stopped() {
            self.stop();
        }
    }
}

impl fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StopHandle(stopped: {})", self.is_stopped())
    }
}

struct Function {
    name: Vec<u8>,
    timeout: Option<Duration>,
    f: Arc<JobFn>,
}

/// A Gearman worker over a list of job servers.
///
/// ```no_run
/// use std::time::Duration;
/// use gearshift::client::{Worker, WorkError};
///
/// let mut worker = Worker::new(["gear1:4730,gear2:4730"])?;
/// worker.set_client_id("resizer-1");
/// worker.register("reverse", |job| Ok(job.data().iter().rev().copied().collect()));
/// worker.register_with_timeout("slow", Duration::from_secs(30), |job| {
///     for i in 1..=10 {
///         job.send_status(i, 10)?;
///         job.send_data(format!("step {i}"))?;
///     }
///     if job.data().is_empty() {
///         return Err(WorkError::fail("no input"));
///     }
///     Ok(b"done".to_vec())
/// });
/// let stop = worker.stop_handle();
/// std::thread::spawn(move || {
///     std::thread::sleep(Duration::from_secs(60));
///     stop.stop(); // finishes the job in hand, then `run` returns
/// });
/// worker.run()?;
/// # Ok::<(), gearshift::client::Error>(())
/// ```
pub struct Worker {
    servers: Vec<String>,
    functions: Vec<Function>,
    options: WorkerOptions,
    stop: StopHandle,
    done: Arc<AtomicU64>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("servers", &self.servers)
            .field(
                "functions",
                &self
                    .functions
                    .iter()
                    .map(|f| String::from_utf8_lossy(&f.name).into_owned())
                    .collect::<Vec<_>>(),
            )
            .field("options", &self.options)
            .finish()
    }
}

impl Worker {
    /// A worker for these servers (each item a `host:port` or a comma-separated list).
    pub fn new<I, S>(servers: I) -> Result<Worker>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Worker::with_options(servers, WorkerOptions::default())
    }

    /// A worker with explicit options.
    pub fn with_options<I, S>(servers: I, options: WorkerOptions) -> Result<Worker>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Ok(Worker {
            servers: collect_servers(servers)?,
            functions: Vec::new(),
            options,
            stop: StopHandle::default(),
            done: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Registers a function (CAN_DO). Registering a name again replaces it.
    pub fn register<F>(&mut self, name: impl Into<Vec<u8>>, f: F) -> &mut Worker
    where
        F: Fn(&mut JobContext<'_>) -> std::result::Result<Vec<u8>, WorkError>
            + Send
            + Sync
            + 'static,
    {
        self.add(name.into(), None, Arc::new(f))
    }

    /// Registers a function with a time limit (CAN_DO_TIMEOUT): the server takes a job back
    /// and queues it again when this worker holds it longer than `timeout` (at least 1 s on
    /// gearmand).
    pub fn register_with_timeout<F>(
        &mut self,
        name: impl Into<Vec<u8>>,
        timeout: Duration,
        f: F,
    ) -> &mut Worker
    where
        F: Fn(&mut JobContext<'_>) -> std::result::Result<Vec<u8>, WorkError>
            + Send
            + Sync
            + 'static,
    {
        self.add(name.into(), Some(timeout), Arc::new(f))
    }

    fn add(&mut self, name: Vec<u8>, timeout: Option<Duration>, f: Arc<JobFn>) -> &mut Worker {
        self.functions.retain(|g| g.name != name);
        self.functions.push(Function { name, timeout, f });
        self
    }

    /// Sets the id shown by the admin `workers` command (SET_CLIENT_ID).
    pub fn set_client_id(&mut self, id: impl Into<String>) -> &mut Worker {
        self.options.client_id = Some(id.into());
        self
    }

    /// Runs up to `n` jobs at once (at least 1).
    pub fn set_concurrency(&mut self, n: usize) -> &mut Worker {
        self.options.concurrency = n.max(1);
        self
    }

    /// The options in use.
    pub fn options(&self) -> &WorkerOptions {
        &self.options
    }

    /// The servers, normalised (`host:port`).
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// A handle that stops [`Worker::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Jobs finished so far (completed, failed or raised an exception).
    pub fn jobs_done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Works until stopped ([`StopHandle::stop`]) or until `max_jobs` jobs are done. Server
    /// failures are not errors: the worker reconnects with back-off for as long as it runs.
    /// Fails only when no function is registered. A worker stays stopped once stopped.
    pub fn run(&mut self) -> Result<()> {
        if self.functions.is_empty() {
            return Err(Error::Config("no function registered".into()));
        }
        let shared = Arc::new(Shared {
            servers: self.servers.clone(),
            functions: self
                .functions
                .iter()
                .map(|f| Function {
                    name: f.name.clone(),
                    timeout: f.timeout,
                    f: f.f.clone(),
                })
                .collect(),
            options: self.options.clone(),
            stop: self.stop.clone(),
            claimed: AtomicU64::new(0),
            done: self.done.clone(),
        });
        let n = self.options.concurrency.max(1);
        let result = thread::scope(|scope| {
            let mut handles = Vec::new();
            for k in 1..n {
                let shared = shared.clone();
                handles.push(
                    thread::Builder::new()
                        .name(format!("gearshift-worker-{k}"))
                        .spawn_scoped(scope, move || {
                            Session::new(shared).and_then(|mut s| s.run())
                        })
                        .map_err(|e| Error::Config(format!("cannot start a thread: {e}"))),
                );
            }
            let mut result = Session::new(shared.clone()).and_then(|mut s| s.run());
            if result.is_err() {
                self.stop.stop();
            }
            for h in handles {
                let r = h.and_then(|h| h.join().expect("worker session panicked"));
                if result.is_ok() {
                    result = r;
                }
            }
            result
        });
        self.stop.inner.wakers.lock().unwrap().clear();
        result
    }
}

struct Shared {
    servers: Vec<String>,
    functions: Vec<Function>,
    options: WorkerOptions,
    stop: StopHandle,
    /// Jobs this run has started or is about to grab (only counted with `max_jobs`).
    claimed: AtomicU64,
    done: Arc<AtomicU64>,
}

impl Shared {
    /// Reserves one job under `max_jobs`; false when the limit is taken.
    fn claim(&self) -> bool {
        match self.options.max_jobs {
            None => true,
            Some(max) => self
                .claimed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                    (c < max).then_some(c + 1)
                })
                .is_ok(),
        }
    }

    fn unclaim(&self) {
        if self.options.max_jobs.is_some() {
            self.claimed.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn finished_one(&self) {
        let done = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(max) = self.options.max_jobs
            && done >= max
        {
            self.stop.stop();
        }
    }
}

struct Server {
    addr: String,
    io: Option<Connection>,
    retry_at: Instant,
    backoff: Duration,
}

struct Assigned {
    handle: Vec<u8>,
    function: Vec<u8>,
    unique: Vec<u8>,
    data: Vec<u8>,
}

const WAKER: Token = Token(usize::MAX);

struct Session {
    shared: Arc<Shared>,
    poll: Poll,
    events: Events,
    servers: Vec<Server>,
    /// Where the next grab round starts, so that busy servers do not starve the others.
    start: usize,
}

impl Session {
    fn new(shared: Arc<Shared>) -> Result<Session> {
        let poll = Poll::new().map_err(|e| Error::Config(format!("cannot create a poll: {e}")))?;
        let waker = Waker::new(poll.registry(), WAKER)
            .map_err(|e| Error::Config(format!("cannot create a waker: {e}")))?;
        shared.stop.add_waker(Arc::new(waker));
        let now = Instant::now();
        let servers = shared
            .servers
            .iter()
            .map(|a| Server {
                addr: a.clone(),
                io: None,
                retry_at: now,
                backoff: shared.options.retry_min,
            })
            .collect();
        Ok(Session {
            shared,
            poll,
            events: Events::with_capacity(16),
            servers,
            start: 0,
        })
    }

    fn run(&mut self) -> Result<()> {
        while !self.shared.stop.is_stopped() {
            self.reconnect_due();
            if self.grab_round() {
                continue;
            }
            if self.shared.stop.is_stopped() {
                break;
            }
            self.sleep();
        }
        Ok(())
    }

    /// Connects (and registers) every server whose back-off has passed.
    fn reconnect_due(&mut self) {
        let now = Instant::now();
        for i in 0..self.servers.len() {
            if self.servers[i].io.is_none() && self.servers[i].retry_at <= now {
                if let Err(e) = self.connect(i) {
                    self.down(i, &e);
                } else {
                    self.servers[i].backoff = self.shared.options.retry_min;
                }
            }
        }
    }

    fn connect(&mut self, i: usize) -> Result<()> {
        let opts = &self.shared.options;
        let addr = self.servers[i].addr.clone();
        let mut io = Connection::connect(&addr, opts.connect_timeout, opts.tls.as_ref())?;
        if let Some(id) = &opts.client_id {
            io.queue(PacketType::SetClientId, &[id.as_bytes()]);
        }
        for f in &self.shared.functions {
            match f.timeout {
                Some(t) => {
                    let ms = t.as_millis().max(1).to_string();
                    io.queue(PacketType::CanDoTimeout, &[&f.name, ms.as_bytes()]);
                }
                None => io.queue(PacketType::CanDo, &[&f.name]),
            }
        }
        io.flush_blocking(deadline_after(opts.timeout))?;
        io.register(self.poll.registry(), Token(i))?;
        log::debug!("worker registered on {addr}");
        self.servers[i].io = Some(io);
        Ok(())
    }

    /// Server `i` failed: close the connection and schedule a reconnect.
    fn down(&mut self, i: usize, why: &Error) {
        let s = &mut self.servers[i];
        if let Some(mut io) = s.io.take() {
            io.deregister(self.poll.registry());
        }
        s.retry_at = Instant::now() + s.backoff;
        log::info!(
            "job server {} unavailable ({why}); retrying in {:?}",
            s.addr,
            s.backoff
        );
        s.backoff = (s.backoff * 2).min(self.shared.options.retry_max);
    }

    /// Asks each connected server for a job, starting after the last one that had one; runs
    /// the first job assigned. True if a job ran (or may be waiting: the limit was held by
    /// another session).
    fn grab_round(&mut self) -> bool {
        let n = self.servers.len();
        for k in 0..n {
            let i = (self.start + k) % n;
            if self.servers[i].io.is_none() {
                continue;
            }
            if self.shared.stop.is_stopped() {
                return false;
            }
            if !self.shared.claim() {
                // Another session holds the last jobs of the limit; check again shortly.
                let _ = self
                    .poll
                    .poll(&mut self.events, Some(Duration::from_millis(10)));
                return true;
            }
            match self.grab(i) {
                Ok(Some(job)) => {
                    self.start = (i + 1) % n;
                    self.work(i, job);
                    self.shared.finished_one();
                    return true;
                }
                Ok(None) => self.shared.unclaim(),
                Err(e) => {
                    self.shared.unclaim();
                    self.down(i, &e);
                }
            }
        }
        false
    }

    fn grab(&mut self, i: usize) -> Result<Option<Assigned>> {
        let deadline = deadline_after(self.shared.options.timeout);
        let io = self.servers[i].io.as_mut().expect("connected");
        io.queue(PacketType::GrabJobUniq, &[]);
        io.flush_blocking(deadline)?;
        loop {
            let mut p = match io.recv(deadline)? {
                Incoming::Packet(p) => p,
                Incoming::Line(_) => {
                    return Err(Error::protocol(
                        io.addr(),
                        "text line on a worker connection",
                    ));
                }
            };
            match p.ty {
                PacketType::Noop => continue,
                PacketType::NoJob => return Ok(None),
                PacketType::JobAssignUniq => {
                    return Ok(Some(Assigned {
                        handle: p.take(0),
                        function: p.take(1),
                        unique: p.take(2),
                        data: p.take(3),
                    }));
                }
                PacketType::JobAssign => {
                    return Ok(Some(Assigned {
                        handle: p.take(0),
                        function: p.take(1),
                        unique: Vec::new(),
                        data: p.take(2),
                    }));
                }
                PacketType::Error => {
                    // GRAB_JOB_UNIQ itself is never refused: this answers an earlier WORK_*
                    // (say, a result sent after the server requeued the job on a
                    // CAN_DO_TIMEOUT). The grab's own reply is still to come.
                    log::warn!(
                        "{}: ERROR {}: {}",
                        io.addr(),
                        String::from_utf8_lossy(p.arg(0)),
                        String::from_utf8_lossy(p.arg(1))
                    );
                    continue;
                }
                other => {
                    return Err(Error::protocol(
                        io.addr(),
                        format!("unexpected {} while grabbing a job", other.name()),
                    ));
                }
            }
        }
    }

    /// Runs a job on server `i` and sends its result.
    fn work(&mut self, i: usize, job: Assigned) {
        let shared = self.shared.clone();
        let f = shared
            .functions
            .iter()
            .find(|f| f.name == job.function)
            .map(|f| f.f.clone());
        let io = self.servers[i].io.as_mut().expect("connected");
        let handle = job.handle;
        let mut ctx = JobContext {
            handle: handle.clone(),
            function: job.function,
            unique: job.unique,
            data: job.data,
            conn: io,
            timeout: shared.options.timeout,
            stop: &shared.stop,
            broken: None,
        };
        let outcome = match f {
            Some(f) => match catch_unwind(AssertUnwindSafe(|| f(&mut ctx))) {
                Ok(r) => r,
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "job function panicked".into());
                    log::error!("job {} panicked: {msg}", String::from_utf8_lossy(&handle));
                    Err(WorkError::Fail(format!("panic: {msg}").into_bytes()))
                }
            },
            None => {
                log::warn!(
                    "job {} is for unregistered function {}",
                    String::from_utf8_lossy(&handle),
                    String::from_utf8_lossy(&ctx.function)
                );
                Err(WorkError::Fail(b"function not registered".to_vec()))
            }
        };
        let broken = ctx.broken.take();
        let r = match broken {
            Some(why) => Err(Error::io(
                io_addr(&self.servers[i]),
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, why),
            )),
            None => {
                let io = self.servers[i].io.as_mut().expect("connected");
                match &outcome {
                    Ok(data) => io.queue(PacketType::WorkComplete, &[&handle, data]),
                    Err(WorkError::Fail(msg)) => {
                        if !msg.is_empty() {
                            io.queue(PacketType::WorkWarning, &[&handle, msg]);
                        }
                        io.queue(PacketType::WorkFail, &[&handle]);
                    }
                    Err(WorkError::Exception(msg)) => {
                        io.queue(PacketType::WorkException, &[&handle, msg])
                    }
                }
                io.flush_blocking(deadline_after(shared.options.timeout))
            }
        };
        if let Err(e) = r {
            log::warn!(
                "could not report job {}: {e}",
                String::from_utf8_lossy(&handle)
            );
            self.down(i, &e);
        }
    }

    /// PRE_SLEEP on every connection, then waits for a NOOP, a stop, a reconnect falling due
    /// or the poll interval.
    fn sleep(&mut self) {
        for i in 0..self.servers.len() {
            if let Some(io) = self.servers[i].io.as_mut() {
                io.queue(PacketType::PreSleep, &[]);
                if let Err(e) = io.flush_blocking(deadline_after(self.shared.options.timeout)) {
                    self.down(i, &e);
                }
            }
        }
        let opts = &self.shared.options;
        let mut until = opts.poll_interval.map(deadline_after);
        for s in &self.servers {
            if s.io.is_none() {
                until = Some(until.map_or(s.retry_at, |u| u.min(s.retry_at)));
            }
        }
        loop {
            if self.shared.stop.is_stopped() {
                return;
            }
            let mut woke = false;
            for i in 0..self.servers.len() {
                let Some(io) = self.servers[i].io.as_mut() else {
                    continue;
                };
                let fill = io.fill();
                let mut broken = None;
                loop {
                    match io.next() {
                        Ok(Some(Incoming::Packet(p))) if p.ty == PacketType::Noop => woke = true,
                        Ok(Some(other)) => log::debug!("{}: ignoring {other:?}", io.addr()),
                        Ok(None) => break,
                        Err(e) => {
                            broken = Some(e);
                            break;
                        }
                    }
                }
                let broken = broken.or(match fill {
                    Ok(Fill::Open) => None,
                    Ok(Fill::Closed) => Some(Error::io(
                        io.addr(),
                        std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the server closed the connection",
                        ),
                    )),
                    Err(e) => Some(e),
                });
                if let Some(e) = broken {
                    self.down(i, &e);
                    let at = self.servers[i].retry_at;
                    until = Some(until.map_or(at, |u| u.min(at)));
                }
            }
            if woke {
                return;
            }
            let timeout = match until {
                Some(u) => {
                    let now = Instant::now();
                    if now >= u {
                        return;
                    }
                    Some(u - now)
                }
                None => None,
            };
            if let Err(e) = self.poll.poll(&mut self.events, timeout)
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                log::error!("poll failed: {e}");
                thread::sleep(Duration::from_millis(100));
                return;
            }
        }
    }
}

fn io_addr(s: &Server) -> &str {
    &s.addr
}
