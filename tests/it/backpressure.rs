//! Bursts far larger than a ring between shards: whatever crosses shards is delivered without
//! waiting for unrelated traffic, in order, exactly once. A client writes a whole burst before
//! it reads one reply, so every ring between its home and the owners fills up and the server
//! has to hold back (stop reading) and resume on its own.
//!
//! Each test runs gearshiftd at `--threads 4` and `8` under every `--handoff` setting (against
//! gearmand, once: the expectations are its behaviour too). `GEARSHIFT_BURST` sets the burst:
//! 1,000,000 submissions by default, 100,000 against gearmand (whose output path takes minutes
//! for a million). They are heavy, so plain `cargo test` skips them; `scripts/test.sh` runs
//! them against a release build: `cargo test --test it backpressure -- --ignored`.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use crate::util::*;

/// Functions whose names hash to different owners among four and eight shards.
const FUNCTIONS: [&str; 5] = ["f0", "f1", "f2", "f3", "f4"];

/// No reply for this long while replies are due is a stall.
const STALL: Duration = Duration::from_secs(20);

fn burst() -> usize {
    std::env::var("GEARSHIFT_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if is_gearmand() { 100_000 } else { 1_000_000 })
}

/// The server configurations every test runs against: several shard counts and hand-off
/// settings for gearshiftd, gearmand as it is.
fn servers() -> Vec<(String, Server)> {
    if is_gearmand() {
        return vec![("gearmand".into(), Server::start(&[]))];
    }
    let mut all = Vec::new();
    for threads in [4, 8] {
        for handoff in ["off", "workers", "all"] {
            let args = [
                format!("--threads={threads}"),
                format!("--handoff={handoff}"),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let name = format!("--threads={threads} --handoff={handoff}");
            all.push((name, Server::start_with(&[], &args)));
        }
    }
    all
}

/// A blocking connection for bulk traffic (the harness's `Conn` reads packet by packet).
fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(server.addr()).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(STALL)).unwrap();
    s
}

/// Reads response packets one at a time from a buffered stream; a read timeout is a stall.
struct Replies {
    reader: BufReader<TcpStream>,
    what: String,
}

impl Replies {
    fn new(stream: TcpStream, what: String) -> Replies {
        Replies {
            reader: BufReader::with_capacity(1 << 16, stream),
            what,
        }
    }

    #[track_caller]
    fn next(&mut self, progress: &str) -> (u32, Vec<u8>) {
        let mut header = [0u8; 12];
        if let Err(e) = self.reader.read_exact(&mut header) {
            panic!("{}: no reply ({e}) after {progress}", self.what);
        }
        assert_eq!(&header[..4], RES_MAGIC, "{}", self.what);
        let ty = u32::from_be_bytes(header[4..8].try_into().unwrap());
        let len = u32::from_be_bytes(header[8..12].try_into().unwrap()) as usize;
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body).unwrap_or_else(|e| {
            panic!("{}: cut packet ({e}) after {progress}", self.what);
        });
        (ty, body)
    }
}

/// The handle number after the last `:`.
fn handle_number(handle: &[u8]) -> u64 {
    let s = std::str::from_utf8(handle).unwrap();
    s.rsplit(':').next().unwrap().parse().unwrap()
}

/// One client writes `n` background submissions over [`FUNCTIONS`] in one go, then reads.
/// Every JOB_CREATED arrives, one per submission, in submission order: per function the
/// handle numbers rise (an owner numbers its jobs in the order it created them, and the
/// answers leave in request order). Returns the handles by function.
fn burst_of_background_jobs(server: &Server, what: &str, n: usize) -> Vec<Vec<Vec<u8>>> {
    let stream = connect(server);
    let writer = stream.try_clone().unwrap();
    let mut out = BufWriter::with_capacity(1 << 20, writer);
    for i in 0..n {
        let f = FUNCTIONS[i % FUNCTIONS.len()];
        let unique = format!("u{i}");
        out.write_all(&req(
            SUBMIT_JOB_BG,
            &[f.as_bytes(), unique.as_bytes(), b"x"],
        ))
        .expect("write the burst");
    }
    out.flush().expect("write the burst");
    let mut replies = Replies::new(stream, what.into());
    let mut handles: Vec<Vec<Vec<u8>>> = vec![Vec::new(); FUNCTIONS.len()];
    for i in 0..n {
        let (ty, body) = replies.next(&format!("{i} of {n} JOB_CREATED"));
        assert_eq!(ty, JOB_CREATED, "{what}: reply {i} is {}", type_name(ty));
        let per_function = &mut handles[i % FUNCTIONS.len()];
        if let Some(last) = per_function.last() {
            assert!(
                handle_number(&body) > handle_number(last),
                "{what}: reply {i} ({}) is out of order after {}",
                show(&body),
                show(last)
            );
        }
        per_function.push(body);
    }
    handles
}

#[test]
#[ignore = "heavy: scripts/test.sh runs it against a release build"]
fn a_burst_of_background_submissions_is_answered_in_order() {
    let n = burst();
    for (what, server) in servers() {
        let started = Instant::now();
        let handles = burst_of_background_jobs(&server, &what, n);
        // The server holds every job, once.
        let mut admin = server.conn();
        let rows = status_rows(&admin.admin("status"));
        for (i, f) in FUNCTIONS.iter().enumerate() {
            let row = rows.iter().find(|r| r.0 == *f).expect("status row");
            assert_eq!(row.1 as usize, handles[i].len(), "{what}: {f} queued");
        }
        eprintln!(
            "{what}: {n} submissions answered in {:?}",
            started.elapsed()
        );
    }
}

/// Clients write a burst of foreground jobs before reading and get every JOB_CREATED with no
/// worker connected; then workers that each do every function (owned by different shards, so
/// each grab may cross several rings) run them: every client gets the right WORK_COMPLETE
/// for each of its jobs, once, and every job runs once.
#[test]
#[ignore = "heavy: scripts/test.sh runs it against a release build"]
fn workers_of_many_functions_run_a_burst_of_foreground_jobs_once() {
    const CLIENTS: usize = 2;
    const WORKERS: usize = 8;
    let per_client = burst() / 5;
    for (what, server) in servers() {
        let (created, all_created) = mpsc::channel();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let stream = connect(&server);
                let what = format!("{what}, client {c}");
                let created = created.clone();
                std::thread::spawn(move || run_client(stream, &what, c, per_client, created))
            })
            .collect();
        drop(created);
        for _ in 0..CLIENTS {
            // A client that failed drops its sender: once all have ended, this errs.
            all_created
                .recv()
                .expect("every client got its JOB_CREATED");
        }
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let stream = connect(&server);
                let what = what.clone();
                std::thread::spawn(move || run_worker(stream, &what))
            })
            .collect();
        for c in clients {
            c.join().expect("client");
        }
        // Every job ran once: the workers' counts add up, and none is left.
        let mut admin = server.conn();
        let rows = status_rows(&admin.admin("status"));
        for r in &rows {
            assert_eq!(r.1, 0, "{what}: {} still has jobs: {rows:?}", r.0);
        }
        drop(admin);
        drop(server);
        let mut runs: HashMap<Vec<u8>, usize> = HashMap::new();
        for w in workers {
            for payload in w.join().expect("worker") {
                *runs.entry(payload).or_default() += 1;
            }
        }
        assert_eq!(runs.len(), CLIENTS * per_client, "{what}: jobs run");
        if let Some((p, n)) = runs.iter().find(|(_, n)| **n != 1) {
            panic!("{what}: job {} ran {n} times", show(p));
        }
    }
}

/// A client of foreground jobs: writes them all, reads a JOB_CREATED per job and says so on
/// `created`, then reads a WORK_COMPLETE per job carrying the payload reversed.
fn run_client(stream: TcpStream, what: &str, client: usize, n: usize, created: Sender<()>) {
    let mut out = BufWriter::with_capacity(1 << 20, stream.try_clone().unwrap());
    let mut payloads = HashMap::new();
    for i in 0..n {
        let f = FUNCTIONS[i % FUNCTIONS.len()];
        let payload = format!("c{client}-j{i}");
        out.write_all(&req(SUBMIT_JOB, &[f.as_bytes(), b"", payload.as_bytes()]))
            .expect("write the burst");
        payloads.insert(i, payload);
    }
    out.flush().expect("write the burst");
    let mut replies = Replies::new(stream, what.into());
    let mut by_handle: HashMap<Vec<u8>, usize> = HashMap::new();
    for i in 0..n {
        let (ty, body) = replies.next(&format!("{i} of {n} JOB_CREATED"));
        assert_eq!(ty, JOB_CREATED, "{what}: reply {i} is {}", type_name(ty));
        by_handle.insert(body, i);
    }
    created.send(()).unwrap();
    let mut completed = 0;
    while completed < n {
        let (ty, body) = replies.next(&format!("{completed} of {n} WORK_COMPLETE"));
        match ty {
            WORK_COMPLETE => {
                let sep = body.iter().position(|&b| b == 0).expect("handle");
                let job = by_handle
                    .remove(&body[..sep])
                    .unwrap_or_else(|| panic!("{what}: result for {}", show(&body)));
                let mut expected = payloads.remove(&job).unwrap().into_bytes();
                expected.reverse();
                assert_eq!(&body[sep + 1..], &expected[..], "{what}: job {job}");
                completed += 1;
            }
            WORK_DATA | WORK_STATUS | WORK_WARNING => {}
            _ => panic!("{what}: unexpected {} {}", type_name(ty), show(&body)),
        }
    }
}

/// A worker of every function, one job at a time: GRAB_JOB; on JOB_ASSIGN, WORK_COMPLETE with
/// the payload reversed and the next GRAB_JOB in one write; on NO_JOB, PRE_SLEEP and wait for
/// NOOP. Ends when the server closes. Returns the payloads it ran.
fn run_worker(stream: TcpStream, what: &str) -> Vec<Vec<u8>> {
    let mut out = stream.try_clone().unwrap();
    let mut hello = Vec::new();
    for f in FUNCTIONS {
        hello.extend(req(CAN_DO, &[f.as_bytes()]));
    }
    hello.extend(req(GRAB_JOB, &[]));
    out.write_all(&hello).unwrap();
    stream.set_read_timeout(None).unwrap();
    let mut reader = BufReader::new(stream);
    let mut ran = Vec::new();
    loop {
        let mut header = [0u8; 12];
        if reader.read_exact(&mut header).is_err() {
            return ran;
        }
        let ty = u32::from_be_bytes(header[4..8].try_into().unwrap());
        let len = u32::from_be_bytes(header[8..12].try_into().unwrap()) as usize;
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return ran;
        }
        let reply = match ty {
            JOB_ASSIGN => {
                let args: Vec<&[u8]> = body.splitn(3, |&b| b == 0).collect();
                let mut result = args[2].to_vec();
                ran.push(result.clone());
                result.reverse();
                let mut r = req(WORK_COMPLETE, &[args[0], &result]);
                r.extend(req(GRAB_JOB, &[]));
                r
            }
            NO_JOB => req(PRE_SLEEP, &[]),
            NOOP => req(GRAB_JOB, &[]),
            _ => panic!("{what}: worker got {} {}", type_name(ty), show(&body)),
        };
        if out.write_all(&reply).is_err() {
            return ran;
        }
    }
}
