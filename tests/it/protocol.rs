//! Byte-level exchanges for every packet type (PROTOCOL.md §1.3, exact bodies §1.4),
//! the ERROR packets of §1.2, and a catalogue of malformed input (§1.1), one test each.

use crate::util::*;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Framing basics
// ---------------------------------------------------------------------------

#[test]
fn echo_round_trips_data() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.send(ECHO_REQ, &[b"hello"]);
    c.expect(ECHO_RES, &[b"hello"]);
    // Data may contain NULs and is echoed unchanged.
    c.send(ECHO_REQ, &[b"a\0b\0\0c"]);
    c.expect(ECHO_RES, &[b"a\0b\0\0c"]);
    // Empty body.
    c.send(ECHO_REQ, &[]);
    c.expect(ECHO_RES, &[]);
}

#[test]
fn echo_exact_bytes_on_the_wire() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.send_raw(b"\0REQ\0\0\0\x10\0\0\0\x03abc");
    let p = c.recv();
    assert_eq!(
        res(p.ty, &[&p.body]),
        b"\0RES\0\0\0\x11\0\0\0\x03abc".to_vec()
    );
}

#[test]
fn large_echo_round_trips() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    c.send(ECHO_REQ, &[&data]);
    let p = c.expect_type(ECHO_RES);
    assert!(p.body == data, "4 MiB echo differs");
}

#[test]
fn packet_split_into_one_byte_writes() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut bytes = req(SUBMIT_JOB_BG, &[b"split", b"u1", b"payload"]);
    bytes.extend(req(ECHO_REQ, &[b"after"]));
    for b in &bytes {
        c.send_raw(std::slice::from_ref(b));
    }
    let h = c.expect_type(JOB_CREATED).body;
    assert!(h.starts_with(b"H:"), "handle {h:?}");
    c.expect(ECHO_RES, &[b"after"]);
    // And a text line split the same way.
    for b in b"version\n" {
        c.send_raw(std::slice::from_ref(b));
    }
    assert!(c.read_line().starts_with("OK "));
}

#[test]
fn many_packets_in_one_write() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut bytes = Vec::new();
    for i in 0..200 {
        bytes.extend(req(ECHO_REQ, &[format!("e{i}").as_bytes()]));
    }
    bytes.extend(req(SUBMIT_JOB_BG, &[b"many", b"", b"x"]));
    bytes.extend(b"version\n");
    bytes.extend(req(ECHO_REQ, &[b"last"]));
    c.send_raw(&bytes);
    for i in 0..200 {
        c.expect(ECHO_RES, &[format!("e{i}").as_bytes()]);
    }
    c.expect_type(JOB_CREATED);
    assert!(c.read_line().starts_with("OK "));
    c.expect(ECHO_RES, &[b"last"]);
}

#[test]
fn text_and_binary_mix_on_one_connection() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.send_raw(b"status\n");
    assert_eq!(c.read_admin_response(), ".\n");
    c.send(ECHO_REQ, &[b"x"]);
    c.expect(ECHO_RES, &[b"x"]);
    assert_eq!(c.admin("status"), ".\n");
}

#[test]
fn zero_arg_packet_ignores_body() {
    // argc = 0: body bytes are read and discarded (§1.1).
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.send(GRAB_JOB, &[b"abc"]);
    c.expect(NO_JOB, &[]);
    c.send(PRE_SLEEP, &[b"zzz"]);
    c.sync();
}

// ---------------------------------------------------------------------------
// Every packet type (§1.3) with exact bodies (§1.4)
// ---------------------------------------------------------------------------

#[test]
fn handle_shape_and_counter() {
    let s = Server::start_one_shard(&[]);
    let mut c = s.conn();
    let h1 = c.submit(SUBMIT_JOB_BG, "f", "u1", b"d");
    let h2 = c.submit(SUBMIT_JOB_BG, "f", "u2", b"d");
    // Coalesced submission consumes no number.
    let h2b = c.submit(SUBMIT_JOB_BG, "f", "u2", b"d");
    let h3 = c.submit(SUBMIT_JOB_BG, "g", "u2", b"d");
    assert_eq!(h2, h2b);
    let text = |h: &[u8]| String::from_utf8(h.to_vec()).unwrap();
    for h in [&h1, &h2, &h3] {
        let t = text(h);
        assert!(t.starts_with("H:"), "handle {t}");
        assert!(t.len() <= 63, "handle {t}");
        assert!(!t.contains('\0'));
    }
    let prefix = |h: &str| h[..h.rfind(':').unwrap()].to_string();
    assert_eq!(prefix(&text(&h1)), prefix(&text(&h3)));
    assert!(text(&h1).ends_with(":1"), "{}", text(&h1));
    assert!(text(&h2).ends_with(":2"), "{}", text(&h2));
    assert!(text(&h3).ends_with(":3"), "{}", text(&h3));
}

#[test]
fn job_handle_prefix_flag() {
    let s = Server::start_one_shard(&["--job-handle-prefix=PFX"]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB_BG, "f", "u", b"d");
    assert_eq!(h, b"PFX:1");
}

#[test]
fn can_do_and_cant_do_have_no_reply() {
    let s = Server::start(&[]);
    let mut w = s.conn();
    w.send(CAN_DO, &[b"f1"]);
    w.send(CAN_DO, &[b"f2"]);
    w.send(CANT_DO, &[b"f1"]);
    w.sync();
    let mut a = s.conn();
    assert_eq!(status_of(&mut a, "f1"), Some((0, 0, 0)));
    assert_eq!(status_of(&mut a, "f2"), Some((0, 0, 1)));
    w.send(RESET_ABILITIES, &[]);
    w.sync();
    assert_eq!(status_of(&mut a, "f2"), Some((0, 0, 0)));
}

#[test]
fn pre_sleep_without_jobs_is_silent_then_noop() {
    let s = Server::start(&[]);
    let mut w = sleeping_worker(&s, &["f"]);
    w.expect_nothing(100);
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "f", "", b"x");
    w.expect(NOOP, &[]);
}

#[test]
fn submit_job_and_job_assign_bodies() {
    let s = Server::start(&[]);
    let mut w = s.conn();
    w.can_do(&["fn"]);
    let mut c = s.conn();
    c.send(SUBMIT_JOB, &[b"fn", b"uniq", b"da\0ta"]);
    let h = c.expect_type(JOB_CREATED).body;
    assert!(!h.contains(&0));
    w.send(GRAB_JOB, &[]);
    w.expect(JOB_ASSIGN, &[&h, b"fn", b"da\0ta"]);
    w.send(WORK_COMPLETE, &[&h, b"res\0ult"]);
    c.expect(WORK_COMPLETE, &[&h, b"res\0ult"]);
    w.grab_none();
}

#[test]
fn grab_job_uniq_body() {
    let s = Server::start(&[]);
    let mut w = s.conn();
    w.can_do(&["fn"]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB_BG, "fn", "my-unique", b"payload");
    w.send(GRAB_JOB_UNIQ, &[]);
    w.expect(JOB_ASSIGN_UNIQ, &[&h, b"fn", b"my-unique", b"payload"]);
    w.send(GRAB_JOB_UNIQ, &[]);
    w.expect(NO_JOB, &[]);
}

#[test]
fn grab_job_all_body_with_and_without_reducer() {
    let s = Server::start(&[]);
    let mut w = s.conn();
    w.can_do(&["fn"]);
    let mut c = s.conn();
    c.send(
        SUBMIT_REDUCE_JOB_BACKGROUND,
        &[b"fn", b"u1", b"red", b"agg", b"d1"],
    );
    let h1 = c.expect_type(JOB_CREATED).body;
    let h2 = c.submit(SUBMIT_JOB_BG, "fn", "u2", b"d2");
    w.send(GRAB_JOB_ALL, &[]);
    w.expect(JOB_ASSIGN_ALL, &[&h1, b"fn", b"u1", b"red", b"d1"]);
    // No reducer: JOB_ASSIGN_UNIQ (✔obs §1.3).
    w.send(GRAB_JOB_ALL, &[]);
    w.expect(JOB_ASSIGN_UNIQ, &[&h2, b"fn", b"u2", b"d2"]);
    w.send(GRAB_JOB_ALL, &[]);
    w.expect(NO_JOB, &[]);
}

#[test]
fn work_packets_forwarded_byte_for_byte() {
    let s = Server::start(&[]);
    let mut w = s.conn();
    w.can_do(&["fn"]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "fn", "", b"x");
    let (gh, _, _) = w.grab();
    assert_eq!(gh, h);
    w.send(WORK_DATA, &[&h, b"d\0ata"]);
    c.expect(WORK_DATA, &[&h, b"d\0ata"]);
    w.send(WORK_WARNING, &[&h, b"warn"]);
    c.expect(WORK_WARNING, &[&h, b"warn"]);
    w.send(WORK_STATUS, &[&h, b"007", b"abc"]);
    c.expect(WORK_STATUS, &[&h, b"007", b"abc"]);
    // Stored with atoi: "007" -> 7, "abc" -> 0.
    assert_eq!(c.status(&h), ["1", "1", "7", "0"].map(String::from));
    w.send(WORK_FAIL, &[&h]);
    c.expect(WORK_FAIL, &[&h]);
    assert_eq!(c.status(&h), ["0", "0", "0", "0"].map(String::from));
}

#[test]
fn work_fail_forwarded_with_trailing_nul() {
    let s = Server::start(&[]);
    let mut w = s.conn();
    w.can_do(&["fn"]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB, "fn", "", b"x");
    w.grab();
    let mut body = h.clone();
    body.push(0);
    w.send(WORK_FAIL, &[&body]);
    c.expect(WORK_FAIL, &[&body]);
}

#[test]
fn work_exception_with_and_without_option() {
    let s = Server::start(&[]);
    let mut w = s.conn();
    w.can_do(&["fn"]);
    let mut plain = s.conn();
    let mut exc = s.conn();
    exc.send(OPTION_REQ, &[b"exceptions"]);
    exc.expect(OPTION_RES, &[b"exceptions"]);
    let h = plain.submit(SUBMIT_JOB, "fn", "same", b"x");
    assert_eq!(exc.submit(SUBMIT_JOB, "fn", "same", b"x"), h);
    w.grab();
    w.send(WORK_EXCEPTION, &[&h, b"boom"]);
    exc.expect(WORK_EXCEPTION, &[&h, b"boom"]);
    // QUIRK ✔obs: without the option, WORK_FAIL whose body is the handle plus a NUL.
    plain.expect(WORK_FAIL, &[&h, b""]);
    plain.sync();
    exc.sync();
}

#[test]
fn get_status_unknown_handle() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.send(GET_STATUS, &[b"H:nope:1"]);
    c.expect(STATUS_RES, &[b"H:nope:1", b"0", b"0", b"0", b"0"]);
}

#[test]
fn get_status_known_queued_and_running() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB_BG, "fn", "", b"x");
    c.send(GET_STATUS, &[&h]);
    c.expect(STATUS_RES, &[&h, b"1", b"0", b"0", b"0"]);
    let mut w = s.conn();
    w.can_do(&["fn"]);
    w.grab();
    w.send(WORK_STATUS, &[&h, b"5", b"10"]);
    w.sync();
    c.send(GET_STATUS, &[&h]);
    c.expect(STATUS_RES, &[&h, b"1", b"1", b"5", b"10"]);
}

#[test]
fn get_status_unique_unknown_and_known() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.send(GET_STATUS_UNIQUE, &[b"nope"]);
    c.expect(STATUS_RES_UNIQUE, &[b"nope", b"0", b"0", b"0", b"0", b"0"]);
    let h = c.submit(SUBMIT_JOB, "fn", "U1", b"x");
    let mut c2 = s.conn();
    assert_eq!(c2.submit(SUBMIT_JOB, "fn", "U1", b"x"), h);
    let mut w = s.conn();
    w.can_do(&["fn"]);
    w.grab();
    w.send(WORK_STATUS, &[&h, b"5", b"10"]);
    c.expect(WORK_STATUS, &[&h, b"5", b"10"]);
    c2.expect(WORK_STATUS, &[&h, b"5", b"10"]);
    let mut q = s.conn();
    q.send(GET_STATUS_UNIQUE, &[b"U1"]);
    q.expect(STATUS_RES_UNIQUE, &[b"U1", b"1", b"1", b"5", b"10", b"2"]);
}

#[test]
fn submit_job_bg_high_low_variants() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for ty in [
        SUBMIT_JOB,
        SUBMIT_JOB_BG,
        SUBMIT_JOB_HIGH,
        SUBMIT_JOB_HIGH_BG,
        SUBMIT_JOB_LOW,
        SUBMIT_JOB_LOW_BG,
    ] {
        let h = c.submit(ty, "fn", &format!("u{ty}"), b"x");
        assert!(h.starts_with(b"H:"), "{} gave {h:?}", type_name(ty));
    }
    let mut a = s.conn();
    assert_eq!(a.admin("prioritystatus"), "fn\t2\t2\t2\t0\n.\n");
}

#[test]
fn set_client_id_has_no_reply_and_shows_in_workers() {
    let s = Server::start(&[]);
    let mut w = s.conn();
    w.send(SET_CLIENT_ID, &[b"my id"]);
    w.send(CAN_DO, &[b"f"]);
    w.sync();
    let mut a = s.conn();
    let out = a.admin("workers");
    assert!(
        out.lines().any(|l| l.ends_with(" 127.0.0.1 my id : f")),
        "{out}"
    );
}

#[test]
fn can_do_timeout_has_no_reply() {
    let s = Server::start(&[]);
    let mut w = s.conn();
    w.send(CAN_DO_TIMEOUT, &[b"f", b"5000"]);
    w.sync();
    let mut a = s.conn();
    assert_eq!(status_of(&mut a, "f"), Some((0, 0, 1)));
}

#[test]
fn option_req_exceptions_any_case() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.send(OPTION_REQ, &[b"exceptions"]);
    c.expect(OPTION_RES, &[b"exceptions"]);
    // The requested name's bytes are echoed unchanged (✔obs).
    c.send(OPTION_REQ, &[b"EXCEPTIONS"]);
    c.expect(OPTION_RES, &[b"EXCEPTIONS"]);
}

#[test]
fn option_req_unknown_option() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.send(OPTION_REQ, &[b"frobnicate"]);
    c.expect(
        ERROR,
        &[b"UNKNOWN_OPTION", b"Server does not recognize given option"],
    );
    c.sync();
}

#[test]
fn submit_job_sched_is_rejected() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.send(
        SUBMIT_JOB_SCHED,
        &[b"fn", b"u", b"1", b"2", b"3", b"4", b"5", b"data"],
    );
    c.expect(ERROR, &[b"INVALID_COMMAND", b"Command not expected"]);
    c.sync();
}

#[test]
fn submit_job_epoch_past_garbage_and_negative_run_now() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut w = s.conn();
    w.can_do(&["fn"]);
    for (i, epoch) in [&b"1"[..], b"-5", b"garbage", b""].iter().enumerate() {
        let u = format!("u{i}");
        c.send(
            SUBMIT_JOB_EPOCH,
            &[b"fn", u.as_bytes(), epoch, b"pay\0load"],
        );
        let h = c.expect_type(JOB_CREATED).body;
        w.send(GRAB_JOB_UNIQ, &[]);
        w.expect(JOB_ASSIGN_UNIQ, &[&h, b"fn", u.as_bytes(), b"pay\0load"]);
        w.send(WORK_COMPLETE, &[&h, b""]);
    }
    w.sync();
    // Epoch jobs are background: nothing is forwarded to the submitter.
    c.sync();
}

#[test]
fn submit_reduce_job_foreground() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.send(
        SUBMIT_REDUCE_JOB,
        &[b"fn", b"u", b"reducer", b"aggregator", b"data"],
    );
    let h = c.expect_type(JOB_CREATED).body;
    let mut w = s.conn();
    w.can_do(&["fn"]);
    // A plain GRAB_JOB on a reduce job behaves normally (✔obs).
    w.send(GRAB_JOB, &[]);
    w.expect(JOB_ASSIGN, &[&h, b"fn", b"data"]);
    w.send(WORK_COMPLETE, &[&h, b"r"]);
    c.expect(WORK_COMPLETE, &[&h, b"r"]);
}

#[test]
fn all_yours_not_expected() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.send(ALL_YOURS, &[]);
    c.expect(ERROR, &[b"INVALID_COMMAND", b"Command not expected"]);
    c.sync();
}

// ---------------------------------------------------------------------------
// ERROR packets (§1.2)
// ---------------------------------------------------------------------------

macro_rules! not_expected {
    ($name:ident, $ty:expr, $args:expr) => {
        #[test]
        fn $name() {
            let s = Server::start(&[]);
            let mut c = s.conn();
            c.send($ty, $args);
            c.expect(ERROR, &[b"INVALID_COMMAND", b"Command not expected"]);
            // An ERROR does not close the connection.
            c.sync();
        }
    };
}

not_expected!(not_expected_5_unused, UNUSED, &[]);
not_expected!(not_expected_6_noop, NOOP, &[]);
not_expected!(not_expected_8_job_created, JOB_CREATED, &[b"H:x:1"]);
not_expected!(not_expected_10_no_job, NO_JOB, &[]);
not_expected!(
    not_expected_11_job_assign,
    JOB_ASSIGN,
    &[b"H:x:1", b"f", b"d"]
);
not_expected!(not_expected_17_echo_res, ECHO_RES, &[b"x"]);
not_expected!(not_expected_19_error, ERROR, &[b"CODE", b"text"]);
not_expected!(
    not_expected_20_status_res,
    STATUS_RES,
    &[b"H:x:1", b"1", b"0", b"0", b"0"]
);
not_expected!(not_expected_24_all_yours, ALL_YOURS, &[]);
not_expected!(not_expected_27_option_res, OPTION_RES, &[b"exceptions"]);
not_expected!(
    not_expected_31_job_assign_uniq,
    JOB_ASSIGN_UNIQ,
    &[b"H:x:1", b"f", b"u", b"d"]
);
not_expected!(
    not_expected_35_submit_job_sched,
    SUBMIT_JOB_SCHED,
    &[b"f", b"u", b"1", b"2", b"3", b"4", b"5", b"d"]
);
not_expected!(
    not_expected_40_job_assign_all,
    JOB_ASSIGN_ALL,
    &[b"H:x:1", b"f", b"u", b"r", b"d"]
);
not_expected!(
    not_expected_42_status_res_unique,
    STATUS_RES_UNIQUE,
    &[b"u", b"1", b"0", b"0", b"0", b"0"]
);

#[test]
fn response_magic_from_client() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    c.send_raw(&res(ECHO_REQ, &[b"x"]));
    c.expect(ERROR, &[b"INVALID_MAGIC", b"Request magic expected"]);
    c.sync();
}

#[test]
fn unique_too_large() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let u = "u".repeat(65);
    c.send(SUBMIT_JOB, &[b"fn", u.as_bytes(), b"x"]);
    c.expect(ERROR, &[b"ARGUMENT_TOO_LARGE", b"Unique value too large"]);
    c.send(SUBMIT_JOB_BG, &[b"fn", u.as_bytes(), b"x"]);
    c.expect(ERROR, &[b"ARGUMENT_TOO_LARGE", b"Unique value too large"]);
    c.sync();
    // ✔obs: a submission rejected for its unique creates no function record
    // (PROTOCOL.md §3.2 says it does; gearmand 1.1.20 does not).
    let mut a = s.conn();
    assert_eq!(a.admin("status"), ".\n");
    // 64 bytes is accepted.
    let u64 = "v".repeat(64);
    c.submit(SUBMIT_JOB_BG, "fn", &u64, b"x");
}

#[test]
fn reducer_too_large() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let r = "r".repeat(65);
    c.send(
        SUBMIT_REDUCE_JOB_BACKGROUND,
        &[b"fn", b"u", r.as_bytes(), b"agg", b"x"],
    );
    c.expect(ERROR, &[b"ARGUMENT_TOO_LARGE", b"Unique value too large"]);
    c.sync();
}

#[test]
fn maxqueue_full_error() {
    let s = Server::start(&[]);
    let mut a = s.conn();
    assert_eq!(a.admin("create function fn\r"), "OK\r\n");
    assert_eq!(a.admin("maxqueue fn 1"), "OK\r\n");
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "fn", "a", b"x");
    c.send(SUBMIT_JOB_BG, &[b"fn", b"b", b"x"]);
    c.expect(ERROR, &[b"QUEUE_ERROR", b"Job queue is full"]);
    // Coalescing is not checked against maxqueue.
    c.submit(SUBMIT_JOB_BG, "fn", "a", b"x");
    c.sync();
}

#[test]
fn work_packets_for_unknown_job() {
    let s = Server::start(&[]);
    let mut w = s.conn();
    let h: &[u8] = b"H:nope:99";
    w.send(WORK_DATA, &[h, b"d"]);
    w.expect(ERROR, &[b"JOB_NOT_FOUND", b"Job does not exist on server"]);
    w.send(WORK_WARNING, &[h, b"d"]);
    w.expect(ERROR, &[b"JOB_NOT_FOUND", b"Job does not exist on server"]);
    w.send(WORK_STATUS, &[h, b"1", b"2"]);
    w.expect(
        ERROR,
        &[b"JOB_NOT_FOUND", b"Job given in work result not found"],
    );
    w.send(WORK_COMPLETE, &[h, b"r"]);
    w.expect(
        ERROR,
        &[b"JOB_NOT_FOUND", b"Job given in work result not found"],
    );
    w.send(WORK_FAIL, &[h]);
    w.expect(
        ERROR,
        &[b"JOB_NOT_FOUND", b"Job given in work result not found"],
    );
    w.send(WORK_EXCEPTION, &[h, b"e"]);
    w.expect(
        ERROR,
        &[
            b"JOB_NOT_FOUND",
            b"An exception was received for a job that does not exist",
        ],
    );
    w.sync();
}

#[test]
fn work_packets_for_job_held_by_another_connection() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB_BG, "fn", "", b"x");
    let mut other = s.conn();
    // Queued, never grabbed: nobody holds it.
    other.send(WORK_COMPLETE, &[&h, b"r"]);
    other.expect(
        ERROR,
        &[b"JOB_NOT_FOUND", b"Job given in work result not found"],
    );
    let mut w = s.conn();
    w.can_do(&["fn"]);
    w.grab();
    other.send(WORK_DATA, &[&h, b"d"]);
    other.expect(ERROR, &[b"JOB_NOT_FOUND", b"Job does not exist on server"]);
    other.send(WORK_STATUS, &[&h, b"1", b"2"]);
    other.expect(
        ERROR,
        &[b"JOB_NOT_FOUND", b"Job given in work result not found"],
    );
    other.sync();
    // The real holder is unaffected.
    w.send(WORK_COMPLETE, &[&h, b"r"]);
    w.sync();
}

#[test]
fn work_fail_handle_too_large() {
    let s = Server::start(&[]);
    let mut w = s.conn();
    let h = "H".repeat(64);
    w.send(WORK_FAIL, &[h.as_bytes()]);
    w.expect(
        ERROR,
        &[
            b"ARGUMENT_TOO_LARGE",
            b"Error occurred due to GEARMAND_JOB_HANDLE_SIZE being too small from snprintf",
        ],
    );
    w.sync();
}

// ---------------------------------------------------------------------------
// Malformed input (§1.1): the connection is closed; gearshiftd sends an ERROR
// first (decision 1); other connections are undisturbed.
// ---------------------------------------------------------------------------

/// A command handler failing closes the connection in gearmand only reliably
/// with `--threads=0`; in threaded mode the close races with later packets
/// (✔obs: the connection may stay open and keep answering).
const GEARMAND_SINGLE_THREAD: &[&str] = &["--threads=0"];

/// Sends `bytes` and then an ECHO_REQ on a fresh connection and asserts "ERROR
/// (required under gearshiftd) then close", with the ECHO never answered; then
/// that a second connection still answers ECHO.
fn assert_closes(s: &Server, bytes: &[u8], code: Option<&str>) {
    let mut c = s.conn();
    let mut bytes = bytes.to_vec();
    bytes.extend(req(ECHO_REQ, &[b"must-not-answer"]));
    let _ = c.try_send_raw(&bytes);
    c.expect_error_then_close(code);
    let mut ok = s.conn();
    ok.sync();
}

#[test]
fn malformed_bad_magic() {
    let s = Server::start(&[]);
    assert_closes(&s, b"\0REX\0\0\0\x10\0\0\0\0", None);
    assert_closes(&s, b"\0\0\0\0\0\0\0\x10\0\0\0\0", None);
}

#[test]
fn malformed_type_zero() {
    let s = Server::start(&[]);
    let mut p = req(0, &[b"status"]);
    p.extend(req(ECHO_REQ, &[b"x"]));
    assert_closes(&s, &p, None);
}

#[test]
fn malformed_type_43_and_above() {
    let s = Server::start(&[]);
    assert_closes(&s, &req(43, &[]), None);
    assert_closes(&s, &req(1000, &[b"abc"]), None);
    assert_closes(&s, &req(0x7fff_ffff, &[]), None);
}

#[test]
fn malformed_type_with_high_bit() {
    // ✔obs: gearmand 1.1.20 crashes (SIGSEGV) on a type >= 2^31 (read as a
    // negative int). Never copy a crash (decisions): gearshiftd closes with ERROR.
    if skip_under_gearmand("packet type >= 2^31 (gearmand crashes)") {
        return;
    }
    let s = Server::start(&[]);
    assert_closes(&s, &req(0x8000_0000, &[]), None);
    assert_closes(&s, &req(u32::MAX, &[]), None);
}

#[test]
fn malformed_too_few_nuls() {
    // SUBMIT_JOB needs 2 NULs; gearmand desyncs (and eventually closes),
    // gearshiftd answers ERROR and closes (decision 1).
    let s = Server::start(&[]);
    let mut p = req(SUBMIT_JOB, &[b"fn"]);
    p.extend(req(ECHO_REQ, &[b"x"]));
    assert_closes(&s, &p, None);
}

#[test]
fn malformed_text_line_more_than_five_tokens() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let _ = c.try_send_raw(b"a b c d e f\n");
    match c.recv_line_or_eof() {
        None => assert!(
            is_gearmand(),
            "gearshiftd must send an ERR line before closing"
        ),
        Some(l) => {
            assert!(l.starts_with("ERR ") && l.ends_with("\r\n"), "{l:?}");
            c.expect_eof();
        }
    }
    let mut ok = s.conn();
    ok.sync();
    // Five tokens are fine (an unknown command).
    assert_eq!(
        ok.admin("a b c d e"),
        "ERR UNKNOWN_COMMAND Unknown+server+commanda\r\n"
    );
}

#[test]
fn malformed_get_status_handle_64_bytes() {
    let s = Server::start3(&[], GEARMAND_SINGLE_THREAD, &[]);
    let h = "H".repeat(64);
    assert_closes(&s, &req(GET_STATUS, &[h.as_bytes()]), None);
    // 63 bytes is fine.
    let mut c = s.conn();
    let h63 = "H".repeat(63);
    c.send(GET_STATUS, &[h63.as_bytes()]);
    c.expect(STATUS_RES, &[h63.as_bytes(), b"0", b"0", b"0", b"0"]);
}

#[test]
fn malformed_get_status_unique_64_bytes() {
    let s = Server::start3(&[], GEARMAND_SINGLE_THREAD, &[]);
    let u = "u".repeat(64);
    if is_gearmand() {
        assert_closes(&s, &req(GET_STATUS_UNIQUE, &[u.as_bytes()]), None);
        return;
    }
    // Decision 4: a 64-byte unique is valid, so it can be asked about; 65 bytes cannot.
    let mut c = s.conn();
    c.send(GET_STATUS_UNIQUE, &[u.as_bytes()]);
    c.expect(
        STATUS_RES_UNIQUE,
        &[u.as_bytes(), b"0", b"0", b"0", b"0", b"0"],
    );
    let u65 = "u".repeat(65);
    assert_closes(
        &s,
        &req(GET_STATUS_UNIQUE, &[u65.as_bytes()]),
        Some("ARGUMENT_TOO_LARGE"),
    );
}

#[test]
fn malformed_epoch_overflow() {
    let s = Server::start3(&[], GEARMAND_SINGLE_THREAD, &[]);
    let mut p = req(
        SUBMIT_JOB_EPOCH,
        &[b"fn", b"u", b"99999999999999999999999", b"d"],
    );
    p.extend(req(ECHO_REQ, &[b"x"]));
    assert_closes(&s, &p, None);
    let mut a = s.conn();
    // No job was created.
    assert_eq!(status_of(&mut a, "fn").map(|r| r.0).unwrap_or(0), 0);
}

#[test]
fn malformed_can_do_timeout_arg_too_long() {
    // > 20 bytes: gearmand returns INVALID_PACKET and closes at the next I/O.
    let s = Server::start3(&[], GEARMAND_SINGLE_THREAD, &[]);
    let mut p = req(CAN_DO_TIMEOUT, &[b"fn", b"000000000000000000001000"]);
    p.extend(req(ECHO_REQ, &[b"x"]));
    assert_closes(&s, &p, None);
}

#[test]
fn malformed_can_do_timeout_overflow_20_digits() {
    // Decision 10: gearmand 1.1.20 segfaults on this; never run it there.
    if skip_under_gearmand("CAN_DO_TIMEOUT 20-digit overflow (gearmand crashes)") {
        return;
    }
    let s = Server::start(&[]);
    assert_closes(
        &s,
        &req(CAN_DO_TIMEOUT, &[b"fn", b"99999999999999999999"]),
        None,
    );
}

#[test]
fn malformed_oversized_packet() {
    // Decision 1/4: gearshiftd's --max-packet-size; gearmand has no cap.
    if skip_under_gearmand("--max-packet-size (gearmand has no packet cap)") {
        return;
    }
    let s = Server::start_with(&[], &["--max-packet-size=1024"]);
    let mut c = s.conn();
    c.send(ECHO_REQ, &[&[b'x'; 1000]]);
    c.expect_type(ECHO_RES);
    // Only the header is needed to reject it.
    let mut hdr = Vec::from(&REQ_MAGIC[..]);
    hdr.extend(ECHO_REQ.to_be_bytes());
    hdr.extend(2000u32.to_be_bytes());
    assert_closes(&s, &hdr, None);
    // Default limit (64 MiB) on a default server: a 4 GiB header is refused at once.
    let s2 = Server::start(&[]);
    let mut hdr = Vec::from(&REQ_MAGIC[..]);
    hdr.extend(ECHO_REQ.to_be_bytes());
    hdr.extend(u32::MAX.to_be_bytes());
    assert_closes(&s2, &hdr, None);
}

#[test]
fn malformed_argument_fills_receive_buffer() {
    // gearmand: an argument that does not fit its 8 KiB buffer closes the
    // connection. gearshiftd: within the packet limit such a name is simply
    // accepted, so only the gearmand behaviour is a fixed expectation here:
    // the connection is answered or closed, never left hanging.
    let s = Server::start(&[]);
    let mut c = s.conn();
    let name = vec![b'n'; 8200];
    let mut bytes = req(CAN_DO, &[&name]);
    bytes.extend(req(ECHO_REQ, &[b"x"]));
    let _ = c.try_send_raw(&bytes);
    match c.recv_any(READ_TIMEOUT) {
        Recv::Eof => {}
        Recv::Packet(p) => assert!(p.ty == ECHO_RES || p.ty == ERROR, "{p:?}"),
        Recv::Timeout => panic!("connection neither answered nor closed"),
    }
    let mut ok = s.conn();
    ok.sync();
}

// ---------------------------------------------------------------------------
// The server process (§3.14): signals, pid file
// ---------------------------------------------------------------------------

#[test]
fn sigterm_exits_zero_and_removes_pid_file() {
    let mut s = Server::start(&[]);
    let pid_file = s.dir().join("pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{}\n", s.pid())
    );
    let mut c = s.conn();
    c.submit(SUBMIT_JOB_BG, "f", "", b"x");
    // Immediate shutdown, even with jobs queued.
    let st = s.stop();
    assert!(st.success(), "{st:?}");
    assert!(!pid_file.exists(), "pid file left behind");
}

#[test]
fn sigusr1_graceful_shutdown_waits_for_jobs() {
    let mut s = Server::start(&[]);
    let mut c = s.conn();
    let h = c.submit(SUBMIT_JOB_BG, "f", "", b"x");
    let mut w = s.conn();
    w.can_do(&["f"]);
    s.signal("USR1");
    let addr = s.addr();
    wait_until("new connections are refused", || {
        std::net::TcpStream::connect(addr).is_err()
    });
    // Existing connections are still served while a job remains.
    assert!(s.is_running());
    c.sync();
    w.grab();
    w.send(WORK_COMPLETE, &[&h, b""]);
    // One more round trip (the server may already be closing): gearmand's
    // threaded mode only notices "no jobs left" on later I/O (✔obs).
    w.send(ECHO_REQ, &[b"last"]);
    let _ = w.recv_any(READ_TIMEOUT);
    let st = s.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
    assert!(!s.dir().join("pid").exists(), "pid file left behind");
}

// ---------------------------------------------------------------------------
// Random bytes
// ---------------------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Reads and discards until EOF; false if the connection is still open at `deadline`.
fn drain_until_eof(c: &Conn, deadline: Instant) -> bool {
    use std::io::Read;
    let mut s = c.stream();
    let mut buf = [0u8; 4096];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        s.set_read_timeout(Some(deadline - now)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

#[test]
fn random_bytes_never_panic_or_hang() {
    let seed = std::env::var("GEARSHIFT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15u64);
    let mut rng = XorShift(seed);
    let s = Server::start(&[]);
    for round in 0..150 {
        let mut bytes = Vec::new();
        let parts = 1 + rng.below(4);
        for _ in 0..parts {
            match rng.below(4) {
                // A header with a plausible type and a random small body.
                0 | 1 => {
                    let ty = match rng.below(3) {
                        0 => rng.below(45) as u32,
                        _ => [
                            1, 2, 3, 4, 7, 9, 12, 13, 14, 15, 16, 18, 22, 25, 26, 28, 29, 30, 36,
                            37, 39, 41,
                        ][rng.below(22) as usize],
                    };
                    // Never a CAN_DO_TIMEOUT body: a long digit run crashes gearmand (decision 10).
                    let ty = if ty == CAN_DO_TIMEOUT { CAN_DO } else { ty };
                    let len = rng.below(40) as usize;
                    let body: Vec<u8> = (0..len)
                        .map(|_| match rng.below(4) {
                            0 => 0,
                            _ => b"abcH:1-0\x80\xff"[rng.below(10) as usize],
                        })
                        .collect();
                    let declared = if rng.below(8) == 0 {
                        len as u32 + rng.below(50) as u32
                    } else {
                        len as u32
                    };
                    bytes.extend_from_slice(if rng.below(10) == 0 {
                        b"\0RES"
                    } else {
                        REQ_MAGIC
                    });
                    bytes.extend(ty.to_be_bytes());
                    bytes.extend(declared.to_be_bytes());
                    bytes.extend(body);
                }
                // A text line from a small vocabulary.
                2 => {
                    let words = [
                        "status",
                        "workers",
                        "show",
                        "jobs",
                        "unique",
                        "cancel",
                        "job",
                        "version",
                        "maxqueue",
                        "create",
                        "function",
                        "drop",
                        "prioritystatus",
                        "getpid",
                        "verbose",
                        "x",
                    ];
                    let n = 1 + rng.below(7);
                    let line: Vec<&str> = (0..n)
                        .map(|_| words[rng.below(words.len() as u64) as usize])
                        .collect();
                    let line = line.join(" ");
                    // Never "drop function" / "create function": harmless anyway, but keep state small.
                    bytes.extend(line.as_bytes());
                    bytes.extend(if rng.below(2) == 0 {
                        &b"\n"[..]
                    } else {
                        &b"\r\n"[..]
                    });
                }
                // Raw noise.
                _ => {
                    let len = 1 + rng.below(64) as usize;
                    bytes.extend((0..len).map(|_| rng.next() as u8));
                }
            }
        }
        let mut c = s.conn();
        let _ = c.try_send_raw(&bytes);
        c.shutdown_write();
        let closed = drain_until_eof(&c, Instant::now() + Duration::from_secs(5));
        assert!(
            closed,
            "round {round} (seed {seed:#x}): connection not closed after our EOF; sent \"{}\"",
            show(&bytes)
        );
        drop(c);
        if round % 10 == 9 {
            let mut ok = s.conn();
            ok.sync();
        }
    }
    let mut ok = s.conn();
    ok.sync();
    assert!(ok.admin("version").starts_with("OK "));
}
