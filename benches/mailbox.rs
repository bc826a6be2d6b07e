//! The cross-shard path alone: a message to another shard and its answer back, through the
//! SPSC rings, with the receiver asleep in `poll` (so each round trip includes the wake).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gearshift::message::{ConnId, ToHome};
use gearshift::shard::WAKER;
use gearshift::shard::mail::Mail;
use gearshift::shard::mailbox::{self, Control, Peers, Shared};
use mio::{Events, Poll, Waker};

fn ping(to: u16) -> Mail {
    Mail::Home(ToHome::Noop {
        to: ConnId {
            shard: to,
            slot: 0,
            generation: 0,
        },
        from: 1 - to,
    })
}

fn round_trip(c: &mut Criterion) {
    let mut polls = Vec::new();
    let mut shared = Vec::new();
    for _ in 0..2 {
        let poll = Poll::new().unwrap();
        let waker = Waker::new(poll.registry(), WAKER).unwrap();
        shared.push(Shared::new(waker));
        polls.push(poll);
    }
    let peers = Arc::new(Peers {
        shards: shared,
        control: Control::default(),
    });
    let mut boxes = mailbox::build(peers.clone(), mailbox::RING_CAPACITY);
    let mut echo = boxes.pop().unwrap();
    let mut me = boxes.pop().unwrap();
    let mut echo_poll = polls.pop().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    // Shard 1 answers every message, sleeping in poll when idle, as a shard does.
    let echoer = std::thread::spawn(move || {
        let mut events = Events::with_capacity(8);
        let mut inbox = std::collections::VecDeque::new();
        while !stop2.load(Ordering::Relaxed) {
            let timeout = if echo.prepare_sleep() {
                Some(Duration::from_millis(50))
            } else {
                Some(Duration::ZERO)
            };
            echo_poll.poll(&mut events, timeout).unwrap();
            echo.awake();
            echo.receive(1024, &mut inbox);
            for _ in inbox.drain(..) {
                echo.send(0, ping(0));
            }
            echo.flush();
        }
    });
    let mut group = c.benchmark_group("mailbox");
    group.throughput(Throughput::Elements(1));
    group.bench_function("round trip with wake", |b| {
        let mut inbox = std::collections::VecDeque::new();
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                me.send(1, ping(1));
                me.flush();
                while inbox.is_empty() {
                    me.receive(1, &mut inbox);
                    std::hint::spin_loop();
                }
                inbox.clear();
            }
            start.elapsed()
        })
    });
    group.bench_function("batch of 64, one wake", |b| {
        let mut inbox = std::collections::VecDeque::new();
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for _ in 0..64 {
                    me.send(1, ping(1));
                }
                me.flush();
                let mut got = 0;
                while got < 64 {
                    me.receive(64, &mut inbox);
                    got += inbox.len();
                    inbox.clear();
                }
            }
            start.elapsed() / 64
        })
    });
    group.finish();
    stop.store(true, Ordering::Relaxed);
    let _ = peers.shards[1].waker.wake();
    echoer.join().unwrap();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
