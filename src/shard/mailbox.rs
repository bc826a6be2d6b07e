//! Message passing between shards: one bounded single-producer single-consumer ring per ordered
//! pair of shards, an outbox per destination for what did not fit, and the sleep/wake protocol.
//! The atomics shards use to reach each other live here (the process-wide control flags and
//! the store's acknowledgements have their own).
//!
//! Ordering: each ring is FIFO, so everything one shard sends another arrives in send order
//! (a worker's WORK_DATA reaches the owner before its WORK_COMPLETE, and the owner's forwards
//! reach the client's home in that order). Nothing is promised between different senders.
//!
//! Wake protocol (read-after-write on both sides, hence SeqCst fences):
//! - receiver, before a blocking poll: `sleeping = true`; fence; look at every inbound ring once
//!   more, and at every outbound ring it still has messages for; if a message arrived or a full
//!   ring has room again, `sleeping = false` and poll without blocking.
//! - sender, after pushing a batch: fence; `swap(sleeping, false)`; wake only if it was true.
//!
//! With a fence on both sides at least one side sees the other's write, so no message is left
//! in a ring while its receiver sleeps; a sleeping receiver is woken once per batch, by one
//! sender, and a busy one costs no syscall.
//!
//! Backpressure: a full ring never drops and never blocks. What does not fit waits in the
//! sender's outbox, and the sender asks the receiver for room (`space_wanted`, then one more
//! try, so the request and the receiver's next pop cannot miss each other; a ring that fills
//! again after a push is asked for again, since the pop that made room may have taken the
//! request); a receiver that pops from a ring whose sender asked wakes that sender. An outbox holding
//! [`outbox_limit`](Mailbox::outbox_limit) messages marks its destination *congested*: the home
//! stops reading the connections that feed that destination until the outbox is empty again
//! (`Shard`), so memory stays bounded while nothing is dropped. Messages caused by other
//! shards' messages are still accepted while congested: they are bounded by what the rings
//! carry per turn, and refusing them could deadlock two shards that wait on each other.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::time::{Duration, Instant};

use mio::Waker;
use rtrb::{Consumer, Producer, RingBuffer};

use super::mail::Mail;
use crate::message::ShardId;

/// Messages one ring holds (and, past a full ring, one outbox holds before its destination is
/// congested).
pub const RING_CAPACITY: usize = 8192;

/// What other threads may touch of a shard: its waker and flags.
pub struct Shared {
    /// Wakes the shard's poll.
    pub waker: Waker,
    /// The shard is about to block in poll (see the module docs).
    pub sleeping: AtomicBool,
    /// Senders (a bit per shard) whose ring to this shard was full: popping from it wakes them.
    pub space_wanted: AtomicU64,
    /// Jobs this shard holds, published only while a graceful shutdown waits for zero
    /// (`usize::MAX` until the shard has published).
    pub jobs: AtomicUsize,
}

impl Shared {
    /// The shared part of a shard whose poll `waker` wakes.
    pub fn new(waker: Waker) -> Shared {
        Shared {
            waker,
            sleeping: AtomicBool::new(false),
            space_wanted: AtomicU64::new(0),
            jobs: AtomicUsize::new(usize::MAX),
        }
    }

    /// Wakes the shard if it sleeps (or is about to); a busy shard costs no syscall.
    fn wake_if_sleeping(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }
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
    /// The accepting shard ran out of descriptors: the next connection to close wakes it.
    pub accept_blocked: AtomicBool,
    /// Bytes held for incomplete frames larger than a read buffer, across shards
    /// (`--max-input-buffer` bounds it).
    pub input_buffered: AtomicUsize,
    /// One connection, server-wide, may grow its frame past `input_buffered`'s bound (by at
    /// most one `--max-packet-size`): without it, connections that each hold part of the
    /// budget and each need more would wait for one another for ever.
    pub overdraft_taken: AtomicBool,
    /// Open connections to the metrics port, across shards (`--metrics-max-connections`).
    pub metrics_connections: AtomicUsize,
    /// Whose turn it is to start a metrics scrape (`--metrics-min-interval`).
    pub scrape_turns: ScrapeTurns,
}

/// Metrics scrapes take turns server-wide (`--metrics-min-interval`): a scrape walks every
/// function on every shard, so however many peers ask, on whichever shards, the shards do it
/// at most once per interval.
pub struct ScrapeTurns {
    started: Instant,
    /// Milliseconds after `started` before which no scrape starts.
    next_ms: AtomicU64,
}

impl Default for ScrapeTurns {
    fn default() -> Self {
        ScrapeTurns {
            started: Instant::now(),
            next_ms: AtomicU64::new(0),
        }
    }
}

impl ScrapeTurns {
    /// When the next scrape may start.
    pub fn next(&self) -> Instant {
        self.started + Duration::from_millis(self.next_ms.load(Ordering::Acquire))
    }

    /// Takes the turn if it has come: no other scrape starts for `interval` from now.
    pub fn take(&self, interval: Duration) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Acquire);
        now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + interval.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }
}

/// Every shard's shared part, and the control flags.
pub struct Peers {
    /// Indexed by shard.
    pub shards: Vec<Shared>,
    /// Flags.
    pub control: Control,
}

impl crate::store::writer::WakeShard for Peers {
    fn wake(&self, shard: usize) {
        let _ = self.shards[shard].waker.wake();
    }
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
    tx: Vec<Option<Producer<Mail>>>,
    /// Consumer from each shard (None for itself).
    rx: Vec<Option<Consumer<Mail>>>,
    /// Messages waiting for ring space, per destination.
    outbox: Vec<VecDeque<Mail>>,
    /// Messages an outbox holds before its destination counts as congested.
    outbox_limit: usize,
    /// Destinations (a bit per shard) whose outbox reached the limit and has not emptied since.
    congested: u64,
}

/// Builds the n·(n−1) rings of `capacity` messages each and hands each shard its mailbox.
pub fn build(peers: Arc<Peers>, capacity: usize) -> Vec<Mailbox> {
    let n = peers.shards.len();
    assert!(n <= 64, "a shard set is a 64-bit mask");
    let mut tx: Vec<Vec<Option<Producer<Mail>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut rx: Vec<Vec<Option<Consumer<Mail>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (p, c) = RingBuffer::new(capacity);
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
            outbox_limit: capacity,
            congested: 0,
        })
        .collect()
}

impl Mailbox {
    /// Queues a message for another shard; it leaves at the next [`flush`](Mailbox::flush).
    /// Never refuses: a caller that keeps sending to a [`congested`](Mailbox::congested)
    /// destination is expected to stop taking new input.
    pub fn send(&mut self, to: ShardId, msg: Mail) {
        debug_assert_ne!(to, self.me);
        let outbox = &mut self.outbox[to as usize];
        outbox.push_back(msg);
        if outbox.len() >= self.outbox_limit {
            self.congested |= 1 << to;
        }
    }

    /// Destinations (a bit per shard) whose outbox is full: the home reads nothing more from
    /// the connections that feed them until it empties.
    pub fn congested(&self) -> u64 {
        self.congested
    }

    /// Messages an outbox holds before its destination is congested.
    pub fn outbox_limit(&self) -> usize {
        self.outbox_limit
    }

    /// Messages waiting in outboxes for ring space.
    pub fn pending(&self) -> usize {
        self.outbox.iter().map(VecDeque::len).sum()
    }

    /// Pushes outboxes into the rings and wakes destinations that sleep. A destination whose
    /// ring is full is asked to wake this shard when it makes room. Returns whether anything
    /// is still waiting for ring space.
    pub fn flush(&mut self) -> bool {
        let mut left = false;
        for to in 0..self.outbox.len() {
            if self.outbox[to].is_empty() {
                continue;
            }
            let Some(tx) = self.tx[to].as_mut() else {
                continue;
            };
            let peer = &self.peers.shards[to];
            let mut pushed = false;
            let mut asked = false;
            while let Some(msg) = self.outbox[to].pop_front() {
                match tx.push(msg) {
                    Ok(()) => {
                        pushed = true;
                        // A push after the request means the receiver popped, and that pop
                        // may have taken (cleared) the request: if the ring fills again,
                        // ask again, or nobody wakes this shard when room comes.
                        asked = false;
                    }
                    Err(rtrb::PushError::Full(msg)) if !asked => {
                        // Ask for room, then look once more: a pop that happened before the
                        // request was seen is seen by this second try (see the module docs).
                        self.outbox[to].push_front(msg);
                        peer.space_wanted.fetch_or(1 << self.me, Ordering::SeqCst);
                        fence(Ordering::SeqCst);
                        asked = true;
                    }
                    Err(rtrb::PushError::Full(msg)) => {
                        self.outbox[to].push_front(msg);
                        left = true;
                        break;
                    }
                }
            }
            if self.outbox[to].is_empty() {
                self.congested &= !(1 << to);
                // A full outbox held a lot of memory; give it back.
                if self.outbox[to].capacity() > self.outbox_limit {
                    self.outbox[to] = VecDeque::new();
                }
            }
            if pushed {
                fence(Ordering::SeqCst);
                peer.wake_if_sleeping();
            }
        }
        left
    }

    /// Takes up to `budget` messages from each inbound ring, in ring order, and wakes the
    /// senders that were waiting for room in a ring this made room in.
    pub fn receive(&mut self, budget: usize, into: &mut VecDeque<Mail>) {
        let mut popped_from = 0u64;
        for (from, rx) in self.rx.iter_mut().enumerate() {
            let Some(rx) = rx else { continue };
            let mut popped = false;
            for _ in 0..budget {
                match rx.pop() {
                    Ok(m) => {
                        into.push_back(m);
                        popped = true;
                    }
                    Err(_) => break,
                }
            }
            if popped {
                popped_from |= 1 << from;
            }
        }
        if popped_from == 0 {
            return;
        }
        let me = &self.peers.shards[self.me as usize];
        fence(Ordering::SeqCst);
        let waiting = me.space_wanted.load(Ordering::Relaxed) & popped_from;
        if waiting != 0 {
            me.space_wanted.fetch_and(!waiting, Ordering::SeqCst);
            for from in 0..self.peers.shards.len() {
                if waiting & (1 << from) != 0 {
                    self.peers.shards[from].wake_if_sleeping();
                }
            }
        }
    }

    /// Messages waiting in the inbound rings, and the fullest ring's fill (0 to 1).
    pub fn ring_fill(&self) -> (u64, f64) {
        let mut total = 0;
        let mut fullest: f64 = 0.0;
        for rx in self.rx.iter().flatten() {
            let n = rx.slots();
            total += n as u64;
            fullest = fullest.max(n as f64 / rx.buffer().capacity() as f64);
        }
        (total, fullest)
    }

    /// Announces that this shard is about to block. Returns false (and stays awake) if a
    /// message arrived meanwhile, or a full ring this shard has messages for has room again.
    pub fn prepare_sleep(&self) -> bool {
        let me = &self.peers.shards[self.me as usize];
        me.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let arrived = self.rx.iter().flatten().any(|rx| !rx.is_empty());
        let room = self
            .outbox
            .iter()
            .zip(&self.tx)
            .any(|(o, tx)| !o.is_empty() && tx.as_ref().is_some_and(|tx| tx.slots() > 0));
        if arrived || room {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ConnId, ToHome};
    use crate::shard::WAKER;
    use mio::{Events, Poll};
    use std::time::{Duration, Instant};

    /// `n` shards with rings of `capacity` messages, and their polls.
    fn shards(n: usize, capacity: usize) -> (Vec<Mailbox>, Vec<Poll>) {
        let polls: Vec<Poll> = (0..n).map(|_| Poll::new().unwrap()).collect();
        let shared = polls
            .iter()
            .map(|p| Shared::new(Waker::new(p.registry(), WAKER).unwrap()))
            .collect();
        let peers = Arc::new(Peers {
            shards: shared,
            control: Control::default(),
        });
        (build(peers, capacity), polls)
    }

    /// A message carrying a number (in the connection slot) for shard `to`.
    fn numbered(to: ShardId, n: u32) -> Mail {
        Mail::Home(ToHome::Noop {
            to: ConnId {
                shard: to,
                slot: n,
                generation: 0,
            },
            from: 0,
        })
    }

    fn number(msg: &Mail) -> u32 {
        match msg {
            Mail::Home(ToHome::Noop { to, .. }) => to.slot,
            other => panic!("{other:?}"),
        }
    }

    /// Whether `poll` reports its waker within `wait`.
    fn woken(poll: &mut Poll, wait: Duration) -> bool {
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(wait)).unwrap();
        events.iter().any(|e| e.token() == WAKER)
    }

    #[test]
    fn a_full_ring_keeps_the_rest_in_order_and_its_receiver_wakes_the_sender() {
        let (mut boxes, mut polls) = shards(2, 4);
        let mut receiver = boxes.pop().unwrap();
        let mut sender = boxes.pop().unwrap();
        for n in 0..10 {
            sender.send(1, numbered(1, n));
        }
        assert_eq!(
            sender.congested(),
            0b10,
            "an outbox of 4 (the limit) congests"
        );
        assert!(sender.flush(), "6 wait for room");
        assert_eq!(sender.pending(), 6);
        assert_eq!(
            sender.congested(),
            0b10,
            "congested until the outbox is empty"
        );
        // Nothing arrived and the full ring has no room: the sender may block...
        assert!(sender.prepare_sleep());
        // ...and the receiver's pop wakes it.
        let mut inbox = VecDeque::new();
        receiver.receive(3, &mut inbox);
        assert!(woken(&mut polls[0], Duration::from_secs(5)), "sender woken");
        sender.awake();
        // Room for 3 now: still some left, and prepare_sleep sees none of that room used.
        assert!(sender.flush());
        assert_eq!(sender.pending(), 3);
        receiver.receive(100, &mut inbox);
        assert!(
            !sender.prepare_sleep(),
            "a full ring with room again is work"
        );
        sender.awake();
        assert!(!sender.flush(), "the rest fits");
        assert_eq!(sender.congested(), 0, "an empty outbox is not congested");
        receiver.receive(100, &mut inbox);
        let got: Vec<u32> = inbox.iter().map(number).collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>(), "ring order is send order");
    }

    #[test]
    fn a_receiver_that_pops_before_the_sender_asks_is_seen_by_the_sender() {
        let (mut boxes, _polls) = shards(2, 2);
        let mut receiver = boxes.pop().unwrap();
        let mut sender = boxes.pop().unwrap();
        for n in 0..3 {
            sender.send(1, numbered(1, n));
        }
        assert!(sender.flush());
        let mut inbox = VecDeque::new();
        receiver.receive(1, &mut inbox);
        // The receiver made room before the sender went to sleep: no sleep.
        assert!(!sender.prepare_sleep());
    }

    /// Shard 0 sends shard 1 far more than a ring holds and stops sending while congested;
    /// shard 1 only receives. Both block in poll with no timeout whenever the mailbox allows:
    /// only the receiver's wake-on-room gets the sender going again.
    #[test]
    fn a_one_way_flood_through_a_tiny_ring_never_stalls() {
        flood(false);
    }

    /// Two shards, each sending the other far more than a ring holds and answering each
    /// message it gets (answers are sent even while congested, as a shard does).
    #[test]
    fn two_shards_flooding_each_other_through_tiny_rings_never_stall() {
        flood(true);
    }

    /// Every message arrives, in order, and neither shard stalls: a watchdog fails the test
    /// when no message has arrived anywhere for 20 s (a slow, loaded machine is not a stall).
    fn flood(both_ways: bool) {
        const MESSAGES: u32 = 100_000;
        let (boxes, polls) = shards(2, 3);
        let done = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = boxes
            .into_iter()
            .zip(polls)
            .enumerate()
            .map(|(me, (mut mailbox, mut poll))| {
                let (done, arrived) = (done.clone(), arrived.clone());
                std::thread::spawn(move || {
                    let peer = (1 - me) as ShardId;
                    let (requests, answers) = match (both_ways, me) {
                        (true, _) => (MESSAGES, MESSAGES),
                        (false, 0) => (MESSAGES, 0),
                        (false, _) => (0, MESSAGES),
                    };
                    let (mut sent, mut answered, mut got_answers) = (0u32, 0u32, 0u32);
                    let mut next_request = 0u32;
                    let mut inbox = VecDeque::new();
                    let mut events = Events::with_capacity(4);
                    let mut finished = false;
                    loop {
                        // Requests carry even numbers, answers odd ones.
                        while sent < requests && mailbox.congested() == 0 {
                            mailbox.send(peer, numbered(peer, sent * 2));
                            sent += 1;
                        }
                        mailbox.receive(2, &mut inbox);
                        arrived.fetch_add(inbox.len(), Ordering::Relaxed);
                        for msg in inbox.drain(..) {
                            let n = number(&msg);
                            if n.is_multiple_of(2) {
                                assert_eq!(n / 2, next_request, "requests in order");
                                next_request += 1;
                                answered += 1;
                                if both_ways {
                                    mailbox.send(peer, numbered(peer, n + 1));
                                }
                            } else {
                                got_answers += 1;
                            }
                        }
                        mailbox.flush();
                        let got = if both_ways { got_answers } else { sent };
                        if !finished && got == requests && answered == answers {
                            finished = true;
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        if done.load(Ordering::SeqCst) == 2 && mailbox.pending() == 0 {
                            mailbox.peers().wake_all();
                            return;
                        }
                        let work_left = sent < requests && mailbox.congested() == 0;
                        let timeout = if work_left || !mailbox.prepare_sleep() {
                            Some(Duration::ZERO)
                        } else {
                            None
                        };
                        poll.poll(&mut events, timeout).unwrap();
                        mailbox.awake();
                    }
                })
            })
            .collect();
        let (mut seen, mut since) = (0, Instant::now());
        while done.load(Ordering::SeqCst) < 2 {
            let now = arrived.load(Ordering::Relaxed);
            if now != seen {
                (seen, since) = (now, Instant::now());
            }
            assert!(
                since.elapsed() < Duration::from_secs(20),
                "stalled after {seen} messages: {} of 2 shards done",
                done.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        for t in threads {
            t.join().unwrap();
        }
    }
}
