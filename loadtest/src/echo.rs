//! A raw TCP echo server on its own thread: the machine's roof for round trips over loopback.
//!
//! It does the least a server can do per message (read the bytes, write them back), with the
//! same event-loop shape as a real server, so the `ceiling` scenario tells how many round trips
//! per second two processes sharing these cores can make at all. Its CPU is read from its own
//! thread's /proc entry, as a server's would be.

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
    /// Starts the server thread and waits until it listens.
    pub fn start() -> io::Result<EchoServer> {
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
                if let Err(e) = serve(poll, listener, &stop2) {
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
