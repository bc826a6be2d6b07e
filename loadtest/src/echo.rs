//! A raw TCP echo server on its own thread: the machine's roof for round trips over loopback.
//!
//! It does the least a server can do per message (read the bytes, write them back), with the
//! same event-loop shape as a real server, so the `ceiling` scenario tells how many round trips
//! per second two processes sharing these cores can make at all. Its CPU is read from its own
//! thread's /proc entry, as a server's would be. With `--echo-io-uring` the same echo runs on
//! io_uring (each connection's receive or send queued on a ring, a turn in one
//! `io_uring_enter`), to tell what that event loop changes in the floor itself.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// A running echo server.
pub struct EchoServer {
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    /// Kernel id of its thread, for [`crate::procstat::thread_cpu`].
    pub tid: u32,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Starts the server thread (on io_uring if `uring`) and waits until it listens.
    pub fn start(uring: bool) -> io::Result<EchoServer> {
        let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
        let addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("echo".into())
            .spawn(move || {
                let _ = tx.send(crate::procstat::current_tid());
                let served = if uring {
                    serve_uring(listener, &stop2)
                } else {
                    serve(poll, listener, &stop2)
                };
                if let Err(e) = served {
                    eprintln!("echo server: {e}");
                }
            })?;
        let tid = rx
            .recv()
            .map_err(|_| io::Error::other("echo thread died"))?;
        Ok(EchoServer {
            addr,
            tid,
            stop,
            waker,
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An echo connection: bytes read and not yet written back wait in `pending`; while any wait,
/// nothing more is read (so a slow reader slows its writer, as TCP would).
struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
    sent: usize,
}

fn serve(mut poll: Poll, listener: TcpListener, stop: &AtomicBool) -> io::Result<()> {
    let mut events = Events::with_capacity(1024);
    let mut conns: Slab<Conn> = Slab::new();
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Acquire) {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => r?,
        }
        for ev in events.iter() {
            match ev.token() {
                WAKER => {}
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            stream.set_nodelay(true)?;
                            let e = conns.vacant_entry();
                            poll.registry().register(
                                &mut stream,
                                Token(e.key()),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            e.insert(Conn {
                                stream,
                                pending: Vec::new(),
                                sent: 0,
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                },
                Token(id) => {
                    if !conns.contains(id) {
                        continue;
                    }
                    if !pump(&mut conns[id], &mut buf) {
                        let mut c = conns.remove(id);
                        let _ = poll.registry().deregister(&mut c.stream);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Writes back what is pending, then reads and echoes until the socket is drained or the peer
/// stops taking data. Returns false when the connection is done.
fn pump(c: &mut Conn, buf: &mut [u8]) -> bool {
    loop {
        while c.sent < c.pending.len() {
            match c.stream.write(&c.pending[c.sent..]) {
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        c.pending.clear();
        c.sent = 0;
        let n = match c.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        let mut off = 0;
        while off < n {
            match c.stream.write(&buf[off..n]) {
                Ok(w) => off += w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.pending.extend_from_slice(&buf[off..n]);
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if n < buf.len() {
            return true;
        }
    }
}

/// An io_uring echo connection: one operation in flight at a time, a receive into `buf` or a
/// send of `buf[sent..len]`, so `buf` is never touched while the kernel may use it.
struct RingConn {
    stream: std::net::TcpStream,
    buf: Box<[u8]>,
    len: usize,
    sent: usize,
}

const RING_ACCEPT: u64 = u64::MAX;
const RING_CANCEL: u64 = u64::MAX - 1;

/// The echo on io_uring: a multishot accept, then per connection receive, send (on from where
/// a short send stopped), receive again. It wakes every 20 ms to see whether to stop.
fn serve_uring(listener: TcpListener, stop: &AtomicBool) -> io::Result<()> {
    use io_uring::{IoUring, cqueue, opcode, squeue, types};
    use std::os::fd::{AsRawFd, FromRawFd};

    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_submit_all()
        .build(256)?;
    let mut conns: Slab<RingConn> = Slab::new();
    let push = |ring: &mut IoUring, e: squeue::Entry| -> io::Result<()> {
        // SAFETY: an entry names only a connection's `buf`, which stays allocated and unmoved
        // (a Box in the slab) until that entry's completion is read, since a connection is
        // removed only on the completion of its one operation in flight, and at exit, on every
        // path, after all of them completed (or leaked).
        while unsafe { ring.submission().push(&e) }.is_err() {
            ring.submit()?;
        }
        Ok(())
    };
    let recv = |c: &mut RingConn, key: usize| {
        opcode::Recv::new(
            types::Fd(c.stream.as_raw_fd()),
            c.buf.as_mut_ptr(),
            c.buf.len() as u32,
        )
        .build()
        .user_data((key as u64) << 1)
    };
    let send = |c: &RingConn, key: usize| {
        let rest = &c.buf[c.sent..c.len];
        opcode::Send::new(
            types::Fd(c.stream.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(((key as u64) << 1) | 1)
    };
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .build()
        .user_data(RING_ACCEPT);
    push(&mut ring, accept.clone())?;
    let tick = types::Timespec::new().nsec(20_000_000);
    let mut done = Vec::new();
    // On any error too, the cleanup below runs: the kernel may still use every buffer.
    let served = (|| -> io::Result<()> {
        while !stop.load(Ordering::Acquire) {
            let args = types::SubmitArgs::new().timespec(&tick);
            match ring.submitter().submit_with_args(1, &args) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                r => {
                    r?;
                }
            }
            done.clear();
            done.extend(
                ring.completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(data, res, flags) in &done {
                if data == RING_ACCEPT {
                    if res >= 0 {
                        // SAFETY: a completed accept's result is a new descriptor nothing else owns.
                        let stream = unsafe { std::net::TcpStream::from_raw_fd(res) };
                        stream.set_nodelay(true)?;
                        let key = conns.insert(RingConn {
                            stream,
                            buf: vec![0u8; 64 << 10].into_boxed_slice(),
                            len: 0,
                            sent: 0,
                        });
                        let e = recv(&mut conns[key], key);
                        push(&mut ring, e)?;
                    }
                    if !cqueue::more(flags) {
                        push(&mut ring, accept.clone())?;
                    }
                    continue;
                }
                let key = (data >> 1) as usize;
                let c = &mut conns[key];
                let e = if data & 1 == 0 {
                    if res <= 0 {
                        conns.remove(key);
                        continue;
                    }
                    c.len = res as usize;
                    c.sent = 0;
                    send(c, key)
                } else {
                    if res <= 0 {
                        conns.remove(key);
                        continue;
                    }
                    c.sent += res as usize;
                    if c.sent < c.len {
                        send(c, key)
                    } else {
                        recv(c, key)
                    }
                };
                push(&mut ring, e)?;
            }
        }
        Ok(())
    })();
    // Every connection has one operation in flight: cancel them and wait, so no buffer is
    // freed while the kernel may write to it; leak what does not finish within a second.
    let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
        .build()
        .user_data(RING_CANCEL);
    if push(&mut ring, cancel).is_err() {
        std::mem::forget(conns);
        return served;
    }
    let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while !conns.is_empty() && std::time::Instant::now() < until {
        let args = types::SubmitArgs::new().timespec(&tick);
        let _ = ring.submitter().submit_with_args(1, &args);
        let ended: Vec<u64> = ring.completion().map(|c| c.user_data()).collect();
        for data in ended {
            if data != RING_ACCEPT && data != RING_CANCEL {
                conns.try_remove((data >> 1) as usize);
            }
        }
    }
    if !conns.is_empty() {
        std::mem::forget(conns);
    }
    served
}
