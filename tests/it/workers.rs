//! The worker side: PRE_SLEEP/NOOP wake-ups (PROTOCOL.md §3.5), requeue on
//! worker loss, CANT_DO, RESET_ABILITIES, CAN_DO_TIMEOUT and `--job-retries`
//! (§3.9), client disconnect rules (§3.10), workers holding several jobs.

use crate::util::*;
use std::time::{Duration, Instant};

fn s4(a: [&str; 4]) -> [String; 4] {
    a.map(String::from)
}

// ---------------------------------------------------------------------------
// PRE_SLEEP / NOOP
// ---------------------------------------------------------------------------

#[test]
fn sleeping_worker_woken_once_until_it_grabs() {
    let s = Server::start(&[]);
    let mut w = sleeping_worker(&s, &["f"]);
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "f", "", b"1");
    w.expect(NOOP, &[]);
    // noop_sent: a second job sends no second NOOP.
    c.submit(SUBMIT_JOB_BG, "f", "", b"2");
    w.sync();
    // GRAB clears the flags; sleeping again with work queued gives NOOP at once.
    w.grab();
    w.send(PRE_SLEEP, &[]);
    w.expect(NOOP, &[]);
    w.grab();
    w.send(PRE_SLEEP, &[]);
    w.sync();
    c.submit(SUBMIT_JOB_BG, "f", "", b"3");
    w.expect(NOOP, &[]);
}

#[test]
fn pre_sleep_with_work_queued_sends_noop_every_time() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "f", "", b"1");
    let mut w = s.conn();
    w.can_do(&["f"]);
    w.send(PRE_SLEEP, &[]);
    w.expect(NOOP, &[]);
    // Even though one was already sent (✔obs).
    w.send(PRE_SLEEP, &[]);
    w.expect(NOOP, &[]);
}

#[test]
fn worker_without_pre_sleep_gets_no_noop() {
    let s = Server::start(&[]);
    let mut w = s.conn();
    w.can_do(&["f"]);
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "f", "", b"1");
    w.sync();
    w.grab();
}

#[test]
fn sleeping_worker_of_other_function_not_woken() {
    let s = Server::start(&[]);
    let mut wf = sleeping_worker(&s, &["f"]);
    let mut wg = sleeping_worker(&s, &["g"]);
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "g", "", b"1");
    wg.expect(NOOP, &[]);
    wf.sync();
}

/// gearmand keeps `sleeping` per connection: a worker that registers a function after
/// PRE_SLEEP is woken by that function's next job (at any shard count).
#[test]
fn worker_registering_while_asleep_is_woken_by_the_next_job() {
    for threads in ["--threads=1", "--threads=4"] {
        let s = Server::start3(&[], &[], &[threads]);
        let mut w = s.conn();
        w.send(PRE_SLEEP, &[]);
        w.can_do(&["f"]);
        let mut c = s.conn();
        c.submit(SUBMIT_JOB_BG, "f", "", b"1");
        w.expect(NOOP, &[]);
    }
}

/// ... and, unlike gearmand, at once by a job already queued for it: no job waits while a
/// worker that could run it sleeps unwoken.
#[test]
fn worker_registering_while_asleep_is_woken_by_a_queued_job() {
    if skip_under_gearmand("a worker registering while asleep is woken for queued jobs") {
        return;
    }
    for threads in ["--threads=1", "--threads=4"] {
        let s = Server::start3(&[], &[], &[threads]);
        let mut c = s.conn();
        c.submit(SUBMIT_JOB_BG, "f", "", b"1");
        let mut w = s.conn();
        w.send(PRE_SLEEP, &[]);
        w.sync();
        w.send(CAN_DO, &[b"f"]);
        w.expect(NOOP, &[]);
        w.grab();
    }
}

/// A worker that pipelines GRAB_JOB and PRE_SLEEP is asleep for every owner of its functions,
/// even one its grab reaches after the PRE_SLEEP did (several shards), and so is woken.
#[test]
fn worker_pipelining_grab_and_pre_sleep_is_woken() {
    let s = Server::start3(&[], &[], &["--threads=2", "--handoff=all"]);
    let mut w = s.conn();
    // With two shards f1 is owned by shard 0 (the worker's home once handed off at its first
    // CAN_DO) and f0 by shard 1, which the grab asks first.
    w.can_do(&["f1", "f0"]);
    let mut both = req(GRAB_JOB, &[]);
    both.extend(req(PRE_SLEEP, &[]));
    w.send_raw(&both);
    w.expect(NO_JOB, &[]);
    w.sync();
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "f1", "", b"1");
    w.expect(NOOP, &[]);
}

#[test]
fn duplicate_can_do_gets_one_noop() {
    let s = Server::start(&[]);
    let mut w = sleeping_worker(&s, &["f", "f"]);
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "f", "", b"1");
    w.expect(NOOP, &[]);
    w.sync();
    let mut a = s.conn();
    assert_eq!(status_of(&mut a, "f"), Some((1, 0, 2)));
}

/// `--worker-wakeup 0`, gearmand's default: every sleeper is woken for a job.
#[test]
fn all_sleepers_woken_with_worker_wakeup_0() {
    let s = Server::start(&["--worker-wakeup=0"]);
    let mut ws: Vec<Conn> = (0..3).map(|_| sleeping_worker(&s, &["f"])).collect();
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "f", "", b"1");
    for w in &mut ws {
        w.expect(NOOP, &[]);
    }
}

#[test]
fn coalesced_submission_wakes_nobody() {
    // A sleeping worker with nothing runnable; a submission that coalesces
    // onto a job already running creates no work, so no NOOP.
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "f", "U", b"1");
    let mut w = s.conn();
    w.can_do(&["f"]);
    let (h, _, _) = w.grab();
    w.send(PRE_SLEEP, &[]);
    w.sync();
    assert_eq!(c.submit(SUBMIT_JOB_BG, "f", "U", b"1"), h);
    assert_eq!(c.submit(SUBMIT_JOB, "f", "U", b"1"), h);
    w.sync();
}

#[test]
fn worker_wakeup_one_rotates() {
    let s = Server::start(&["--worker-wakeup=1"]);
    let mut ws: Vec<Conn> = (0..3).map(|_| sleeping_worker(&s, &["f"])).collect();
    let mut c = s.conn();
    let mut woken = Vec::new();
    for i in 0..3 {
        c.submit(SUBMIT_JOB_BG, "f", &format!("u{i}"), b"x");
        // Exactly one of the sleepers gets a NOOP per job.
        let mut got = Vec::new();
        for (k, w) in ws.iter_mut().enumerate() {
            if !w.sync_collect().is_empty() {
                got.push(k);
            }
        }
        assert_eq!(got.len(), 1, "job {i} woke {got:?}");
        woken.push(got[0]);
    }
    // Each worker was woken once, in turn (✔obs: registration order).
    assert_eq!(woken, [0, 1, 2]);
    // All have noop_sent now: the 4th job wakes nobody.
    c.submit(SUBMIT_JOB_BG, "f", "u3", b"x");
    for w in &mut ws {
        w.sync();
    }
}

/// Which of `ws` got a packet (a NOOP) by now.
fn woken(ws: &mut [Conn]) -> Vec<usize> {
    let mut got = Vec::new();
    for (k, w) in ws.iter_mut().enumerate() {
        let packets = w.sync_collect();
        assert!(packets.iter().all(|p| p.ty == NOOP), "{packets:?}");
        if !packets.is_empty() {
            got.push(k);
        }
    }
    got
}

/// Unlike gearmand, gearshiftd by default wakes one sleeper per queued job (no thundering
/// herd): N jobs wake N different workers, and each woken worker finds a job.
#[test]
fn by_default_each_job_wakes_one_sleeper() {
    if skip_under_gearmand("gearmand wakes every sleeper by default") {
        return;
    }
    for threads in ["--threads=1", "--threads=4"] {
        let s = Server::start3(&[], &[], &[threads, "--wake-retry-ms=60000"]);
        let mut ws: Vec<Conn> = (0..3).map(|_| sleeping_worker(&s, &["f"])).collect();
        let mut c = s.conn();
        c.submit(SUBMIT_JOB_BG, "f", "u0", b"x");
        let first = woken(&mut ws);
        assert_eq!(first.len(), 1, "{threads}: the first job woke {first:?}");
        c.submit(SUBMIT_JOB_BG, "f", "u1", b"x");
        let second = woken(&mut ws);
        assert_eq!(second.len(), 1, "{threads}: the second job woke {second:?}");
        assert_ne!(
            first, second,
            "{threads}: a woken worker is not woken twice"
        );
        for k in [first[0], second[0]] {
            ws[k].grab();
        }
        assert_eq!(woken(&mut ws), Vec::<usize>::new(), "{threads}");
    }
}

/// A woken worker that does not ask for the job within `--wake-retry-ms` (slow, stuck, or
/// busy with another function's job) passes it on: another sleeper is woken then, not
/// before; one that disconnects passes it on at once.
#[test]
fn a_woken_worker_that_does_not_ask_passes_the_job_on() {
    if skip_under_gearmand("gearmand wakes every sleeper by default") {
        return;
    }
    for threads in ["--threads=1", "--threads=4"] {
        let s = Server::start3(&[], &[], &[threads, "--wake-retry-ms=300"]);
        let mut ws: Vec<Conn> = (0..2).map(|_| sleeping_worker(&s, &["f"])).collect();
        let mut c = s.conn();
        let start = Instant::now();
        let h = c.submit(SUBMIT_JOB_BG, "f", "", b"x");
        let first = woken(&mut ws);
        assert_eq!(first.len(), 1, "{threads}: woke {first:?}");
        let other = 1 - first[0];
        let p = ws[other]
            .recv_with_timeout(Duration::from_secs(5))
            .expect("NOOP once the first wake is unanswered");
        assert_eq!(p.ty, NOOP);
        assert!(
            start.elapsed() >= Duration::from_millis(300),
            "{threads}: woken again after {:?}",
            start.elapsed()
        );
        assert_eq!(ws[other].grab().0, h);
        ws[first[0]].send(GRAB_JOB, &[]);
        ws[first[0]].expect(NO_JOB, &[]);
    }
    let s = Server::start_with(&[], &["--wake-retry-ms=60000"]);
    let mut ws: Vec<Conn> = (0..2).map(|_| sleeping_worker(&s, &["f"])).collect();
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB_BG, "f", "", b"x");
    let first = woken(&mut ws);
    assert_eq!(first.len(), 1, "woke {first:?}");
    let other = 1 - first[0];
    drop(ws.remove(first[0]));
    let p = ws[0]
        .recv_with_timeout(Duration::from_secs(5))
        .expect("NOOP once the woken worker left");
    assert_eq!(p.ty, NOOP);
    assert_eq!(ws[0].grab().0, h, "worker {other} runs it");
}

// ---------------------------------------------------------------------------
// Requeue (§3.9)
// ---------------------------------------------------------------------------

#[test]
fn requeue_on_worker_disconnect() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "f", "", b"x");
    let mut w1 = s.conn();
    w1.can_do(&["f"]);
    w1.grab();
    w1.send(WORK_STATUS, &[&h, b"1", b"2"]);
    c.expect(WORK_STATUS, &[&h, b"1", b"2"]);
    let mut w2 = sleeping_worker(&s, &["f"]);
    drop(w1);
    // The requeue wakes the sleeper.
    w2.expect(NOOP, &[]);
    // Not running, num/den reset; clients are not told.
    assert_eq!(c.status(&h), s4(["1", "0", "0", "0"]));
    let (gh, _, d) = w2.grab();
    assert_eq!((gh.as_slice(), d.as_slice()), (h.as_slice(), &b"x"[..]));
    w2.send(WORK_COMPLETE, &[&h, b"r"]);
    c.expect(WORK_COMPLETE, &[&h, b"r"]);
}

#[test]
fn requeued_job_goes_to_tail() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let a = c.submit(SUBMIT_JOB_BG, "f", "a", b"");
    let b = c.submit(SUBMIT_JOB_BG, "f", "b", b"");
    let mut w1 = s.conn();
    w1.can_do(&["f"]);
    assert_eq!(w1.grab().0, a);
    let mut w2 = s.conn();
    w2.can_do(&["f"]);
    drop(w1);
    let mut adm = s.conn();
    wait_until("the job is requeued", || {
        status_of(&mut adm, "f") == Some((2, 0, 1))
    });
    assert_eq!(w2.grab().0, b);
    assert_eq!(w2.grab().0, a);
}

#[test]
fn cant_do_requeues_running_jobs() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "f", "", b"x");
    let mut w = s.conn();
    w.can_do(&["f", "g"]);
    w.grab();
    w.send(CANT_DO, &[b"f"]);
    w.sync();
    assert_eq!(c.status(&h), s4(["1", "0", "0", "0"]));
    // Late results from the old holder.
    w.send(WORK_DATA, &[&h, b"d"]);
    w.expect(ERROR, &[b"JOB_NOT_FOUND", b"Job does not exist on server"]);
    w.send(WORK_COMPLETE, &[&h, b"r"]);
    w.expect(
        ERROR,
        &[b"JOB_NOT_FOUND", b"Job given in work result not found"],
    );
    // Nothing reached the client.
    c.sync();
    w.grab_none();
    let mut w2 = s.conn();
    w2.can_do(&["f"]);
    assert_eq!(w2.grab().0, h);
}

#[test]
fn reset_abilities_requeues_running_jobs() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let h1 = c.submit(SUBMIT_JOB_BG, "f", "", b"1");
    let h2 = c.submit(SUBMIT_JOB_BG, "g", "", b"2");
    let mut w = s.conn();
    w.can_do(&["f", "g"]);
    w.grab();
    w.grab();
    w.send(RESET_ABILITIES, &[]);
    w.sync();
    assert_eq!(c.status(&h1), s4(["1", "0", "0", "0"]));
    assert_eq!(c.status(&h2), s4(["1", "0", "0", "0"]));
    w.send(WORK_FAIL, &[&h1]);
    w.expect(
        ERROR,
        &[b"JOB_NOT_FOUND", b"Job given in work result not found"],
    );
    w.grab_none();
    let mut a = s.conn();
    assert_eq!(status_of(&mut a, "f"), Some((1, 0, 0)));
    assert_eq!(status_of(&mut a, "g"), Some((1, 0, 0)));
}

#[test]
fn late_work_from_old_holder_after_requeue_to_new_holder() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "f", "", b"x");
    let mut w1 = s.conn();
    w1.can_do(&["f"]);
    w1.grab();
    w1.send(CANT_DO, &[b"f"]);
    w1.sync();
    let mut w2 = s.conn();
    w2.can_do(&["f"]);
    w2.grab();
    w1.send(WORK_EXCEPTION, &[&h, b"e"]);
    w1.expect(
        ERROR,
        &[
            b"JOB_NOT_FOUND",
            b"An exception was received for a job that does not exist",
        ],
    );
    w1.send(WORK_STATUS, &[&h, b"1", b"1"]);
    w1.expect(
        ERROR,
        &[b"JOB_NOT_FOUND", b"Job given in work result not found"],
    );
    w2.send(WORK_COMPLETE, &[&h, b"ok"]);
    c.expect(WORK_COMPLETE, &[&h, b"ok"]);
}

#[test]
fn worker_holding_several_jobs_requeues_all_on_disconnect() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let hs: Vec<Vec<u8>> = (0..3)
        .map(|i| c.submit(SUBMIT_JOB, "f", "", format!("{i}").as_bytes()))
        .collect();
    let mut w1 = s.conn();
    w1.can_do(&["f"]);
    for h in &hs {
        assert_eq!(&w1.grab().0, h);
    }
    // Finish the middle one, then vanish holding the other two.
    w1.send(WORK_COMPLETE, &[&hs[1], b"done"]);
    c.expect(WORK_COMPLETE, &[&hs[1], b"done"]);
    let mut w2 = sleeping_worker(&s, &["f"]);
    drop(w1);
    w2.expect(NOOP, &[]);
    let mut adm = s.conn();
    wait_until("both jobs are requeued", || {
        status_of(&mut adm, "f") == Some((2, 0, 1))
    });
    let mut got = vec![w2.grab().0, w2.grab().0];
    got.sort();
    let mut want = vec![hs[0].clone(), hs[2].clone()];
    want.sort();
    assert_eq!(got, want);
    w2.grab_none();
}

// ---------------------------------------------------------------------------
// CAN_DO_TIMEOUT
// ---------------------------------------------------------------------------

#[test]
fn can_do_timeout_requeues_without_notifying_client() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "f", "", b"x");
    let mut w1 = s.conn();
    // Values below 1000 ms are raised to 1000 ms.
    w1.send(CAN_DO_TIMEOUT, &[b"f", b"10"]);
    w1.sync();
    let start = Instant::now();
    assert_eq!(w1.grab().0, h);
    let mut w2 = sleeping_worker(&s, &["f"]);
    // The expiry requeues the job, which wakes the sleeper (inherent ~1 s wait).
    let p = w2
        .recv_with_timeout(Duration::from_secs(5))
        .expect("NOOP after the timeout requeue");
    assert_eq!(p.ty, NOOP);
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "requeued after {:?}",
        start.elapsed()
    );
    assert_eq!(c.status(&h), s4(["1", "0", "0", "0"]));
    // The client was not told; the old holder's result is refused.
    c.sync();
    w1.send(WORK_COMPLETE, &[&h, b"late"]);
    w1.expect(
        ERROR,
        &[b"JOB_NOT_FOUND", b"Job given in work result not found"],
    );
    assert_eq!(w2.grab().0, h);
    w2.send(WORK_COMPLETE, &[&h, b"ok"]);
    c.expect(WORK_COMPLETE, &[&h, b"ok"]);
}

/// libgearman's worker pipelines GRAB_JOB_ALL and PRE_SLEEP: a PRE_SLEEP that finds nothing
/// queued for the connection removes its timer (gearmand's one per connection), so the job it
/// was just given runs past the timeout and its result reaches the client.
#[test]
fn pre_sleep_with_nothing_queued_removes_the_can_do_timeout() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "f0", "", b"x");
    let mut w = s.conn();
    w.send(CAN_DO_TIMEOUT, &[b"f0", b"1000"]);
    let mut grab_then_sleep = req(GRAB_JOB_ALL, &[]);
    grab_then_sleep.extend(req(PRE_SLEEP, &[]));
    w.send_raw(&grab_then_sleep);
    assert_eq!(w.expect_type(JOB_ASSIGN_UNIQ).argn(4)[0], h);
    w.sync();
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(c.status(&h), s4(["1", "1", "0", "0"]), "still running");
    w.send(WORK_COMPLETE, &[&h, b"late but whole"]);
    c.expect(WORK_COMPLETE, &[&h, b"late but whole"]);
}

/// A PRE_SLEEP that finds a job queued for the connection answers NOOP and leaves the timer:
/// the held job is requeued when it fires.
#[test]
fn pre_sleep_with_work_queued_keeps_the_can_do_timeout() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let a = c.submit(SUBMIT_JOB, "f0", "", b"a");
    let b = c.submit(SUBMIT_JOB, "f0", "", b"b");
    let mut w = s.conn();
    w.send(CAN_DO_TIMEOUT, &[b"f0", b"1000"]);
    assert_eq!(w.grab().0, a);
    w.send(PRE_SLEEP, &[]);
    w.expect(NOOP, &[]);
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(c.status(&a), s4(["1", "0", "0", "0"]), "requeued");
    assert_eq!(c.status(&b), s4(["1", "0", "0", "0"]));
    w.send(WORK_COMPLETE, &[&a, b"late"]);
    w.expect(
        ERROR,
        &[b"JOB_NOT_FOUND", b"Job given in work result not found"],
    );
}

/// A worker registered for f0 and f1 with a 1 s timeout and f2 without one.
fn timed_worker(s: &Server) -> Conn {
    let mut w = s.conn();
    w.send(CAN_DO_TIMEOUT, &[b"f0", b"1000"]);
    w.send(CAN_DO_TIMEOUT, &[b"f1", b"1000"]);
    w.send(CAN_DO, &[b"f2"]);
    w.sync();
    w
}

/// Submits a job of `f` and has `w` grab it (one job queued at a time, so the pick is plain).
fn submit_and_grab(c: &mut Conn, w: &mut Conn, f: &str) -> Vec<u8> {
    let h = c.submit(SUBMIT_JOB, f, "", f.as_bytes());
    assert_eq!(w.grab().0, h);
    h
}

/// One timer per connection: each assignment re-arms it for the new job, so an earlier job
/// loses its timer, whichever shard owns each function. (gearmand 1.1.20 re-arms it but keeps
/// the first job's pointer in it, and requeues that job instead: PROTOCOL.md §3.9 DON'T-COPY.)
#[test]
fn each_assignment_rearms_the_one_can_do_timeout_for_its_job() {
    if skip_under_gearmand("gearmand's re-armed timer requeues the job it first guarded") {
        return;
    }
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut w = timed_worker(&s);
    // a (f0), then half a second later b (f1): the timer now guards b alone.
    let a = submit_and_grab(&mut c, &mut w, "f0");
    std::thread::sleep(Duration::from_millis(500));
    let b = submit_and_grab(&mut c, &mut w, "f1");
    std::thread::sleep(Duration::from_millis(1500));
    w.send(WORK_COMPLETE, &[&a, b"a done"]);
    c.expect(WORK_COMPLETE, &[&a, b"a done"]);
    w.send(WORK_COMPLETE, &[&b, b"b late"]);
    w.expect(
        ERROR,
        &[b"JOB_NOT_FOUND", b"Job given in work result not found"],
    );
    assert_eq!(w.grab().0, b, "b was requeued");
    w.send(WORK_COMPLETE, &[&b, b"b done"]);
    c.expect(WORK_COMPLETE, &[&b, b"b done"]);
}

/// An assignment of a function without a timeout removes the connection's timer: the timed
/// job given before it runs past its timeout.
#[test]
fn an_assignment_without_a_timeout_removes_the_can_do_timeout() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut w = timed_worker(&s);
    let d = submit_and_grab(&mut c, &mut w, "f0");
    let e = submit_and_grab(&mut c, &mut w, "f2");
    std::thread::sleep(Duration::from_millis(1600));
    w.send(WORK_COMPLETE, &[&d, b"d done"]);
    c.expect(WORK_COMPLETE, &[&d, b"d done"]);
    w.send(WORK_COMPLETE, &[&e, b"e done"]);
    c.expect(WORK_COMPLETE, &[&e, b"e done"]);
}

#[test]
fn can_do_timeout_zero_or_garbage_means_no_timeout() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB_BG, "f", "", b"x");
    let mut w = s.conn();
    w.send(CAN_DO_TIMEOUT, &[b"f", b"abc"]);
    w.sync();
    w.grab();
    let mut a = s.conn();
    assert_eq!(status_of(&mut a, "f"), Some((1, 1, 1)));
    w.send(WORK_COMPLETE, &[&h, b""]);
    w.sync();
}

// ---------------------------------------------------------------------------
// --job-retries
// ---------------------------------------------------------------------------

#[test]
fn job_retries_drops_job_and_fails_clients() {
    let s = Server::start(&["--job-retries=2"]);
    let mut c1 = s.conn();
    let mut c2 = s.conn();
    let h = c1.submit(SUBMIT_JOB, "f", "U", b"x");
    assert_eq!(c2.submit(SUBMIT_JOB, "f", "U", b"x"), h);
    // First loss: requeued (retries = 1).
    let mut w1 = s.conn();
    w1.can_do(&["f"]);
    w1.grab();
    let mut w2 = sleeping_worker(&s, &["f"]);
    drop(w1);
    w2.expect(NOOP, &[]);
    let mut a = s.conn();
    assert!(
        a.admin("show jobs")
            .starts_with(&format!("{}\t1\t0\t0\n", String::from_utf8_lossy(&h)))
    );
    // Second loss: retries == 2 -> dropped, clients get WORK_FAIL (no NUL).
    w2.grab();
    drop(w2);
    c1.expect(WORK_FAIL, &[&h]);
    c2.expect(WORK_FAIL, &[&h]);
    assert_eq!(c1.status(&h), s4(["0", "0", "0", "0"]));
    assert_eq!(a.admin("show jobs"), ".\n");
}

#[test]
fn job_retries_one_drops_background_job_on_first_loss() {
    let s = Server::start(&["--job-retries=1"]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB_BG, "f", "", b"x");
    let mut w1 = s.conn();
    w1.can_do(&["f"]);
    w1.grab();
    drop(w1);
    let mut a = s.conn();
    wait_until("the job is dropped", || a.admin("show jobs") == ".\n");
    assert_eq!(c.status(&h), s4(["0", "0", "0", "0"]));
    c.sync();
}

#[test]
fn job_retries_counts_cant_do_requeues() {
    let s = Server::start(&["--job-retries=1"]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "f", "", b"x");
    let mut w = s.conn();
    w.can_do(&["f"]);
    w.grab();
    w.send(CANT_DO, &[b"f"]);
    w.sync();
    c.expect(WORK_FAIL, &[&h]);
}

// ---------------------------------------------------------------------------
// Client disconnect (§3.10)
// ---------------------------------------------------------------------------

#[test]
fn client_disconnect_while_queued_job_is_never_run() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "f", "", b"orphan");
    let mut keep = s.conn();
    let h2 = keep.submit(SUBMIT_JOB, "f", "", b"kept");
    let mut a = s.conn();
    disconnect(&mut a, c);
    if !is_gearmand() {
        // Decision 6: removed at once.
        assert_eq!(status_of(&mut a, "f"), Some((1, 0, 0)));
        assert_eq!(keep.status(&h), s4(["0", "0", "0", "0"]));
    } else {
        // gearmand keeps it counted until it reaches the queue head.
        assert_eq!(status_of(&mut a, "f"), Some((2, 0, 0)));
    }
    // Either way the worker never sees it.
    let mut w = s.conn();
    w.can_do(&["f"]);
    assert_eq!(w.grab().0, h2);
    w.grab_none();
    assert_eq!(status_of(&mut a, "f"), Some((1, 1, 1)));
}

#[test]
fn client_disconnect_while_running_job_keeps_running() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "f", "", b"x");
    let mut w = s.conn();
    w.can_do(&["f"]);
    w.grab();
    let mut a = s.conn();
    disconnect(&mut a, c);
    assert_eq!(status_of(&mut a, "f"), Some((1, 1, 1)));
    // Results are accepted silently and discarded.
    w.send(WORK_DATA, &[&h, b"d"]);
    w.send(WORK_STATUS, &[&h, b"1", b"2"]);
    w.send(WORK_COMPLETE, &[&h, b"r"]);
    w.sync();
    assert_eq!(status_of(&mut a, "f"), Some((0, 0, 1)));
}

#[test]
fn client_disconnect_leaves_other_attached_clients() {
    let s = Server::start(&[]);
    let mut c1 = s.conn();
    let mut c2 = s.conn();
    let h = c1.submit(SUBMIT_JOB, "f", "U", b"x");
    assert_eq!(c2.submit(SUBMIT_JOB, "f", "U", b"x"), h);
    let mut a = s.conn();
    disconnect(&mut a, c1);
    let mut w = s.conn();
    w.can_do(&["f"]);
    assert_eq!(w.grab().0, h);
    w.send(WORK_COMPLETE, &[&h, b"r"]);
    c2.expect(WORK_COMPLETE, &[&h, b"r"]);
}

#[test]
fn foreground_client_coalesced_onto_background_job_disconnects() {
    let s = Server::start(&[]);
    let mut bg = s.conn();
    let h = bg.submit(SUBMIT_JOB_BG, "f", "U", b"x");
    let mut fg = s.conn();
    assert_eq!(fg.submit(SUBMIT_JOB, "f", "U", b"x"), h);
    let mut a = s.conn();
    disconnect(&mut a, fg);
    let mut w = s.conn();
    w.can_do(&["f"]);
    if skip_under_gearmand("background job killed by a coalesced client's disconnect (decision 5)")
    {
        // gearmand (QUIRK ✔obs): the background job is dropped, the worker gets NO_JOB.
        w.grab_none();
        return;
    }
    // Decision 5: the background job survives.
    assert_eq!(w.grab().0, h);
}

#[test]
fn client_disconnect_with_several_pending_jobs() {
    let s = Server::start(&[]);
    let mut w = s.conn();
    w.can_do(&["f"]);
    let mut c = s.conn();
    let running = c.submit(SUBMIT_JOB, "f", "", b"1");
    w.grab();
    c.submit(SUBMIT_JOB, "f", "", b"2");
    c.submit(SUBMIT_JOB_LOW, "f", "", b"3");
    let bg = c.submit(SUBMIT_JOB_BG, "f", "", b"4");
    let mut a = s.conn();
    disconnect(&mut a, c);
    // The background job remains; the orphaned foreground ones are skipped.
    assert_eq!(w.grab().0, bg);
    w.grab_none();
    w.send(WORK_COMPLETE, &[&running, b""]);
    w.sync();
}
