//! A connection on its home shard: socket, buffers, the ordered output, and the client and
//! worker state that lives at home (what the owners need is sent to them).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use smallvec::SmallVec;

use super::tls::TlsState;
use crate::acl::Grant;
use crate::message::{ConnId, DIRECT, Seq, ShardId};

/// A function this connection can do, as registered with CAN_DO.
pub struct Ability {
    /// Function name.
    pub function: Box<[u8]>,
    /// Its owner shard.
    pub owner: ShardId,
}

/// How a connection is to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// Open.
    No,
    /// Send what is buffered (an ERROR, say), then close; read nothing more.
    AfterFlush,
    /// Close at the end of this loop turn.
    Now,
}

/// A slot in the ordered output: an answer still to come, or bytes waiting behind one.
enum Slot {
    Waiting,
    Ready(Vec<u8>),
}

/// The connection's output, in request order.
///
/// Replies from owner shards can arrive in any order (different owners answer at different
/// times), but a Gearman client matches JOB_CREATED to its submissions by order. So a request
/// that another shard answers [`reserve`](Output::reserve)s a slot, and answers leave in slot
/// order. Bytes nobody asked for (a forwarded WORK_DATA, a NOOP) go after every answer that
/// has already arrived (the owner that sent them may have sent one of those first: JOB_CREATED
/// before the job's WORK_DATA) but ahead of answers still to come, which were sent later if
/// at all. With nothing outstanding (always, with one shard) bytes go straight to the write
/// buffer.
#[derive(Default)]
pub struct Output {
    /// Bytes ready to write; `buf[sent..]` is still unwritten.
    pub buf: Vec<u8>,
    sent: usize,
    /// On an io_uring shard: bytes handed to the kernel in a send that has not yet reported
    /// them written (the buffer itself is the ring's until then).
    in_flight: usize,
    /// On an io_uring shard: the buffer of the last finished send, kept to take the place of
    /// `buf` when the next send takes it.
    spare: Vec<u8>,
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`.
    first: Seq,
    /// Sequence number the next reserved slot gets.
    next: Seq,
}

impl Output {
    /// Whether nothing is outstanding, so an answer computed in this turn can be written as is.
    pub fn in_order(&self) -> bool {
        self.slots.is_empty()
    }

    /// A place for an answer that will come later.
    pub fn reserve(&mut self) -> Seq {
        if self.slots.is_empty() {
            self.first = self.next;
        }
        self.slots.push_back(Slot::Waiting);
        self.next += 1;
        self.next - 1
    }

    /// Queues an answer computed now, after every answer asked for before it.
    pub fn emit(&mut self, bytes: &[u8]) {
        if self.slots.is_empty() {
            self.buf.extend_from_slice(bytes);
        } else {
            self.slots.push_back(Slot::Ready(bytes.to_vec()));
            self.next += 1;
        }
    }

    /// Queues unrequested bytes after every answer that has arrived (see the type's docs).
    pub fn emit_unrequested(&mut self, bytes: &[u8]) {
        let last_ready = self.slots.iter_mut().rev().find_map(|s| match s {
            Slot::Ready(b) => Some(b),
            Slot::Waiting => None,
        });
        match last_ready {
            Some(b) => b.extend_from_slice(bytes),
            // Only answers still to come are outstanding: these bytes go first.
            None => self.buf.extend_from_slice(bytes),
        }
    }

    /// Fills a reserved slot (or writes, for [`DIRECT`]) and releases what is now in order.
    pub fn fill(&mut self, seq: Seq, bytes: Box<[u8]>) {
        if seq == DIRECT {
            return self.emit(&bytes);
        }
        let Some(i) = seq.checked_sub(self.first) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(i as usize) else {
            return;
        };
        *slot = Slot::Ready(bytes.into_vec());
        while let Some(Slot::Ready(_)) = self.slots.front() {
            if let Some(Slot::Ready(b)) = self.slots.pop_front() {
                self.buf.extend_from_slice(&b);
            }
            self.first += 1;
        }
    }

    /// Bytes in the buffer (or a send in flight) not yet written (queued slots not counted).
    pub fn unsent(&self) -> usize {
        self.buf.len() - self.sent + self.in_flight
    }

    /// Bytes not yet written, counting queued slots.
    pub fn backlog(&self) -> usize {
        self.unsent()
            + self
                .slots
                .iter()
                .map(|s| match s {
                    Slot::Ready(b) => b.len(),
                    Slot::Waiting => 0,
                })
                .sum::<usize>()
    }

    /// Whether there are bytes to write (or being written) now.
    pub fn has_bytes(&self) -> bool {
        self.sent < self.buf.len() || self.in_flight > 0
    }

    /// On an io_uring shard: the bytes to send now, as a buffer for the ring to own until
    /// the send finishes; None while a send is in flight or with nothing to send.
    pub fn take_for_send(&mut self) -> Option<Vec<u8>> {
        if self.in_flight > 0 || self.sent >= self.buf.len() {
            return None;
        }
        let mut bytes = std::mem::replace(&mut self.buf, std::mem::take(&mut self.spare));
        bytes.drain(..std::mem::take(&mut self.sent));
        self.in_flight = bytes.len();
        Some(bytes)
    }

    /// On an io_uring shard: `n` bytes of the send in flight went out.
    pub fn sent_some(&mut self, n: usize) {
        self.in_flight = self.in_flight.saturating_sub(n);
    }

    /// On an io_uring shard: the send finished (all of it written, or failed); its buffer
    /// comes back for the next one.
    pub fn send_finished(&mut self, mut bytes: Vec<u8>) {
        self.in_flight = 0;
        bytes.clear();
        // As in `written`: a buffer a burst grew is not kept.
        if bytes.capacity() <= 1 << 20 {
            self.spare = bytes;
        }
    }

    /// Writes as much as the socket takes. `Ok(true)` when everything went out.
    pub fn flush(&mut self, socket: &mut TcpStream) -> io::Result<bool> {
        while self.sent < self.buf.len() {
            match socket.write(&self.buf[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.written();
        Ok(true)
    }

    /// Like [`flush`](Output::flush), through a TLS session.
    pub fn flush_tls(&mut self, tls: &mut TlsState, socket: &mut TcpStream) -> io::Result<bool> {
        if !tls.flush(&self.buf, &mut self.sent, socket)? {
            return Ok(false);
        }
        self.written();
        Ok(true)
    }

    /// Everything in the buffer went out.
    fn written(&mut self) {
        self.buf.clear();
        self.sent = 0;
        // Give back a buffer that a burst grew, so idle connections stay small.
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
    }
}

/// A worker's sleep, as its home sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sleep {
    /// No PRE_SLEEP since its last GRAB (or ever).
    Awake,
    /// PRE_SLEEP seen, no NOOP sent since.
    Asleep,
    /// PRE_SLEEP seen and a NOOP sent since: further wake-ups send nothing until it grabs.
    Woken,
}

impl Sleep {
    /// Whether a PRE_SLEEP came after its last GRAB.
    pub fn is_asleep(self) -> bool {
        self != Sleep::Awake
    }
}

/// A worker's CAN_DO_TIMEOUT timer (one per connection, as gearmand's), as its home sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// No function registered with a CAN_DO_TIMEOUT.
    Untimed,
    /// A function registered with one; the last job assigned, whose owner holds the timer.
    Timed(Option<u64>),
}

/// One connection.
pub struct Conn {
    /// Its address across the server.
    pub id: ConnId,
    /// The socket.
    pub socket: TcpStream,
    /// On an io_uring shard, its slot there (see `uring`); None on epoll, and for TLS, HTTP
    /// and metrics connections, which stay on epoll.
    pub io: Option<u32>,
    /// File descriptor, shown by `workers`.
    pub fd: i32,
    /// Peer IP, shown by `workers`.
    pub ip: String,
    /// Bytes of an incomplete frame carried over to the next read (usually empty: complete
    /// frames are dispatched straight from the shard's read buffer).
    pub partial: Vec<u8>,
    /// Length of the frame `partial` starts, when its header said so.
    pub partial_need: usize,
    /// Bytes of `partial` drawn from the server-wide input budget (a frame larger than the
    /// shard's read buffer draws its whole buffer).
    pub partial_charged: usize,
    /// This connection holds the server's one overdraft on the input budget until its large
    /// frame is complete (see `Control::overdraft_taken`).
    pub overdraft: bool,
    /// Shards (a bit each) this connection's packets have sent messages to: while one of them
    /// is congested, the connection is not read.
    pub feeds: u64,
    /// Not read until the shards it feeds are congested no more (or, mid-way through a large
    /// frame, until the input budget has room).
    pub paused: bool,
    /// Output in request order.
    pub out: Output,
    /// Whether the connection is on the shard's flush list.
    pub flush_queued: bool,
    /// Whether the socket may have more to read than the last turn took.
    pub read_again: bool,
    /// How the connection ends.
    pub closing: Closing,
    /// OPTION_REQ "exceptions" (or `--exceptions`).
    pub exceptions: bool,
    /// SET_CLIENT_ID, `-` by default.
    pub client_id: Box<[u8]>,
    /// Foreground jobs this client waits on (handle numbers).
    pub waiting: Vec<u64>,
    /// CAN_DO entries in registration order.
    pub abilities: Vec<Ability>,
    /// Owners that may hold registrations or jobs of this worker (bit per shard).
    pub owners: u64,
    /// Jobs assigned to this worker and not finished (handle numbers).
    pub held: SmallVec<[u64; 2]>,
    /// Whether the worker sleeps (PRE_SLEEP), and whether a NOOP woke it.
    pub sleep: Sleep,
    /// The owner that served the last grab; the next grab starts after it.
    pub last_owner: ShardId,
    /// The owner the grab in progress is asking now (whose `Empty` comes back).
    pub asking: ShardId,
    /// Owners (a bit each) that answered this worker's last grab from them with nothing,
    /// and have not NOOPed or assigned it a job since: asked last (a hint, never a skip).
    pub empty: u64,
    /// Owners (a bit each) that woke this worker (a NOOP it took) and have not been asked
    /// since: asked first, so the job the wake was for is taken by the worker it woke.
    pub woken_by: u64,
    /// Whether its home was decided (see `Shard::handoff_target`).
    pub placed: bool,
    /// Its one CAN_DO_TIMEOUT timer, as its home tracks it.
    pub timer: Timer,
    /// The TLS session of a connection to a TLS port.
    pub tls: Option<Box<TlsState>>,
    /// With an ACL, what the connection's identity may do (None: nothing).
    pub grant: Option<Arc<Grant>>,
    /// The peer's address may administer (`--admin-allow`).
    pub admin_addr: bool,
    /// A connection to the HTTP port: its request and the reply's progress.
    pub http: Option<Box<super::http::HttpState>>,
    /// A connection to the metrics port: `Some(false)` while its request is read,
    /// `Some(true)` once answered (or refused).
    pub metrics: Option<bool>,
}

impl Conn {
    /// A fresh connection.
    pub fn new(id: ConnId, socket: TcpStream, fd: i32, ip: String, exceptions: bool) -> Conn {
        Conn {
            id,
            socket,
            io: None,
            fd,
            ip,
            partial: Vec::new(),
            partial_need: 0,
            partial_charged: 0,
            overdraft: false,
            feeds: 0,
            paused: false,
            out: Output::default(),
            flush_queued: false,
            read_again: false,
            closing: Closing::No,
            exceptions,
            client_id: b"-"[..].into(),
            waiting: Vec::new(),
            abilities: Vec::new(),
            owners: 0,
            held: SmallVec::new(),
            sleep: Sleep::Awake,
            last_owner: 0,
            asking: 0,
            empty: 0,
            woken_by: 0,
            placed: false,
            timer: Timer::Untimed,
            tls: None,
            grant: None,
            admin_addr: false,
            http: None,
            metrics: None,
        }
    }

    /// Writes what the output has, through the TLS session if there is one.
    pub fn flush(&mut self) -> io::Result<bool> {
        match &mut self.tls {
            None => self.out.flush(&mut self.socket),
            Some(tls) => self.out.flush_tls(tls, &mut self.socket),
        }
    }

    /// Whether bytes wait to be written (output, or a TLS session's records).
    pub fn has_output(&self) -> bool {
        self.out.has_bytes() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Whether the peer may administer: by address, or by an ACL grant.
    pub fn may_administer(&self) -> bool {
        self.admin_addr || self.grant.as_ref().is_some_and(|g| g.admin)
    }

    /// The distinct owners of this worker's functions in the order a grab asks them: owners
    /// that woke the worker and have not been asked since, then owners not known to be empty,
    /// then those that answered its last grab from them with nothing; within each, `home` (the
    /// shard the connection lives on, asked without a ring hop) first, then the others newest
    /// registration first, rotated to start after the owner that served the last grab.
    pub fn grab_order(&self, home: ShardId) -> SmallVec<[ShardId; 4]> {
        let mut owners: SmallVec<[ShardId; 4]> = SmallVec::new();
        for a in self.abilities.iter().rev() {
            if !owners.contains(&a.owner) {
                owners.push(a.owner);
            }
        }
        if let Some(i) = owners.iter().position(|&o| o == self.last_owner) {
            let len = owners.len();
            owners.rotate_left((i + 1) % len);
        }
        // Stable: the rotation stays within each class.
        owners.sort_by_key(|&o| {
            let class = match (self.woken_by & (1 << o) != 0, self.empty & (1 << o) != 0) {
                (true, _) => 0,
                (false, false) => 1,
                (false, true) => 2,
            };
            (class, o != home)
        });
        owners
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_come_out_in_request_order() {
        let mut out = Output::default();
        out.emit(b"a");
        let s1 = out.reserve();
        let s2 = out.reserve();
        // Nothing has arrived yet, so unrequested bytes go straight out.
        out.emit_unrequested(b"N");
        out.fill(s2, b"c"[..].into());
        // Unrequested bytes follow the answer that arrived (c), not the one still awaited...
        out.emit_unrequested(b"d");
        // ...and an answer computed now follows everything asked for before it.
        out.emit(b"e");
        assert_eq!(out.buf, b"aN");
        out.fill(s1, b"b"[..].into());
        assert_eq!(out.buf, b"aNbcde");
        assert!(out.in_order());
        out.fill(DIRECT, b"+"[..].into());
        assert_eq!(out.buf, b"aNbcde+");
        let s3 = out.reserve();
        out.fill(s3, b"f"[..].into());
        assert_eq!(out.buf, b"aNbcde+f");
    }

    #[test]
    fn a_send_in_flight_counts_as_output_until_it_finishes() {
        let mut out = Output::default();
        assert!(out.take_for_send().is_none(), "nothing to send");
        out.emit(b"abcdef");
        let first = out.take_for_send().expect("bytes to send");
        assert_eq!(first, b"abcdef");
        // What comes meanwhile waits for the send in flight, and all of it is backlog.
        out.emit(b"gh");
        assert!(out.take_for_send().is_none(), "one send at a time");
        assert_eq!((out.unsent(), out.backlog()), (8, 8));
        out.sent_some(4);
        assert!(out.has_bytes());
        assert_eq!(out.unsent(), 4);
        out.sent_some(2);
        out.send_finished(first);
        assert_eq!(out.unsent(), 2);
        let second = out.take_for_send().expect("the bytes that waited");
        assert_eq!(second, b"gh");
        out.sent_some(2);
        out.send_finished(second);
        assert!(!out.has_bytes());
        assert_eq!(out.backlog(), 0);
    }
}
