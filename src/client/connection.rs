//! One connection to a job server: a std TCP socket with a read buffer and a write buffer,
//! framed by the crate's own codec ([`crate::protocol`]). No Gearman semantics here.
//!
//! The socket is non-blocking while it sits in a [`mio::Poll`] (the client multiplexes many
//! servers, the worker sleeps on all of them at once) and is switched to blocking mode, with a
//! timeout taken from the caller's deadline, for the simple request/reply exchanges (a worker's
//! GRAB_JOB, an admin command, a job's WORK_DATA). Every wait is bounded by a deadline.
//!
//! Invariant: bytes in `rbuf[rstart..rend]` have been read from the socket (and decrypted)
//! but not yet decoded; bytes in `wbuf[wpos..]` have been encoded but not yet written (with
//! TLS, they move into the session as soon as a flush begins, and the session's records are
//! what waits). Owners that poll must service a connection (read until `WouldBlock`) before
//! blocking, because readiness is edge-triggered; a TLS read takes the session's decrypted
//! bytes before it touches the socket, so nothing is left behind in the session.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::protocol::{self, DecodeError, Decoded, Frame, Magic, PacketType};

use super::{Error, Tls};

/// Largest packet body accepted from a server (gearshiftd's default `--max-packet-size`).
pub(crate) const MAX_BODY: usize = 64 << 20;
/// Largest admin text line accepted from a server (a `workers` line lists every function).
pub(crate) const MAX_LINE: usize = 16 << 20;
/// Free space guaranteed before each `read` call (the buffer starts at this size).
const READ_CHUNK: usize = 16 * 1024;

/// A packet or text line received from a server, owning its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A binary packet.
    Packet(Reply),
    /// A text admin line, without its line end.
    Line(Vec<u8>),
}

/// An owned binary packet: its type and its arguments (the data, if any, last).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) ty: PacketType,
    pub(crate) args: Vec<Vec<u8>>,
}

impl Reply {
    /// Argument `i`, or an empty slice past the end.
    pub(crate) fn arg(&self, i: usize) -> &[u8] {
        self.args.get(i).map(|a| a.as_slice()).unwrap_or(&[])
    }

    /// Takes argument `i` out (leaving it empty).
    pub(crate) fn take(&mut self, i: usize) -> Vec<u8> {
        self.args.get_mut(i).map(std::mem::take).unwrap_or_default()
    }
}

/// The outcome of reading what a non-blocking socket has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Everything available was read (possibly nothing); the socket is still open.
    Open,
    /// The server closed the connection (after any bytes it sent, which are buffered).
    Closed,
}

/// A connection to one server.
pub(crate) struct Connection {
    stream: TcpStream,
    /// The TLS session, when the server is reached through TLS.
    tls: Option<Box<rustls::ClientConnection>>,
    /// The address as configured (`host:port`), for error messages.
    addr: String,
    /// Read buffer; its whole length is usable space (zeroed once, when it grows).
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Whether the socket is currently in blocking mode.
    blocking: bool,
}

/// Resolves `addr` and connects to the first address that answers within `timeout`.
fn connect_stream(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    let mut last = io::Error::new(ErrorKind::NotFound, "the name resolved to no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl Connection {
    /// Connects to `addr` (`host:port`) within `timeout`, and with `tls` completes a TLS
    /// handshake within it too (the server's certificate checked against the host). The socket
    /// starts in blocking mode with Nagle's algorithm off (every packet is a request or a reply
    /// someone waits for).
    pub(crate) fn connect(
        addr: &str,
        timeout: Duration,
        tls: Option<&Tls>,
    ) -> Result<Connection, Error> {
        let mut stream = connect_stream(addr, timeout).map_err(|e| Error::io(addr, e))?;
        stream.set_nodelay(true).map_err(|e| Error::io(addr, e))?;
        let tls = match tls {
            None => None,
            Some(tls) => Some(handshake(&mut stream, addr, tls, timeout)?),
        };
        Ok(Connection {
            stream,
            tls,
            addr: addr.to_string(),
            rbuf: Vec::new(),
            rstart: 0,
            rend: 0,
            wbuf: Vec::new(),
            wpos: 0,
            blocking: true,
        })
    }

    /// The server address this connection was made to, as configured.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Registers the socket with a poll (readable and writable, edge-triggered) and makes it
    /// non-blocking.
    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> Result<(), Error> {
        self.set_blocking(false)?;
        let fd = self.stream.as_raw_fd();
        registry
            .register(
                &mut SourceFd(&fd),
                token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| Error::io(&self.addr, e))
    }

    /// Removes the socket from a poll it was registered with.
    pub(crate) fn deregister(&mut self, registry: &Registry) {
        let fd = self.stream.as_raw_fd();
        let _ = registry.deregister(&mut SourceFd(&fd));
    }

    fn set_blocking(&mut self, blocking: bool) -> Result<(), Error> {
        if self.blocking != blocking {
            self.stream
                .set_nonblocking(!blocking)
                .map_err(|e| Error::io(&self.addr, e))?;
            self.blocking = blocking;
        }
        Ok(())
    }

    /// Appends a request packet to the write buffer (nothing is sent yet).
    pub(crate) fn queue(&mut self, ty: PacketType, args: &[&[u8]]) {
        protocol::encode_request(&mut self.wbuf, ty, args);
    }

    /// Appends a text admin line (a `\n` is added).
    pub(crate) fn queue_line(&mut self, line: &[u8]) {
        self.wbuf.extend_from_slice(line);
        self.wbuf.push(b'\n');
    }

    /// True when everything queued has been written.
    pub(crate) fn flushed(&self) -> bool {
        !self.unsent()
    }

    /// Whether bytes wait to be written: queued ones, or a TLS session's records.
    fn unsent(&self) -> bool {
        match &self.tls {
            None => self.wpos < self.wbuf.len(),
            Some(tls) => self.wpos < self.wbuf.len() || tls.wants_write(),
        }
    }

    /// With TLS, moves the queued bytes into the session, which encrypts them (its buffer is
    /// unlimited, as `wbuf` is).
    fn seal(&mut self) {
        if let Some(tls) = &mut self.tls
            && self.wpos < self.wbuf.len()
        {
            // Writing into the session's own buffer cannot fail.
            let _ = tls.writer().write_all(&self.wbuf[self.wpos..]);
            self.wbuf.clear();
            self.wpos = 0;
        }
    }

    /// One write of what waits: queued bytes, or the session's records.
    fn write_some(&mut self) -> io::Result<usize> {
        match &mut self.tls {
            None => {
                let n = self.stream.write(&self.wbuf[self.wpos..])?;
                self.wpos += n;
                Ok(n)
            }
            Some(tls) => tls.write_tls(&mut self.stream),
        }
    }

    /// Writes what the socket takes without blocking. Ok(true) when the buffer is empty.
    pub(crate) fn flush(&mut self) -> Result<bool, Error> {
        self.set_blocking(false)?;
        self.seal();
        while self.unsent() {
            match self.write_some() {
                Ok(0) => {
                    return Err(Error::io(
                        &self.addr,
                        io::Error::new(ErrorKind::WriteZero, "the server stopped reading"),
                    ));
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(&self.addr, e)),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Ok(true)
    }

    /// Writes everything queued, blocking until `deadline` at most.
    pub(crate) fn flush_blocking(&mut self, deadline: Instant) -> Result<(), Error> {
        if self.flush()? {
            return Ok(());
        }
        self.set_blocking(true)?;
        while self.unsent() {
            let left = remaining(deadline)?;
            self.stream
                .set_write_timeout(Some(left))
                .map_err(|e| Error::io(&self.addr, e))?;
            match self.write_some() {
                Ok(0) => {
                    return Err(Error::io(
                        &self.addr,
                        io::Error::new(ErrorKind::WriteZero, "the server stopped reading"),
                    ));
                }
                Ok(_) => {}
                Err(e) if is_timeout(&e) => return Err(Error::Timeout),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(&self.addr, e)),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Ok(())
    }

    /// Makes at least [`READ_CHUNK`] bytes of room after `rend`: moves unread bytes to the
    /// front when that frees enough, else grows the buffer (doubling).
    fn make_room(&mut self) {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        }
        if self.rbuf.len() - self.rend >= READ_CHUNK {
            return;
        }
        if self.rstart > 0 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        if self.rbuf.len() - self.rend < READ_CHUNK {
            let want = (self.rend + READ_CHUNK).max(self.rbuf.len() * 2);
            self.rbuf.resize(want, 0);
        }
    }

    /// One `read` into the buffer. Ok(None) on EOF, Ok(Some(0)) on `WouldBlock`.
    fn read_once(&mut self) -> io::Result<Option<usize>> {
        self.make_room();
        let buf = &mut self.rbuf[self.rend..];
        let r = match &mut self.tls {
            None => self.stream.read(buf),
            Some(tls) => tls_read(tls, &mut self.stream, buf),
        };
        match r {
            Ok(0) => Ok(None),
            Ok(n) => {
                self.rend += n;
                Ok(Some(n))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(Some(0)),
            Err(e) => Err(e),
        }
    }

    /// Reads everything the socket has without blocking.
    pub(crate) fn fill(&mut self) -> Result<Fill, Error> {
        self.set_blocking(false)?;
        loop {
            match self.read_once() {
                Ok(None) => return Ok(Fill::Closed),
                Ok(Some(0)) => return Ok(Fill::Open),
                Ok(Some(_)) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(&self.addr, e)),
            }
        }
    }

    /// Decodes the next whole packet or line from the read buffer, if one is there.
    pub(crate) fn next(&mut self) -> Result<Option<Incoming>, Error> {
        let buf = &self.rbuf[self.rstart..self.rend];
        let decoded = protocol::decode(buf, MAX_BODY, MAX_LINE).map_err(|e| {
            let text = match e {
                DecodeError::BadMagic => "bad magic in a packet from the server".to_string(),
                other => format!("undecodable input from the server: {other:?}"),
            };
            Error::protocol(&self.addr, text)
        })?;
        let (incoming, used) = match decoded {
            Decoded::Incomplete { .. } => return Ok(None),
            Decoded::Frame(Frame::Line(l), used) => (Incoming::Line(l.to_vec()), used),
            Decoded::Frame(Frame::Packet(p), used) => {
                if p.magic != Magic::Response {
                    return Err(Error::protocol(
                        &self.addr,
                        format!("{} packet with request magic from the server", p.ty.name()),
                    ));
                }
                let args = p.args().iter().map(|a| a.to_vec()).collect();
                (Incoming::Packet(Reply { ty: p.ty, args }), used)
            }
        };
        self.rstart += used;
        Ok(Some(incoming))
    }

    /// Waits (blocking, until `deadline`) for the next packet or line. EOF is an I/O error
    /// (`UnexpectedEof`), since a caller waiting for a reply did not get it.
    pub(crate) fn recv(&mut self, deadline: Instant) -> Result<Incoming, Error> {
        loop {
            if let Some(i) = self.next()? {
                return Ok(i);
            }
            let left = remaining(deadline)?;
            self.set_blocking(true)?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| Error::io(&self.addr, e))?;
            match self.read_once() {
                Ok(None) => {
                    return Err(Error::io(
                        &self.addr,
                        io::Error::new(
                            ErrorKind::UnexpectedEof,
                            "the server closed the connection",
                        ),
                    ));
                }
                Ok(Some(_)) => {}
                Err(e) if is_timeout(&e) => return Err(Error::Timeout),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(&self.addr, e)),
            }
        }
    }

    /// Sends everything queued (if anything) and waits for the next packet or line, all by
    /// `deadline`.
    pub(crate) fn request(&mut self, deadline: Instant) -> Result<Incoming, Error> {
        self.flush_blocking(deadline)?;
        self.recv(deadline)
    }
}

/// Time left until `deadline`, or [`Error::Timeout`] when it has passed.
pub(crate) fn remaining(deadline: Instant) -> Result<Duration, Error> {
    let now = Instant::now();
    if now >= deadline {
        return Err(Error::Timeout);
    }
    // A zero timeout means "none" to the socket API; never pass one.
    Ok((deadline - now).max(Duration::from_millis(1)))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// `now + d`, saturating far in the future instead of overflowing.
pub(crate) fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Runs a TLS handshake on a blocking socket, within `timeout`.
fn handshake(
    stream: &mut TcpStream,
    addr: &str,
    tls: &Tls,
    timeout: Duration,
) -> Result<Box<rustls::ClientConnection>, Error> {
    let name = crate::tls::server_name(addr).map_err(|e| Error::Config(format!("{addr}: {e}")))?;
    let mut session = rustls::ClientConnection::new(tls.config.clone(), name)
        .map_err(|e| Error::Config(format!("{addr}: TLS: {e}")))?;
    session.set_buffer_limit(None);
    let io_err = |e: io::Error| {
        if is_timeout(&e) {
            Error::Timeout
        } else {
            Error::io(
                addr,
                io::Error::new(e.kind(), format!("TLS handshake: {e}")),
            )
        }
    };
    let deadline = deadline_after(timeout);
    while session.is_handshaking() {
        let left = remaining(deadline)?;
        stream.set_read_timeout(Some(left)).map_err(io_err)?;
        stream.set_write_timeout(Some(left)).map_err(io_err)?;
        session.complete_io(stream).map_err(io_err)?;
    }
    Ok(Box::new(session))
}

/// Reads decrypted bytes into `buf`: those the session holds first, then from the socket.
/// `Ok(0)` is the end of the stream (close_notify or not); a TLS failure is `InvalidData`.
fn tls_read(
    tls: &mut rustls::ClientConnection,
    stream: &mut TcpStream,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        if tls.read_tls(stream)? == 0 {
            return Ok(0);
        }
        if let Err(e) = tls.process_new_packets() {
            // Send the alert the session prepared, then fail.
            let _ = tls.write_tls(stream);
            return Err(io::Error::new(ErrorKind::InvalidData, format!("TLS: {e}")));
        }
    }
}
