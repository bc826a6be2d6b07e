//! `loadtest`: drives a Gearman server (or several, to compare them) with a scenario and
//! reports jobs/s, latency, server CPU per job, the harness's own CPU per job, and memory.
//!
//! ```text
//! loadtest bg --addr 127.0.0.1:4730 --server-pid 1234      # one server that is running
//! loadtest bg --compare --rounds 3 --json bg.json          # gearshiftd vs gearmand
//! loadtest fg --clients 16 --depth 8 --compare
//! loadtest fg --rate 20000 --clients 16 --compare            # open loop: latency at a load
//! loadtest ceiling --clients 8 --depth 1                   # the machine's round-trip roof
//! loadtest soak --gearshiftd-threads 4                     # 10M jobs with faults
//! ```
//!
//! Without `--addr` or `--compare`, gearshiftd alone is started. Each run of a started server
//! gets a fresh process on a free loopback port. Exit status: 0 when every run was clean, 1
//! when any job was lost or duplicated or a run failed, 2 for bad flags.
//!
//! Modules: [`driver`] (the mio loop), [`scenarios`] (what clients and workers do and what is
//! counted), [`servers`] (starting gearshiftd and gearmand), [`procstat`] (CPU and memory from
//! /proc), [`echo`] (the raw TCP echo server of `ceiling`), [`report`] (tables, JSON, SVG).

mod driver;
mod echo;
mod procstat;
mod report;
mod scenarios;
mod servers;
mod soak;
mod tls;

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use report::{RunResult, json_str};
use scenarios::{CpuSource, Params, Scenario, Target, UniqueMode};
use servers::{Kind, ServerSpec};

/// Load harness for Gearman job servers.
#[derive(Parser, Debug)]
#[command(name = "loadtest", version)]
struct Cli {
    /// What to run.
    #[arg(value_enum)]
    scenario: Scenario,

    /// Drive the server already listening here (host:port).
    #[arg(long, conflicts_with = "compare")]
    addr: Option<String>,
    /// Process id of the server at --addr, to read its CPU time and memory.
    #[arg(long, requires = "addr")]
    server_pid: Option<u32>,
    /// Start gearshiftd and gearmand on free loopback ports and run the scenario against each
    /// in turn, interleaved over --rounds; print medians and ratios.
    #[arg(long)]
    compare: bool,
    /// gearshiftd binary [default: next to this binary].
    #[arg(long)]
    gearshiftd: Option<PathBuf>,
    /// gearmand binary (skipped if missing).
    #[arg(long, default_value = "/usr/sbin/gearmand")]
    gearmand: PathBuf,
    /// --threads values to start gearshiftd with; each is its own target (e.g. 1,2).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    gearshiftd_threads: Vec<u32>,
    /// --threads values to start gearmand with (its fastest here is 1).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    gearmand_threads: Vec<u32>,
    /// Also start each gearshiftd with mutual TLS (`--ssl`, certificates made at start), as a
    /// target of its own (`gearshiftd-t1-tls`) run beside the plain one.
    #[arg(long, conflicts_with = "addr")]
    tls: bool,
    /// An extra flag for the gearshiftd processes started (repeatable).
    #[arg(long = "gearshiftd-arg", allow_hyphen_values = true)]
    gearshiftd_args: Vec<String>,
    /// An extra flag for the gearmand processes started (repeatable), e.g. its queue store.
    #[arg(long = "gearmand-arg", allow_hyphen_values = true)]
    gearmand_args: Vec<String>,
    /// Process id of the database server behind the queue store: its CPU (and its child
    /// processes', e.g. PostgreSQL's backends) is reported per job as the store's, and not
    /// counted as disturbance.
    #[arg(long)]
    store_pid: Option<u32>,
    /// The servers keep a queue store: fill's drain ends only once the store has every drained
    /// job's delete (a background job submitted after the last WORK_COMPLETE is acknowledged).
    #[arg(long)]
    durable: bool,
    /// Run a round again (up to this many times) when other processes used more than 10% of
    /// a core during its measured phase; the figures of a disturbed run are not kept.
    #[arg(long, default_value_t = 0)]
    retry_disturbed: u32,
    /// Rounds per target [default: 3 with --compare, else 1].
    #[arg(long)]
    rounds: Option<usize>,

    /// Jobs per run (round trips for ceiling, uniques for coalesce, submissions for soak)
    /// [default: 200000; soak: 10000000].
    #[arg(long)]
    jobs: Option<u32>,
    /// Payload bytes per job (at least 8).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Client connections (for coalesce: clients submitting each unique; for ceiling:
    /// connections).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Jobs in flight per client (coalesce: uniques in flight; ceiling: messages per
    /// connection) [default: 32]. With --rate: a cap on the jobs outstanding per client (none
    /// if not given); a job that finds no client under the cap is sent late.
    #[arg(long)]
    depth: Option<usize>,
    /// Open loop (bg, fg): offer this many jobs/s in all, job i due at the start plus i/R,
    /// spread over the clients round robin, whatever the server answers. Latency runs from
    /// the due time (fg: to the result; bg: to the worker's JOB_ASSIGN).
    #[arg(long)]
    rate: Option<f64>,
    /// With --rate: wake up at most every this many microseconds when nothing arrives, and
    /// send every job then due in one go (fewer turns; a job is up to this much late, which
    /// its latency includes). 0: a wake-up at each due time.
    #[arg(long, default_value_t = 0)]
    tick_us: u64,
    /// Worker connections.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Distinct function names (jobs spread over them round robin; soak: at random)
    /// [default: 1; soak: 8].
    #[arg(long)]
    functions: Option<usize>,
    /// Unique ids: one per job, or none.
    #[arg(long, value_enum, default_value = "seq")]
    unique: UniqueMode,
    /// Workers grab with GRAB_JOB_UNIQ instead of GRAB_JOB.
    #[arg(long)]
    grab_uniq: bool,
    /// Idle connections held by the conns scenario.
    #[arg(long, default_value_t = 10_000)]
    idle_conns: usize,
    /// ceiling: the echo server waits and moves bytes through io_uring (one receive or send in
    /// flight per connection, a turn in one io_uring_enter) instead of epoll, to see what the
    /// event loop changes in the floor itself.
    #[arg(long)]
    echo_io_uring: bool,
    /// Time limit of one run, seconds [default: 120; soak: 3600].
    #[arg(long)]
    timeout: Option<u64>,

    /// soak: kill -9 the server about every this many seconds (uniform in half to one and a
    /// half times it) and restart it on the same port and flags (give it a store with
    /// --gearshiftd-arg); needs a server the harness starts.
    #[arg(long, conflicts_with = "addr")]
    kill_every: Option<f64>,
    /// soak: fail when nothing was submitted, acknowledged, run or answered for this many
    /// seconds.
    #[arg(long, default_value_t = 30)]
    stall: u64,
    /// soak: a client or a worker (in turn) dies about every this many milliseconds.
    #[arg(long, default_value_t = 40)]
    fault_every_ms: u64,
    /// soak: seed of the random choices [default: from the clock; printed in the result].
    #[arg(long)]
    seed: Option<u64>,
    /// soak: about every 10 s a client writes this many background submissions in one go,
    /// past its --depth, before reading any answer (0: no bursts).
    #[arg(long, default_value_t = 0)]
    burst: u32,
    /// soak: stop submitting after this many seconds even short of --jobs, then drain and
    /// check as usual (a run that reaches --timeout fails).
    #[arg(long)]
    duration: Option<u64>,

    /// Write all runs and medians as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the medians as an SVG bar chart here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

/// What the runs go against: servers to start, an external address, or the echo server.
enum Targets {
    Start(Vec<ServerSpec>),
    External(Target),
    Echo,
}

fn title(cli: &Cli, p: &Params, rounds: usize) -> String {
    let depth = p.depth;
    let shape = match cli.scenario {
        Scenario::Ceiling => format!(
            "{} round trips, {} B, {} connections x {} in flight",
            p.jobs, cli.payload, cli.clients, depth
        ),
        Scenario::Coalesce => format!(
            "{} uniques, {} clients each, {} uniques in flight, {} workers",
            p.jobs, cli.clients, depth, cli.workers
        ),
        Scenario::Soak => format!(
            "{} submissions, {} B payload, {} clients x {} in flight, {} workers, {} functions, a client or worker dies every ~{} ms{}",
            p.jobs,
            p.payload,
            p.clients,
            p.depth,
            p.workers,
            p.functions,
            p.fault_every.as_millis(),
            p.kill_every.map_or(String::new(), |k| format!(
                ", server kill -9 every ~{:.1} s",
                k.as_secs_f64()
            )) + &if p.burst > 0 {
                format!(", bursts of {} background submissions", p.burst)
            } else {
                String::new()
            }
        ),
        _ if p.rate.is_some() => format!(
            "{} jobs, open loop at {} jobs/s, {} B payload, {} clients{}, {} workers, {} function(s), unique={:?}",
            p.jobs,
            p.rate.unwrap_or(0.0),
            cli.payload,
            cli.clients,
            if p.depth_cap {
                format!(" (at most {depth} outstanding each)")
            } else {
                String::new()
            },
            cli.workers,
            p.functions,
            cli.unique,
        ),
        _ => format!(
            "{} jobs, {} B payload, {} clients x {} in flight, {} workers, {} function(s), unique={:?}{}",
            p.jobs,
            cli.payload,
            cli.clients,
            depth,
            cli.workers,
            p.functions,
            cli.unique,
            if cli.scenario == Scenario::Conns {
                format!(", {} idle connections", cli.idle_conns)
            } else {
                String::new()
            }
        ),
    };
    format!(
        "{}: {shape}; median of {rounds} round(s)",
        cli.scenario.name()
    )
}

fn now_string() -> String {
    std::process::Command::new("date")
        .arg("-Iseconds")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn main() -> ExitCode {
    env_logger::init();
    let cli = Cli::parse();
    if cli.payload < 8 {
        eprintln!("loadtest: --payload must be at least 8 (the job number travels in it)");
        return ExitCode::from(2);
    }
    let soak = cli.scenario == Scenario::Soak;
    let jobs = cli.jobs.unwrap_or(if soak { 10_000_000 } else { 200_000 });
    if jobs == 0 || cli.rounds == Some(0) {
        eprintln!("loadtest: --jobs and --rounds must be at least 1");
        return ExitCode::from(2);
    }
    if soak && cli.compare {
        eprintln!(
            "loadtest: soak checks gearshiftd's own rules (PROTOCOL.md's decisions); it does not run with --compare"
        );
        return ExitCode::from(2);
    }
    if soak && cli.clients < 4 {
        eprintln!(
            "loadtest: soak needs --clients 4 or more (a group's submissions use different clients)"
        );
        return ExitCode::from(2);
    }
    if cli.kill_every.is_some_and(|k| k.is_nan() || k <= 0.0) {
        eprintln!("loadtest: --kill-every must be positive");
        return ExitCode::from(2);
    }
    if let Some(r) = cli.rate {
        if !matches!(cli.scenario, Scenario::Bg | Scenario::Fg) {
            eprintln!("loadtest: --rate is for bg and fg");
            return ExitCode::from(2);
        }
        if !(r.is_finite() && r > 0.0) {
            eprintln!("loadtest: --rate must be a positive number of jobs/s");
            return ExitCode::from(2);
        }
    }
    let rounds = cli.rounds.unwrap_or(if cli.compare { 3 } else { 1 });
    let params = Params {
        jobs,
        payload: cli.payload,
        clients: cli.clients.max(1),
        depth: cli.depth.unwrap_or(32).max(1),
        rate: cli.rate,
        tick: Duration::from_micros(cli.tick_us),
        depth_cap: cli.depth.is_some(),
        workers: cli.workers.max(1),
        functions: cli.functions.unwrap_or(if soak { 8 } else { 1 }).max(1),
        unique: cli.unique,
        grab_uniq: cli.grab_uniq,
        idle_conns: cli.idle_conns,
        echo_io_uring: cli.echo_io_uring,
        timeout: Duration::from_secs(cli.timeout.unwrap_or(if soak { 3600 } else { 120 }).max(1)),
        progress: !cli.quiet,
        kill_every: cli.kill_every.map(Duration::from_secs_f64),
        stall: Duration::from_secs(cli.stall.max(1)),
        fault_every: Duration::from_millis(cli.fault_every_ms.max(1)),
        duration: cli.duration.map(Duration::from_secs),
        burst: cli.burst,
        seed: cli.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        }),
        durable: cli.durable,
    };

    let pki = match cli.tls {
        false => None,
        true => match tls::Pki::new() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("loadtest: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let targets = if cli.scenario == Scenario::Ceiling {
        Targets::Echo
    } else if let Some(a) = &cli.addr {
        let addr = match a.to_socket_addrs().ok().and_then(|mut i| i.next()) {
            Some(x) => x,
            None => {
                eprintln!("loadtest: cannot resolve --addr {a}");
                return ExitCode::from(2);
            }
        };
        Targets::External(Target {
            tls: None,
            name: a.clone(),
            addr,
            cpu: cli
                .server_pid
                .map_or(CpuSource::Unknown, CpuSource::Process),
            rss_pid: cli.server_pid,
            store_pid: cli.store_pid,
        })
    } else {
        let gs = cli.gearshiftd.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("gearshiftd")))
                .unwrap_or_else(|| PathBuf::from("gearshiftd"))
        });
        if !gs.exists() {
            eprintln!(
                "loadtest: no gearshiftd at {} (build it with `cargo build --release --bin gearshiftd`, or pass --gearshiftd)",
                gs.display()
            );
            return ExitCode::from(2);
        }
        let mut specs: Vec<ServerSpec> = cli
            .gearshiftd_threads
            .iter()
            .map(|&t| ServerSpec {
                name: format!("gearshiftd-t{t}"),
                kind: Kind::Gearshiftd,
                path: gs.clone(),
                threads: t,
                extra: cli.gearshiftd_args.clone(),
                tls: None,
            })
            .collect();
        if let Some(pki) = &pki {
            let tls: Vec<ServerSpec> = specs
                .iter()
                .map(|s| {
                    let mut s = s.clone();
                    s.name.push_str("-tls");
                    s.extra.extend(pki.server_args.iter().cloned());
                    s.tls = Some(pki.client.clone());
                    s
                })
                .collect();
            specs.extend(tls);
        }
        if cli.compare {
            if cli.gearmand.exists() {
                specs.extend(cli.gearmand_threads.iter().map(|&t| ServerSpec {
                    name: format!("gearmand-t{t}"),
                    kind: Kind::Gearmand,
                    path: cli.gearmand.clone(),
                    threads: t,
                    extra: cli.gearmand_args.clone(),
                    tls: None,
                }));
            } else {
                eprintln!(
                    "loadtest: no gearmand at {}; running gearshiftd alone",
                    cli.gearmand.display()
                );
            }
        }
        Targets::Start(specs)
    };

    // Enough descriptors for every connection (idle ones only in conns): --workers 1000.
    let mut fds = params.clone();
    if cli.scenario != Scenario::Conns {
        fds.idle_conns = 0;
    }
    if let Err(e) = scenarios::ensure_fd_limit(&fds) {
        eprintln!("loadtest: {e}");
        return ExitCode::from(2);
    }

    // Is the machine quiet? The load average lags (it still counts the previous run), so
    // sample what the machine is doing now, for half a second.
    let load_before = procstat::loadavg();
    let busy_before = procstat::machine_busy_ns().and_then(|a| {
        std::thread::sleep(Duration::from_millis(500));
        procstat::machine_busy_ns().map(|b| 100.0 * b.saturating_sub(a) as f64 / 0.5e9)
    });
    if let Some(b) = busy_before
        && b > 10.0
    {
        eprintln!(
            "loadtest: note: the machine is busy ({b:.0}% of a core in use before the start); figures may be disturbed"
        );
    }
    let started = now_string();

    let mut runs: Vec<RunResult> = Vec::new();
    let names: Vec<String> = match &targets {
        Targets::Start(s) => s.iter().map(|s| s.name.clone()).collect(),
        Targets::External(t) => vec![t.name.clone()],
        Targets::Echo => vec!["echo".into()],
    };
    let echo = Target {
        tls: None,
        name: "echo".into(),
        addr: ([127, 0, 0, 1], 0).into(),
        cpu: CpuSource::Unknown,
        rss_pid: None,
        store_pid: None,
    };
    // One run, repeated up to --retry-disturbed times while other processes disturbed it.
    let run_one = |f: &dyn Fn() -> RunResult| -> RunResult {
        let mut tries = 0;
        loop {
            let r = f();
            // A failed run is never run again: a failure must show, disturbed or not.
            if !r.disturbed || !r.ok() || tries >= cli.retry_disturbed {
                return print_run(r);
            }
            tries += 1;
            eprintln!(
                "loadtest: {} round {} was disturbed by other processes; running it again ({tries}/{}): {}",
                r.target,
                r.round,
                cli.retry_disturbed,
                r.line()
            );
            wait_quiet(Duration::from_secs(60));
        }
    };
    for round in 1..=rounds {
        match &targets {
            Targets::Echo => runs.push(run_one(&|| {
                scenarios::run(cli.scenario, &params, &echo, round)
            })),
            Targets::External(t) if soak => runs.push(run_one(&|| {
                soak::run(
                    &params,
                    soak::SoakServer::External(t.clone()),
                    &t.name,
                    round,
                )
            })),
            Targets::External(t) => {
                runs.push(run_one(&|| scenarios::run(cli.scenario, &params, t, round)))
            }
            Targets::Start(specs) => {
                // Alternate the order each round so neither server always runs first.
                let order: Vec<&ServerSpec> = if round % 2 == 1 {
                    specs.iter().collect()
                } else {
                    specs.iter().rev().collect()
                };
                for spec in order {
                    if soak {
                        runs.push(run_one(&|| soak::run_started(&params, spec, round)));
                    } else {
                        runs.push(run_one(&|| {
                            run_started(cli.scenario, &params, spec, round, cli.store_pid)
                        }));
                    }
                }
            }
        }
    }

    let med = report::medians(&names, &runs);
    let baseline = names.iter().find(|n| n.starts_with("gearmand")).cloned();
    let title = title(&cli, &params, rounds);
    {
        use std::io::Write;
        let table = report::table(&title, &med, &runs, baseline.as_deref());
        let _ = write!(std::io::stdout().lock(), "\n{table}");
    }

    let (ncpu, model) = procstat::machine();
    if let Some(path) = &cli.json {
        let meta = vec![
            ("scenario", json_str(cli.scenario.name())),
            ("title", json_str(&title)),
            (
                "command",
                json_str(&std::env::args().collect::<Vec<_>>().join(" ")),
            ),
            ("started", json_str(&started)),
            ("nproc", ncpu.to_string()),
            ("cpu_model", json_str(&model)),
            (
                "loadavg_before",
                load_before.map_or("null".into(), |l| l.to_string()),
            ),
            (
                "busy_pct_before",
                busy_before.map_or("null".into(), |b| format!("{b:.1}")),
            ),
            (
                "baseline",
                baseline.as_deref().map_or("null".into(), json_str),
            ),
        ];
        if let Err(e) = std::fs::write(path, report::json(&meta, &runs, &med)) {
            eprintln!("loadtest: cannot write {}: {e}", path.display());
        }
    }
    if let Some(path) = &cli.svg
        && let Err(e) = std::fs::write(path, report::svg(&title, &med))
    {
        eprintln!("loadtest: cannot write {}: {e}", path.display());
    }

    if runs.iter().all(|r| r.ok()) {
        ExitCode::SUCCESS
    } else {
        eprintln!("loadtest: FAILED: some runs lost or duplicated jobs or failed (see above)");
        ExitCode::from(1)
    }
}

/// Waits until the machine has been quiet (under 10% of a core busy) for a second, at most
/// `limit`.
fn wait_quiet(limit: Duration) {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < limit {
        let Some(a) = procstat::machine_busy_ns() else {
            return;
        };
        std::thread::sleep(Duration::from_secs(1));
        let Some(b) = procstat::machine_busy_ns() else {
            return;
        };
        if (b.saturating_sub(a) as f64) < 0.1e9 {
            return;
        }
    }
}

/// Prints a run's `result:` line as soon as it is known (a closed stdout is not an error).
fn print_run(r: RunResult) -> RunResult {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", r.line());
    let _ = out.flush();
    r
}

/// Starts a fresh server, runs the scenario against it, checks it is still alive, stops it.
fn run_started(
    s: Scenario,
    p: &Params,
    spec: &ServerSpec,
    round: usize,
    store_pid: Option<u32>,
) -> RunResult {
    let mut running = match spec.start() {
        Ok(r) => r,
        Err(e) => {
            return RunResult {
                scenario: s.name().into(),
                target: spec.name.clone(),
                round,
                jobs: p.jobs as u64,
                errors: vec![e],
                ..Default::default()
            };
        }
    };
    log::debug!("{} pid {} on {}", spec.name, running.pid, running.addr);
    let target = Target {
        tls: spec.tls.clone(),
        name: spec.name.clone(),
        addr: running.addr,
        cpu: CpuSource::Process(running.pid),
        rss_pid: Some(running.pid),
        store_pid,
    };
    let mut r = scenarios::run(s, p, &target, round);
    if let Some(st) = running.exited() {
        r.errors.push(format!(
            "{} exited during the run ({st}); stderr: {}",
            spec.name,
            running.stderr_text()
        ));
    } else if let Some(note) = running.stop() {
        r.notes.push(format!("{}: {note}", spec.name));
    }
    r
}
