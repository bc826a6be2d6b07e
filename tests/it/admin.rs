//! Text admin protocol (PROTOCOL.md §2): every command of §2.2 with byte-exact
//! output, listing order per §2.3, parsing rules of §2.1.

use crate::util::*;

/// gearmand's job/function hash (PROTOCOL.md §2.3): Jenkins one-at-a-time on
/// signed 32-bit arithmetic with signed chars; 0 maps to 1.
fn gm_hash(key: &[u8]) -> u32 {
    let mut v: i32 = 0;
    for &b in key {
        v = v.wrapping_add(b as i8 as i32);
        v = v.wrapping_add(v.wrapping_shl(10));
        v ^= v >> 6;
    }
    v = v.wrapping_add(v.wrapping_shl(3));
    v ^= v >> 11;
    v = v.wrapping_add(v.wrapping_shl(15));
    let r = v as u32;
    if r == 0 { 1 } else { r }
}

fn bucket(key: &[u8]) -> u32 {
    gm_hash(key) % 991
}

/// Orders `items` (oldest first) as gearmand lists them: ascending bucket,
/// newest first within a bucket.
fn listing_order<T: Clone>(items: &[(u32, T)]) -> Vec<T> {
    let mut v: Vec<(u32, usize, T)> = items
        .iter()
        .enumerate()
        .map(|(i, (b, t))| (*b, i, t.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    v.into_iter().map(|x| x.2).collect()
}

#[test]
fn hash_test_vectors() {
    for (k, h) in [
        (&b""[..], 1u32),
        (b"a", 3392050242),
        (b"f", 1208324078),
        (b"exc", 116784641),
        (b"reverse", 4028014295),
        (b"gb", 2762233131),
        (b"H:vm:1", 1654991873),
        (b"\xe9\x74\xe9", 1023465389),
    ] {
        assert_eq!(gm_hash(k), h, "{k:?}");
    }
}

/// Two names (older, newer) whose function hashes share a bucket.
fn colliding_names(prefix: &str) -> (String, String) {
    let mut seen = std::collections::HashMap::new();
    for i in 0.. {
        let n = format!("{prefix}{i}");
        if let Some(old) = seen.insert(bucket(n.as_bytes()), n.clone()) {
            return (old, n);
        }
    }
    unreachable!()
}

// ---------------------------------------------------------------------------
// status / prioritystatus
// ---------------------------------------------------------------------------

#[test]
fn status_empty() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    assert_eq!(a.admin("status"), ".\n");
    assert_eq!(a.admin("prioritystatus"), ".\n");
}

#[test]
fn status_exact_counts() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "f", "1", b"");
    c.submit(SUBMIT_JOB_BG, "f", "2", b"");
    c.submit(SUBMIT_JOB_HIGH, "f", "3", b"");
    let mut w1 = s.conn();
    w1.can_do(&["f", "f"]);
    w1.grab();
    let mut w2 = s.conn();
    w2.can_do(&["f"]);
    let mut a = s.conn();
    // total = queued + running, workers = entries (duplicates count).
    assert_eq!(a.admin("status"), "f\t3\t1\t3\n.\n");
    // Queued (not running) per priority: the HIGH one is running.
    assert_eq!(a.admin("prioritystatus"), "f\t0\t2\t0\t3\n.\n");
}

#[test]
fn status_lists_every_function_ever_seen_in_hash_order() {
    let s = Server::start(&[]);
    let (old, new) = colliding_names("c");
    let names = ["a", "f", "reverse", "gb", "exc", old.as_str(), new.as_str()];
    let mut c = s.conn();
    let mut w = s.conn();
    for (i, n) in names.iter().enumerate() {
        // Functions created by CAN_DO, by SUBMIT and by `create function`.
        match i % 3 {
            0 => w.send(CAN_DO, &[n.as_bytes()]),
            1 => {
                c.submit(SUBMIT_JOB_LOW_BG, n, "", b"");
            }
            _ => assert_eq!(c.admin(&format!("create function {n}\r")), "OK\r\n"),
        }
        w.sync();
    }
    let items: Vec<(u32, usize)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (bucket(n.as_bytes()), i))
        .collect();
    let mut want_status = String::new();
    let mut want_prio = String::new();
    for i in listing_order(&items) {
        let (total, workers) = match i % 3 {
            0 => (0, 1),
            1 => (1, 0),
            _ => (0, 0),
        };
        want_status.push_str(&format!("{}\t{total}\t0\t{workers}\n", names[i]));
        want_prio.push_str(&format!("{}\t0\t0\t{total}\t{workers}\n", names[i]));
    }
    want_status.push_str(".\n");
    want_prio.push_str(".\n");
    let mut a = s.conn();
    assert_eq!(a.admin("status"), want_status);
    assert_eq!(a.admin("prioritystatus"), want_prio);
}

// ---------------------------------------------------------------------------
// workers
// ---------------------------------------------------------------------------

#[test]
fn workers_lists_every_connection() {
    let s = Server::start(&[]);
    let mut w = s.conn();
    w.send(SET_CLIENT_ID, &[b"w1"]);
    for f in ["a", "b", "c", "b"] {
        w.send(CAN_DO, &[f.as_bytes()]);
    }
    w.sync();
    let mut c = s.conn();
    c.sync();
    let mut a = s.conn();
    let out = a.admin("workers");
    assert!(out.ends_with("\n.\n"), "{out:?}");
    let lines: Vec<&str> = out.lines().filter(|l| *l != ".").collect();
    // The worker, the client and this admin connection (at least: under
    // gearmand the start-up probe connection may still be listed).
    assert!(lines.len() >= 3, "{out:?}");
    for l in &lines {
        let (fd, rest) = l.split_once(' ').unwrap();
        assert!(fd.parse::<u32>().is_ok(), "{l:?}");
        assert!(rest.starts_with("127.0.0.1 "), "{l:?}");
    }
    // Reverse registration order, duplicates included.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.ends_with(" 127.0.0.1 w1 : b c b a"))
            .count(),
        1,
        "{out:?}"
    );
    assert!(
        lines
            .iter()
            .filter(|l| l.ends_with(" 127.0.0.1 - :"))
            .count()
            >= 2,
        "{out:?}"
    );
    // Extra tokens are ignored.
    let again = a.admin("workers extra args");
    assert_eq!(again.lines().count(), out.lines().count());
}

#[test]
fn workers_after_cant_do_and_reset() {
    let s = Server::start(&[]);
    let mut w = s.conn();
    w.send(SET_CLIENT_ID, &[b"wk"]);
    w.can_do(&["a", "b", "a"]);
    w.send(CANT_DO, &[b"a"]);
    w.sync();
    let mut a = s.conn();
    let out = a.admin("workers");
    assert_eq!(
        out.lines()
            .filter(|l| l.ends_with(" 127.0.0.1 wk : b"))
            .count(),
        1,
        "{out:?}"
    );
    w.send(RESET_ABILITIES, &[]);
    w.sync();
    let out = a.admin("workers");
    assert_eq!(
        out.lines()
            .filter(|l| l.ends_with(" 127.0.0.1 wk :"))
            .count(),
        1,
        "{out:?}"
    );
}

// ---------------------------------------------------------------------------
// show jobs / show unique jobs
// ---------------------------------------------------------------------------

#[test]
fn show_jobs_exact_and_ordered() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut handles = Vec::new();
    for i in 0..12 {
        let ty = if i % 2 == 0 {
            SUBMIT_JOB_BG
        } else {
            SUBMIT_JOB
        };
        handles.push((c.submit(ty, "f", "", b""), i % 2 == 0));
    }
    let items: Vec<(u32, (Vec<u8>, bool))> =
        handles.iter().map(|h| (bucket(&h.0), h.clone())).collect();
    let mut want = String::new();
    for (h, bg) in listing_order(&items) {
        // handle, retries, ignore, job_queued (1 for background jobs).
        want.push_str(&format!(
            "{}\t0\t0\t{}\n",
            String::from_utf8(h).unwrap(),
            bg as u8
        ));
    }
    want.push_str(".\n");
    let mut a = s.conn();
    assert_eq!(a.admin("show jobs"), want);
    assert_eq!(a.admin("SHOW JOBS"), want);
}

#[test]
fn show_jobs_retries_column() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB_BG, "f", "", b"");
    let mut w1 = s.conn();
    w1.can_do(&["f"]);
    w1.grab();
    w1.send(CANT_DO, &[b"f"]);
    w1.sync();
    let mut a = s.conn();
    assert_eq!(
        a.admin("show jobs"),
        format!("{}\t1\t0\t1\n.\n", String::from_utf8_lossy(&h))
    );
}

#[test]
fn show_unique_jobs_exact_and_ordered() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut items: Vec<(u32, String)> = Vec::new();
    for u in ["alpha", "beta", "gamma", "delta", "x", "y"] {
        c.submit(SUBMIT_JOB_BG, "f", u, b"data");
        items.push((bucket(u.as_bytes()), u.to_string()));
    }
    // `-` is keyed by its data but listed as `-`.
    c.submit(SUBMIT_JOB_BG, "f", "-", b"some data");
    items.push((bucket(b"some data"), "-".to_string()));
    // Empty uniques are listed as blank lines, first (key 0).
    c.submit(SUBMIT_JOB_BG, "f", "", b"1");
    items.push((0, String::new()));
    c.submit(SUBMIT_JOB, "g", "", b"2");
    items.push((0, String::new()));
    let mut want = String::new();
    for u in listing_order(&items) {
        want.push_str(&u);
        want.push('\n');
    }
    want.push_str(".\n");
    let mut a = s.conn();
    assert_eq!(a.admin("show unique jobs"), want);
}

#[test]
fn show_errors() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    assert_eq!(
        a.admin("show"),
        "ERR UNKNOWN_COMMAND Unknown+server+commandshow\r\n"
    );
    assert_eq!(a.admin("show foo"), "ERR UNKNOWN_SHOW_ARGUMENTS\r\n");
    assert_eq!(a.admin("show unique"), "ERR UNKNOWN_SHOW_ARGUMENTS\r\n");
    assert_eq!(a.admin("show jobs x"), "ERR UNKNOWN_SHOW_ARGUMENTS\r\n");
}

// ---------------------------------------------------------------------------
// cancel job
// ---------------------------------------------------------------------------

#[test]
fn cancel_job_argument_errors() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    assert_eq!(
        a.admin("cancel"),
        "ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"
    );
    assert_eq!(
        a.admin("cancel job"),
        "ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"
    );
    assert_eq!(a.admin("cancel job H:x:1"), "ERR UNKNOWN_JOB\r\n");
    assert_eq!(a.admin("CANCEL JOB H:x:1"), "ERR UNKNOWN_JOB\r\n");
    assert_eq!(a.admin("cancel foo bar"), "ERR UNKNOWN_ERROR\r\n");
    assert_eq!(a.admin("cancel job a b"), "ERR UNKNOWN_ERROR\r\n");
}

#[test]
fn cancel_queued_job() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "f", "", b"");
    let bg = c.submit(SUBMIT_JOB_BG, "f", "", b"");
    let mut a = s.conn();
    let hs = String::from_utf8(h.clone()).unwrap();
    assert_eq!(a.admin(&format!("cancel job {hs}")), "OK\r\n");
    // Clients get WORK_FAIL without a NUL.
    c.expect(WORK_FAIL, &[&h]);
    assert_eq!(
        a.admin(&format!("cancel job {}\r", String::from_utf8_lossy(&bg))),
        "OK\r\n"
    );
    c.sync();
    // Cancelled jobs are never handed out.
    let mut w = s.conn();
    w.can_do(&["f"]);
    w.grab_none();
    assert_eq!(status_of(&mut a, "f"), Some((0, 0, 1)));
}

#[test]
fn cancel_running_job() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "f", "", b"");
    let mut w = s.conn();
    w.can_do(&["f"]);
    w.grab();
    let mut a = s.conn();
    assert_eq!(
        a.admin(&format!("cancel job {}", String::from_utf8_lossy(&h))),
        "OK\r\n"
    );
    c.expect(WORK_FAIL, &[&h]);
    w.send(WORK_COMPLETE, &[&h, b"r"]);
    let _ = w.sync_collect();
    if is_gearmand() {
        // gearmand does not stop or detach it: the client also gets WORK_COMPLETE (✔obs).
        c.expect(WORK_COMPLETE, &[&h, b"r"]);
    } else {
        // Decision 7: clients are detached after the WORK_FAIL.
        c.sync();
    }
}

// ---------------------------------------------------------------------------
// create / drop function
// ---------------------------------------------------------------------------

#[test]
fn create_function_crlf() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    assert_eq!(a.admin("create function foo\r"), "OK\r\n");
    assert_eq!(a.admin("create function foo\r"), "OK\r\n");
    assert_eq!(a.admin("status"), "foo\t0\t0\t0\n.\n");
}

#[test]
fn create_function_bare_lf() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    assert_eq!(a.admin("create function foo"), "OK\r\n");
    // Decision 8: `foo` (gearmand QUIRK ✔obs: `fo`).
    let want = if is_gearmand() {
        "fo\t0\t0\t0\n.\n"
    } else {
        "foo\t0\t0\t0\n.\n"
    };
    assert_eq!(a.admin("status"), want);
}

#[test]
fn create_function_errors() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    let err =
        "ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+create\r\n";
    assert_eq!(a.admin("create"), err);
    assert_eq!(a.admin("create function"), err);
    assert_eq!(a.admin("create x y"), err);
    assert_eq!(a.admin("create function a b"), err);
    assert_eq!(a.admin("status"), ".\n");
}

#[test]
fn drop_function() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    assert_eq!(a.admin("create function bar\r"), "OK\r\n");
    // Matched case-insensitively; bare LF is fine for drop.
    assert_eq!(a.admin("drop function BAR"), "OK\r\n");
    assert_eq!(a.admin("drop function bar"), "ERR function not found\r\n");
    assert_eq!(a.admin("status"), ".\n");
}

#[test]
fn drop_function_with_workers() {
    let s = Server::start(&[]);
    let mut w = s.conn();
    w.can_do(&["f"]);
    let mut a = s.conn();
    let busy = "ERR there are still connected workers or executing clients\r\n";
    assert_eq!(a.admin("drop function f"), busy);
    assert_eq!(a.admin("drop function F"), busy);
    w.send(CANT_DO, &[b"f"]);
    w.sync();
    assert_eq!(a.admin("drop function f"), "OK\r\n");
    assert_eq!(a.admin("status"), ".\n");
}

#[test]
fn drop_function_errors() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    let err =
        "ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+drop\r\n";
    assert_eq!(a.admin("drop"), err);
    assert_eq!(a.admin("drop function"), err);
    assert_eq!(a.admin("drop fun x"), err);
    assert_eq!(a.admin("drop function nope"), "ERR function not found\r\n");
}

// ---------------------------------------------------------------------------
// maxqueue
// ---------------------------------------------------------------------------

#[test]
fn maxqueue_errors_and_unknown_function() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    assert_eq!(
        a.admin("maxqueue"),
        "ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+maxqueue\r\n"
    );
    assert_eq!(a.admin("maxqueue nf 3"), "OK\r\n");
    // Decision 8: gearshiftd creates the function; gearmand silently does nothing.
    let want = if is_gearmand() {
        ".\n"
    } else {
        "nf\t0\t0\t0\n.\n"
    };
    assert_eq!(a.admin("status"), want);
    if !is_gearmand() {
        let mut c = s.conn();
        for i in 0..3 {
            c.submit(SUBMIT_JOB_BG, "nf", &i.to_string(), b"");
        }
        c.send(SUBMIT_JOB_BG, &[b"nf", b"x", b""]);
        c.expect(ERROR, &[b"QUEUE_ERROR", b"Job queue is full"]);
    }
}

/// maxqueue values as gearmand reads them: C's `atoi` into an int, negatives 0 (unlimited):
/// `4294967297` is a limit of 1, a 20-digit number (-1 after the cast) no limit.
#[test]
fn maxqueue_values_past_32_bits_read_as_gearmand_reads_them() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    let mut c = s.conn();
    let full = [&b"QUEUE_ERROR"[..], b"Job queue is full"];
    c.submit(SUBMIT_JOB_BG, "wrap", "w1", b"");
    assert_eq!(a.admin("maxqueue wrap 4294967297"), "OK\r\n");
    c.send(SUBMIT_JOB_BG, &[b"wrap", b"w2", b""]);
    c.expect(ERROR, &full);
    c.submit(SUBMIT_JOB_BG, "huge", "h1", b"");
    assert_eq!(a.admin("maxqueue huge 99999999999999999999"), "OK\r\n");
    c.submit(SUBMIT_JOB_BG, "huge", "h2", b"");
    c.submit(SUBMIT_JOB_BG, "plus", "p1", b"");
    assert_eq!(a.admin("maxqueue plus +1"), "OK\r\n");
    c.send(SUBMIT_JOB_BG, &[b"plus", b"p2", b""]);
    c.expect(ERROR, &full);
}

#[test]
fn maxqueue_per_priority_limits() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    assert_eq!(a.admin("create function f\r"), "OK\r\n");
    // high=1, normal=2, low=3, checked against the function's total.
    assert_eq!(a.admin("maxqueue f 1 2 3"), "OK\r\n");
    let mut c = s.conn();
    let full = [&b"QUEUE_ERROR"[..], b"Job queue is full"];
    c.submit(SUBMIT_JOB_HIGH_BG, "f", "h1", b"");
    c.send(SUBMIT_JOB_HIGH_BG, &[b"f", b"h2", b""]);
    c.expect(ERROR, &full);
    c.submit(SUBMIT_JOB_BG, "f", "n1", b"");
    c.send(SUBMIT_JOB, &[b"f", b"n2", b""]);
    c.expect(ERROR, &full);
    c.submit(SUBMIT_JOB_LOW, "f", "l1", b"");
    c.send(SUBMIT_JOB_LOW_BG, &[b"f", b"l2", b""]);
    c.expect(ERROR, &full);
    // `maxqueue f` resets to unlimited.
    assert_eq!(a.admin("maxqueue f"), "OK\r\n");
    c.submit(SUBMIT_JOB_HIGH_BG, "f", "h3", b"");
    // Two values: high, normal; low = 0 (unlimited).
    assert_eq!(a.admin("maxqueue f 1 1"), "OK\r\n");
    c.send(SUBMIT_JOB_BG, &[b"f", b"n3", b""]);
    c.expect(ERROR, &full);
    c.submit(SUBMIT_JOB_LOW_BG, "f", "l3", b"");
    // Running jobs count too.
    let mut w = s.conn();
    w.can_do(&["f"]);
    w.grab();
    c.send(SUBMIT_JOB_HIGH, &[b"f", b"h4", b""]);
    c.expect(ERROR, &full);
    assert_eq!(status_of(&mut a, "f"), Some((5, 1, 1)));
}

// ---------------------------------------------------------------------------
// getpid / verbose / version / unknown / parsing
// ---------------------------------------------------------------------------

#[test]
fn getpid_matches_process() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    assert_eq!(a.admin("getpid"), format!("OK {}\n", s.pid()));
}

#[test]
fn verbose_reports_level() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    assert_eq!(a.admin("verbose"), "OK ERROR\n");
    let s2 = Server::start(&["--verbose=WARNING"]);
    let mut a2 = s2.conn();
    assert_eq!(a2.admin("verbose"), "OK WARNING\n");
}

#[test]
fn version_line() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    let v = a.admin("version");
    assert!(
        v.starts_with("OK ") && v.ends_with('\n') && !v.ends_with("\r\n"),
        "{v:?}"
    );
    assert!(v.len() > 4 && !v[3..].trim_end().contains(' '), "{v:?}");
    if is_gearmand() {
        assert!(v.starts_with("OK 1.1.20"), "{v:?}");
    }
}

#[test]
fn unknown_commands() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    assert_eq!(
        a.admin("foo"),
        "ERR UNKNOWN_COMMAND Unknown+server+commandfoo\r\n"
    );
    assert_eq!(
        a.admin("foo bar baz"),
        "ERR UNKNOWN_COMMAND Unknown+server+commandfoo\r\n"
    );
    assert_eq!(
        a.admin(""),
        "ERR UNKNOWN_COMMAND Unknown+server+command\r\n"
    );
    assert_eq!(
        a.admin("\r"),
        "ERR UNKNOWN_COMMAND Unknown+server+command\r\n"
    );
    // A leading space makes the first token empty; tabs do not split.
    assert_eq!(
        a.admin(" status"),
        "ERR UNKNOWN_COMMAND Unknown+server+command\r\n"
    );
    assert_eq!(
        a.admin("status\tx"),
        "ERR UNKNOWN_COMMAND Unknown+server+commandstatus\tx\r\n"
    );
    // Still open and working.
    assert_eq!(a.admin("status"), ".\n");
}

#[test]
fn shutdown_is_unknown_in_gearmand_and_accepted_by_gearshiftd() {
    let mut s = Server::start(&[]);
    let mut a = s.conn();
    if is_gearmand() {
        assert_eq!(
            a.admin("shutdown"),
            "ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"
        );
        assert_eq!(
            a.admin("shutdown graceful"),
            "ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"
        );
        return;
    }
    // Decision 9.
    assert_eq!(a.admin("shutdown"), "OK\r\n");
    let st = s.wait_exit(std::time::Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
}

#[test]
fn shutdown_graceful_waits_for_jobs() {
    // Decision 9: `shutdown graceful` stops accepting and exits once no jobs remain.
    if skip_under_gearmand("admin shutdown graceful (decision 9)") {
        return;
    }
    let mut s = Server::start(&[]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB_BG, "f", "", b"");
    let mut w = s.conn();
    w.can_do(&["f"]);
    let mut a = s.conn();
    assert_eq!(a.admin("shutdown graceful"), "OK\r\n");
    // New connections are refused; existing ones are still served.
    let addr = s.addr();
    wait_until("new connections are refused", || {
        std::net::TcpStream::connect(addr).is_err()
    });
    assert!(s.is_running());
    c.sync();
    w.grab();
    w.send(WORK_COMPLETE, &[&h, b""]);
    // One more round trip (the server may already be closing): gearmand's
    // threaded mode only notices "no jobs left" on later I/O (✔obs).
    w.send(ECHO_REQ, &[b"last"]);
    let _ = w.recv_any(READ_TIMEOUT);
    let st = s.wait_exit(std::time::Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
}

#[test]
fn case_insensitive_commands() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "f", "u", b"");
    let mut a = s.conn();
    assert_eq!(a.admin("STATUS"), a.admin("status"));
    assert_eq!(a.admin("PrioritySTATUS"), a.admin("prioritystatus"));
    assert_eq!(a.admin("Show Unique Jobs"), "u\n.\n");
    assert_eq!(
        a.admin("Workers").lines().count(),
        a.admin("workers").lines().count()
    );
    assert_eq!(a.admin("VERSION"), a.admin("version"));
    assert_eq!(a.admin("GetPid"), a.admin("getpid"));
    assert_eq!(a.admin("Create Function g\r"), "OK\r\n");
    assert_eq!(a.admin("DROP FUNCTION G"), "OK\r\n");
    assert_eq!(a.admin("MaxQueue f 5"), "OK\r\n");
}

#[test]
fn crlf_and_lf_are_equivalent() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "f", "u", b"");
    let mut a = s.conn();
    for cmd in [
        "status",
        "prioritystatus",
        "show jobs",
        "show unique jobs",
        "version",
        "verbose",
        "getpid",
        "nope",
    ] {
        let lf = a.admin(cmd);
        let crlf = a.admin(&format!("{cmd}\r"));
        assert_eq!(lf, crlf, "{cmd}");
    }
}

#[test]
fn cancel_job_with_lf_and_crlf() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let h1 = String::from_utf8(c.submit(SUBMIT_JOB_BG, "f", "", b"")).unwrap();
    let h2 = String::from_utf8(c.submit(SUBMIT_JOB_BG, "f", "", b"")).unwrap();
    let mut a = s.conn();
    assert_eq!(a.admin(&format!("cancel job {h1}")), "OK\r\n");
    assert_eq!(a.admin(&format!("cancel job {h2}\r")), "OK\r\n");
}

#[test]
fn pipelined_commands_answer_in_order() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "f", "u", b"");
    let mut a = s.conn();
    a.send_raw(b"status\nversion\r\nnope\nshow unique jobs\nprioritystatus\r\ngetpid\n");
    assert_eq!(a.read_admin_response(), "f\t1\t0\t0\n.\n");
    assert!(a.read_admin_response().starts_with("OK "));
    assert_eq!(
        a.read_admin_response(),
        "ERR UNKNOWN_COMMAND Unknown+server+commandnope\r\n"
    );
    assert_eq!(a.read_admin_response(), "u\n.\n");
    assert_eq!(a.read_admin_response(), "f\t0\t1\t0\t0\n.\n");
    assert_eq!(a.read_admin_response(), format!("OK {}\n", s.pid()));
}

#[test]
fn five_tokens_accepted() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    assert_eq!(a.admin("create function mq\r"), "OK\r\n");
    assert_eq!(a.admin("maxqueue mq 1 2 3"), "OK\r\n");
    assert_eq!(a.admin("status"), "mq\t0\t0\t0\n.\n");
}

#[test]
fn admin_connection_can_also_speak_binary() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    assert_eq!(a.admin("status"), ".\n");
    let h = a.submit(SUBMIT_JOB_BG, "f", "", b"");
    assert_eq!(
        a.admin("show jobs"),
        format!("{}\t0\t0\t1\n.\n", String::from_utf8(h).unwrap())
    );
}
