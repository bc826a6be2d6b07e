//! `gearshiftd`: the job server. Flags → validated configuration → listeners → shards; exits 0
//! on a normal shutdown and 1 when it cannot start.

use std::io::Write;
use std::process::ExitCode;

use gearshift::config::{self, Parsed};
use gearshift::{logger, notify, server, sys};

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("gearshiftd: {msg}");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let config = match config::parse(std::env::args().collect()) {
        Ok(Parsed::Run(c)) => c,
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(e),
    };
    for note in &config.notes {
        eprintln!("gearshiftd: warning: {note}");
    }
    if config.check_args {
        return ExitCode::SUCCESS;
    }
    if let Some(n) = config.file_descriptors
        && let Err(e) = sys::set_file_limit(n)
    {
        return fail(format!(
            "Could not set the file-descriptor limit to {n}: {e}"
        ));
    }
    // The store first: one that cannot be opened stops the start, naming it.
    let store = match gearshift::store::open::open(&config.queue) {
        Ok(s) => s,
        Err(e) => return fail(format!("Error while initializing the queue : {e}")),
    };
    // Certificates, key and ACL: a file that cannot be used stops the start, naming it.
    let security = match server::Security::load(&config) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // Bind next, so that a port in use fails the start (also under --daemon) with exit 1.
    let listeners = match server::bind(&config) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    if let Some(user) = &config.user
        && let Err(e) = sys::switch_user(user)
    {
        return fail(e);
    }
    // Under systemd (Type=notify, $NOTIFY_SOCKET set) the process systemd started is the one
    // it supervises and the one it takes READY=1 from: --daemon (in Debian's default PARAMS)
    // is ignored there rather than fork away from it.
    let detach = config.daemon && !notify::supervised();
    if detach && let Err(e) = sys::daemonize() {
        return fail(format!("Could not detach: {e}"));
    }
    logger::init(logger::LogSettings {
        target: config.log.clone(),
        level: config.verbose.clone(),
        format: config.log_format,
        syslog: config.syslog.clone(),
    });
    if config.daemon && !detach {
        log::info!("--daemon ignored: $NOTIFY_SOCKET is set, so the supervisor keeps this process");
    }
    let (pid_path, pid_given) = &config.pid_file;
    let pid_written = match std::fs::write(pid_path, format!("{}\n", std::process::id())) {
        Ok(()) => true,
        Err(e) if *pid_given => {
            return fail(format!(
                "Could not write pid file {}: {e}",
                pid_path.display()
            ));
        }
        Err(e) => {
            log::warn!("could not write pid file {}: {e}", pid_path.display());
            false
        }
    };
    let store = store.map(|s| (s, config.group_commit));
    let server = match server::Server::start_with_store(&config, listeners, store, security) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let signals = match server.watch_signals() {
        Ok(s) => s,
        Err(e) => return fail(format!("Could not install signal handlers: {e}")),
    };
    log::info!(
        "gearshiftd {} listening on {:?} with {} shard(s)",
        server::VERSION,
        server.local_addrs(),
        config.threads
    );
    // With port 0, say which port was picked: the Gearman port first, then the TLS port of
    // --ssl-port, then the HTTP port.
    let side_port = config.tls.as_ref().and_then(|t| t.side_port);
    let mut out = std::io::stdout();
    if config.port == 0
        && let Some(addr) = server.local_addrs().first()
    {
        let _ = writeln!(out, "listening on {addr}");
    }
    if side_port == Some(0)
        && let Some(addr) = server.tls_addrs().next()
    {
        let _ = writeln!(out, "listening with TLS on {addr}");
    }
    if config.http_port == Some(0)
        && let Some(addr) = server.http_addrs().next()
    {
        let _ = writeln!(out, "listening for HTTP on {addr}");
    }
    if config.metrics_port == Some(0)
        && let Some(addr) = server.metrics_addrs().next()
    {
        let _ = writeln!(out, "listening for metrics on {addr}");
    }
    let _ = out.flush();
    // Listening, shards running, signals handled: tell systemd (Type=notify) the start is done.
    notify::send(&format!(
        "READY=1\nSTATUS=listening on {:?} with {} shard(s)\nMAINPID={}",
        server.local_addrs(),
        config.threads,
        std::process::id()
    ));
    server.join();
    signals.0.close();
    let _ = signals.1.join();
    if pid_written {
        let _ = std::fs::remove_file(pid_path);
    }
    logger::flush();
    ExitCode::SUCCESS
}
