//! Several shards and `--handoff`: a connection moved to the shard that owns the function its
//! first CAN_DO (or SUBMIT) names keeps every byte it pipelined behind that packet, in order,
//! and behaves exactly as one that stays. Against gearmand (no such flag) the same exchanges
//! must hold, which proves the expectations are gearmand's.

use std::time::Duration;

use crate::util::*;

/// Functions whose names hash to different owners among four shards.
const FUNCTIONS: [&str; 8] = ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"];

fn start(handoff: &str) -> Server {
    let flag = format!("--handoff={handoff}");
    Server::start_with(&[], &["--threads=4", &flag])
}

#[test]
fn a_worker_keeps_its_pipelined_input_across_a_handoff() {
    for handoff in ["off", "workers", "all"] {
        let s = start(handoff);
        let mut c = s.conn();
        for f in FUNCTIONS {
            c.submit(SUBMIT_JOB_BG, f, &format!("u-{f}"), f.as_bytes());
        }
        let mut workers = Vec::new();
        for f in FUNCTIONS {
            // One write: the CAN_DO that decides the home, then packets that must follow it,
            // the last one cut in two so an incomplete frame crosses the hand-off too.
            let mut w = s.conn();
            let mut bytes = req(CAN_DO, &[f.as_bytes()]);
            bytes.extend(req(GRAB_JOB, &[]));
            bytes.extend(req(ECHO_REQ, &[b"after-grab"]));
            let echo = req(ECHO_REQ, &[b"split"]);
            bytes.extend(&echo[..7]);
            w.send_raw(&bytes);
            let assign = w.expect_type(JOB_ASSIGN).argn(3);
            assert_eq!(assign[1], f.as_bytes(), "--handoff={handoff}");
            assert_eq!(assign[2], f.as_bytes(), "--handoff={handoff}");
            w.expect(ECHO_RES, &[b"after-grab"]);
            std::thread::sleep(Duration::from_millis(20));
            w.send_raw(&echo[7..]);
            w.expect(ECHO_RES, &[b"split"]);
            w.send(WORK_COMPLETE, &[&assign[0], b"done"]);
            // The worker sleeps and is woken for the next job of its function.
            w.send(PRE_SLEEP, &[]);
            w.sync();
            c.submit(SUBMIT_JOB_BG, f, &format!("v-{f}"), b"again");
            w.expect(NOOP, &[]);
            let again = w.grab();
            assert_eq!(again.2, b"again", "--handoff={handoff}");
            w.send(WORK_COMPLETE, &[&again.0, b""]);
            w.sync();
            workers.push(w);
        }
        let status = c.admin("status");
        for f in FUNCTIONS {
            assert!(
                status.contains(&format!("{f}\t0\t0\t1\n")),
                "--handoff={handoff}: {status}"
            );
        }
    }
}

#[test]
fn a_client_keeps_its_order_and_results_across_a_handoff() {
    for handoff in ["off", "workers", "all"] {
        let s = start(handoff);
        // One worker for every function: it stays with the owner of its first CAN_DO and
        // grabs from the others across shards.
        let mut w = s.conn();
        w.can_do(&FUNCTIONS);
        let mut clients = Vec::new();
        for (i, f) in FUNCTIONS.iter().enumerate() {
            let mut c = s.conn();
            let mut bytes = req(SET_CLIENT_ID, &[format!("client-{i}").as_bytes()]);
            // Half the clients have an answer due when their first SUBMIT is read, so they
            // are placed later, if at all.
            if i % 2 == 1 {
                bytes.extend(req(OPTION_REQ, &[b"exceptions"]));
            }
            bytes.extend(req(
                SUBMIT_JOB,
                &[f.as_bytes(), b"", format!("fg-{i}").as_bytes()],
            ));
            bytes.extend(req(SUBMIT_JOB_BG, &[b"other", b"", b"bg"]));
            bytes.extend(req(ECHO_REQ, &[format!("e{i}").as_bytes()]));
            c.send_raw(&bytes);
            if i % 2 == 1 {
                c.expect(OPTION_RES, &[b"exceptions"]);
            }
            let fg = c.expect_type(JOB_CREATED).body;
            let bg = c.expect_type(JOB_CREATED).body;
            assert_ne!(fg, bg);
            c.expect(ECHO_RES, &[format!("e{i}").as_bytes()]);
            clients.push((c, fg));
        }
        for _ in FUNCTIONS {
            let (handle, _, data) = w.grab();
            let mut result = b"result-".to_vec();
            result.extend(&data);
            w.send(WORK_COMPLETE, &[&handle, &result]);
        }
        for (i, (c, fg)) in clients.iter_mut().enumerate() {
            c.expect(WORK_COMPLETE, &[fg, format!("result-fg-{i}").as_bytes()]);
        }
        // `workers` sees every connection, with the client id it set before moving.
        let workers = clients[0].0.admin("workers");
        for i in 0..FUNCTIONS.len() {
            assert!(
                workers.contains(&format!(" client-{i} :")),
                "--handoff={handoff}: {workers}"
            );
        }
        assert!(workers.contains(": f7 f6 f5 f4 f3 f2 f1 f0\n"), "{workers}");
    }
}

/// A client that resets its connection right after submitting (found by the whole-server fuzz
/// target): its home reaps it at once, before the owners have answered, so the jobs it was
/// attached to were not yet among those its ClientGone named. Each owner's late JOB_CREATED
/// must hand the attachment back; otherwise the foreground jobs stay queued for nobody and a
/// worker later runs them for no one.
#[test]
fn a_client_reset_before_its_submits_are_answered_leaves_no_job() {
    for handoff in ["off", "workers", "all"] {
        let s = start(handoff);
        for _ in 0..8 {
            let mut c = s.conn();
            let mut submits = Vec::new();
            for f in FUNCTIONS {
                submits.extend(req(SUBMIT_JOB, &[f.as_bytes(), b"", b"x"]));
            }
            c.send_raw(&submits);
            // SO_LINGER 0: close sends a reset, which the home reads as an error and reaps
            // the connection in the same turn.
            socket2::SockRef::from(c.stream())
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(c);
        }
        // gearmand keeps such jobs listed (ignored) until a grab frees them; gearshiftd drops
        // them at once. Either way no worker may get one.
        let mut w = s.conn();
        w.can_do(&FUNCTIONS);
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..FUNCTIONS.len() {
            w.grab_none();
        }
        if !is_gearmand() {
            let mut a = s.conn();
            for f in FUNCTIONS {
                assert_eq!(
                    status_of(&mut a, f).map(|r| r.0),
                    Some(0),
                    "--handoff={handoff}: {f} still counts jobs"
                );
            }
        }
    }
}

/// A worker of many functions owned by different shards gets NO_JOB only when none of them
/// has a queued job: the owners that answered its last grab with nothing are asked last, never
/// skipped, though nothing (no NOOP: it is awake) told its home they have work again. Every
/// function in turn, each once its owner is known empty, then two owners' jobs at once.
#[test]
fn a_worker_of_many_owners_finds_a_job_on_an_owner_that_was_empty() {
    for handoff in ["off", "all"] {
        let s = start(handoff);
        let mut c = s.conn();
        let mut w = s.conn();
        w.can_do(&FUNCTIONS);
        for round in 0..2 {
            for (i, f) in FUNCTIONS.iter().enumerate() {
                // Every owner has just answered this worker's grab with nothing.
                w.grab_none();
                let data = format!("{round}-{i}");
                c.submit(SUBMIT_JOB_BG, f, "", data.as_bytes());
                let (handle, function, got) = w.grab();
                assert_eq!(function, f.as_bytes(), "--handoff={handoff}");
                assert_eq!(got, data.as_bytes(), "--handoff={handoff}");
                w.send(WORK_COMPLETE, &[&handle, b""]);
                // Two owners' jobs: both found, then NO_JOB.
                let g = FUNCTIONS[(i + 3) % FUNCTIONS.len()];
                c.submit(SUBMIT_JOB_BG, f, "", b"a");
                c.submit(SUBMIT_JOB_BG, g, "", b"b");
                let mut got = Vec::new();
                for _ in 0..2 {
                    let (handle, function, _) = w.grab();
                    got.push(function);
                    w.send(WORK_COMPLETE, &[&handle, b""]);
                }
                got.sort();
                let mut want = vec![f.as_bytes().to_vec(), g.as_bytes().to_vec()];
                want.sort();
                assert_eq!(got, want, "--handoff={handoff}");
            }
        }
        w.grab_none();
    }
}
