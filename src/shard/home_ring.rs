//! The home's reads and writes through its io_uring ring (`--event-loop io-uring`): what a
//! completed receive or send means for the connection, and when a receive is armed again.
//! The ring itself is `uring`; this is the home's side, in the terms of `Conn` and the input
//! budget.

use std::io;

use super::conn::{Closing, Conn};
use super::uring::{BUFFER_SIZE, Done};
use super::{Home, OwnerRole, READ_CHUNK};

/// Whether what a connection holds and what a receive can add fit in the shard's read
/// buffer: then a receive is handled there, as epoll's reads are; otherwise in the
/// connection's own (large-frame) buffer, whose growth the input budget allowed before the
/// receive was armed.
fn fits_scratch(have: usize, want: usize) -> bool {
    have + BUFFER_SIZE <= READ_CHUNK && want + 4096 <= READ_CHUNK
}

impl Home {
    /// Acts on the ring's completions; returns whether the epoll descriptor is readable.
    pub(super) fn complete_io(&mut self, owner: &mut OwnerRole) -> bool {
        let Some(uring) = &mut self.uring else {
            return false;
        };
        let mut done = std::mem::take(&mut self.done);
        uring.complete(&mut done);
        let mut readable = false;
        for d in done.drain(..) {
            match d {
                Done::Epoll => readable = true,
                Done::Recv {
                    conn,
                    result,
                    buffer,
                } => self.recv_done(owner, conn, result, buffer),
                Done::Send {
                    conn,
                    result,
                    finished,
                } => self.send_done(conn, result, finished),
            }
        }
        self.done = done;
        readable
    }

    /// At shutdown: hands the ring what the last turn queued (a `shutdown`'s OK, say) and
    /// waits, a second at most, for the sends in flight to finish, as epoll's writes did
    /// before the loop ended. Nothing read meanwhile is handled (epoll reads nothing after
    /// the stop), and no receive is armed again. Then the ring is closed, while every socket
    /// its entries name is still open.
    pub(super) fn finish_io(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut done = Vec::new();
        while let Some(uring) = &mut self.uring {
            uring.submit();
            if !uring.any_sending() || std::time::Instant::now() >= deadline {
                break;
            }
            if uring
                .wait(Some(std::time::Duration::from_millis(10)))
                .is_err()
            {
                break;
            }
            uring.complete(&mut done);
            for d in &done {
                if let Done::Recv {
                    buffer: Some(b), ..
                } = d
                {
                    uring.recycle(*b);
                }
            }
            for d in done.drain(..) {
                if let Done::Send {
                    conn,
                    result,
                    finished,
                } = d
                {
                    self.send_done(conn, result, finished);
                }
            }
            self.flush_all();
        }
        // Its `Drop` cancels what is left and waits for it.
        self.uring = None;
    }

    /// Arms the receive of a ring connection that may be read, unless one is armed.
    pub(super) fn arm_recv(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let Some(slot) = conn.io else { return };
        if conn.closing != Closing::No || conn.paused {
            return;
        }
        let have = conn.partial.len();
        let need = conn.partial_need;
        let want = need.max(have);
        // In a large frame, the buffer must have room for what the receive may bring before
        // it is armed: bytes the kernel has taken cannot be refused. It grows as epoll's
        // `read_conn` grows it (at most doubling, never past the frame), and by a receive's
        // worth at least.
        if !fits_scratch(have, want) {
            let room = if need > have {
                (need - have).min(have.max(READ_CHUNK))
            } else {
                READ_CHUNK
            };
            if !self.grow_partial(key, have + room.max(BUFFER_SIZE)) {
                return self.starve(key);
            }
        }
        let uring = self.uring.as_mut().expect("a ring for ring connections");
        if let Err(e) = uring.recv(slot) {
            log::error!("io_uring: cannot receive: {e}");
            self.close_now(key);
        }
    }

    fn close_now(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.closing != Closing::Now {
            conn.closing = Closing::Now;
            self.closing.push(key);
        }
    }

    /// A receive ended: hands its bytes to the connection as epoll's `read_conn` does, then
    /// arms the next.
    fn recv_done(
        &mut self,
        owner: &mut OwnerRole,
        key: usize,
        result: io::Result<usize>,
        buffer: Option<u16>,
    ) {
        if let (Err(_), Some(b)) = (&result, buffer) {
            // No kernel hands a buffer back with an error, but one would be lost here if it did.
            self.uring.as_mut().expect("a ring").recycle(b);
        }
        let n = match result {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // Every pooled buffer was taken in this batch; they are all back once the
                // batch is handled, so try again this turn.
                let conn = &mut self.conns[key];
                if !conn.read_again {
                    conn.read_again = true;
                    self.read_again.push(key);
                }
                return;
            }
            Err(_) => return self.close_now(key),
        };
        let uring = self.uring.as_mut().expect("a ring for ring connections");
        let conn = &mut self.conns[key];
        let Some(buffer) = buffer.filter(|_| n > 0) else {
            if let Some(b) = buffer {
                uring.recycle(b);
            }
            if n == 0 && conn.closing == Closing::No {
                conn.closing = Closing::AfterFlush;
                self.closing.push(key);
            }
            return;
        };
        if conn.closing != Closing::No {
            // As with epoll, a closing connection's input is not looked at.
            uring.recycle(buffer);
            return;
        }
        self.stats.bytes_in += n as u64;
        let have = conn.partial.len();
        let want = conn.partial_need.max(have);
        if fits_scratch(have, want) {
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch[..have].copy_from_slice(&conn.partial);
            scratch[have..have + n].copy_from_slice(uring.buffer(buffer, n));
            uring.recycle(buffer);
            conn.partial.clear();
            let used = self.dispatch_input(owner, key, &scratch[..have + n]);
            if let Some(conn) = self.conns.get_mut(key) {
                conn.partial.extend_from_slice(&scratch[used..have + n]);
            }
            self.scratch = scratch;
        } else {
            // Within the capacity `arm_recv` had the budget grant.
            conn.partial.extend_from_slice(uring.buffer(buffer, n));
            uring.recycle(buffer);
            self.dispatch_partial(owner, key);
        }
        self.arm_recv(key);
    }

    /// `flush_all` for a ring connection: its output goes in one send, unless a send is in
    /// flight (whose completion queues the rest); with nothing left to write, a connection
    /// closing after its output is closed.
    pub(super) fn flush_ring(&mut self, key: usize, slot: u32) {
        let uring = self.uring.as_mut().expect("a ring for ring connections");
        if uring.sending(slot) {
            return;
        }
        let conn = &mut self.conns[key];
        match conn.out.take_for_send() {
            Some(bytes) => {
                if let Err(e) = uring.send(slot, bytes) {
                    log::error!("io_uring: cannot send: {e}");
                    self.close_now(key);
                }
            }
            None if conn.closing == Closing::AfterFlush && conn.out.in_order() => {
                self.closing.push(key);
            }
            None => {}
        }
    }

    /// A send moved bytes (or failed); once all of its buffer is out, what queued meanwhile
    /// goes next.
    fn send_done(&mut self, key: usize, result: io::Result<usize>, finished: Option<Vec<u8>>) {
        let conn = &mut self.conns[key];
        match result {
            Ok(n) => {
                conn.out.sent_some(n);
                self.stats.bytes_out += n as u64;
            }
            Err(_) => {
                if let Some(bytes) = finished {
                    conn.out.send_finished(bytes);
                }
                return self.close_now(key);
            }
        }
        let Some(bytes) = finished else { return };
        conn.out.send_finished(bytes);
        if conn.out.has_bytes() {
            self.queue_flush(key);
        } else if conn.closing == Closing::AfterFlush && conn.out.in_order() {
            self.closing.push(key);
        }
    }

    /// Stops watching a connection's socket (it closes, or moves to another shard): on the
    /// ring, its receive is cancelled; on epoll, it is deregistered.
    pub(super) fn release_socket(&mut self, conn: &mut Conn) {
        match conn.io.take() {
            Some(slot) => {
                let uring = self.uring.as_mut().expect("a ring for ring connections");
                uring.detach(slot);
            }
            None => {
                let _ = self.poll.registry().deregister(&mut conn.socket);
            }
        }
    }
}
