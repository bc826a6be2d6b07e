//! Workers as this owner sees them: registration (CAN_DO, CANT_DO, a worker leaving), which
//! job a GRAB gets (§3.4) and the timer its assignment arms, and PRE_SLEEP and the NOOPs that
//! wake sleeping workers when a job is queued (§3.5).

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

    /// PRE_SLEEP: a NOOP at once if a job is queued for the worker, else it sleeps (§3.5).
    pub(super) fn sleep(&mut self, worker: ConnId, out: &mut Outbox) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        let runnable = w.functions.iter().any(|&(f, _)| {
            self.functions[f as usize]
                .queues
                .iter()
                .any(|q| !q.is_empty())
        });
        set_wake_flags(&mut self.wakeable, w, true, runnable);
        if !runnable {
            // gearmand removes a sleeping connection's timeout: the job it holds may
            // now run as long as it takes.
            w.timer = None;
        }
        if runnable {
            out.push((
                worker.shard,
                ToHome::Noop {
                    to: worker,
                    from: self.shard,
                },
            ));
        }
    }

    /// The worker's home did not send a NOOP from here (the worker was awake): wake someone
    /// else for what is queued.
    pub(super) fn noop_declined(&mut self, worker: ConnId, out: &mut Outbox) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        set_wake_flags(&mut self.wakeable, w, false, false);
        let functions: SmallVec<[u32; 4]> = w.functions.iter().map(|&(f, _)| f).collect();
        for f in functions {
            if self.functions[f as usize]
                .queues
                .iter()
                .any(|q| !q.is_empty())
            {
                self.wake(f, out);
            }
        }
    }

    /// Sends NOOP to sleeping workers of `f`, walking its entries round robin (§3.5).
    pub(super) fn wake(&mut self, f: u32, out: &mut Outbox) {
        if self.wakeable == 0 {
            return;
        }
        let function = &mut self.functions[f as usize];
        let n = function.workers.len();
        if n == 0 {
            return;
        }
        let limit = self.config.worker_wakeup as usize;
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
    }

    /// Removes a worker's entries (all, or one function's) and requeues the jobs it held for them.
    pub(super) fn unregister(&mut self, worker: ConnId, only: Option<u32>, out: &mut Outbox) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
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
