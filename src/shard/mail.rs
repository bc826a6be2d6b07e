//! What travels through a shard's rings: the typed messages of [`crate::message`], and the
//! event loop's own business of moving connections between shards (a socket just accepted,
//! or a connection handed off to the shard that owns its function), which nothing outside
//! `shard` sees.

use crate::message::{ToHome, ToOwner};

/// One message in a ring (or on a shard's local queue).
#[derive(Debug)]
pub enum Mail {
    /// For the owner role.
    Owner(ToOwner),
    /// For the home role.
    Home(ToHome),
    /// A new connection for this shard to serve (from the accepting shard).
    Adopt(Box<Adopt>),
    /// A connection handed off by its first home to the owner of the function its first
    /// CAN_DO or SUBMIT named (see `Home::handoff_target`), with the input not yet handled.
    HandOff(Box<HandOff>),
}

/// A connection just accepted, with its peer's address.
#[derive(Debug)]
pub struct Adopt {
    /// The socket.
    pub stream: mio::net::TcpStream,
    /// The peer, as accept() gave it.
    pub addr: std::net::SocketAddr,
    /// Accepted on a TLS port: the home starts a TLS session.
    pub tls: bool,
    /// Accepted on the HTTP port.
    pub http: bool,
    /// Accepted on the metrics port.
    pub metrics: bool,
}

/// A connection moving between homes. It holds no jobs, registrations, replies or output, so
/// nothing anywhere refers to its old `ConnId`.
pub struct HandOff {
    /// The connection as its first home had it; the new home gives it a new id.
    pub conn: super::conn::Conn,
    /// Bytes read but not yet handled, starting with the packet that caused the move.
    pub pending: Vec<u8>,
}

impl std::fmt::Debug for HandOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandOff")
            .field("fd", &self.conn.fd)
            .field("pending", &self.pending.len())
            .finish()
    }
}
