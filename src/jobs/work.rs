//! What happens to a job once it exists: results forwarded to its clients (§3.6), requeue
//! after its worker is lost and the `--job-retries` limit (§3.9), clients going away (§3.10),
//! `cancel job` (§3.13), and freeing a job when it ends.

use super::durable::store_unique;
use super::*;

impl Owner {
    pub(super) fn work(
        &mut self,
        worker: ConnId,
        number: u64,
        kind: WorkKind,
        packet: Box<[u8]>,
        out: &mut Outbox,
    ) {
        let key = match self.job_by_number(number) {
            Some(k) if self.jobs[k].state.holder() == Some(worker) => k,
            _ => {
                let mut bytes = Vec::new();
                let (code, text) = not_found(kind);
                protocol::encode_error(&mut bytes, code, text);
                self.errors.add(code);
                return forward(out, worker, bytes, None);
            }
        };
        let job = &mut self.jobs[key];
        if kind == WorkKind::Status {
            let p = protocol::split_args(
                protocol::Magic::Response,
                PacketType::WorkStatus,
                &packet[protocol::HEADER_LEN..],
            );
            if let Ok(p) = p {
                // gearmand reads both with atoi, the denominator from its first 10 bytes
                // (an 11-byte buffer; past 11 bytes it closes the worker's connection, where
                // gearshiftd reads the first 10 as it would have).
                let denominator = p.arg(2);
                job.set_status(
                    protocol::atoi(p.arg(1)) as u32,
                    protocol::atoi(&denominator[..denominator.len().min(10)]) as u32,
                );
            }
        }
        let ends = kind.ends_job().then_some(number);
        if ends.is_some() {
            let counters = &mut self.functions[job.function as usize].counters;
            match kind {
                WorkKind::Complete => counters.completed += 1,
                WorkKind::Fail => counters.failed += 1,
                _ => counters.exceptions += 1,
            }
            self.run_time.observe(self.now_ms.wrapping_sub(job.stamp));
            if !job.waiters().is_empty() {
                self.round_trip
                    .observe(self.now_ms.wrapping_sub(job.submitted));
            }
        }
        // Newest waiter first (§3.6); the last recipient takes the packet itself, so the common
        // single-client case forwards without a copy.
        let waiters: SmallVec<[Waiter; 2]> = job.waiters().iter().rev().copied().collect();
        let mut packet = Some(packet);
        for (i, w) in waiters.iter().enumerate() {
            let bytes: Box<[u8]> = if kind == WorkKind::Exception && !w.exceptions {
                // A client without the exceptions option gets WORK_FAIL "<handle>\0" (§3.6).
                let mut b = Vec::new();
                let body = &packet.as_ref().unwrap()[protocol::HEADER_LEN..];
                let handle = body.split(|&c| c == 0).next().unwrap_or_default();
                encode(&mut b, PacketType::WorkFail, &[handle, b""]);
                b.into()
            } else if i + 1 == waiters.len() {
                packet.take().unwrap()
            } else {
                packet.clone().unwrap()
            };
            out.push((
                w.conn.shard,
                ToHome::Forward {
                    to: w.conn,
                    bytes,
                    ends,
                },
            ));
        }
        if ends.is_some() {
            self.finish(key);
            if let Some(w) = self.workers.get_mut(&worker) {
                w.held.retain(|&mut k| k != key);
            }
        }
    }

    /// A client closed: it is detached from its foreground jobs, and one nobody waits for any
    /// more is abandoned (§3.10).
    pub(super) fn client_gone(&mut self, client: ConnId, jobs: Vec<u64>) {
        for number in jobs {
            let Some(key) = self.job_by_number(number) else {
                continue;
            };
            let job = &mut self.jobs[key];
            if let Some(c) = &mut job.cold {
                c.waiters.retain(|w| w.conn != client);
            }
            if job.waiters().is_empty() && !job.background {
                self.abandon(key);
            }
        }
    }

    /// `cancel job`: WORK_FAIL to every waiting client, and the job is abandoned (§3.13).
    pub(super) fn cancel(&mut self, client: ConnId, seq: Seq, number: u64, out: &mut Outbox) {
        let line: &[u8] = match self.job_by_number(number) {
            Some(key) => {
                let f = self.jobs[key].function as usize;
                self.functions[f].counters.cancelled += 1;
                let handle = handle(&self.config.handle_prefix, number);
                let waiters = self.jobs[key].take_waiters();
                for w in waiters.iter().rev() {
                    let mut bytes = Vec::new();
                    encode(&mut bytes, PacketType::WorkFail, &[&handle]);
                    forward(out, w.conn, bytes, Some(number));
                }
                self.abandon(key);
                b"OK\r\n"
            }
            None => b"ERR UNKNOWN_JOB\r\n",
        };
        reply(out, client, seq, line.to_vec(), None);
    }

    /// Frees a job that ended or was dropped, in any state: lists, counters, indexes, slab.
    pub(super) fn finish(&mut self, key: usize) {
        let (f, p, state) = {
            let job = &self.jobs[key];
            (job.function as usize, job.priority as usize, job.state)
        };
        let function = &mut self.functions[f];
        match state {
            State::Running { .. } => function.running -= 1,
            State::Queued(_) => function.queues[p].remove(&mut self.jobs, key),
            State::Future => function.future -= 1,
            State::Pending => function.pending -= 1,
        }
        let job = &self.jobs[key];
        if job.stored {
            let delete = Op::Delete {
                function: function.name.to_vec(),
                unique: store_unique(self.config.boot, job, &self.blobs),
            };
            self.store_ops.push(delete);
        }
        let coalescing = job.key(&self.blobs);
        if coalescing != Key::None {
            function.coalesce.remove(self.hashes.key(coalescing), key);
        }
        self.by_number.remove(job.number / self.shards as u64);
        let job = self.jobs.remove(key);
        self.blobs.remove(job.blob);
    }

    /// Nobody waits for the job any more: a queued one goes at once, a running one finishes
    /// unseen (§3.10, "Our decisions" 5 and 6).
    pub(super) fn abandon(&mut self, key: usize) {
        let job = &mut self.jobs[key];
        job.take_waiters();
        match job.state {
            State::Running { .. } => job.ignore = true,
            State::Queued(_) | State::Future | State::Pending => self.finish(key),
        }
    }

    /// A held job goes back to its queue's tail, or is dropped at the retry limit (§3.9).
    pub(super) fn requeue(&mut self, key: usize, out: &mut Outbox) {
        let job = &mut self.jobs[key];
        job.retries = job.retries.wrapping_add(1);
        let limit = self.config.job_retries;
        let counters = &mut self.functions[job.function as usize].counters;
        if job.ignore || (limit > 0 && job.retries >= limit) {
            counters.failed += 1;
            let handle = handle(&self.config.handle_prefix, job.number);
            let number = job.number;
            for w in job.take_waiters().iter().rev() {
                let mut bytes = Vec::new();
                encode(&mut bytes, PacketType::WorkFail, &[&handle]);
                forward(out, w.conn, bytes, Some(number));
            }
            return self.finish(key);
        }
        counters.requeued += 1;
        job.set_status(0, 0);
        job.state = State::queued();
        job.stamp = self.now_ms;
        let (f, p) = (job.function, job.priority as usize);
        let function = &mut self.functions[f as usize];
        function.running -= 1;
        function.queues[p].push_back(&mut self.jobs, key);
        self.wake(f, out);
    }
}
