//! The client: submits jobs to a list of servers, with placement by unique id, failover, and
//! many jobs in flight on one [`mio::Poll`].
//!
//! State per server ([`Slot`]): an optional live connection, and the back-off that decides
//! when a dead server is tried again. State per connection ([`Conn`]): the FIFO of replies it
//! owes us (JOB_CREATED, STATUS_RES, OPTION_RES and ERROR answer requests in order) and the
//! foreground jobs it runs, by handle. A task lives in `tasks` until its final event is
//! queued; events wait in per-task queues until the caller collects them.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ahash::{AHashMap, AHashSet};
use mio::{Events, Poll, Token};
use smallvec::SmallVec;

use crate::protocol::PacketType;

use super::connection::{Connection, Fill, Incoming, Reply, deadline_after, remaining};
use super::{Error, Result, collect_servers, generate_unique, parse_num, placement_order};

/// A job's priority. Epoch jobs always run at normal priority (the protocol has no other).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Priority {
    /// Before any normal or low job.
    High,
    /// The default.
    #[default]
    Normal,
    /// After every high and normal job.
    Low,
}

/// A job to submit: function, payload and options. Built with chained calls.
///
/// ```
/// use gearshift::client::{Job, Priority};
///
/// let job = Job::new("resize", b"image bytes".to_vec())
///     .unique("img-42")
///     .priority(Priority::High)
///     .background();
/// assert!(job.is_background());
/// ```
#[derive(Clone, Debug)]
pub struct Job {
    function: Vec<u8>,
    data: Vec<u8>,
    unique: Option<Vec<u8>>,
    priority: Priority,
    background: bool,
    epoch: Option<i64>,
}

impl Job {
    /// A foreground job of normal priority, with a generated unique id.
    pub fn new(function: impl Into<Vec<u8>>, data: impl Into<Vec<u8>>) -> Job {
        Job {
            function: function.into(),
            data: data.into(),
            unique: None,
            priority: Priority::Normal,
            background: false,
            epoch: None,
        }
    }

    /// Sets the unique id (at most 64 bytes; servers refuse longer ones). Jobs of the same
    /// function with the same unique coalesce on a server, and the unique decides which server
    /// a job goes to. Without one, a random UUID is generated, so a job resubmitted after a
    /// failover keeps its identity. An empty unique is sent as such (the job never coalesces)
    /// and the data decides the placement.
    pub fn unique(mut self, unique: impl Into<Vec<u8>>) -> Job {
        self.unique = Some(unique.into());
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: Priority) -> Job {
        self.priority = priority;
        self
    }

    /// High priority.
    pub fn high(self) -> Job {
        self.priority(Priority::High)
    }

    /// Low priority.
    pub fn low(self) -> Job {
        self.priority(Priority::Low)
    }

    /// Makes it a background job: the client gets a handle and no result.
    pub fn background(mut self) -> Job {
        self.background = true;
        self
    }

    /// Runs the job no earlier than `when` (SUBMIT_JOB_EPOCH). Epoch jobs are background jobs
    /// of normal priority. A time in the past means "now".
    pub fn at(self, when: SystemTime) -> Job {
        let secs = match when.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs().min(i64::MAX as u64) as i64,
            Err(_) => 0,
        };
        self.epoch(secs)
    }

    /// Runs the job no earlier than `secs` seconds after the Unix epoch (see [`Job::at`]).
    pub fn epoch(mut self, secs: i64) -> Job {
        self.epoch = Some(secs);
        self.background = true;
        self
    }

    /// True for background (and epoch) jobs.
    pub fn is_background(&self) -> bool {
        self.background
    }

    /// The function name.
    pub fn function(&self) -> &[u8] {
        &self.function
    }

    /// The payload.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The unique id, if one was set.
    pub fn unique_id(&self) -> Option<&[u8]> {
        self.unique.as_deref()
    }
}

/// Identifies a job submitted with [`Client::submit`] until its final event is collected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub(crate) u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {}", self.0)
    }
}

/// A job handle and the server that issued it (handles are only meaningful there).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JobHandle {
    /// The server, as configured (`host:port`).
    pub server: String,
    /// The handle, e.g. `H:host:42`.
    pub handle: Vec<u8>,
}

impl JobHandle {
    /// A handle issued by `server`.
    pub fn new(server: impl Into<String>, handle: impl Into<Vec<u8>>) -> JobHandle {
        JobHandle {
            server: server.into(),
            handle: handle.into(),
        }
    }
}

impl fmt::Display for JobHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.handle))
    }
}

/// What a server knows about a job (GET_STATUS or GET_STATUS_UNIQUE).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobStatus {
    /// The server has the job (queued or running).
    pub known: bool,
    /// A worker holds it now.
    pub running: bool,
    /// The last WORK_STATUS numerator.
    pub numerator: u64,
    /// The last WORK_STATUS denominator.
    pub denominator: u64,
    /// Foreground clients waiting for it (only from a status by unique id).
    pub waiting_clients: Option<u64>,
    /// The server that answered.
    pub server: String,
}

/// Something that happened to a task, delivered in arrival order (per task, always; across
/// tasks, as the servers sent them).
#[derive(Debug)]
pub enum Event {
    /// A foreground job was created (or coalesced into an existing one). After a failover it
    /// comes again with the new server's handle.
    Created {
        /// The task.
        task: TaskId,
        /// The job's handle.
        handle: JobHandle,
    },
    /// A background job was accepted by a server. This is its final event.
    Submitted {
        /// The task.
        task: TaskId,
        /// The job's handle.
        handle: JobHandle,
    },
    /// The worker sent WORK_DATA.
    Data {
        /// The task.
        task: TaskId,
        /// The data.
        data: Vec<u8>,
    },
    /// The worker sent WORK_WARNING.
    Warning {
        /// The task.
        task: TaskId,
        /// The warning.
        data: Vec<u8>,
    },
    /// The worker sent WORK_STATUS.
    Status {
        /// The task.
        task: TaskId,
        /// Progress numerator.
        numerator: u64,
        /// Progress denominator.
        denominator: u64,
    },
    /// The job completed (WORK_COMPLETE). Final.
    Complete {
        /// The task.
        task: TaskId,
        /// The result.
        data: Vec<u8>,
    },
    /// The job failed: the worker sent WORK_FAIL or WORK_EXCEPTION, the server refused it, or
    /// no server could take it. Final.
    Failed {
        /// The task.
        task: TaskId,
        /// Why.
        error: Error,
    },
}

impl Event {
    /// The task this event belongs to.
    pub fn task(&self) -> TaskId {
        match self {
            Event::Created { task, .. }
            | Event::Submitted { task, .. }
            | Event::Data { task, .. }
            | Event::Warning { task, .. }
            | Event::Status { task, .. }
            | Event::Complete { task, .. }
            | Event::Failed { task, .. } => *task,
        }
    }

    /// True for the last event of a task (Submitted, Complete, Failed).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Event::Submitted { .. } | Event::Complete { .. } | Event::Failed { .. }
        )
    }
}

/// The outcome of a job that completed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobOutput {
    /// The last handle the job had (None if no server ever answered JOB_CREATED).
    pub handle: Option<JobHandle>,
    /// The WORK_COMPLETE data (empty for a background job).
    pub data: Vec<u8>,
    /// Every WORK_DATA, in order (left empty by [`Client::wait_with`], whose callback sees them).
    pub chunks: Vec<Vec<u8>>,
    /// Every WORK_WARNING, in order (left empty by [`Client::wait_with`]).
    pub warnings: Vec<Vec<u8>>,
    /// The last WORK_STATUS (numerator, denominator).
    pub status: Option<(u64, u64)>,
}

/// Options of a [`Client`]. Start from `ClientOptions::default()` and change fields.
///
/// ```
/// use std::time::Duration;
/// use gearshift::client::ClientOptions;
///
/// let mut opts = ClientOptions::default();
/// opts.timeout = Duration::from_secs(5);
/// opts.max_attempts = 5;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientOptions {
    /// How long the blocking calls ([`Client::call`], [`Client::run`],
    /// [`Client::submit_background`], status queries) wait. Default 60 s.
    pub timeout: Duration,
    /// How long a connection attempt may take. Default 2 s.
    pub connect_timeout: Duration,
    /// First back-off after a server fails; it doubles on each further failure. Default 250 ms.
    pub retry_min: Duration,
    /// Longest back-off. Default 30 s.
    pub retry_max: Duration,
    /// Submissions per foreground job, counting the first; each failover is one more. When
    /// they run out the task fails with [`Error::NoServer`]. Default 3; at least 1.
    pub max_attempts: u32,
    /// Ask servers to forward WORK_EXCEPTION (OPTION_REQ `exceptions`), so an exception's
    /// message reaches [`Error::JobException`]. Default true.
    pub exceptions: bool,
    /// Reach the servers through TLS. Default None (plain TCP).
    pub tls: Option<super::Tls>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            retry_min: Duration::from_millis(250),
            retry_max: Duration::from_secs(30),
            max_attempts: 3,
            exceptions: true,
            tls: None,
        }
    }
}

/// Options of [`Client::map`] and [`Client::map_results`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MapOptions {
    /// Resubmissions of an item whose job failed (WORK_FAIL, WORK_EXCEPTION, server error, no
    /// server) before the failure counts. Default 0.
    pub retries: u32,
    /// Jobs in flight at once. Default 1000.
    pub max_in_flight: usize,
    /// Longest wait for the next result; None uses the client's timeout. Reaching it ends the
    /// map with [`Error::Timeout`].
    pub timeout: Option<Duration>,
    /// Priority of every item's job.
    pub priority: Priority,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            retries: 0,
            max_in_flight: 1000,
            timeout: None,
            priority: Priority::Normal,
        }
    }
}

impl MapOptions {
    /// Default options with `retries` resubmissions per failed item.
    pub fn with_retries(retries: u32) -> MapOptions {
        MapOptions {
            retries,
            ..MapOptions::default()
        }
    }
}

/// A reply a connection owes us, in request order.
#[derive(Debug)]
enum Expect {
    /// JOB_CREATED (or ERROR) for a SUBMIT_*.
    Created(TaskId),
    /// STATUS_RES, STATUS_RES_UNIQUE or ECHO_RES (or ERROR) for a synchronous request.
    Reply(u64),
    /// OPTION_RES (or ERROR) for OPTION_REQ.
    Option,
}

struct Conn {
    io: Connection,
    expect: VecDeque<Expect>,
    /// Foreground jobs this connection waits for, by handle.
    handles: AHashMap<Vec<u8>, Attached>,
}

/// The tasks of this connection attached to one job. A job's WORK_* packets come once per
/// submission that attached to it (gearmand and gearshiftd both keep one client record per
/// submission), so `k` tasks coalesced on one connection get `k` adjacent copies of each
/// packet: copy `i` goes to task `i`. Forgotten tasks keep their place, so the copies stay
/// aligned.
#[derive(Default)]
struct Attached {
    tasks: SmallVec<[TaskId; 1]>,
    /// The task that gets the next copy.
    cursor: usize,
}

struct Slot {
    addr: String,
    conn: Option<Conn>,
    /// When a dead server may be tried again (None: not known to be dead).
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: String,
}

struct Task {
    function: Vec<u8>,
    unique: Vec<u8>,
    data: Vec<u8>,
    priority: Priority,
    background: bool,
    epoch: Option<i64>,
    order: Vec<usize>,
    /// Submissions so far.
    attempts: u32,
    last_warning: Option<Vec<u8>>,
    /// Servers that failed this task, with why (for [`Error::NoServer`]).
    failures: Vec<(String, String)>,
}

/// A Gearman client over a list of job servers.
///
/// Every method blocks for at most its timeout. Results of jobs submitted with
/// [`Client::submit`] are collected with [`Client::wait`], [`Client::wait_with`],
/// [`Client::next_event`] or [`Client::events`]; events of tasks nobody collects stay queued.
///
/// ```no_run
/// use std::time::Duration;
/// use gearshift::client::{Client, Event, Job};
///
/// let mut client = Client::new(["gear1:4730,gear2:4730"])?;
///
/// // One job, waiting for the result.
/// let upper = client.call("upper", "hello")?;
///
/// // A batch: submit, then collect as results complete.
/// let ids: Vec<_> = ["a", "b", "c"]
///     .iter()
///     .map(|s| client.submit(Job::new("upper", *s)))
///     .collect::<Result<_, _>>()?;
/// for event in client.events(Duration::from_secs(10)) {
///     match event? {
///         Event::Status { task, numerator, denominator } => {
///             println!("{task}: {numerator}/{denominator}")
///         }
///         Event::Complete { task, data } => println!("{task}: {data:?}"),
///         Event::Failed { task, error } => eprintln!("{task}: {error}"),
///         _ => {}
///     }
/// }
/// # let _ = (upper, ids);
/// # Ok::<(), gearshift::client::Error>(())
/// ```
pub struct Client {
    slots: Vec<Slot>,
    servers: Vec<String>,
    options: ClientOptions,
    poll: Poll,
    poll_events: Events,
    tasks: AHashMap<TaskId, Task>,
    next_task: u64,
    /// Events not yet collected, per task, and the order they arrived in (entries may be stale
    /// once a task's events were collected by `wait`; they are skipped).
    pending: AHashMap<TaskId, VecDeque<Event>>,
    order: VecDeque<TaskId>,
    /// Synchronous requests: None while waiting.
    requests: AHashMap<u64, Option<Result<Reply>>>,
    next_request: u64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("servers", &self.servers)
            .field("tasks_in_flight", &self.tasks.len())
            .finish()
    }
}

impl Client {
    /// A client for these servers (each item a `host:port` or a comma-separated list of them).
    /// Nothing is connected until the first request.
    ///
    /// ```
    /// use gearshift::client::Client;
    ///
    /// let client = Client::new(["127.0.0.1:4730", "10.0.0.2"]).unwrap();
    /// assert_eq!(client.servers(), ["127.0.0.1:4730", "10.0.0.2:4730"]);
    /// assert!(Client::new(["bad:port"]).is_err());
    /// ```
    pub fn new<I, S>(servers: I) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Client::with_options(servers, ClientOptions::default())
    }

    /// A client with explicit options.
    pub fn with_options<I, S>(servers: I, options: ClientOptions) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let servers = collect_servers(servers)?;
        let poll = Poll::new().map_err(|e| Error::Config(format!("cannot create a poll: {e}")))?;
        let slots = servers
            .iter()
            .map(|a| Slot {
                addr: a.clone(),
                conn: None,
                retry_at: None,
                backoff: options.retry_min,
                last_error: String::new(),
            })
            .collect();
        Ok(Client {
            slots,
            servers,
            options,
            poll,
            poll_events: Events::with_capacity(64),
            tasks: AHashMap::new(),
            next_task: 1,
            pending: AHashMap::new(),
            order: VecDeque::new(),
            requests: AHashMap::new(),
            next_request: 1,
        })
    }

    /// The servers, normalised (`host:port`), in the order given.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// The options in use.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Changes the default timeout of the blocking calls.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.options.timeout = timeout;
    }

    /// Tasks submitted whose final event has not been queued yet.
    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    // ----- simple calls -----

    /// Runs `function` on `data` as a foreground job and returns its result (WORK_COMPLETE's
    /// data), waiting at most the client's timeout.
    ///
    /// ```no_run
    /// # let mut client = gearshift::client::Client::new(["127.0.0.1:4730"])?;
    /// let reversed = client.call("reverse", "hello")?;
    /// # Ok::<(), gearshift::client::Error>(())
    /// ```
    pub fn call(
        &mut self,
        function: impl Into<Vec<u8>>,
        data: impl Into<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        self.run(Job::new(function, data)).map(|o| o.data)
    }

    /// Submits a job and waits (the client's timeout) until it completes; collects its
    /// WORK_DATA, warnings and status. For a background job, returns once a server accepted
    /// it. On timeout the task is forgotten (the job itself may still run).
    pub fn run(&mut self, job: Job) -> Result<JobOutput> {
        let task = self.submit(job)?;
        let timeout = self.options.timeout;
        let r = self.wait(task, timeout);
        if r.is_err() {
            self.forget(task);
        }
        r
    }

    /// Submits a background job and returns its handle once a server accepted it.
    pub fn submit_background(&mut self, job: Job) -> Result<JobHandle> {
        let out = self.run(job.background())?;
        out.handle
            .ok_or_else(|| Error::protocol("", "background job accepted without a handle"))
    }

    // ----- many in flight -----

    /// Submits a job without waiting for anything; returns its task id. The job goes to the
    /// first live server in its unique's placement order. Fails only when no server can be
    /// reached; everything later arrives as [`Event`]s.
    pub fn submit(&mut self, job: Job) -> Result<TaskId> {
        let unique = job.unique.unwrap_or_else(|| generate_unique().into_bytes());
        let key: &[u8] = if unique.is_empty() {
            &job.data
        } else {
            &unique
        };
        let order = placement_order(&self.servers, key);
        let id = TaskId(self.next_task);
        self.next_task += 1;
        let task = Task {
            function: job.function,
            unique,
            data: job.data,
            priority: job.priority,
            background: job.background || job.epoch.is_some(),
            epoch: job.epoch,
            order,
            attempts: 0,
            last_warning: None,
            failures: Vec::new(),
        };
        self.tasks.insert(id, task);
        if let Err(e) = self.place(id) {
            self.tasks.remove(&id);
            return Err(e);
        }
        // Keep replies flowing while a caller submits a large batch.
        self.service();
        Ok(id)
    }

    /// Waits up to `timeout` for the next event of any task. Ok(None) when no task is in
    /// flight and no event is queued; [`Error::Timeout`] when tasks are in flight but nothing
    /// arrived in time.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>> {
        self.next_event_matching(timeout, |_| true)
    }

    /// An iterator over events, each waited for at most `timeout`. It ends when no task is in
    /// flight and every event was taken, and after yielding an error.
    pub fn events(&mut self, timeout: Duration) -> EventIter<'_> {
        EventIter {
            client: self,
            timeout,
            done: false,
        }
    }

    /// Waits up to `timeout` for `task` to finish and returns its outcome; WORK_DATA, warnings
    /// and status are collected into the [`JobOutput`]. Other tasks' events stay queued.
    pub fn wait(&mut self, task: TaskId, timeout: Duration) -> Result<JobOutput> {
        let mut chunks = Vec::new();
        let mut warnings = Vec::new();
        let mut out = self.wait_with(task, timeout, |e| match e {
            Event::Data { data, .. } => chunks.push(data.clone()),
            Event::Warning { data, .. } => warnings.push(data.clone()),
            _ => {}
        })?;
        out.chunks = chunks;
        out.warnings = warnings;
        Ok(out)
    }

    /// Like [`Client::wait`], but calls `on_update` with each Created, Data, Warning and
    /// Status event of `task` as it arrives (the output's `chunks` and `warnings` stay empty).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use gearshift::client::{Client, Event, Job};
    ///
    /// let mut client = Client::new(["127.0.0.1:4730"])?;
    /// let task = client.submit(Job::new("encode", "movie.mkv"))?;
    /// let out = client.wait_with(task, Duration::from_secs(600), |event| {
    ///     if let Event::Status { numerator, denominator, .. } = event {
    ///         eprintln!("{numerator}/{denominator}");
    ///     }
    /// })?;
    /// # Ok::<(), gearshift::client::Error>(())
    /// ```
    pub fn wait_with<F: FnMut(&Event)>(
        &mut self,
        task: TaskId,
        timeout: Duration,
        mut on_update: F,
    ) -> Result<JobOutput> {
        if !self.tasks.contains_key(&task) && !self.pending.contains_key(&task) {
            return Err(Error::UnknownTask(task));
        }
        let deadline = deadline_after(timeout);
        let mut out = JobOutput::default();
        loop {
            while let Some(ev) = self.pop_task_event(task) {
                match ev {
                    Event::Created { ref handle, .. } => {
                        out.handle = Some(handle.clone());
                        on_update(&ev);
                    }
                    Event::Status {
                        numerator,
                        denominator,
                        ..
                    } => {
                        out.status = Some((numerator, denominator));
                        on_update(&ev);
                    }
                    Event::Data { .. } | Event::Warning { .. } => on_update(&ev),
                    Event::Submitted { handle, .. } => {
                        out.handle = Some(handle);
                        return Ok(out);
                    }
                    Event::Complete { data, .. } => {
                        out.data = data;
                        return Ok(out);
                    }
                    Event::Failed { error, .. } => return Err(error),
                }
            }
            self.drive(deadline, |c| c.pending.contains_key(&task))?;
        }
    }

    /// Stops tracking a task: its queued events are dropped and later packets for it are
    /// ignored. The job itself is not cancelled on the server.
    pub fn forget(&mut self, task: TaskId) {
        self.tasks.remove(&task);
        self.pending.remove(&task);
    }

    // ----- status -----

    /// Asks the server that issued `handle` about the job (GET_STATUS).
    pub fn status(&mut self, handle: &JobHandle) -> Result<JobStatus> {
        let i = self
            .servers
            .iter()
            .position(|s| *s == handle.server)
            .ok_or_else(|| {
                Error::Config(format!(
                    "{} is not one of this client's servers",
                    handle.server
                ))
            })?;
        let deadline = deadline_after(self.options.timeout);
        let r = self.request(i, PacketType::GetStatus, &[&handle.handle], deadline)?;
        Ok(JobStatus {
            known: parse_num(r.arg(1)) != 0,
            running: parse_num(r.arg(2)) != 0,
            numerator: parse_num(r.arg(3)),
            denominator: parse_num(r.arg(4)),
            waiting_clients: None,
            server: handle.server.clone(),
        })
    }

    /// Asks about the job with this unique id (GET_STATUS_UNIQUE), on the servers in the
    /// unique's placement order until one knows it; the last answer otherwise.
    pub fn status_unique(&mut self, unique: impl AsRef<[u8]>) -> Result<JobStatus> {
        let unique = unique.as_ref();
        let deadline = deadline_after(self.options.timeout);
        let mut last = None;
        for i in placement_order(&self.servers, unique) {
            match self.request(i, PacketType::GetStatusUnique, &[unique], deadline) {
                Ok(r) => {
                    let st = JobStatus {
                        known: parse_num(r.arg(1)) != 0,
                        running: parse_num(r.arg(2)) != 0,
                        numerator: parse_num(r.arg(3)),
                        denominator: parse_num(r.arg(4)),
                        waiting_clients: Some(parse_num(r.arg(5))),
                        server: self.servers[i].clone(),
                    };
                    if st.known {
                        return Ok(st);
                    }
                    last = Some(Ok(st));
                }
                Err(Error::Timeout) => return Err(Error::Timeout),
                Err(e) => {
                    if last.is_none() {
                        last = Some(Err(e));
                    }
                }
            }
        }
        last.unwrap_or(Err(Error::NoServer(Vec::new())))
    }

    /// Sends ECHO_REQ to every server and waits for the answers: one result per server, in
    /// the configured order.
    pub fn ping(&mut self) -> Vec<(String, Result<Duration>)> {
        let mut out = Vec::new();
        for i in 0..self.slots.len() {
            let start = Instant::now();
            let deadline = deadline_after(self.options.timeout);
            let r = self
                .request(i, PacketType::EchoReq, &[b"ping"], deadline)
                .map(|_| start.elapsed());
            out.push((self.servers[i].clone(), r));
        }
        out
    }

    // ----- map -----

    /// Applies `function` to every item across all workers and returns the results in input
    /// order (scatter/gather). An item whose job fails is resubmitted up to
    /// `options.retries` times; a failure after that ends the map with [`Error::Map`] naming
    /// the item (jobs still in flight are forgotten). Use [`Client::map_results`] to get
    /// per-item errors instead. Map/reduce is this plus a local fold over the result.
    ///
    /// ```no_run
    /// use gearshift::client::{Client, MapOptions};
    ///
    /// let mut client = Client::new(["127.0.0.1:4730"])?;
    /// let words = ["alpha", "beta", "gamma"];
    /// let lengths = client.map("strlen", words, &MapOptions::with_retries(2))?;
    /// // The local reduce.
    /// let total: usize = lengths
    ///     .iter()
    ///     .map(|r| String::from_utf8_lossy(r).parse::<usize>().unwrap())
    ///     .sum();
    /// # Ok::<(), gearshift::client::Error>(())
    /// ```
    pub fn map<I, D>(
        &mut self,
        function: impl AsRef<[u8]>,
        items: I,
        options: &MapOptions,
    ) -> Result<Vec<Vec<u8>>>
    where
        I: IntoIterator<Item = D>,
        D: AsRef<[u8]>,
    {
        let results = self.map_inner(function.as_ref(), items, options, true)?;
        Ok(results.into_iter().map(|r| r.expect("aborted")).collect())
    }

    /// Like [`Client::map`], but every item gets its own result, failures included (after its
    /// retries). The outer error is only [`Error::Timeout`] (no result within the timeout).
    pub fn map_results<I, D>(
        &mut self,
        function: impl AsRef<[u8]>,
        items: I,
        options: &MapOptions,
    ) -> Result<Vec<Result<Vec<u8>>>>
    where
        I: IntoIterator<Item = D>,
        D: AsRef<[u8]>,
    {
        self.map_inner(function.as_ref(), items, options, false)
    }

    fn map_inner<I, D>(
        &mut self,
        function: &[u8],
        items: I,
        options: &MapOptions,
        abort: bool,
    ) -> Result<Vec<Result<Vec<u8>>>>
    where
        I: IntoIterator<Item = D>,
        D: AsRef<[u8]>,
    {
        let items: Vec<Vec<u8>> = items.into_iter().map(|d| d.as_ref().to_vec()).collect();
        let n = items.len();
        let prefix = generate_unique();
        let timeout = options.timeout.unwrap_or(self.options.timeout);
        let window = options.max_in_flight.max(1);
        let mut results: Vec<Option<Result<Vec<u8>>>> = (0..n).map(|_| None).collect();
        let mut tries = vec![0u32; n];
        let mut in_flight: AHashMap<TaskId, usize> = AHashMap::new();
        let mut again: VecDeque<usize> = VecDeque::new();
        let mut next = 0;
        let mut done = 0;

        // Records a failed attempt; Err ends the map (abort mode).
        let failed = |idx: usize,
                      error: Error,
                      tries: &[u32],
                      again: &mut VecDeque<usize>,
                      results: &mut Vec<Option<Result<Vec<u8>>>>,
                      done: &mut usize|
         -> Result<()> {
            if tries[idx] <= options.retries {
                again.push_back(idx);
                return Ok(());
            }
            if abort {
                return Err(Error::Map {
                    index: idx,
                    error: Box::new(error),
                });
            }
            results[idx] = Some(Err(error));
            *done += 1;
            Ok(())
        };

        let outcome: Result<()> = (|| {
            while done < n {
                while in_flight.len() < window && (!again.is_empty() || next < n) {
                    let idx = match again.pop_front() {
                        Some(i) => i,
                        None => {
                            next += 1;
                            next - 1
                        }
                    };
                    tries[idx] += 1;
                    let job = Job::new(function, items[idx].clone())
                        .unique(format!("{prefix}-{idx}"))
                        .priority(options.priority);
                    match self.submit(job) {
                        Ok(t) => {
                            in_flight.insert(t, idx);
                        }
                        Err(e) => failed(idx, e, &tries, &mut again, &mut results, &mut done)?,
                    }
                }
                if in_flight.is_empty() {
                    continue;
                }
                let ev = self.next_event_matching(timeout, |t| in_flight.contains_key(&t))?;
                let Some(ev) = ev else {
                    // Only `forget` removes a task without a final event.
                    return Err(Error::protocol(
                        "",
                        "map jobs were forgotten while in flight",
                    ));
                };
                match ev {
                    Event::Complete { task, data } => {
                        if let Some(idx) = in_flight.remove(&task) {
                            results[idx] = Some(Ok(data));
                            done += 1;
                        }
                    }
                    Event::Failed { task, error } => {
                        if let Some(idx) = in_flight.remove(&task) {
                            failed(idx, error, &tries, &mut again, &mut results, &mut done)?;
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        })();
        if let Err(e) = outcome {
            for t in in_flight.keys() {
                self.forget(*t);
            }
            return Err(e);
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every item has a result"))
            .collect())
    }

    // ----- internals: events -----

    fn push_event(&mut self, ev: Event) {
        let t = ev.task();
        if ev.is_final() {
            self.tasks.remove(&t);
        }
        self.pending.entry(t).or_default().push_back(ev);
        self.order.push_back(t);
    }

    fn pop_task_event(&mut self, task: TaskId) -> Option<Event> {
        let q = self.pending.get_mut(&task)?;
        let ev = q.pop_front();
        if q.is_empty() {
            self.pending.remove(&task);
            // Entries of `order` for it are stale now; compact when they pile up.
            if self.order.len() > 2 * self.pending.len() + 1024 {
                let pending = &self.pending;
                self.order.retain(|t| pending.contains_key(t));
            }
        }
        ev
    }

    /// The oldest queued event whose task passes `want`, if any.
    fn take_queued(&mut self, want: &impl Fn(TaskId) -> bool) -> Option<Event> {
        let mut i = 0;
        while i < self.order.len() {
            let t = self.order[i];
            if !self.pending.contains_key(&t) {
                // Stale: its events were collected by `wait`.
                self.order.remove(i);
                continue;
            }
            if want(t) {
                self.order.remove(i);
                return self.pop_task_event(t);
            }
            i += 1;
        }
        None
    }

    fn next_event_matching(
        &mut self,
        timeout: Duration,
        want: impl Fn(TaskId) -> bool,
    ) -> Result<Option<Event>> {
        let deadline = deadline_after(timeout);
        loop {
            if let Some(ev) = self.take_queued(&want) {
                return Ok(Some(ev));
            }
            if !self.tasks.keys().any(|t| want(*t)) {
                return Ok(None);
            }
            let before = self.order.len();
            self.drive(deadline, |c| c.order.len() > before)?;
        }
    }

    // ----- internals: servers and connections -----

    /// Connects to server `i` unless it is connected, or (unless `force`) in back-off.
    fn ensure_conn(&mut self, i: usize, force: bool) -> Result<()> {
        let slot = &mut self.slots[i];
        if slot.conn.is_some() {
            return Ok(());
        }
        if !force
            && let Some(at) = slot.retry_at
            && Instant::now() < at
        {
            return Err(Error::Config(format!(
                "in back-off after: {}",
                slot.last_error
            )));
        }
        let mut io = match Connection::connect(
            &slot.addr,
            self.options.connect_timeout,
            self.options.tls.as_ref(),
        ) {
            Ok(io) => io,
            Err(e) => {
                self.mark_dead(i, &e);
                return Err(e);
            }
        };
        if let Err(e) = io.register(self.poll.registry(), Token(i)) {
            self.mark_dead(i, &e);
            return Err(e);
        }
        let mut conn = Conn {
            io,
            expect: VecDeque::new(),
            handles: AHashMap::new(),
        };
        if self.options.exceptions {
            conn.io.queue(PacketType::OptionReq, &[b"exceptions"]);
            conn.expect.push_back(Expect::Option);
        }
        log::debug!("connected to {}", slot.addr);
        slot.conn = Some(conn);
        slot.retry_at = None;
        slot.backoff = self.options.retry_min;
        Ok(())
    }

    fn mark_dead(&mut self, i: usize, why: &Error) {
        let slot = &mut self.slots[i];
        slot.last_error = why.to_string();
        slot.retry_at = Some(Instant::now() + slot.backoff);
        slot.backoff = (slot.backoff * 2).min(self.options.retry_max);
        log::info!(
            "job server {} is down ({}); retrying after {:?}",
            slot.addr,
            slot.last_error,
            slot.backoff
        );
    }

    /// Sends task `id` to the first server in its placement order that takes it: live ones
    /// first, then those in back-off. Fails (and leaves the task for the caller) when none can
    /// be reached or its attempts are used up.
    fn place(&mut self, id: TaskId) -> Result<()> {
        let (order, attempts) = {
            let t = self.tasks.get_mut(&id).expect("task exists");
            t.attempts += 1;
            (t.order.clone(), t.attempts)
        };
        if attempts > self.options.max_attempts.max(1) {
            let failures = std::mem::take(&mut self.tasks.get_mut(&id).unwrap().failures);
            return Err(Error::NoServer(failures));
        }
        for force in [false, true] {
            for &i in &order {
                if !force && self.slots[i].retry_at.is_some_and(|at| Instant::now() < at) {
                    continue;
                }
                if force && self.slots[i].conn.is_some() {
                    continue;
                }
                match self.ensure_conn(i, force) {
                    Ok(()) => {
                        self.queue_submit(i, id);
                        return Ok(());
                    }
                    Err(e) => {
                        let t = self.tasks.get_mut(&id).unwrap();
                        t.failures.push((self.servers[i].clone(), e.to_string()));
                    }
                }
            }
        }
        let failures = std::mem::take(&mut self.tasks.get_mut(&id).unwrap().failures);
        Err(Error::NoServer(failures))
    }

    fn queue_submit(&mut self, i: usize, id: TaskId) {
        let t = &self.tasks[&id];
        let conn = self.slots[i].conn.as_mut().expect("connected");
        match t.epoch {
            Some(epoch) => {
                let e = epoch.to_string();
                conn.io.queue(
                    PacketType::SubmitJobEpoch,
                    &[&t.function, &t.unique, e.as_bytes(), &t.data],
                );
            }
            None => {
                let ty = match (t.priority, t.background) {
                    (Priority::High, false) => PacketType::SubmitJobHigh,
                    (Priority::Normal, false) => PacketType::SubmitJob,
                    (Priority::Low, false) => PacketType::SubmitJobLow,
                    (Priority::High, true) => PacketType::SubmitJobHighBg,
                    (Priority::Normal, true) => PacketType::SubmitJobBg,
                    (Priority::Low, true) => PacketType::SubmitJobLowBg,
                };
                conn.io.queue(ty, &[&t.function, &t.unique, &t.data]);
            }
        }
        conn.expect.push_back(Expect::Created(id));
        if let Err(e) = conn.io.flush() {
            self.lost(i, e);
        }
    }

    /// Server `i`'s connection broke: mark it dead, fail its pending requests, and place its
    /// foreground tasks (and background ones not yet accepted) elsewhere.
    fn lost(&mut self, i: usize, why: Error) {
        let Some(mut conn) = self.slots[i].conn.take() else {
            return;
        };
        conn.io.deregister(self.poll.registry());
        self.mark_dead(i, &why);
        let mut again: Vec<TaskId> = Vec::new();
        for e in conn.expect {
            match e {
                Expect::Created(t) => again.push(t),
                Expect::Reply(r) => {
                    if let Some(slot) = self.requests.get_mut(&r) {
                        *slot = Some(Err(Error::io(
                            &self.servers[i],
                            std::io::Error::new(
                                std::io::ErrorKind::ConnectionAborted,
                                why.to_string(),
                            ),
                        )));
                    }
                }
                Expect::Option => {}
            }
        }
        for (_, attached) in conn.handles {
            again.extend(attached.tasks);
        }
        let mut seen = AHashSet::new();
        again.retain(|t| seen.insert(*t));
        for t in again {
            let Some(task) = self.tasks.get_mut(&t) else {
                continue;
            };
            task.failures
                .push((self.servers[i].clone(), why.to_string()));
            task.last_warning = None;
            log::info!(
                "resubmitting {} after losing {}",
                String::from_utf8_lossy(&task.unique),
                self.servers[i]
            );
            if let Err(e) = self.place(t) {
                self.push_event(Event::Failed { task: t, error: e });
            }
        }
    }

    /// Reads and handles whatever every connection has, and flushes what they owe. Never
    /// blocks.
    fn service(&mut self) {
        for i in 0..self.slots.len() {
            let Some(conn) = self.slots[i].conn.as_mut() else {
                continue;
            };
            if let Err(e) = conn.io.flush() {
                self.lost(i, e);
                continue;
            }
            let fill = conn.io.fill();
            let mut replies = Vec::new();
            let mut broken = None;
            loop {
                match conn.io.next() {
                    Ok(Some(Incoming::Packet(p))) => replies.push(p),
                    Ok(Some(Incoming::Line(_))) => {
                        broken = Some(Error::protocol(
                            &self.servers[i],
                            "text line on a binary connection",
                        ));
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            for p in replies {
                if let Err(e) = self.handle(i, p) {
                    broken = Some(e);
                    break;
                }
            }
            let broken = broken.or(match fill {
                Ok(Fill::Open) => None,
                Ok(Fill::Closed) => Some(Error::io(
                    &self.servers[i],
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ),
                )),
                Err(e) => Some(e),
            });
            if let Some(e) = broken {
                self.lost(i, e);
            }
        }
        // Failovers above may have queued submissions on other connections.
        for i in 0..self.slots.len() {
            if let Some(conn) = self.slots[i].conn.as_mut()
                && !conn.io.flushed()
                && let Err(e) = conn.io.flush()
            {
                self.lost(i, e);
            }
        }
    }

    /// Services connections until `done` holds or `deadline` passes.
    fn drive(&mut self, deadline: Instant, done: impl Fn(&Client) -> bool) -> Result<()> {
        loop {
            self.service();
            if done(self) {
                return Ok(());
            }
            let left = remaining(deadline)?;
            match self.poll.poll(&mut self.poll_events, Some(left)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Config(format!("poll failed: {e}"))),
            }
        }
    }

    /// Sends one request to server `i` and waits for its reply.
    fn request(
        &mut self,
        i: usize,
        ty: PacketType,
        args: &[&[u8]],
        deadline: Instant,
    ) -> Result<Reply> {
        self.ensure_conn(i, true)?;
        let id = self.next_request;
        self.next_request += 1;
        let conn = self.slots[i].conn.as_mut().expect("connected");
        conn.io.queue(ty, args);
        conn.expect.push_back(Expect::Reply(id));
        self.requests.insert(id, None);
        let r = self.drive(deadline, |c| matches!(c.requests.get(&id), Some(Some(_))));
        let got = self.requests.remove(&id);
        r?;
        got.flatten().unwrap_or(Err(Error::Timeout))
    }

    /// Handles one packet from server `i`. An error means the connection can no longer be
    /// trusted (it is closed and its work failed over).
    fn handle(&mut self, i: usize, mut p: Reply) -> Result<()> {
        let server = self.servers[i].clone();
        let unexpected = |p: &Reply| {
            Error::protocol(
                &server,
                format!("unexpected {} from the server", p.ty.name()),
            )
        };
        match p.ty {
            PacketType::JobCreated => {
                let conn = self.slots[i].conn.as_mut().unwrap();
                let Some(Expect::Created(t)) = conn.expect.pop_front() else {
                    return Err(unexpected(&p));
                };
                let handle = p.take(0);
                let Some(task) = self.tasks.get(&t) else {
                    return Ok(()); // forgotten
                };
                let jh = JobHandle::new(server, handle.clone());
                if task.background {
                    self.push_event(Event::Submitted {
                        task: t,
                        handle: jh,
                    });
                } else {
                    conn.handles.entry(handle).or_default().tasks.push(t);
                    self.push_event(Event::Created {
                        task: t,
                        handle: jh,
                    });
                }
            }
            PacketType::Error => {
                let conn = self.slots[i].conn.as_mut().unwrap();
                let error = Error::Server {
                    server: server.clone(),
                    code: String::from_utf8_lossy(p.arg(0)).into_owned(),
                    message: String::from_utf8_lossy(p.arg(1)).into_owned(),
                };
                match conn.expect.pop_front() {
                    Some(Expect::Created(t)) => {
                        if self.tasks.contains_key(&t) {
                            self.push_event(Event::Failed { task: t, error });
                        }
                    }
                    Some(Expect::Reply(r)) => {
                        if let Some(slot) = self.requests.get_mut(&r) {
                            *slot = Some(Err(error));
                        }
                    }
                    Some(Expect::Option) => {
                        log::debug!("{server} does not take the exceptions option: {error}");
                    }
                    None => log::warn!("unsolicited {error}"),
                }
            }
            PacketType::OptionRes => {
                let conn = self.slots[i].conn.as_mut().unwrap();
                match conn.expect.pop_front() {
                    Some(Expect::Option) => {}
                    _ => return Err(unexpected(&p)),
                }
            }
            PacketType::StatusRes | PacketType::StatusResUnique | PacketType::EchoRes => {
                let conn = self.slots[i].conn.as_mut().unwrap();
                let Some(Expect::Reply(r)) = conn.expect.pop_front() else {
                    return Err(unexpected(&p));
                };
                if let Some(slot) = self.requests.get_mut(&r) {
                    *slot = Some(Ok(p));
                }
            }
            PacketType::WorkData
            | PacketType::WorkWarning
            | PacketType::WorkStatus
            | PacketType::WorkComplete
            | PacketType::WorkFail
            | PacketType::WorkException => self.handle_work(i, p),
            PacketType::Noop => {}
            _ => return Err(unexpected(&p)),
        }
        Ok(())
    }

    fn handle_work(&mut self, i: usize, mut p: Reply) {
        let mut handle = p.take(0);
        if p.ty == PacketType::WorkFail && handle.last() == Some(&0) {
            // gearmand turns WORK_EXCEPTION into WORK_FAIL `handle\0` for clients without
            // the exceptions option (PROTOCOL.md §3.6).
            handle.pop();
        }
        let conn = self.slots[i].conn.as_mut().unwrap();
        let final_ = matches!(
            p.ty,
            PacketType::WorkComplete | PacketType::WorkFail | PacketType::WorkException
        );
        let Some(attached) = conn.handles.get_mut(&handle) else {
            return; // a forgotten task's job, or a copy past the last task
        };
        let at = attached.cursor % attached.tasks.len();
        let t = attached.tasks[at];
        if final_ {
            attached.tasks.remove(at);
            if attached.tasks.is_empty() {
                conn.handles.remove(&handle);
            }
        } else {
            attached.cursor = (at + 1) % attached.tasks.len();
        }
        if !self.tasks.contains_key(&t) {
            return;
        }
        let ev = match p.ty {
            PacketType::WorkData => Event::Data {
                task: t,
                data: p.arg(1).to_vec(),
            },
            PacketType::WorkWarning => {
                self.tasks.get_mut(&t).unwrap().last_warning = Some(p.arg(1).to_vec());
                Event::Warning {
                    task: t,
                    data: p.arg(1).to_vec(),
                }
            }
            PacketType::WorkStatus => Event::Status {
                task: t,
                numerator: parse_num(p.arg(1)),
                denominator: parse_num(p.arg(2)),
            },
            PacketType::WorkComplete => Event::Complete {
                task: t,
                data: p.arg(1).to_vec(),
            },
            PacketType::WorkFail => Event::Failed {
                task: t,
                error: Error::JobFailed {
                    handle: handle.clone(),
                    message: self.tasks.get_mut(&t).unwrap().last_warning.take(),
                },
            },
            _ => Event::Failed {
                task: t,
                error: Error::JobException {
                    handle: handle.clone(),
                    message: p.arg(1).to_vec(),
                },
            },
        };
        self.push_event(ev);
    }
}

/// Iterator over a client's events; see [`Client::events`].
pub struct EventIter<'a> {
    client: &'a mut Client,
    timeout: Duration,
    done: bool,
}

impl Iterator for EventIter<'_> {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Result<Event>> {
        if self.done {
            return None;
        }
        match self.client.next_event(self.timeout) {
            Ok(Some(ev)) => Some(Ok(ev)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
