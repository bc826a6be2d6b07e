//! `gearshift`: the Gearman command-line tool, in place of libgearman's `gearman` and
//! `gearadmin`. Submits jobs, runs any shell command as a worker, and shows the servers' admin
//! views as aligned tables.
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
2 usage error; 3 no job server reachable or connection lost; 4 timeout; 5 protocol error.";

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
    let list = match cli.servers {
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
    match cli.command {
        Cmd::Submit(a) => submit(&servers, cli.timeout.map(secs).transpose()?, a),
        Cmd::Work(a) => work(&servers, a),
        Cmd::Status(a) => status(&servers, short, a),
        Cmd::Workers => workers(&servers, short),
        Cmd::Jobs { unique } => jobs(&servers, short, unique),
        Cmd::Job { handle, unique } => job_status(&servers, short, handle, unique),
        Cmd::Version => version(&servers, short),
        Cmd::Cancel { handle } => cancel(&servers, short, &handle),
        Cmd::Maxqueue { function, limits } => maxqueue(&servers, short, &function, &limits),
        Cmd::Drop { function } => drop_function(&servers, short, &function),
        Cmd::Create { function } => each_server(&servers, short, |a| a.create_function(&function)),
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
        let h = client.submit_background(job)?;
        println!("{h}");
        return Ok(());
    }
    let task = client.submit(job)?;
    // No limit by default: a job may take as long as it takes.
    let wait = timeout.unwrap_or(Duration::from_secs(u64::MAX / 4));
    let mut stdout = std::io::stdout().lock();
    let quiet = a.quiet;
    let out = client.wait_with(task, wait, |ev| match ev {
        Event::Created { handle, .. } => log::info!("job {handle} on {}", handle.server),
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
    let out = out?;
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

/// Runs `f` against every server's admin interface, returning the results in server order.
/// A server that fails is reported on stderr; the worst failure is returned at the end.
fn gather<T>(
    servers: &[String],
    timeout: Duration,
    mut f: impl FnMut(&mut Admin) -> Result<T, Error>,
) -> (Vec<(String, T)>, Option<Fail>) {
    let mut ok = Vec::new();
    let mut worst: Option<Fail> = None;
    for s in servers {
        let r = Admin::connect_with_tls(s, timeout, tls().as_ref()).and_then(|mut a| f(&mut a));
        match r {
            Ok(v) => ok.push((s.clone(), v)),
            Err(e) => {
                eprintln!("gearshift: {}", describe(s, &e));
                let code = exit_code(&e);
                if worst.as_ref().is_none_or(|w| w.0 < code) {
                    worst = Some(Fail(code, String::new()));
                }
            }
        }
    }
    (ok, worst)
}

/// An error about server `s`, naming the server once.
fn describe(s: &str, e: &Error) -> String {
    match e {
        Error::Timeout | Error::Config(_) | Error::NoServer(_) => format!("{s}: {e}"),
        _ => e.to_string(),
    }
}

fn finish(worst: Option<Fail>) -> Result<(), Fail> {
    match worst {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

fn status_once(servers: &[String], timeout: Duration, out: &mut impl Write) -> Option<Fail> {
    let (results, worst) = gather(servers, timeout, |a| a.status());
    if results.is_empty() {
        return worst;
    }
    let many = servers.len() > 1;
    let mut rows = Vec::new();
    for (server, mut list) in results {
        list.sort_by(|a, b| a.function.cmp(&b.function));
        for f in list {
            let mut r = Vec::new();
            if many {
                r.push(server.clone());
            }
            r.extend([
                f.function,
                f.total.to_string(),
                f.running.to_string(),
                f.total.saturating_sub(f.running).to_string(),
                f.workers.to_string(),
            ]);
            rows.push(r);
        }
    }
    let header = [
        "SERVER", "FUNCTION", "TOTAL", "RUNNING", "QUEUED", "WORKERS",
    ];
    let numeric = [false, false, true, true, true, true];
    let skip = if many { 0 } else { 1 };
    print_table(out, &header[skip..], &numeric[skip..], &rows);
    worst
}

fn status(servers: &[String], timeout: Duration, a: StatusArgs) -> Result<(), Fail> {
    let Some(every) = a.watch else {
        return finish(status_once(servers, timeout, &mut std::io::stdout().lock()));
    };
    let every = secs(every)?;
    let tty = std::io::stdout().is_terminal();
    let mut n = 0u64;
    loop {
        let mut buf = Vec::new();
        if tty {
            // Home the cursor and clear the screen, then draw the whole frame in one write.
            buf.extend_from_slice(b"\x1b[H\x1b[2J");
        } else if n > 0 {
            buf.push(b'\n');
        }
        let _ = writeln!(
            buf,
            "every {:.1}s: gearshift status ({})",
            every.as_secs_f64(),
            servers.join(",")
        );
        status_once(servers, timeout, &mut buf);
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

fn workers(servers: &[String], timeout: Duration) -> Result<(), Fail> {
    let (results, worst) = gather(servers, timeout, |a| a.workers());
    if results.is_empty() {
        return finish(worst);
    }
    let many = servers.len() > 1;
    let mut rows = Vec::new();
    for (server, list) in results {
        for w in list {
            let mut r = Vec::new();
            if many {
                r.push(server.clone());
            }
            r.extend([w.fd, w.ip, w.client_id, w.functions.join(" ")]);
            rows.push(r);
        }
    }
    let header = ["SERVER", "FD", "IP", "CLIENT-ID", "FUNCTIONS"];
    let numeric = [false, true, false, false, false];
    let skip = if many { 0 } else { 1 };
    print_table(
        &mut std::io::stdout().lock(),
        &header[skip..],
        &numeric[skip..],
        &rows,
    );
    finish(worst)
}

fn jobs(servers: &[String], timeout: Duration, unique: bool) -> Result<(), Fail> {
    let many = servers.len() > 1;
    let skip = if many { 0 } else { 1 };
    let mut rows = Vec::new();
    let worst = if unique {
        let (results, worst) = gather(servers, timeout, |a| a.show_unique_jobs());
        if results.is_empty() {
            return finish(worst);
        }
        for (server, list) in results {
            for u in list {
                let mut r = Vec::new();
                if many {
                    r.push(server.clone());
                }
                r.push(u);
                rows.push(r);
            }
        }
        print_table(
            &mut std::io::stdout().lock(),
            &["SERVER", "UNIQUE"][skip..],
            &[false, false][skip..],
            &rows,
        );
        worst
    } else {
        let (results, worst) = gather(servers, timeout, |a| a.show_jobs());
        if results.is_empty() {
            return finish(worst);
        }
        for (server, list) in results {
            for j in list {
                let mut r = Vec::new();
                if many {
                    r.push(server.clone());
                }
                r.extend([
                    j.handle,
                    j.retries.to_string(),
                    (j.ignored as u8).to_string(),
                    (j.queued as u8).to_string(),
                ]);
                rows.push(r);
            }
        }
        print_table(
            &mut std::io::stdout().lock(),
            &["SERVER", "HANDLE", "RETRIES", "IGNORED", "QUEUED"][skip..],
            &[false, false, true, true, true][skip..],
            &rows,
        );
        worst
    };
    finish(worst)
}

fn job_status(
    servers: &[String],
    timeout: Duration,
    handle: Option<String>,
    unique: Option<String>,
) -> Result<(), Fail> {
    let mut opts = ClientOptions::default();
    opts.timeout = timeout;
    opts.connect_timeout = opts.connect_timeout.min(timeout);
    opts.tls = tls();
    let mut client = Client::with_options(servers, opts)?;
    let st = match (handle, unique) {
        (Some(h), _) => {
            let mut last = None;
            let mut found = None;
            for s in servers {
                match client.status(&JobHandle::new(s.as_str(), h.as_str())) {
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
        (None, Some(u)) => client.status_unique(u.as_bytes())?,
        (None, None) => unreachable!("clap requires one"),
    };
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

fn version(servers: &[String], timeout: Duration) -> Result<(), Fail> {
    let (results, worst) = gather(servers, timeout, |a| a.version());
    if servers.len() == 1 {
        for (_, v) in results {
            println!("{v}");
        }
    } else {
        let rows: Vec<Vec<String>> = results.into_iter().map(|(s, v)| vec![s, v]).collect();
        print_table(
            &mut std::io::stdout().lock(),
            &["SERVER", "VERSION"],
            &[false, false],
            &rows,
        );
    }
    finish(worst)
}

/// Runs an admin command on every server; fails with the worst failure.
fn each_server(
    servers: &[String],
    timeout: Duration,
    mut f: impl FnMut(&mut Admin) -> Result<(), Error>,
) -> Result<(), Fail> {
    let (_, worst) = gather(servers, timeout, |a| f(a));
    finish(worst)
}

fn cancel(servers: &[String], timeout: Duration, handle: &str) -> Result<(), Fail> {
    let mut refused = Vec::new();
    let mut worst: Option<Fail> = None;
    for s in servers {
        match Admin::connect_with_tls(s, timeout, tls().as_ref())
            .and_then(|mut a| a.cancel_job(handle))
        {
            Ok(()) => return Ok(()),
            Err(e @ Error::Admin { .. }) => refused.push(e.to_string()),
            Err(e) => {
                eprintln!("gearshift: {}", describe(s, &e));
                let code = exit_code(&e);
                if worst.as_ref().is_none_or(|w| w.0 < code) {
                    worst = Some(Fail(code, String::new()));
                }
            }
        }
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
    function: &str,
    limits: &[u32],
) -> Result<(), Fail> {
    each_server(servers, timeout, |a| {
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

fn drop_function(servers: &[String], timeout: Duration, function: &str) -> Result<(), Fail> {
    let mut dropped = false;
    let mut not_found = Vec::new();
    let (_, worst) = gather(servers, timeout, |a| match a.drop_function(function) {
        Ok(()) => {
            dropped = true;
            Ok(())
        }
        Err(Error::Admin { server, message }) if message.contains("not found") => {
            not_found.push(format!("{server}: {message}"));
            Ok(())
        }
        Err(e) => Err(e),
    });
    finish(worst)?;
    if dropped {
        Ok(())
    } else {
        Err(Fail(EXIT_JOB_FAILED, not_found.join("; ")))
    }
}
