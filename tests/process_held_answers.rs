//! A worker holds its answers back for a moment while its next job is already there, so
//! that one write carries many: proven here not to lose an answer when the next job kills
//! the worker, nor to keep one waiting while the next job runs long.

mod common;

use common::*;
use procpool::{ExecutorExt, JobError, ProcessPoolExecutor};
use std::time::Duration;

fn one_worker() -> ProcessPoolExecutor {
    ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .unwrap()
}

/// Doubles `x`; aborts its worker for `u64::MAX`.
fn double_or_abort(x: u64) -> u64 {
    if x == u64::MAX {
        std::process::abort();
    }
    x * 2
}

/// Returns `x` at once when `gate` is empty; otherwise waits for the gate first.
fn now_or_at_gate((x, gate): (u64, String)) -> u64 {
    if !gate.is_empty() {
        assert!(wait_until_exists(&gate), "gate never opened");
    }
    x
}

#[tokio::test]
async fn answers_held_back_when_the_next_job_aborts_the_worker_still_arrive() {
    let pool = one_worker();
    for round in 0..5 {
        // Timed as short, so that the pool streams the jobs to the worker a window ahead
        // and the abort arrives right behind the jobs before it.
        for x in 0..200 {
            assert_eq!(pool.submit(double_or_abort, x).await, Ok(x * 2));
        }
        let before: Vec<_> = (0..2_000)
            .map(|x| pool.submit(double_or_abort, x))
            .collect();
        let abort = pool.submit(double_or_abort, u64::MAX);
        let after: Vec<_> = (0..100).map(|x| pool.submit(double_or_abort, x)).collect();
        for (x, handle) in before.into_iter().enumerate() {
            let result = bounded("a job before the abort", handle).await;
            assert_eq!(
                result,
                Ok(x as u64 * 2),
                "round {round}: job {x} before the abort"
            );
        }
        match bounded("the abort", abort).await {
            Err(JobError::WorkerDied { exit, .. }) => {
                assert_eq!(exit.signal(), Some(libc::SIGABRT), "round {round}")
            }
            other => panic!("round {round}: the aborting job gave {other:?}"),
        }
        for (x, handle) in after.into_iter().enumerate() {
            let result = bounded("a job after the abort", handle).await;
            assert_eq!(
                result,
                Ok(x as u64 * 2),
                "round {round}: job {x} after the abort"
            );
        }
    }
}

#[tokio::test]
async fn an_answer_held_back_is_sent_while_the_next_job_runs() {
    let pool = one_worker();
    for _ in 0..200 {
        assert_eq!(pool.submit(now_or_at_gate, (1, String::new())).await, Ok(1));
    }
    for round in 0..5 {
        let gate = Gate::new();
        // Sent together: the second is there when the first ends, so the first's answer
        // is held back, and only the outbox's own thread can send it while the second
        // waits for the gate.
        let first = pool.submit(now_or_at_gate, (round, String::new()));
        let second = pool.submit(now_or_at_gate, (round + 100, gate.path()));
        let answer = tokio::time::timeout(Duration::from_secs(30), first).await;
        assert_eq!(
            answer.expect("the first answer waited for the second job"),
            Ok(round),
            "round {round}"
        );
        gate.open();
        assert_eq!(bounded("the gated job", second).await, Ok(round + 100));
    }
}
