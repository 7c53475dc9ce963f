//! Jobs taken back from a worker with a cancelled one, and written to it again behind its
//! slow head, are still given to a worker that becomes idle, as jobs waiting behind a slow
//! one are (`tests/process_give_back.rs`): they must not wait for the slow one to end.

mod common;

use common::events::{count, record_events};
use common::*;
use procpool::{Executor, ExecutorExt, JobError, ProcessPoolExecutor};
use std::time::{Duration, Instant};

/// What the pool reports when it takes jobs back to drop a cancelled one.
const TOOK_BACK: &str = "took back the jobs behind the head to drop a cancelled one";
/// Rounds tried before giving up on seeing jobs taken back from the worker.
const ROUNDS: usize = 20;

/// Waits for `gate` (if any; saying so first in the mark `path-started`), then leaves the
/// mark `path` (if any), which must not exist yet. Without them, it takes microseconds:
/// so the pool times it, and writes such jobs to a worker behind each other.
fn step((gate, path): (Option<String>, String)) -> u64 {
    if let Some(gate) = gate {
        std::fs::write(format!("{path}-started"), b"").unwrap();
        wait_for_gate(gate);
    }
    if !path.is_empty() {
        std::fs::File::create_new(&path).expect("the job ran once");
    }
    1
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn jobs_taken_back_behind_a_slow_one_go_to_a_worker_that_becomes_idle() {
    record_events();
    bounded_sync("the test", || {
        for round in 1..=ROUNDS {
            let before = count(TOOK_BACK);
            let gate = Gate::new();
            let pool = ProcessPoolExecutor::builder()
                .max_workers(2)
                .build()
                .unwrap();
            // Both workers time `step` as short (most likely: rounds where the one that
            // takes the slow job has not are inconclusive).
            let warm: Vec<_> = (0..200)
                .map(|_| pool.submit(step, (None, String::new())))
                .collect();
            for handle in warm {
                assert_eq!(handle.wait(), Ok(1));
            }
            until("both workers up", || pool.stats().workers_alive == 2);
            // One worker busy until the end of the round's cancel, the other until the
            // four are written to it together.
            let (other_gate, first) = (Gate::new(), Gate::new());
            let other = pool.submit(wait_for_gate, other_gate.path());
            until("the other job never started", || {
                pool.stats().workers_busy == 1
            });
            let untimed = pool.submit(wait_for_gate, first.path());
            until("the untimed job never started", || {
                pool.stats().workers_busy == 2
            });
            let slow = pool.submit(step, (Some(gate.path()), gate.sibling("slow")));
            let kept_a = pool.submit(step, (None, gate.sibling("kept-a")));
            let cancelled = pool.submit(step, (None, gate.sibling("cancelled")));
            let kept_b = pool.submit(step, (None, gate.sibling("kept-b")));
            first.open();
            assert!(untimed.wait().is_ok());
            // Started by its worker: the jobs behind it are taken back without it.
            assert!(wait_until_exists(&gate.sibling("slow-started")));
            assert!(cancelled.cancel());
            until("the cancelled job never ended", || cancelled.is_finished());
            assert_eq!(cancelled.wait(), Err(JobError::Cancelled));
            let took_back = count(TOOK_BACK) > before;
            // The other worker becomes idle: the jobs kept go to it, while the slow one runs.
            other_gate.open();
            assert!(other.wait().is_ok());
            let a = kept_a.wait_timeout(Duration::from_secs(10));
            let b = kept_b.wait_timeout(Duration::from_secs(10));
            let slow_done = slow.is_finished();
            gate.open();
            assert_eq!(slow.wait(), Ok(1));
            eprintln!("round {round}: taken back: {took_back}; kept: {a:?} {b:?}");
            if took_back {
                assert!(!slow_done);
                assert_eq!(
                    (a.ok(), b.ok()),
                    (Some(Ok(1)), Some(Ok(1))),
                    "round {round}: the jobs kept waited behind the slow one while a worker \
                     idled"
                );
                return;
            }
        }
        panic!("in {ROUNDS} rounds the cancelled job never waited in the worker");
    });
}
