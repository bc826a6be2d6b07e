//! Queue operations on an owner shard alone, no sockets: submit, grab, complete, coalesce and
//! cancel, with a million jobs queued behind them; and a job cycle with 1,000 busy workers.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gearshift::jobs::{Outbox, Owner, OwnerConfig, Priority};
use gearshift::message::{ConnId, DIRECT, GrabKind, Submit, ToHome, ToOwner};

const QUEUED: usize = 1_000_000;

fn owner() -> Owner {
    Owner::new(
        0,
        1,
        OwnerConfig {
            handle_prefix: b"H:bench"[..].into(),
            job_retries: 0,
            worker_wakeup: None,
            wake_retry: std::time::Duration::from_millis(5),
            round_robin: false,
            durable: false,
            boot: 0,
        },
    )
}

fn conn(slot: u32) -> ConnId {
    ConnId {
        shard: 0,
        slot,
        generation: 0,
    }
}

fn submit(owner: &mut Owner, out: &mut Outbox, unique: &[u8], background: bool) {
    owner.handle(
        ToOwner::Submit(Box::new(Submit {
            client: conn(1),
            seq: DIRECT,
            exceptions: false,
            function: b"f"[..].into(),
            job: gearshift::jobs::JobBytes::new(unique, b"", &[b'x'; 64]),
            priority: Priority::Normal,
            background,
            when: 0,
        })),
        out,
    );
}

/// One job's whole life: a background submit, the worker's grab, its WORK_COMPLETE.
fn cycle(owner: &mut Owner, out: &mut Outbox, worker: ConnId, unique: &[u8]) {
    submit(owner, out, unique, true);
    owner.handle(
        ToOwner::Grab {
            worker,
            seq: DIRECT,
            kind: GrabKind::Plain,
            rest: Default::default(),
        },
        out,
    );
    let number = out.iter().find_map(|(_, m)| match m {
        ToHome::Assign { number, .. } => Some(*number),
        _ => None,
    });
    owner.handle(
        ToOwner::Work {
            worker,
            number: number.unwrap(),
            kind: gearshift::message::WorkKind::Complete,
            packet: Box::new([0; 12]),
        },
        out,
    );
    black_box(out.len());
    out.clear();
}

/// An owner with a million background jobs queued for `f` and one worker registered.
fn loaded() -> (Owner, Outbox) {
    let mut o = owner();
    let mut out = Vec::new();
    o.handle(
        ToOwner::CanDo {
            worker: conn(2),
            function: b"f"[..].into(),
            timeout_ms: 0,
        },
        &mut out,
    );
    for i in 0..QUEUED {
        submit(&mut o, &mut out, format!("u{i}").as_bytes(), true);
        out.clear();
    }
    (o, out)
}

fn jobs(c: &mut Criterion) {
    let mut group = c.benchmark_group("owner, 1M queued");
    group.throughput(Throughput::Elements(1));
    let (mut o, mut out) = loaded();
    let mut n = 0u64;
    group.bench_function("submit + grab + complete", |b| {
        b.iter(|| {
            n += 1;
            cycle(&mut o, &mut out, conn(2), format!("x{n}").as_bytes());
        })
    });
    group.bench_function("coalesced submit", |b| {
        submit(&mut o, &mut out, b"same", false);
        out.clear();
        b.iter(|| {
            submit(&mut o, &mut out, b"same", true);
            out.clear();
        })
    });
    group.finish();

    let mut group = c.benchmark_group("owner");
    group.throughput(Throughput::Elements(1));
    // A new job must not cost a walk over the function's workers when none of them sleeps.
    group.bench_function("submit + grab + complete, 1,000 busy workers", |b| {
        let mut o = owner();
        let mut out = Vec::new();
        for w in 0..1000 {
            o.handle(
                ToOwner::CanDo {
                    worker: conn(100 + w),
                    function: b"f"[..].into(),
                    timeout_ms: 0,
                },
                &mut out,
            );
        }
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            cycle(&mut o, &mut out, conn(100), format!("b{n}").as_bytes());
        })
    });
    group.bench_function("cancel a queued job", |b| {
        b.iter_batched(
            || {
                let mut o = owner();
                let mut out = Vec::new();
                submit(&mut o, &mut out, b"u", true);
                (o, out)
            },
            |(mut o, mut out)| {
                o.handle(
                    ToOwner::Cancel {
                        client: conn(3),
                        seq: DIRECT,
                        number: 1,
                    },
                    &mut out,
                );
                black_box(out.len())
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = jobs
}
criterion_main!(benches);
