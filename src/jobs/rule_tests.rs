//! Focused tests of owner rules the model test (`model_tests.rs`) found broken.

use super::{JobBytes, Outbox, Owner, OwnerConfig, Priority};
use crate::message::*;

fn owner(durable: bool) -> Owner {
    owner_waking(durable, 0)
}

fn owner_waking(durable: bool, worker_wakeup: u8) -> Owner {
    Owner::new(
        0,
        1,
        OwnerConfig {
            handle_prefix: b"H:t"[..].into(),
            job_retries: 0,
            worker_wakeup,
            round_robin: false,
            durable,
            boot: 1,
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

fn submit_bg(o: &mut Owner, out: &mut Outbox, client: ConnId, seq: Seq, unique: &[u8]) {
    submit_to(o, out, (client, seq), b"f", unique, Priority::Normal);
}

fn submit_to(
    o: &mut Owner,
    out: &mut Outbox,
    (client, seq): (ConnId, Seq),
    function: &[u8],
    unique: &[u8],
    priority: Priority,
) {
    o.handle(
        ToOwner::Submit(Box::new(Submit {
            client,
            seq,
            exceptions: false,
            function: function.into(),
            job: JobBytes::new(unique, b"", b"data"),
            priority,
            background: true,
            when: 0,
        })),
        out,
    );
}

/// The replies in `out`, as (recipient slot, seq, body after the 12-byte header).
fn replies(out: &mut Outbox) -> Vec<(u32, Seq, String)> {
    let mut r: Vec<_> = out
        .drain(..)
        .filter_map(|(_, m)| match m {
            ToHome::Reply { to, seq, bytes, .. } => Some((
                to.slot,
                seq,
                String::from_utf8_lossy(&bytes[12..]).into_owned(),
            )),
            _ => None,
        })
        .collect();
    r.sort();
    r
}

/// A background submission coalescing onto a job whose add already left for the store is
/// answered when that add is durable: no later batch may be coming to answer it.
#[test]
fn a_background_submit_coalesced_onto_a_stored_job_is_answered_with_it() {
    let mut o = owner(true);
    let mut out = Vec::new();
    submit_bg(&mut o, &mut out, conn(1), 1, b"u");
    let (batch, _) = o.take_store_ops().unwrap();
    submit_bg(&mut o, &mut out, conn(2), 7, b"u");
    assert!(
        o.take_store_ops().is_none(),
        "a coalesced submit stores nothing"
    );
    o.durable(batch, Ok(()), &mut out);
    assert_eq!(
        replies(&mut out),
        vec![(1, 1, "H:t:1".to_string()), (2, 7, "H:t:1".to_string())]
    );
}

/// ... and shares its job's fate: if that batch fails, a later batch's success does not
/// acknowledge a job that was never stored.
#[test]
fn a_background_submit_coalesced_onto_a_failed_job_is_refused_with_it() {
    let mut o = owner(true);
    let mut out = Vec::new();
    submit_bg(&mut o, &mut out, conn(1), 1, b"u");
    let (first, _) = o.take_store_ops().unwrap();
    submit_bg(&mut o, &mut out, conn(2), 7, b"u");
    submit_bg(&mut o, &mut out, conn(3), 1, b"other");
    let (second, _) = o.take_store_ops().unwrap();
    o.durable(first, Err("disk full"), &mut out);
    o.durable(second, Ok(()), &mut out);
    let refused = "QUEUE_ERROR\0QUEUE_ERROR".to_string();
    assert_eq!(
        replies(&mut out),
        vec![
            (1, 1, refused.clone()),
            (2, 7, refused),
            (3, 1, "H:t:2".to_string())
        ]
    );
}

/// The workers sent NOOP in `out`, by slot.
fn noops(out: &mut Outbox) -> Vec<u32> {
    out.drain(..)
        .filter_map(|(_, m)| match m {
            ToHome::Noop { to, .. } => Some(to.slot),
            _ => None,
        })
        .collect()
}

/// With `--worker-wakeup 1`, a woken worker that leaves (or stops doing the function) before
/// it grabs passes the wake-up on: the job does not wait while another worker sleeps.
#[test]
fn a_woken_worker_that_leaves_passes_its_wake_up_on() {
    for leave in ["gone", "cant_do"] {
        let mut o = owner_waking(false, 1);
        let mut out = Vec::new();
        for w in [1, 2] {
            o.handle(
                ToOwner::CanDo {
                    worker: conn(w),
                    function: b"f"[..].into(),
                    timeout_ms: 0,
                },
                &mut out,
            );
            o.handle(ToOwner::Sleep { worker: conn(w) }, &mut out);
        }
        submit_bg(&mut o, &mut out, conn(9), 1, b"u");
        assert_eq!(noops(&mut out), vec![1], "one worker woken");
        let msg = match leave {
            "gone" => ToOwner::WorkerGone { worker: conn(1) },
            _ => ToOwner::CantDo {
                worker: conn(1),
                function: b"f"[..].into(),
            },
        };
        o.handle(msg, &mut out);
        assert_eq!(
            noops(&mut out),
            vec![2],
            "{leave}: the other is woken instead"
        );
    }
}

/// ... and so does a worker that was woken for one function, took a job of another, and left:
/// a queued job never waits with all its workers asleep because an awake one went away.
#[test]
fn a_worker_that_leaves_with_work_queued_passes_a_wake_up_on() {
    let mut o = owner_waking(false, 1);
    let mut out = Vec::new();
    for (w, f) in [(1, "g"), (2, "g"), (1, "f")] {
        o.handle(
            ToOwner::CanDo {
                worker: conn(w),
                function: f.as_bytes().into(),
                timeout_ms: 0,
            },
            &mut out,
        );
    }
    for w in [1, 2] {
        o.handle(ToOwner::Sleep { worker: conn(w) }, &mut out);
    }
    submit_to(&mut o, &mut out, (conn(9), 1), b"g", b"g", Priority::Normal);
    assert_eq!(noops(&mut out), vec![1]);
    submit_to(&mut o, &mut out, (conn(9), 2), b"f", b"f", Priority::High);
    o.handle(
        ToOwner::Grab {
            worker: conn(1),
            seq: 3,
            kind: GrabKind::Plain,
            rest: Default::default(),
        },
        &mut out,
    );
    assert!(
        out.iter()
            .any(|(_, m)| matches!(m, ToHome::Assign { number: 2, .. })),
        "worker 1 took the HIGH f job"
    );
    out.clear();
    o.handle(ToOwner::WorkerGone { worker: conn(1) }, &mut out);
    assert_eq!(noops(&mut out), vec![2], "worker 2 is woken for the g job");
}
