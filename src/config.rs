//! gearmand's command line (PROTOCOL.md §4), in two layers: [`Flags`] is what was typed,
//! [`Config`] the validated settings the server runs with. A gearmand command line, config file
//! or init script works unchanged; a flag whose feature gearshiftd does not have fails at start
//! with a message naming it, never silently.

use std::fmt;
use std::path::{Path, PathBuf};

use clap::Parser;

/// Default port, as gearmand.
pub const DEFAULT_PORT: u16 = 4730;
/// Default `--backlog`.
pub const DEFAULT_BACKLOG: i32 = 1024;
/// Default `--max-packet-size`.
pub const DEFAULT_MAX_PACKET: usize = 64 << 20;
/// Default `--metrics-max-functions`.
pub const DEFAULT_METRICS_MAX_FUNCTIONS: u32 = 1000;
/// Default `--metrics-max-connections`.
pub const DEFAULT_METRICS_MAX_CONNECTIONS: u32 = 16;
/// Default `--metrics-timeout`, milliseconds.
pub const DEFAULT_METRICS_TIMEOUT_MS: u64 = 10_000;
/// Default `--metrics-min-interval`, milliseconds.
pub const DEFAULT_METRICS_MIN_INTERVAL_MS: u64 = 1_000;
/// Default `--max-line`.
pub const DEFAULT_MAX_LINE: usize = 8192;
/// Default `--max-output-buffer`.
pub const DEFAULT_MAX_OUTPUT: usize = 256 << 20;
/// Default `--max-input-buffer`.
pub const DEFAULT_MAX_INPUT: usize = 1 << 30;
/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1_000_000;
/// Default `--ssl-handshake-timeout`, in milliseconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// gearmand's default TLS files (`<sysconfdir>/ssl/certs/...`, Debian's sysconfdir). Its
/// default CA file is not used: gearmand never asks clients for a certificate, so only a CA
/// named on purpose turns on mutual TLS.
const DEFAULT_SSL_CERTIFICATE: &str = "/etc/ssl/certs/gearmand.pem";
const DEFAULT_SSL_KEY: &str = "/etc/ssl/certs/gearmand.key";
const DEFAULT_CONFIG_FILE: &str = "/etc/gearmand.conf";
const DEFAULT_LOG_FILE: &str = "/var/log/gearmand.log";
const DEFAULT_PID_FILE: &str = "/var/gearmand.pid";
const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";

/// The flags as typed. Names, short forms and defaults are gearmand's.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "gearshiftd",
    version,
    about = "A Gearman job server: gearmand 1.1's protocol and flags on sharded event loops.",
    args_override_self = true,
    after_help = "Limits: every packet body is bounded by --max-packet-size, every admin line by \
--max-line, incomplete frames held across the server by --max-input-buffer, unread output per \
connection by --max-output-buffer, and open connections by --max-connections (and the file-descriptor limit, -f). Jobs per function are bounded with the \
admin command `maxqueue`."
)]
pub struct Flags {
    /// Number of pending connections the listen queue holds (gearmand's default, 32,
    /// overflows in connection storms: each connection dropped from a full queue waits a
    /// second or more for its SYN to be sent again).
    #[arg(short = 'b', long, default_value_t = DEFAULT_BACKLOG)]
    pub backlog: i32,
    /// Seconds to keep retrying bind() while the address is in use (EADDRINUSE), with growing
    /// sleeps (1, 2, 4, 6, 9, 13, ... s) as gearmand does, before giving up.
    #[arg(long = "bind-timeout", default_value_t = 20)]
    pub bind_timeout: u32,
    /// Detach and run in the background (not with $NOTIFY_SOCKET set, under systemd's
    /// Type=notify: the process started stays the one supervised).
    #[arg(short = 'd', long)]
    pub daemon: bool,
    /// Turn on the exceptions option (WORK_EXCEPTION forwarded as is) for every connection.
    #[arg(long)]
    pub exceptions: bool,
    /// Set the file-descriptor limit (RLIMIT_NOFILE) to this many.
    #[arg(short = 'f', long = "file-descriptors")]
    pub file_descriptors: Option<u64>,
    /// Attempts a job gets before it is dropped when its worker goes away; 0 is unlimited.
    #[arg(short = 'j', long = "job-retries", default_value_t = 0)]
    pub job_retries: u32,
    /// Job handle prefix (default: `H:` and the host name).
    #[arg(long = "job-handle-prefix")]
    pub job_handle_prefix: Option<String>,
    /// Buckets of gearmand's job hash table; decides the order of `show jobs` listings only.
    #[arg(long = "hashtable-buckets", default_value_t = 991)]
    pub hashtable_buckets: u32,
    /// Enable TCP keepalive on the listening socket.
    #[arg(long)]
    pub keepalive: bool,
    /// TCP_KEEPIDLE seconds (-1: system default).
    #[arg(long = "keepalive-idle", default_value_t = -1, allow_negative_numbers = true)]
    pub keepalive_idle: i32,
    /// TCP_KEEPINTVL seconds (-1: system default).
    #[arg(long = "keepalive-interval", default_value_t = -1, allow_negative_numbers = true)]
    pub keepalive_interval: i32,
    /// TCP_KEEPCNT probes (-1: system default).
    #[arg(long = "keepalive-count", default_value_t = -1, allow_negative_numbers = true)]
    pub keepalive_count: i32,
    /// Log file; `stderr` and `none` are special.
    #[arg(short = 'l', long = "log-file", default_value = DEFAULT_LOG_FILE)]
    pub log_file: String,
    /// Line format of the log file: `gearmand` (gearmand's lines: level, UTC time, thread,
    /// message) or `json` (one JSON object a line, for log shippers).
    #[arg(long = "log-format", value_enum, default_value_t = LogFormat::Gearmand)]
    pub log_format: LogFormat,
    /// Address to listen on [default: every address].
    #[arg(short = 'L', long)]
    pub listen: Option<String>,
    /// File to write the process id to.
    #[arg(short = 'P', long = "pid-file", default_value = DEFAULT_PID_FILE)]
    pub pid_file: String,
    /// Extra protocol module: `http` serves gearmand's HTTP protocol on --http-port.
    #[arg(short = 'r', long)]
    pub protocol: Option<String>,
    /// After each grab, move the served function to the end of the worker's list.
    #[arg(short = 'R', long = "round-robin")]
    pub round_robin: bool,
    /// Persistent queue type; `builtin` keeps jobs in memory only.
    #[arg(short = 'q', long = "queue-type", default_value = "builtin")]
    pub queue_type: String,
    /// File of further options, read as gearmand reads it: words separated by spaces and line
    /// ends, each an option as on the command line (`--port=4730`, `--port 4730`, `-t 2`);
    /// words that are not options (`#`, comments) are skipped. The command line wins.
    #[arg(long = "config-file", default_value = DEFAULT_CONFIG_FILE)]
    pub config_file: String,
    /// Also send every log line to the local syslog socket (ident `gearmand`, facility
    /// LOG_USER, as gearmand).
    #[arg(long)]
    pub syslog: bool,
    /// The local syslog socket --syslog writes to.
    #[arg(long = "syslog-socket", value_name = "PATH", default_value = DEFAULT_SYSLOG_SOCKET)]
    pub syslog_socket: String,
    /// Leave crash handling to the system (gearshiftd installs no crash handler either way).
    #[arg(long)]
    pub coredump: bool,
    /// Shard threads [default: the number of CPUs]. 0 also means the number of CPUs.
    #[arg(short = 't', long)]
    pub threads: Option<u32>,
    /// Switch to this user after start (requires root).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Log level: FATAL ALERT CRITICAL ERROR WARNING NOTICE INFO DEBUG.
    #[arg(long, default_value = "ERROR")]
    pub verbose: String,
    /// NOOPs sent per queued job to sleeping workers; 0 wakes them all [default: wake only
    /// as many as there are queued jobs, see --wake-retry-ms].
    #[arg(short = 'w', long = "worker-wakeup")]
    pub worker_wakeup: Option<u32>,
    /// Port of the HTTP protocol module (`-r http`); 0 picks a free port and prints
    /// `listening for HTTP on <address>`.
    #[arg(long = "http-port", default_value_t = 8080)]
    pub http_port: u16,
    /// Port to listen on [default: 4730, or $GEARMAND_PORT]; 0 picks a free port and prints
    /// `listening on <address>` on standard output once ready.
    #[arg(short = 'p', long)]
    pub port: Option<String>,
    /// TLS on the Gearman port: every connection must speak TLS.
    #[arg(long)]
    pub ssl: bool,
    /// CA certificates (PEM) that client certificates must be signed by; when given (or
    /// $GEARMAND_CA_CERTIFICATE is set), clients must present one (mutual TLS). Without it,
    /// server-only TLS.
    #[arg(long = "ssl-ca-file", value_name = "PATH")]
    pub ssl_ca_file: Option<String>,
    /// The server's certificate chain (PEM) [default: /etc/ssl/certs/gearmand.pem, or
    /// $GEARMAND_SERVER_PEM].
    #[arg(long = "ssl-certificate", value_name = "PATH")]
    pub ssl_certificate: Option<String>,
    /// The server's private key (PEM) [default: /etc/ssl/certs/gearmand.key, or
    /// $GEARMAND_SERVER_KEY].
    #[arg(long = "ssl-key", value_name = "PATH")]
    pub ssl_key: Option<String>,
    /// Also listen for TLS on this port, while --port stays plain (to move a fleet over
    /// gradually); 0 picks a free port and prints `listening with TLS on <address>`.
    #[arg(long = "ssl-port", value_name = "PORT")]
    pub ssl_port: Option<u16>,
    /// Milliseconds a TLS handshake may take before the connection is closed.
    #[arg(long = "ssl-handshake-timeout", value_name = "MS", default_value_t = DEFAULT_HANDSHAKE_TIMEOUT_MS)]
    pub ssl_handshake_timeout: u64,
    /// Access control list (an INI file, as Python gear's geard reads): per client-certificate
    /// common name, the functions it may submit to (`invoke`) and register (`register`), as
    /// regular expressions, and whether it may use admin commands that change state
    /// (`grant`). Needs --ssl-ca-file.
    #[arg(long = "acl", value_name = "PATH")]
    pub acl: Option<String>,
    /// Networks (CIDR, comma-separated) allowed to administer besides loopback: `shutdown`
    /// (and, with --acl, the admin commands that change state). `none` trusts no address,
    /// not even loopback.
    #[arg(long = "admin-allow", value_name = "CIDRS")]
    pub admin_allow: Option<String>,
    /// Serve Prometheus metrics (`GET /metrics`) on this port [default: off]; 0 picks a free
    /// port and prints `listening for metrics on <address>`.
    #[arg(long = "metrics-port", value_name = "PORT")]
    pub metrics_port: Option<u16>,
    /// Address the metrics port listens on [default: the --listen address, else every
    /// address].
    #[arg(long = "metrics-listen", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Functions that get series of their own in the metrics (the first created); the others
    /// are summed into `function="_other"`.
    #[arg(long = "metrics-max-functions", value_name = "N", default_value_t = DEFAULT_METRICS_MAX_FUNCTIONS)]
    pub metrics_max_functions: u32,
    /// Connections to the metrics port open at once; further ones are accepted and closed at
    /// once (1-65536).
    #[arg(long = "metrics-max-connections", value_name = "N", default_value_t = DEFAULT_METRICS_MAX_CONNECTIONS)]
    pub metrics_max_connections: u32,
    /// Milliseconds a connection to the metrics port may stay open, request and reply
    /// included (1-3600000).
    #[arg(long = "metrics-timeout", value_name = "MS", default_value_t = DEFAULT_METRICS_TIMEOUT_MS)]
    pub metrics_timeout: u64,
    /// Milliseconds between two scrapes a shard starts: a request that comes sooner waits
    /// (0-3600000; 0: no wait).
    #[arg(long = "metrics-min-interval", value_name = "MS", default_value_t = DEFAULT_METRICS_MIN_INTERVAL_MS)]
    pub metrics_min_interval: u64,
    /// Check the options and exit.
    #[arg(long = "check-args", hide = true)]
    pub check_args: bool,

    /// libsqlite3 queue: database file.
    #[arg(long = "libsqlite3-db")]
    pub libsqlite3_db: Option<String>,
    /// libsqlite3 queue: table.
    #[arg(long = "libsqlite3-table", default_value = "gearman_queue")]
    pub libsqlite3_table: String,
    /// libsqlite3 queue: write queued jobs only at shutdown.
    #[arg(long = "store-queue-on-shutdown")]
    pub store_queue_on_shutdown: bool,
    /// Postgres queue: libpq connection string.
    #[arg(long = "libpq-conninfo", default_value = "")]
    pub libpq_conninfo: String,
    /// Postgres queue: table.
    #[arg(long = "libpq-table", default_value = "queue")]
    pub libpq_table: String,
    /// MySQL queue: host.
    #[arg(long = "mysql-host", default_value = "localhost")]
    pub mysql_host: String,
    /// MySQL queue: port.
    #[arg(long = "mysql-port", default_value_t = 3306)]
    pub mysql_port: u16,
    /// MySQL queue: user.
    #[arg(long = "mysql-user")]
    pub mysql_user: Option<String>,
    /// MySQL queue: password.
    #[arg(long = "mysql-password")]
    pub mysql_password: Option<String>,
    /// MySQL queue: database.
    #[arg(long = "mysql-db")]
    pub mysql_db: Option<String>,
    /// MySQL queue: table.
    #[arg(long = "mysql-table", default_value = "gearman_queue")]
    pub mysql_table: String,
    /// Redis queue: server.
    #[arg(long = "redis-server", default_value = "127.0.0.1")]
    pub redis_server: String,
    /// Redis queue: port.
    #[arg(long = "redis-port", default_value_t = 6379)]
    pub redis_port: u16,
    /// Redis queue: password.
    #[arg(long = "redis-password")]
    pub redis_password: Option<String>,
    /// Redis queue: key prefix.
    #[arg(long = "redis-prefix", default_value = "_gear_")]
    pub redis_prefix: String,
    /// libmemcached queue: servers.
    #[arg(long = "libmemcached-servers")]
    pub libmemcached_servers: Option<String>,
    /// libmemcached queue: key prefix.
    #[arg(long = "libmemcached-prefix", default_value = "gear_")]
    pub libmemcached_prefix: String,

    /// Largest packet body accepted, in bytes; a larger one gets an ERROR and the connection
    /// is closed.
    #[arg(long = "max-packet-size", default_value_t = DEFAULT_MAX_PACKET)]
    pub max_packet_size: usize,
    /// Longest admin text line, in bytes.
    #[arg(long = "max-line", default_value_t = DEFAULT_MAX_LINE)]
    pub max_line: usize,
    /// Bytes of incomplete frames larger than the read buffer (64 KiB) held across the server;
    /// past it, connections in the middle of such a frame are read no further until it frees
    /// (one at a time may finish past it, by at most --max-packet-size).
    #[arg(long = "max-input-buffer", default_value_t = DEFAULT_MAX_INPUT)]
    pub max_input_buffer: usize,
    /// Unwritten output a connection may pile up (a reader that does not read) before it is
    /// closed, in bytes.
    #[arg(long = "max-output-buffer", default_value_t = DEFAULT_MAX_OUTPUT)]
    pub max_output_buffer: usize,
    /// With several shards, move a connection to the shard that owns the function named by
    /// the first CAN_DO (or, with `all`, SUBMIT) it sends with nothing in flight, so its jobs
    /// never cross between threads.
    #[arg(long = "handoff", value_enum, default_value_t = Handoff::All)]
    pub handoff: Handoff,
    /// How shards wait for and move bytes: `epoll` (a system call per read and write), or
    /// `io-uring` (a turn's reads, writes and wait in one system call; Linux 6.1 or later,
    /// falls back to epoll where refused).
    #[arg(long = "event-loop", value_enum, default_value_t = EventLoop::Epoll)]
    pub event_loop: EventLoop,
    /// Open connections; more are accepted and closed at once.
    #[arg(long = "max-connections", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Queue store: most adds and deletes written in one transaction (group commit).
    #[arg(long = "store-max-batch", default_value_t = 10_000)]
    pub store_max_batch: usize,
    /// Queue store: microseconds a batch waits for more to join it before it is written (it
    /// stops waiting once none has come for a fifth of this).
    #[arg(long = "store-max-wait", default_value_t = 1000)]
    pub store_max_wait: u64,
    /// Without --worker-wakeup: milliseconds a worker woken for a job may take to ask for it
    /// (GRAB_JOB or PRE_SLEEP) before another sleeping worker is woken in its place (1-60000).
    #[arg(long = "wake-retry-ms", value_name = "MS", default_value_t = DEFAULT_WAKE_RETRY_MS)]
    pub wake_retry_ms: u64,
}

/// `--wake-retry-ms` by default.
pub const DEFAULT_WAKE_RETRY_MS: u64 = 5;

pub use crate::store::Queue;

/// gearmand's log levels, most severe first.
pub const LEVELS: [&str; 8] = [
    "FATAL", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG",
];

/// Where log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// Nowhere.
    None,
    /// Standard error.
    Stderr,
    /// A file, reopened on SIGHUP.
    File(PathBuf),
}

/// The log file's line format (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// gearmand's lines.
    Gearmand,
    /// One JSON object a line.
    Json,
}

/// How a shard waits for and moves bytes (`--event-loop`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventLoop {
    /// `mio` over epoll: readiness, then a system call per read and per write.
    Epoll,
    /// io_uring for the Gearman connections' reads and writes (see `shard::uring`).
    IoUring,
}

/// Which connections `--handoff` moves to the shard owning their function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Handoff {
    /// None: connections stay on the shard the accepting shard gave them (round robin).
    Off,
    /// Workers, at their first CAN_DO.
    Workers,
    /// Workers, and clients at their first SUBMIT.
    All,
}

/// TLS settings (`--ssl`, `--ssl-port` and the files they use).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// The server's certificate chain (PEM).
    pub certificate: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// CA certificates clients must present a certificate signed by; None: server-only TLS.
    pub ca: Option<PathBuf>,
    /// `--ssl-port`: TLS on this port beside a plain `--port`; None: `--port` speaks TLS.
    pub side_port: Option<u16>,
    /// How long a handshake may take.
    pub handshake_timeout: std::time::Duration,
}

/// The validated settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to bind, or every address.
    pub listen: Option<String>,
    /// Port (0: any free one).
    pub port: u16,
    /// listen() backlog.
    pub backlog: i32,
    /// Seconds bind() is retried while the address is in use.
    pub bind_timeout: u32,
    /// Keepalive on the listener: enabled, idle, interval, count.
    pub keepalive: (bool, i32, i32, i32),
    /// Shard threads.
    pub threads: u16,
    /// `--job-retries`.
    pub job_retries: u8,
    /// `--worker-wakeup`: `None` when not given (wake only the workers needed).
    pub worker_wakeup: Option<u8>,
    /// `--wake-retry-ms`.
    pub wake_retry: std::time::Duration,
    /// `--round-robin`.
    pub round_robin: bool,
    /// `--exceptions`.
    pub exceptions: bool,
    /// `--handoff`.
    pub handoff: Handoff,
    /// `--event-loop`.
    pub event_loop: EventLoop,
    /// Job handle prefix.
    pub handle_prefix: String,
    /// `--hashtable-buckets`.
    pub buckets: u32,
    /// Log level name (upper case).
    pub verbose: String,
    /// Log destination.
    pub log: LogTarget,
    /// Line format of the log file.
    pub log_format: LogFormat,
    /// `--syslog`: the syslog socket log lines are also sent to.
    pub syslog: Option<PathBuf>,
    /// PID file, and whether it was given (a default one that cannot be written is no error).
    pub pid_file: (PathBuf, bool),
    /// Detach (unless `$NOTIFY_SOCKET` is set: see [`crate::notify::supervised`]).
    pub daemon: bool,
    /// User to switch to.
    pub user: Option<String>,
    /// RLIMIT_NOFILE to set.
    pub file_descriptors: Option<u64>,
    /// Only validate.
    pub check_args: bool,
    /// Limits.
    pub max_packet: usize,
    /// Limits.
    pub max_line: usize,
    /// Limits.
    pub max_input: usize,
    /// Limits.
    pub max_output: usize,
    /// Limits.
    pub max_connections: usize,
    /// The persistent queue.
    pub queue: Queue,
    /// Group-commit limits of the queue store.
    pub group_commit: crate::store::writer::GroupCommit,
    /// TLS, when `--ssl` or `--ssl-port` is given.
    pub tls: Option<TlsSettings>,
    /// `-r http`: the HTTP protocol module's port (`--http-port`).
    pub http_port: Option<u16>,
    /// `--acl`: the access control list file.
    pub acl: Option<PathBuf>,
    /// `--admin-allow`: who may administer by address.
    pub admin_allow: crate::acl::AdminNets,
    /// `--metrics-port`: the Prometheus metrics port, if any.
    pub metrics_port: Option<u16>,
    /// `--metrics-listen`: its address (None: as the Gearman port).
    pub metrics_listen: Option<String>,
    /// `--metrics-max-functions`.
    pub metrics_max_functions: u32,
    /// `--metrics-max-connections`.
    pub metrics_max_connections: usize,
    /// `--metrics-timeout`.
    pub metrics_timeout: std::time::Duration,
    /// `--metrics-min-interval`.
    pub metrics_min_interval: std::time::Duration,
    /// Warnings about the config file, for standard error.
    pub notes: Vec<String>,
}

/// A command line that cannot run, with the message to print.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// What a command line asks for.
pub enum Parsed {
    /// Run with this configuration.
    Run(Box<Config>),
    /// Print this (help or version) and exit 0.
    Print(String),
}

/// Parses the command line (and `--config-file`), as gearmand: the file's options come first,
/// so the command line wins.
pub fn parse(args: Vec<String>) -> Result<Parsed, ConfigError> {
    use clap::{CommandFactory, FromArgMatches};
    let cmd = Flags::command();
    let matches = match cmd.clone().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => return clap_error(e),
    };
    let cli = match Flags::from_arg_matches(&matches) {
        Ok(f) => f,
        Err(e) => return clap_error(e),
    };
    let path = cli.config_file.clone();
    let text = match std::fs::read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        // gearmand's ifstream opens a directory and reads nothing from it.
        Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => String::new(),
        Err(_) if path == DEFAULT_CONFIG_FILE => String::new(),
        Err(_) => return err("Could not open configuration file."),
    };
    let in_file = |msg: String| {
        let first = msg.lines().next().unwrap_or_default().to_string();
        ConfigError(format!("{first} (in configuration file {path})"))
    };
    // As gearmand: an option the command line gives is not even read from the file.
    let on_command_line = |long: &str| {
        cmd.get_arguments().any(|a| {
            a.get_long() == Some(long)
                && matches.value_source(a.get_id().as_str())
                    == Some(clap::parser::ValueSource::CommandLine)
        })
    };
    let file = config_file_options(&text, &on_command_line).map_err(in_file)?;
    let (flags, notes) = if file.options.is_empty() {
        (cli, Vec::new())
    } else {
        let mut alone = vec![args[0].clone()];
        alone.extend(file.options.into_iter().map(|(_, token)| token));
        if let Err(e) = Flags::try_parse_from(&alone) {
            // A value the file gives that cannot be used, named with the file.
            return match clap_error(e) {
                Ok(p) => Ok(p),
                Err(e) => Err(in_file(e.0)),
            };
        }
        let mut all = alone;
        all.extend(args.into_iter().skip(1));
        match Flags::try_parse_from(&all) {
            Ok(f) => (f, file.notes),
            Err(e) => return clap_error(e),
        }
    };
    let mut config = validate(flags)?;
    config.notes = notes
        .into_iter()
        .map(|n| format!("configuration file {path}: {n}"))
        .collect();
    Ok(Parsed::Run(Box::new(config)))
}

/// gearmand 1.1.20's long option names. In a config file an option may be shortened to a
/// prefix that names one option (boost's guessing); a prefix that gearmand resolves to one of
/// these stays that option, whatever flags gearshiftd adds.
const GEARMAND_LONG_NAMES: &[&str] = &[
    "backlog",
    "daemon",
    "exceptions",
    "file-descriptors",
    "help",
    "job-retries",
    "job-handle-prefix",
    "hashtable-buckets",
    "keepalive",
    "keepalive-idle",
    "keepalive-interval",
    "keepalive-count",
    "log-file",
    "listen",
    "pid-file",
    "protocol",
    "round-robin",
    "queue-type",
    "config-file",
    "syslog",
    "coredump",
    "threads",
    "user",
    "verbose",
    "version",
    "worker-wakeup",
    "http-port",
    "port",
    "ssl",
    "ssl-ca-file",
    "ssl-certificate",
    "ssl-key",
    "libmemcached-servers",
    "libmemcached-prefix",
    "libsqlite3-db",
    "store-queue-on-shutdown",
    "libsqlite3-table",
    "libpq-conninfo",
    "libpq-table",
    "redis-server",
    "redis-port",
    "redis-password",
    "redis-prefix",
    "mysql-host",
    "mysql-port",
    "mysql-user",
    "mysql-password",
    "mysql-db",
    "mysql-table",
];

/// What a config file says: its options as `--name=value` / `--name` tokens, and notes for
/// the operator.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileOptions {
    /// The options: each one's long name, and the option as one normalized token.
    pub options: Vec<(String, String)>,
    /// Lines where `#` does not do what it seems to.
    pub notes: Vec<String>,
}

/// An option the file may give.
struct Spec {
    long: String,
    short: Option<char>,
    takes_value: bool,
}

fn specs() -> Vec<Spec> {
    use clap::CommandFactory;
    let mut cmd = Flags::command();
    cmd.build();
    cmd.get_arguments()
        // --check-args is gearmand's hidden option: not read from a file.
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| {
            Some(Spec {
                long: a.get_long()?.to_string(),
                short: a.get_short(),
                takes_value: a.get_action().takes_values(),
            })
        })
        .collect()
}

/// Reads a config file as gearmand 1.1.20 does: the text is cut into words at spaces, CR and
/// LF (not tabs), and the words are parsed as a command line by boost::program_options, with
/// no positional arguments. So a word that is not an option (`#`, a comment's words,
/// `key=value`) is skipped; `--name=value`, `--name value`, `-t 2`, `-t2` and `-Rd` are
/// options; a long name may be shortened to a prefix naming one option; after `--` every word
/// is skipped; an option given twice is refused. gearmand's messages for a file it refuses.
/// Options `given` says the command line has are parsed but left out (nor checked for a
/// second occurrence or their value), as gearmand's boost store skips them.
pub fn config_file_options(
    text: &str,
    given: &dyn Fn(&str) -> bool,
) -> Result<FileOptions, String> {
    let specs = specs();
    // (word, line number, a word starting with '#' came before it on its line)
    let mut words = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        let mut commented = false;
        for w in line.split([' ', '\r']).filter(|w| !w.is_empty()) {
            words.push((w, n + 1, commented));
            commented |= w.starts_with('#');
        }
    }
    let mut out = FileOptions::default();
    let mut seen: Vec<&str> = Vec::new();
    let is_short_option = |w: &str| {
        let mut c = w.chars();
        c.next() == Some('-')
            && c.next()
                .is_some_and(|x| c.next().is_none() && specs.iter().any(|s| s.short == Some(x)))
    };
    let mut i = 0;
    while i < words.len() {
        let (word, line, commented) = words[i];
        i += 1;
        if word == "--" {
            break;
        }
        // (option, value written in the same word, the value came after '=')
        let mut found: Vec<(&Spec, Option<&str>, bool)> = Vec::new();
        if let Some(long) = word.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            found.push((resolve_long(&specs, name, word)?, value, value.is_some()));
        } else if let Some(shorts) = word.strip_prefix('-').filter(|s| !s.is_empty()) {
            for (at, c) in shorts.char_indices() {
                let Some(spec) = specs.iter().find(|s| s.short == Some(c)) else {
                    return Err(format!("unrecognised option '{word}'"));
                };
                if spec.takes_value {
                    let rest = &shorts[at + c.len_utf8()..];
                    found.push((spec, Some(rest).filter(|r| !r.is_empty()), false));
                    break;
                }
                found.push((spec, None, false));
            }
        } else {
            continue;
        }
        for (spec, value, after_equals) in found {
            let skip = given(&spec.long);
            if !skip && seen.contains(&spec.long.as_str()) {
                return Err(format!(
                    "option '--{}' cannot be specified more than once",
                    spec.long
                ));
            }
            seen.push(&spec.long);
            let token = if spec.takes_value {
                let value = match value {
                    Some("") if after_equals => {
                        return Err(format!(
                            "the argument for option '--{}' should follow immediately after the equal sign",
                            spec.long
                        ));
                    }
                    Some(v) => v,
                    // The next word is the value, unless it is one of the short options.
                    None => match words.get(i) {
                        Some((next, _, _)) if !is_short_option(next) => {
                            i += 1;
                            next
                        }
                        _ => {
                            return Err(format!(
                                "the required argument for option '--{}' is missing",
                                spec.long
                            ));
                        }
                    },
                };
                format!("--{}={value}", spec.long)
            } else {
                if value.is_some() {
                    return Err(format!(
                        "option '--{}' does not take any arguments",
                        spec.long
                    ));
                }
                format!("--{}", spec.long)
            };
            if skip {
                continue;
            }
            if commented {
                out.notes.push(format!(
                    "line {line}: '{word}' is read as an option although '#' comes before it \
                     on its line (gearmand reads it so too); write '#{word}' to leave it out"
                ));
            }
            out.options.push((spec.long.clone(), token));
        }
    }
    Ok(out)
}

/// A long name, or the one option a prefix of it names.
fn resolve_long<'a>(specs: &'a [Spec], name: &str, word: &str) -> Result<&'a Spec, String> {
    if let Some(s) = specs.iter().find(|s| s.long == name) {
        return Ok(s);
    }
    let all: Vec<&Spec> = specs.iter().filter(|s| s.long.starts_with(name)).collect();
    let gearmands: Vec<&Spec> = all
        .iter()
        .copied()
        .filter(|s| GEARMAND_LONG_NAMES.contains(&s.long.as_str()))
        .collect();
    match (all.as_slice(), gearmands.as_slice()) {
        ([], _) => Err(format!("unrecognised option '{word}'")),
        ([one], _) | (_, [one]) => Ok(one),
        (many, _) => {
            let mut names: Vec<String> = many.iter().map(|s| format!("'--{}'", s.long)).collect();
            names.sort();
            let last = names.pop().unwrap_or_default();
            Err(format!(
                "option '{word}' is ambiguous and matches {}, and {last}",
                names.join(", ")
            ))
        }
    }
}

fn clap_error(e: clap::Error) -> Result<Parsed, ConfigError> {
    use clap::error::{ContextKind, ErrorKind};
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Ok(Parsed::Print(e.to_string())),
        ErrorKind::UnknownArgument => {
            let arg = e
                .get(ContextKind::InvalidArg)
                .map(|v| v.to_string())
                .unwrap_or_default();
            err(format!("unrecognised option '{arg}'"))
        }
        _ => err(e
            .to_string()
            .trim_end()
            .trim_start_matches("error: ")
            .to_string()),
    }
}

fn absolute(p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Checks the flags and derives the configuration.
pub fn validate(f: Flags) -> Result<Config, ConfigError> {
    let verbose = f.verbose.to_ascii_uppercase();
    if !LEVELS.contains(&verbose.as_str()) {
        return err("Invalid value for --verbose supplied");
    }
    if f.hashtable_buckets == 0 {
        return err("hashtable-buckets has to be greater than 0");
    }
    let queue = f.queue_type.to_ascii_lowercase();
    let queue = match queue.as_str() {
        "builtin" => Queue::Builtin,
        "libsqlite3" => match &f.libsqlite3_db {
            Some(db) => Queue::Sqlite {
                db: absolute(db),
                table: f.libsqlite3_table.clone(),
                store_on_shutdown: f.store_queue_on_shutdown,
            },
            None => return err("missing required value for --libsqlite3-db"),
        },
        "postgres" => Queue::Postgres {
            conninfo: f.libpq_conninfo.clone(),
            table: f.libpq_table.clone(),
        },
        "mysql" => Queue::MySql {
            host: f.mysql_host.clone(),
            port: f.mysql_port,
            user: f.mysql_user.clone(),
            password: f.mysql_password.clone(),
            db: f.mysql_db.clone(),
            table: f.mysql_table.clone(),
        },
        "redis" => Queue::Redis {
            server: f.redis_server.clone(),
            port: f.redis_port,
            password: f.redis_password.clone(),
            prefix: f.redis_prefix.clone(),
        },
        "libmemcached" | "libdrizzle" | "libtokyocabinet" => {
            return err(format!(
                "queue type '{}' is not available in this build of gearshiftd",
                f.queue_type
            ));
        }
        _ => {
            return err(format!(
                "Error while initializing the queue : {}",
                f.queue_type
            ));
        }
    };
    let http_port = match &f.protocol {
        Some(p) if p.eq_ignore_ascii_case("http") => Some(f.http_port),
        Some(p) => return err(format!("Unknown protocol module : {p}")),
        None => None,
    };
    let tls = tls_settings(&f)?;
    if f.acl.is_some() && tls.as_ref().is_none_or(|t| t.ca.is_none()) {
        return err(
            "--acl needs client certificates: give --ssl (or --ssl-port) and --ssl-ca-file",
        );
    }
    let admin_allow = match &f.admin_allow {
        None => crate::acl::AdminNets::default(),
        Some(list) => crate::acl::AdminNets::parse(list)
            .map_err(|e| ConfigError(format!("--admin-allow: {e}")))?,
    };
    if f.job_retries > 255 {
        return err("--job-retries must be between 0 and 255");
    }
    if f.worker_wakeup.is_some_and(|w| w > 255) {
        return err("--worker-wakeup must be between 0 and 255");
    }
    if !(1..=65_536).contains(&f.metrics_max_connections) {
        return err("--metrics-max-connections must be between 1 and 65536");
    }
    if !(1..=3_600_000).contains(&f.metrics_timeout) {
        return err("--metrics-timeout must be between 1 and 3600000");
    }
    if f.metrics_min_interval > 3_600_000 {
        return err("--metrics-min-interval must be between 0 and 3600000");
    }
    if !(1..=60_000).contains(&f.wake_retry_ms) {
        return err("--wake-retry-ms must be between 1 and 60000");
    }
    let port = match f.port.as_deref() {
        None => match std::env::var("GEARMAND_PORT") {
            Ok(p) if !p.is_empty() => p
                .parse()
                .map_err(|_| ConfigError(format!("invalid GEARMAND_PORT '{p}'")))?,
            _ => DEFAULT_PORT,
        },
        Some("") => DEFAULT_PORT,
        Some(p) => p
            .parse()
            .map_err(|_| ConfigError(format!("invalid port '{p}'")))?,
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = match f.threads {
        None | Some(0) => cpus,
        Some(n) => n as usize,
    };
    if threads > 64 {
        return err("--threads must be at most 64");
    }
    if f.max_packet_size < 1024 || f.max_packet_size > u32::MAX as usize {
        return err("--max-packet-size must be between 1024 and 4294967295");
    }
    if f.max_input_buffer < f.max_packet_size {
        return err("--max-input-buffer must be at least --max-packet-size");
    }
    if f.max_line < 64 {
        return err("--max-line must be at least 64");
    }
    let handle_prefix = match f.job_handle_prefix {
        Some(p) => p,
        None => format!("H:{}", hostname()),
    };
    if handle_prefix.len() > 42 {
        return err("--job-handle-prefix is too long: at most 42 bytes, so handles fit in 63");
    }
    let log = match f.log_file.as_str() {
        "stderr" => LogTarget::Stderr,
        "none" => LogTarget::None,
        p => LogTarget::File(absolute(p)),
    };
    if let Some(h) = http_port
        && h != 0
        && (h == port || tls.as_ref().and_then(|t| t.side_port) == Some(h))
    {
        return err(format!(
            "--http-port {h} is already the Gearman or TLS port: give the HTTP module its own"
        ));
    }
    if let Some(m) = f.metrics_port
        && m != 0
        && f.metrics_listen.is_none()
        && (m == port || tls.as_ref().and_then(|t| t.side_port) == Some(m) || http_port == Some(m))
    {
        return err(format!(
            "--metrics-port {m} is already the Gearman, TLS or HTTP port: give metrics their own"
        ));
    }
    Ok(Config {
        listen: f.listen,
        port,
        backlog: f.backlog,
        bind_timeout: f.bind_timeout,
        keepalive: (
            f.keepalive,
            f.keepalive_idle,
            f.keepalive_interval,
            f.keepalive_count,
        ),
        threads: threads as u16,
        job_retries: f.job_retries as u8,
        worker_wakeup: f.worker_wakeup.map(|w| w as u8),
        wake_retry: std::time::Duration::from_millis(f.wake_retry_ms),
        round_robin: f.round_robin,
        exceptions: f.exceptions,
        handoff: f.handoff,
        event_loop: f.event_loop,
        handle_prefix,
        buckets: f.hashtable_buckets,
        verbose,
        log,
        log_format: f.log_format,
        syslog: f.syslog.then(|| absolute(&f.syslog_socket)),
        pid_file: (absolute(&f.pid_file), f.pid_file != DEFAULT_PID_FILE),
        daemon: f.daemon,
        user: f.user,
        file_descriptors: f.file_descriptors,
        check_args: f.check_args,
        max_packet: f.max_packet_size,
        max_line: f.max_line,
        max_input: f.max_input_buffer,
        max_output: f.max_output_buffer,
        max_connections: f.max_connections,
        queue,
        group_commit: crate::store::writer::GroupCommit {
            max_ops: f.store_max_batch.max(1),
            max_wait: std::time::Duration::from_micros(f.store_max_wait),
        },
        tls,
        http_port,
        acl: f.acl.as_deref().map(absolute),
        admin_allow,
        metrics_port: f.metrics_port,
        metrics_listen: f.metrics_listen,
        metrics_max_functions: f.metrics_max_functions,
        metrics_max_connections: f.metrics_max_connections as usize,
        metrics_timeout: std::time::Duration::from_millis(f.metrics_timeout),
        metrics_min_interval: std::time::Duration::from_millis(f.metrics_min_interval),
        notes: Vec::new(),
    })
}

/// The TLS settings `--ssl`/`--ssl-port` ask for. As gearmand, the environment variables
/// GEARMAND_CA_CERTIFICATE, GEARMAND_SERVER_PEM and GEARMAND_SERVER_KEY override the files.
/// Nothing is read here (`--check-args --ssl` succeeds without them, as gearmand's does).
fn tls_settings(f: &Flags) -> Result<Option<TlsSettings>, ConfigError> {
    if f.ssl && f.ssl_port.is_some() {
        return err(
            "--ssl and --ssl-port: --ssl makes --port speak TLS, --ssl-port adds a TLS port \
             beside a plain one; give one of them",
        );
    }
    if !f.ssl && f.ssl_port.is_none() {
        return Ok(None);
    }
    if f.ssl_handshake_timeout == 0 {
        return err("--ssl-handshake-timeout must be at least 1 ms");
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let pick = |var: &str, flag: &Option<String>, default: Option<&str>| {
        env(var)
            .or_else(|| flag.clone())
            .or(default.map(String::from))
            .map(|p| absolute(&p))
    };
    Ok(Some(TlsSettings {
        certificate: pick(
            "GEARMAND_SERVER_PEM",
            &f.ssl_certificate,
            Some(DEFAULT_SSL_CERTIFICATE),
        )
        .expect("a default is given"),
        key: pick("GEARMAND_SERVER_KEY", &f.ssl_key, Some(DEFAULT_SSL_KEY))
            .expect("a default is given"),
        ca: pick("GEARMAND_CA_CERTIFICATE", &f.ssl_ca_file, None),
        side_port: f.ssl_port,
        handshake_timeout: std::time::Duration::from_millis(f.ssl_handshake_timeout),
    }))
}

/// This machine's host name, for the default handle prefix.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        let mut v = vec![
            "gearshiftd".to_string(),
            "--config-file=/nonexistent/default".into(),
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        // A missing non-default config file is an error; use the default path instead.
        v.remove(1);
        match parse(v) {
            Ok(Parsed::Run(c)) => Ok(*c),
            Ok(Parsed::Print(_)) => Err("print".into()),
            Err(e) => Err(e.0),
        }
    }

    /// `-w` not given wakes only the workers needed; an explicit `-w 0` is gearmand's wake-all.
    #[test]
    fn worker_wakeup_tells_absent_from_zero() {
        let c = run(&[]).unwrap();
        assert_eq!(c.worker_wakeup, None);
        assert_eq!(
            c.wake_retry,
            std::time::Duration::from_millis(DEFAULT_WAKE_RETRY_MS)
        );
        assert_eq!(run(&["-w", "0"]).unwrap().worker_wakeup, Some(0));
        assert_eq!(run(&["--worker-wakeup=7"]).unwrap().worker_wakeup, Some(7));
        assert_eq!(
            run(&["--wake-retry-ms=20"]).unwrap().wake_retry,
            std::time::Duration::from_millis(20)
        );
        for bad in ["--wake-retry-ms=0", "--wake-retry-ms=60001"] {
            assert_eq!(
                run(&[bad]).unwrap_err(),
                "--wake-retry-ms must be between 1 and 60000"
            );
        }
        assert_eq!(
            run(&["-w", "256"]).unwrap_err(),
            "--worker-wakeup must be between 0 and 255"
        );
    }

    #[test]
    fn gearmand_command_lines_parse() {
        let c = run(&[
            "--listen=localhost",
            "--port=4731",
            "-t",
            "2",
            "-j",
            "3",
            "-w1",
            "-R",
            "--log-file=none",
            "--verbose=INFO",
        ])
        .unwrap();
        assert_eq!(
            (c.port, c.threads, c.job_retries, c.worker_wakeup),
            (4731, 2, 3, Some(1))
        );
        assert!(c.round_robin);
        assert_eq!(c.log, LogTarget::None);
        assert_eq!(
            run(&["--verbose=LOUD"]).unwrap_err(),
            "Invalid value for --verbose supplied"
        );
        assert_eq!(run(&["extra"]).unwrap_err(), "unrecognised option 'extra'");
        assert_eq!(
            run(&["--bogus"]).unwrap_err(),
            "unrecognised option '--bogus'"
        );
        assert!(
            run(&["-q", "libsqlite3"])
                .unwrap_err()
                .contains("--libsqlite3-db")
        );
        assert!(
            run(&["-q", "libmemcached"])
                .unwrap_err()
                .contains("libmemcached")
        );
        assert!(
            run(&["-q", "nope"])
                .unwrap_err()
                .contains("Error while initializing the queue")
        );
        let tls = run(&["--ssl", "--ssl-certificate=c.pem", "--ssl-key=/k.pem"])
            .unwrap()
            .tls
            .unwrap();
        assert!(tls.certificate.is_absolute() && tls.certificate.ends_with("c.pem"));
        assert_eq!(tls.key, PathBuf::from("/k.pem"));
        assert_eq!((tls.ca, tls.side_port), (None, None));
        assert!(run(&["--ssl", "--ssl-port=4731"]).is_err());
        assert!(run(&["--acl=/x"]).unwrap_err().contains("--ssl-ca-file"));
        assert!(
            run(&["--ssl", "--acl=/x"])
                .unwrap_err()
                .contains("--ssl-ca-file")
        );
        assert!(run(&["--ssl-port=0", "--ssl-ca-file=/ca", "--acl=/x"]).is_ok());
        assert!(run(&["--admin-allow=10.0.0.0/33"]).is_err());
        assert_eq!(run(&["-r", "http"]).unwrap().http_port, Some(8080));
        assert_eq!(run(&["--http-port=81"]).unwrap().http_port, None);
        assert_eq!(
            run(&["-r", "HTTP", "--http-port=0"]).unwrap().http_port,
            Some(0)
        );
        assert!(run(&["-r", "http", "--http-port=4730"]).is_err());
        assert!(run(&["-r", "http", "--http-port=1", "--port=1"]).is_err());
        assert_eq!(run(&[]).unwrap().metrics_port, None);
        assert_eq!(run(&["--metrics-port=0"]).unwrap().metrics_port, Some(0));
        assert_eq!(run(&[]).unwrap().metrics_max_functions, 1000);
        let c = run(&[]).unwrap();
        assert_eq!(c.metrics_max_connections, 16);
        assert_eq!(c.metrics_timeout, std::time::Duration::from_secs(10));
        assert!(run(&["--metrics-max-connections=0"]).is_err());
        assert!(run(&["--metrics-timeout=0"]).is_err());
        assert_eq!(c.metrics_min_interval, std::time::Duration::from_secs(1));
        assert_eq!(
            run(&["--metrics-min-interval=0"])
                .unwrap()
                .metrics_min_interval,
            std::time::Duration::ZERO
        );
        assert!(run(&["--metrics-min-interval=3600001"]).is_err());
        assert!(run(&["--metrics-port=4730"]).is_err());
        assert!(run(&["--metrics-port=4730", "--metrics-listen=127.0.0.2"]).is_ok());
        assert!(run(&["-r", "gopher"]).is_err());
        assert_eq!(
            run(&["--hashtable-buckets=0"]).unwrap_err(),
            "hashtable-buckets has to be greater than 0"
        );
    }

    #[test]
    fn config_files_read_as_gearmand_reads_them() {
        let opts = |t: &str| {
            config_file_options(t, &|_| false)
                .map(|f| f.options.into_iter().map(|(_, t)| t).collect::<Vec<_>>())
        };
        assert_eq!(
            opts("# comment\r\n\n--port 4731\nkey=value -t2 -Rd --verb=INFO\n#--bogus\n").unwrap(),
            [
                "--port=4731",
                "--threads=2",
                "--round-robin",
                "--daemon",
                "--verbose=INFO"
            ]
        );
        // A word after `# ` is still an option (with a note); after `--` nothing is.
        let f = config_file_options("# --threads=3\n-- --bogus", &|_| false).unwrap();
        assert_eq!(f.options, [("threads".into(), "--threads=3".into())]);
        assert!(f.notes[0].contains("line 1") && f.notes[0].contains("#--threads=3"));
        // Tabs do not separate words; the value of --verbose is the next word unless it is
        // a short option.
        assert_eq!(opts("\t--bogus").unwrap(), Vec::<String>::new());
        assert_eq!(opts("--verbose --x").unwrap(), ["--verbose=--x"]);
        for (text, msg) in [
            ("--bogus=1", "unrecognised option '--bogus=1'"),
            ("-vvv", "unrecognised option '-vvv'"),
            (
                "-t 1 --threads=2",
                "option '--threads' cannot be specified more than once",
            ),
            (
                "--verbose -R",
                "the required argument for option '--verbose' is missing",
            ),
            (
                "--port=",
                "the argument for option '--port' should follow immediately after the equal sign",
            ),
            (
                "--daemon=1",
                "option '--daemon' does not take any arguments",
            ),
            ("--check-args", "unrecognised option '--check-args'"),
            (
                "--ssl-c=x",
                "option '--ssl-c=x' is ambiguous and matches '--ssl-ca-file', and '--ssl-certificate'",
            ),
        ] {
            assert_eq!(opts(text).unwrap_err(), msg, "{text}");
        }
        // A prefix gearmand resolves stays its option although gearshiftd has more flags.
        assert_eq!(opts("--log=x").unwrap(), ["--log-file=x"]);
        // What the command line gives is left out, even twice, but still parsed.
        let cli = |long: &str| long == "threads";
        let f = config_file_options("-t 1 --threads=x -R", &cli).unwrap();
        assert_eq!(f.options, [("round-robin".into(), "--round-robin".into())]);
        assert!(config_file_options("--threads", &cli).is_err());
    }
}
