//! Typed access to one server's text admin protocol (PROTOCOL.md §2): each command sends one
//! line and parses the reply, an `OK` line, an `ERR` line or a listing ending in `.`.

use std::fmt;
use std::time::Duration;

use super::connection::{Connection, Incoming, deadline_after};
use super::{Error, Result, Tls, parse_servers};

/// One line of `status`: a function and its counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionStatus {
    /// The function name.
    pub function: String,
    /// Jobs of the function, queued and running.
    pub total: u64,
    /// Jobs a worker holds now.
    pub running: u64,
    /// Registered workers (a worker registering twice counts twice).
    pub workers: u64,
}

/// One line of `prioritystatus`: queued (not running) jobs per priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriorityStatus {
    /// The function name.
    pub function: String,
    /// Queued high-priority jobs.
    pub high: u64,
    /// Queued normal-priority jobs.
    pub normal: u64,
    /// Queued low-priority jobs.
    pub low: u64,
    /// Registered workers.
    pub workers: u64,
}

/// One line of `workers`: a connection to the server and what it registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The server's file descriptor (or connection number) for it.
    pub fd: String,
    /// The peer's address.
    pub ip: String,
    /// The id it set with SET_CLIENT_ID, `-` if none.
    pub client_id: String,
    /// The functions it registered (empty for clients and admin connections).
    pub functions: Vec<String>,
}

/// One line of `show jobs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// The job handle.
    pub handle: String,
    /// Times it was requeued after a worker went away.
    pub retries: u64,
    /// Abandoned (its clients left, or it was cancelled) and waiting to be freed.
    pub ignored: bool,
    /// Persisted (every background job shows 1).
    pub queued: bool,
}

/// A connection to one server's admin interface.
///
/// ```no_run
/// use std::time::Duration;
/// use gearshift::client::Admin;
///
/// let mut admin = Admin::connect("127.0.0.1:4730", Duration::from_secs(5))?;
/// println!("server version {}", admin.version()?);
/// for f in admin.status()? {
///     println!("{}: {} jobs, {} running, {} workers", f.function, f.total, f.running, f.workers);
/// }
/// admin.maxqueue("resize", Some(1000))?;
/// # Ok::<(), gearshift::client::Error>(())
/// ```
pub struct Admin {
    conn: Connection,
    timeout: Duration,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Admin({})", self.conn.addr())
    }
}

/// Splits a listing line on tabs into exactly `n` fields.
fn fields<'a>(server: &str, line: &'a str, n: usize) -> Result<Vec<&'a str>> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() != n {
        return Err(Error::protocol(
            server,
            format!("admin line with {} fields, wanted {n}: {line:?}", f.len()),
        ));
    }
    Ok(f)
}

fn number(server: &str, s: &str) -> Result<u64> {
    s.trim()
        .parse()
        .map_err(|_| Error::protocol(server, format!("not a number in an admin reply: {s:?}")))
}

impl Admin {
    /// Connects to `server` (`host:port`, port 4730 by default). `timeout` bounds the
    /// connection attempt and every command.
    pub fn connect(server: &str, timeout: Duration) -> Result<Admin> {
        Admin::connect_with_tls(server, timeout, None)
    }

    /// Like [`connect`](Admin::connect), through TLS when `tls` is given.
    pub fn connect_with_tls(server: &str, timeout: Duration, tls: Option<&Tls>) -> Result<Admin> {
        let addrs = parse_servers(server)?;
        if addrs.len() != 1 {
            return Err(Error::Config(format!(
                "one admin server at a time, not {server:?}"
            )));
        }
        Ok(Admin {
            conn: Connection::connect(&addrs[0], timeout, tls)?,
            timeout,
        })
    }

    /// The server, as `host:port`.
    pub fn server(&self) -> &str {
        self.conn.addr()
    }

    /// Changes the time limit of each command.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn line(&mut self, deadline: std::time::Instant) -> Result<Vec<u8>> {
        match self.conn.request(deadline)? {
            Incoming::Line(l) => Ok(l),
            Incoming::Packet(p) => Err(Error::protocol(
                self.conn.addr(),
                format!("{} packet in reply to an admin command", p.ty.name()),
            )),
        }
    }

    /// Sends one command line (CRLF-terminated, as gearadmin does) and returns the single
    /// reply line; an `ERR` reply is [`Error::Admin`]. Bytes that are not UTF-8 become
    /// U+FFFD; [`command_bytes`](Admin::command_bytes) keeps them.
    pub fn command(&mut self, command: &str) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.command_bytes(command)?).into_owned())
    }

    /// Like [`command`](Admin::command), the reply line as the server sent it (without its
    /// line end).
    pub fn command_bytes(&mut self, command: &str) -> Result<Vec<u8>> {
        let deadline = deadline_after(self.timeout);
        self.send(command);
        let line = self.line(deadline)?;
        self.check_err(&line)?;
        Ok(line)
    }

    /// Sends one command line and returns the lines of its listing, without the final `.`.
    /// Bytes that are not UTF-8 become U+FFFD; [`listing_bytes`](Admin::listing_bytes) keeps
    /// them.
    pub fn listing(&mut self, command: &str) -> Result<Vec<String>> {
        Ok(self
            .listing_bytes(command)?
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect())
    }

    /// Like [`listing`](Admin::listing), each line as the server sent it (without its line
    /// end).
    pub fn listing_bytes(&mut self, command: &str) -> Result<Vec<Vec<u8>>> {
        let deadline = deadline_after(self.timeout);
        self.send(command);
        let mut out = Vec::new();
        loop {
            let line = self.line(deadline)?;
            if line == b"." {
                return Ok(out);
            }
            if out.is_empty() && line.starts_with(b"ERR ") && !line.contains(&b'\t') {
                self.check_err(&line)?;
            }
            out.push(line);
        }
    }

    fn send(&mut self, command: &str) {
        let mut l = command.as_bytes().to_vec();
        l.push(b'\r');
        self.conn.queue_line(&l);
    }

    fn check_err(&self, line: &[u8]) -> Result<()> {
        if let Some(msg) = line.strip_prefix(b"ERR") {
            return Err(Error::Admin {
                server: self.conn.addr().to_string(),
                message: String::from_utf8_lossy(msg).trim_start().to_string(),
            });
        }
        Ok(())
    }

    fn ok(&mut self, command: &str) -> Result<()> {
        let line = self.command(command)?;
        if line.starts_with("OK") {
            Ok(())
        } else {
            Err(Error::protocol(
                self.conn.addr(),
                format!("unexpected reply to {command:?}: {line:?}"),
            ))
        }
    }

    fn ok_value(&mut self, command: &str) -> Result<String> {
        let line = self.command(command)?;
        match line.strip_prefix("OK ") {
            Some(v) => Ok(v.to_string()),
            None => Err(Error::protocol(
                self.conn.addr(),
                format!("unexpected reply to {command:?}: {line:?}"),
            )),
        }
    }

    /// `status`: every function the server knows, with job and worker counts.
    pub fn status(&mut self) -> Result<Vec<FunctionStatus>> {
        let server = self.conn.addr().to_string();
        self.listing("status")?
            .iter()
            .map(|l| {
                let f = fields(&server, l, 4)?;
                Ok(FunctionStatus {
                    function: f[0].to_string(),
                    total: number(&server, f[1])?,
                    running: number(&server, f[2])?,
                    workers: number(&server, f[3])?,
                })
            })
            .collect()
    }

    /// `prioritystatus`: queued jobs per priority.
    pub fn priority_status(&mut self) -> Result<Vec<PriorityStatus>> {
        let server = self.conn.addr().to_string();
        self.listing("prioritystatus")?
            .iter()
            .map(|l| {
                let f = fields(&server, l, 5)?;
                Ok(PriorityStatus {
                    function: f[0].to_string(),
                    high: number(&server, f[1])?,
                    normal: number(&server, f[2])?,
                    low: number(&server, f[3])?,
                    workers: number(&server, f[4])?,
                })
            })
            .collect()
    }

    /// `workers`: every connection, with its registered functions.
    pub fn workers(&mut self) -> Result<Vec<WorkerInfo>> {
        let server = self.conn.addr().to_string();
        self.listing("workers")?
            .iter()
            .map(|l| {
                let bad = || Error::protocol(&server, format!("bad workers line {l:?}"));
                let (fd, rest) = l.split_once(' ').ok_or_else(bad)?;
                let (ip, rest) = rest.split_once(' ').ok_or_else(bad)?;
                // The client id may hold spaces; the functions follow the first " :".
                let (id, funcs) = if let Some(id) = rest.strip_suffix(" :") {
                    (id, "")
                } else {
                    rest.split_once(" : ").ok_or_else(bad)?
                };
                Ok(WorkerInfo {
                    fd: fd.to_string(),
                    ip: ip.to_string(),
                    client_id: id.to_string(),
                    functions: funcs
                        .split(' ')
                        .filter(|f| !f.is_empty())
                        .map(str::to_string)
                        .collect(),
                })
            })
            .collect()
    }

    /// `show jobs`: every job the server holds.
    pub fn show_jobs(&mut self) -> Result<Vec<JobInfo>> {
        let server = self.conn.addr().to_string();
        self.listing("show jobs")?
            .iter()
            .map(|l| {
                let f = fields(&server, l, 4)?;
                Ok(JobInfo {
                    handle: f[0].to_string(),
                    retries: number(&server, f[1])?,
                    ignored: number(&server, f[2])? != 0,
                    queued: number(&server, f[3])? != 0,
                })
            })
            .collect()
    }

    /// `show unique jobs`: the unique id of every job (empty for jobs without one).
    pub fn show_unique_jobs(&mut self) -> Result<Vec<String>> {
        self.listing("show unique jobs")
    }

    /// `version`: the server's version string.
    pub fn version(&mut self) -> Result<String> {
        self.ok_value("version")
    }

    /// `getpid`: the server's process id.
    pub fn pid(&mut self) -> Result<u32> {
        let v = self.ok_value("getpid")?;
        v.trim()
            .parse()
            .map_err(|_| Error::protocol(self.conn.addr(), format!("getpid answered {v:?}")))
    }

    /// `verbose`: the server's log level name.
    pub fn verbose(&mut self) -> Result<String> {
        self.ok_value("verbose")
    }

    /// `queue` (gearshiftd only): the health of the persistent store, `<store> ok`,
    /// `<store> failing: <error>`, or `builtin` without a store. gearmand refuses it
    /// ([`Error::Admin`] `UNKNOWN_COMMAND`).
    pub fn queue(&mut self) -> Result<String> {
        self.ok_value("queue")
    }

    /// `cancel job H`: fails the job's waiting clients (WORK_FAIL) and drops it once no worker
    /// holds it. [`Error::Admin`] `UNKNOWN_JOB` when the server does not have it.
    pub fn cancel_job(&mut self, handle: &str) -> Result<()> {
        self.ok(&format!("cancel job {handle}"))
    }

    /// `create function F`.
    pub fn create_function(&mut self, function: &str) -> Result<()> {
        self.ok(&format!("create function {function}"))
    }

    /// `drop function F`: forgets a function with no workers and no running jobs.
    pub fn drop_function(&mut self, function: &str) -> Result<()> {
        self.ok(&format!("drop function {function}"))
    }

    /// `maxqueue F [N]`: at most N queued and running jobs of F (None or 0: no limit). The
    /// server ignores it for a function it has never seen (see
    /// [`Admin::create_function`]).
    pub fn maxqueue(&mut self, function: &str, limit: Option<u32>) -> Result<()> {
        match limit {
            Some(n) => self.ok(&format!("maxqueue {function} {n}")),
            None => self.ok(&format!("maxqueue {function}")),
        }
    }

    /// `maxqueue F H N L`: a limit per priority (0: none).
    pub fn maxqueue_priorities(
        &mut self,
        function: &str,
        high: u32,
        normal: u32,
        low: u32,
    ) -> Result<()> {
        self.ok(&format!("maxqueue {function} {high} {normal} {low}"))
    }
}
