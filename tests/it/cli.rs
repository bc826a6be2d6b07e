//! The command line (PROTOCOL.md §4) and the explicit limits: gearmand's flags and messages,
//! features that are refused by name, daemon mode, and what happens past each limit.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// The server binary under test, whichever it is.
fn server_bin() -> String {
    if is_gearmand() {
        gearmand_bin()
    } else {
        gearshiftd_bin()
    }
}

/// Runs the server with `args` expecting it to refuse them: exit 1 within a few seconds, and
/// the message on stderr (returned).
fn refused(args: &[&str]) -> String {
    let mut child = Command::new(server_bin())
        .args(args)
        .arg("--log-file=none")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the server");
    // A server that wrongly starts must not hang the suite.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} should fail at start, but the server kept running");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{args:?} should fail: {stderr}");
    stderr
}

#[test]
fn unknown_option_and_positional_argument_are_refused() {
    let name = if is_gearmand() {
        "gearmand"
    } else {
        "gearshiftd"
    };
    assert!(refused(&["--bogus"]).contains(&format!("{name}: unrecognised option '--bogus'")));
    assert!(refused(&["stray"]).contains("unrecognised option 'stray'"));
}

#[test]
fn invalid_values_are_refused_with_gearmands_messages() {
    assert!(refused(&["--verbose=LOUD"]).contains("Invalid value for --verbose supplied"));
    assert!(
        refused(&["--hashtable-buckets=0"]).contains("hashtable-buckets has to be greater than 0")
    );
    assert!(
        refused(&["-q", "nosuchqueue"])
            .contains("Error while initializing the queue : nosuchqueue")
    );
}

#[test]
fn features_not_built_fail_at_start_naming_the_flag() {
    if skip_under_gearmand("features gearshiftd does not have") {
        return;
    }
    assert!(refused(&["-q", "libmemcached"]).contains("libmemcached"));
    assert!(refused(&["-q", "libsqlite3"]).contains("--libsqlite3-db"));
    assert!(
        refused(&[
            "-q",
            "libsqlite3",
            "--libsqlite3-db=/tmp/q.db",
            "--store-queue-on-shutdown"
        ])
        .contains("--store-queue-on-shutdown")
    );
    assert!(refused(&["-r", "http"]).contains("http"));
    assert!(refused(&["--ssl"]).contains("--ssl"));
    assert!(refused(&["--syslog"]).contains("--syslog"));
    assert!(refused(&["--job-retries=256"]).contains("--job-retries"));
}

#[test]
fn a_store_that_cannot_be_opened_stops_the_start_naming_it() {
    if skip_under_gearmand("gearshiftd's store messages") {
        return;
    }
    let msg = refused(&["-q", "libsqlite3", "--libsqlite3-db=/nonexistent/dir/q.db"]);
    assert!(
        msg.contains("libsqlite3") && msg.contains("/nonexistent/dir/q.db"),
        "{msg}"
    );
    // Nothing listens on this port: the store cannot be reached.
    let port = free_port();
    let msg = refused(&[
        "-q",
        "redis",
        "--redis-server=127.0.0.1",
        &format!("--redis-port={port}"),
    ]);
    assert!(msg.contains("redis"), "{msg}");
}

#[test]
fn help_documents_every_flag_and_limit() {
    if skip_under_gearmand("gearshiftd's help text") {
        return;
    }
    let out = Command::new(gearshiftd_bin())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--backlog",
        "--daemon",
        "--exceptions",
        "--file-descriptors",
        "--job-retries",
        "--job-handle-prefix",
        "--hashtable-buckets",
        "--keepalive",
        "--log-file",
        "--listen",
        "--pid-file",
        "--protocol",
        "--round-robin",
        "--queue-type",
        "--config-file",
        "--threads",
        "--user",
        "--verbose",
        "--worker-wakeup",
        "--port",
        "--ssl",
        "--libsqlite3-db",
        "--libpq-conninfo",
        "--mysql-host",
        "--redis-server",
        "--max-packet-size",
        "--max-line",
        "--max-output-buffer",
        "--max-connections",
        "--handoff",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
}

#[test]
fn check_args_validates_and_exits() {
    let out = Command::new(server_bin())
        .args(["--check-args", "--log-file=none"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_port_in_use_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    if is_gearmand() {
        // gearmand retries bind() for about 20 s before failing; not worth the wait here.
        return;
    }
    let started = Instant::now();
    let msg = refused(&[
        "--listen=127.0.0.1",
        "--port",
        &port,
        "--pid-file=/dev/null/x",
    ]);
    assert!(msg.contains("cannot listen"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn daemon_detaches_writes_its_pid_and_serves() {
    if skip_under_gearmand("daemon mode of gearshiftd") {
        return;
    }
    let dir = TempDir::new("daemon");
    let pid_file = dir.path().join("run.pid");
    let port = free_port().to_string();
    let status = Command::new(gearshiftd_bin())
        .args([
            "--daemon",
            "--listen=127.0.0.1",
            "--port",
            &port,
            "--log-file=none",
            "--threads=1",
        ])
        .arg(format!("--pid-file={}", pid_file.display()))
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the parent exits 0 once detached");
    // The parent returns after binding, so the port answers; the pid file follows at once.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = Conn::connect(addr);
    assert!(c.admin("version").starts_with("OK "));
    let deadline = Instant::now() + Duration::from_secs(5);
    let pid = loop {
        if let Ok(p) = std::fs::read_to_string(&pid_file)
            && p.ends_with('\n')
        {
            break p.trim().to_string();
        }
        assert!(Instant::now() < deadline, "no pid file");
        std::thread::yield_now();
    };
    assert_eq!(c.admin("getpid"), format!("OK {pid}\n"));
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    c.expect_eof();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_file.exists() {
        assert!(Instant::now() < deadline, "pid file not removed at exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn config_file_options_apply_and_the_command_line_wins() {
    if skip_under_gearmand("config file with gearshiftd's handle check") {
        return;
    }
    let dir = TempDir::new("conf");
    let conf = dir.write(
        "gearmand.conf",
        "--job-handle-prefix=CFG\n--worker-wakeup=3\n",
    );
    let s = Server::start_one_shard(&[&format!("--config-file={}", conf.display())]);
    let mut c = s.conn();
    assert_eq!(c.submit(SUBMIT_JOB_BG, "f", "", b""), b"CFG:1");
    drop(s);
    let s = Server::start_one_shard(&[
        &format!("--config-file={}", conf.display()),
        "--job-handle-prefix=CLI",
    ]);
    let mut c = s.conn();
    assert_eq!(c.submit(SUBMIT_JOB_BG, "f", "", b""), b"CLI:1");
    assert!(
        refused(&["--config-file=/nonexistent/gearmand.conf"])
            .contains("Could not open configuration file.")
    );
}

#[test]
fn a_reader_that_never_reads_is_closed_past_max_output_buffer() {
    if skip_under_gearmand("--max-output-buffer") {
        return;
    }
    let s = Server::start(&["--max-output-buffer=1048576"]);
    let mut client = s.conn();
    let h = client.submit(SUBMIT_JOB, "f", "", b"");
    let mut w = s.conn();
    w.can_do(&["f"]);
    w.grab();
    // The client reads nothing while the worker streams 16 MiB of WORK_DATA at it.
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..256 {
        if w.try_send_raw(&req(WORK_DATA, &[&h, &chunk])).is_err() {
            break;
        }
    }
    w.sync();
    // The server dropped the client rather than buffering without bound, and still serves.
    let mut other = s.conn();
    other.sync();
    // Read raw bytes: the close may cut a packet in half.
    use std::io::Read;
    let mut stream = client.stream().try_clone().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("expected the client to be closed, got {e} after {total} bytes"),
        }
    }
    assert!(total < 16 << 20, "all {total} bytes were buffered");
}

#[test]
fn connections_past_max_connections_are_closed_at_once() {
    if skip_under_gearmand("--max-connections") {
        return;
    }
    let s = Server::start(&["--max-connections=2"]);
    let mut a = s.conn();
    let mut b = s.conn();
    a.sync();
    b.sync();
    let mut c = s.conn();
    c.expect_eof();
    drop(a);
    // The slot frees once the server has reaped the closed connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = s.conn();
        let _ = d.try_send_raw(&req(ECHO_REQ, &[b"x"]));
        if let Recv::Packet(p) = d.recv_any(Duration::from_millis(200)) {
            assert_eq!(p.ty, ECHO_RES);
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
    }
}

#[test]
fn sighup_reopens_the_log_file() {
    // The harness gives gearmand its own --log-file, and gearmand refuses a second one.
    if skip_under_gearmand("a second --log-file") {
        return;
    }
    let dir = TempDir::new("logs");
    let log = dir.path().join("server.log");
    let rotated = dir.path().join("server.log.1");
    let s = Server::start(&[&format!("--log-file={}", log.display()), "--verbose=INFO"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.exists() {
        assert!(Instant::now() < deadline, "log file never created");
        std::thread::sleep(Duration::from_millis(10));
    }
    // What logrotate does: move the file away, then SIGHUP.
    std::fs::rename(&log, &rotated).unwrap();
    s.signal("HUP");
    while !log.exists() {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reopen the log file"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The server still serves after the reopen.
    s.conn().sync();
}

#[test]
fn sigterm_stops_promptly_and_the_port_can_be_bound_again() {
    let mut s = Server::start(&[]);
    let addr = s.addr();
    let mut c = s.conn();
    c.sync();
    let started = Instant::now();
    let st = s.stop();
    assert!(started.elapsed() < Duration::from_secs(5));
    if !is_gearmand() {
        assert!(st.success(), "{st:?}");
    }
    c.expect_eof();
    std::net::TcpListener::bind(addr).expect("port free again right after SIGTERM");
}
