//! Submissions: a new job, or one coalesced onto an existing job with the same key (§3.3);
//! maxqueue's refusal (§3.12); a new job put on its queue (waking workers) or, not yet due,
//! on the epoch timer.

use std::cmp::Reverse;

use super::durable::{AwaitKind, Awaiting, store_unique};
use super::*;
use crate::store::StoredJob;

impl Owner {
    pub(super) fn submit(&mut self, s: Submit, out: &mut Outbox) {
        let client = s.client;
        let f = self.function_id(&s.function);
        let function = &mut self.functions[f as usize];
        let wanted = key_of(s.job.unique(), s.job.data());
        let hash = self.hashes.key(wanted);
        let (jobs, blobs) = (&self.jobs, &self.blobs);
        let existing = match wanted {
            Key::None => None,
            _ => function
                .coalesce
                .find(hash, |k| jobs[k].key(blobs) == wanted),
        };
        let coalescable = wanted != Key::None;
        // A store key is generated where the unique cannot tell jobs apart (PROTOCOL.md
        // "Our decisions" 3: one job never overwrites another in a store).
        let generated_key = !matches!(wanted, Key::Unique(_));
        if let Some(key) = existing {
            function.counters.coalesced += 1;
            // Coalesce: the new submission's data and priority are dropped (§3.3).
            let job = &mut self.jobs[key];
            let number = job.number;
            let in_flight = job.state == State::Pending
                || (!self.converting.is_empty() && self.converting.contains(&number));
            if s.background && in_flight {
                // Answered with the job's own submission, once the batch holding its add is
                // durable (that add may have left in an earlier batch than this turn's).
                return self
                    .coalesced
                    .entry(number)
                    .or_default()
                    .push((client, s.seq));
            }
            if s.background && !job.background {
                // This submitter is told the job exists, so it must not be dropped when its
                // foreground clients go away: it becomes a background job (gearmand drops it).
                // With a store it is stored first, and acknowledged once durable.
                job.background = true;
                if self.config.durable {
                    job.stored = true;
                    job.generated_key = generated_key;
                    let job = &self.jobs[key];
                    self.store_ops.push(Op::Add(StoredJob {
                        function: s.function.into_vec(),
                        unique: store_unique(self.config.boot, job, &self.blobs),
                        priority: job.priority,
                        data: job.data(&self.blobs).to_vec(),
                        when: 0,
                    }));
                    self.converting.insert(number);
                    return self.awaiting.push_back(Awaiting {
                        batch: self.batch + 1,
                        number,
                        client,
                        seq: s.seq,
                        when: 0,
                        kind: AwaitKind::Converting,
                    });
                }
            }
            let mut attach = None;
            if !s.background {
                job.waiters_mut().push(Waiter {
                    conn: client,
                    exceptions: s.exceptions,
                });
                job.ignore = false;
                attach = Some(number);
            }
            return reply(out, client, s.seq, self.job_created(number), attach);
        }
        let p = s.priority as usize;
        if function.maxqueue[p] > 0 && function.total() >= function.maxqueue[p] {
            let mut bytes = Vec::new();
            protocol::encode_error(&mut bytes, "QUEUE_ERROR", "Job queue is full");
            self.errors.add("QUEUE_ERROR");
            return reply(out, client, s.seq, bytes, None);
        }
        function.counters.submitted += 1;
        let (bytes, unique_len, reducer_len) = s.job.into_parts();
        let (number, sequence) = self.next_number();
        let stored = s.background && self.config.durable;
        let waiter = (!s.background).then_some(Waiter {
            conn: client,
            exceptions: s.exceptions,
        });
        let key = self.jobs.insert(Job {
            number,
            blob: self.blobs.insert(bytes),
            cold: Job::new_cold(waiter),
            function: f,
            state: State::Pending,
            unique_len,
            reducer_len,
            priority: s.priority,
            background: s.background,
            retries: 0,
            ignore: false,
            stored,
            generated_key: stored && generated_key,
            stamp: self.now_ms,
            submitted: self.now_ms,
        });
        self.by_number.insert(sequence, key);
        if coalescable {
            self.functions[f as usize].coalesce.insert(hash, key);
        }
        if stored {
            // Group commit: the add leaves with this loop turn's batch, and JOB_CREATED
            // once the store says the batch is durable (`durable`).
            let job = &self.jobs[key];
            let add = StoredJob {
                function: s.function.into_vec(),
                unique: store_unique(self.config.boot, job, &self.blobs),
                priority: s.priority,
                data: job.data(&self.blobs).to_vec(),
                when: s.when,
            };
            self.store_ops.push(Op::Add(add));
            self.functions[f as usize].pending += 1;
            self.awaiting.push_back(Awaiting {
                batch: self.batch + 1,
                number,
                client,
                seq: s.seq,
                when: s.when,
                kind: AwaitKind::Pending,
            });
            return;
        }
        reply(
            out,
            client,
            s.seq,
            self.job_created(number),
            (!s.background).then_some(number),
        );
        self.admit(key, s.when, out);
    }

    pub(super) fn job_created(&self, number: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode(
            &mut bytes,
            PacketType::JobCreated,
            &[&handle(&self.config.handle_prefix, number)],
        );
        bytes
    }

    /// Puts a new (or newly durable) job where it belongs: on its queue, waking workers, or on
    /// the epoch timer if not yet due.
    pub(super) fn admit(&mut self, key: usize, when: i64, out: &mut Outbox) {
        let job = &mut self.jobs[key];
        let (f, p, number) = (job.function, job.priority as usize, job.number);
        if when > 0 && when > self.clock.unix_secs() {
            job.state = State::Future;
            self.functions[f as usize].future += 1;
            self.epochs.push(Reverse((when, number)));
        } else {
            job.state = State::queued();
            self.functions[f as usize].queues[p].push_back(&mut self.jobs, key);
            self.wake(f, out);
        }
    }
}
