//! The server's logger: lines go through a bounded queue to a writer thread, so a shard never
//! blocks on a slow disk, a pipe nobody reads or a busy syslog (when the queue is full, lines
//! are dropped and counted). SIGHUP reopens the file, for log rotation.
//!
//! Lines are gearmand 1.1's, so what reads gearmand's log reads this one:
//!
//! ```text
//!    INFO 2026-12-02 08:50:00.919738 [  main ] gearshiftd 1.1.20-gearshift-0.1.0 listening on [0.0.0.0:4730] with 2 shard(s)
//! WARNING 2026-12-02 08:50:01.913212 [     1 ] refusing a connection: --max-connections 1 reached -> src/shard/mod.rs:442
//! ```
//!
//! the level right-aligned in 7 columns, the time in UTC to the microsecond, the thread as
//! gearmand names its threads (`main`, the I/O threads numbered from 1: shard 0 is `1`) and,
//! as gearmand does for every level but INFO, ` -> file:line` of the code that logged.
//! `--log-format=json` writes one JSON object a line instead; `--syslog` also sends each line
//! to the local syslog socket as glibc's `syslog()` does for gearmand (ident `gearmand`,
//! facility LOG_USER).

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{LogFormat, LogTarget};

/// Lines the queue holds before new ones are dropped.
const QUEUE: usize = 4096;

/// The syslog ident, gearmand's, so rules written for gearmand's lines match.
pub const SYSLOG_IDENT: &str = "gearmand";

/// Where and how lines are written.
#[derive(Clone, Debug)]
pub struct LogSettings {
    /// The file (or stderr, or nothing).
    pub target: LogTarget,
    /// gearmand's level name (`--verbose`).
    pub level: String,
    /// Line format of the file.
    pub format: LogFormat,
    /// `--syslog`: the local syslog socket lines are also sent to.
    pub syslog: Option<PathBuf>,
}

/// One line, as the writer thread gets it.
struct Entry {
    time: SystemTime,
    level: Level,
    thread: Thread,
    message: String,
    source: Option<(&'static str, u32)>,
}

enum Line {
    Entry(Entry),
    Reopen,
    /// Answered once every line before it is written.
    Flush(SyncSender<()>),
}

/// gearmand's levels that gearshiftd writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Error,
    Warning,
    Info,
    Debug,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warning => "WARNING",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }

    /// The syslog severity gearmand gives it (its levels are syslog's).
    fn severity(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warning => 4,
            Level::Info => 6,
            Level::Debug => 7,
        }
    }
}

/// Which thread logged: gearmand's `main` for the main, signal and log threads, its numbered
/// I/O threads for the shards, and the store thread.
#[derive(Clone, Copy, Debug)]
enum Thread {
    Main,
    Shard(u16),
    Store,
}

impl Thread {
    fn current() -> Thread {
        let t = std::thread::current();
        match t.name() {
            Some("store") => Thread::Store,
            Some(name) => match name.strip_prefix("shard-").and_then(|n| n.parse().ok()) {
                Some(i) => Thread::Shard(i),
                None => Thread::Main,
            },
            None => Thread::Main,
        }
    }
}

struct Logger {
    level: log::LevelFilter,
    tx: Mutex<SyncSender<Line>>,
    dropped: AtomicU64,
}

static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();

/// gearmand's level name to a `log` filter.
pub fn level_filter(name: &str) -> log::LevelFilter {
    match name {
        "FATAL" | "ALERT" | "CRITICAL" | "ERROR" => log::LevelFilter::Error,
        "WARNING" => log::LevelFilter::Warn,
        "NOTICE" | "INFO" => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = match r.level() {
            log::Level::Error => Level::Error,
            log::Level::Warn => Level::Warning,
            log::Level::Info => Level::Info,
            _ => Level::Debug,
        };
        let entry = Entry {
            time: SystemTime::now(),
            level,
            thread: Thread::current(),
            message: r.args().to_string(),
            source: source(r),
        };
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(TrySendError::Full(_)) = tx.try_send(Line::Entry(entry)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

/// Where a line was logged from: the file within this crate, or the module of a library.
fn source(r: &log::Record) -> Option<(&'static str, u32)> {
    let line = r.line()?;
    match r.file_static() {
        Some(f) if !f.starts_with('/') => Some((f, line)),
        _ => r.module_path_static().map(|m| (m, line)),
    }
}

/// Installs the logger. Call once, before the shards start.
pub fn init(settings: LogSettings) {
    let (tx, rx) = sync_channel(QUEUE);
    let filter = level_filter(&settings.level);
    let logger = Logger {
        level: filter,
        tx: Mutex::new(tx),
        dropped: AtomicU64::new(0),
    };
    if LOGGER.set(logger).is_err() {
        return;
    }
    std::thread::Builder::new()
        .name("log".into())
        .spawn(move || Writer::new(settings).run(rx))
        .expect("spawn the log thread");
    let _ = log::set_logger(LOGGER.get().unwrap());
    log::set_max_level(filter);
}

/// Asks the writer to reopen its file (SIGHUP).
pub fn reopen() {
    if let Some(l) = LOGGER.get() {
        let _ =
            l.tx.lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_send(Line::Reopen);
    }
}

/// Waits (at most a second) until every line logged so far is written: at exit, so the last
/// lines are not lost with the process.
pub fn flush() {
    let Some(l) = LOGGER.get() else { return };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let (ack, done) = sync_channel(1);
    let mut line = Line::Flush(ack);
    loop {
        match l
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_send(line)
        {
            Ok(()) => break,
            Err(TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                line = back;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
    let _ = done.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
}

/// The log thread's state: the open file and the syslog socket.
struct Writer {
    settings: LogSettings,
    out: Option<Box<dyn Write + Send>>,
    syslog: Option<Syslog>,
    buf: String,
}

impl Writer {
    fn new(settings: LogSettings) -> Writer {
        let out = open(&settings.target);
        let syslog = settings.syslog.clone().map(Syslog::new);
        Writer {
            settings,
            out,
            syslog,
            buf: String::new(),
        }
    }

    fn run(mut self, rx: Receiver<Line>) {
        while let Ok(line) = rx.recv() {
            match line {
                Line::Entry(e) => self.write(&e),
                Line::Reopen => {
                    self.out = open(&self.settings.target);
                    if let Some(s) = self.syslog.as_mut() {
                        s.connect();
                    }
                }
                Line::Flush(ack) => {
                    if let Some(w) = self.out.as_mut() {
                        let _ = w.flush();
                    }
                    let _ = ack.try_send(());
                }
            }
            if let Some(l) = LOGGER.get() {
                let n = l.dropped.swap(0, Ordering::Relaxed);
                if n > 0 {
                    self.write(&Entry {
                        time: SystemTime::now(),
                        level: Level::Warning,
                        thread: Thread::Main,
                        message: format!("{n} log lines dropped (log queue full)"),
                        source: None,
                    });
                }
            }
        }
    }

    fn write(&mut self, e: &Entry) {
        if let Some(w) = self.out.as_mut() {
            self.buf.clear();
            match self.settings.format {
                LogFormat::Gearmand => gearmand_line(&mut self.buf, e),
                LogFormat::Json => json_line(&mut self.buf, e),
            }
            self.buf.push('\n');
            let _ = w.write_all(self.buf.as_bytes());
        }
        if let Some(s) = self.syslog.as_mut() {
            self.buf.clear();
            gearmand_line(&mut self.buf, e);
            s.send(e.level, e.time, &self.buf);
        }
    }
}

fn open(target: &LogTarget) -> Option<Box<dyn Write + Send>> {
    match target {
        LogTarget::None => None,
        LogTarget::Stderr => Some(Box::new(std::io::stderr())),
        LogTarget::File(path) => match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Some(Box::new(f) as Box<dyn Write + Send>),
            Err(e) => {
                // As gearmand: a log file that cannot be opened falls back to stderr.
                eprintln!(
                    "gearshiftd: cannot open log file {}: {e}; logging to stderr",
                    path.display()
                );
                Some(Box::new(std::io::stderr()))
            }
        },
    }
}

/// gearmand's line, without the newline: `%7s` level, UTC time to the microsecond, thread,
/// message, and ` -> file:line` for every level but INFO.
fn gearmand_line(out: &mut String, e: &Entry) {
    let _ = write!(out, "{:>7} ", e.level.name());
    utc_time(out, e.time, ' ');
    match e.thread {
        Thread::Main => out.push_str(" [  main ] "),
        Thread::Store => out.push_str(" [ store ] "),
        Thread::Shard(i) => {
            let _ = write!(out, " [{:>6} ] ", u32::from(i) + 1);
        }
    }
    out.push_str(&e.message);
    if e.level != Level::Info
        && let Some((file, line)) = e.source
    {
        let _ = write!(out, " -> {file}:{line}");
    }
}

/// One JSON object: `time` (RFC 3339, UTC), `level`, `thread`, `shard` (shard threads only,
/// numbered from 0), `message`, and `source` (`file:line`) when known.
fn json_line(out: &mut String, e: &Entry) {
    out.push_str("{\"time\":\"");
    utc_time(out, e.time, 'T');
    out.push_str("Z\",\"level\":\"");
    out.push_str(e.level.name());
    out.push_str("\",\"thread\":\"");
    match e.thread {
        Thread::Main => out.push_str("main\""),
        Thread::Store => out.push_str("store\""),
        Thread::Shard(i) => {
            let _ = write!(out, "shard-{i}\",\"shard\":{i}");
        }
    }
    out.push_str(",\"message\":");
    json_string(out, &e.message);
    if let Some((file, line)) = e.source {
        out.push_str(",\"source\":");
        json_string(out, &format!("{file}:{line}"));
    }
    out.push('}');
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
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `YYYY-MM-DD<sep>HH:MM:SS.uuuuuu` in UTC.
fn utc_time(out: &mut String, t: SystemTime, sep: char) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{day:02}{sep}{:02}:{:02}:{:02}.{:06}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_micros()
    );
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The local syslog socket, written as glibc's `syslog()` writes it for gearmand's
/// `openlog("gearmand", LOG_PID | LOG_NDELAY, LOG_USER)`: one datagram a line,
/// `<PRI>Mmm dd hh:mm:ss gearmand[pid]: message`, with the time in local time (on a stream
/// socket, as glibc falls back to, each message ends with a NUL). Connected at start; when a
/// send fails (the syslog daemon restarted), connected again and sent once more; a line that
/// still cannot be sent is dropped, as glibc drops it.
struct Syslog {
    path: PathBuf,
    sock: Option<SyslogSocket>,
    pid: u32,
    buf: String,
}

enum SyslogSocket {
    Datagram(UnixDatagram),
    Stream(UnixStream),
}

/// LOG_USER.
const FACILITY_USER: u8 = 1 << 3;

impl Syslog {
    fn new(path: PathBuf) -> Syslog {
        let mut s = Syslog {
            path,
            sock: None,
            pid: std::process::id(),
            buf: String::new(),
        };
        s.connect();
        s
    }

    fn connect(&mut self) {
        let datagram = UnixDatagram::unbound().and_then(|s| s.connect(&self.path).map(|()| s));
        self.sock = match datagram {
            Ok(s) => Some(SyslogSocket::Datagram(s)),
            // A stream socket (EPROTOTYPE): glibc tries SOCK_STREAM next.
            Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => UnixStream::connect(&self.path)
                .and_then(|s| {
                    s.set_write_timeout(Some(std::time::Duration::from_secs(1)))?;
                    Ok(SyslogSocket::Stream(s))
                })
                .ok(),
            Err(_) => None,
        };
    }

    fn send_once(&mut self) -> bool {
        match self.sock.as_mut() {
            Some(SyslogSocket::Datagram(s)) => s.send(self.buf.as_bytes()).is_ok(),
            Some(SyslogSocket::Stream(s)) => s
                .write_all(self.buf.as_bytes())
                .and_then(|()| s.write_all(b"\0"))
                .is_ok(),
            None => false,
        }
    }

    fn send(&mut self, level: Level, time: SystemTime, message: &str) {
        self.buf.clear();
        let _ = write!(self.buf, "<{}>", FACILITY_USER | level.severity());
        syslog_time(&mut self.buf, time);
        let _ = write!(self.buf, " {SYSLOG_IDENT}[{}]: {message}", self.pid);
        if !self.send_once() {
            self.connect();
            self.send_once();
        }
    }
}

/// `Mmm dd hh:mm:ss` in local time (strftime's `%h %e %T`, as glibc's syslog writes it).
fn syslog_time(out: &mut String, t: SystemTime) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (mon, day, h, m, s) = crate::sys::local_time(secs).unwrap_or((0, 1, 0, 0, 0));
    let _ = write!(
        out,
        "{} {day:>2} {h:02}:{m:02}:{s:02}",
        MONTHS[mon as usize]
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros.into())
    }

    #[test]
    fn utc_times_are_gearmands() {
        let mut s = String::new();
        utc_time(&mut s, at(0, 0), ' ');
        assert_eq!(s, "1970-01-01 00:00:00.000000");
        s.clear();
        // 2026-12-02 08:50:00.918128 UTC
        utc_time(&mut s, at(1_796_201_400, 918_128), ' ');
        assert_eq!(s, "2026-12-02 08:50:00.918128");
        s.clear();
        // A leap day.
        utc_time(&mut s, at(951_782_400 + 3_599, 1), 'T');
        assert_eq!(s, "2000-02-29T00:59:59.000001");
    }

    #[test]
    fn lines_are_gearmands_and_json() {
        let e = Entry {
            time: at(1_796_201_400, 918_128),
            level: Level::Warning,
            thread: Thread::Shard(1),
            message: "a \"quoted\"\tline".into(),
            source: Some(("src/shard/mod.rs", 42)),
        };
        let mut s = String::new();
        gearmand_line(&mut s, &e);
        assert_eq!(
            s,
            "WARNING 2026-12-02 08:50:00.918128 [     2 ] a \"quoted\"\tline -> src/shard/mod.rs:42"
        );
        s.clear();
        json_line(&mut s, &e);
        assert_eq!(
            s,
            "{\"time\":\"2026-12-02T08:50:00.918128Z\",\"level\":\"WARNING\",\"thread\":\"shard-1\",\
             \"shard\":1,\"message\":\"a \\\"quoted\\\"\\tline\",\"source\":\"src/shard/mod.rs:42\"}"
        );
        let info = Entry {
            level: Level::Info,
            thread: Thread::Main,
            ..e
        };
        s.clear();
        gearmand_line(&mut s, &info);
        assert_eq!(
            s,
            "   INFO 2026-12-02 08:50:00.918128 [  main ] a \"quoted\"\tline"
        );
    }
}
