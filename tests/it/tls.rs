//! TLS (gearmand's `--ssl` flags, `--ssl-port`), client identities and the ACL, and who may
//! shut the server down. Certificates are made here for each test (rcgen); no key is kept.
//! The TLS tests are gearshiftd's (the Debian gearmand is refused TLS connections by its
//! build); `shutdown` for non-administrators is checked against gearmand's answer too.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::*;

/// A test CA and the files of certificates it issued.
pub struct Pki {
    pub dir: TempDir,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub ca_pem: PathBuf,
}

/// A certificate and its key, as PEM files.
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new(tag: &str) -> Pki {
        let dir = TempDir::new(tag);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{tag} test CA"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = dir.write("ca.pem", &cert.pem());
        Pki {
            dir,
            ca: rcgen::Issuer::new(params, key),
            ca_pem,
        }
    }

    fn issue(&self, file: &str, cn: &str, names: &[&str], client: bool) -> Identity {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Identity {
            cert: self.dir.write(&format!("{file}.pem"), &cert.pem()),
            key: self.dir.write(&format!("{file}.key"), &key.serialize_pem()),
        }
    }

    /// The server's certificate, for localhost and the loopback addresses.
    pub fn server(&self) -> Identity {
        self.issue(
            "server",
            "localhost",
            &["localhost", "127.0.0.1", "::1"],
            false,
        )
    }

    /// A client certificate whose common name is `cn`.
    pub fn client(&self, cn: &str) -> Identity {
        self.issue(cn, cn, &[], true)
    }

    /// Server flags: certificate, key, and (for mutual TLS) this CA.
    pub fn server_args(&self, server: &Identity, mutual: bool) -> Vec<String> {
        let mut a = vec![
            format!("--ssl-certificate={}", server.cert.display()),
            format!("--ssl-key={}", server.key.display()),
        ];
        if mutual {
            a.push(format!("--ssl-ca-file={}", self.ca_pem.display()));
        }
        a
    }

    /// A client configuration trusting this CA, presenting `identity` if given.
    pub fn client_config(&self, identity: Option<&Identity>) -> Arc<rustls::ClientConfig> {
        gearshift::tls::client_config(
            &self.ca_pem,
            identity.map(|i| (i.cert.as_path(), i.key.as_path())),
        )
        .unwrap()
    }
}

/// Starts gearshiftd with a plain port and a TLS port (`--ssl-port=0`).
fn start_side_by_side(extra: &[String]) -> Server {
    let mut args: Vec<&str> = vec!["--ssl-port=0", "--verbose=INFO"];
    args.extend(extra.iter().map(String::as_str));
    Server::start(&args)
}

fn tls_conn(s: &Server, pki: &Pki, identity: Option<&Identity>) -> Conn {
    Conn::connect_tls(s.tls_addr(), pki.client_config(identity), "localhost")
        .unwrap_or_else(|e| panic!("TLS handshake: {e}\n{}", s.log()))
}

/// Waits (bounded) for `needle` in the server's log, and returns the log.
#[track_caller]
fn wait_for_log(s: &Server, needle: &str) -> String {
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        let log = s.log();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn jobs_travel_between_plain_and_mutual_tls_ports() {
    if skip_under_gearmand("TLS") {
        return;
    }
    let pki = Pki::new("tls-jobs");
    let server_id = pki.server();
    let s = start_side_by_side(&pki.server_args(&server_id, true));
    let client_id = pki.client("client-a");

    // A TLS client submits; a plain worker runs the job; the result comes back through TLS.
    let mut worker = s.conn();
    worker.can_do(&["reverse"]);
    let mut client = tls_conn(&s, &pki, Some(&client_id));
    client.send(SUBMIT_JOB, &[b"reverse", b"u1", b"hello"]);
    let handle = client.expect_type(JOB_CREATED).body;
    let (h, f, data) = worker.grab();
    assert_eq!(
        (&h, &f[..], &data[..]),
        (&handle, &b"reverse"[..], &b"hello"[..])
    );
    worker.send(WORK_DATA, &[&h, b"partial"]);
    worker.send(WORK_COMPLETE, &[&h, b"olleh"]);
    client.expect(WORK_DATA, &[&handle, b"partial"]);
    client.expect(WORK_COMPLETE, &[&handle, b"olleh"]);

    // Admin lines work over TLS, and a large packet crosses many TLS records both ways.
    assert!(client.admin("version").starts_with("OK 1.1.20-gearshift-"));
    let big = vec![b'x'; 3 << 20];
    client.send(ECHO_REQ, &[&big]);
    client.expect(ECHO_RES, &[&big]);
    assert!(s.log().contains("TLS established, identity client-a"));

    // The other way round: a TLS worker, a plain client.
    let mut tls_worker = tls_conn(&s, &pki, Some(&pki.client("worker-b")));
    tls_worker.can_do(&["upper"]);
    let mut plain = s.conn();
    let handle = plain.submit(SUBMIT_JOB, "upper", "u2", b"abc");
    let (h, _, _) = tls_worker.grab();
    tls_worker.send(WORK_COMPLETE, &[&h, b"ABC"]);
    plain.expect(WORK_COMPLETE, &[&handle, b"ABC"]);
}

#[test]
fn ssl_makes_the_gearman_port_speak_tls_without_client_certificates() {
    if skip_under_gearmand("TLS") {
        return;
    }
    let pki = Pki::new("tls-server-only");
    let id = pki.server();
    let mut args = vec!["--ssl".to_string(), "--verbose=INFO".into()];
    args.extend(pki.server_args(&id, false));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start(&args);
    let mut c = Conn::connect_tls(s.addr(), pki.client_config(None), "localhost").unwrap();
    c.sync();
    assert_eq!(c.admin("verbose"), "OK INFO\n");
    // Checked against the name the client asked for: the certificate says localhost and
    // 127.0.0.1, not another host.
    let e = Conn::connect_tls(s.addr(), pki.client_config(None), "elsewhere").err();
    assert!(e.is_some(), "a certificate for another name was accepted");
    // A plain client on the TLS port gets a TLS alert and is closed; the log says why.
    let got = until_closed(s.addr(), b"version\n");
    assert_eq!(got.first(), Some(&0x15), "a TLS alert: {}", show(&got));
    wait_for_log(&s, "plain text to a TLS port?");
    c.sync();
}

#[test]
fn mutual_tls_refuses_clients_without_a_certificate_from_the_ca() {
    if skip_under_gearmand("TLS") {
        return;
    }
    let pki = Pki::new("tls-mutual");
    let id = pki.server();
    let s = start_side_by_side(&pki.server_args(&id, true));
    let mut good = tls_conn(&s, &pki, Some(&pki.client("good")));
    good.sync();

    // No certificate: the handshake fails (with TLS 1.3 the client learns it at its first
    // read), and the server says so in its log.
    let refused = |c: std::io::Result<Conn>| match c {
        Err(_) => true,
        Ok(mut c) => {
            let _ = c.try_send_raw(&req(ECHO_REQ, &[b"x"]));
            matches!(c.recv_any(READ_TIMEOUT), Recv::Eof)
        }
    };
    assert!(refused(Conn::connect_tls(
        s.tls_addr(),
        pki.client_config(None),
        "localhost"
    )));
    wait_for_log(&s, "peer sent no certificates");
    // A certificate from another CA.
    let other = Pki::new("tls-other-ca");
    let stranger = other.client("stranger");
    let config = gearshift::tls::client_config(
        &pki.ca_pem,
        Some((stranger.cert.as_path(), stranger.key.as_path())),
    )
    .unwrap();
    assert!(refused(Conn::connect_tls(
        s.tls_addr(),
        config,
        "localhost"
    )));
    wait_for_log(&s, "invalid peer certificate");
    // Nothing else was disturbed.
    good.sync();
}

#[test]
fn plain_text_garbage_and_stalled_handshakes_are_closed_in_bounded_time() {
    if skip_under_gearmand("TLS") {
        return;
    }
    let pki = Pki::new("tls-stall");
    let id = pki.server();
    let mut args = pki.server_args(&id, true);
    args.push("--ssl-handshake-timeout=400".into());
    let s = start_side_by_side(&args);
    let mut good = tls_conn(&s, &pki, Some(&pki.client("good")));

    // Plain text: an alert, closed at once.
    let t = Instant::now();
    let got = until_closed(s.tls_addr(), &req(ECHO_REQ, &[b"hi"]));
    assert_eq!(got.first(), Some(&0x15), "a TLS alert: {}", show(&got));
    assert!(t.elapsed() < Duration::from_secs(2));
    // A TLS record header announcing a handshake, then nonsense.
    let got = until_closed(
        s.tls_addr(),
        &[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff],
    );
    assert!(got.is_empty() || got[0] == 0x15, "{}", show(&got));
    wait_for_log(&s, "HandshakePayloadTooLarge");

    // Stalled: some connect and say nothing, one stops in the middle of a record. Each is
    // closed after the handshake timeout, while the established connection goes on.
    let before = server_rss_kib(&s);
    let mut stalled: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(s.tls_addr()).unwrap())
        .collect();
    let mut half = Conn::connect(s.tls_addr());
    half.send_raw(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00]);
    good.sync();
    let during = server_rss_kib(&s);
    // A stalled handshake holds its session (a few KiB) and no large buffer.
    assert!(
        during.saturating_sub(before) < 200 * 64,
        "200 stalled handshakes took {} KiB",
        during - before
    );
    let t = Instant::now();
    assert!(matches!(half.recv_any(READ_TIMEOUT), Recv::Eof));
    for c in &mut stalled {
        c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let mut b = [0u8; 16];
        let n = std::io::Read::read(c, &mut b).unwrap_or(0);
        assert_eq!(n, 0, "a stalled connection got bytes");
    }
    let waited = t.elapsed();
    assert!(waited < Duration::from_secs(4), "closed after {waited:?}");
    // One log line per stalled connection.
    wait_until("every stalled connection is logged", || {
        let n = s
            .log()
            .matches("TLS handshake not done within 400ms")
            .count();
        assert!(n <= 201, "{n} lines for 201 connections");
        n == 201
    });
    good.sync();
    good.send(ECHO_REQ, &[b"still here"]);
    good.expect(ECHO_RES, &[b"still here"]);
}

/// Sends `bytes` on a new connection and reads until the server closes it (bounded).
#[track_caller]
fn until_closed(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    c.write_all(bytes).unwrap();
    let mut got = Vec::new();
    match c.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
        Err(e) => panic!("not closed: {e}; got {}", show(&got)),
    }
}

/// The server's resident memory, in KiB.
fn server_rss_kib(s: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

const ACL: &str = "\
# Python gear's ACL format: a section per certificate common name
[submitter]
invoke = jobs:.*

[worker]
register = jobs:.*

[root]
grant = true
";

#[test]
fn the_acl_decides_who_submits_registers_and_administers() {
    if skip_under_gearmand("ACL") {
        return;
    }
    let pki = Pki::new("tls-acl");
    let id = pki.server();
    let acl = pki.dir.write("acl.ini", ACL);
    let mut args = pki.server_args(&id, true);
    args.push(format!("--acl={}", acl.display()));
    // Loopback is no administrator here: only the ACL decides.
    args.push("--admin-allow=none".into());
    let mut s = start_side_by_side(&args);
    let denied = |p: &str| Packet::new(ERROR, &[b"PERMISSION_DENIED", p.as_bytes()]);

    let mut submitter = tls_conn(&s, &pki, Some(&pki.client("submitter")));
    let mut worker = tls_conn(&s, &pki, Some(&pki.client("worker")));
    let mut stranger = tls_conn(&s, &pki, Some(&pki.client("stranger")));
    let mut root = tls_conn(&s, &pki, Some(&pki.client("root")));
    let mut plain = s.conn();

    // register: the worker's functions only, and only for the worker.
    worker.send(CAN_DO, &[b"jobs:build"]);
    worker.send(CAN_DO, &[b"other"]);
    worker.send(CAN_DO_TIMEOUT, &[b"jobsXbuild", b"10"]);
    let refused = worker.sync_collect();
    let register = denied("register not permitted by the ACL");
    assert_eq!(refused, vec![register.clone(), register.clone()]);
    for c in [&mut submitter, &mut stranger, &mut plain] {
        c.send(CAN_DO, &[b"jobs:build"]);
        assert_eq!(c.sync_collect(), vec![register.clone()]);
    }
    // invoke: a refusal is an ERROR in the submission's place, and the connection goes on.
    let invoke = denied("invoke not permitted by the ACL");
    submitter.send(SUBMIT_JOB_BG, &[b"other", b"", b"x"]);
    submitter.send(SUBMIT_JOB, &[b"jobs:build", b"u1", b"payload"]);
    submitter.expect(
        ERROR,
        &invoke.args().iter().map(|a| &a[..]).collect::<Vec<_>>(),
    );
    let handle = submitter.expect_type(JOB_CREATED).body;
    for c in [&mut worker, &mut stranger, &mut plain, &mut root] {
        c.send(SUBMIT_JOB_BG, &[b"jobs:build", b"", b"x"]);
        assert_eq!(c.sync_collect(), vec![invoke.clone()]);
    }
    let (h, f, _) = worker.grab();
    assert_eq!((&h, &f[..]), (&handle, &b"jobs:build"[..]));
    worker.send(WORK_COMPLETE, &[&h, b"done"]);
    submitter.expect(WORK_COMPLETE, &[&handle, b"done"]);
    // Nothing refused made a function: only the permitted one is listed.
    let status = plain.admin("status");
    assert_eq!(status, "jobs:build\t0\t0\t1\n.\n", "{status}");

    // Admin commands that change state: the root identity only. Listings stay open.
    let perm = "ERR PERMISSION_DENIED grant+not+permitted+by+the+ACL\r\n";
    for c in [&mut submitter, &mut worker, &mut plain] {
        assert_eq!(c.admin("maxqueue jobs:build 5"), perm);
        assert_eq!(c.admin("create function jobs:new"), perm);
        assert_eq!(c.admin("drop function jobs:build"), perm);
        assert_eq!(c.admin("cancel job H:x:1"), perm);
        assert_eq!(
            c.admin("shutdown"),
            "ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"
        );
        assert!(c.admin("workers").ends_with(".\n"));
    }
    assert_eq!(root.admin("maxqueue jobs:build 5"), "OK\r\n");
    assert!(s.is_running());
    assert_eq!(root.admin("shutdown"), "OK\r\n");
    assert!(s.wait_exit(Duration::from_secs(10)).success());
    let log = s.log();
    assert!(
        log.contains("stranger): invoke of \"jobs:build\" refused by the ACL"),
        "{log}"
    );
    assert!(log.contains("identity stranger, not in the ACL"), "{log}");
}

#[test]
fn acl_files_that_cannot_be_used_stop_the_start() {
    if skip_under_gearmand("ACL") {
        return;
    }
    let pki = Pki::new("tls-bad-acl");
    let id = pki.server();
    let acl = pki.dir.write("acl.ini", "[worker]\nregister = (unclosed\n");
    let mut args = pki.server_args(&id, true);
    args.push(format!("--acl={}", acl.display()));
    args.push("--ssl-port=0".into());
    let (st, _, err) = run_with_timeout(
        std::process::Command::new(gearshiftd_bin())
            .args(["--listen=127.0.0.1", "--port=0", "--log-file=none"])
            .args(&args),
        Duration::from_secs(10),
    );
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("acl.ini: line 2: `register` of [worker]"),
        "{err}"
    );
    // A key file that is not there, too.
    let (st, _, err) = run_with_timeout(
        std::process::Command::new(gearshiftd_bin()).args([
            "--listen=127.0.0.1",
            "--port=0",
            "--log-file=none",
            "--ssl",
            "--ssl-certificate=/nonexistent/cert.pem",
        ]),
        Duration::from_secs(10),
    );
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("TLS: cannot read the certificate /nonexistent/cert.pem"),
        "{err}"
    );
    // gearmand's option check does not read them.
    let (st, _, err) = run_with_timeout(
        std::process::Command::new(gearshiftd_bin()).args(["--check-args", "--ssl"]),
        Duration::from_secs(10),
    );
    assert!(st.success(), "{err}");
}

#[test]
fn shutdown_from_a_non_administrator_is_an_unknown_command() {
    // gearmand has no `shutdown`; gearshiftd answers a peer that may not use it the same way.
    let mut s = Server::start_with(&[], &["--admin-allow=none"]);
    let mut c = s.conn();
    assert_eq!(
        c.admin("shutdown"),
        "ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"
    );
    assert_eq!(
        c.admin("SHUTDOWN graceful"),
        "ERR UNKNOWN_COMMAND Unknown+server+commandSHUTDOWN\r\n"
    );
    c.sync();
    assert!(s.is_running());
    if skip_under_gearmand("loopback administrators") {
        return;
    }
    // By default loopback administers.
    let mut s2 = Server::start(&[]);
    assert_eq!(s2.conn().admin("shutdown"), "OK\r\n");
    assert!(s2.wait_exit(Duration::from_secs(10)).success());
    let _: SocketAddr = s.addr();
}

// ---------------------------------------------------------------------------
// The library, the CLI, Python gear and openssl over TLS
// ---------------------------------------------------------------------------

#[test]
fn the_library_and_the_cli_speak_tls_and_the_worker_reconnects() {
    use gearshift::client::{Admin, Client, ClientOptions, Tls, Worker, WorkerOptions};
    if skip_under_gearmand("TLS") {
        return;
    }
    let pki = Pki::new("tls-lib");
    let id = pki.server();
    let (plain_port, tls_port) = (free_port(), free_port());
    let mut args = pki.server_args(&id, true);
    args.push(format!("--ssl-port={tls_port}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = Server::start_on_port(plain_port, &args);
    let server = format!("127.0.0.1:{tls_port}");
    let tls_of = |cn: &str| {
        let i = pki.client(cn);
        Tls::from_files(pki.ca_pem.clone(), Some((i.cert, i.key))).unwrap()
    };

    let mut wo = WorkerOptions::default();
    wo.tls = Some(tls_of("worker"));
    wo.retry_min = Duration::from_millis(20);
    wo.retry_max = Duration::from_millis(200);
    let mut worker = Worker::with_options([server.as_str()], wo).unwrap();
    worker.register("reverse", |job| {
        Ok(job.data().iter().rev().copied().collect())
    });
    let stop = worker.stop_handle();
    let running = std::thread::spawn(move || worker.run());

    let mut co = ClientOptions::default();
    co.tls = Some(tls_of("client"));
    co.timeout = Duration::from_secs(10);
    co.retry_min = Duration::from_millis(20);
    let mut client = Client::with_options([server.as_str()], co.clone()).unwrap();
    assert_eq!(client.call("reverse", "hello").unwrap(), b"olleh");
    let mut admin =
        Admin::connect_with_tls(&server, Duration::from_secs(5), co.tls.as_ref()).unwrap();
    assert!(admin.version().unwrap().starts_with("1.1.20-gearshift"));

    // The server goes away and comes back: the worker's reconnect loop makes a new handshake.
    s.stop();
    let _s = Server::start_on_port(plain_port, &args);
    let mut client = Client::with_options([server.as_str()], co).unwrap();
    assert_eq!(client.call("reverse", "again").unwrap(), b"niaga");

    // A client without a certificate gets nowhere, and says why.
    let mut bare = ClientOptions::default();
    bare.tls = Some(Tls::from_files(pki.ca_pem.clone(), None).unwrap());
    bare.timeout = Duration::from_secs(5);
    bare.max_attempts = 1;
    let e = Client::with_options([server.as_str()], bare)
        .unwrap()
        .call("reverse", "x")
        .unwrap_err();
    assert!(e.is_connection(), "{e:?}");

    // The CLI: submit through TLS with a client certificate; without one it fails (exit 3).
    let cli = env!("CARGO_BIN_EXE_gearshift");
    let i = pki.client("cli");
    let tls_flags = [
        format!("--ssl-ca={}", pki.ca_pem.display()),
        format!("--ssl-cert={}", i.cert.display()),
        format!("--ssl-key={}", i.key.display()),
    ];
    let (st, out, err) = run_with_timeout(
        std::process::Command::new(cli)
            .args(["--servers", &server, "submit", "-f", "reverse", "abc"])
            .args(&tls_flags),
        Duration::from_secs(20),
    );
    assert!(st.success(), "{err}");
    assert_eq!(out, "cba");
    let (st, out, err) = run_with_timeout(
        std::process::Command::new(cli)
            .args(["--servers", &server, "version"])
            .args(&tls_flags),
        Duration::from_secs(20),
    );
    assert!(
        st.success() && out.contains("1.1.20-gearshift"),
        "{out}{err}"
    );
    // gearadmin's flags: -S with the CA and the client certificate.
    let port = tls_port.to_string();
    let (st, out, err) = run_with_timeout(
        std::process::Command::new(cli)
            .args([
                "admin",
                "-S",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "--server-version",
            ])
            .args(&tls_flags),
        Duration::from_secs(20),
    );
    assert!(
        st.success() && out.starts_with("1.1.20-gearshift") && out.ends_with('\n'),
        "{out}{err}"
    );
    let (st, _, err) = run_with_timeout(
        std::process::Command::new(cli)
            .args(["--servers", &server, "--timeout=5", "version"])
            .arg(&tls_flags[0]),
        Duration::from_secs(20),
    );
    assert_eq!(st.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    // With TLS 1.3 the refusal of a client without a certificate arrives after the handshake,
    // in place of the answer.
    assert!(
        err.contains(&format!("{server} "))
            && err.contains(" \"version\"")
            && err.contains("CertificateRequired"),
        "{err}"
    );

    stop.stop();
    running.join().unwrap().unwrap();
}

const PY_TLS_WORKER: &str = r#"
import sys, gear
port, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
w = gear.Worker('py-tls-worker')
w.addServer('127.0.0.1', port, ssl_key=key, ssl_cert=cert, ssl_ca=ca)
w.waitForServer(timeout=10)
w.registerFunction('reverse')
print('ready', flush=True)
job = w.getJob()
job.sendWorkComplete(job.arguments[::-1])
print('done', job.arguments.decode(), flush=True)
w.shutdown()
"#;

const PY_TLS_CLIENT: &str = r#"
import sys, time, gear
port, ca, cert, key, arg = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
c = gear.Client('py-tls-client')
c.addServer('127.0.0.1', port, ssl_key=key, ssl_cert=cert, ssl_ca=ca)
c.waitForServer(timeout=10)
job = gear.Job(b'reverse', arg.encode())
try:
    c.submitJob(job, timeout=10)
except gear.GearmanError as e:
    print('refused', flush=True)
    c.shutdown()
    sys.exit(3)
deadline = time.time() + 15
while not job.complete and time.time() < deadline:
    time.sleep(0.005)
print('result', b''.join(job.data).decode(), flush=True)
c.shutdown()
"#;

fn python_gear() -> bool {
    let present = find_tool("python3").is_some()
        && std::process::Command::new("python3")
            .args(["-c", "import gear"])
            .output()
            .is_ok_and(|o| o.status.success());
    require_tool(present, "Python gear")
}

#[test]
fn python_gear_client_and_worker_over_mutual_tls_with_an_acl() {
    if skip_under_gearmand("TLS") || !python_gear() {
        return;
    }
    let pki = Pki::new("tls-gear");
    let id = pki.server();
    let acl = pki.dir.write(
        "acl.ini",
        "[gear-client]\ninvoke = reverse\n\n[gear-worker]\nregister = reverse\n",
    );
    let mut args = pki.server_args(&id, true);
    args.push(format!("--acl={}", acl.display()));
    let s = start_side_by_side(&args);
    let port = s.tls_addr().port().to_string();
    let files = |cn: &str| {
        let i = pki.client(cn);
        vec![
            port.clone(),
            pki.ca_pem.display().to_string(),
            i.cert.display().to_string(),
            i.key.display().to_string(),
        ]
    };
    let script = |name: &str, text: &str, args: Vec<String>| {
        let mut c = std::process::Command::new("python3");
        c.arg(pki.dir.write(name, text)).args(args);
        c
    };

    let mut worker = script("worker.py", PY_TLS_WORKER, files("gear-worker"));
    let mut worker = KillOnDrop(
        worker
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let wout = collect_output(&mut worker.0);
    let mut admin = s.conn();
    wait_until("the gear worker registers over TLS", || {
        status_of(&mut admin, "reverse").is_some_and(|r| r.2 == 1)
    });

    // A third certificate, in the ACL for nothing it asks: refused, nothing queued.
    let mut a = files("gear-stranger");
    a.push("nope".into());
    let (st, out, err) = run_with_timeout(
        &mut script("stranger.py", PY_TLS_CLIENT, a),
        Duration::from_secs(30),
    );
    assert_eq!(st.code(), Some(3), "{out}{err}");
    assert_eq!(out, "refused\n");
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    assert_eq!(status_of(&mut admin, "reverse"), Some((0, 0, 1)));

    let mut a = files("gear-client");
    a.push("hello over tls".into());
    let (st, out, err) = run_with_timeout(
        &mut script("client.py", PY_TLS_CLIENT, a),
        Duration::from_secs(30),
    );
    assert!(st.success(), "{out}{err}");
    assert_eq!(out, "result slt revo olleh\n");
    let st = wait_child(&mut worker.0, Duration::from_secs(20), "gear worker");
    let (wo, we) = wout.join();
    assert!(st.success(), "{wo}{we}");
    assert_eq!(wo, "ready\ndone hello over tls\n");
    let log = s.log();
    assert!(log.contains("identity gear-worker") && log.contains("identity gear-client"));
}

#[test]
fn openssl_s_client_handshakes() {
    if skip_under_gearmand("TLS") || !require_tool(find_tool("openssl").is_some(), "openssl") {
        return;
    }
    let pki = Pki::new("tls-openssl");
    let id = pki.server();
    let s = start_side_by_side(&pki.server_args(&id, true));
    let me = pki.client("openssl");
    let s_client = |extra: &str| {
        let cmd = format!(
            "(printf 'version\\n'; sleep 1) | openssl s_client -connect {} -quiet -no_ign_eof \
             -verify_return_error -CAfile {} {extra}",
            s.tls_addr(),
            pki.ca_pem.display()
        );
        run_with_timeout(
            std::process::Command::new("sh").args(["-c", &cmd]),
            Duration::from_secs(20),
        )
    };
    let with_cert = format!("-cert {} -key {}", me.cert.display(), me.key.display());
    for version in ["-tls1_3", "-tls1_2"] {
        let (_, out, err) = s_client(&format!("{with_cert} {version}"));
        assert!(
            out.starts_with("OK 1.1.20-gearshift"),
            "{version}: {out}{err}"
        );
    }
    // No certificate: refused with TLS 1.3's "certificate required" alert.
    let (_, out, err) = s_client("");
    assert!(!out.contains("OK"), "{out}");
    assert!(err.contains("certificate required"), "{err}");
    // TLS 1.1 is not offered.
    let (_, out, _) = s_client(&format!("{with_cert} -tls1_1"));
    assert!(!out.contains("OK"), "{out}");
    wait_for_log(&s, "peer sent no certificates");
}
