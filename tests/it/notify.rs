//! systemd's readiness protocol (`Type=notify`): gearshiftd started with `$NOTIFY_SOCKET`
//! naming a Unix datagram socket sends `READY=1` there once its port accepts connections,
//! `RELOADING=1` then `READY=1` around SIGHUP, and `STOPPING=1` when a signal stops it; under
//! it, `--daemon` does not fork. gearmand 1.1.20 speaks none of this, so these tests are
//! gearshiftd's alone.

use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::*;

/// The datagrams a test's notify socket received, read with a timeout.
struct NotifySocket {
    socket: UnixDatagram,
}

impl NotifySocket {
    /// Binds a socket at a path in `dir`; returns it and the `$NOTIFY_SOCKET` value.
    fn at_path(dir: &TempDir) -> (NotifySocket, String) {
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        (NotifySocket { socket }, path.display().to_string())
    }

    /// Binds a socket in Linux's abstract namespace; returns it and `@name`.
    fn abstract_name() -> (NotifySocket, String) {
        use std::os::linux::net::SocketAddrExt;
        let name = unique_name("notify");
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).expect("bind the abstract notify socket");
        (NotifySocket { socket }, format!("@{name}"))
    }

    /// The next datagram, or None after `limit`.
    fn recv(&self, limit: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("recv on the notify socket: {e}"),
        }
    }

    /// The next datagram, which must come within 10 s.
    fn expect(&self) -> String {
        self.recv(Duration::from_secs(10))
            .expect("no notification within 10 s")
    }
}

/// A gearshiftd started by a test, killed on drop (a failed assertion leaves nothing
/// running): the process started, and the one its pid file names if that differs (a server
/// that wrongly forked under `--daemon`).
struct Running {
    child: Child,
    pid_file: std::path::PathBuf,
}

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file)
            && let Ok(pid) = pid.trim().parse::<u32>()
            && pid != self.child.id()
        {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

/// Starts gearshiftd on `port` with `$NOTIFY_SOCKET` set to `notify`, logging to stderr in
/// `dir`, without waiting for anything.
fn spawn(dir: &TempDir, notify: &str, port: u16, extra: &[&str]) -> Running {
    let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let pid_file = dir.path().join("pid");
    let child = Command::new(gearshiftd_bin())
        .args([
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            "--log-file=stderr",
            "--threads=2",
            &format!("--pid-file={}", pid_file.display()),
        ])
        .args(extra)
        .env("NOTIFY_SOCKET", notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("run gearshiftd");
    Running { child, pid_file }
}

/// Sends `sig` (a name for kill(1)) to `pid`.
fn kill(sig: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Waits (at most 10 s) for `child` to exit and returns its code.
fn wait_exit(child: &mut Running) -> Option<i32> {
    for _ in 0..1000 {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    panic!("gearshiftd did not exit within 10 s");
}

#[test]
fn ready_comes_once_the_port_accepts_then_reloading_and_stopping() {
    if skip_under_gearmand("systemd notifications of gearshiftd") {
        return;
    }
    let dir = TempDir::new("notify");
    let (notify, name) = NotifySocket::at_path(&dir);
    let port = free_port();
    // Debian's default PARAMS carry --daemon: under $NOTIFY_SOCKET it must not fork, so the
    // process started is the one that serves (and the one systemd watches).
    let mut child = spawn(&dir, &name, port, &["--daemon"]);
    let ready = notify.expect();
    // The port accepts at the moment READY=1 is read: it was sent after the bind.
    let conn = TcpStream::connect(("127.0.0.1", port));
    assert!(
        conn.is_ok(),
        "READY=1 came before the port accepted: {conn:?}"
    );
    let lines: Vec<&str> = ready.lines().collect();
    assert_eq!(lines[0], "READY=1", "{ready:?}");
    assert!(
        lines.contains(&format!("MAINPID={}", child.id()).as_str()),
        "the main pid is the process started (no fork under --daemon): {ready:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("STATUS=listening on [127.0.0.1:")),
        "{ready:?}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the process started still runs"
    );
    let mut c = Conn::connect(format!("127.0.0.1:{port}").parse().unwrap());
    assert!(c.admin("version").starts_with("OK "));
    assert_eq!(c.admin("getpid"), format!("OK {}\n", child.id()));

    // SIGHUP (the unit's ExecReload): RELOADING=1 with its time, then READY=1 again.
    kill("HUP", child.id());
    let reloading = notify.expect();
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading:?}");
    let usec = lines.next().and_then(|l| l.strip_prefix("MONOTONIC_USEC="));
    assert!(
        usec.is_some_and(|u| u.parse::<u64>().is_ok_and(|u| u > 0)),
        "{reloading:?}"
    );
    assert_eq!(notify.expect(), "READY=1");
    assert!(c.admin("version").starts_with("OK "), "still serving");

    // SIGUSR1 (the unit's KillSignal): STOPPING=1, then a clean exit once no jobs remain.
    kill("USR1", child.id());
    assert_eq!(notify.expect(), "STOPPING=1");
    assert_eq!(wait_exit(&mut child), Some(0));
    assert_eq!(notify.recv(Duration::from_millis(100)), None);
}

#[test]
fn ready_goes_to_an_abstract_socket_and_sigterm_says_stopping() {
    if skip_under_gearmand("systemd notifications of gearshiftd") {
        return;
    }
    let dir = TempDir::new("notify-abstract");
    let (notify, name) = NotifySocket::abstract_name();
    let port = free_port();
    let mut child = spawn(&dir, &name, port, &[]);
    let ready = notify.expect();
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    kill("TERM", child.id());
    assert_eq!(notify.expect(), "STOPPING=1");
    assert_eq!(wait_exit(&mut child), Some(0));
}

#[test]
fn a_start_that_fails_never_says_ready() {
    if skip_under_gearmand("systemd notifications of gearshiftd") {
        return;
    }
    let dir = TempDir::new("notify-fail");
    let (notify, name) = NotifySocket::at_path(&dir);
    // The port is taken and --bind-timeout=0 gives up at once: exit 1, and no READY=1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut child = spawn(&dir, &name, port, &["--bind-timeout=0"]);
    assert_eq!(wait_exit(&mut child), Some(1));
    assert_eq!(notify.recv(Duration::from_millis(200)), None);
}
