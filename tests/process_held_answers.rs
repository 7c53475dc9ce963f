//! A worker holds its answers back for a moment while its next job is already there, so
//! that one write carries many: proven here not to lose an answer when the next job kills
//! the worker, nor to keep one waiting while the next job runs long.

mod common;

use common::*;
use procpool::{ExecutorExt, ProcessPoolExecutor};
use std::time::Duration;

fn one_worker() -> ProcessPoolExecutor {
    ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .unwrap()
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
        jobs_around_an_abort(&pool, round).await;
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
