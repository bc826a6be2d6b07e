//! What the SQL server backends (PostgreSQL, MariaDB/MySQL) must both do beyond the tests of
//! every backend: refuse a batch whole, and survive a commit whose answer is lost.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gearshift::jobs::Priority;
use gearshift::store::{Backend, Op, StoredJob};

use super::{assert_same, del, job};

/// A TCP proxy in front of a database server that can lose the server's next answer: once
/// armed, the next bytes the server sends are dropped and both connections closed, as if the
/// server had crashed just after it committed. The client cannot tell whether it did.
pub struct LossyProxy {
    pub port: u16,
    armed: Arc<AtomicBool>,
}

impl LossyProxy {
    pub fn to(upstream: u16) -> LossyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let arm = armed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Both);
                });
                let arm = arm.clone();
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if arm.swap(false, Ordering::SeqCst) {
                            // The answer is lost with the connection.
                            break;
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_in.shutdown(Shutdown::Both);
                    let _ = c_out.shutdown(Shutdown::Both);
                });
            }
        });
        LossyProxy { port, armed }
    }

    /// The server's next answer, on any connection, will be lost.
    pub fn lose_next_answer(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

/// A commit whose answer is lost: the batch is refused (an error), yet the server committed
/// it. The next write must delete the refused job's row (it was never acknowledged, so it must
/// not be replayed), unless it adds the job again, as the store thread's retry does.
/// `via_proxy` writes through `proxy`; `direct` reads the server as it is.
pub fn check_lost_commit(
    proxy: &LossyProxy,
    via_proxy: &mut dyn Backend,
    direct: &mut dyn FnMut() -> Box<dyn Backend>,
) {
    let w = job(b"lost", b"warm-up", Priority::Normal, b"W", 0);
    let x = job(b"lost", b"x", Priority::Normal, b"X", 0);
    let y = job(b"lost", b"y", Priority::High, b"Y", 0);
    let z = job(b"lost", b"z", Priority::Low, b"Z", 0);
    // Warm up: every statement a one-job batch needs is prepared, so the next answer the
    // server sends is the one to the commit.
    via_proxy.apply(&[Op::Add(w.clone())]).unwrap();
    via_proxy.apply(&[del(&w)]).unwrap();
    proxy.lose_next_answer();
    via_proxy
        .apply(&[Op::Add(x.clone())])
        .expect_err("the answer to the commit was lost");
    assert_same(direct().replay().unwrap(), std::slice::from_ref(&x));
    // The next write, of another job, removes the refused one.
    via_proxy.reconnect().unwrap();
    via_proxy.apply(&[Op::Add(y.clone())]).unwrap();
    assert_same(direct().replay().unwrap(), std::slice::from_ref(&y));
    // The store thread's retry: the same batch again after a reconnect stores it, once.
    proxy.lose_next_answer();
    via_proxy
        .apply(&[Op::Add(z.clone())])
        .expect_err("the answer to the commit was lost");
    via_proxy.reconnect().unwrap();
    via_proxy.apply(&[Op::Add(z.clone())]).unwrap();
    assert_same(direct().replay().unwrap(), &[y.clone(), z.clone()]);
    // Nothing is left to clean up: the next batch deletes only what it says.
    via_proxy.apply(&[del(&y)]).unwrap();
    assert_same(direct().replay().unwrap(), &[z]);
}

/// A batch that fails half-way stores nothing: first for a job whose `when` does not fit the
/// INTEGER column, then for `bad`, which the server refuses with an error that says `says`.
pub fn check_failed_batch(s: &mut dyn Backend, bad: StoredJob, says: &str) {
    let a = job(b"f", b"a", Priority::Normal, b"A", 0);
    let late = job(b"f", b"b", Priority::Normal, b"B", i64::MAX);
    let e = s
        .apply(&[Op::Add(a.clone()), Op::Add(late)])
        .expect_err("fails");
    assert!(e.0.contains("when_to_run"), "{e}");
    assert_same(s.replay().unwrap(), &[]);
    let e = s
        .apply(&[Op::Add(a.clone()), Op::Add(bad)])
        .expect_err("fails");
    assert!(e.0.contains(says), "{e}");
    assert_same(s.replay().unwrap(), &[]);
    s.apply(&[Op::Add(a.clone())]).unwrap();
    assert_same(s.replay().unwrap(), &[a]);
}
