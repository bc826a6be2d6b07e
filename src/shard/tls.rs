//! A TLS connection's session, driven without blocking inside the shard loop.
//!
//! Reading: ciphertext is read from the socket into the shard's wire buffer (one system call
//! for up to 64 KiB, where rustls alone would read 4 KiB at a time), fed to the session and
//! decrypted straight into the buffer the plain path reads into, so frames are parsed in place
//! exactly as on a plain connection. At most as many ciphertext bytes are read as the plaintext
//! room offered, so everything decrypted fits; rustls keeps only an incomplete record.
//!
//! Writing: the connection's ordered output is encrypted into the session in pieces (rustls
//! holds at most 64 KiB of ciphertext) and written from there.
//!
//! During the handshake a session holds at most one handshake message (rustls caps it at
//! 64 KiB) and the shard closes it if it is not done within `--ssl-handshake-timeout`.

use std::io::{self, Read, Write};

use mio::net::TcpStream;
use rustls::ServerConnection;

/// The ciphertext read per system call.
pub const WIRE_CHUNK: usize = 64 * 1024;

/// A connection's TLS session and what the shard knows of it.
pub struct TlsState {
    /// The rustls session.
    pub session: ServerConnection,
    /// The handshake finished and the connection's identity was taken.
    pub established: bool,
    /// The common name of the client's certificate, once established (mutual TLS).
    pub identity: Option<Box<str>>,
    /// The peer's end of the TCP stream was read.
    eof: bool,
    /// Whether any byte arrived: a handshake that fails on its first bytes is most often a
    /// client speaking plain text to a TLS port, which the log line says.
    seen_bytes: bool,
}

/// A TLS failure, for the log line that closes the connection.
pub struct TlsError {
    /// What went wrong.
    pub message: String,
}

impl TlsState {
    /// A session for a freshly accepted connection.
    pub fn new(session: ServerConnection) -> TlsState {
        TlsState {
            session,
            established: false,
            identity: None,
            eof: false,
            seen_bytes: false,
        }
    }

    /// Reads plaintext into `out`: `Ok(n > 0)` bytes; `Ok(0)` the peer closed (close_notify or
    /// end of stream); `Err(WouldBlock)` nothing more for now. A TLS failure is an error of
    /// kind `InvalidData` whose text says what happened. After it, the session may have an
    /// alert to send ([`TlsState::wants_write`]).
    pub fn read(
        &mut self,
        socket: &mut TcpStream,
        wire: &mut [u8],
        out: &mut [u8],
    ) -> io::Result<usize> {
        let (mut got, closed) = self.take_plaintext(out);
        if got > 0 {
            return Ok(got);
        }
        loop {
            if closed || self.eof {
                return Ok(0);
            }
            let want = out.len().min(wire.len());
            let n = loop {
                match socket.read(&mut wire[..want]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            if n == 0 {
                self.eof = true;
                return Ok(0);
            }
            let first = !self.seen_bytes;
            self.seen_bytes = true;
            let mut rest = &wire[..n];
            while !rest.is_empty() {
                self.session.read_tls(&mut rest)?;
                if let Err(e) = self.session.process_new_packets() {
                    let hint = if first && wire[0] != 0x16 {
                        " (the peer does not speak TLS: plain text to a TLS port?)"
                    } else {
                        ""
                    };
                    let stage = if self.established {
                        "TLS error"
                    } else {
                        "TLS handshake failed"
                    };
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{stage}: {e}{hint}"),
                    ));
                }
                let (n, closed) = self.take_plaintext(&mut out[got..]);
                got += n;
                if closed {
                    self.eof = true;
                }
            }
            if got > 0 {
                return Ok(got);
            }
            // Only handshake records (or part of a record): the socket may have more.
        }
    }

    /// Moves decrypted bytes into `out`: (bytes, whether the peer sent close_notify).
    fn take_plaintext(&mut self, out: &mut [u8]) -> (usize, bool) {
        if out.is_empty() {
            return (0, false);
        }
        match self.session.reader().read(out) {
            Ok(0) => (0, true),
            Ok(n) => (n, false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, false),
            // UnexpectedEof: the stream ended without close_notify.
            Err(_) => (0, true),
        }
    }

    /// Whether the session has ciphertext to send (handshake messages, alerts, records).
    pub fn wants_write(&self) -> bool {
        self.session.wants_write()
    }

    /// Encrypts `buf[*sent..]` and writes it, advancing `sent` past what the session took.
    /// `Ok(true)` once every byte and every record went out; `Ok(false)` when the socket is
    /// full.
    pub fn flush(
        &mut self,
        buf: &[u8],
        sent: &mut usize,
        socket: &mut TcpStream,
    ) -> io::Result<bool> {
        loop {
            while self.session.wants_write() {
                match self.session.write_tls(socket) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if *sent == buf.len() {
                return Ok(true);
            }
            // Bounded by the session's 64 KiB of ciphertext; what it does not take now is
            // offered again once that is written.
            let n = self.session.writer().write(&buf[*sent..])?;
            if n == 0 {
                // Nothing taken while nothing is due: the handshake has not finished (no
                // output is made before it does, so this is not expected).
                return Ok(false);
            }
            *sent += n;
        }
    }

    /// Says goodbye (close_notify), best effort, before the socket is closed.
    pub fn close(&mut self, socket: &mut TcpStream) {
        if self.established {
            self.session.send_close_notify();
        }
        for _ in 0..4 {
            if !self.session.wants_write() || self.session.write_tls(socket).is_err() {
                break;
            }
        }
    }

    /// The common name of the peer's certificate, once the handshake is done.
    pub fn peer_identity(&self) -> Option<String> {
        let certs = self.session.peer_certificates()?;
        crate::tls::common_name(certs.first()?)
    }
}

impl super::Home {
    /// After a read through connection `key`'s TLS session: closes it on a TLS failure (with
    /// one log line), queues the records the session wants to send (handshake, alerts), and
    /// takes the connection's identity when the handshake has just finished, before any of
    /// its plaintext is handled. Returns whether reading may go on.
    pub(super) fn tls_progress(&mut self, key: usize, read: &io::Result<usize>) -> bool {
        let conn = &mut self.conns[key];
        let Some(tls) = conn.tls.as_mut() else {
            return true;
        };
        if let Err(e) = read
            && e.kind() == io::ErrorKind::InvalidData
        {
            log::warn!("closing connection {} ({}): {e}", conn.fd, conn.ip);
            conn.closing = super::Closing::Now;
            self.closing.push(key);
            return false;
        }
        if !tls.established && !tls.session.is_handshaking() {
            tls.established = true;
            tls.identity = tls.peer_identity().map(Into::into);
            if let Some(acl) = &self.config.acl {
                conn.grant = tls.identity.as_deref().and_then(|id| acl.grant(id));
            }
            log::info!(
                "connection {} ({}): TLS established{}{}",
                conn.fd,
                conn.ip,
                match &tls.identity {
                    Some(id) => format!(", identity {id}"),
                    None => String::new(),
                },
                match (&self.config.acl, &conn.grant) {
                    (Some(_), None) => ", not in the ACL",
                    _ => "",
                }
            );
        }
        if tls.wants_write() {
            self.queue_flush(key);
        }
        true
    }

    /// Closes the connections whose TLS handshake ran past its deadline.
    pub(super) fn expire_handshakes(&mut self) {
        let now = std::time::Instant::now();
        while let Some(id) = super::pop_due(&mut self.handshakes, now) {
            let Some(key) = self.conn_key(id) else {
                continue;
            };
            let conn = &mut self.conns[key];
            if conn.closing == super::Closing::No
                && conn.tls.as_ref().is_some_and(|t| !t.established)
            {
                log::warn!(
                    "closing connection {} ({}): TLS handshake not done within {:?}",
                    conn.fd,
                    conn.ip,
                    self.config.handshake_timeout
                );
                conn.closing = super::Closing::Now;
                self.closing.push(key);
            }
        }
    }
}
