//! Client, worker and admin library for Gearman job servers: gearshiftd, or the C gearmand.
//!
//! A blocking API over std sockets, built on the crate's own codec ([`crate::protocol`]):
//!
//! - [`Client`] submits jobs to a list of servers. A job goes to the server its unique id
//!   hashes to (rendezvous hashing), so a unique coalesces across a cluster; when that server is
//!   down, or dies while a foreground job is in flight, the job goes to the next live server
//!   in the unique's own order. Dead servers are retried after an exponential back-off. Many
//!   jobs can be in flight at once, with WORK_DATA, WORK_WARNING and WORK_STATUS delivered as
//!   they arrive ([`Event`]); [`Client::map`] is the distributed map of the Gearman demo.
//! - [`Worker`] connects to every server, registers functions, runs the grab/sleep loop, and
//!   reconnects (and re-registers) with back-off when a server goes away.
//! - [`Admin`] is typed access to the text admin protocol of one server.
//!
//! # Delivery semantics
//!
//! Foreground jobs are delivered **at least once**. A job whose server dies before the result
//! arrives is submitted again, with the same unique, to the next live server; if the dead
//! server's worker had already started (or finished) it, it may run twice. Coalescing on the
//! unique prevents duplicates only among submissions that reach the same server. Background
//! jobs are handed over once the server answers JOB_CREATED; the library never resubmits
//! them after that (the server's persistence, if any, is then responsible for them).
//!
//! # Quick start
//!
//! ```no_run
//! use gearshift::client::{Client, Worker};
//!
//! // A worker, usually in another process or on another machine.
//! let mut worker = Worker::new(["127.0.0.1:4730"])?;
//! worker.register("reverse", |job| Ok(job.data().iter().rev().copied().collect()));
//! std::thread::spawn(move || worker.run());
//!
//! // A client.
//! let mut client = Client::new(["127.0.0.1:4730"])?;
//! assert_eq!(client.call("reverse", "hello")?, b"olleh");
//! # Ok::<(), gearshift::client::Error>(())
//! ```
//!
//! Server lists are `host:port` items separated by commas (the port defaults to 4730); every
//! client and worker of a cluster should name the servers the same way, since the address
//! strings take part in placement.

mod admin;
#[allow(clippy::module_inception)]
mod client;
mod connection;
mod worker;

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use admin::{Admin, FunctionStatus, JobInfo, PriorityStatus, WorkerInfo};
pub use client::{
    Client, ClientOptions, Event, EventIter, Job, JobHandle, JobOutput, JobStatus, MapOptions,
    Priority, TaskId,
};
pub use worker::{JobContext, JobFn, StopHandle, WorkError, Worker, WorkerOptions};

/// The default Gearman port.
pub const DEFAULT_PORT: u16 = 4730;

/// TLS for connections to job servers: the CA certificates a server's certificate must be
/// signed by (and match the host it was reached by), and for servers that require it
/// (mutual TLS), this client's certificate and key. Cheap to clone.
///
/// ```no_run
/// use gearshift::client::{Client, ClientOptions, Tls};
///
/// let mut opts = ClientOptions::default();
/// opts.tls = Some(Tls::from_files("ca.pem", Some(("client.pem", "client.key")))?);
/// let mut client = Client::with_options(["gear.example.com:4730"], opts)?;
/// # Ok::<(), gearshift::client::Error>(())
/// ```
#[derive(Clone)]
pub struct Tls {
    config: std::sync::Arc<rustls::ClientConfig>,
}

impl Tls {
    /// Reads the CA certificates (PEM) and, if given, the certificate chain and private key
    /// (PEM) to present.
    pub fn from_files<P: AsRef<std::path::Path>>(ca: P, identity: Option<(P, P)>) -> Result<Tls> {
        let identity = identity.as_ref().map(|(c, k)| (c.as_ref(), k.as_ref()));
        crate::tls::client_config(ca.as_ref(), identity)
            .map(Tls::from_config)
            .map_err(Error::Config)
    }

    /// A rustls configuration made elsewhere.
    pub fn from_config(config: std::sync::Arc<rustls::ClientConfig>) -> Tls {
        Tls { config }
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tls { .. }")
    }
}

/// What can go wrong talking to job servers, or with a job.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A server list or an option was invalid.
    Config(String),
    /// No configured server could be reached. Holds each server tried, with why it failed.
    NoServer(Vec<(String, String)>),
    /// An I/O error on the connection to a server (including the server closing it).
    Io {
        /// The server, as configured.
        server: String,
        /// The error.
        error: io::Error,
    },
    /// A wait ran past its deadline.
    Timeout,
    /// The server answered with an ERROR packet (for example `QUEUE_ERROR` when a
    /// function's `maxqueue` is reached).
    Server {
        /// The server, as configured.
        server: String,
        /// The ERROR code, e.g. `QUEUE_ERROR`.
        code: String,
        /// The ERROR text.
        message: String,
    },
    /// The server refused an admin command with an `ERR` line.
    Admin {
        /// The server, as configured.
        server: String,
        /// The line without `ERR `, e.g. `UNKNOWN_JOB`.
        message: String,
    },
    /// The server sent something this library did not expect.
    Protocol {
        /// The server, as configured.
        server: String,
        /// What was wrong.
        message: String,
    },
    /// The worker reported failure (WORK_FAIL). `message` is the last WORK_WARNING the worker
    /// sent for the job, if any: this library's [`Worker`] sends a failure message that way.
    JobFailed {
        /// The job handle.
        handle: Vec<u8>,
        /// The worker's message, if it sent one.
        message: Option<Vec<u8>>,
    },
    /// The worker raised an exception (WORK_EXCEPTION) with this message.
    JobException {
        /// The job handle.
        handle: Vec<u8>,
        /// The worker's message.
        message: Vec<u8>,
    },
    /// The task id is not in flight on this client (already collected, or forgotten).
    UnknownTask(TaskId),
    /// An item of [`Client::map`] failed (after its retries).
    Map {
        /// The item's position in the input.
        index: usize,
        /// Why it failed.
        error: Box<Error>,
    },
}

impl Error {
    pub(crate) fn io(server: &str, error: io::Error) -> Error {
        Error::Io {
            server: server.to_string(),
            error,
        }
    }

    pub(crate) fn protocol(server: &str, message: impl Into<String>) -> Error {
        Error::Protocol {
            server: server.to_string(),
            message: message.into(),
        }
    }

    /// True for a job that ran and failed: [`Error::JobFailed`] and [`Error::JobException`]
    /// (also inside [`Error::Map`]).
    pub fn is_job_failure(&self) -> bool {
        match self {
            Error::JobFailed { .. } | Error::JobException { .. } => true,
            Error::Map { error, .. } => error.is_job_failure(),
            _ => false,
        }
    }

    /// True when the servers could not be reached or the connection broke:
    /// [`Error::NoServer`] and [`Error::Io`] (also inside [`Error::Map`]).
    pub fn is_connection(&self) -> bool {
        match self {
            Error::NoServer(_) | Error::Io { .. } => true,
            Error::Map { error, .. } => error.is_connection(),
            _ => false,
        }
    }

    /// True for [`Error::Timeout`] (also inside [`Error::Map`]).
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::Timeout => true,
            Error::Map { error, .. } => error.is_timeout(),
            _ => false,
        }
    }

    /// The worker's message of a failed job, if there is one.
    pub fn job_message(&self) -> Option<&[u8]> {
        match self {
            Error::JobFailed { message, .. } => message.as_deref(),
            Error::JobException { message, .. } => Some(message),
            Error::Map { error, .. } => error.job_message(),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m) => write!(f, "{m}"),
            Error::NoServer(tried) => {
                write!(f, "no job server reachable")?;
                // Each server once (a server may be tried again before giving up), named once.
                let mut said: Vec<(&str, &str)> = Vec::new();
                for (s, why) in tried {
                    let why = why
                        .strip_prefix(s.as_str())
                        .and_then(|w| w.strip_prefix(": "))
                        .unwrap_or(why);
                    if said.contains(&(s.as_str(), why)) {
                        continue;
                    }
                    write!(f, "{} {s}: {why}", if said.is_empty() { ":" } else { ";" })?;
                    said.push((s, why));
                }
                Ok(())
            }
            Error::Io { server, error } => write!(f, "{server}: {error}"),
            Error::Timeout => write!(f, "timed out"),
            Error::Server {
                server,
                code,
                message,
            } => write!(f, "{server}: server error {code}: {message}"),
            Error::Admin { server, message } => write!(f, "{server}: {message}"),
            Error::Protocol { server, message } => write!(f, "{server}: protocol error: {message}"),
            Error::JobFailed { handle, message } => {
                write!(f, "job {} failed", String::from_utf8_lossy(handle))?;
                if let Some(m) = message {
                    write!(f, ": {}", String::from_utf8_lossy(m))?;
                }
                Ok(())
            }
            Error::JobException { handle, message } => write!(
                f,
                "job {} raised an exception: {}",
                String::from_utf8_lossy(handle),
                String::from_utf8_lossy(message)
            ),
            Error::UnknownTask(t) => write!(f, "task {} is not in flight", t.0),
            Error::Map { index, error } => write!(f, "map item {index}: {error}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { error, .. } => Some(error),
            Error::Map { error, .. } => Some(&**error),
            _ => None,
        }
    }
}

/// Shorthand for results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses a server list: `host:port` items separated by commas, whitespace ignored. The port
/// defaults to 4730; IPv6 addresses go in brackets (`[::1]:4730`). Duplicates are dropped.
///
/// ```
/// use gearshift::client::parse_servers;
///
/// let s = parse_servers("10.0.0.1:4730, gear2 ,[::1]:4731").unwrap();
/// assert_eq!(s, ["10.0.0.1:4730", "gear2:4730", "[::1]:4731"]);
/// assert!(parse_servers("").is_err());
/// assert!(parse_servers("host:port").is_err());
/// ```
pub fn parse_servers(list: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let addr = normalize_server(item)?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    if out.is_empty() {
        return Err(Error::Config(format!("no job server in {list:?}")));
    }
    Ok(out)
}

/// Parses several lists (each may itself hold commas) into one.
pub(crate) fn collect_servers<I, S>(servers: I) -> Result<Vec<String>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out: Vec<String> = Vec::new();
    for s in servers {
        for a in parse_servers(s.as_ref())? {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Config("no job server given".into()));
    }
    Ok(out)
}

fn normalize_server(item: &str) -> Result<String> {
    let bad = || Error::Config(format!("invalid server address {item:?} (want host:port)"));
    let (host, port) = if let Some(rest) = item.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(p) => (format!("[{h}]"), Some(p)),
            None if after.is_empty() => (format!("[{h}]"), None),
            None => return Err(bad()),
        }
    } else if item.matches(':').count() > 1 {
        // A bare IPv6 address: no port.
        (format!("[{item}]"), None)
    } else {
        match item.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (item.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    let port: u16 = match port {
        Some(p) => p.parse().map_err(|_| bad())?,
        None => DEFAULT_PORT,
    };
    Ok(format!("{host}:{port}"))
}

/// FNV-1a (the same function as `jobs::hash::placement`) followed by a 64-bit finaliser, so
/// that near-identical keys spread evenly.
fn mix_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0xff;
            h = h.wrapping_mul(0x100000001b3);
        }
        for &b in *part {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    // splitmix64's finaliser.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58476d1ce4e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d049bb133111eb);
    h ^ (h >> 31)
}

/// The order in which servers are tried for a job with this placement key: rendezvous
/// (highest random weight) hashing of the key with each server's address. Every client that
/// names the same servers computes the same order, whatever order it lists them in, and when a
/// server is down its jobs spread over the others instead of all landing on one neighbour.
///
/// ```
/// use gearshift::client::placement_order;
///
/// let servers = ["a:4730".to_string(), "b:4730".to_string(), "c:4730".to_string()];
/// let order = placement_order(&servers, b"some-unique");
/// assert_eq!(order.len(), 3);
/// // The same key always gives the same order.
/// assert_eq!(order, placement_order(&servers, b"some-unique"));
/// ```
pub fn placement_order(servers: &[String], key: &[u8]) -> Vec<usize> {
    let mut scored: Vec<(u64, usize)> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (mix_hash(&[s.as_bytes(), key]), i))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, i)| i).collect()
}

/// A random version-4 UUID in its 36-character text form, as libgearman generates for jobs
/// without a unique. Randomness comes from std's per-process random hasher keys, the clock,
/// the process id and a counter.
///
/// ```
/// let u = gearshift::client::generate_unique();
/// assert_eq!(u.len(), 36);
/// assert_ne!(u, gearshift::client::generate_unique());
/// ```
pub fn generate_unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let word = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u64(n);
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.finish()
    };
    let hi = word(0x9e3779b97f4a7c15);
    let lo = word(0xc2b2ae3d27d4eb4f);
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_be_bytes());
    b[8..].copy_from_slice(&lo.to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Parses a decimal number as gearmand's `atoi` would for status numbers: leading digits
/// only; anything else counts as 0; overflow saturates.
pub(crate) fn parse_num(s: &[u8]) -> u64 {
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            break;
        }
        n = n.saturating_mul(10).saturating_add((b - b'0') as u64);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists() {
        assert_eq!(parse_servers("a,b:1,a:4730").unwrap(), ["a:4730", "b:1"]);
        assert_eq!(parse_servers("::1").unwrap(), ["[::1]:4730"]);
        assert!(parse_servers("a:70000").is_err());
        assert!(parse_servers(" , ").is_err());
        assert!(parse_servers("[::1").is_err());
        assert_eq!(
            collect_servers(["a:1,b:2", "c:3"]).unwrap(),
            ["a:1", "b:2", "c:3"]
        );
    }

    #[test]
    fn placement_spreads_and_ignores_list_order() {
        let s: Vec<String> = (0..4).map(|i| format!("10.0.0.{i}:4730")).collect();
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[placement_order(&s, format!("u{i}").as_bytes())[0]] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        let mut rev = s.clone();
        rev.reverse();
        for i in 0..100 {
            let k = format!("k{i}");
            let a = placement_order(&s, k.as_bytes());
            let b = placement_order(&rev, k.as_bytes());
            let names_a: Vec<&String> = a.iter().map(|&i| &s[i]).collect();
            let names_b: Vec<&String> = b.iter().map(|&i| &rev[i]).collect();
            assert_eq!(names_a, names_b);
        }
    }

    #[test]
    fn uniques_look_like_uuids() {
        let u = generate_unique();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, generate_unique());
    }

    #[test]
    fn handles_can_move_between_threads() {
        fn send<T: Send>() {}
        fn sync<T: Send + Sync>() {}
        send::<Client>();
        send::<Worker>();
        send::<Admin>();
        send::<Event>();
        send::<Error>();
        sync::<StopHandle>();
    }

    #[test]
    fn numbers_parse_like_atoi() {
        assert_eq!(parse_num(b"42"), 42);
        assert_eq!(parse_num(b"7x"), 7);
        assert_eq!(parse_num(b"x"), 0);
        assert_eq!(parse_num(b"99999999999999999999999"), u64::MAX);
    }
}
