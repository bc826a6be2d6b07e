//! gearmand's HTTP protocol module (`-r http --http-port=N`): the same raw requests against
//! gearshiftd and, with `GEARSHIFT_TEST_SERVER=gearmand`, against gearmand 1.1.20. Where
//! gearmand answers badly (no reply to a bad request, a garbled WORK_DATA body, a WORK_FAIL
//! handle cut short, no reply to TRACE), gearshiftd's answer is checked and gearmand's is
//! only required not to be a job's reply.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use crate::util::*;

/// A server with the HTTP module on a free port; `gearshiftd_only` flags for gearshiftd.
fn start(gearshiftd_only: &[&str]) -> (Server, u16) {
    let port = free_port();
    let flag = format!("--http-port={port}");
    let server = Server::start3(&["-r", "http", &flag], &[], gearshiftd_only);
    assert!(
        wait_for_port(port, Duration::from_secs(5)),
        "nothing listens on the HTTP port {port}"
    );
    (server, port)
}

/// One HTTP exchange on a raw socket.
struct Http {
    stream: TcpStream,
}

impl Http {
    fn connect(port: u16) -> Http {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP port");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Http { stream }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write the request");
    }

    /// Reads until the server closes; `None` if it is still open after `READ_TIMEOUT`.
    fn read_to_close(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Some(out),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return None;
                }
                // A reset after the reply: what arrived is the answer.
                Err(_) => return Some(out),
            }
        }
    }

    /// The reply, which must be followed by the close.
    #[track_caller]
    fn reply(&mut self) -> Reply {
        let bytes = self
            .read_to_close()
            .expect("the server closes the connection after its reply");
        Reply::parse(&bytes)
    }
}

/// A parsed reply.
#[derive(Debug)]
struct Reply {
    status: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    #[track_caller]
    fn parse(bytes: &[u8]) -> Reply {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete reply head in \"{}\"", show(bytes)));
        let head = String::from_utf8(bytes[..end].to_vec()).expect("an ASCII head");
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().to_string();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap_or_else(|| panic!("header {l:?}"));
                (n.to_string(), v.to_string())
            })
            .collect();
        Reply {
            status,
            headers,
            body: bytes[end + 4..].to_vec(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Header names in order, for comparing layouts with gearmand's.
    fn names(&self) -> Vec<&str> {
        self.headers.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// Sends one request and returns the reply.
#[track_caller]
fn exchange(port: u16, request: &[u8]) -> Reply {
    let mut c = Http::connect(port);
    c.send(request);
    c.reply()
}

fn post(function: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /{function} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A background job's reply: 200, its handle, JOB_CREATED, no body; returns the handle.
#[track_caller]
fn created(reply: &Reply) -> String {
    assert_eq!(reply.status, "HTTP/1.0 200 OK", "{reply:?}");
    assert_eq!(
        reply.names(),
        [
            "X-Gearman-Job-Handle",
            "X-Gearman-Command",
            "Content-Length",
            "Server"
        ],
        "{reply:?}"
    );
    assert_eq!(reply.header("X-Gearman-Command"), Some("JOB_CREATED"));
    assert_eq!(reply.header("Content-Length"), Some("0"));
    assert!(
        reply
            .header("Server")
            .unwrap()
            .starts_with("Gearman/1.1.20")
    );
    assert!(reply.body.is_empty());
    let handle = reply.header("X-Gearman-Job-Handle").unwrap().to_string();
    assert!(handle.starts_with("H:"), "{reply:?}");
    handle
}

#[test]
fn a_foreground_job_answers_with_the_worker_result_as_the_body() {
    let (server, port) = start(&[]);
    let f = unique_name("http_fg");
    let mut worker = sleeping_worker(&server, &[&f]);
    let mut client = Http::connect(port);
    client.send(&post(&f, "X-Gearman-Unique: u-1\r\n", b"hello"));
    worker.expect(NOOP, &[]);
    let (handle, func, unique, data) = worker.grab_uniq();
    assert_eq!(
        (func, unique, data),
        (f.clone().into_bytes(), b"u-1".to_vec(), b"hello".to_vec())
    );
    // Nothing is written before the job ends: a status report does not end the wait here.
    worker.send(WORK_COMPLETE, &[&handle, b"olleh"]);
    let reply = client.reply();
    assert_eq!(reply.status, "HTTP/1.0 200 OK");
    assert_eq!(
        reply.names(),
        [
            "X-Gearman-Job-Handle",
            "X-Gearman-Command",
            "Content-Length",
            "Server"
        ]
    );
    assert_eq!(
        reply.header("X-Gearman-Job-Handle").unwrap().as_bytes(),
        &handle[..]
    );
    assert_eq!(reply.header("X-Gearman-Command"), Some("WORK_COMPLETE"));
    assert_eq!(reply.header("Content-Length"), Some("5"));
    assert_eq!(reply.body, b"olleh");
    // The job is gone.
    let mut admin = server.conn();
    assert_eq!(status_of(&mut admin, &f), Some((0, 0, 1)));
}

#[test]
fn work_data_fail_and_status_end_the_wait_as_documented() {
    let (server, port) = start(&[]);
    let f = unique_name("http_fail");
    let mut worker = sleeping_worker(&server, &[&f]);
    let mut client = Http::connect(port);
    client.send(&post(&f, "", b"x"));
    worker.expect(NOOP, &[]);
    let (handle, _, _) = worker.grab();
    worker.send(WORK_FAIL, &[&handle]);
    let reply = client.reply();
    assert_eq!(reply.status, "HTTP/1.0 200 OK");
    assert_eq!(reply.header("X-Gearman-Command"), Some("WORK_FAIL"));
    assert_eq!(reply.header("Content-Length"), Some("0"));
    assert!(reply.body.is_empty());
    if skip_under_gearmand("gearmand cuts the last byte off a WORK_FAIL's handle") {
        return;
    }
    assert_eq!(
        reply.header("X-Gearman-Job-Handle").unwrap().as_bytes(),
        &handle[..]
    );
    // WORK_DATA chunks start the body (gearmand writes them over its own header); WORK_STATUS
    // does not end the wait (gearmand answers it with an empty reply).
    let g = unique_name("http_data");
    let mut worker = sleeping_worker(&server, &[&g]);
    let mut client = Http::connect(port);
    client.send(&post(&g, "", b"x"));
    worker.expect(NOOP, &[]);
    let (handle, _, _) = worker.grab();
    worker.send(WORK_STATUS, &[&handle, b"1", b"2"]);
    worker.send(WORK_DATA, &[&handle, b"part1-"]);
    worker.send(WORK_WARNING, &[&handle, b"careful"]);
    worker.send(WORK_DATA, &[&handle, b"part2-"]);
    worker.sync();
    let mut probe = [0u8; 1];
    client
        .stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        client.stream.read(&mut probe).is_err(),
        "no reply before the job ends"
    );
    client.stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    worker.send(WORK_COMPLETE, &[&handle, b"end"]);
    let reply = client.reply();
    assert_eq!(reply.header("X-Gearman-Command"), Some("WORK_COMPLETE"));
    assert_eq!(reply.header("Content-Length"), Some("15"));
    assert_eq!(reply.body, b"part1-part2-end");
}

#[test]
fn a_background_job_answers_its_handle_at_once() {
    let (server, port) = start(&[]);
    let f = unique_name("http_bg");
    let handle = created(&exchange(
        port,
        &post(&f, "X-Gearman-Background: true\r\n", b"payload"),
    ));
    let mut admin = server.conn();
    assert_eq!(status_of(&mut admin, &f), Some((1, 0, 0)));
    let jobs = admin.admin("show jobs");
    assert!(
        jobs.lines().any(|l| l == format!("{handle}\t0\t0\t1")),
        "{jobs}"
    );
    // GET and PUT submit too (GET with an empty payload); HEAD answers without the command.
    let get = created(&exchange(
        port,
        format!("GET /{f} HTTP/1.0\r\nX-Gearman-Unique: g\r\nX-Gearman-Background: true\r\n\r\n")
            .as_bytes(),
    ));
    let put = created(&exchange(
        port,
        format!("PUT /{f} HTTP/1.0\r\nContent-Length: 3\r\nX-Gearman-Background: true\r\n\r\nput")
            .as_bytes(),
    ));
    let head = exchange(
        port,
        format!("HEAD /{f} HTTP/1.0\r\nX-Gearman-Unique: h\r\nX-Gearman-Background: true\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(head.status, "HTTP/1.0 200 OK");
    assert_eq!(
        head.names(),
        ["X-Gearman-Job-Handle", "Content-Length", "Server"]
    );
    assert_eq!(status_of(&mut admin, &f), Some((4, 0, 0)));
    let mut worker = server.conn();
    worker.can_do(&[&f]);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (h, _, u, d) = worker.grab_uniq();
        seen.push((String::from_utf8(h).unwrap(), u, d));
    }
    assert!(seen.contains(&(handle, b"-".to_vec(), b"payload".to_vec())));
    assert!(seen.contains(&(get, b"g".to_vec(), Vec::new())));
    assert!(seen.contains(&(put, b"-".to_vec(), b"put".to_vec())));
    assert!(
        seen.iter()
            .any(|(h, u, _)| Some(h.as_str()) == head.header("X-Gearman-Job-Handle") && u == b"h")
    );
}

#[test]
fn priority_and_unique_headers_reach_the_queue() {
    let (server, port) = start(&[]);
    let f = unique_name("http_prio");
    let bg = "X-Gearman-Background: true\r\n";
    for (prio, unique) in [("low", "l"), ("normal", "n"), ("HIGH", "h")] {
        created(&exchange(
            port,
            &post(
                &f,
                &format!("{bg}X-Gearman-Priority: {prio}\r\nX-Gearman-Unique: {unique}\r\n"),
                unique.as_bytes(),
            ),
        ));
    }
    let mut admin = server.conn();
    let prio = admin.admin("prioritystatus");
    assert!(
        prio.lines().any(|l| l == format!("{f}\t1\t1\t1\t0")),
        "{prio}"
    );
    let uniques = admin.admin("show unique jobs");
    for u in ["l", "n", "h"] {
        assert!(uniques.lines().any(|l| l == u), "{uniques}");
    }
    // The same unique coalesces: the same handle comes back.
    let again = created(&exchange(
        port,
        &post(&f, &format!("{bg}X-Gearman-Unique: n\r\n"), b"other"),
    ));
    let mut worker = server.conn();
    worker.can_do(&[&f]);
    let order: Vec<_> = (0..3).map(|_| worker.grab_uniq()).collect();
    let uniques: Vec<&[u8]> = order.iter().map(|j| &j.2[..]).collect();
    assert_eq!(uniques, [&b"h"[..], b"n", b"l"]);
    assert_eq!(order[1].0, again.as_bytes());
    worker.grab_none();
}

#[test]
fn without_a_unique_jobs_coalesce_on_the_payload() {
    let (_server, port) = start(&[]);
    let f = unique_name("http_same");
    let bg = "X-Gearman-Background: true\r\n";
    let a = created(&exchange(port, &post(&f, bg, b"same")));
    let b = created(&exchange(port, &post(&f, bg, b"same")));
    let c = created(&exchange(port, &post(&f, bg, b"different")));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

/// A request gearmand answers by closing without a reply, gearshiftd with `status`.
#[track_caller]
fn refused(port: u16, request: &[u8], status: &str) {
    let mut c = Http::connect(port);
    c.send(request);
    let bytes = c
        .read_to_close()
        .unwrap_or_else(|| panic!("no close after {:?}", show(request)));
    if is_gearmand() {
        assert!(
            !bytes.starts_with(b"HTTP/1.0 200"),
            "{:?}: {}",
            show(request),
            show(&bytes)
        );
        return;
    }
    let reply = Reply::parse(&bytes);
    assert_eq!(reply.status, status, "{:?}", show(request));
    assert_eq!(reply.header("Content-Length"), Some("0"));
    assert!(reply.body.is_empty());
}

#[test]
fn bad_requests_get_clean_refusals_and_make_no_job() {
    let (server, port) = start(&["--max-packet-size=1024"]);
    let f = unique_name("http_bad");
    let bg = "X-Gearman-Background: true";
    let m = |s: String| s.into_bytes();
    refused(
        port,
        &m(format!("DELETE /{f} HTTP/1.1\r\n{bg}\r\n\r\n")),
        "HTTP/1.0 405 Method Not Allowed",
    );
    refused(
        port,
        &m(format!("post /{f} HTTP/1.1\r\n{bg}\r\n\r\n")),
        "HTTP/1.0 405 Method Not Allowed",
    );
    refused(port, b"GARBAGE\r\n\r\n", "HTTP/1.0 400 Bad Request");
    refused(
        port,
        &m(format!("POST /{f}\r\n{bg}\r\n\r\n")),
        "HTTP/1.0 400 Bad Request",
    );
    refused(
        port,
        &m(format!("POST /{f} HTTP/2.0\r\n{bg}\r\n\r\n")),
        "HTTP/1.0 505 HTTP Version Not Supported",
    );
    refused(
        port,
        &m(format!(
            "POST /{f} HTTP/1.1\r\nContent-Length: -1\r\n{bg}\r\n\r\nx"
        )),
        "HTTP/1.0 400 Bad Request",
    );
    // No function: gearmand's own 404, the same on both.
    let r = exchange(port, b"POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, "HTTP/1.0 404 NOT_FOUND");
    assert_eq!(r.names(), ["Server", "Content-Length"]);
    // Oversized: a head past 8 KiB, a body past --max-packet-size (refused before it is
    // sent), chunked bodies.
    let mut big = m(format!("POST /{f} HTTP/1.1\r\nX-Pad: "));
    big.resize(20_000, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    refused(port, &big, "HTTP/1.0 431 Request Header Fields Too Large");
    if !is_gearmand() {
        refused(
            port,
            &m(format!(
                "POST /{f} HTTP/1.1\r\nContent-Length: 1025\r\n{bg}\r\n\r\n"
            )),
            "HTTP/1.0 413 Content Too Large",
        );
        refused(
            port,
            &m(format!(
                "POST /{f} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n{bg}\r\n\r\n1\r\nx\r\n0\r\n\r\n"
            )),
            "HTTP/1.0 411 Length Required",
        );
    }
    let mut admin = server.conn();
    assert_eq!(status_of(&mut admin, &f), None, "no job was made");
}

#[test]
fn trace_and_head_without_a_function() {
    let (_server, port) = start(&[]);
    let r = exchange(port, b"HEAD / HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, "HTTP/1.0 200 OK");
    assert_eq!(r.header("Content-Length"), Some("0"));
    if skip_under_gearmand("gearmand never answers TRACE") {
        return;
    }
    assert_eq!(r.names(), ["Content-Length", "Server"]);
    let request = b"TRACE / HTTP/1.1\r\nX-Any: thing\r\n\r\n";
    let r = exchange(port, request);
    assert_eq!(r.status, "HTTP/1.0 200 OK");
    assert_eq!(r.header("Content-Type"), Some("message/http"));
    assert_eq!(r.body, request);
}

#[test]
fn one_request_per_connection() {
    let (server, port) = start(&[]);
    let f = unique_name("http_pipe");
    let bg = "X-Gearman-Background: true\r\n";
    let mut two = post(&f, bg, b"first");
    two.extend_from_slice(&post(&f, bg, b"second"));
    // Keep-alive or not, the first reply closes the connection (gearmand's HTTP/1.0 replies).
    let mut c = Http::connect(port);
    c.send(&two);
    let handle = created(&c.reply());
    let mut admin = server.conn();
    if !is_gearmand() {
        // gearmand also submits the second request, and never answers it.
        assert_eq!(status_of(&mut admin, &f), Some((1, 0, 0)));
    }
    let mut worker = server.conn();
    worker.can_do(&[&f]);
    let (h, _, data) = worker.grab();
    assert_eq!((h, data), (handle.into_bytes(), b"first".to_vec()));
}

/// As with a binary client, a foreground job whose HTTP client left is dropped while queued
/// (gearmand marks it abandoned and leaves it in the queue).
#[test]
fn a_client_that_leaves_drops_its_foreground_job() {
    let (server, port) = start(&[]);
    let mut admin = server.conn();
    let f = unique_name("http_gone");
    let mut c = Http::connect(port);
    c.send(&post(&f, "", b"abandoned"));
    wait_until("the job is queued", || {
        status_of(&mut admin, &f) == Some((1, 0, 0))
    });
    drop(c);
    if is_gearmand() {
        // gearmand marks the job abandoned (show jobs' ignore column) and leaves it queued.
        wait_until("the job is abandoned", || {
            let jobs = admin.admin("show jobs");
            jobs.lines().any(|l| l.ends_with("\t0\t1\t0"))
        });
        return;
    }
    wait_until("the job is dropped", || {
        status_of(&mut admin, &f) == Some((0, 0, 0))
    });
}

#[test]
fn a_request_cut_short_makes_no_job() {
    let (server, port) = start(&[]);
    let mut admin = server.conn();
    let f = unique_name("http_cut");
    for partial in [
        format!("POST /{f} HTTP/1.1\r\nContent-Le").into_bytes(),
        format!(
            "POST /{f} HTTP/1.1\r\nContent-Length: 10\r\nX-Gearman-Background: true\r\n\r\nabc"
        )
        .into_bytes(),
    ] {
        let mut c = Http::connect(port);
        c.send(&partial);
        c.stream.shutdown(Shutdown::Write).unwrap();
        let rest = c.read_to_close().expect("closed after the peer's end");
        assert!(!rest.starts_with(b"HTTP/1.0 200"), "{}", show(&rest));
    }
    assert_eq!(status_of(&mut admin, &f), None);
    created(&exchange(
        port,
        &post(&f, "X-Gearman-Background: true\r\n", b"next"),
    ));
}

#[test]
fn a_body_larger_than_the_read_buffer_arrives_whole() {
    let (server, port) = start(&[]);
    let f = unique_name("http_large");
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let handle = created(&exchange(
        port,
        &post(&f, "X-Gearman-Background: true\r\n", &body),
    ));
    let mut worker = server.conn();
    worker.can_do(&[&f]);
    let (h, _, data) = worker.grab();
    assert_eq!(h, handle.into_bytes());
    assert!(data == body, "payload of {} bytes differs", data.len());
}

#[test]
fn refused_submissions_say_error() {
    let (server, port) = start(&[]);
    let f = unique_name("http_err");
    let bg = "X-Gearman-Background: true\r\n";
    let long = "u".repeat(65);
    let r = exchange(
        port,
        &post(&f, &format!("{bg}X-Gearman-Unique: {long}\r\n"), b"x"),
    );
    assert_eq!(r.header("X-Gearman-Command"), Some("ERROR"), "{r:?}");
    if skip_under_gearmand("gearmand answers an ERROR with 200 and the code as the handle") {
        return;
    }
    assert_eq!(r.status, "HTTP/1.0 400 Bad Request");
    assert_eq!(r.body, b"ARGUMENT_TOO_LARGE Unique value too large");
    let mut admin = server.conn();
    assert!(admin.admin(&format!("maxqueue {f} 1")).starts_with("OK"));
    created(&exchange(port, &post(&f, bg, b"one")));
    let r = exchange(port, &post(&f, bg, b"two"));
    assert_eq!(r.status, "HTTP/1.0 503 Service Unavailable");
    assert_eq!(r.header("X-Gearman-Command"), Some("ERROR"));
    assert_eq!(r.body, b"QUEUE_ERROR Job queue is full");
    assert_eq!(status_of(&mut admin, &f), Some((1, 0, 0)));
}

/// The ACL grants by certificate identity, which the HTTP port never has: every submission
/// there is refused with 403, and nothing is queued.
#[test]
fn with_an_acl_the_http_port_may_not_submit() {
    if skip_under_gearmand("ACL") {
        return;
    }
    let pki = crate::tls::Pki::new("http-acl");
    let id = pki.server();
    let acl = pki.dir.write(
        "acl.ini",
        "[submitter]\ninvoke = .*\n[root]\ngrant = true\n",
    );
    let mut args = pki.server_args(&id, true);
    args.push(format!("--acl={}", acl.display()));
    args.push("--ssl-port=0".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (server, port) = start(&args);
    let f = unique_name("http_acl");
    let r = exchange(port, &post(&f, "X-Gearman-Background: true\r\n", b"x"));
    assert_eq!(r.status, "HTTP/1.0 403 Forbidden");
    assert_eq!(r.header("Content-Length"), Some("0"));
    let mut admin = server.conn();
    assert_eq!(status_of(&mut admin, &f), None);
}

/// With `--exceptions`, a WORK_EXCEPTION ends the wait as itself, its data the body; without,
/// the server turns it into WORK_FAIL, as for any client that did not ask for exceptions.
#[test]
fn work_exception_is_a_failure_unless_exceptions_are_on() {
    for (flags, command, body) in [
        (&[][..], "WORK_FAIL", &b""[..]),
        (&["--exceptions"][..], "WORK_EXCEPTION", &b"boom"[..]),
    ] {
        if !flags.is_empty() && skip_under_gearmand("--exceptions on the HTTP port") {
            continue;
        }
        let (server, port) = start(flags);
        let f = unique_name("http_exc");
        let mut worker = sleeping_worker(&server, &[&f]);
        let mut client = Http::connect(port);
        client.send(&post(&f, "", b"x"));
        worker.expect(NOOP, &[]);
        let (handle, _, _) = worker.grab();
        worker.send(WORK_EXCEPTION, &[&handle, b"boom"]);
        let reply = client.reply();
        assert_eq!(reply.status, "HTTP/1.0 200 OK");
        assert_eq!(
            reply.header("X-Gearman-Command"),
            Some(command),
            "{flags:?}"
        );
        assert_eq!(reply.body, body, "{flags:?}");
        assert_eq!(
            reply.header("X-Gearman-Job-Handle").unwrap().as_bytes(),
            &handle[..]
        );
    }
}
