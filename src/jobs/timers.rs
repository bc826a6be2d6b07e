//! Time: the clock (which tests can set), epoch jobs falling due (§3.11), and CAN_DO_TIMEOUT,
//! gearmand's one timer per worker connection (§3.9), armed by an assignment (in `dispatch`)
//! and firing here, and the retry deadlines of wakes in flight (`dispatch`).

use std::cmp::Reverse;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::*;

/// Where an owner reads the time: the system clocks, or a time a test sets, so that epoch
/// jobs, CAN_DO_TIMEOUT and wake retries are tested without sleeping. Read for epoch jobs,
/// timeouts and wake-ups of sleeping workers (one read per wake), never on the busy
/// submit/grab/complete path, where no worker sleeps.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Clock {
    /// A fixed (monotonic instant, time since the Unix epoch) instead of the system clocks.
    fixed: Option<(Instant, Duration)>,
}

impl Clock {
    pub(super) fn instant(&self) -> Instant {
        self.fixed.map_or_else(Instant::now, |(i, _)| i)
    }

    /// Time since the Unix epoch.
    fn unix(&self) -> Duration {
        self.fixed.map_or_else(
            || {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
            },
            |(_, u)| u,
        )
    }

    /// Whole seconds since the Unix epoch.
    pub(super) fn unix_secs(&self) -> i64 {
        self.unix().as_secs() as i64
    }
}

impl Owner {
    /// Makes the owner read `instant` and `unix` (time since the Unix epoch) as the time.
    #[cfg(test)]
    pub(super) fn set_clock(&mut self, instant: Instant, unix: Duration) {
        self.clock.fixed = Some((instant, unix));
    }

    /// When the next timer is due, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let epoch = self.epochs.peek().map(|Reverse((when, _))| {
            let due = Duration::from_secs((*when).max(0) as u64);
            self.clock.instant() + due.saturating_sub(self.clock.unix())
        });
        let timeout = self.timeouts.peek().map(|Reverse((at, _, _))| *at);
        let retry = self.wake_retries.front().map(|&(at, _, _)| at);
        [epoch, timeout, retry].into_iter().flatten().min()
    }

    /// Runs due timers: epoch jobs that fell due are queued and wake workers; held jobs past
    /// their CAN_DO_TIMEOUT are taken back and requeued; wakes not answered within
    /// `--wake-retry-ms` wake someone else.
    pub fn run_timers(&mut self, out: &mut Outbox) {
        let now = self.clock.unix_secs();
        while let Some(&Reverse((when, number))) = self.epochs.peek() {
            if when > now {
                break;
            }
            self.epochs.pop();
            let Some(key) = self.job_by_number(number) else {
                continue;
            };
            let job = &mut self.jobs[key];
            if job.state != State::Future {
                continue;
            }
            job.state = State::queued();
            job.stamp = self.now_ms;
            let (f, p) = (job.function, job.priority as usize);
            self.functions[f as usize].future -= 1;
            self.functions[f as usize].queues[p].push_back(&mut self.jobs, key);
            self.wake(f, out);
        }
        let instant = self.clock.instant();
        while let Some(&Reverse((at, number, assignment))) = self.timeouts.peek() {
            if at > instant {
                break;
            }
            self.timeouts.pop();
            let Some(key) = self.job_by_number(number) else {
                continue;
            };
            let Some(worker) = self.jobs[key].state.holder() else {
                continue;
            };
            let Some(w) = self.workers.get_mut(&worker) else {
                continue;
            };
            if w.timer != Some((number, assignment)) {
                // Re-armed by a later assignment, removed by PRE_SLEEP, or for an old run
                // (assignment numbers are never reused).
                continue;
            }
            w.timer = None;
            w.held.retain(|&mut k| k != key);
            out.push((worker.shard, ToHome::Revoked { to: worker, number }));
            self.requeue(key, out);
        }
        self.retry_wakes(instant, out);
    }

    /// Another owner assigned this worker a job: that re-armed (or removed) the connection's
    /// one timer, so the one guarding `number` here is gone.
    pub(super) fn drop_timer(&mut self, worker: ConnId, number: u64) {
        if let Some(w) = self.workers.get_mut(&worker)
            && w.timer.is_some_and(|(n, _)| n == number)
        {
            w.timer = None;
        }
    }
}
