//! Log lines that gearmand's tooling reads (its line format, `--syslog`), JSON lines, and
//! gearmand config files read as gearmand reads them (the fixtures in
//! tests/fixtures/gearmand-conf: what gearmand accepts is accepted, what it refuses is refused).

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use regex::Regex;

use crate::util::*;

/// gearmand 1.1.20's log line, as `--log-file` gets it:
///
/// ```text
///   DEBUG 2026-12-02 08:50:00.918128 [  main ] THREADS: 2 -> libgearman-server/gearmand.cc:274
///    INFO 2026-12-02 08:50:00.919738 [  main ] Listening on 0.0.0.0:47391 (11)
///  NOTICE 2026-12-02 08:50:02.241348 [  proc ] accepted,foo,5cc2e24e-...,0 -> libgearman-server/server.cc:321
///   DEBUG 2026-12-02 08:50:02.241394 [     1 ] Sent JOB_CREATED -> libgearman-server/thread.cc:356
/// ```
///
/// level right-aligned in 7 columns, UTC time to the microsecond (`.000000` below DEBUG,
/// where gearmand logs its cached clock), the thread in a 6-column field, the message, and
/// ` -> file:line` on every line but INFO's.
fn gearmand_line() -> Regex {
    Regex::new(
        r"^(?P<level> *(?:FATAL|ALERT|CRITICAL|ERROR|WARNING|NOTICE|INFO|DEBUG)) (?P<minute>\d{4}-\d{2}-\d{2} \d{2}:\d{2}):\d{2}\.\d{6} \[(?P<thread> *(?:main|proc|store|\d+)) \] (?P<message>.*?)(?P<source> -> [^ ]+:\d+)?$",
    )
    .unwrap()
}

/// The current UTC minute, `YYYY-MM-DD HH:MM`.
fn utc_minute() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M"])
        .output()
        .expect("run date");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Waits (bounded) for the file to hold `n` lines, and returns them.
fn wait_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(String::from).collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes a shard (gearmand: an I/O thread) log: an INFO line for input that is not Gearman,
/// and with gearshiftd's `--max-connections=1`, a WARNING for the connection refused.
fn make_the_shards_log(s: &Server) {
    let mut first = s.conn();
    first.sync();
    let refused = std::net::TcpStream::connect(s.addr()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let _ = first.try_send_raw(b"\0XYZ\0\0\0\x01\0\0\0\0");
    std::thread::sleep(Duration::from_millis(300));
    drop((first, refused));
}

#[test]
fn log_lines_are_gearmands() {
    let dir = TempDir::new("logs");
    let log = dir.path().join("server.log");
    let before = utc_minute();
    let mut s = Server::start_logging(
        log.to_str().unwrap(),
        &["--verbose=DEBUG"],
        &["--max-connections=1"],
    );
    make_the_shards_log(&s);
    s.stop();
    let after = utc_minute();
    let lines = wait_lines(&log, 3);
    assert!(lines.len() >= 3, "too few log lines: {lines:?}");
    let re = gearmand_line();
    let (mut threads, mut sources) = (0, 0);
    for line in &lines {
        let m = re
            .captures(line)
            .unwrap_or_else(|| panic!("not a gearmand log line: {line:?}"));
        assert_eq!(m["level"].len(), 7, "{line:?}");
        assert_eq!(m["thread"].len(), 6, "{line:?}");
        let minute = &m["minute"];
        assert!(
            minute == before || minute == after,
            "{line:?}: not UTC now ({before} .. {after})"
        );
        // gearmand marks the source of every line but INFO's.
        assert_eq!(
            m["level"].trim() == "INFO",
            m.name("source").is_none(),
            "{line:?}"
        );
        sources += usize::from(m.name("source").is_some());
        threads += usize::from(m["thread"].trim().parse::<u32>().is_ok());
    }
    assert!(threads > 0, "no line from an I/O thread: {lines:#?}");
    assert!(sources > 0, "no line with its source: {lines:#?}");
}

#[test]
fn json_log_lines_parse() {
    if skip_under_gearmand("--log-format=json") {
        return;
    }
    let dir = TempDir::new("logs");
    let log = dir.path().join("server.json");
    let mut s = Server::start_logging(
        log.to_str().unwrap(),
        &["--verbose=INFO", "--log-format=json"],
        &["--max-connections=1"],
    );
    make_the_shards_log(&s);
    s.stop();
    let lines = wait_lines(&log, 3);
    let time = Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$").unwrap();
    let mut shards = 0;
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(time.is_match(v["time"].as_str().unwrap()), "{line}");
        assert!(
            ["ERROR", "WARNING", "INFO", "DEBUG"].contains(&v["level"].as_str().unwrap()),
            "{line}"
        );
        assert!(
            v["message"].is_string() && v["thread"].is_string(),
            "{line}"
        );
        if let Some(n) = v.get("shard") {
            assert_eq!(
                v["thread"].as_str().unwrap(),
                format!("shard-{}", n.as_u64().unwrap())
            );
            shards += 1;
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("--max-connections 1 reached")),
        "{lines:#?}"
    );
    assert!(shards > 0, "no line from a shard: {lines:#?}");
    // The last lines are written before the process exits.
    assert!(
        lines.iter().any(|l| l.contains("stopping on signal 15")),
        "{lines:#?}"
    );
}

/// The socket `--syslog-socket` names, bound by the test as a syslog daemon binds /dev/log.
struct FakeSyslog {
    sock: UnixDatagram,
    path: PathBuf,
    _dir: TempDir,
}

impl FakeSyslog {
    fn new() -> FakeSyslog {
        let dir = TempDir::new("syslog");
        let path = dir.path().join("log");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        FakeSyslog {
            sock,
            path,
            _dir: dir,
        }
    }

    fn recv(&self) -> String {
        let mut buf = vec![0; 65536];
        let n = self.sock.recv(&mut buf).expect("a syslog datagram");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }
}

#[test]
fn syslog_gets_gearmands_lines_as_glibc_writes_them() {
    // gearmand's --syslog writes to /dev/log, which a test cannot take over; its datagrams,
    // seen there, are `<14>Dec  2 08:50:36 gearmand[30530]:    INFO 2026-12-02 ...`.
    if skip_under_gearmand("--syslog-socket") {
        return;
    }
    let syslog = FakeSyslog::new();
    let socket = format!("--syslog-socket={}", syslog.path.display());
    let mut s = Server::start_logging(
        "none",
        &["--verbose=INFO", "--syslog", &socket],
        &["--max-connections=1"],
    );
    let head = Regex::new(
        r"^<(?P<pri>\d+)>[A-Z][a-z]{2} [ 1-3]\d \d{2}:\d{2}:\d{2} gearmand\[(?P<pid>\d+)\]: (?P<line>.*)$",
    )
    .unwrap();
    let line = gearmand_line();
    let first = syslog.recv();
    let m = head.captures(&first).unwrap_or_else(|| panic!("{first:?}"));
    // LOG_USER (8) | LOG_INFO (6).
    assert_eq!(&m["pri"], "14", "{first:?}");
    assert_eq!(m["pid"].parse::<u32>().unwrap(), s.pid());
    assert!(line.is_match(&m["line"]), "{first:?}");
    assert!(m["line"].contains("listening on"), "{first:?}");
    // A WARNING: LOG_USER | LOG_WARNING (4).
    let _first = s.conn();
    let _refused = std::net::TcpStream::connect(s.addr()).unwrap();
    let warning = syslog.recv();
    let m = head
        .captures(&warning)
        .unwrap_or_else(|| panic!("{warning:?}"));
    assert_eq!(&m["pri"], "12", "{warning:?}");
    assert!(m["line"].starts_with("WARNING "), "{warning:?}");
    s.stop();
}

/// The config-file fixtures, each with whether gearmand 1.1.20 accepts it (`accepted-*`) or
/// refuses it (`rejected-*`, with the words its message has).
fn fixtures() -> Vec<(PathBuf, Option<&'static str>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gearmand-conf");
    let refusals = [
        ("rejected-ambiguous.conf", "is ambiguous"),
        (
            "rejected-check-args.conf",
            "unrecognised option '--check-args'",
        ),
        ("rejected-empty-value.conf", "should follow immediately"),
        (
            "rejected-hash-space.conf",
            "Invalid value for --verbose supplied",
        ),
        ("rejected-missing-value.conf", "is missing"),
        ("rejected-switch-value.conf", "does not take any arguments"),
        ("rejected-tab.conf", "'--threads"),
        ("rejected-twice.conf", "cannot be specified more than once"),
        ("rejected-unknown.conf", "unrecognised option '--bogus=1'"),
        ("rejected-value-is-an-option.conf", "is missing"),
    ];
    let mut all: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    all.sort();
    all.into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let why = refusals.iter().find(|(n, _)| *n == name).map(|(_, w)| *w);
            assert!(
                name.starts_with("accepted-") || why.is_some(),
                "{name}: say why gearmand refuses it"
            );
            (p, why)
        })
        .collect()
}

#[test]
fn gearmand_config_files_are_accepted_and_refused_as_gearmand_does() {
    let bin = if is_gearmand() {
        gearmand_bin()
    } else {
        gearshiftd_bin()
    };
    let check = |path: &std::path::Path, more: &[&str]| {
        Command::new(&bin)
            .arg("--check-args")
            .arg(format!("--config-file={}", path.display()))
            .arg("--log-file=none")
            .args(more)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let fixtures = fixtures();
    assert!(fixtures.len() >= 10);
    for (path, refusal) in &fixtures {
        let (path, refusal) = (path, *refusal);
        let out = check(path, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match refusal {
            None => assert!(out.status.success(), "{path:?} refused: {stderr}"),
            Some(words) => {
                assert_eq!(out.status.code(), Some(1), "{path:?} accepted: {stderr}");
                assert!(stderr.contains(words), "{path:?}: {stderr}");
                // What the parser refuses is named with the file (a value refused later, as
                // --verbose's, may come from the command line too).
                if !is_gearmand() && !words.starts_with("Invalid value") {
                    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
                }
            }
        }
    }
    // An option the command line gives is not read from the file at all: given twice there,
    // or with a bad value, it is no error.
    for name in ["rejected-twice.conf", "rejected-tab.conf"] {
        let (path, _) = fixtures.iter().find(|(p, _)| p.ends_with(name)).unwrap();
        let out = check(path, &["--threads=3"]);
        assert!(
            out.status.success(),
            "{name} with --threads=3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_commented_config_file_applies_its_options_only() {
    let dir = TempDir::new("conf");
    // Comments, blank lines, CRLF, a value in the next word, and an option commented out
    // with `#` right before it.
    let conf = dir.write(
        "gearmand.conf",
        "# handles\r\n\r\n--job-handle-prefix FILE\r\n#--job-handle-prefix=HIDDEN\nthreads=9\n",
    );
    let s = Server::start(&[&format!("--config-file={}", conf.display())]);
    let mut c = s.conn();
    let handle = c.submit(SUBMIT_JOB_BG, "f", "", b"");
    assert!(handle.starts_with(b"FILE:"), "{}", show(&handle));
}

#[test]
fn syslog_on_a_stream_socket_gets_nul_terminated_lines() {
    // glibc's syslog() falls back to SOCK_STREAM when /dev/log is a stream socket.
    if skip_under_gearmand("--syslog-socket") {
        return;
    }
    let dir = TempDir::new("syslog");
    let path = dir.path().join("log");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let socket = format!("--syslog-socket={}", path.display());
    let _s = Server::start_logging("none", &["--verbose=INFO", "--syslog", &socket], &[]);
    let (conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut first = Vec::new();
    use std::io::BufRead;
    std::io::BufReader::new(conn)
        .read_until(0, &mut first)
        .unwrap();
    let first = String::from_utf8(first).unwrap();
    assert!(
        first.starts_with("<14>") && first.ends_with("\0") && first.contains("listening on"),
        "{first:?}"
    );
}
