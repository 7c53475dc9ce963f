//! Deadlines for running thread-pool jobs: one lazily started thread that ends a job with
//! `JobError::TimedOut` when its time is up (the job's thread runs on; its late result is
//! discarded because the job has already ended).

use crate::error::JobError;
use crate::handle::JobState;
use crate::stats::Counters;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

pub(crate) struct Timer {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    /// Deadlines, soonest first. A job that ends first stays here until its deadline (when
    /// ending it again is a no-op: `JobState::complete` only succeeds once) or until
    /// [`push`](State::push) drops it, whichever comes first.
    deadlines: BinaryHeap<Reverse<Deadline>>,
    /// The length at which [`push`](State::push) next drops the deadlines of jobs that
    /// ended.
    compact_at: usize,
    stopped: bool,
}

/// The fewest deadlines the timer holds before it drops those of jobs that ended.
///
/// A thread runs one job at a time, so at most `max_workers` deadlines belong to running
/// jobs; the others' jobs ended before their time (all of them, but a few, under a
/// pool-wide safety-net limit such as an hour). Each of those kept its job's cell
/// allocated through the `Weak` until the deadline passed: 500,000 short jobs under
/// `job_timeout(1h)` grew the process by 80 MiB.
const COMPACT_AT_LEAST: usize = 64;

impl Default for State {
    fn default() -> Self {
        State {
            deadlines: BinaryHeap::new(),
            compact_at: COMPACT_AT_LEAST,
            stopped: false,
        }
    }
}

impl State {
    /// Adds `deadline`, first dropping the deadlines of jobs that ended if the heap has
    /// grown to [`compact_at`](State::compact_at): twice its length after the last time
    /// (and at least [`COMPACT_AT_LEAST`]), so that at least half of what it scans goes,
    /// and a push costs O(1) amortized (plus the heap's O(log n)).
    ///
    /// Returns the ended jobs it had to upgrade to look at, for the caller to drop once it
    /// has let the lock go (a last reference drops the job's result, the user's value).
    #[must_use]
    fn push(&mut self, deadline: Deadline) -> Vec<Arc<JobState>> {
        let mut ended = Vec::new();
        if self.deadlines.len() >= self.compact_at {
            self.deadlines.retain(|Reverse(d)| match d.job.upgrade() {
                None => false,
                Some(job) if job.is_done() => {
                    ended.push(job);
                    false
                }
                Some(_) => true,
            });
            self.compact_at = COMPACT_AT_LEAST.max(2 * self.deadlines.len());
        }
        self.deadlines.push(Reverse(deadline));
        ended
    }
}

struct Deadline {
    at: Instant,
    timeout: Duration,
    job: Weak<JobState>,
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Deadline {}
impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

impl Timer {
    /// Starts the timer thread, which counts timed-out jobs as failures in `counters`.
    pub(crate) fn start(counters: Arc<Counters>) -> std::io::Result<Timer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("procpool-timer".into())
            .spawn(move || thread_shared.run(&counters))?;
        Ok(Timer { shared })
    }

    /// Ends `job` with `TimedOut(timeout)` if it is still running `timeout` from now.
    pub(crate) fn schedule(&self, job: &Arc<JobState>, timeout: Duration) {
        // A limit past the clock's range (`Duration::MAX`) is no limit.
        let Some(at) = Instant::now().checked_add(timeout) else {
            return;
        };
        let deadline = Deadline {
            at,
            timeout,
            job: Arc::downgrade(job),
        };
        let mut state = self.shared.lock();
        let soonest = state
            .deadlines
            .peek()
            .is_none_or(|Reverse(d)| deadline.at < d.at);
        let ended = state.push(deadline);
        drop(state);
        drop(ended);
        if soonest {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self, counters: &Counters) {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return;
            }
            let now = Instant::now();
            match state.deadlines.peek() {
                None => {
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                Some(Reverse(next)) if next.at > now => {
                    let wait = next.at - now;
                    state = self
                        .wake
                        .wait_timeout(state, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                Some(_) => {
                    let Some(Reverse(due)) = state.deadlines.pop() else {
                        continue;
                    };
                    drop(state);
                    // Caught: the job it upgrades may have ended meanwhile, its handle
                    // dropped, and a result whose `Drop` panics is then dropped here.
                    let timed_out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        due.job.upgrade().is_some_and(|job| {
                            counters.finish(&job, Err(JobError::TimedOut(due.timeout)))
                        })
                    }))
                    .unwrap_or_else(|payload| {
                        crate::error::drop_payload(payload);
                        false
                    });
                    if timed_out {
                        tracing::warn!(timeout = ?due.timeout, "thread-pool job timed out; its thread runs on");
                    }
                    state = self.lock();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Arc<JobState> {
        let job = JobState::new();
        assert!(job.try_start());
        job
    }

    fn deadline_of(job: &Arc<JobState>) -> Deadline {
        let timeout = Duration::from_secs(3600);
        Deadline {
            at: Instant::now() + timeout,
            timeout,
            job: Arc::downgrade(job),
        }
    }

    /// A pool-wide limit of an hour over many short jobs: the deadlines of jobs that
    /// ended (their handles dropped, or still held) do not stay until their hour is up,
    /// and those of running jobs stay.
    #[test]
    fn deadlines_of_ended_jobs_do_not_pile_up() {
        let mut state = State::default();
        let long: Vec<_> = (0..8).map(|_| running()).collect();
        for job in &long {
            drop(state.push(deadline_of(job)));
        }
        let mut held = Vec::new();
        for i in 0..100_000 {
            let job = running();
            drop(state.push(deadline_of(&job)));
            assert!(job.complete(Ok(Box::new(()))));
            if i % 2 == 0 {
                held.push(job); // ended, its handle kept
            }
            assert!(
                state.deadlines.len() <= COMPACT_AT_LEAST,
                "{} deadlines held after {i} jobs",
                state.deadlines.len()
            );
        }
        for job in &long {
            let weak = Arc::downgrade(job);
            assert!(
                state.deadlines.iter().any(|Reverse(d)| d.job.ptr_eq(&weak)),
                "a running job's deadline was dropped"
            );
        }
    }
}
