//! Prometheus metrics (`--metrics-port`): values after known traffic, the text checked by
//! `promtool check metrics`, the cap on per-function series, refusals, and a real
//! `prometheus` server scraping the port and answering a query. gearshiftd only (gearmand has
//! no metrics); `promtool` and `prometheus` come from Debian's `prometheus` package
//! (scripts/install-test-deps.sh): without them those parts skip, or fail with
//! `GEARSHIFT_REQUIRE_COMPAT` set.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// A server with the metrics port on a free port; returns it and the port.
fn start(extra: &[&str]) -> (Server, u16) {
    let port = free_port();
    let flag = format!("--metrics-port={port}");
    let mut args = vec![flag.as_str()];
    args.extend_from_slice(extra);
    let server = Server::start_with(&[], &args);
    assert!(
        wait_for_port(port, Duration::from_secs(5)),
        "nothing listens on the metrics port {port}"
    );
    (server, port)
}

/// One raw HTTP request; the whole reply (the server closes after it).
fn http(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.write_all(request).expect("write the request");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("the reply, then a close");
    String::from_utf8(out).expect("a UTF-8 reply")
}

/// `GET /metrics`: the body, after checking the head.
fn scrape(port: u16) -> String {
    let reply = http(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
    );
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("\r\nContent-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
        "{head}"
    );
    body.to_string()
}

/// The samples of a scrape: `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("name and value");
            (k.to_string(), v.parse().expect("a number"))
        })
        .collect()
}

#[track_caller]
fn value(s: &HashMap<String, f64>, key: &str) -> f64 {
    *s.get(key)
        .unwrap_or_else(|| panic!("no sample {key}: {:?}", s.keys()))
}

fn promtool() -> bool {
    require_tool(
        find_tool("promtool").is_some(),
        "promtool (Debian package prometheus)",
    )
}

/// Runs `promtool check metrics` on a scrape; panics on its complaints.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Submits a background job and waits for JOB_CREATED.
fn submit_bg(c: &mut Conn, ty: u32, function: &str, unique: &str) {
    c.send(ty, &[function.as_bytes(), unique.as_bytes(), b"data"]);
    c.expect_type(JOB_CREATED);
}

/// Registers, then makes sure the owner has it (ECHO is a barrier across shards).
fn can_do(w: &mut Conn, function: &str) {
    w.send(CAN_DO, &[function.as_bytes()]);
    w.send(ECHO_REQ, &[b"x"]);
    w.expect(ECHO_RES, &[b"x"]);
}

/// Grabs a job; its handle.
fn grab(w: &mut Conn) -> Vec<u8> {
    w.send(GRAB_JOB, &[]);
    let p = w.expect_type(JOB_ASSIGN);
    p.args()[0].clone()
}

#[test]
fn a_scrape_counts_the_traffic() {
    if skip_under_gearmand("gearshiftd's metrics") {
        return;
    }
    let (server, port) = start(&[]);
    let f = unique_name("metrics_f");
    let g = unique_name("metrics_g");
    let mut c = server.conn();
    let submitted = Instant::now();
    submit_bg(&mut c, SUBMIT_JOB_HIGH_BG, &f, "h1");
    submit_bg(&mut c, SUBMIT_JOB_HIGH_BG, &f, "h2");
    for u in ["n1", "n2", "n3"] {
        submit_bg(&mut c, SUBMIT_JOB_BG, &f, u);
    }
    // n1, the oldest job still queued at the scrape, was queued by now (JOB_CREATED came).
    let queued = Instant::now();
    submit_bg(&mut c, SUBMIT_JOB_BG, &f, "n1"); // coalesced
    submit_bg(&mut c, SUBMIT_JOB_LOW_BG, &f, "l1");
    let mut w = server.conn();
    can_do(&mut w, &f);
    let first = grab(&mut w);
    w.send(WORK_COMPLETE, &[&first, b"ok"]);
    let second = grab(&mut w);
    w.send(WORK_FAIL, &[&second]);
    let mut w2 = server.conn();
    can_do(&mut w2, &f);
    // A foreground job, for the round trip.
    let mut wg = server.conn();
    can_do(&mut wg, &g);
    let mut fg = server.conn();
    fg.send(SUBMIT_JOB, &[g.as_bytes(), b"", b"x"]);
    let handle = fg.expect_type(JOB_CREATED).args()[0].clone();
    let assigned = grab(&mut wg);
    assert_eq!(assigned, handle);
    wg.send(WORK_COMPLETE, &[&handle, b"done"]);
    fg.expect(WORK_COMPLETE, &[&handle, b"done"]);
    // The worker's results have reached the owner: its next packet's answer comes after.
    w.send(ECHO_REQ, &[b"y"]);
    w.expect(ECHO_RES, &[b"y"]);
    // Let the oldest queued job (n1) age measurably.
    std::thread::sleep(Duration::from_millis(300).saturating_sub(queued.elapsed()));
    let aged = queued.elapsed().as_secs_f64();

    let text = scrape(port);
    let waited = submitted.elapsed().as_secs_f64();
    if promtool() {
        promtool_check(&text);
    }
    let s = samples(&text);
    let fl = |m: &str| format!("gearshiftd_function_{m}{{function=\"{f}\"}}");
    assert_eq!(value(&s, &fl("jobs_submitted_total")), 6.0);
    assert_eq!(value(&s, &fl("jobs_coalesced_total")), 1.0);
    assert_eq!(value(&s, &fl("jobs_completed_total")), 1.0);
    assert_eq!(value(&s, &fl("jobs_failed_total")), 1.0);
    assert_eq!(value(&s, &fl("jobs_requeued_total")), 0.0);
    assert_eq!(value(&s, &fl("running")), 0.0);
    assert_eq!(value(&s, &fl("workers")), 2.0);
    for (p, n) in [("high", 0.0), ("normal", 3.0), ("low", 1.0)] {
        let key = format!("gearshiftd_function_queued{{function=\"{f}\",priority=\"{p}\"}}");
        assert_eq!(value(&s, &key), n, "{key}");
    }
    // n1 was queued between `submitted` and `queued`; the owner stamps in whole milliseconds
    // of its loop turn, so allow a few.
    let oldest = value(&s, &fl("oldest_queued_seconds"));
    assert!(
        oldest >= aged - 0.005 && oldest <= waited + 0.005,
        "oldest queued {oldest} s, submitted {waited} s ago"
    );
    let gl = format!("gearshiftd_function_jobs_completed_total{{function=\"{g}\"}}");
    assert_eq!(value(&s, &gl), 1.0);
    assert_eq!(value(&s, "gearshiftd_queue_wait_seconds_count"), 3.0);
    assert_eq!(
        value(&s, "gearshiftd_queue_wait_seconds_bucket{le=\"+Inf\"}"),
        3.0
    );
    assert_eq!(value(&s, "gearshiftd_run_seconds_count"), 3.0);
    assert_eq!(
        value(&s, "gearshiftd_foreground_round_trip_seconds_count"),
        1.0
    );
    assert_eq!(value(&s, "gearshiftd_jobs"), 4.0);
    assert_eq!(value(&s, "gearshiftd_functions"), 2.0);
    assert_eq!(value(&s, "gearshiftd_connections{role=\"worker\"}"), 3.0);
    // This scrape, and perhaps the readiness probe's connection if its close is not reaped yet.
    assert!(value(&s, "gearshiftd_connections{role=\"metrics\"}") >= 1.0);
    assert!(value(&s, "gearshiftd_received_bytes_total") > 0.0);
    assert!(value(&s, "gearshiftd_sent_bytes_total") > 0.0);
    let shards = value(&s, "gearshiftd_shards");
    for shard in 0..shards as u32 {
        let key = format!("gearshiftd_shard_busy_seconds_total{{shard=\"{shard}\"}}");
        assert!(value(&s, &key) > 0.0, "{key}");
    }

    // An error packet is counted by its code.
    w.send(WORK_COMPLETE, &[b"H:nobody:1", b""]);
    w.expect_type(ERROR);
    w.send(ECHO_REQ, &[b"z"]);
    w.expect(ECHO_RES, &[b"z"]);
    let s = samples(&scrape(port));
    assert_eq!(
        value(&s, "gearshiftd_errors_sent_total{code=\"JOB_NOT_FOUND\"}"),
        1.0
    );
    // Counters only grow: a second scrape shows the same figures plus what happened since.
    assert_eq!(value(&s, &fl("jobs_submitted_total")), 6.0);
}

/// Scrapes take turns server-wide (`--metrics-min-interval`): one that comes too soon waits
/// for its turn instead of being refused, and then shows fresh figures; scrapes that come
/// together, on whichever shards their connections live, start one interval apart.
#[test]
fn scrapes_take_turns_server_wide() {
    if skip_under_gearmand("gearshiftd's metrics") {
        return;
    }
    const INTERVAL: Duration = Duration::from_millis(600);
    let (server, port) = start(&["--metrics-min-interval=600"]);
    let f = unique_name("turns");
    let key = format!("gearshiftd_function_jobs_submitted_total{{function=\"{f}\"}}");
    let mut c = server.conn();
    submit_bg(&mut c, SUBMIT_JOB_BG, &f, "");
    let first = Instant::now();
    assert_eq!(value(&samples(&scrape(port)), &key), 1.0);
    submit_bg(&mut c, SUBMIT_JOB_BG, &f, "");
    let s = samples(&scrape(port));
    let waited = first.elapsed();
    // The turn is kept in whole milliseconds.
    assert!(
        waited >= INTERVAL - Duration::from_millis(2),
        "the second scrape came after {waited:?}"
    );
    assert_eq!(value(&s, &key), 2.0, "a waiting scrape shows fresh figures");
    // Three at once (spread over shards by the accepting round robin): one turn each.
    let start = Instant::now();
    let ends: Vec<Duration> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                scrape(port);
                start.elapsed()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let (earliest, latest) = (ends.iter().min().unwrap(), ends.iter().max().unwrap());
    assert!(
        *latest - *earliest >= 2 * INTERVAL - Duration::from_millis(50),
        "three scrapes at once finished at {ends:?}"
    );
}

/// A woken worker that does not ask within `--wake-retry-ms` makes the owner wake another
/// sleeper in its place: each such retry is counted for the function.
#[test]
fn wake_retries_are_counted() {
    if skip_under_gearmand("gearshiftd's metrics") {
        return;
    }
    let (server, port) = start(&["--wake-retry-ms=500"]);
    let f = unique_name("retry");
    let mut ws: Vec<Conn> = (0..2).map(|_| sleeping_worker(&server, &[&f])).collect();
    let mut c = server.conn();
    let start = Instant::now();
    let h = c.submit(SUBMIT_JOB_BG, &f, "", b"x");
    // One of the two is woken at once and never asks; the other is woken after the retry
    // delay and grabs at once, which ends the wakes.
    let p = ws[0]
        .recv_with_timeout(Duration::from_secs(5))
        .expect("a NOOP at once or after the retry delay");
    assert_eq!(p.ty, NOOP);
    let second = if start.elapsed() < Duration::from_millis(250) {
        let p = ws[1]
            .recv_with_timeout(Duration::from_secs(5))
            .expect("a NOOP after the retry delay");
        assert_eq!(p.ty, NOOP);
        1
    } else {
        0
    };
    assert_eq!(ws[second].grab().0, h);
    let key = format!("gearshiftd_function_wake_retries_total{{function=\"{f}\"}}");
    assert_eq!(value(&samples(&scrape(port)), &key), 1.0);
}

#[test]
fn the_cap_bounds_the_series() {
    if skip_under_gearmand("gearshiftd's metrics") {
        return;
    }
    let (server, port) = start(&["--metrics-max-functions=5"]);
    let base = unique_name("cap");
    let mut c = server.conn();
    for i in 0..60 {
        submit_bg(&mut c, SUBMIT_JOB_BG, &format!("{base}_{i}"), "");
    }
    let text = scrape(port);
    let s = samples(&text);
    let series: Vec<&String> = s
        .keys()
        .filter(|k| k.starts_with("gearshiftd_function_jobs_submitted_total{"))
        .collect();
    assert_eq!(series.len(), 6, "five functions and _other: {series:?}");
    assert_eq!(
        value(
            &s,
            "gearshiftd_function_jobs_submitted_total{function=\"_other\"}"
        ),
        55.0
    );
    assert_eq!(value(&s, "gearshiftd_functions_other"), 55.0);
    assert_eq!(value(&s, "gearshiftd_functions"), 60.0);
    let queued: f64 = (0..60)
        .filter_map(|i| {
            s.get(&format!(
                "gearshiftd_function_queued{{function=\"{base}_{i}\",priority=\"normal\"}}"
            ))
        })
        .sum::<f64>()
        + value(
            &s,
            "gearshiftd_function_queued{function=\"_other\",priority=\"normal\"}",
        );
    assert_eq!(queued, 60.0, "every queued job is in some series");
    // The same five functions keep their series from scrape to scrape.
    submit_bg(&mut c, SUBMIT_JOB_BG, &format!("{base}_late"), "");
    let again = samples(&scrape(port));
    for k in &series {
        assert!(again.contains_key(*k), "{k} went away");
    }
    if promtool() {
        promtool_check(&text);
    }
}

/// Connections to the metrics port are bounded in number and in time, so a peer that opens
/// many, never finishes its request or never reads its reply (each reply held in memory) costs
/// bounded memory: past `--metrics-max-connections` a new one is closed at once, unanswered,
/// and one open past `--metrics-timeout` is closed, which frees its place.
#[test]
fn metrics_connections_are_bounded_in_number_and_time() {
    if skip_under_gearmand("gearshiftd's metrics") {
        return;
    }
    let (_server, port) = start(&["--metrics-max-connections=2", "--metrics-timeout=1500"]);
    // What the peer gets for a request: the reply, or nothing if it was closed unanswered.
    let ask = |s: &mut TcpStream| -> Vec<u8> {
        s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    };
    let connect = || TcpStream::connect(("127.0.0.1", port)).expect("connect");
    // The readiness probe's connection is reaped, then a scrape is answered.
    std::thread::sleep(Duration::from_millis(200));
    assert!(ask(&mut connect()).starts_with(b"HTTP/1.1 200 OK"));
    std::thread::sleep(Duration::from_millis(200));
    let opened = Instant::now();
    let mut idle: Vec<TcpStream> = (0..2).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let refused = ask(&mut connect());
    assert!(
        refused.is_empty(),
        "a third connection was answered: {:?}",
        String::from_utf8_lossy(&refused)
    );
    assert!(
        opened.elapsed() < Duration::from_millis(1400),
        "not refused at once"
    );
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    }
    let closed = opened.elapsed();
    assert!(
        closed >= Duration::from_millis(1400) && closed < Duration::from_secs(8),
        "idle metrics connections closed after {closed:?} (--metrics-timeout 1500 ms)"
    );
    // Their places are free again.
    std::thread::sleep(Duration::from_millis(200));
    assert!(ask(&mut connect()).starts_with(b"HTTP/1.1 200 OK"));
}

#[test]
fn other_requests_are_refused() {
    if skip_under_gearmand("gearshiftd's metrics") {
        return;
    }
    let (_server, port) = start(&[]);
    let reply = http(port, b"GET / HTTP/1.1\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 404 Not Found\r\n"), "{reply}");
    let reply = http(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(
        reply.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && reply.contains("Allow: GET"),
        "{reply}"
    );
    let reply = http(port, b"hello\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    let reply = http(port, &big);
    assert!(reply.starts_with("HTTP/1.1 431 "), "{reply}");
    // HTTP/1.0 gets an HTTP/1.0 reply.
    let reply = http(port, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.0 200 OK\r\n"), "{reply}");
}

/// A throwaway `prometheus` server, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` every second.
    fn start(target: u16) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let config = dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: gearshiftd\n    scrape_interval: 1s\n    \
                 static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("run prometheus");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// `/api/v1/query` for an instant query; the JSON answer, or None if it does not answer.
    fn query(&self, promql: &str) -> Option<String> {
        let mut encoded = String::new();
        for b in promql.bytes() {
            match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    encoded.push(b as char)
                }
                _ => encoded.push_str(&format!("%{b:02X}")),
            }
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(READ_TIMEOUT)).ok()?;
        let request =
            format!("GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(request.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

#[test]
fn a_real_prometheus_scrapes_it() {
    if skip_under_gearmand("gearshiftd's metrics") {
        return;
    }
    if !require_tool(
        find_tool("prometheus").is_some(),
        "prometheus (Debian package prometheus)",
    ) {
        return;
    }
    let (server, port) = start(&[]);
    let f = unique_name("scraped");
    let mut c = server.conn();
    for i in 0..7 {
        submit_bg(&mut c, SUBMIT_JOB_BG, &f, &format!("u{i}"));
    }
    let prometheus = Prometheus::start(port);
    let query = format!("gearshiftd_function_jobs_submitted_total{{function=\"{f}\"}}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        if let Some(answer) = prometheus.query(&query) {
            if answer.contains("\"status\":\"success\"") && answer.contains(",\"7\"]") {
                break;
            }
            last = Some(answer);
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not get the value in 60 s; last answer {last:?}; its log:\n{}",
            prometheus.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // And a histogram, summed over its buckets as a dashboard would.
    let answer = prometheus
        .query("sum(gearshiftd_queue_wait_seconds_count)")
        .expect("an answer");
    assert!(answer.contains("\"status\":\"success\""), "{answer}");
}

/// Every series the Grafana dashboard (packaging/grafana/gearshiftd.json) queries is one the
/// server exports (with a queue store, so the store's series are there too).
#[test]
fn the_grafana_dashboard_uses_exported_series() {
    if skip_under_gearmand("gearshiftd's metrics") {
        return;
    }
    let dir = TempDir::new("metrics-store");
    let db = format!("--libsqlite3-db={}", dir.path().join("queue.db").display());
    let (server, port) = start(&["-q", "libsqlite3", &db]);
    let mut c = server.conn();
    submit_bg(&mut c, SUBMIT_JOB_BG, &unique_name("dash"), "");
    let text = scrape(port);
    let exported: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(exported.contains(&"gearshiftd_store_commit_seconds"));

    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/grafana/gearshiftd.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the dashboard")).unwrap();
    let mut exprs = Vec::new();
    fn walk<'a>(v: &'a serde_json::Value, exprs: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => exprs.push(s),
                        _ => walk(v, exprs),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, exprs)),
            _ => {}
        }
    }
    walk(&json, &mut exprs);
    assert!(exprs.len() > 20, "{exprs:?}");
    let mut used = 0;
    for expr in exprs {
        let bytes = expr.as_bytes();
        let mut i = 0;
        while let Some(at) = expr[i..].find("gearshiftd_") {
            let start = i + at;
            let end = bytes[start..]
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                .map_or(bytes.len(), |n| start + n);
            let name = &expr[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| exported.contains(f)))
                .unwrap_or(name);
            assert!(
                exported.contains(&family),
                "the dashboard queries {name}, which the server does not export: {expr}"
            );
            used += 1;
            i = end;
        }
    }
    assert!(used > 20);
}
