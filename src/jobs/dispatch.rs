//! Workers as this owner sees them: registration (CAN_DO, CANT_DO, a worker leaving), which
//! job a GRAB gets (§3.4) and the timer its assignment arms, and PRE_SLEEP and the NOOPs that
//! wake sleeping workers when a job is queued (§3.5).
//!
//! Wake-ups: with `--worker-wakeup N` a queued job wakes N sleepers (0: all of them), as
//! gearmand does. By default a function wakes only as many sleepers as it has queued jobs
//! that no wake in flight already covers: each wake is counted against the function until its
//! worker asks (a GRAB here, a PRE_SLEEP, leaving, or its home declining the NOOP), and a wake
//! whose worker has not asked within `--wake-retry-ms` stops counting, so another sleeper is
//! woken (`run_timers`): a worker that grabbed another owner's job, or is slow, or vanished,
//! delays a job by at most that long.

use std::cmp::Reverse;
use std::time::Duration;

use super::*;

/// Sets a worker entry's wake flags, keeping `count` (the owner's number of wakeable entries)
/// in step.
fn set_wake_flags(count: &mut usize, w: &mut Worker, sleeping: bool, noop_sent: bool) {
    *count -= w.wakeable() as usize;
    w.sleeping = sleeping;
    w.noop_sent = noop_sent;
    *count += w.wakeable() as usize;
}

/// Ends the worker's wake in flight, if any (it asked, or left): it no longer counts against
/// its function. Returns that function.
fn resolve_wake(functions: &mut Slab<Function>, w: &mut Worker) -> Option<u32> {
    let (f, _) = w.woken.take()?;
    functions[f as usize].waking -= 1;
    Some(f)
}

/// Jobs of the function that a grab could take now (epoch jobs not yet due and jobs waiting
/// for the store are on no list).
fn queued(function: &Function) -> u32 {
    function.queues.iter().map(|q| q.len()).sum()
}

impl Owner {
    /// CAN_DO and CAN_DO_TIMEOUT: a worker entry, most recently registered first (§3.4).
    pub(super) fn can_do(&mut self, worker: ConnId, function: &[u8], timeout_ms: u32) {
        let f = self.function_id(function);
        self.functions[f as usize].workers.push(worker);
        self.workers
            .entry(worker)
            .or_default()
            .functions
            .insert(0, (f, timeout_ms));
    }

    /// CANT_DO: the worker's entries for the function go, and the jobs it holds of it are
    /// requeued (§3.9).
    pub(super) fn cant_do(&mut self, worker: ConnId, function: &[u8], out: &mut Outbox) {
        if let Some(&f) = self.by_name.get(function) {
            self.unregister(worker, Some(f), out);
        }
    }

    /// PRE_SLEEP: a NOOP at once if a job is queued for the worker (by default: one that no
    /// other wake in flight covers), else it sleeps (§3.5).
    pub(super) fn sleep(&mut self, worker: ConnId, out: &mut Outbox) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        let resolved = resolve_wake(&mut self.functions, w);
        let functions = &self.functions;
        let runnable = w
            .functions
            .iter()
            .any(|&(f, _)| queued(&functions[f as usize]) > 0);
        let wake_for = match self.config.worker_wakeup {
            Some(_) => None,
            None => w.functions.iter().map(|&(f, _)| f).find(|&f| {
                let function = &functions[f as usize];
                queued(function) > function.waking
            }),
        };
        let noop = match self.config.worker_wakeup {
            Some(_) => runnable,
            None => wake_for.is_some(),
        };
        set_wake_flags(&mut self.wakeable, w, true, noop);
        if !runnable {
            // gearmand removes a sleeping connection's timeout: the job it holds may
            // now run as long as it takes.
            w.timer = None;
        }
        if let Some(f) = wake_for {
            self.count_wake(worker, f);
        }
        if noop {
            out.push((
                worker.shard,
                ToHome::Noop {
                    to: worker,
                    from: self.shard,
                },
            ));
        }
        self.after_resolve(resolved, out);
    }

    /// The worker's home did not send a NOOP from here (the worker was awake): wake someone
    /// else for what is queued.
    pub(super) fn noop_declined(&mut self, worker: ConnId, out: &mut Outbox) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        // The function it was woken for is one of its functions, woken for again below.
        resolve_wake(&mut self.functions, w);
        set_wake_flags(&mut self.wakeable, w, false, false);
        let functions: SmallVec<[u32; 4]> = w.functions.iter().map(|&(f, _)| f).collect();
        self.prune_wake_retries();
        for f in functions {
            if queued(&self.functions[f as usize]) > 0 {
                self.wake(f, out);
            }
        }
    }

    /// Counts a wake of `worker` (default wake-ups) against `f` until it asks or the retry
    /// deadline passes.
    fn count_wake(&mut self, worker: ConnId, f: u32) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        self.wake_seq += 1;
        w.woken = Some((f, self.wake_seq));
        self.functions[f as usize].waking += 1;
        let at = self.clock.instant() + self.config.wake_retry;
        self.wake_retries.push_back((at, worker, self.wake_seq));
        self.compact_wake_retries();
    }

    /// Drops the stale entries (their worker asked since) from the whole retry queue once it
    /// holds many more than the wakes that can be in flight (one per worker): a worker
    /// re-armed by PRE_SLEEP after PRE_SLEEP behind a live entry would otherwise add one each
    /// time until that entry's deadline, up to `--wake-retry-ms` of them. Amortised O(1): at
    /// least `workers + 64` pushes come between two compactions.
    fn compact_wake_retries(&mut self) {
        if self.wake_retries.len() <= 2 * self.workers.len() + 64 {
            return;
        }
        let workers = &self.workers;
        self.wake_retries.retain(|&(_, worker, seq)| {
            workers
                .get(&worker)
                .and_then(|w| w.woken)
                .is_some_and(|(_, s)| s == seq)
        });
    }

    /// A wake in flight for `resolved` ended: forget retry deadlines that nobody waits on any
    /// more, and wake another sleeper if the function's jobs now outnumber its wakes.
    fn after_resolve(&mut self, resolved: Option<u32>, out: &mut Outbox) {
        if let Some(f) = resolved {
            self.prune_wake_retries();
            self.wake(f, out);
        }
    }

    /// Drops stale entries (their worker asked) from the front of the retry queue, so the
    /// shard does not wake up for them.
    fn prune_wake_retries(&mut self) {
        while let Some(&(_, worker, seq)) = self.wake_retries.front() {
            let live = self
                .workers
                .get(&worker)
                .and_then(|w| w.woken)
                .is_some_and(|(_, s)| s == seq);
            if live {
                break;
            }
            self.wake_retries.pop_front();
        }
    }

    /// Wakes whose worker has not asked within `--wake-retry-ms`: they stop counting, and
    /// other sleepers are woken for the jobs they were for.
    pub(super) fn retry_wakes(&mut self, now: Instant, out: &mut Outbox) {
        while let Some(&(at, worker, seq)) = self.wake_retries.front() {
            if at > now {
                break;
            }
            self.wake_retries.pop_front();
            let Some(w) = self.workers.get_mut(&worker) else {
                continue;
            };
            if w.woken.is_none_or(|(_, s)| s != seq) {
                continue;
            }
            // Its flags stay as they are (asleep, NOOP sent): it is not woken again until it
            // asks, and whoever is woken next is someone else.
            let f = resolve_wake(&mut self.functions, w);
            if let Some(f) = f {
                self.functions[f as usize].counters.wake_retries += 1;
            }
            self.after_resolve(f, out);
        }
    }

    /// Sends NOOP to sleeping workers of `f`, walking its entries round robin (§3.5): with
    /// `--worker-wakeup N`, N of them (0: all); by default as many as its queued jobs outnumber
    /// its wakes in flight.
    pub(super) fn wake(&mut self, f: u32, out: &mut Outbox) {
        if self.wakeable == 0 {
            return;
        }
        let function = &mut self.functions[f as usize];
        let n = function.workers.len();
        if n == 0 {
            return;
        }
        let (limit, counted) = match self.config.worker_wakeup {
            Some(limit) => (limit as usize, false),
            None => match queued(function).saturating_sub(function.waking) {
                0 => return,
                want => (want as usize, true),
            },
        };
        let deadline = match counted {
            true => Some(self.clock.instant() + self.config.wake_retry),
            false => None,
        };
        let start = function.wake_at % n;
        let mut sent = 0;
        let mut examined = 0;
        while examined < n {
            let conn = function.workers[(start + examined) % n];
            examined += 1;
            if let Some(w) = self.workers.get_mut(&conn)
                && w.wakeable()
            {
                set_wake_flags(&mut self.wakeable, w, true, true);
                if let Some(at) = deadline {
                    self.wake_seq += 1;
                    w.woken = Some((f, self.wake_seq));
                    function.waking += 1;
                    self.wake_retries.push_back((at, conn, self.wake_seq));
                }
                out.push((
                    conn.shard,
                    ToHome::Noop {
                        to: conn,
                        from: self.shard,
                    },
                ));
                sent += 1;
                if limit > 0 && sent == limit {
                    break;
                }
            }
        }
        function.wake_at = (start + examined) % n;
        if counted {
            self.compact_wake_retries();
        }
    }

    pub(super) fn grab(
        &mut self,
        worker: ConnId,
        seq: Seq,
        kind: GrabKind,
        rest: SmallVec<[ShardId; 4]>,
        out: &mut Outbox,
    ) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return out.push((
                worker.shard,
                ToHome::Empty {
                    to: worker,
                    seq,
                    kind,
                    rest,
                },
            ));
        };
        let resolved = resolve_wake(&mut self.functions, w);
        set_wake_flags(&mut self.wakeable, w, false, false);
        // Priority first across all of the worker's functions here (gearmand 2.0), then the
        // worker's function order (most recently registered first, gearmand 1.1).
        let mut found = None;
        'pick: for p in 0..3 {
            for &(f, _) in w.functions.iter() {
                if let Some(key) = self.functions[f as usize].queues[p].head() {
                    found = Some((f, p, key));
                    break 'pick;
                }
            }
        }
        let Some((f, p, key)) = found else {
            out.push((
                worker.shard,
                ToHome::Empty {
                    to: worker,
                    seq,
                    kind,
                    rest,
                },
            ));
            return self.after_resolve(resolved, out);
        };
        if self.config.round_robin {
            // Move every entry of the served function to the end of the worker's list.
            let (served, others): (Vec<_>, Vec<_>) =
                w.functions.iter().partition(|&&(g, _)| g == f);
            w.functions = others.into_iter().chain(served).collect();
        }
        let timeout = w
            .functions
            .iter()
            .find(|&&(g, _)| g == f)
            .map_or(0, |&(_, t)| t);
        w.held.push(key);
        let function = &mut self.functions[f as usize];
        function.queues[p].remove(&mut self.jobs, key);
        function.running += 1;
        let job = &mut self.jobs[key];
        job.state = State::running(worker);
        self.assignments += 1;
        self.queue_wait.observe(self.now_ms.wrapping_sub(job.stamp));
        job.stamp = self.now_ms;
        // gearmand's one timer per connection: this assignment re-arms it, or removes it
        // when the function has no timeout.
        w.timer = None;
        if timeout > 0 {
            let after = Duration::from_millis(timeout.max(1000) as u64);
            self.timeouts.push(Reverse((
                self.clock.instant() + after,
                job.number,
                self.assignments,
            )));
            w.timer = Some((job.number, self.assignments));
        }
        let handle = handle(&self.config.handle_prefix, job.number);
        let name = &self.functions[f as usize].name;
        let (unique, reducer, data) = job.bytes(&self.blobs);
        // `encode` reserves the exact size, so the boxing below does not reallocate.
        let mut bytes = Vec::new();
        match kind {
            GrabKind::Plain => encode(&mut bytes, PacketType::JobAssign, &[&handle, name, data]),
            GrabKind::All if !reducer.is_empty() => encode(
                &mut bytes,
                PacketType::JobAssignAll,
                &[&handle, name, unique, reducer, data],
            ),
            GrabKind::Uniq | GrabKind::All => encode(
                &mut bytes,
                PacketType::JobAssignUniq,
                &[&handle, name, unique, data],
            ),
        }
        out.push((
            worker.shard,
            ToHome::Assign {
                to: worker,
                seq,
                number: job.number,
                bytes: bytes.into(),
            },
        ));
        // Woken for another function (or for this one, whose next job is still queued).
        self.after_resolve(resolved, out);
    }

    /// Removes a worker's entries (all, or one function's) and requeues the jobs it held for them.
    pub(super) fn unregister(&mut self, worker: ConnId, only: Option<u32>, out: &mut Outbox) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        if w.woken.is_some_and(|(f, _)| only.is_none_or(|o| o == f)) {
            // Woken for a function it gives up: the wake no longer counts (the function is
            // among those woken for again below).
            resolve_wake(&mut self.functions, w);
        }
        let mut touched: SmallVec<[u32; 4]> = SmallVec::new();
        w.functions.retain(|&(f, _)| {
            let drop = only.is_none_or(|o| o == f);
            if drop && !touched.contains(&f) {
                touched.push(f);
            }
            !drop
        });
        let jobs = &self.jobs;
        let mut requeue: SmallVec<[usize; 2]> = SmallVec::new();
        w.held.retain(|&mut k| {
            let drop = only.is_none_or(|o| o == jobs[k].function);
            if drop {
                requeue.push(k);
            }
            !drop
        });
        if w.functions.is_empty() && w.held.is_empty() {
            self.wakeable -= w.wakeable() as usize;
            self.workers.remove(&worker);
        }
        for &f in &touched {
            self.functions[f as usize].workers.retain(|&c| c != worker);
        }
        self.prune_wake_retries();
        for key in requeue {
            self.requeue(key, out);
        }
        // A worker leaving a function with jobs queued may have been the one awake for them
        // (woken by their NOOP, or busy with another job): with --worker-wakeup, the other
        // workers may all be asleep unwoken, so wake them as a new job would.
        for f in touched {
            if self.functions[f as usize]
                .queues
                .iter()
                .any(|q| !q.is_empty())
            {
                self.wake(f, out);
            }
        }
    }
}

#[cfg(test)]
impl Owner {
    /// Workers woken (default wake-ups) that have not asked yet, each with the name of the
    /// function it was woken for, in connection order; checks each function's count of them.
    pub(super) fn wakes_in_flight(&self) -> Vec<(ConnId, Vec<u8>)> {
        let mut v: Vec<(ConnId, Vec<u8>)> = self
            .workers
            .iter()
            .filter_map(|(&c, w)| {
                w.woken
                    .map(|(f, _)| (c, self.functions[f as usize].name.to_vec()))
            })
            .collect();
        v.sort_by_key(|(c, _)| (c.shard, c.slot, c.generation));
        for (id, f) in &self.functions {
            let n = self
                .workers
                .values()
                .filter(|w| w.woken.is_some_and(|(g, _)| g as usize == id))
                .count();
            assert_eq!(f.waking as usize, n, "wakes counted for {:?}", f.name);
        }
        v
    }
}
