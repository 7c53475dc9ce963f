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

#[derive(Default)]
struct State {
    /// Deadlines, soonest first. Jobs that end first stay here until their deadline, when
    /// ending them again is a no-op (`JobState::complete` only succeeds once).
    deadlines: BinaryHeap<Reverse<Deadline>>,
    stopped: bool,
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
        state.deadlines.push(Reverse(deadline));
        drop(state);
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
                    let timed_out = due.job.upgrade().is_some_and(|job| {
                        counters.finish(&job, Err(JobError::TimedOut(due.timeout)))
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
