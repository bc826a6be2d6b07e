//! Answers about the owner's state: GET_STATUS, and its part of the admin listings (`status`,
//! `show jobs`, `show unique jobs`) and commands (`drop function`, GET_STATUS_UNIQUE,
//! `create function`, `maxqueue`) gathered from every shard.

use super::*;

impl Owner {
    /// GET_STATUS: known, running, numerator and denominator of a job (§3.7).
    pub(super) fn get_status(
        &mut self,
        client: ConnId,
        seq: Seq,
        number: u64,
        handle: &[u8],
        out: &mut Outbox,
    ) {
        let mut bytes = Vec::new();
        match self.job_by_number(number).map(|k| &self.jobs[k]) {
            Some(job) => {
                let running = matches!(job.state, State::Running { .. });
                let (numerator, denominator) = job.status();
                let (mut a, mut b) = ([0; 20], [0; 20]);
                encode(
                    &mut bytes,
                    PacketType::StatusRes,
                    &[
                        handle,
                        b"1",
                        if running { b"1" } else { b"0" },
                        protocol::num(numerator as u64, &mut a),
                        protocol::num(denominator as u64, &mut b),
                    ],
                );
            }
            None => unknown_status(&mut bytes, handle),
        }
        reply(out, client, seq, bytes, None);
    }

    /// `create function`, and `maxqueue` with its limits (§3.12).
    pub(super) fn set_function(
        &mut self,
        client: ConnId,
        seq: Seq,
        function: &[u8],
        maxqueue: Option<[u32; 3]>,
        out: &mut Outbox,
    ) {
        let f = self.function_id(function);
        if let Some(limits) = maxqueue {
            self.functions[f as usize].maxqueue = limits;
        }
        reply(out, client, seq, b"OK\r\n".to_vec(), None);
    }

    /// This owner's part of a listing or admin command gathered from every shard.
    pub(super) fn ask(&mut self, client: ConnId, gather: u32, query: Query, out: &mut Outbox) {
        let part = self.answer(query);
        out.push((
            client.shard,
            ToHome::Answer {
                to: client,
                gather,
                part,
            },
        ));
    }

    fn answer(&mut self, query: Query) -> Part {
        match query {
            Query::Functions => Part::Functions(
                self.functions
                    .iter()
                    .map(|(_, f)| FunctionRow {
                        name: f.name.clone(),
                        created: f.created,
                        total: f.total(),
                        running: f.running,
                        queued: [
                            f.queues[0].len(),
                            f.queues[1].len() + f.future,
                            f.queues[2].len(),
                        ],
                        workers: f.workers.len() as u32,
                    })
                    .collect(),
            ),
            Query::Jobs | Query::Uniques => Part::Jobs(
                self.jobs
                    .iter()
                    .map(|(_, j)| JobRow {
                        number: j.number,
                        retries: j.retries,
                        ignore: j.ignore,
                        background: j.background,
                        unique: j.unique(&self.blobs).into(),
                        unique_key: match j.key(&self.blobs) {
                            Key::None => 0,
                            Key::Unique(u) => hash::jenkins(u),
                            Key::Data(d) => hash::jenkins(d),
                        },
                    })
                    .collect(),
            ),
            Query::DropFunction(name) => {
                let found = self
                    .functions
                    .iter()
                    .find(|(_, f)| f.name.eq_ignore_ascii_case(&name))
                    .map(|(id, _)| id);
                Part::Dropped(found.map(|id| {
                    let f = &self.functions[id];
                    if !f.workers.is_empty() || f.running > 0 {
                        "ERR there are still connected workers or executing clients\r\n"
                    } else if f.total() > 0 {
                        "ERR there are still queued jobs\r\n"
                    } else {
                        let f = self.functions.remove(id);
                        self.by_name.remove(&f.name);
                        "OK\r\n"
                    }
                }))
            }
            Query::StatusUnique(unique) => Part::StatusUnique({
                let wanted = Key::Unique(&unique);
                let hash = self.hashes.key(wanted);
                let (jobs, blobs) = (&self.jobs, &self.blobs);
                self.functions
                    .iter()
                    .find_map(|(_, f)| f.coalesce.find(hash, |k| jobs[k].key(blobs) == wanted))
                    .map(|k| {
                        let j = &self.jobs[k];
                        let (numerator, denominator) = j.status();
                        (
                            matches!(j.state, State::Running { .. }),
                            numerator,
                            denominator,
                            j.waiters().len() as u32,
                        )
                    })
            }),
            Query::Barrier => Part::Barrier,
            Query::Metrics { max_functions } => {
                Part::OwnerMetrics(Box::new(self.metrics(max_functions as usize)))
            }
        }
    }

    /// This owner's part of a scrape: its functions (at most `max` of them by name, the rest
    /// summed), histograms and error counts.
    fn metrics(&self, max: usize) -> crate::metrics::OwnerSnapshot {
        let now = self.now_ms;
        let stats = |f: &Function, name: Box<[u8]>| {
            // The heads of the FIFO lists are the oldest queued jobs.
            let oldest = f
                .queues
                .iter()
                .filter_map(|q| q.head())
                .map(|k| now.wrapping_sub(self.jobs[k].stamp))
                .max()
                .unwrap_or(0);
            crate::metrics::FunctionStats {
                name,
                created: f.created,
                queued: [
                    f.queues[0].len() as u64,
                    (f.queues[1].len() + f.future) as u64,
                    f.queues[2].len() as u64,
                ],
                running: f.running as u64,
                workers: f.workers.len() as u64,
                oldest_ms: oldest as u64,
                counters: f.counters,
            }
        };
        // The `max` oldest (as `metrics::cap` orders them) are picked before anything is
        // copied: with many functions, the rest are summed without copying their names or
        // sorting them, so a scrape costs an owner little more than a walk over its functions.
        let mut ids: Vec<(u64, &[u8], usize)> = self
            .functions
            .iter()
            .map(|(id, f)| (f.created, &f.name[..], id))
            .collect();
        let rest = match ids.len() > max {
            true => {
                ids.select_nth_unstable(max);
                ids.split_off(max)
            }
            false => Vec::new(),
        };
        let mut snapshot = crate::metrics::OwnerSnapshot {
            queue_wait: self.queue_wait.clone(),
            run_time: self.run_time.clone(),
            round_trip: self.round_trip.clone(),
            jobs: self.jobs.len() as u64,
            store_backlog: self.awaiting.len() as u64,
            errors: self.errors.clone(),
            other_count: rest.len() as u64,
            ..Default::default()
        };
        for (_, _, id) in rest {
            snapshot
                .other
                .add(&stats(&self.functions[id], Box::default()));
        }
        let functions = ids
            .into_iter()
            .map(|(_, _, id)| {
                let f = &self.functions[id];
                stats(f, f.name.clone())
            })
            .collect();
        crate::metrics::cap(functions, max, &mut snapshot);
        snapshot
    }
}
