//! The client and worker library (`gearshift::client`) and the `gearshift` command-line tool,
//! against the server under test (gearshiftd, or gearmand with `GEARSHIFT_TEST_SERVER=gearmand`):
//! jobs of every kind, streaming updates and errors, status, failover between two servers, the
//! distributed map, worker reconnects, interop with libgearman's `gearman` both ways, admin,
//! and the CLI's output and exit codes.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use gearshift::client::{
    Admin, Client, ClientOptions, Error, Event, Job, MapOptions, StopHandle, WorkError, Worker,
    WorkerOptions,
};

use crate::util::*;

/// Every wait in these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

fn addr(s: &Server) -> String {
    s.addr().to_string()
}

fn quick_client<S: AsRef<str>>(servers: &[S]) -> Client {
    let mut o = ClientOptions::default();
    o.timeout = LIMIT;
    o.connect_timeout = Duration::from_secs(1);
    o.retry_min = Duration::from_millis(50);
    Client::with_options(servers.iter().map(|s| s.as_ref()), o).unwrap()
}

fn quick_worker_options() -> WorkerOptions {
    let mut o = WorkerOptions::default();
    o.retry_min = Duration::from_millis(20);
    o.retry_max = Duration::from_millis(200);
    o.timeout = Duration::from_secs(5);
    o
}

/// A worker running in a thread; stopped (and joined) on drop.
struct Running {
    stop: StopHandle,
    thread: Option<JoinHandle<gearshift::client::Result<()>>>,
}

impl Running {
    fn start(mut w: Worker) -> Running {
        let stop = w.stop_handle();
        let thread = std::thread::spawn(move || w.run());
        Running {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> gearshift::client::Result<()> {
        self.stop.stop();
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn reverse_worker(servers: &[String], concurrency: usize) -> Running {
    let mut o = quick_worker_options();
    o.concurrency = concurrency;
    let mut w = Worker::with_options(servers, o).unwrap();
    w.register("reverse", |job| {
        Ok(job.data().iter().rev().copied().collect())
    });
    Running::start(w)
}

/// Waits (round trips, no sleeps) until `func` has `n` workers registered on `s`.
fn wait_workers(s: &Server, func: &str, n: u32) {
    let mut a = s.conn();
    wait_until(&format!("{n} workers for {func}"), || {
        status_of(&mut a, func).map(|r| r.2) == Some(n)
    });
}

// ---------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------

#[test]
fn call_round_trip_with_our_worker() {
    let s = Server::start(&[]);
    let _w = reverse_worker(&[addr(&s)], 1);
    let mut c = quick_client(&[addr(&s)]);
    assert_eq!(c.call("reverse", "hello").unwrap(), b"olleh");
    // Binary data and an empty payload.
    assert_eq!(c.call("reverse", &b"\0a\xff"[..]).unwrap(), b"\xffa\0");
    assert_eq!(c.call("reverse", "").unwrap(), b"");
    let out = c.run(Job::new("reverse", "abc").unique("u-1")).unwrap();
    assert_eq!(out.data, b"cba");
    let h = out.handle.expect("a handle");
    assert_eq!(h.server, addr(&s));
    assert!(!h.handle.is_empty());
    let ping = c.ping();
    assert_eq!(ping.len(), 1);
    assert_eq!(ping[0].0, addr(&s));
    assert!(ping[0].1.is_ok(), "{ping:?}");
}

#[test]
fn priorities_background_and_uniques_reach_the_server() {
    let s = Server::start(&[]);
    let mut c = quick_client(&[addr(&s)]);
    for job in [
        Job::new("prio", "low").low().background(),
        Job::new("prio", "normal").background(),
        Job::new("prio", "high").high().background().unique("mine"),
    ] {
        let h = c.submit_background(job).unwrap();
        assert_eq!(h.server, addr(&s));
    }
    let mut w = s.conn();
    w.can_do(&["prio"]);
    let (_, _, u, d) = w.grab_uniq();
    assert_eq!((u.as_slice(), d.as_slice()), (&b"mine"[..], &b"high"[..]));
    let (_, _, u, d) = w.grab_uniq();
    assert_eq!(d, b"normal");
    assert_eq!(u.len(), 36, "a generated UUID unique: {}", show(&u));
    assert_eq!(w.grab_uniq().3, b"low");
    w.grab_none();
}

#[test]
fn foreground_priorities_are_sent() {
    let s = Server::start(&[]);
    let mut c = quick_client(&[addr(&s)]);
    let lo = c.submit(Job::new("fp", "lo").low()).unwrap();
    let hi = c.submit(Job::new("fp", "hi").high()).unwrap();
    // Wait until both are created before a worker grabs.
    let mut created = 0;
    while created < 2 {
        match c.next_event(LIMIT).unwrap().unwrap() {
            Event::Created { .. } => created += 1,
            e => panic!("{e:?}"),
        }
    }
    let mut w = s.conn();
    w.can_do(&["fp"]);
    let (h1, _, d1) = w.grab();
    assert_eq!(d1, b"hi");
    let (h2, _, d2) = w.grab();
    assert_eq!(d2, b"lo");
    w.send(WORK_COMPLETE, &[&h2, b"L"]);
    w.send(WORK_COMPLETE, &[&h1, b"H"]);
    assert_eq!(c.wait(hi, LIMIT).unwrap().data, b"H");
    assert_eq!(c.wait(lo, LIMIT).unwrap().data, b"L");
}

#[test]
fn epoch_jobs_wait_until_due() {
    let s = Server::start(&[]);
    let mut c = quick_client(&[addr(&s)]);
    let later = SystemTime::now() + Duration::from_secs(3600);
    c.submit_background(Job::new("ep", "later").at(later))
        .unwrap();
    c.submit_background(Job::new("ep", "past").epoch(1))
        .unwrap();
    let mut w = s.conn();
    w.can_do(&["ep"]);
    assert_eq!(w.grab_uniq().3, b"past");
    w.grab_none();
    let mut a = s.conn();
    assert_eq!(status_of(&mut a, "ep"), Some((2, 1, 1)));
}

#[test]
fn data_warning_and_status_arrive_as_sent() {
    let s = Server::start(&[]);
    let mut w = Worker::with_options([addr(&s)], quick_worker_options()).unwrap();
    w.register("steps", |job| {
        job.send_data("one")?;
        job.send_warning("careful")?;
        job.send_status(1, 2)?;
        job.send_data("two")?;
        job.send_status(2, 2)?;
        Ok(b"done".to_vec())
    });
    let _w = Running::start(w);
    let mut c = quick_client(&[addr(&s)]);

    // Collected by `wait`.
    let out = c.run(Job::new("steps", "x")).unwrap();
    assert_eq!(out.data, b"done");
    assert_eq!(out.chunks, [b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(out.warnings, [b"careful".to_vec()]);
    assert_eq!(out.status, Some((2, 2)));

    // As an iterator of events, in order.
    let t = c.submit(Job::new("steps", "y")).unwrap();
    let mut seen = Vec::new();
    for ev in c.events(LIMIT) {
        let ev = ev.unwrap();
        assert_eq!(ev.task(), t);
        seen.push(match ev {
            Event::Created { .. } => "created".to_string(),
            Event::Data { data, .. } => format!("data {}", String::from_utf8_lossy(&data)),
            Event::Warning { data, .. } => {
                format!("warning {}", String::from_utf8_lossy(&data))
            }
            Event::Status {
                numerator,
                denominator,
                ..
            } => format!("status {numerator}/{denominator}"),
            Event::Complete { data, .. } => format!("complete {}", String::from_utf8_lossy(&data)),
            e => panic!("{e:?}"),
        });
    }
    assert_eq!(
        seen,
        [
            "created",
            "data one",
            "warning careful",
            "status 1/2",
            "data two",
            "status 2/2",
            "complete done"
        ]
    );

    // With a callback.
    let t = c.submit(Job::new("steps", "z")).unwrap();
    let mut updates = 0;
    let out = c
        .wait_with(t, LIMIT, |ev| {
            assert_eq!(ev.task(), t);
            updates += 1;
        })
        .unwrap();
    assert_eq!(updates, 6);
    assert_eq!(out.data, b"done");
    assert!(out.chunks.is_empty());
}

#[test]
fn fail_and_exception_are_errors_with_the_workers_message() {
    let s = Server::start(&[]);
    let mut w = Worker::with_options([addr(&s)], quick_worker_options()).unwrap();
    w.register("judge", |job| match job.data() {
        b"fail" => Err(WorkError::fail("bad input")),
        b"silent" => Err(WorkError::fail("")),
        b"raise" => Err(WorkError::exception("it blew up")),
        b"parse" => {
            let n: u32 = std::str::from_utf8(job.data())?.parse()?;
            Ok(n.to_string().into_bytes())
        }
        b"panic" => panic!("oops"),
        _ => Ok(b"fine".to_vec()),
    });
    let _w = Running::start(w);
    let mut c = quick_client(&[addr(&s)]);
    match c.call("judge", "fail") {
        Err(Error::JobFailed { message, .. }) => {
            assert_eq!(message.as_deref(), Some(&b"bad input"[..]))
        }
        r => panic!("{r:?}"),
    }
    match c.call("judge", "silent") {
        Err(Error::JobFailed { message: None, .. }) => {}
        r => panic!("{r:?}"),
    }
    match c.call("judge", "raise") {
        Err(Error::JobException { message, .. }) => assert_eq!(message, b"it blew up"),
        r => panic!("{r:?}"),
    }
    let e = c.call("judge", "parse").unwrap_err();
    assert!(e.is_job_failure(), "{e}");
    assert!(e.to_string().contains("invalid digit"), "{e}");
    let e = c.call("judge", "panic").unwrap_err();
    assert!(
        String::from_utf8_lossy(e.job_message().unwrap()).contains("oops"),
        "{e}"
    );
    // The worker survived all of that.
    assert_eq!(c.call("judge", "ok").unwrap(), b"fine");
}

#[test]
fn large_payloads_round_trip() {
    let s = Server::start(&[]);
    let mut w = Worker::with_options([addr(&s)], quick_worker_options()).unwrap();
    w.register("echo", |job| {
        let data = job.take_data();
        for chunk in data.chunks(1 << 20) {
            job.send_data(chunk)?;
        }
        Ok(data)
    });
    let _w = Running::start(w);
    let mut c = quick_client(&[addr(&s)]);
    let big: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    let out = c.run(Job::new("echo", big.clone())).unwrap();
    assert!(out.data == big, "8 MiB result intact");
    assert_eq!(out.chunks.len(), 8);
    assert!(out.chunks.concat() == big, "WORK_DATA chunks intact");
}

#[test]
fn without_the_exceptions_option_an_exception_is_a_failure() {
    let s = Server::start(&[]);
    let mut w = Worker::with_options([addr(&s)], quick_worker_options()).unwrap();
    w.register("raise", |_| Err(WorkError::exception("boom")));
    let _w = Running::start(w);
    let mut o = ClientOptions::default();
    o.timeout = LIMIT;
    o.exceptions = false;
    let mut c = Client::with_options([addr(&s)], o).unwrap();
    // The server turns WORK_EXCEPTION into WORK_FAIL for clients that did not opt in.
    match c.call("raise", "x") {
        Err(Error::JobFailed { handle, .. }) => assert!(!handle.ends_with(b"\0")),
        r => panic!("{r:?}"),
    }
}

#[test]
fn many_jobs_in_flight_complete_in_any_order() {
    let s = Server::start(&[]);
    let _w1 = reverse_worker(&[addr(&s)], 2);
    let mut c = quick_client(&[addr(&s)]);
    let mut want = std::collections::HashMap::new();
    for i in 0..300 {
        let t = c.submit(Job::new("reverse", format!("item-{i}"))).unwrap();
        want.insert(t, format!("item-{i}").chars().rev().collect::<String>());
    }
    let mut done = 0;
    for ev in c.events(LIMIT) {
        let ev = ev.unwrap();
        if let Event::Failed { error, .. } = &ev {
            panic!("{error}");
        }
        if let Event::Complete { task, data } = ev {
            assert_eq!(want.remove(&task).unwrap().as_bytes(), data);
            done += 1;
        }
    }
    eprintln!("in flight after: {}", c.in_flight());
    assert_eq!(done, 300);
    assert!(want.is_empty());
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn status_by_handle_and_by_unique() {
    let s = Server::start(&[]);
    let mut c = quick_client(&[addr(&s)]);
    let mut w = sleeping_worker(&s, &["st"]);
    let t = c.submit(Job::new("st", "x").unique("st-unique")).unwrap();
    let handle = match c.next_event(LIMIT).unwrap().unwrap() {
        Event::Created { handle, .. } => handle,
        e => panic!("{e:?}"),
    };
    let st = c.status(&handle).unwrap();
    assert!(st.known && !st.running, "{st:?}");
    w.expect(NOOP, &[]);
    let (h, _, _) = w.grab();
    assert_eq!(h, handle.handle);
    w.send(WORK_STATUS, &[&h, b"3", b"7"]);
    w.sync();
    let st = c.status(&handle).unwrap();
    assert!(st.known && st.running, "{st:?}");
    assert_eq!((st.numerator, st.denominator), (3, 7));
    let su = c.status_unique("st-unique").unwrap();
    assert!(su.known && su.running, "{su:?}");
    assert_eq!((su.numerator, su.denominator), (3, 7));
    assert_eq!(su.waiting_clients, Some(1));
    w.send(WORK_COMPLETE, &[&h, b"r"]);
    let out = c.wait(t, LIMIT).unwrap();
    assert_eq!(out.status, Some((3, 7)));
    assert!(!c.status(&handle).unwrap().known);
    assert!(!c.status_unique("st-unique").unwrap().known);
    // A handle from a server this client does not know.
    let other = gearshift::client::JobHandle::new("192.0.2.1:4730", "H:x:1");
    assert!(matches!(c.status(&other), Err(Error::Config(_))));
    assert!(matches!(c.wait(t, LIMIT), Err(Error::UnknownTask(_))));
}

#[test]
fn every_wait_is_bounded() {
    let s = Server::start(&[]);
    let mut c = quick_client(&[addr(&s)]);
    c.set_timeout(Duration::from_millis(200));
    let start = Instant::now();
    assert!(matches!(c.call("nobody", "x"), Err(Error::Timeout)));
    assert!(start.elapsed() < Duration::from_secs(2));
    let t = c.submit(Job::new("nobody", "y")).unwrap();
    assert!(matches!(
        c.next_event(LIMIT),
        Ok(Some(Event::Created { .. }))
    ));
    assert!(matches!(
        c.next_event(Duration::from_millis(100)),
        Err(Error::Timeout)
    ));
    assert!(matches!(
        c.wait(t, Duration::from_millis(100)),
        Err(Error::Timeout)
    ));
    c.forget(t);
    assert!(matches!(c.next_event(Duration::from_millis(100)), Ok(None)));
}

#[test]
fn no_server_reachable_is_reported_quickly() {
    let dead = format!("127.0.0.1:{}", free_port());
    let mut c = quick_client(&[dead.as_str()]);
    let start = Instant::now();
    match c.call("f", "x") {
        Err(Error::NoServer(tried)) => assert_eq!(tried[0].0, dead),
        r => panic!("{r:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(3));
    let e = c.call("f", "x").unwrap_err();
    assert!(e.is_connection(), "{e}");
}

// ---------------------------------------------------------------------------
// Failover
// ---------------------------------------------------------------------------

#[test]
fn jobs_fail_over_to_the_live_server_when_one_is_down() {
    let live = Server::start(&[]);
    let dead = format!("127.0.0.1:{}", free_port());
    let servers = vec![dead.clone(), addr(&live)];
    let _w = reverse_worker(&[addr(&live)], 1);
    let mut c = quick_client(&servers);
    // Uniques spread over both servers by placement; every job lands on the live one.
    let mut on_dead_first = 0;
    for i in 0..40 {
        let u = format!("fo-{i}");
        if gearshift::client::placement_order(c.servers(), u.as_bytes())[0] == 0 {
            on_dead_first += 1;
        }
        let out = c
            .run(Job::new("reverse", format!("x{i}")).unique(u))
            .unwrap();
        assert_eq!(
            out.data,
            format!("x{i}").chars().rev().collect::<String>().as_bytes()
        );
        assert_eq!(out.handle.unwrap().server, addr(&live));
    }
    assert!(on_dead_first > 5, "placement never chose the dead server");
    // Background jobs too.
    for i in 0..10 {
        let h = c
            .submit_background(Job::new("reverse", "bg").unique(format!("bg-{i}")))
            .unwrap();
        assert_eq!(h.server, addr(&live));
    }
}

#[test]
fn same_unique_goes_to_the_same_server_and_coalesces() {
    let a = Server::start(&[]);
    let b = Server::start(&[]);
    let servers = vec![addr(&a), addr(&b)];
    let mut c1 = quick_client(&servers);
    let mut c2 = quick_client(&[addr(&b), addr(&a)]); // listed in the other order
    let t1 = c1.submit(Job::new("co", "first").unique("shared")).unwrap();
    let h1 = match c1.next_event(LIMIT).unwrap().unwrap() {
        Event::Created { handle, .. } => handle,
        e => panic!("{e:?}"),
    };
    // Only now, so that the first submission is the one that creates the job.
    let t2 = c2
        .submit(Job::new("co", "second").unique("shared"))
        .unwrap();
    let h2 = match c2.next_event(LIMIT).unwrap().unwrap() {
        Event::Created { handle, .. } => handle,
        e => panic!("{e:?}"),
    };
    assert_eq!(h1, h2, "both submissions coalesced into one job");
    let s = if h1.server == addr(&a) { &a } else { &b };
    let mut w = s.conn();
    w.can_do(&["co"]);
    let (h, _, d) = w.grab();
    assert_eq!(d, b"first");
    w.grab_none();
    w.send(WORK_COMPLETE, &[&h, b"once"]);
    assert_eq!(c1.wait(t1, LIMIT).unwrap().data, b"once");
    assert_eq!(c2.wait(t2, LIMIT).unwrap().data, b"once");
}

#[test]
fn two_tasks_coalesced_on_one_connection_each_get_one_copy() {
    let s = Server::start(&[]);
    let mut c = quick_client(&[addr(&s)]);
    let t1 = c.submit(Job::new("dup", "a").unique("same")).unwrap();
    let t2 = c.submit(Job::new("dup", "b").unique("same")).unwrap();
    let mut w = s.conn();
    w.can_do(&["dup"]);
    let mut a = s.conn();
    wait_until("the job is queued", || {
        status_of(&mut a, "dup").map(|r| r.0) == Some(1)
    });
    let (h, _, d) = w.grab();
    assert_eq!(d, b"a");
    w.grab_none();
    w.send(WORK_DATA, &[&h, b"d1"]);
    w.send(WORK_STATUS, &[&h, b"1", b"2"]);
    w.send(WORK_COMPLETE, &[&h, b"r"]);
    for t in [t1, t2] {
        let out = c.wait(t, LIMIT).unwrap();
        assert_eq!(out.data, b"r");
        assert_eq!(out.chunks, [b"d1".to_vec()]);
        assert_eq!(out.status, Some((1, 2)));
    }
    assert!(matches!(c.next_event(Duration::from_millis(50)), Ok(None)));
}

/// Two servers with workers on both; one is killed while jobs are queued and running on it.
/// Every foreground job still completes, with the right result.
#[test]
fn killing_one_of_two_servers_mid_load_loses_no_foreground_job() {
    let a = Server::start(&[]);
    let b = Server::start(&[]);
    let servers = vec![addr(&a), addr(&b)];
    let mut o = quick_worker_options();
    o.concurrency = 2;
    let mut w = Worker::with_options(&servers, o).unwrap();
    w.register("slowrev", |job| {
        std::thread::sleep(Duration::from_millis(2));
        Ok(job.data().iter().rev().copied().collect())
    });
    let _w = Running::start(w);
    let mut c = quick_client(&servers);
    let n = 400;
    let mut want = std::collections::HashMap::new();
    for i in 0..n {
        let d = format!("job-{i}");
        let t = c.submit(Job::new("slowrev", d.as_str())).unwrap();
        want.insert(t, d.chars().rev().collect::<String>());
    }
    let mut killed = false;
    let mut on_a = 0;
    let mut done = 0;
    for ev in c.events(LIMIT) {
        match ev.unwrap() {
            Event::Created { handle, .. } if handle.server == addr(&a) && !killed => on_a += 1,
            Event::Complete { task, data } => {
                assert_eq!(
                    want.remove(&task).expect("one result per job").as_bytes(),
                    data
                );
                done += 1;
                if done == 50 {
                    a.signal("KILL");
                    killed = true;
                }
            }
            Event::Failed { task, error } => panic!("{task} failed: {error}"),
            _ => {}
        }
    }
    assert!(killed);
    assert!(
        on_a > 50,
        "only {on_a} jobs were placed on the killed server"
    );
    assert_eq!(done, n, "every foreground job completed");
    assert!(want.is_empty());
}

#[test]
fn a_server_that_comes_back_is_used_again_after_the_back_off() {
    let s = Server::start(&[]);
    let proxy = Proxy::start(s.addr());
    let mut c = quick_client(&[proxy.addr.to_string()]);
    let _w = reverse_worker(&[addr(&s)], 1);
    assert_eq!(c.call("reverse", "ab").unwrap(), b"ba");
    proxy.set_refusing(true);
    proxy.cut();
    let e = c.call("reverse", "cd").unwrap_err();
    assert!(e.is_connection(), "{e}");
    proxy.set_refusing(false);
    // The back-off is 50 ms (doubling); retry (bounded) until the server is tried again.
    let deadline = Instant::now() + LIMIT;
    loop {
        match c.call("reverse", "ef") {
            Ok(r) => {
                assert_eq!(r, b"fe");
                break;
            }
            Err(e) if e.is_connection() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Map
// ---------------------------------------------------------------------------

#[test]
fn map_of_10000_items_across_several_workers_returns_every_result_in_order() {
    let s = Server::start(&[]);
    let servers = vec![addr(&s)];
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let mut workers = Vec::new();
    for k in 0..3 {
        let mut o = quick_worker_options();
        o.concurrency = 2;
        o.client_id = Some(format!("sq{k}"));
        let mut w = Worker::with_options(&servers, o).unwrap();
        let seen = seen.clone();
        w.register("square", move |job| {
            seen.lock().unwrap().insert(std::thread::current().id());
            let n: u64 = std::str::from_utf8(job.data())?.parse()?;
            Ok((n * n).to_string().into_bytes())
        });
        workers.push(Running::start(w));
    }
    let mut c = quick_client(&servers);
    let items: Vec<String> = (0..10_000u64).map(|i| i.to_string()).collect();
    let start = Instant::now();
    let out = c.map("square", &items, &MapOptions::default()).unwrap();
    let took = start.elapsed();
    assert_eq!(out.len(), 10_000);
    for (i, r) in out.iter().enumerate() {
        assert_eq!(
            *r,
            ((i as u64) * (i as u64)).to_string().into_bytes(),
            "item {i}"
        );
    }
    assert!(
        seen.lock().unwrap().len() > 1,
        "the work was spread over several workers"
    );
    assert!(took < Duration::from_secs(15), "map took {took:?}");
    eprintln!("map of 10000 items took {took:?}");
    // Map/reduce: the same plus a local fold.
    let total: u64 = c
        .map("square", ["1", "2", "3"], &MapOptions::default())
        .unwrap()
        .iter()
        .map(|r| String::from_utf8_lossy(r).parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 14);
    assert!(
        c.map("square", Vec::<String>::new(), &MapOptions::default())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn map_retries_failed_items_or_reports_them_per_item() {
    let s = Server::start(&[]);
    let servers = vec![addr(&s)];
    // Items divisible by 10 fail their first attempt; "bad" always fails.
    let attempts = Arc::new(Mutex::new(std::collections::HashMap::<Vec<u8>, u32>::new()));
    let mut w = Worker::with_options(&servers, quick_worker_options()).unwrap();
    let a2 = attempts.clone();
    w.register("flaky", move |job| {
        let n = {
            let mut m = a2.lock().unwrap();
            let e = m.entry(job.data().to_vec()).or_insert(0);
            *e += 1;
            *e
        };
        if job.data() == b"bad" {
            return Err(WorkError::exception("always bad"));
        }
        let v: u32 = std::str::from_utf8(job.data())?.parse()?;
        if v.is_multiple_of(10) && n == 1 {
            return Err(WorkError::fail("first try fails"));
        }
        Ok(job.data().to_vec())
    });
    let _w = Running::start(w);
    let mut c = quick_client(&servers);
    let items: Vec<String> = (0..50).map(|i| i.to_string()).collect();

    // With a retry, everything succeeds, in order.
    let out = c
        .map("flaky", &items, &MapOptions::with_retries(1))
        .unwrap();
    assert_eq!(
        out,
        items
            .iter()
            .map(|i| i.clone().into_bytes())
            .collect::<Vec<_>>()
    );

    // Without, per-item results show exactly the failures.
    attempts.lock().unwrap().clear();
    let out = c
        .map_results("flaky", &items, &MapOptions::default())
        .unwrap();
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(d) => {
                assert!(i % 10 != 0);
                assert_eq!(*d, i.to_string().into_bytes());
            }
            Err(Error::JobFailed { message, .. }) => {
                assert_eq!(i % 10, 0);
                assert_eq!(message.as_deref(), Some(&b"first try fails"[..]));
            }
            Err(e) => panic!("item {i}: {e}"),
        }
    }

    // `map` stops at the first failure and names the item.
    let mut with_bad: Vec<String> = items.clone();
    with_bad[7] = "bad".into();
    match c.map("flaky", &with_bad, &MapOptions::with_retries(1)) {
        Err(Error::Map { index, error }) => {
            assert_eq!(index, 7);
            assert!(matches!(*error, Error::JobException { .. }), "{error}");
        }
        r => panic!("{r:?}"),
    }
    // Nothing of the aborted map leaks into later calls.
    assert_eq!(c.call("flaky", "1").unwrap(), b"1");
}

// ---------------------------------------------------------------------------
// Worker
// ---------------------------------------------------------------------------

/// A TCP proxy in front of a server, whose connections the test can cut (the server "goes
/// away" for the peer) and which can refuse new connections for a while.
struct Proxy {
    addr: SocketAddr,
    refusing: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    closed: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let refusing = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (r, st, cl) = (refusing.clone(), streams.clone(), closed.clone());
        std::thread::spawn(move || {
            for down in listener.incoming() {
                if cl.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(down) = down else { continue };
                if r.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                let mut s = st.lock().unwrap();
                s.push(down.try_clone().unwrap());
                s.push(up.try_clone().unwrap());
                drop(s);
                for (mut from, mut to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            addr,
            refusing,
            streams,
            closed,
        }
    }

    /// Closes every proxied connection, both ways.
    fn cut(&self) {
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn set_refusing(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        self.cut();
    }
}

#[test]
fn worker_reconnects_and_registers_again_when_its_server_goes_away() {
    let s = Server::start(&[]);
    let proxy = Proxy::start(s.addr());
    let mut o = quick_worker_options();
    o.client_id = Some("phoenix".into());
    let mut w = Worker::with_options([proxy.addr.to_string()], o).unwrap();
    w.register("reverse", |job| {
        Ok(job.data().iter().rev().copied().collect())
    });
    w.register_with_timeout("other", Duration::from_secs(30), |_| Ok(Vec::new()));
    let _w = Running::start(w);
    let mut c = quick_client(&[addr(&s)]);
    assert_eq!(c.call("reverse", "one").unwrap(), b"eno");
    for round in 0..3 {
        // Refuse for a moment so the worker has to back off and retry.
        proxy.set_refusing(round % 2 == 1);
        proxy.cut();
        let mut a = s.conn();
        wait_until("the server sees the worker leave", || {
            status_of(&mut a, "reverse").map(|r| r.2) == Some(0)
        });
        proxy.set_refusing(false);
        wait_workers(&s, "reverse", 1);
        wait_workers(&s, "other", 1);
        assert_eq!(
            c.call("reverse", format!("r{round}")).unwrap(),
            format!("{round}r").as_bytes()
        );
    }
    let mut a = Admin::connect(&addr(&s), LIMIT).unwrap();
    let ws = a.workers().unwrap();
    assert!(
        ws.iter()
            .any(|w| w.client_id == "phoenix" && w.functions.len() == 2),
        "{ws:?}"
    );
}

#[test]
fn worker_runs_n_jobs_at_once_when_asked() {
    let s = Server::start(&[]);
    let mut o = quick_worker_options();
    o.concurrency = 3;
    let mut w = Worker::with_options([addr(&s)], o).unwrap();
    let barrier = Arc::new(Barrier::new(3));
    w.register("together", move |_| {
        // Returns only when three jobs run at the same time.
        barrier.wait();
        Ok(b"met".to_vec())
    });
    let _w = Running::start(w);
    let mut c = quick_client(&[addr(&s)]);
    let tasks: Vec<_> = (0..3)
        .map(|i| c.submit(Job::new("together", format!("{i}"))).unwrap())
        .collect();
    for t in tasks {
        assert_eq!(c.wait(t, LIMIT).unwrap().data, b"met");
    }
}

#[test]
fn stopping_a_worker_finishes_the_job_in_hand() {
    let s = Server::start(&[]);
    let (started_tx, started_rx) = mpsc::channel();
    let started_tx = Mutex::new(started_tx);
    let mut w = Worker::with_options([addr(&s)], quick_worker_options()).unwrap();
    w.register("slow", move |job| {
        started_tx.lock().unwrap().send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(job.is_stopping());
        Ok(b"finished".to_vec())
    });
    let stop = w.stop_handle();
    let running = Running::start(w);
    let mut c = quick_client(&[addr(&s)]);
    let t = c.submit(Job::new("slow", "x")).unwrap();
    started_rx.recv_timeout(LIMIT).unwrap();
    stop.stop();
    assert_eq!(c.wait(t, LIMIT).unwrap().data, b"finished");
    running.stop().unwrap();
    // The stopped worker took no further job.
    let t = c.submit(Job::new("slow", "y")).unwrap();
    assert!(matches!(
        c.wait(t, Duration::from_millis(300)),
        Err(Error::Timeout)
    ));
}

#[test]
fn worker_stops_after_max_jobs_and_a_sleeping_worker_stops_at_once() {
    let s = Server::start(&[]);
    let mut o = quick_worker_options();
    o.max_jobs = Some(2);
    let mut w = Worker::with_options([addr(&s)], o).unwrap();
    w.register("count", |_| Ok(b"ok".to_vec()));
    let stop = w.stop_handle();
    let h = std::thread::spawn(move || {
        w.run().unwrap();
        w.jobs_done()
    });
    let mut c = quick_client(&[addr(&s)]);
    for _ in 0..2 {
        assert_eq!(c.call("count", "").unwrap(), b"ok");
    }
    assert_eq!(h.join().unwrap(), 2);
    assert!(stop.is_stopped());

    // A worker asleep (no work) wakes and returns as soon as it is stopped.
    let mut w = Worker::with_options([addr(&s)], quick_worker_options()).unwrap();
    w.register("idle", |_| Ok(Vec::new()));
    let r = Running::start(w);
    wait_workers(&s, "idle", 1);
    let start = Instant::now();
    r.stop().unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    let mut none = Worker::new([addr(&s)]).unwrap();
    assert!(matches!(none.run(), Err(Error::Config(_))));
}

#[test]
fn can_do_timeout_requeues_a_job_held_too_long() {
    let s = Server::start(&[]);
    let tries = Arc::new(AtomicUsize::new(0));
    let t2 = tries.clone();
    let mut o = quick_worker_options();
    o.concurrency = 2;
    let mut w = Worker::with_options([addr(&s)], o).unwrap();
    w.register_with_timeout("limited", Duration::from_secs(1), move |_| {
        if t2.fetch_add(1, Ordering::SeqCst) == 0 {
            // Over the limit: the server takes the job back and gives it out again.
            std::thread::sleep(Duration::from_millis(1800));
            return Ok(b"late".to_vec());
        }
        Ok(b"retried".to_vec())
    });
    let _w = Running::start(w);
    let mut c = quick_client(&[addr(&s)]);
    assert_eq!(c.call("limited", "x").unwrap(), b"retried");
    assert_eq!(tries.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------
// Interop with libgearman's `gearman` CLI
// ---------------------------------------------------------------------------

fn gearman_cli() -> bool {
    require_tool(
        find_tool("gearman").is_some(),
        "the `gearman` CLI (gearman-tools)",
    )
}

fn gearman(s: &Server, args: &[&str]) -> Command {
    let mut c = Command::new("gearman");
    c.args(["-h", "127.0.0.1", "-p", &s.port().to_string()])
        .args(args);
    c
}

#[test]
fn our_client_with_libgearman_worker() {
    if !gearman_cli() {
        return;
    }
    let s = Server::start(&[]);
    let worker = KillOnDrop(
        gearman(&s, &["-w", "-c", "3", "-f", "up", "--", "tr", "a-z", "A-Z"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut c = quick_client(&[addr(&s)]);
    // The job waits in the queue until the worker has registered: no start-up wait needed.
    assert_eq!(c.call("up", "hello").unwrap(), b"HELLO");
    let out = c.run(Job::new("up", "high").high().unique("x1")).unwrap();
    assert_eq!(out.data, b"HIGH");
    let t = c.submit(Job::new("up", "many")).unwrap();
    assert_eq!(c.wait(t, LIMIT).unwrap().data, b"MANY");
    let mut worker = worker;
    let st = wait_child(&mut worker.0, LIMIT, "gearman -w -c 3");
    assert!(st.success());
}

#[test]
fn libgearman_client_with_our_worker() {
    if !gearman_cli() {
        return;
    }
    let s = Server::start(&[]);
    let mut w = Worker::with_options([addr(&s)], quick_worker_options()).unwrap();
    w.register("reverse", |job| {
        job.send_status(1, 2)?;
        Ok(job.data().iter().rev().copied().collect())
    });
    w.register("nope", |_| Err(WorkError::fail("refused")));
    let _w = Running::start(w);
    let (st, out, err) = run_with_timeout(&mut gearman(&s, &["-f", "reverse", "hello"]), LIMIT);
    assert!(st.success(), "{err}");
    assert!(out.starts_with("olleh"), "{out:?}");
    let (st, out, err) = run_with_timeout(
        &mut gearman(&s, &["-u", "my-unique", "-I", "-f", "reverse", "abc"]),
        LIMIT,
    );
    assert!(st.success(), "{err}");
    assert!(out.starts_with("cba"), "{out:?}");
    let (st, _, err) = run_with_timeout(&mut gearman(&s, &["-f", "nope", "x"]), LIMIT);
    assert!(
        !st.success(),
        "a failed job fails the libgearman client: {err}"
    );
    // A background job from libgearman reaches our worker too.
    let (st, _, err) = run_with_timeout(&mut gearman(&s, &["-b", "-f", "reverse", "bg"]), LIMIT);
    assert!(st.success(), "{err}");
    let mut a = s.conn();
    wait_until("the background job is done", || {
        status_of(&mut a, "reverse").map(|r| r.0) == Some(0)
    });
}

// ---------------------------------------------------------------------------
// Admin
// ---------------------------------------------------------------------------

#[test]
fn admin_views_and_commands_are_typed() {
    let s = Server::start(&[]);
    let mut a = Admin::connect(&addr(&s), LIMIT).unwrap();
    assert!(!a.version().unwrap().is_empty());
    assert_eq!(a.pid().unwrap(), s.pid());
    assert!(a.status().unwrap().is_empty());

    let mut w = s.conn();
    w.send(SET_CLIENT_ID, &[b"the worker"]);
    w.can_do(&["fa", "fb"]);
    let mut c = quick_client(&[addr(&s)]);
    let h1 = c
        .submit_background(Job::new("fa", "1").unique("u1"))
        .unwrap();
    let h2 = c.submit_background(Job::new("fa", "2").high()).unwrap();
    w.grab();

    let mut st = a.status().unwrap();
    st.sort_by(|x, y| x.function.cmp(&y.function));
    assert_eq!(st.len(), 2);
    assert_eq!(
        (
            st[0].function.as_str(),
            st[0].total,
            st[0].running,
            st[0].workers
        ),
        ("fa", 2, 1, 1)
    );
    assert_eq!((st[1].function.as_str(), st[1].workers), ("fb", 1));
    let ps = a.priority_status().unwrap();
    let fa = ps.iter().find(|p| p.function == "fa").unwrap();
    assert_eq!((fa.high, fa.normal, fa.low), (0, 1, 0));

    let ws = a.workers().unwrap();
    let me = ws
        .iter()
        .find(|w| w.client_id == "the worker")
        .expect("our worker");
    let mut fs = me.functions.clone();
    fs.sort();
    assert_eq!(fs, ["fa", "fb"]);
    assert_eq!(me.ip, "127.0.0.1");

    let jobs = a.show_jobs().unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(
        jobs.iter()
            .all(|j| j.queued && !j.ignored && j.retries == 0)
    );
    let mut handles: Vec<String> = jobs.iter().map(|j| j.handle.clone()).collect();
    handles.sort();
    let mut want = vec![h1.to_string(), h2.to_string()];
    want.sort();
    assert_eq!(handles, want);
    assert!(a.show_unique_jobs().unwrap().contains(&"u1".to_string()));

    // cancel: known and unknown handles.
    a.cancel_job(&h1.to_string()).unwrap();
    match a.cancel_job("H:nope:1") {
        Err(Error::Admin { message, .. }) => assert!(message.contains("UNKNOWN_JOB"), "{message}"),
        r => panic!("{r:?}"),
    }

    // maxqueue: ignored for an unknown function until it is created.
    a.create_function("limited").unwrap();
    a.maxqueue("limited", Some(1)).unwrap();
    c.submit_background(Job::new("limited", "1")).unwrap();
    match c.submit_background(Job::new("limited", "2")) {
        Err(Error::Server { code, .. }) => assert_eq!(code, "QUEUE_ERROR"),
        r => panic!("{r:?}"),
    }
    a.maxqueue("limited", None).unwrap();
    c.submit_background(Job::new("limited", "2")).unwrap();
    a.maxqueue_priorities("limited", 5, 5, 5).unwrap();

    // drop function: refused with workers, fine without, and then unknown.
    assert!(matches!(a.drop_function("fb"), Err(Error::Admin { .. })));
    a.create_function("gone").unwrap();
    a.drop_function("gone").unwrap();
    match a.drop_function("gone") {
        Err(Error::Admin { message, .. }) => assert!(message.contains("not found"), "{message}"),
        r => panic!("{r:?}"),
    }
    assert!(matches!(a.command("bogus"), Err(Error::Admin { .. })));
    assert!(matches!(
        Admin::connect(&format!("127.0.0.1:{}", free_port()), LIMIT),
        Err(Error::Io { .. })
    ));
}

// ---------------------------------------------------------------------------
// The `gearshift` command line
// ---------------------------------------------------------------------------

fn gearshift_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gearshift")
}

/// `gearshift --servers <s> args...`
fn gs(servers: &str, args: &[&str]) -> Command {
    let mut c = Command::new(gearshift_bin());
    c.env_remove("GEARSHIFT_SERVERS")
        .env_remove("RUST_LOG")
        .args(["--servers", servers])
        .args(args);
    c
}

/// Runs to completion with `stdin` as input; returns (exit code, stdout, stderr).
fn gs_run(mut cmd: Command, stdin: &[u8]) -> (i32, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    let out = collect_output(&mut child);
    let st = wait_child(&mut child, LIMIT, "gearshift");
    let (o, e) = out.join();
    (st.code().expect("exited"), o, e)
}

fn spawn_gs(cmd: Command) -> (KillOnDrop, Output) {
    let mut cmd = cmd;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = collect_output(&mut child);
    (KillOnDrop(child), out)
}

#[test]
fn cli_submit_and_work_run_a_shell_command_as_a_worker() {
    let s = Server::start(&[]);
    let sv = addr(&s);
    let (mut worker, wout) = spawn_gs(gs(
        &sv,
        &[
            "work", "-f", "up", "-c", "3", "--id", "cli-w", "--", "tr", "a-z", "A-Z",
        ],
    ));
    let (code, out, err) = gs_run(gs(&sv, &["submit", "-f", "up", "hello"]), b"");
    assert_eq!((code, out.as_str()), (0, "HELLO"), "{err}");
    // Data from stdin, with options.
    let (code, out, err) = gs_run(
        gs(&sv, &["submit", "-f", "up", "--high", "-u", "uu"]),
        b"from stdin\n",
    );
    assert_eq!((code, out.as_str()), (0, "FROM STDIN\n"), "{err}");
    // The libgearman client against our CLI worker.
    if find_tool("gearman").is_some() {
        let (st, out, err) = run_with_timeout(&mut gearman(&s, &["-f", "up", "mixed"]), LIMIT);
        assert!(st.success(), "{err}");
        assert!(out.starts_with("MIXED"), "{out:?}");
    } else {
        let (code, _, err) = gs_run(gs(&sv, &["submit", "-f", "up", "x"]), b"");
        assert_eq!(code, 0, "{err}");
    }
    let st = wait_child(&mut worker.0, LIMIT, "gearshift work -c 3");
    let (_, e) = wout.join();
    assert!(st.success(), "{e}");
}

#[test]
fn cli_work_streams_lines_fails_and_sets_environment() {
    let s = Server::start(&[]);
    let sv = addr(&s);
    let (_w1, _) = spawn_gs(gs(
        &sv,
        &[
            "work",
            "-f",
            "lines",
            "-n",
            "--",
            "sh",
            "-c",
            "echo one; echo two; echo $GEARSHIFT_FUNCTION $GEARSHIFT_UNIQUE",
        ],
    ));
    let (_w2, _) = spawn_gs(gs(
        &sv,
        &[
            "work",
            "-f",
            "bad",
            "--",
            "sh",
            "-c",
            "echo broken pipe dream >&2; exit 3",
        ],
    ));
    let (code, out, err) = gs_run(gs(&sv, &["submit", "-f", "lines", "-u", "U9", ""]), b"");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "one\ntwo\nlines U9\n");
    let (code, out, err) = gs_run(gs(&sv, &["submit", "-f", "bad", "x"]), b"");
    assert_eq!(code, 1, "a failed job exits 1: {out} {err}");
    assert!(err.contains("broken pipe dream"), "{err}");
    // The library sees the command's stderr as the failure message.
    let mut c = quick_client(&[sv.as_str()]);
    match c.call("bad", "y") {
        Err(Error::JobFailed { message, .. }) => {
            assert_eq!(message.as_deref(), Some(&b"broken pipe dream"[..]))
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn cli_submit_prints_data_and_status_as_they_arrive() {
    let s = Server::start(&[]);
    let sv = addr(&s);
    let mut w = s.conn();
    w.can_do(&["raw"]);
    let (client, cout) = spawn_gs(gs(&sv, &["submit", "-f", "raw", "payload"]));
    // Wait (event-driven) until the job is queued, then play the worker by hand.
    let mut a = s.conn();
    wait_until("the CLI's job is queued", || {
        status_of(&mut a, "raw").map(|r| r.0) == Some(1)
    });
    let (h, _, d) = w.grab();
    assert_eq!(d, b"payload");
    w.send(WORK_DATA, &[&h, b"part1 "]);
    w.send(WORK_WARNING, &[&h, b"careful"]);
    w.send(WORK_STATUS, &[&h, b"1", b"4"]);
    w.send(WORK_COMPLETE, &[&h, b"end"]);
    let mut client = client;
    let st = wait_child(&mut client.0, LIMIT, "gearshift submit");
    let (out, err) = cout.join();
    assert!(st.success(), "{err}");
    assert_eq!(out, "part1 end");
    assert!(err.contains("warning: careful"), "{err}");
    assert!(err.contains("status: 1/4 (25%)"), "{err}");
}

#[test]
fn cli_exit_codes() {
    let s = Server::start(&[]);
    let sv = addr(&s);
    let dead = format!("127.0.0.1:{}", free_port());
    // 2: usage.
    assert_eq!(gs_run(gs(&sv, &["submit"]), b"").0, 2);
    assert_eq!(gs_run(gs(&sv, &["bogus"]), b"").0, 2);
    assert_eq!(gs_run(gs("host:notaport", &["status"]), b"").0, 2);
    // 3: no server.
    let (code, _, err) = gs_run(gs(&dead, &["submit", "-f", "f", "x"]), b"");
    assert_eq!(code, 3, "{err}");
    assert_eq!(gs_run(gs(&dead, &["status"]), b"").0, 3);
    // 4: timeout.
    let (code, _, err) = gs_run(gs(&sv, &["-t", "0.3", "submit", "-f", "nobody", "x"]), b"");
    assert_eq!(code, 4, "{err}");
    // 1: refused by the server.
    let (code, _, err) = gs_run(gs(&sv, &["cancel", "H:nope:1"]), b"");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("UNKNOWN_JOB"), "{err}");
    let (code, _, err) = gs_run(gs(&sv, &["drop", "never-seen"]), b"");
    assert_eq!(code, 1, "{err}");
    // 0.
    let (code, out, err) = gs_run(gs(&sv, &["version"]), b"");
    assert_eq!(code, 0, "{err}");
    assert!(!out.trim().is_empty());
    // The environment variable names the servers.
    let mut c = Command::new(gearshift_bin());
    c.env("GEARSHIFT_SERVERS", &sv).arg("version");
    assert_eq!(gs_run(c, b"").0, 0);
}

#[test]
fn cli_admin_views_are_aligned_tables() {
    let s = Server::start(&[]);
    let sv = addr(&s);
    let mut w = s.conn();
    w.send(SET_CLIENT_ID, &[b"wk"]);
    w.can_do(&["alpha", "a-much-longer-function"]);
    for args in [
        &["submit", "-f", "alpha", "--bg", "1"][..],
        &["submit", "-f", "alpha", "--bg", "--low", "2"],
        &["submit", "-f", "alpha", "-b", "-u", "the-unique", "3"],
    ] {
        let (code, out, err) = gs_run(gs(&sv, args), b"");
        assert_eq!(code, 0, "{err}");
        assert!(out.trim_end().contains(':'), "a handle: {out:?}");
    }
    let (code, out, err) = gs_run(gs(&sv, &["status"]), b"");
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["FUNCTION", "TOTAL", "RUNNING", "QUEUED", "WORKERS"]
    );
    assert_eq!(lines.len(), 3, "{out}");
    // Sorted by function; numbers right-aligned under their headers.
    assert!(lines[1].starts_with("a-much-longer-function"), "{out}");
    let alpha = lines[2].split_whitespace().collect::<Vec<_>>();
    assert_eq!(alpha, ["alpha", "3", "0", "3", "1"]);
    for l in &lines {
        assert_eq!(l.len(), lines[0].len(), "aligned: {out}");
    }

    let (code, out, _) = gs_run(gs(&sv, &["workers"]), b"");
    assert_eq!(code, 0);
    assert!(out.starts_with("FD"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains(" wk ") && l.contains("alpha")),
        "{out}"
    );

    let (code, out, _) = gs_run(gs(&sv, &["jobs"]), b"");
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(out.starts_with("HANDLE"), "{out}");
    let (_, out, _) = gs_run(gs(&sv, &["jobs", "--unique"]), b"");
    assert!(out.lines().any(|l| l == "the-unique"), "{out}");

    let (code, out, _) = gs_run(gs(&sv, &["job", "--unique", "the-unique"]), b"");
    assert_eq!(code, 0);
    assert!(out.starts_with("known=1 running=0"), "{out}");

    // --watch refreshes the status view.
    let (code, out, _) = gs_run(
        gs(&sv, &["status", "--watch", "0.05", "--iterations", "3"]),
        b"",
    );
    assert_eq!(code, 0);
    assert_eq!(out.matches("FUNCTION").count(), 3, "{out}");

    // maxqueue (creating the function), then a refused submission exits 1.
    assert_eq!(gs_run(gs(&sv, &["maxqueue", "capped", "1"]), b"").0, 0);
    assert_eq!(
        gs_run(gs(&sv, &["submit", "-b", "-f", "capped", "1"]), b"").0,
        0
    );
    let (code, _, err) = gs_run(gs(&sv, &["submit", "-b", "-f", "capped", "2"]), b"");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("QUEUE_ERROR"), "{err}");

    // cancel, create and drop.
    let (_, h, _) = gs_run(gs(&sv, &["submit", "-b", "-f", "tocancel", "x"]), b"");
    assert_eq!(gs_run(gs(&sv, &["cancel", h.trim()]), b"").0, 0);
    assert_eq!(gs_run(gs(&sv, &["create", "newf"]), b"").0, 0);
    assert_eq!(gs_run(gs(&sv, &["drop", "newf"]), b"").0, 0);

    // Two servers: a SERVER column, and one unreachable server makes the exit code 3.
    let dead = format!("127.0.0.1:{}", free_port());
    let (code, out, err) = gs_run(gs(&format!("{sv},{dead}"), &["status"]), b"");
    assert_eq!(code, 3, "{err}");
    assert!(out.starts_with("SERVER"), "{out}");
    assert!(out.contains(&sv), "{out}");
    assert!(err.contains(&dead), "{err}");
}
