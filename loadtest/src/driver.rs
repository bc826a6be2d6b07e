//! The event loop: one mio poll carrying every connection of a run (clients, workers, idle
//! connections, echo clients), on one thread.
//!
//! The harness shares the machine with the server it measures, so the loop is built to spend
//! as few system calls as it can per job:
//! - writes are batched: handlers append packets to a connection's output buffer and mark it
//!   dirty; the buffers are written once per loop turn, after every event of the turn was
//!   handled (so 32 JOB_CREATED read in one go become one write of 32 submits);
//! - a read that returns less than the free space drained the socket, so no second read is made
//!   to see `EAGAIN` (on Linux, epoll's edge-triggered mode reports every new arrival);
//! - one clock read per turn, shared by every timestamp taken in it.
//! - timed wake-ups (an open loop's due times, [`Logic::ticks`]) come from one periodic timer
//!   fd in the same poll, not from the poll's timeout, which counts whole milliseconds.
//!
//! The scenario logic sits behind [`Logic`]; it gets every decoded frame with the connection it
//! came on and may write to any connection through [`Net::out`].
//!
//! With a TLS configuration every connection makes a (blocking) handshake when it opens; its
//! reads then go through the session until the socket would block, and its output is
//! encrypted into the session and written from there.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gearshift::protocol::{self, Decoded, Frame};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

/// Largest packet body accepted from a server (the same default limit as the server's).
const MAX_BODY: usize = 64 << 20;
/// Largest text line accepted.
const MAX_LINE: usize = 8192;
/// Read buffer of a connection that carries load.
pub const BUSY_BUF: usize = 64 << 10;
/// Read buffer of a connection that is held idle (10,000 of them should cost little).
pub const IDLE_BUF: usize = 256;

/// One connection: socket, input buffer (`rbuf[rstart..rend]` unread), output buffer
/// (`wbuf[wpos..]` unwritten).
struct Conn {
    stream: TcpStream,
    /// The TLS session, when the run speaks TLS.
    tls: Option<Box<rustls::ClientConnection>>,
    /// Input storage; its whole length is usable (zeroed once when grown, never per read).
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    /// On the dirty list for this turn.
    dirty: bool,
    /// Closed by [`Net::close`] (or after a failure): no more reads, writes or events; the
    /// socket is dropped at the end of the turn, so its id is not reused within the turn.
    closed: bool,
    /// The last write hit `EAGAIN`: wait for a writable event before writing again.
    blocked: bool,
}

/// What a scenario does with the frames the loop reads.
pub trait Logic {
    /// One decoded frame that came on connection `id`. An error ends the run.
    fn on_frame(&mut self, net: &mut Net, id: usize, frame: &Frame<'_>) -> Result<(), String>;
    /// Whether the run (or the current phase of it) has reached its goal.
    fn is_done(&self) -> bool;
    /// (done, total) for the progress line.
    fn progress(&self) -> (u64, u64);
    /// Connection `id` failed or was closed by the peer (`why` says how). By default that
    /// ends the run; a scenario that expects connections to die (soak) carries on.
    fn on_closed(&mut self, _net: &mut Net, _id: usize, why: String) -> Result<(), String> {
        Err(why)
    }
    /// Called once per loop turn, after the turn's events (at least every 100 ms): timers.
    fn on_tick(&mut self, _net: &mut Net) -> Result<(), String> {
        Ok(())
    }
    /// More to show at the end of the progress line (say, the server's memory).
    fn progress_note(&self) -> String {
        String::new()
    }
    /// A turn at `first` and every `period` after, although nothing arrives (an open loop's
    /// due times), while this says so: a periodic timer fd, so to the microsecond (the poll's
    /// own timeout counts whole milliseconds), at the cost of one read per expiry.
    fn ticks(&self) -> Option<(Instant, Duration)> {
        None
    }
}

/// Why [`Net::run`] stopped before the goal.
#[derive(Debug)]
pub enum Stop {
    /// The deadline passed.
    Timeout,
    /// A connection failed or the logic reported an error.
    Error(String),
}

/// The progress line on stderr: rewritten in place on a terminal, a line every 5 s otherwise,
/// nothing for runs shorter than a second.
pub struct Progress {
    label: String,
    enabled: bool,
    tty: bool,
    start: Instant,
    last: Instant,
    last_done: u64,
    shown: bool,
}

impl Progress {
    /// A progress line for one run phase.
    pub fn new(label: String, enabled: bool) -> Progress {
        use std::io::IsTerminal;
        let now = Instant::now();
        Progress {
            label,
            enabled,
            tty: io::stderr().is_terminal(),
            start: now,
            last: now,
            last_done: 0,
            shown: false,
        }
    }

    fn tick(&mut self, now: Instant, done: u64, total: u64, note: &dyn Fn() -> String) {
        if !self.enabled || now.duration_since(self.start) < Duration::from_secs(1) {
            return;
        }
        let every = if self.tty {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        let dt = now.duration_since(self.last);
        if dt < every {
            return;
        }
        let rate = (done.saturating_sub(self.last_done)) as f64 / dt.as_secs_f64();
        let pct = if total > 0 {
            100.0 * done as f64 / total as f64
        } else {
            0.0
        };
        let line = format!(
            "{}: {done}/{total} ({pct:.0}%), {:.0}/s, {:.0} s{}",
            self.label,
            rate,
            now.duration_since(self.start).as_secs_f64(),
            note()
        );
        if self.tty {
            eprint!("\r\x1b[K{line}");
        } else {
            eprintln!("{line}");
        }
        self.shown = true;
        self.last = now;
        self.last_done = done;
    }

    fn finish(&mut self) {
        if self.shown && self.tty {
            eprint!("\r\x1b[K");
        }
        self.shown = false;
    }
}

/// The poll, the connections, and the list of connections with output to write this turn.
pub struct Net {
    poll: Poll,
    events: Events,
    conns: Slab<Conn>,
    dirty: Vec<usize>,
    ready: Vec<(usize, bool, bool)>,
    /// Connections closed this turn, dropped at its end.
    closing: Vec<usize>,
    /// Connections whose write failed this turn: (id, error), handed to the logic.
    failed: Vec<(usize, String)>,
    /// Where output for a closed connection goes.
    sink: Vec<u8>,
    /// The time of the current turn (read once after each poll).
    pub now: Instant,
    /// TLS for every connection opened, if the target speaks it.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The timer behind [`Logic::ticks`], made at its first use.
    timer: Option<Timer>,
}

/// Token of the timer fd (never a connection's: those are slab keys).
const TIMER: Token = Token(usize::MAX);

/// A periodic timer fd in the poll, for wake-ups finer than the poll's millisecond timeout.
/// It is read when it fires: a periodic timer fd starts its next period only then (expiries
/// missed meanwhile are skipped, not queued).
struct Timer {
    fd: std::os::fd::OwnedFd,
    /// What it is armed with.
    armed: Option<(Instant, Duration)>,
}

impl Timer {
    fn new(poll: &Poll) -> io::Result<Timer> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: plain system call; the fd it returns is owned from here on.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        poll.registry().register(
            &mut mio::unix::SourceFd(&fd.as_raw_fd()),
            TIMER,
            Interest::READABLE,
        )?;
        Ok(Timer { fd, armed: None })
    }

    /// Arms the timer to fire at `first` and every `period` after, or disarms it (`None`).
    /// The first expiry is set relative to the time of the call: never early, late by the
    /// few microseconds the call takes.
    fn set(&mut self, want: Option<(Instant, Duration)>) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        if self.armed == want {
            return Ok(());
        }
        let ts = |d: Duration| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        let (value, interval) = match want {
            // A zero value disarms.
            None => (Duration::ZERO, Duration::ZERO),
            Some((first, period)) => (
                first
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_nanos(1)),
                period,
            ),
        };
        let spec = libc::itimerspec {
            it_interval: ts(interval),
            it_value: ts(value),
        };
        // SAFETY: a valid timer fd and a valid itimerspec.
        let r =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed = want;
        Ok(())
    }

    /// Takes the expiries (which starts the next period).
    fn read(&self) {
        use std::os::fd::AsRawFd;
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into a u64; a failure (nothing expired) is harmless.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut n as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

impl Net {
    /// An empty loop; with `tls`, connections speak TLS.
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> io::Result<Net> {
        Ok(Net {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            conns: Slab::new(),
            dirty: Vec::new(),
            ready: Vec::new(),
            closing: Vec::new(),
            failed: Vec::new(),
            sink: Vec::new(),
            now: Instant::now(),
            tls,
            timer: None,
        })
    }

    /// Opens a connection and returns its id (ids are dense: 0, 1, 2, ... in opening order).
    ///
    /// The connect itself is blocking: on loopback it completes at once when the server's
    /// accept queue has room, and it keeps the loop free of half-open states. Callers that open
    /// thousands keep the number not yet accepted below the server's backlog.
    pub fn connect(&mut self, addr: SocketAddr, rbuf: usize) -> io::Result<usize> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        let tls = match &self.tls {
            None => None,
            Some(config) => Some(handshake(&mut s, addr, config.clone())?),
        };
        s.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(s);
        let entry = self.conns.vacant_entry();
        let id = entry.key();
        self.poll.registry().register(
            &mut stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Conn {
            stream,
            tls,
            rbuf: vec![0; rbuf],
            rstart: 0,
            rend: 0,
            wbuf: Vec::new(),
            wpos: 0,
            dirty: false,
            blocked: false,
            closed: false,
        });
        Ok(id)
    }

    /// Closes connection `id` at once, as a process that dies would: unwritten output is
    /// dropped, unread input too (so the kernel may reset the connection). Its id stays taken
    /// until the end of the turn; closing twice is harmless.
    pub fn close(&mut self, id: usize) {
        if let Some(c) = self.conns.get_mut(id)
            && !c.closed
        {
            c.closed = true;
            let _ = self.poll.registry().deregister(&mut c.stream);
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
            self.closing.push(id);
        }
    }

    /// Whether connection `id` is open.
    pub fn is_open(&self, id: usize) -> bool {
        self.conns.get(id).is_some_and(|c| !c.closed)
    }

    /// Bytes queued for connection `id` and not yet handed to its socket.
    pub fn unwritten(&self, id: usize) -> usize {
        self.conns.get(id).map_or(0, |c| c.wbuf.len() - c.wpos)
    }

    /// Drops the sockets closed this turn.
    fn reap(&mut self) {
        for id in self.closing.drain(..) {
            self.conns.remove(id);
        }
    }

    /// The output buffer of connection `id`, to append packets to; it is written at the end of
    /// the turn. Output for a connection that is closed (or gone) goes nowhere.
    pub fn out(&mut self, id: usize) -> &mut Vec<u8> {
        let Some(c) = self.conns.get_mut(id).filter(|c| !c.closed) else {
            self.sink.clear();
            return &mut self.sink;
        };
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(id);
        }
        &mut c.wbuf
    }

    /// Runs the loop until `logic.is_done()`, the deadline, or an error. Output already queued
    /// is written first.
    pub fn run<L: Logic>(
        &mut self,
        logic: &mut L,
        deadline: Instant,
        progress: &mut Progress,
    ) -> Result<(), Stop> {
        self.now = Instant::now();
        let mut r = self.run_inner(logic, deadline, progress);
        progress.finish();
        // No ticks into whatever runs next on this loop.
        if let Some(t) = &mut self.timer
            && let Err(e) = t.set(None)
            && r.is_ok()
        {
            r = Err(Stop::Error(format!("timer: {e}")));
        }
        r
    }

    fn run_inner<L: Logic>(
        &mut self,
        logic: &mut L,
        deadline: Instant,
        progress: &mut Progress,
    ) -> Result<(), Stop> {
        loop {
            self.flush();
            while let Some((id, why)) = self.failed.pop() {
                self.close(id);
                logic.on_closed(self, id, why).map_err(Stop::Error)?;
            }
            self.reap();
            if logic.is_done() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Stop::Timeout);
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            let ticks = logic.ticks();
            if ticks.is_some() && self.timer.is_none() {
                let t = Timer::new(&self.poll).map_err(|e| Stop::Error(format!("timer: {e}")))?;
                self.timer = Some(t);
            }
            if let Some(t) = &mut self.timer {
                t.set(ticks)
                    .map_err(|e| Stop::Error(format!("timer: {e}")))?;
            }
            if let Err(e) = self.poll.poll(&mut self.events, Some(wait)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Stop::Error(format!("poll: {e}")));
            }
            self.now = Instant::now();
            let mut ready = std::mem::take(&mut self.ready);
            ready.clear();
            ready.extend(self.events.iter().map(|e| {
                (
                    e.token().0,
                    e.is_readable() || e.is_read_closed() || e.is_error(),
                    e.is_writable(),
                )
            }));
            for &(id, readable, writable) in &ready {
                if id == TIMER.0 {
                    if let Some(t) = &self.timer {
                        t.read();
                    }
                    continue;
                }
                if !self.is_open(id) {
                    continue;
                }
                if writable && self.conns[id].blocked {
                    self.conns[id].blocked = false;
                    if !self.conns[id].dirty {
                        self.conns[id].dirty = true;
                        self.dirty.push(id);
                    }
                }
                if readable && let Err(e) = self.read(id, logic) {
                    self.ready = ready;
                    return Err(Stop::Error(e));
                }
            }
            self.ready = ready;
            logic.on_tick(self).map_err(Stop::Error)?;
            let (done, total) = logic.progress();
            progress.tick(self.now, done, total, &|| logic.progress_note());
        }
    }

    /// Reads what connection `id` has and hands every whole frame to the logic. A connection
    /// that ends or fails goes to [`Logic::on_closed`].
    fn read<L: Logic>(&mut self, id: usize, logic: &mut L) -> Result<(), String> {
        loop {
            let c = &mut self.conns[id];
            if c.closed {
                return Ok(());
            }
            if c.rend == c.rbuf.len() {
                if c.rstart > 0 {
                    c.rbuf.copy_within(c.rstart..c.rend, 0);
                    c.rend -= c.rstart;
                    c.rstart = 0;
                } else {
                    let n = (c.rbuf.len() * 2).max(BUSY_BUF);
                    c.rbuf.resize(n, 0);
                }
            }
            let space = c.rbuf.len() - c.rend;
            let buf = &mut c.rbuf[c.rend..];
            let r = match &mut c.tls {
                None => c.stream.read(buf),
                Some(tls) => tls_read(tls, &mut c.stream, buf),
            };
            let n = match r {
                Ok(0) => {
                    self.close(id);
                    return logic.on_closed(
                        self,
                        id,
                        format!("connection {id} closed by the server"),
                    );
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.close(id);
                    return logic.on_closed(self, id, format!("connection {id}: read: {e}"));
                }
            };
            c.rend += n;
            self.frames(id, logic)?;
            if n < space && self.conns[id].tls.is_none() {
                // The socket is drained; the next arrival raises a new edge. (Through TLS,
                // plaintext and ciphertext lengths differ: read until the socket would block.)
                return Ok(());
            }
        }
    }

    /// Decodes and dispatches the whole frames in connection `id`'s input. The buffer is taken
    /// out of the connection meanwhile, so the logic can write to any connection (this one too).
    fn frames<L: Logic>(&mut self, id: usize, logic: &mut L) -> Result<(), String> {
        let c = &mut self.conns[id];
        let buf = std::mem::take(&mut c.rbuf);
        let (mut start, end) = (c.rstart, c.rend);
        let mut result = Ok(());
        while start < end {
            match protocol::decode(&buf[start..end], MAX_BODY, MAX_LINE) {
                Ok(Decoded::Frame(frame, used)) => {
                    start += used;
                    if let Err(e) = logic.on_frame(self, id, &frame) {
                        result = Err(e);
                        break;
                    }
                    if self.conns[id].closed {
                        break;
                    }
                }
                Ok(Decoded::Incomplete { .. }) => break,
                Err(e) => {
                    result = Err(format!("connection {id}: undecodable input: {e:?}"));
                    break;
                }
            }
        }
        let c = &mut self.conns[id];
        c.rbuf = buf;
        if start == end {
            c.rstart = 0;
            c.rend = 0;
        } else {
            c.rstart = start;
        }
        result
    }

    /// Writes every dirty connection's output; a failed write puts the connection on
    /// `failed` for the logic to hear of.
    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            c.dirty = false;
            if c.blocked || c.closed {
                continue;
            }
            if let Some(tls) = &mut c.tls
                && c.wpos < c.wbuf.len()
            {
                // The session's buffer is unlimited, as `wbuf` is.
                let _ = tls.writer().write_all(&c.wbuf[c.wpos..]);
                c.wpos = c.wbuf.len();
            }
            loop {
                let r = match &mut c.tls {
                    None if c.wpos < c.wbuf.len() => c.stream.write(&c.wbuf[c.wpos..]),
                    Some(tls) if tls.wants_write() => tls.write_tls(&mut c.stream),
                    _ => break,
                };
                match r {
                    Ok(n) if c.tls.is_none() => c.wpos += n,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        c.blocked = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.failed
                            .push((id, format!("connection {id}: write: {e}")));
                        break;
                    }
                }
            }
            if c.wpos == c.wbuf.len() {
                c.wbuf.clear();
                c.wpos = 0;
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }
}

/// A TLS handshake on a blocking socket (the name checked is the address: test certificates
/// carry 127.0.0.1).
fn handshake(
    s: &mut std::net::TcpStream,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<Box<rustls::ClientConnection>> {
    let name = rustls::pki_types::ServerName::from(addr.ip());
    let mut tls = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
    tls.set_buffer_limit(None);
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    while tls.is_handshaking() {
        tls.complete_io(s)?;
    }
    s.set_read_timeout(None)?;
    Ok(Box::new(tls))
}

/// Reads decrypted bytes: those the session holds, else from the socket (`WouldBlock` when it
/// has none); `Ok(0)` at the end of the stream.
fn tls_read(
    tls: &mut rustls::ClientConnection,
    stream: &mut TcpStream,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        if tls.read_tls(stream)? == 0 {
            return Ok(0);
        }
        tls.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records which connections the loop reported closed; done at the first.
    #[derive(Default)]
    struct Closes(Vec<usize>);

    impl Logic for Closes {
        fn on_frame(&mut self, _: &mut Net, id: usize, _: &Frame<'_>) -> Result<(), String> {
            Err(format!("no frame expected on {id}"))
        }
        fn is_done(&self) -> bool {
            !self.0.is_empty()
        }
        fn progress(&self) -> (u64, u64) {
            (0, 0)
        }
        fn on_closed(&mut self, _: &mut Net, id: usize, _: String) -> Result<(), String> {
            self.0.push(id);
            Ok(())
        }
    }

    #[test]
    fn a_peer_close_reaches_the_logic_and_closed_connections_take_output_quietly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut net = Net::new(None).unwrap();
        let a = net.connect(addr, IDLE_BUF).unwrap();
        let b = net.connect(addr, IDLE_BUF).unwrap();
        let (peer_a, _) = listener.accept().unwrap();
        let (_peer_b, _) = listener.accept().unwrap();
        net.close(b);
        assert!(!net.is_open(b) && net.is_open(a));
        net.out(b).extend_from_slice(b"dropped");
        drop(peer_a);
        let mut closes = Closes::default();
        let deadline = Instant::now() + Duration::from_secs(5);
        net.run(
            &mut closes,
            deadline,
            &mut Progress::new(String::new(), false),
        )
        .unwrap();
        // Only the peer's close is reported, not ours.
        assert_eq!(closes.0, vec![a]);
        // Both are gone now; output for them still goes nowhere.
        net.out(a).push(0);
        net.out(b).push(0);
        assert_eq!(net.unwritten(a), 0);
    }
}
