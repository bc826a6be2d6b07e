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
    assert!(refused(&["-r", "gopher"]).contains("Unknown protocol module : gopher"));
    // --ssl is built; without its files (gearmand's defaults here) the start fails naming them.
    assert!(refused(&["--ssl"]).contains("/etc/ssl/certs/gearmand.pem"));
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
        "--bind-timeout",
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
        "--max-input-buffer",
        "--max-connections",
        "--handoff",
        "--log-format",
        "--syslog-socket",
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
        "--bind-timeout=3",
        "--pid-file=/dev/null/x",
    ]);
    // Tried at 0, 1 and 3 s (each retry said), then given up.
    assert_eq!(msg.matches("trying again").count(), 2, "{msg}");
    assert!(msg.contains("cannot listen"), "{msg}");
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(3)..Duration::from_secs(8)).contains(&took),
        "{took:?}"
    );
}

/// A port that is taken when the server starts and freed a moment later is bound on a retry
/// (gearmand retries bind() with growing sleeps; so does gearshiftd).
#[test]
fn a_port_freed_while_retrying_bind_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(taken);
    });
    let started = Instant::now();
    let s = Server::start_on_port(port, &[]);
    releaser.join().unwrap();
    // Bound at the retry 3 s in.
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let mut c = s.conn();
    c.send(ECHO_REQ, &[b"bound"]);
    c.expect(ECHO_RES, &[b"bound"]);
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
        // Under systemd's Type=notify (a $NOTIFY_SOCKET inherited from whatever runs the
        // tests) --daemon does not fork; this test is about the fork.
        .env_remove("NOTIFY_SOCKET")
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
    // Generous: on a loaded machine the exit (joining the shard and signal threads) can take
    // seconds; a pid file never removed still fails.
    let deadline = Instant::now() + Duration::from_secs(30);
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
    // The client reads nothing while the worker streams 16 MiB of WORK_DATA at it.
    let client = flood_a_client_that_reads_nothing(&s, "f");
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

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A packet header announcing a large body costs what arrives, not what it announces: 64
/// connections each announcing 64 MiB (the largest allowed) and sending 100 bytes of it add
/// less than 1 MiB together (gearmand grows by 0.1 MB). A real 60 MiB job still runs, both
/// ways.
#[test]
fn memory_follows_the_bytes_received_not_the_bytes_announced() {
    let s = Server::start(&[]);
    let mut admin = s.conn();
    admin.admin("workers");
    let before = rss(s.pid());
    let mut header = REQ_MAGIC.to_vec();
    header.extend(SUBMIT_JOB_BG.to_be_bytes());
    header.extend((64u32 << 20).to_be_bytes());
    header.extend(b"big\0u\0");
    header.extend([b'x'; 94]);
    let announcers: Vec<Conn> = (0..64)
        .map(|_| {
            let mut c = s.conn();
            c.send_raw(&header);
            c
        })
        .collect();
    // Every shard has had a turn after those bytes arrived once a listing gathered from all
    // of them comes back.
    admin.admin("workers");
    let grown = rss(s.pid()).saturating_sub(before);
    assert!(
        grown < 1 << 20,
        "64 announced 64 MiB bodies cost {grown} bytes"
    );
    drop(announcers);
    // A real 60 MiB job, submitted, assigned and answered.
    let payload = vec![b'p'; 60 << 20];
    let mut client = s.conn();
    let h = client.submit(SUBMIT_JOB, "big", "", &payload);
    let mut w = s.conn();
    w.can_do(&["big"]);
    w.send(GRAB_JOB, &[]);
    let assign = w
        .recv_with_timeout(Duration::from_secs(60))
        .expect("JOB_ASSIGN");
    assert_eq!(assign.ty, JOB_ASSIGN);
    assert_eq!(assign.body.len(), h.len() + 1 + 4 + payload.len());
    assert!(assign.body.ends_with(&payload[..1024]));
    w.send(WORK_COMPLETE, &[&h, &payload]);
    let done = client
        .recv_with_timeout(Duration::from_secs(60))
        .expect("WORK_COMPLETE");
    assert_eq!(done.ty, WORK_COMPLETE);
    assert_eq!(done.body.len(), h.len() + 1 + payload.len());
}

/// Large incomplete frames draw on --max-input-buffer: past it, connections in the middle of
/// one are read no further (and the server says so in its log) until others complete, and
/// then every submission goes through.
#[test]
fn large_frames_wait_for_the_input_budget_and_then_complete() {
    if skip_under_gearmand("--max-input-buffer") {
        return;
    }
    // Four connections send 900 KiB of their 1 MiB frame: their buffers need more than the
    // 2 MiB budget together.
    frames_past_the_input_budget(4, 900 << 10);
}

/// Connections that each hold part of the input budget and each need more to finish their
/// frame do not wait on one another for ever: one at a time may finish past the budget.
#[test]
fn connections_that_share_the_input_budget_all_finish() {
    if skip_under_gearmand("--max-input-buffer") {
        return;
    }
    // Six frames, each sent all but its last 64 bytes: any two hold about the whole budget.
    frames_past_the_input_budget(6, (1 << 20) - 64);
}

/// `count` connections send the first `cut` bytes of a 1 MiB SUBMIT_JOB_BG against a 2 MiB
/// input budget; once the budget has run out, they send the rest, and every job is created.
fn frames_past_the_input_budget(count: usize, cut: usize) {
    const BODY: usize = 1 << 20;
    let s = Server::start(&[
        "--max-packet-size=1048576",
        "--max-input-buffer=2097152",
        "--verbose=WARNING",
    ]);
    let frames: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let unique = format!("u{i}");
            let pad = BODY - "budget".len() - unique.len() - 2;
            req(
                SUBMIT_JOB_BG,
                &[b"budget", unique.as_bytes(), &vec![b'd'; pad]],
            )
        })
        .collect();
    // Sent side by side, so that the server reads them as they arrive, whatever their order.
    let mut conns: Vec<Conn> = std::thread::scope(|scope| {
        let sending: Vec<_> = frames
            .iter()
            .map(|f| {
                let mut c = s.conn();
                scope.spawn(move || {
                    c.send_raw(&f[..cut]);
                    c
                })
            })
            .collect();
        sending.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut admin = s.conn();
    wait_until("the input budget runs out", || {
        admin.admin("workers");
        s.log().contains("--max-input-buffer 2097152 reached")
    });
    for (c, f) in conns.iter_mut().zip(&frames) {
        c.send_raw(&f[cut..]);
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let p = c
            .recv_with_timeout(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no JOB_CREATED for frame {i}"));
        assert_eq!(p.ty, JOB_CREATED, "{p:?}");
    }
    assert_eq!(status_of(&mut admin, "budget"), Some((count as u32, 0, 0)));
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

/// CPU time (user + system) a process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Out of descriptors, the server stops accepting (no busy loop, one log line a second at
/// most), keeps serving the connections it has, and takes the waiting ones as soon as
/// connections close.
#[test]
fn out_of_descriptors_accepting_waits_for_a_close() {
    if skip_under_gearmand("gearshiftd's log lines") {
        return;
    }
    const OPENED: usize = 120;
    let s = Server::start(&["--file-descriptors=80", "--backlog=512"]);
    let mut conns: Vec<Conn> = (0..OPENED)
        .map(|_| {
            let mut c = s.conn();
            c.send(ECHO_REQ, &[b"hello"]);
            c
        })
        .collect();
    // The listen queue is first in, first out: the server takes a prefix of them.
    let mut accepted = 0;
    while accepted < OPENED {
        match conns[accepted].recv_with_timeout(Duration::from_millis(500)) {
            Some(p) => p.assert_is(ECHO_RES, &[b"hello"]),
            None => break,
        }
        accepted += 1;
    }
    assert!(
        (10..OPENED - 20).contains(&accepted),
        "80 descriptors take some but not all of {OPENED} connections: {accepted}"
    );
    // Blocked, it neither spins nor floods its log.
    let before = cpu_ticks(s.pid());
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(s.pid()) - before;
    assert!(spent <= 20, "{spent} ticks of CPU in 2 s while blocked");
    let lines = s.log().matches("accept failed").count();
    assert!(
        (1..=4).contains(&lines),
        "{lines} accept failures logged: {}",
        s.log()
    );
    // What it has still works.
    conns[0].send(ECHO_REQ, &[b"still"]);
    conns[0].expect(ECHO_RES, &[b"still"]);
    // Closing ten lets the next ten in, at once (not at the next retry).
    let started = std::time::Instant::now();
    conns.drain(1..11);
    let next = accepted - 10;
    for c in &mut conns[next..next + 10] {
        c.expect(ECHO_RES, &[b"hello"]);
    }
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "took {:?}",
        started.elapsed()
    );
    // Closing the rest of those it took lets every waiting connection in.
    conns.drain(..next + 10);
    assert!(
        conns.len() < accepted,
        "the test needs room for {}",
        conns.len()
    );
    for c in &mut conns {
        c.expect(ECHO_RES, &[b"hello"]);
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
