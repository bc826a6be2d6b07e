//! `--event-loop io-uring`: every shard really runs a ring (no silent fall-back to epoll where
//! io_uring works), and what the ring path adds to epoll's (receives larger than a pooled
//! buffer, packets larger than the read buffer, sends the kernel takes in parts, a connection
//! moved to another shard's ring) keeps every byte and every job exactly once. The whole
//! integration suite also runs on io_uring (`GEARSHIFT_TEST_EVENT_LOOP=io-uring`, in
//! scripts/test.sh).

use std::collections::HashSet;

use crate::util::*;

/// Whether this kernel lets processes use io_uring (`kernel.io_uring_disabled` is 0).
fn io_uring_allowed() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() == "0")
}

/// How many io_uring instances process `pid` holds.
fn rings(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy() == "anon_inode:[io_uring]")
        .count()
}

fn start(threads: u16) -> Option<Server> {
    if skip_under_gearmand("--event-loop is gearshiftd's") {
        return None;
    }
    if !io_uring_allowed() {
        eprintln!("SKIPPED: io_uring is disabled on this kernel (kernel.io_uring_disabled)");
        return None;
    }
    let threads = format!("--threads={threads}");
    Some(Server::start_with(
        &[],
        &["--event-loop=io-uring", &threads],
    ))
}

#[test]
fn every_shard_runs_a_ring_and_jobs_of_many_owners_run_once() {
    for threads in [1u16, 4] {
        let Some(s) = start(threads) else { return };
        wait_until("every shard made its ring", || {
            rings(s.pid()) == threads as usize
        });
        // Sixteen functions, so every shard owns some; workers and clients are handed off to
        // the owners' rings at their first packet.
        let functions: Vec<String> = (0..16).map(|i| format!("ring-{i}")).collect();
        let mut workers = Vec::new();
        for f in &functions {
            let mut w = s.conn();
            w.can_do(&[f]);
            workers.push(w);
        }
        let mut clients: Vec<Conn> = (0..4).map(|_| s.conn()).collect();
        let mut handles = Vec::new();
        for (i, f) in functions.iter().enumerate() {
            for j in 0..25 {
                let c = &mut clients[(i + j) % 4];
                let data = format!("{f}/{j}");
                handles.push((i, c.submit(SUBMIT_JOB_BG, f, &data, data.as_bytes())));
            }
        }
        let mut seen = HashSet::new();
        for (i, w) in workers.iter_mut().enumerate() {
            for _ in 0..25 {
                let (handle, function, data) = w.grab();
                assert_eq!(function, functions[i].as_bytes());
                assert!(data.starts_with(functions[i].as_bytes()));
                assert!(seen.insert(data), "a job ran twice (threads {threads})");
                w.send(WORK_COMPLETE, &[&handle, b""]);
            }
            w.grab_none();
        }
        assert_eq!(seen.len(), handles.len(), "threads {threads}");
        let status = clients[0].admin("status");
        for f in &functions {
            assert!(status.contains(&format!("{f}\t0\t0\t1\n")), "{status}");
        }
    }
}

#[test]
fn packets_larger_than_every_buffer_cross_the_ring_both_ways() {
    let Some(s) = start(2) else { return };
    // 3 MiB: many pooled buffers (16 KiB) and read buffers (64 KiB) in, more than a loopback
    // socket takes in one send out, so receives and sends both come in parts.
    let payload: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 + i / 4099) as u8).collect();
    let mut w = s.conn();
    w.can_do(&["ring-large"]);
    let mut c = s.conn();
    c.send(SUBMIT_JOB, &[b"ring-large", b"u-large", &payload]);
    c.expect_type(JOB_CREATED);
    let (handle, _, data) = w.grab();
    assert!(data == payload, "the job's payload changed on the way");
    let answer: Vec<u8> = payload.iter().rev().copied().collect();
    // Several results back to back, each larger than what one send takes.
    for _ in 0..3 {
        w.send(WORK_DATA, &[&handle, &answer]);
    }
    w.send(WORK_COMPLETE, &[&handle, &answer]);
    for _ in 0..3 {
        let p = c.expect_type(WORK_DATA);
        assert!(p.argn(2)[1] == answer, "WORK_DATA changed on the way");
    }
    let p = c.expect_type(WORK_COMPLETE);
    assert!(p.argn(2)[1] == answer, "WORK_COMPLETE changed on the way");
    // The connections are still in step.
    c.send(ECHO_REQ, &[b"after"]);
    c.expect(ECHO_RES, &[b"after"]);
    w.send(ECHO_REQ, &[b"after"]);
    w.expect(ECHO_RES, &[b"after"]);
}

#[test]
fn a_peer_that_closes_mid_packet_is_dropped_and_the_rest_goes_on() {
    let Some(s) = start(2) else { return };
    let mut admin = s.conn();
    for _ in 0..20 {
        // Half a large packet, then gone: the receive armed for it ends with the close.
        let mut c = s.conn();
        let bytes = req(SUBMIT_JOB_BG, &[b"ring-cut", b"", &vec![b'x'; 100_000]]);
        c.send_raw(&bytes[..50_000]);
        drop(c);
    }
    wait_until("the cut connections are gone", || {
        admin.admin("workers").lines().count() <= 2
    });
    assert_eq!(status_of(&mut admin, "ring-cut"), None);
    admin.send(ECHO_REQ, &[b"still here"]);
    admin.expect(ECHO_RES, &[b"still here"]);
}

/// The TCP state (`/proc/net/tcp`'s `st`) of the loopback connection from `local` to `remote`
/// port, if it exists.
fn tcp_state(local: u16, remote: u16) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
        (port(f[1])? == local && port(f[2])? == remote)
            .then(|| u8::from_str_radix(f[3], 16).ok())?
    })
}

#[test]
fn a_reader_closed_past_max_output_buffer_is_closed_with_its_send_in_flight() {
    if skip_under_gearmand("--max-output-buffer") || !io_uring_allowed() {
        return;
    }
    let s = Server::start_with(
        &[],
        &["--event-loop=io-uring", "--max-output-buffer=1048576"],
    );
    // The client reads nothing: the server's send to it stalls in flight, and its output
    // passes the limit, so the server closes it. Closing must cancel that send: while it is
    // in flight the ring holds the socket, which would stay open (ESTABLISHED) for ever.
    let client = flood_a_client_that_reads_nothing(&s, "ring-flood");
    const ESTABLISHED: u8 = 1;
    let (server_port, client_port) = (s.port(), client.local_port());
    wait_until(
        "the server's end of the unread connection is closed",
        || tcp_state(server_port, client_port) != Some(ESTABLISHED),
    );
    let mut other = s.conn();
    other.sync();
}
