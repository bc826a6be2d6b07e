//! Message passing between shards: one bounded single-producer single-consumer ring per ordered
//! pair of shards, an outbox per destination for what did not fit, and the sleep/wake protocol.
//! This module holds the crate's only atomics.
//!
//! Ordering: each ring is FIFO, so everything one shard sends another arrives in send order
//! (a worker's WORK_DATA reaches the owner before its WORK_COMPLETE, and the owner's forwards
//! reach the client's home in that order). Nothing is promised between different senders.
//!
//! Wake protocol (read-after-write on both sides, hence SeqCst fences):
//! - receiver, before a blocking poll: `sleeping = true`; fence; look at every inbound ring once
//!   more; if anything is there, `sleeping = false` and poll without blocking.
//! - sender, after pushing a batch: fence; `swap(sleeping, false)`; wake only if it was true.
//!
//! With a fence on both sides at least one side sees the other's write, so no message is left
//! in a ring while its receiver sleeps; a sleeping receiver is woken once per batch, by one
//! sender, and a busy one costs no syscall.
//!
//! A full ring never drops and never blocks: the rest stays in the outbox and is pushed again
//! on the next loop turn.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};

use mio::Waker;
use rtrb::{Consumer, Producer, RingBuffer};

use super::message::{Msg, ShardId};

/// Messages one ring holds.
pub const RING_CAPACITY: usize = 8192;

/// What other threads may touch of a shard: its waker and flags.
pub struct Shared {
    /// Wakes the shard's poll.
    pub waker: Waker,
    /// The shard is about to block in poll (see the module docs).
    pub sleeping: AtomicBool,
    /// Jobs this shard holds, published only while a graceful shutdown waits for zero
    /// (`usize::MAX` until the shard has published).
    pub jobs: AtomicUsize,
}

/// Process-wide control flags, set by signals or admin commands.
#[derive(Default)]
pub struct Control {
    /// Stop now.
    pub stop: AtomicBool,
    /// Stop accepting; stop once no jobs remain.
    pub graceful: AtomicBool,
    /// Reopen the log file.
    pub reopen_log: AtomicBool,
    /// Open connections, across shards.
    pub connections: AtomicUsize,
}

/// Every shard's shared part, and the control flags.
pub struct Peers {
    /// Indexed by shard.
    pub shards: Vec<Shared>,
    /// Flags.
    pub control: Control,
}

impl Peers {
    /// Wakes every shard (after a control flag changed).
    pub fn wake_all(&self) {
        for s in &self.shards {
            let _ = s.waker.wake();
        }
    }
}

/// One shard's end of every ring.
pub struct Mailbox {
    me: ShardId,
    peers: Arc<Peers>,
    /// Producer to each shard (None for itself).
    tx: Vec<Option<Producer<Msg>>>,
    /// Consumer from each shard (None for itself).
    rx: Vec<Option<Consumer<Msg>>>,
    /// Messages waiting for ring space, per destination.
    outbox: Vec<VecDeque<Msg>>,
}

/// Builds the n·(n−1) rings and hands each shard its mailbox.
pub fn build(peers: Arc<Peers>) -> Vec<Mailbox> {
    let n = peers.shards.len();
    let mut tx: Vec<Vec<Option<Producer<Msg>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut rx: Vec<Vec<Option<Consumer<Msg>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (p, c) = RingBuffer::new(RING_CAPACITY);
                tx[from][to] = Some(p);
                rx[to][from] = Some(c);
            }
        }
    }
    tx.into_iter()
        .zip(rx)
        .enumerate()
        .map(|(me, (tx, rx))| Mailbox {
            me: me as ShardId,
            peers: peers.clone(),
            tx,
            rx,
            outbox: (0..n).map(|_| VecDeque::new()).collect(),
        })
        .collect()
}

impl Mailbox {
    /// Queues a message for another shard; it leaves at the next [`flush`](Mailbox::flush).
    pub fn send(&mut self, to: ShardId, msg: Msg) {
        debug_assert_ne!(to, self.me);
        self.outbox[to as usize].push_back(msg);
    }

    /// Pushes outboxes into the rings and wakes destinations that sleep. Returns whether
    /// anything is still waiting for ring space.
    pub fn flush(&mut self) -> bool {
        let mut left = false;
        for to in 0..self.outbox.len() {
            if self.outbox[to].is_empty() {
                continue;
            }
            let Some(tx) = self.tx[to].as_mut() else {
                continue;
            };
            let mut pushed = false;
            while let Some(msg) = self.outbox[to].pop_front() {
                match tx.push(msg) {
                    Ok(()) => pushed = true,
                    Err(rtrb::PushError::Full(msg)) => {
                        self.outbox[to].push_front(msg);
                        left = true;
                        break;
                    }
                }
            }
            if pushed {
                fence(Ordering::SeqCst);
                let peer = &self.peers.shards[to];
                if peer.sleeping.swap(false, Ordering::SeqCst) {
                    let _ = peer.waker.wake();
                }
            }
        }
        left
    }

    /// Takes up to `budget` messages from each inbound ring, in ring order.
    pub fn receive(&mut self, budget: usize, into: &mut VecDeque<Msg>) {
        for rx in self.rx.iter_mut().flatten() {
            for _ in 0..budget {
                match rx.pop() {
                    Ok(m) => into.push_back(m),
                    Err(_) => break,
                }
            }
        }
    }

    /// Announces that this shard is about to block. Returns false (and stays awake) if a
    /// message arrived meanwhile.
    pub fn prepare_sleep(&self) -> bool {
        let me = &self.peers.shards[self.me as usize];
        me.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.rx.iter().flatten().any(|rx| !rx.is_empty()) {
            me.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Called after poll returns.
    pub fn awake(&self) {
        self.peers.shards[self.me as usize]
            .sleeping
            .store(false, Ordering::Relaxed);
    }

    /// The shared flags.
    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }
}
