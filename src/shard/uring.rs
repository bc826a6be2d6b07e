//! The io_uring side of a shard's loop (`--event-loop io-uring`).
//!
//! With epoll, each packet in or out costs the shard a system call of its own (recvfrom,
//! sendto), and each sleep one more (epoll_wait). Here the Gearman connections' reads and
//! writes are queued on a ring and the whole turn's worth goes to the kernel, with the wait
//! for the next turn, in one `io_uring_enter`:
//!
//! - each connection has one receive outstanding, which takes a buffer from a pool the kernel
//!   picks from (provided buffers), so an idle connection ties up no memory; its bytes are
//!   copied out and the buffer handed back before the next completion is looked at;
//! - each connection has at most one send outstanding, of a buffer the ring owns until the
//!   kernel is done with it (a short send is sent on from where it stopped);
//! - everything else (listeners, the mailbox's waker, TLS, HTTP and metrics connections) stays
//!   on the shard's `mio::Poll`, whose epoll descriptor the ring watches: when it turns
//!   readable the loop polls it without waiting.
//!
//! A receive is armed only while its connection may be read, so holding a connection back
//! (backpressure, the input budget) is simply not arming it again. This module owns every
//! buffer the kernel may touch; nothing outside it needs `unsafe`.

use std::alloc::{self, Layout};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;

/// Submission queue entries.
const ENTRIES: u32 = 4096;
/// Completion queue entries: room for a receive and a send of 16,384 connections before the
/// kernel has to hold completions back (it does not drop them: the loop checks the ring has
/// `IORING_FEAT_NODROP`).
const COMPLETIONS: u32 = 32 * 1024;
/// Provided read buffers per shard (a power of two), and the size of each: 4 MiB a shard.
const BUFFERS: u16 = 256;
/// The most one completed receive can bring.
pub const BUFFER_SIZE: usize = 16 * 1024;
/// The provided-buffer group id.
const GROUP: u16 = 0;

/// `user_data` of the poll on the epoll descriptor, and of cancellations.
const EPOLL: u64 = u64::MAX;
const CANCEL: u64 = u64::MAX - 1;
/// Low bit of a connection operation's `user_data`: receive or send (the rest is its slot).
const RECV: u64 = 0;
const SEND: u64 = 1;

/// A completion the shard acts on.
pub enum Done {
    /// The epoll descriptor is readable: poll it without waiting.
    Epoll,
    /// A receive of connection `conn` ended: with `Ok(n)` bytes in `buffer` (0: the peer
    /// closed), or an error. The buffer goes back with [`Uring::recycle`].
    Recv {
        conn: usize,
        result: io::Result<usize>,
        buffer: Option<u16>,
    },
    /// A send of connection `conn` moved `result` bytes; `finished` gives its buffer back once
    /// all of it went out (a short send goes on by itself).
    Send {
        conn: usize,
        result: io::Result<usize>,
        finished: Option<Vec<u8>>,
    },
}

/// The operations in flight for one connection (or for one that has gone, until the kernel
/// lets go of its buffer).
struct Slot {
    /// Its key in the shard's slab; None once it left (closed or handed off).
    conn: Option<usize>,
    fd: RawFd,
    recv: bool,
    /// The buffer being sent, and how much of it went out; the kernel reads `send.0[send.1..]`.
    send: Option<(Vec<u8>, usize)>,
}

/// A shard's ring, its read buffers, and the operations in flight.
pub struct Uring {
    // Dropped first: the ring must be gone before the memory it was given is freed (and
    // `Drop` waits for every operation before that).
    ring: IoUring,
    pool: BufferPool,
    slots: Slab<Slot>,
    /// The poll on the epoll descriptor is armed.
    epoll_armed: bool,
    /// Shutting down: nothing is armed again.
    closing: bool,
    epoll_fd: RawFd,
    /// Completions read off the ring, before they are acted on (the ring is borrowed while
    /// they are read).
    raw: Vec<(u64, i32, u32)>,
}

impl Uring {
    /// A ring for one shard, watching `epoll_fd` (its `mio::Poll`). Fails where io_uring is
    /// missing, refused (seccomp, `kernel.io_uring_disabled`) or too old (before 6.1).
    pub fn new(epoll_fd: RawFd) -> io::Result<Uring> {
        let ring = IoUring::builder()
            .setup_cqsize(COMPLETIONS)
            .setup_submit_all()
            .setup_single_issuer()
            // Completions are made only inside the shard's own `io_uring_enter`, never by
            // interrupting it: one batch a turn.
            .setup_defer_taskrun()
            .build(ENTRIES)?;
        if !ring.params().is_feature_nodrop() || !ring.params().is_feature_fast_poll() {
            return Err(io::Error::other("the kernel's io_uring is too old"));
        }
        let pool = BufferPool::new(&ring)?;
        let mut uring = Uring {
            ring,
            pool,
            slots: Slab::new(),
            epoll_armed: false,
            closing: false,
            epoll_fd,
            raw: Vec::new(),
        };
        uring.arm_epoll()?;
        Ok(uring)
    }

    /// Whether this machine can run an io_uring shard.
    pub fn probe() -> io::Result<()> {
        let poll = mio::Poll::new()?;
        use std::os::fd::AsRawFd;
        Uring::new(poll.as_raw_fd()).map(drop)
    }

    fn arm_epoll(&mut self) -> io::Result<()> {
        let entry = opcode::PollAdd::new(types::Fd(self.epoll_fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(EPOLL);
        self.push(&entry)?;
        self.epoll_armed = true;
        Ok(())
    }

    /// Starts tracking connection `conn` (slab key) on socket `fd`; returns its slot.
    pub fn attach(&mut self, conn: usize, fd: RawFd) -> u32 {
        self.slots.insert(Slot {
            conn: Some(conn),
            fd,
            recv: false,
            send: None,
        }) as u32
    }

    /// The connection left (closed or handed off): its receive is cancelled, and the slot is
    /// freed once the kernel has let go of everything. Call before the socket is closed.
    pub fn detach(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.conn = None;
        // An operation in flight holds the socket: closing the descriptor would not close the
        // connection until it ends. A receive may wait for ever; so may a send to a peer that
        // reads nothing (the one way a connection closes with a send in flight).
        let in_flight = [(RECV, s.recv), (SEND, s.send.is_some())];
        for (kind, _) in in_flight.into_iter().filter(|&(_, busy)| busy) {
            let cancel = opcode::AsyncCancel::new(user_data(slot, kind))
                .build()
                .user_data(CANCEL);
            if let Err(e) = self.push(&cancel) {
                log::error!("io_uring: cannot cancel an operation: {e}");
            }
        }
        // Entries name sockets by descriptor number, resolved only when the kernel takes them.
        // Once the caller closes the socket, any thread may get the same number for a new
        // connection, and a receive or send still queued here would act on that one. So the
        // queue goes to the kernel now, while the number is still this socket's.
        self.submit();
        self.release(slot);
    }

    fn release(&mut self, slot: u32) {
        let s = &self.slots[slot as usize];
        if s.conn.is_none() && !s.recv && s.send.is_none() {
            self.slots.remove(slot as usize);
        }
    }

    /// Whether a receive is outstanding.
    pub fn receiving(&self, slot: u32) -> bool {
        self.slots[slot as usize].recv
    }

    /// Arms a receive, unless one is outstanding.
    pub fn recv(&mut self, slot: u32) -> io::Result<()> {
        let s = &self.slots[slot as usize];
        if s.recv {
            return Ok(());
        }
        let entry = opcode::Recv::new(types::Fd(s.fd), std::ptr::null_mut(), BUFFER_SIZE as u32)
            .buf_group(GROUP)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(user_data(slot, RECV));
        self.push(&entry)?;
        self.slots[slot as usize].recv = true;
        Ok(())
    }

    /// Whether a send is outstanding.
    pub fn sending(&self, slot: u32) -> bool {
        self.slots[slot as usize].send.is_some()
    }

    /// Hands the queued entries to the kernel now (each names its socket by a number that is
    /// only safe to use while that socket is open).
    pub fn submit(&mut self) {
        if !self.ring.submission().is_empty()
            && let Err(e) = self.ring.submit()
        {
            log::error!("io_uring: cannot submit: {e}");
        }
    }

    /// Whether any send is in flight.
    pub fn any_sending(&self) -> bool {
        self.slots
            .iter()
            .any(|(_, s)| s.conn.is_some() && s.send.is_some())
    }

    /// Sends `buf` (not empty), which the ring keeps until all of it went out. One send at a
    /// time: the caller waits for the last one's `finished`.
    pub fn send(&mut self, slot: u32, buf: Vec<u8>) -> io::Result<()> {
        debug_assert!(!buf.is_empty() && self.slots[slot as usize].send.is_none());
        self.slots[slot as usize].send = Some((buf, 0));
        let pushed = self.push_send(slot);
        if pushed.is_err() {
            // Not in flight: the buffer may go.
            self.slots[slot as usize].send = None;
        }
        pushed
    }

    fn push_send(&mut self, slot: u32) -> io::Result<()> {
        let s = &self.slots[slot as usize];
        let (buf, from) = s.send.as_ref().expect("a send in flight");
        let rest = &buf[*from..];
        let entry = opcode::Send::new(types::Fd(s.fd), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(slot, SEND));
        self.push(&entry)
    }

    /// Queues an entry, handing the queue to the kernel first if it is full.
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry pushed here refers only to memory this module keeps alive
            // and unmoved until its completion is read: a send's buffer is held in its slot
            // (a Vec's heap block stays put when the Vec moves) and a slot with an operation
            // in flight is never removed (`release`); receives name no memory but the pool's,
            // which lives as long as the ring; polls and cancellations name none.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Hands the queued entries to the kernel and waits for a completion, at most `timeout`
    /// (None: without end; zero: not at all).
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let r = match timeout {
            None => self.ring.submitter().submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    // A timeout, a signal, or a transient shortage: the completions there
                    // are read, and the wait is tried again next turn.
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ENOMEM)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Reads every completion off the ring into `done`; completions of connections that have
    /// gone are settled here.
    pub fn complete(&mut self, done: &mut Vec<Done>) {
        self.raw.clear();
        self.raw.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for i in 0..self.raw.len() {
            let (data, res, flags) = self.raw[i];
            match data {
                EPOLL => {
                    if !cqueue::more(flags) {
                        self.epoll_armed = false;
                        if res < 0 {
                            log::error!(
                                "io_uring: the poll on epoll failed: {}",
                                io::Error::from_raw_os_error(-res)
                            );
                        }
                    }
                    done.push(Done::Epoll);
                }
                CANCEL => {}
                _ => self.completed(data, res, flags, done),
            }
        }
        if !self.epoll_armed
            && !self.closing
            && let Err(e) = self.arm_epoll()
        {
            log::error!("io_uring: cannot poll epoll again: {e}");
        }
    }

    fn completed(&mut self, data: u64, res: i32, flags: u32, done: &mut Vec<Done>) {
        let slot = (data >> 1) as u32;
        let buffer = cqueue::buffer_select(flags);
        let mut result = if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else if res == 0 && data & 1 == SEND {
            Err(io::ErrorKind::WriteZero.into())
        } else {
            Ok(res as usize)
        };
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        if data & 1 == RECV {
            s.recv = false;
            match s.conn {
                Some(conn) => done.push(Done::Recv {
                    conn,
                    result,
                    buffer,
                }),
                None => {
                    if let Some(b) = buffer {
                        self.pool.recycle(b);
                    }
                    self.release(slot);
                }
            }
            return;
        }
        let conn = s.conn;
        let (buf, from) = s.send.as_mut().expect("a send in flight");
        let finished = match &result {
            Ok(n) if *from + n < buf.len() && conn.is_some() => {
                *from += n;
                match self.push_send(slot) {
                    Ok(()) => None,
                    Err(e) => {
                        // Not in flight: the buffer comes back, and the connection closes.
                        log::error!("io_uring: cannot send on: {e}");
                        result = Err(e);
                        self.slots[slot as usize].send.take().map(|(b, _)| b)
                    }
                }
            }
            _ => self.slots[slot as usize].send.take().map(|(b, _)| b),
        };
        match conn {
            Some(conn) => done.push(Done::Send {
                conn,
                result,
                finished,
            }),
            None => self.release(slot),
        }
    }

    /// The `len` bytes a receive left in `buffer`.
    pub fn buffer(&self, buffer: u16, len: usize) -> &[u8] {
        self.pool.get(buffer, len)
    }

    /// Gives a receive's buffer back to the kernel.
    pub fn recycle(&mut self, buffer: u16) {
        self.pool.recycle(buffer);
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // The kernel tears a ring down in the background: wait here until no operation can
        // still touch a buffer this module is about to free.
        let busy = |u: &Uring| u.slots.iter().any(|(_, s)| s.recv || s.send.is_some());
        if !busy(self) {
            return;
        }
        self.closing = true;
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(CANCEL);
        let cancelled = self.push(&cancel).is_ok();
        let mut done = Vec::new();
        for _ in (0..1000).filter(|_| cancelled) {
            for s in self.slots.iter_mut() {
                s.1.conn = None;
            }
            let _ = self.wait(Some(Duration::from_millis(10)));
            self.complete(&mut done);
            if !busy(self) {
                return;
            }
        }
        // Still busy after ten seconds (or the cancel could not be queued): leak the buffers
        // rather than free what the kernel may write to.
        log::error!("io_uring: operations still in flight at shutdown");
        std::mem::forget(std::mem::take(&mut self.slots));
        std::mem::forget(std::mem::replace(&mut self.pool, BufferPool::empty()));
    }
}

fn user_data(slot: u32, op: u64) -> u64 {
    ((slot as u64) << 1) | op
}

/// The read buffers the kernel picks from (a provided-buffer ring, kernel 5.19 and later).
///
/// Both blocks are raw allocations, not Rust-owned slices: the kernel writes into buffers
/// while this side holds no borrow of them, and a slice is made only of a buffer whose
/// receive has completed and that is not yet given back.
struct BufferPool {
    /// The ring of buffer entries shared with the kernel: page-aligned, `BUFFERS` entries.
    entries: *mut types::BufRingEntry,
    /// The buffers, `BUFFER_SIZE` bytes each.
    memory: *mut u8,
    /// The next free entry's index (wrapping), as the kernel will read it from the ring.
    tail: u16,
}

// SAFETY: the pool owns both blocks alone, as a Box would (no other value points into them;
// the kernel's use is bounded by the ring, whatever thread holds it), so it may move to
// another thread. (A ring moved after its first submission would be refused by the kernel,
// not misused: shards make theirs on their own thread.)
unsafe impl Send for BufferPool {}

impl BufferPool {
    fn entries_layout() -> Layout {
        let size = BUFFERS as usize * std::mem::size_of::<types::BufRingEntry>();
        Layout::from_size_align(size.max(4096), 4096).expect("a valid layout")
    }

    fn memory_layout() -> Layout {
        Layout::from_size_align(BUFFERS as usize * BUFFER_SIZE, 4096).expect("a valid layout")
    }

    fn new(ring: &IoUring) -> io::Result<BufferPool> {
        // SAFETY: both layouts have a non-zero size.
        let (entries, memory) = unsafe {
            (
                alloc::alloc_zeroed(Self::entries_layout()) as *mut types::BufRingEntry,
                alloc::alloc(Self::memory_layout()),
            )
        };
        if entries.is_null() || memory.is_null() {
            alloc::handle_alloc_error(Self::memory_layout());
        }
        let mut pool = BufferPool {
            entries,
            memory,
            tail: 0,
        };
        // SAFETY: `entries` is page-aligned, zeroed and `BUFFERS` entries long, and stays
        // allocated until `drop`, which runs after the ring that uses it is gone (field order
        // in `Uring`, whose `Drop` waits for every operation).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, BUFFERS, GROUP, 0)?
        };
        for b in 0..BUFFERS {
            pool.recycle(b);
        }
        Ok(pool)
    }

    /// A pool that owns nothing (for `Uring::drop` to leak the real one).
    fn empty() -> BufferPool {
        BufferPool {
            entries: std::ptr::null_mut(),
            memory: std::ptr::null_mut(),
            tail: 0,
        }
    }

    fn get(&self, buffer: u16, len: usize) -> &[u8] {
        assert!(buffer < BUFFERS);
        // SAFETY: buffer `buffer` lies inside `memory` and its receive has completed, so the
        // kernel does not write to it until `recycle`, which needs `&mut self` and so cannot
        // run while this borrow lives. The kernel wrote `len` bytes into it (capped in case).
        unsafe {
            std::slice::from_raw_parts(
                self.memory.add(buffer as usize * BUFFER_SIZE),
                len.min(BUFFER_SIZE),
            )
        }
    }

    /// Puts buffer `b` at the ring's tail and publishes the tail to the kernel.
    fn recycle(&mut self, b: u16) {
        assert!(b < BUFFERS);
        let mask = BUFFERS - 1;
        // SAFETY: `entries` points to `BUFFERS` entries (see `new`), and `tail & mask` is
        // below that. The kernel reads only entries between its head and the published tail;
        // this one is past the tail until the store below, and a buffer is recycled only
        // after its completion was read, so the kernel holds it no more. The tail is the
        // `resv` field of entry 0 (`BufRingEntry::tail`), which `set_*` never write; the
        // Release store publishes the entry before the kernel can see the new tail.
        unsafe {
            let addr = self.memory.add(b as usize * BUFFER_SIZE) as u64;
            let entry = &mut *self.entries.add((self.tail & mask) as usize);
            entry.set_addr(addr);
            entry.set_len(BUFFER_SIZE as u32);
            entry.set_bid(b);
            self.tail = self.tail.wrapping_add(1);
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        if self.entries.is_null() {
            return;
        }
        // SAFETY: allocated in `new` with these layouts, and no longer in the kernel's use
        // (the ring was dropped first, with no operation in flight).
        unsafe {
            alloc::dealloc(self.entries as *mut u8, Self::entries_layout());
            alloc::dealloc(self.memory, Self::memory_layout());
        }
    }
}
