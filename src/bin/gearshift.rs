//! `gearshift`: the Gearman command-line tool, in place of libgearman's `gearman` and
//! `gearadmin`. Submits jobs, runs any shell command as a worker, and shows the servers' admin
//! views as aligned tables, or with `--json` as one JSON document per command (see
//! `AFTER_HELP`). `gearshift admin` takes gearadmin's own flags and prints what gearadmin
//! prints.
//!
//! Servers come from `--servers host:port,...`, else `$GEARSHIFT_SERVERS`, else
//! `127.0.0.1:4730`. `--ssl-ca` (and for mutual TLS `--ssl-cert` and `--ssl-key`) reaches them
//! through TLS.
//!
//! Exit codes (stable, for scripts):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the job failed (WORK_FAIL or WORK_EXCEPTION), or a server refused the request (an ERROR packet such as `QUEUE_ERROR`, or an `ERR` admin reply such as `UNKNOWN_JOB`) |
//! | 2 | usage error (bad arguments or server list) |
//! | 3 | no job server reachable, or a connection broke |
//! | 4 | timed out (`--timeout`) |
//! | 5 | a server answered something unexpected (protocol error) |

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use gearshift::client::{
    Admin, Client, ClientOptions, Error, Event, Job, JobContext, JobHandle, Tls, WorkError, Worker,
    WorkerOptions, parse_servers,
};

/// TLS for every connection, from the flags; set once in `run`, before any connection.
static TLS: OnceLock<Option<Tls>> = OnceLock::new();

fn tls() -> Option<Tls> {
    TLS.get().cloned().flatten()
}

const EXIT_JOB_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NO_SERVER: u8 = 3;
const EXIT_TIMEOUT: u8 = 4;
const EXIT_PROTOCOL: u8 = 5;

const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 job failed (WORK_FAIL/WORK_EXCEPTION) or request refused by a server;
2 usage error; 3 no job server reachable or connection lost; 4 timeout; 5 protocol error.

--json prints one JSON document per command on one line: an array with an object per server,
{\"server\": \"host:port\", ...} with the fields below, or {\"server\", \"error\": \"why\"} for a
server that failed (also reported on stderr):
  status           functions: [{function, total, running, queued, workers}]
  priority-status  functions: [{function, high, normal, low, workers}] (queued jobs)
  workers          workers: [{fd (string), ip, client_id, functions: [names]}]
  jobs             jobs: [{handle, retries, ignored (bool), queued (bool)}]
  jobs --unique    unique: [ids]
  version          version
  pid              pid (number)
  verbose          verbose
  queue            queue (the store, or builtin), ok (bool), failure (the store's last error or null)
  cancel, create, drop, maxqueue   ok: true
`job` prints one object: {known, running (bools), numerator, denominator, waiting (number or
null), server (null when unknown)}. `status --watch` prints one document per refresh, a line
each. Bytes that are not UTF-8 become U+FFFD; control characters are escaped.";

/// Gearman client, worker and admin tool (gearshift).
#[derive(Parser, Debug)]
#[command(name = "gearshift", version, after_help = AFTER_HELP)]
struct Cli {
    /// Job servers, host[:port] separated by commas (port 4730 by default)
    /// [default: $GEARSHIFT_SERVERS, else 127.0.0.1:4730].
    #[arg(short = 's', long, global = true, value_name = "LIST")]
    servers: Option<String>,

    /// Give up after this many seconds (fractions allowed). Default: no limit when waiting for
    /// a job's result, 10 s for everything else.
    #[arg(short = 't', long, global = true, value_name = "SECS")]
    timeout: Option<f64>,

    /// Admin views and commands print one JSON document (see below) instead of tables.
    #[arg(long, global = true)]
    json: bool,

    /// More logging on stderr (-v info, -vv debug).
    #[arg(short = 'v', long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Reach the servers through TLS, trusting the CA certificates (PEM) in this file; the
    /// server's certificate must also match the host named in --servers.
    #[arg(long = "ssl-ca", global = true, value_name = "PATH")]
    ssl_ca: Option<String>,

    /// Certificate (PEM) to present to servers that require one (mutual TLS); needs --ssl-key.
    #[arg(long = "ssl-cert", global = true, value_name = "PATH", requires_all = ["ssl_key", "ssl_ca"])]
    ssl_cert: Option<String>,

    /// Private key (PEM) of --ssl-cert.
    #[arg(
        long = "ssl-key",
        global = true,
        value_name = "PATH",
        requires = "ssl_cert"
    )]
    ssl_key: Option<String>,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Submit a job; print its data as it arrives (stdout) and its warnings and status
    /// (stderr). A background job prints its handle.
    Submit(SubmitArgs),
    /// Run a shell command as a worker: job data on its stdin, result from its stdout.
    Work(WorkArgs),
    /// Functions on each server: jobs queued and running, and workers.
    Status(StatusArgs),
    /// Queued jobs of each function per priority (high, normal, low) on each server.
    #[command(alias = "prioritystatus")]
    PriorityStatus,
    /// Connections on each server and the functions they registered.
    Workers,
    /// Jobs each server holds (`show jobs`), or their unique ids with --unique.
    Jobs {
        /// List unique ids (`show unique jobs`).
        #[arg(long)]
        unique: bool,
    },
    /// Status of one job, by handle or by unique id.
    Job {
        /// The job handle (asked of every server).
        #[arg(long, conflicts_with = "unique", required_unless_present = "unique")]
        handle: Option<String>,
        /// The unique id.
        #[arg(long)]
        unique: Option<String>,
    },
    /// Each server's version.
    Version,
    /// Each server's process id.
    #[command(alias = "getpid")]
    Pid,
    /// Each server's log level (the admin command `verbose`).
    Verbose,
    /// The health of each server's persistent store (gearshiftd's admin command `queue`):
    /// `<store> ok`, `<store> failing: <error>`, or `builtin`.
    Queue,
    /// gearadmin's flags, printing what gearadmin prints (`gearshift admin --status`).
    /// Without -h/-p the servers are those of --servers.
    #[command(disable_help_flag = true)]
    Admin(GearadminArgs),
    /// Cancel a job by handle (on whichever server has it).
    Cancel {
        /// The job handle.
        handle: String,
    },
    /// Limit a function's queued and running jobs on every server (0: no limit). Creates the
    /// function first, since servers ignore limits on functions they have not seen.
    Maxqueue {
        /// The function.
        function: String,
        /// One limit for all priorities, or three: high normal low.
        #[arg(num_args = 0..=3)]
        limits: Vec<u32>,
    },
    /// Forget a function that has no workers and no running jobs, on every server.
    Drop {
        /// The function.
        function: String,
    },
    /// Create a function on every server.
    Create {
        /// The function.
        function: String,
    },
}

#[derive(Args, Debug)]
struct SubmitArgs {
    /// The function to call.
    #[arg(short = 'f', long)]
    function: String,
    /// Background job: print the handle and return at once.
    #[arg(short = 'b', long)]
    bg: bool,
    /// High priority.
    #[arg(long, conflicts_with = "low")]
    high: bool,
    /// Low priority.
    #[arg(long)]
    low: bool,
    /// Unique id (default: a generated UUID).
    #[arg(short = 'u', long)]
    unique: Option<String>,
    /// Run at this Unix time (a background epoch job).
    #[arg(long, value_name = "EPOCH", conflicts_with_all = ["high", "low"])]
    at: Option<i64>,
    /// Do not print warnings and status.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// The job data; read from stdin when absent or `-`.
    data: Option<String>,
}

#[derive(Args, Debug)]
struct WorkArgs {
    /// Function(s) to serve (repeat -f for several).
    #[arg(short = 'f', long = "function", required = true)]
    functions: Vec<String>,
    /// Exit after this many jobs.
    #[arg(short = 'c', long)]
    count: Option<u64>,
    /// Jobs run at once.
    #[arg(short = 'j', long, default_value_t = 1)]
    concurrency: usize,
    /// Worker id shown by `gearshift workers`.
    #[arg(long)]
    id: Option<String>,
    /// Ask the server to take a job back after this many seconds (CAN_DO_TIMEOUT).
    #[arg(long, value_name = "SECS")]
    job_timeout: Option<f64>,
    /// Send each line of the command's output as WORK_DATA while it runs.
    #[arg(short = 'n', long)]
    lines: bool,
    /// The command and its arguments (after `--`). It gets GEARSHIFT_FUNCTION,
    /// GEARSHIFT_HANDLE and GEARSHIFT_UNIQUE in its environment.
    #[arg(required = true, last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct GearadminArgs {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Connect to the host [default: localhost when -p is given].
    #[arg(short = 'h', long)]
    host: Option<String>,
    /// Port number [default: 4730 when -h is given].
    #[arg(short = 'p', long)]
    port: Option<String>,
    /// Fetch the version number for the server.
    #[arg(long)]
    server_version: bool,
    /// Fetch the verbose setting for the server.
    #[arg(long)]
    server_verbose: bool,
    /// Create the function from the server.
    #[arg(long, value_name = "FUNCTION")]
    create_function: Option<String>,
    /// Remove a given job from the server's queue.
    #[arg(long, value_name = "HANDLE")]
    cancel_job: Option<String>,
    /// Drop the function from the server.
    #[arg(long, value_name = "FUNCTION")]
    drop_function: Option<String>,
    /// Show unique IDs of jobs on the server.
    #[arg(long)]
    show_unique_jobs: bool,
    /// Show all jobs on the server.
    #[arg(long)]
    show_jobs: bool,
    /// Get Process ID for the server.
    #[arg(long)]
    getpid: bool,
    /// Status for the server.
    #[arg(long)]
    status: bool,
    /// Queued jobs status by priority.
    #[arg(long)]
    priority_status: bool,
    /// Workers for the server.
    #[arg(long)]
    workers: bool,
    /// The health of the server's persistent store (gearshiftd's `queue`; not in gearadmin).
    #[arg(long)]
    queue: bool,
    /// Enable SSL connections (with the CA of --ssl-ca).
    #[arg(short = 'S', long)]
    ssl: bool,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Refresh every SECS seconds (default 1) until interrupted.
    #[arg(short = 'w', long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
    watch: Option<f64>,
    /// With --watch: stop after this many refreshes.
    #[arg(long, value_name = "N", requires = "watch")]
    iterations: Option<u64>,
}

/// A failure with its exit code.
struct Fail(u8, String);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let code = exit_code(&e);
        Fail(code, e.to_string())
    }
}

fn exit_code(e: &Error) -> u8 {
    if e.is_timeout() {
        EXIT_TIMEOUT
    } else if e.is_connection() {
        EXIT_NO_SERVER
    } else {
        match e {
            Error::Config(_) => EXIT_USAGE,
            Error::Protocol { .. } | Error::UnknownTask(_) => EXIT_PROTOCOL,
            Error::Map { error, .. } => exit_code(error),
            _ => EXIT_JOB_FAILED,
        }
    }
}

fn secs(s: f64) -> Result<Duration, Fail> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| Fail(EXIT_USAGE, format!("invalid number of seconds: {s}")))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            if !msg.is_empty() {
                eprintln!("gearshift: {msg}");
            }
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Fail> {
    let list = match cli.servers.clone() {
        Some(s) => s,
        None => std::env::var("GEARSHIFT_SERVERS")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "127.0.0.1:4730".to_string()),
    };
    let servers = parse_servers(&list).map_err(|e| Fail(EXIT_USAGE, e.to_string()))?;
    let tls = match &cli.ssl_ca {
        None => None,
        Some(ca) => {
            let identity = cli.ssl_cert.as_deref().zip(cli.ssl_key.as_deref());
            Some(
                Tls::from_files(ca.as_str(), identity)
                    .map_err(|e| Fail(EXIT_USAGE, e.to_string()))?,
            )
        }
    };
    let _ = TLS.set(tls);
    let short = match cli.timeout {
        Some(t) => secs(t)?,
        None => Duration::from_secs(10),
    };
    let json = cli.json;
    if json && matches!(cli.command, Cmd::Submit(_) | Cmd::Work(_) | Cmd::Admin(_)) {
        return Err(Fail(
            EXIT_USAGE,
            "--json is for the admin views and commands (not submit, work or admin)".into(),
        ));
    }
    match cli.command {
        Cmd::Submit(a) => submit(&servers, cli.timeout.map(secs).transpose()?, a),
        Cmd::Work(a) => work(&servers, a),
        Cmd::Status(a) => status(&servers, short, json, a),
        Cmd::PriorityStatus => priority_status(&servers, short, json),
        Cmd::Workers => workers(&servers, short, json),
        Cmd::Jobs { unique } => jobs(&servers, short, json, unique),
        Cmd::Job { handle, unique } => job_status(&servers, short, json, handle, unique),
        Cmd::Version => one_value(
            &servers,
            short,
            json,
            "version",
            "version",
            |a| a.version(),
            |v| vec![("version", J::Str(v))],
        ),
        Cmd::Pid => one_value(
            &servers,
            short,
            json,
            "getpid",
            "pid",
            |a| a.pid(),
            |p| vec![("pid", J::Num(p.into()))],
        ),
        Cmd::Verbose => one_value(
            &servers,
            short,
            json,
            "verbose",
            "verbose",
            |a| a.verbose(),
            |v| vec![("verbose", J::Str(v))],
        ),
        Cmd::Queue => one_value(
            &servers,
            short,
            json,
            "queue",
            "queue",
            |a| a.queue(),
            queue_json,
        ),
        Cmd::Admin(a) => gearadmin(&servers, cli.servers.is_some(), short, a),
        Cmd::Cancel { handle } => cancel(&servers, short, json, &handle),
        Cmd::Maxqueue { function, limits } => maxqueue(&servers, short, json, &function, &limits),
        Cmd::Drop { function } => drop_function(&servers, short, json, &function),
        Cmd::Create { function } => each_server(
            &servers,
            short,
            json,
            &format!("create function {function}"),
            |a| a.create_function(&function),
        ),
    }
}

// ---------------------------------------------------------------------------
// submit
// ---------------------------------------------------------------------------

fn submit(servers: &[String], timeout: Option<Duration>, a: SubmitArgs) -> Result<(), Fail> {
    let data = match a.data.as_deref() {
        Some(d) if d != "-" => d.as_bytes().to_vec(),
        _ => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| Fail(EXIT_USAGE, format!("reading stdin: {e}")))?;
            buf
        }
    };
    let mut opts = ClientOptions::default();
    if let Some(t) = timeout {
        opts.timeout = t;
        opts.connect_timeout = opts.connect_timeout.min(t);
    }
    opts.tls = tls();
    let submit_timeout = opts.timeout;
    let function = a.function.clone();
    // What a timeout was waiting for, in the error.
    let timed_out = |what: String, t: Duration| {
        move |e: Error| match e {
            Error::Timeout => Fail(EXIT_TIMEOUT, format!("no {what} within {}", secs_text(t))),
            e => e.into(),
        }
    };
    let mut client = Client::with_options(servers, opts)?;
    let mut job = Job::new(a.function.as_str(), data);
    if let Some(u) = &a.unique {
        job = job.unique(u.as_str());
    }
    if a.high {
        job = job.high();
    } else if a.low {
        job = job.low();
    }
    if let Some(at) = a.at {
        job = job.epoch(at);
    } else if a.bg {
        job = job.background();
    }
    if job.is_background() {
        let h = client.submit_background(job).map_err(timed_out(
            format!("JOB_CREATED for the background \"{function}\" job"),
            submit_timeout,
        ))?;
        println!("{h}");
        return Ok(());
    }
    let task = client.submit(job).map_err(timed_out(
        format!("JOB_CREATED for the \"{function}\" job"),
        submit_timeout,
    ))?;
    // No limit by default: a job may take as long as it takes.
    let wait = timeout.unwrap_or(Duration::from_secs(u64::MAX / 4));
    let mut stdout = std::io::stdout().lock();
    let quiet = a.quiet;
    let mut created = None;
    let out = client.wait_with(task, wait, |ev| match ev {
        Event::Created { handle, .. } => {
            log::info!("job {handle} on {}", handle.server);
            created = Some(format!("{handle} on {}", handle.server));
        }
        Event::Data { data, .. } => {
            let _ = stdout.write_all(data);
            let _ = stdout.flush();
        }
        Event::Warning { data, .. } if !quiet => {
            eprintln!("warning: {}", String::from_utf8_lossy(data))
        }
        Event::Status {
            numerator,
            denominator,
            ..
        } if !quiet => {
            if *denominator > 0 {
                eprintln!(
                    "status: {numerator}/{denominator} ({}%)",
                    numerator.saturating_mul(100) / denominator
                );
            } else {
                eprintln!("status: {numerator}/{denominator}");
            }
        }
        _ => {}
    });
    let out = out.map_err(|e| match &created {
        Some(h) => timed_out(format!("result for the \"{function}\" job {h}"), wait)(e),
        None => timed_out(
            format!("JOB_CREATED for the \"{function}\" job"),
            submit_timeout.min(wait),
        )(e),
    })?;
    stdout
        .write_all(&out.data)
        .and_then(|_| stdout.flush())
        .map_err(|e| Fail(EXIT_JOB_FAILED, format!("writing the result: {e}")))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// work
// ---------------------------------------------------------------------------

fn work(servers: &[String], a: WorkArgs) -> Result<(), Fail> {
    let mut opts = WorkerOptions::default();
    opts.client_id = a.id.clone();
    opts.concurrency = a.concurrency.max(1);
    opts.max_jobs = a.count;
    opts.tls = tls();
    let mut worker = Worker::with_options(servers, opts)?;
    let job_timeout = a.job_timeout.map(secs).transpose()?;
    for f in &a.functions {
        let command = a.command.clone();
        let lines = a.lines;
        let run = move |job: &mut JobContext<'_>| run_command(&command, lines, job);
        match job_timeout {
            Some(t) => worker.register_with_timeout(f.as_str(), t, run),
            None => worker.register(f.as_str(), run),
        };
    }
    worker.run()?;
    Ok(())
}

/// Runs the command for one job: data on stdin, result from stdout. Exit status 0 completes
/// the job; any other fails it with the command's stderr as the message; a command that
/// cannot start raises an exception.
fn run_command(
    command: &[String],
    lines: bool,
    job: &mut JobContext<'_>,
) -> Result<Vec<u8>, WorkError> {
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .env(
            "GEARSHIFT_FUNCTION",
            String::from_utf8_lossy(job.function()).as_ref(),
        )
        .env(
            "GEARSHIFT_HANDLE",
            String::from_utf8_lossy(job.handle()).as_ref(),
        )
        .env(
            "GEARSHIFT_UNIQUE",
            String::from_utf8_lossy(job.unique()).as_ref(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| WorkError::exception(format!("cannot run {}: {e}", command[0])))?;
    // Feed stdin and drain stderr on their own threads, so no pipe can fill up and deadlock.
    let mut stdin = child.stdin.take().expect("piped");
    let data = job.take_data();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let mut stderr = child.stderr.take().expect("piped");
    let errs = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let mut stdout = child.stdout.take().expect("piped");
    let mut out = Vec::new();
    if lines {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if job.send_data(&line).is_err() {
                        break;
                    }
                }
            }
        }
    } else {
        let _ = stdout.read_to_end(&mut out);
    }
    let _ = feeder.join();
    let err = errs.join().unwrap_or_default();
    let status = child
        .wait()
        .map_err(|e| WorkError::exception(format!("waiting for {}: {e}", command[0])))?;
    if !err.is_empty() {
        let _ = std::io::stderr().write_all(&err);
    }
    if status.success() {
        Ok(out)
    } else {
        let text = String::from_utf8_lossy(&err).trim().to_string();
        let msg = if text.is_empty() {
            format!("{} exited with {status}", command[0])
        } else {
            text
        };
        Err(WorkError::fail(msg))
    }
}

// ---------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------

/// A JSON value, written compactly on one line. Strings come from admin replies, where bytes
/// that are not UTF-8 were already turned into U+FFFD; the writer escapes `"`, `\` and every
/// control character (U+0000 to U+001F and U+007F) so the document is always valid.
enum J {
    Null,
    Bool(bool),
    Num(u64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(&'static str, J)>),
}

impl J {
    fn s(v: impl Into<String>) -> J {
        J::Str(v.into())
    }

    fn write(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(&n.to_string()),
            J::Str(s) => json_string(out, s),
            J::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            J::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    json_string(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    fn text(&self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        s
    }
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One server's object in a JSON view: `{"server": …, <fields>}`, or `{"server": …,
/// "error": …}` for a server that failed.
fn server_json<T>(
    server: String,
    r: Result<T, String>,
    fields: impl FnOnce(T) -> Vec<(&'static str, J)>,
) -> J {
    let mut obj = vec![("server", J::Str(server))];
    match r {
        Ok(v) => obj.extend(fields(v)),
        Err(e) => obj.push(("error", J::Str(e))),
    }
    J::Obj(obj)
}

fn print_json(doc: &J) {
    println!("{}", doc.text());
}

/// A listing from every server as one document: per server `{"server", KEY: [rows]}`, or
/// `{"server", "error"}` for one that failed.
fn listing_json<T>(results: PerServer<Vec<T>>, key: &'static str, row: impl Fn(T) -> J) -> J {
    J::Arr(
        results
            .into_iter()
            .map(|(s, r)| {
                server_json(s, r, |list| {
                    vec![(key, J::Arr(list.into_iter().map(&row).collect()))]
                })
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------
// admin views
// ---------------------------------------------------------------------------

/// Prints rows under a header, columns padded to their widest cell; `numeric` columns are
/// right-aligned. The last column is never padded.
fn print_table(out: &mut impl Write, header: &[&str], numeric: &[bool], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = width[i] - c.chars().count();
            let last = i + 1 == cells.len();
            if i > 0 {
                s.push_str("  ");
            }
            if numeric[i] {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                if !last {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s
    };
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let _ = writeln!(out, "{}", line(&head).trim_end());
    for r in rows {
        let _ = writeln!(out, "{}", line(r).trim_end());
    }
}

/// Each server's answer, or the one-line description of why there is none.
type PerServer<T> = Vec<(String, Result<T, String>)>;

/// Seconds as an operator reads them: `10`, `0.3`.
fn secs_text(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Why connecting to server `s` to send admin command `what` failed, in one line.
fn describe_connect(s: &str, what: &str, timeout: Duration, e: &Error) -> String {
    match e {
        Error::Io { error, .. } if error.kind() == std::io::ErrorKind::TimedOut => format!(
            "no answer from {s} to a connection attempt (to send \"{what}\") within {}",
            secs_text(timeout)
        ),
        Error::Timeout => format!(
            "no answer from {s} to the TLS handshake (to send \"{what}\") within {}",
            secs_text(timeout)
        ),
        Error::Io { error, .. } => format!("cannot connect to {s} to send \"{what}\": {error}"),
        Error::Protocol { message, .. } => {
            format!("cannot connect to {s} to send \"{what}\": {message}")
        }
        e => format!("cannot connect to {s} to send \"{what}\": {e}"),
    }
}

/// Why admin command `what` on server `s` failed, in one line.
fn describe(s: &str, what: &str, timeout: Duration, e: &Error) -> String {
    match e {
        Error::Timeout => format!(
            "no answer from {s} to \"{what}\" within {}",
            secs_text(timeout)
        ),
        Error::Io { error, .. } => {
            format!("connection to {s} lost while waiting for the answer to \"{what}\": {error}")
        }
        Error::Admin { message, .. } => format!("{s} refused \"{what}\": {message}"),
        Error::Protocol { message, .. } => {
            format!("{s} answered \"{what}\" with something unexpected: {message}")
        }
        e => format!("{s}: \"{what}\": {e}"),
    }
}

/// Keeps the failure with the highest exit code.
fn worsen(worst: &mut Option<Fail>, code: u8) {
    if worst.as_ref().is_none_or(|w| w.0 < code) {
        *worst = Some(Fail(code, String::new()));
    }
}

/// Runs `f` against every server's admin interface (`what` names the command, for errors),
/// returning each server's result in server order. A server that fails is reported on
/// stderr, one line; the worst failure is returned too.
fn gather<T>(
    servers: &[String],
    timeout: Duration,
    what: &str,
    mut f: impl FnMut(&mut Admin) -> Result<T, Error>,
) -> (PerServer<T>, Option<Fail>) {
    let mut out = Vec::new();
    let mut worst: Option<Fail> = None;
    for s in servers {
        let r = match Admin::connect_with_tls(s, timeout, tls().as_ref()) {
            Err(e) => Err((describe_connect(s, what, timeout, &e), exit_code(&e))),
            Ok(mut a) => f(&mut a).map_err(|e| (describe(s, what, timeout, &e), exit_code(&e))),
        };
        match r {
            Ok(v) => out.push((s.clone(), Ok(v))),
            Err((msg, code)) => {
                eprintln!("gearshift: {msg}");
                worsen(&mut worst, code);
                out.push((s.clone(), Err(msg)));
            }
        }
    }
    (out, worst)
}

/// The answers of the servers that answered.
fn answered<T>(results: PerServer<T>) -> Vec<(String, T)> {
    results
        .into_iter()
        .filter_map(|(s, r)| r.ok().map(|v| (s, v)))
        .collect()
}

fn finish(worst: Option<Fail>) -> Result<(), Fail> {
    match worst {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// Prints a listing view as a table, with a SERVER column when there are several servers.
fn print_view<T>(
    servers: &[String],
    results: PerServer<Vec<T>>,
    header: &[&str],
    numeric: &[bool],
    row: impl Fn(T) -> Vec<String>,
    out: &mut impl Write,
) {
    let ok = answered(results);
    if ok.is_empty() {
        return;
    }
    let many = servers.len() > 1;
    let mut rows = Vec::new();
    for (server, list) in ok {
        for item in list {
            let mut r = Vec::new();
            if many {
                r.push(server.clone());
            }
            r.extend(row(item));
            rows.push(r);
        }
    }
    let mut h = Vec::new();
    let mut n = Vec::new();
    if many {
        h.push("SERVER");
        n.push(false);
    }
    h.extend_from_slice(header);
    n.extend_from_slice(numeric);
    print_table(out, &h, &n, &rows);
}

fn status_once(
    servers: &[String],
    timeout: Duration,
    json: bool,
    out: &mut impl Write,
) -> Option<Fail> {
    let (mut results, worst) = gather(servers, timeout, "status", |a| a.status());
    for (_, r) in results.iter_mut() {
        if let Ok(list) = r {
            list.sort_by(|a, b| a.function.cmp(&b.function));
        }
    }
    if json {
        let doc = listing_json(results, "functions", |f| {
            J::Obj(vec![
                ("function", J::Str(f.function)),
                ("total", J::Num(f.total)),
                ("running", J::Num(f.running)),
                ("queued", J::Num(f.total.saturating_sub(f.running))),
                ("workers", J::Num(f.workers)),
            ])
        });
        let _ = writeln!(out, "{}", doc.text());
        return worst;
    }
    print_view(
        servers,
        results,
        &["FUNCTION", "TOTAL", "RUNNING", "QUEUED", "WORKERS"],
        &[false, true, true, true, true],
        |f| {
            vec![
                f.function,
                f.total.to_string(),
                f.running.to_string(),
                f.total.saturating_sub(f.running).to_string(),
                f.workers.to_string(),
            ]
        },
        out,
    );
    worst
}

fn status(servers: &[String], timeout: Duration, json: bool, a: StatusArgs) -> Result<(), Fail> {
    let Some(every) = a.watch else {
        return finish(status_once(
            servers,
            timeout,
            json,
            &mut std::io::stdout().lock(),
        ));
    };
    let every = secs(every)?;
    let tty = std::io::stdout().is_terminal() && !json;
    let mut n = 0u64;
    loop {
        let mut buf = Vec::new();
        if tty {
            // Home the cursor and clear the screen, then draw the whole frame in one write.
            buf.extend_from_slice(b"\x1b[H\x1b[2J");
        } else if n > 0 && !json {
            buf.push(b'\n');
        }
        if !json {
            let _ = writeln!(
                buf,
                "every {:.1}s: gearshift status ({})",
                every.as_secs_f64(),
                servers.join(",")
            );
        }
        status_once(servers, timeout, json, &mut buf);
        let mut stdout = std::io::stdout().lock();
        if stdout.write_all(&buf).and_then(|_| stdout.flush()).is_err() {
            return Ok(()); // the reader went away (e.g. `| head`)
        }
        drop(stdout);
        n += 1;
        if a.iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
        std::thread::sleep(every);
    }
}

fn priority_status(servers: &[String], timeout: Duration, json: bool) -> Result<(), Fail> {
    let (mut results, worst) = gather(servers, timeout, "prioritystatus", |a| a.priority_status());
    for (_, r) in results.iter_mut() {
        if let Ok(list) = r {
            list.sort_by(|a, b| a.function.cmp(&b.function));
        }
    }
    if json {
        print_json(&listing_json(results, "functions", |f| {
            J::Obj(vec![
                ("function", J::Str(f.function)),
                ("high", J::Num(f.high)),
                ("normal", J::Num(f.normal)),
                ("low", J::Num(f.low)),
                ("workers", J::Num(f.workers)),
            ])
        }));
        return finish(worst);
    }
    print_view(
        servers,
        results,
        &["FUNCTION", "HIGH", "NORMAL", "LOW", "WORKERS"],
        &[false, true, true, true, true],
        |f| {
            vec![
                f.function,
                f.high.to_string(),
                f.normal.to_string(),
                f.low.to_string(),
                f.workers.to_string(),
            ]
        },
        &mut std::io::stdout().lock(),
    );
    finish(worst)
}

fn workers(servers: &[String], timeout: Duration, json: bool) -> Result<(), Fail> {
    let (results, worst) = gather(servers, timeout, "workers", |a| a.workers());
    if json {
        print_json(&listing_json(results, "workers", |w| {
            J::Obj(vec![
                ("fd", J::Str(w.fd)),
                ("ip", J::Str(w.ip)),
                ("client_id", J::Str(w.client_id)),
                (
                    "functions",
                    J::Arr(w.functions.into_iter().map(J::Str).collect()),
                ),
            ])
        }));
        return finish(worst);
    }
    print_view(
        servers,
        results,
        &["FD", "IP", "CLIENT-ID", "FUNCTIONS"],
        &[true, false, false, false],
        |w| vec![w.fd, w.ip, w.client_id, w.functions.join(" ")],
        &mut std::io::stdout().lock(),
    );
    finish(worst)
}

fn jobs(servers: &[String], timeout: Duration, json: bool, unique: bool) -> Result<(), Fail> {
    if unique {
        let (results, worst) = gather(servers, timeout, "show unique jobs", |a| {
            a.show_unique_jobs()
        });
        if json {
            print_json(&listing_json(results, "unique", J::Str));
        } else {
            print_view(
                servers,
                results,
                &["UNIQUE"],
                &[false],
                |u| vec![u],
                &mut std::io::stdout().lock(),
            );
        }
        return finish(worst);
    }
    let (results, worst) = gather(servers, timeout, "show jobs", |a| a.show_jobs());
    if json {
        print_json(&listing_json(results, "jobs", |j| {
            J::Obj(vec![
                ("handle", J::Str(j.handle)),
                ("retries", J::Num(j.retries)),
                ("ignored", J::Bool(j.ignored)),
                ("queued", J::Bool(j.queued)),
            ])
        }));
        return finish(worst);
    }
    print_view(
        servers,
        results,
        &["HANDLE", "RETRIES", "IGNORED", "QUEUED"],
        &[false, true, true, true],
        |j| {
            vec![
                j.handle,
                j.retries.to_string(),
                (j.ignored as u8).to_string(),
                (j.queued as u8).to_string(),
            ]
        },
        &mut std::io::stdout().lock(),
    );
    finish(worst)
}

fn job_status(
    servers: &[String],
    timeout: Duration,
    json: bool,
    handle: Option<String>,
    unique: Option<String>,
) -> Result<(), Fail> {
    let mut opts = ClientOptions::default();
    opts.timeout = timeout;
    opts.connect_timeout = opts.connect_timeout.min(timeout);
    opts.tls = tls();
    let mut client = Client::with_options(servers, opts)?;
    let waiting_for = |what: String| {
        move |e: Error| {
            let code = exit_code(&e);
            match e {
                Error::Timeout => Fail(
                    code,
                    format!("no answer to {what} within {}", secs_text(timeout)),
                ),
                e => Fail(code, format!("{what} failed: {e}")),
            }
        }
    };
    let st = match (handle, unique) {
        (Some(h), _) => {
            let mut last = None;
            let mut found = None;
            for s in servers {
                match client
                    .status(&JobHandle::new(s.as_str(), h.as_str()))
                    .map_err(waiting_for(format!("GET_STATUS \"{h}\" from {s}")))
                {
                    Ok(st) if st.known => {
                        found = Some(st);
                        break;
                    }
                    Ok(st) => last = Some(Ok(st)),
                    Err(e) => {
                        if last.is_none() {
                            last = Some(Err(e))
                        }
                    }
                }
            }
            match found {
                Some(st) => st,
                None => last.expect("at least one server")?,
            }
        }
        (None, Some(u)) => client
            .status_unique(u.as_bytes())
            .map_err(waiting_for(format!("GET_STATUS_UNIQUE \"{u}\"")))?,
        (None, None) => unreachable!("clap requires one"),
    };
    if json {
        print_json(&J::Obj(vec![
            ("known", J::Bool(st.known)),
            ("running", J::Bool(st.running)),
            ("numerator", J::Num(st.numerator)),
            ("denominator", J::Num(st.denominator)),
            ("waiting", st.waiting_clients.map_or(J::Null, J::Num)),
            (
                "server",
                if st.known {
                    J::s(st.server.to_string())
                } else {
                    J::Null
                },
            ),
        ]));
        return Ok(());
    }
    let mut line = format!(
        "known={} running={} numerator={} denominator={}",
        st.known as u8, st.running as u8, st.numerator, st.denominator
    );
    if let Some(w) = st.waiting_clients {
        line.push_str(&format!(" waiting={w}"));
    }
    if st.known {
        line.push_str(&format!(" server={}", st.server));
    }
    println!("{line}");
    Ok(())
}

/// A view of one value per server (`version`, `getpid`, `verbose`, `queue`): the value alone
/// for one server, a SERVER table for several; in JSON, `key` names it.
fn one_value<T: ToString>(
    servers: &[String],
    timeout: Duration,
    json: bool,
    what: &str,
    key: &'static str,
    f: impl FnMut(&mut Admin) -> Result<T, Error>,
    to_json: impl Fn(T) -> Vec<(&'static str, J)>,
) -> Result<(), Fail> {
    let (results, worst) = gather(servers, timeout, what, f);
    if json {
        print_json(&J::Arr(
            results
                .into_iter()
                .map(|(s, r)| server_json(s, r, &to_json))
                .collect(),
        ));
    } else if servers.len() == 1 {
        for (_, v) in answered(results) {
            println!("{}", v.to_string());
        }
    } else {
        let rows: Vec<Vec<String>> = answered(results)
            .into_iter()
            .map(|(s, v)| vec![s, v.to_string()])
            .collect();
        print_table(
            &mut std::io::stdout().lock(),
            &["SERVER", &key.to_uppercase()],
            &[false, false],
            &rows,
        );
    }
    finish(worst)
}

/// The `queue` line split into the store, whether it is healthy, and its last error.
fn queue_json(line: String) -> Vec<(&'static str, J)> {
    if let Some((store, error)) = line.split_once(" failing: ") {
        return vec![
            ("queue", J::s(store)),
            ("ok", J::Bool(false)),
            ("failure", J::s(error)),
        ];
    }
    let store = line.strip_suffix(" ok").unwrap_or(&line);
    vec![
        ("queue", J::s(store)),
        ("ok", J::Bool(true)),
        ("failure", J::Null),
    ]
}

/// Runs an admin command on every server; fails with the worst failure. With `json`, prints
/// `{"server", "ok": true}` or `{"server", "error"}` for each.
fn each_server(
    servers: &[String],
    timeout: Duration,
    json: bool,
    what: &str,
    f: impl FnMut(&mut Admin) -> Result<(), Error>,
) -> Result<(), Fail> {
    let (results, worst) = gather(servers, timeout, what, f);
    if json {
        print_ok_json(results);
    }
    finish(worst)
}

fn print_ok_json(results: PerServer<()>) {
    print_json(&J::Arr(
        results
            .into_iter()
            .map(|(s, r)| server_json(s, r, |()| vec![("ok", J::Bool(true))]))
            .collect(),
    ));
}

fn cancel(servers: &[String], timeout: Duration, json: bool, handle: &str) -> Result<(), Fail> {
    let what = format!("cancel job {handle}");
    let mut refused = Vec::new();
    let mut worst: Option<Fail> = None;
    let mut results: PerServer<()> = Vec::new();
    for s in servers {
        let r = match Admin::connect_with_tls(s, timeout, tls().as_ref()) {
            Err(e) => Err((describe_connect(s, &what, timeout, &e), e)),
            Ok(mut a) => a
                .cancel_job(handle)
                .map_err(|e| (describe(s, &what, timeout, &e), e)),
        };
        match r {
            Ok(()) => {
                results.push((s.clone(), Ok(())));
                if json {
                    print_ok_json(results);
                }
                return Ok(());
            }
            Err((msg, Error::Admin { .. })) => {
                refused.push(msg.clone());
                results.push((s.clone(), Err(msg)));
            }
            Err((msg, e)) => {
                eprintln!("gearshift: {msg}");
                worsen(&mut worst, exit_code(&e));
                results.push((s.clone(), Err(msg)));
            }
        }
    }
    if json {
        print_ok_json(results);
    }
    if let Some(w) = worst
        && refused.is_empty()
    {
        return Err(w);
    }
    Err(Fail(EXIT_JOB_FAILED, refused.join("; ")))
}

fn maxqueue(
    servers: &[String],
    timeout: Duration,
    json: bool,
    function: &str,
    limits: &[u32],
) -> Result<(), Fail> {
    let what = std::iter::once(format!("maxqueue {function}"))
        .chain(limits.iter().map(|n| n.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    each_server(servers, timeout, json, &what, |a| {
        a.create_function(function)?;
        match *limits {
            [] => a.maxqueue(function, None),
            [n] => a.maxqueue(function, Some(n)),
            [h, n] => a.maxqueue_priorities(function, h, n, 0),
            [h, n, l] => a.maxqueue_priorities(function, h, n, l),
            _ => unreachable!("clap allows at most 3"),
        }
    })
}

fn drop_function(
    servers: &[String],
    timeout: Duration,
    json: bool,
    function: &str,
) -> Result<(), Fail> {
    let what = format!("drop function {function}");
    let mut dropped = false;
    let mut not_found = Vec::new();
    let mut results: PerServer<()> = Vec::new();
    let mut worst = None;
    for s in servers {
        let r = match Admin::connect_with_tls(s, timeout, tls().as_ref()) {
            Err(e) => Err((describe_connect(s, &what, timeout, &e), e)),
            Ok(mut a) => a
                .drop_function(function)
                .map_err(|e| (describe(s, &what, timeout, &e), e)),
        };
        match r {
            Ok(()) => {
                dropped = true;
                results.push((s.clone(), Ok(())));
            }
            // Not there is not a failure as long as some server dropped it.
            Err((msg, Error::Admin { message, .. })) if message.contains("not found") => {
                not_found.push(msg.clone());
                results.push((s.clone(), Err(msg)));
            }
            Err((msg, e)) => {
                eprintln!("gearshift: {msg}");
                worsen(&mut worst, exit_code(&e));
                results.push((s.clone(), Err(msg)));
            }
        }
    }
    if json {
        print_ok_json(results);
    }
    finish(worst)?;
    if dropped {
        Ok(())
    } else {
        Err(Fail(EXIT_JOB_FAILED, not_found.join("; ")))
    }
}

// ---------------------------------------------------------------------------
// gearadmin's own flags
// ---------------------------------------------------------------------------

/// One of gearadmin's actions: the admin command and whether its answer is a listing.
struct Action {
    command: String,
    listing: bool,
}

/// The actions asked for, in the order gearadmin 1.1.20 runs them (whatever the order of the
/// flags): getpid, create, drop, cancel, show jobs, show unique jobs, verbose, version,
/// workers, prioritystatus, status; then `queue`, which gearadmin does not have.
fn gearadmin_actions(a: &GearadminArgs) -> Vec<Action> {
    let mut v = Vec::new();
    let mut push = |on: bool, command: String, listing: bool| {
        if on {
            v.push(Action { command, listing });
        }
    };
    push(a.getpid, "getpid".into(), false);
    if let Some(f) = &a.create_function {
        push(true, format!("create function {f}"), false);
    }
    if let Some(f) = &a.drop_function {
        push(true, format!("drop function {f}"), false);
    }
    if let Some(h) = &a.cancel_job {
        push(true, format!("cancel job {h}"), false);
    }
    push(a.show_jobs, "show jobs".into(), true);
    push(a.show_unique_jobs, "show unique jobs".into(), true);
    push(a.server_verbose, "verbose".into(), false);
    push(a.server_version, "version".into(), false);
    push(a.workers, "workers".into(), true);
    push(a.priority_status, "prioritystatus".into(), true);
    push(a.status, "status".into(), true);
    push(a.queue, "queue".into(), false);
    v
}

/// `gearshift admin` with gearadmin's flags, printing what gearadmin prints: a listing as the
/// server sent it (ending in `.`), `OK` for a bare `OK`, the value of `OK <value>`, and a
/// refusal (`ERR <message>`) as `Error: <message>` on stderr. Unlike gearadmin (which exits 0
/// when the server refuses, and 1 for any other failure), the exit code is gearshift's.
fn gearadmin(
    servers: &[String],
    explicit_servers: bool,
    timeout: Duration,
    a: GearadminArgs,
) -> Result<(), Fail> {
    let actions = gearadmin_actions(&a);
    if actions.is_empty() {
        return Err(Fail(
            EXIT_USAGE,
            "no action given: one or more of --status, --workers, --priority-status, --getpid, \
             --server-version, --server-verbose, --show-jobs, --show-unique-jobs, \
             --create-function F, --drop-function F, --cancel-job H, --queue (see --help)"
                .into(),
        ));
    }
    if a.ssl && tls().is_none() {
        return Err(Fail(
            EXIT_USAGE,
            "-S/--ssl needs --ssl-ca (and --ssl-cert with --ssl-key for mutual TLS)".into(),
        ));
    }
    let one;
    let servers = if a.host.is_some() || a.port.is_some() {
        if explicit_servers {
            return Err(Fail(
                EXIT_USAGE,
                "give the server either with --servers or with -h/-p, not both".into(),
            ));
        }
        let host = a.host.as_deref().unwrap_or("localhost");
        let port = a.port.as_deref().unwrap_or("4730");
        let port: u16 = port.parse().map_err(|_| {
            Fail(
                EXIT_USAGE,
                format!("-p {port}: not a port number (service names are not looked up)"),
            )
        })?;
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        one = parse_servers(&format!("{host}:{port}"))
            .map_err(|e| Fail(EXIT_USAGE, e.to_string()))?;
        &one[..]
    } else {
        servers
    };
    let mut worst: Option<Fail> = None;
    for s in servers {
        let first = &actions[0].command;
        let mut admin = match Admin::connect_with_tls(s, timeout, tls().as_ref()) {
            Ok(admin) => admin,
            Err(e) => {
                eprintln!("gearshift: {}", describe_connect(s, first, timeout, &e));
                worsen(&mut worst, exit_code(&e));
                continue;
            }
        };
        for act in &actions {
            let mut out = Vec::new();
            let r = if act.listing {
                admin.listing_bytes(&act.command).map(|lines| {
                    for l in lines {
                        out.extend_from_slice(&l);
                        out.push(b'\n');
                    }
                    out.extend_from_slice(b".\n");
                })
            } else {
                admin.command_bytes(&act.command).map(|line| {
                    if line == b"OK" {
                        out.extend_from_slice(b"OK");
                    } else if let Some(v) = line.strip_prefix(b"OK ") {
                        out.extend_from_slice(v);
                    } else {
                        out.extend_from_slice(&line);
                    }
                    out.push(b'\n');
                })
            };
            match r {
                Ok(()) => {
                    let mut stdout = std::io::stdout().lock();
                    let _ = stdout.write_all(&out).and_then(|_| stdout.flush());
                }
                Err(Error::Admin { message, .. }) => {
                    eprintln!("Error: {message}");
                    worsen(&mut worst, EXIT_JOB_FAILED);
                }
                Err(e) => {
                    eprintln!("gearshift: {}", describe(s, &act.command, timeout, &e));
                    worsen(&mut worst, exit_code(&e));
                    break;
                }
            }
        }
    }
    finish(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_backslashes_and_every_control_character() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\n\r\t\u{0}\u{1f}\u{7f} \u{fffd}é");
        assert_eq!(
            out,
            "\"a\\\"b\\\\c\\n\\r\\t\\u0000\\u001f\\u007f \u{fffd}é\""
        );
        for c in (0u8..0x20).chain([0x7f]) {
            let mut out = String::new();
            json_string(&mut out, &char::from(c).to_string());
            assert!(
                out.len() > 3 && !out[1..out.len() - 1].bytes().any(|b| b < 0x20 || b == 0x7f),
                "{c:#x} escaped: {out:?}"
            );
        }
    }

    #[test]
    fn json_documents_nest_compactly() {
        let doc = J::Arr(vec![J::Obj(vec![
            ("server", J::s("h:1")),
            ("n", J::Num(3)),
            ("b", J::Bool(false)),
            ("none", J::Null),
            ("list", J::Arr(vec![J::s("x"), J::Num(0)])),
        ])]);
        assert_eq!(
            doc.text(),
            r#"[{"server":"h:1","n":3,"b":false,"none":null,"list":["x",0]}]"#
        );
        assert_eq!(J::Arr(vec![]).text(), "[]");
        assert_eq!(J::Obj(vec![]).text(), "{}");
    }

    #[test]
    fn queue_lines_split_into_store_health_and_failure() {
        let text = |line: &str| J::Obj(queue_json(line.to_string())).text();
        assert_eq!(
            text("builtin"),
            r#"{"queue":"builtin","ok":true,"failure":null}"#
        );
        assert_eq!(
            text("libsqlite3 /var/q.db ok"),
            r#"{"queue":"libsqlite3 /var/q.db","ok":true,"failure":null}"#
        );
        assert_eq!(
            text("redis 127.0.0.1:6379 failing: connection refused"),
            r#"{"queue":"redis 127.0.0.1:6379","ok":false,"failure":"connection refused"}"#
        );
    }
}
