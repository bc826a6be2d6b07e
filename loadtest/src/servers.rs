//! Starting and stopping the servers under test (`--compare`, or no `--addr`): gearshiftd and
//! gearmand on free loopback ports, one fresh process per run, so every run starts from the
//! same empty server and memory figures are not blurred by earlier runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which server program a target runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// gearshiftd (prints its port with `--port=0`).
    Gearshiftd,
    /// The C gearmand.
    Gearmand,
}

/// A server the harness can start: program, flags, and the name it has in reports.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// Name in tables, e.g. `gearshiftd-t1`.
    pub name: String,
    /// Which program.
    pub kind: Kind,
    /// Path of the program.
    pub path: PathBuf,
    /// Value of `--threads`.
    pub threads: u32,
    /// More flags, as given with `--server-arg`.
    pub extra: Vec<String>,
    /// The client side of `--tls`: harness connections to this server speak TLS.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// A started server.
pub struct Running {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its process id (CPU and memory are read from /proc/PID).
    pub pid: u32,
    pid_file: PathBuf,
    stderr: Arc<Mutex<Vec<u8>>>,
}

const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps the last 16 KiB a server wrote to stderr, for error messages.
fn drain_stderr(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let keep = Arc::new(Mutex::new(Vec::new()));
    let k = keep.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut v = k.lock().unwrap();
            v.extend_from_slice(&buf[..n]);
            if v.len() > 16 << 10 {
                let cut = v.len() - (16 << 10);
                v.drain(..cut);
            }
        }
    });
    keep
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ServerSpec {
    /// Starts the server and waits until it answers.
    pub fn start(&self) -> Result<Running, String> {
        self.start_on(None, START_TIMEOUT)
    }

    /// Starts the server on `port` (a free one if `None`) and waits up to `limit` until it
    /// answers: a restart after `kill -9` reuses the port, and may first replay a store.
    pub fn start_on(&self, fixed: Option<u16>, limit: Duration) -> Result<Running, String> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid_file = std::env::temp_dir().join(format!(
            "loadtest-{}-{}-{n}.pid",
            std::process::id(),
            self.name
        ));
        let mut cmd = Command::new(&self.path);
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        let port = match self.kind {
            Kind::Gearshiftd if fixed.is_none() => {
                cmd.args([
                    "--listen=127.0.0.1".to_string(),
                    "--port=0".to_string(),
                    format!("--threads={}", self.threads),
                    "--log-file=none".to_string(),
                    format!("--pid-file={}", pid_file.display()),
                ]);
                cmd.stdout(Stdio::piped());
                None
            }
            Kind::Gearshiftd | Kind::Gearmand => {
                let port = match fixed {
                    Some(p) => p,
                    None => free_port().map_err(|e| format!("no free port: {e}"))?,
                };
                cmd.args([
                    "--listen=127.0.0.1".to_string(),
                    format!("--port={port}"),
                    format!("--threads={}", self.threads),
                    "--log-file=none".to_string(),
                    format!("--pid-file={}", pid_file.display()),
                ]);
                cmd.stdout(Stdio::null());
                Some(port)
            }
        };
        cmd.args(&self.extra);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.path.display()))?;
        let stderr = drain_stderr(child.stderr.take().unwrap());
        let pid = child.id();
        let addr = match port {
            // gearshiftd prints `listening on ADDR` once ready; the reader thread then keeps
            // draining stdout so the server never writes into a full or closed pipe.
            None => {
                let out = child.stdout.take().unwrap();
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let mut lines = BufReader::new(out).lines();
                    let mut tx = Some(tx);
                    for line in lines.by_ref().map_while(Result::ok) {
                        if let Some(a) = line.strip_prefix("listening on ")
                            && let Some(tx) = tx.take()
                        {
                            let _ = tx.send(a.trim().to_string());
                        }
                    }
                });
                match rx.recv_timeout(limit) {
                    Ok(a) => a.parse().map_err(|e| format!("bad address {a:?}: {e}")),
                    Err(_) => Err("no `listening on` line".to_string()),
                }
            }
            // gearmand, or a fixed port: connect and ask `version` until a line comes back.
            Some(port) => {
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                let t0 = Instant::now();
                loop {
                    if version_answers(addr) {
                        break Ok(addr);
                    }
                    if t0.elapsed() > limit {
                        break Err("no answer to `version`".to_string());
                    }
                    if let Ok(Some(st)) = child.try_wait() {
                        break Err(format!("exited at start: {st}"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let mut running = Running {
            child,
            addr: ([127, 0, 0, 1], 0).into(),
            pid,
            pid_file,
            stderr,
        };
        match addr {
            Ok(a) => {
                running.addr = a;
                Ok(running)
            }
            Err(e) => {
                let msg = format!(
                    "{} did not start: {e}; stderr: {}",
                    self.name,
                    running.stderr_text()
                );
                let _ = running.stop();
                Err(msg)
            }
        }
    }
}

fn version_answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"version\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.ends_with('\n')
}

impl Running {
    /// What the server wrote to stderr (the last 16 KiB).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap())
            .trim()
            .to_string()
    }

    /// `Some(status)` if the server has exited (it should not have during a run).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            _ => None,
        }
    }

    /// Kills the server with SIGKILL (as a crash would) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.pid_file);
    }

    /// Stops the server with SIGTERM, then SIGKILL after 5 s. Returns a note when something
    /// was odd (it had already exited, or needed SIGKILL).
    pub fn stop(&mut self) -> Option<String> {
        let note = if let Some(st) = self.exited() {
            Some(format!("had exited before it was stopped ({st})"))
        } else {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status();
            let t0 = Instant::now();
            loop {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break None;
                }
                if t0.elapsed() > Duration::from_secs(5) {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break Some("did not exit within 5 s of SIGTERM; killed".to_string());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let _ = std::fs::remove_file(&self.pid_file);
        note
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
