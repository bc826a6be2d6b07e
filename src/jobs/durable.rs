//! The durable store's side of the owner: the store changes of each loop turn as numbered
//! batches, the submissions waiting for their batch (answered with JOB_CREATED once it is
//! durable, refused with QUEUE_ERROR if it failed), and the jobs replayed at start-up.

use super::*;
use crate::store::StoredJob;

/// A submission acknowledged once the store batch holding its job is durable.
#[derive(Clone, Copy, Debug)]
pub(super) struct Awaiting {
    pub(super) batch: u64,
    pub(super) number: u64,
    pub(super) client: ConnId,
    pub(super) seq: Seq,
    pub(super) when: i64,
    /// What the acknowledgement completes: a new job waiting (`Pending`) to be queued, or a
    /// foreground job a background submission made background (`Converting`), which runs
    /// meanwhile.
    pub(super) kind: AwaitKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AwaitKind {
    Pending,
    Converting,
}

/// The unique a job is stored under: its own, or one generated from this process's boot
/// stamp and the handle number for an empty or `-` unique.
pub(super) fn store_unique(boot: u64, job: &Job, blobs: &Blobs) -> Vec<u8> {
    if job.generated_key {
        format!("gs-{boot:x}-{}", job.number).into_bytes()
    } else {
        job.unique(blobs).to_vec()
    }
}

impl Owner {
    /// Store changes made since the last call, as the next batch (numbered from 1).
    pub fn take_store_ops(&mut self) -> Option<(u64, Vec<Op>)> {
        if self.store_ops.is_empty() {
            return None;
        }
        self.batch += 1;
        Some((self.batch, std::mem::take(&mut self.store_ops)))
    }

    /// The store made every batch up to `upto` durable (or failed them): acknowledge their
    /// jobs, or refuse them with QUEUE_ERROR and drop them.
    pub fn durable(&mut self, upto: u64, result: Result<(), &str>, out: &mut Outbox) {
        while let Some(a) = self.awaiting.front().copied() {
            if a.batch > upto {
                break;
            }
            self.awaiting.pop_front();
            if a.kind == AwaitKind::Converting {
                self.converting.remove(&a.number);
                let key = self.job_by_number(a.number);
                let bytes = match (result, key) {
                    (Ok(()), _) => self.job_created(a.number),
                    (Err(why), key) => {
                        if let Some(key) = key {
                            // Not stored: the job is foreground again, as before the submission.
                            log::error!("queue store failed, refusing job {}: {why}", a.number);
                            let job = &mut self.jobs[key];
                            job.stored = false;
                            job.background = false;
                            if job.waiters().is_empty() {
                                self.abandon(key);
                            }
                        }
                        let mut bytes = Vec::new();
                        protocol::encode_error(&mut bytes, "QUEUE_ERROR", "QUEUE_ERROR");
                        self.errors.add("QUEUE_ERROR");
                        bytes
                    }
                };
                self.answer_awaiting(a, bytes, out);
                continue;
            }
            let key = self
                .job_by_number(a.number)
                .filter(|&k| self.jobs[k].state == State::Pending);
            let bytes = match result {
                Ok(()) => {
                    if let Some(key) = key {
                        self.functions[self.jobs[key].function as usize].pending -= 1;
                        self.admit(key, a.when, out);
                    }
                    self.job_created(a.number)
                }
                Err(why) => {
                    if let Some(key) = key {
                        log::error!("queue store failed, refusing job {}: {why}", a.number);
                        let job = &mut self.jobs[key];
                        job.stored = false;
                        let handle = handle(&self.config.handle_prefix, a.number);
                        for w in job.take_waiters().iter().rev() {
                            let mut bytes = Vec::new();
                            encode(&mut bytes, PacketType::WorkFail, &[&handle]);
                            forward(out, w.conn, bytes, Some(a.number));
                        }
                        self.finish(key);
                    }
                    let mut bytes = Vec::new();
                    protocol::encode_error(&mut bytes, "QUEUE_ERROR", "QUEUE_ERROR");
                    self.errors.add("QUEUE_ERROR");
                    bytes
                }
            };
            self.answer_awaiting(a, bytes, out);
        }
    }

    /// Answers an acknowledged (or refused) submission and those that coalesced onto it.
    fn answer_awaiting(&mut self, a: Awaiting, bytes: Vec<u8>, out: &mut Outbox) {
        let others = match self.coalesced.is_empty() {
            true => None,
            false => self.coalesced.remove(&a.number),
        };
        for (client, seq) in others.into_iter().flatten() {
            reply(out, client, seq, bytes.clone(), None);
        }
        reply(out, a.client, a.seq, bytes, None);
    }

    /// Takes back a job read from the store at start-up (before any connection): queued as a
    /// background job with the next handle number, as gearmand replays.
    pub fn restore(&mut self, job: StoredJob, out: &mut Outbox) {
        let f = self.function_id(&job.function);
        let unique = &job.unique[..job.unique.len().min(MAX_UNIQUE)];
        let wanted = key_of(unique, &job.data);
        let hash = self.hashes.key(wanted);
        let (jobs, blobs) = (&self.jobs, &self.blobs);
        if wanted != Key::None
            && self.functions[f as usize]
                .coalesce
                .find(hash, |k| jobs[k].key(blobs) == wanted)
                .is_some()
        {
            return; // rows with the same (function, unique) coalesce, as in gearmand
        }
        let (number, sequence) = self.next_number();
        let key = self.jobs.insert(Job {
            number,
            blob: self.blobs.insert([unique, &job.data[..]].concat().into()),
            cold: None,
            function: f,
            state: State::Pending,
            unique_len: unique.len() as u8,
            reducer_len: 0,
            priority: job.priority,
            background: true,
            retries: 0,
            ignore: false,
            stored: true,
            generated_key: false,
            stamp: self.now_ms,
            submitted: self.now_ms,
        });
        self.by_number.insert(sequence, key);
        if wanted != Key::None {
            self.functions[f as usize].coalesce.insert(hash, key);
        }
        self.admit(key, job.when, out);
    }
}
