//! Short jobs written to a worker behind one that turns out slow are given back to the
//! queue when another worker is idle, instead of waiting for the slow one: with real worker
//! processes, a job that blocks until the test opens its gate, and short jobs that each
//! leave a mark (created with `create_new`, so that a job run twice fails).

mod common;

use common::*;
use procpool::{Executor, ExecutorExt, JobHandle, ProcessPoolExecutor};
use std::time::{Duration, Instant};

/// How long a short job may take to be done once it could run elsewhere: far more than it
/// needs (a few milliseconds), far less than the slow job it waited behind (forever).
const GIVEN_BACK_WITHIN: Duration = Duration::from_secs(10);

/// Leaves the mark `path`, which must not exist yet: a job that ran twice fails.
fn mark((path, x): (String, u64)) -> u64 {
    std::fs::File::create_new(&path).expect("the job ran once");
    x
}

/// Blocks until `gate` opens: a function the pool has not timed (nothing is sent to wait
/// behind it).
fn block(gate: String) -> u32 {
    wait_for_gate(gate)
}

// Jobs are timed per function pointer, and an optimized build may give a small function a
// copy of its own in each codegen unit that takes its address: every job of these tests is
// submitted through the helpers below, so that the warm-up times the same copies.

#[inline(never)]
fn submit_mark(pool: &ProcessPoolExecutor, path: String, x: u64) -> JobHandle<u64> {
    pool.submit(mark, (path, x))
}

#[inline(never)]
fn submit_gated(pool: &ProcessPoolExecutor, gate: String) -> JobHandle<u32> {
    pool.submit(wait_for_gate, gate)
}

/// A pool of two workers that both have timed `mark` and `wait_for_gate` (on a gate that
/// is open) as short: such jobs are written to a worker to wait behind each other.
fn warm_pool(gate: &Gate) -> ProcessPoolExecutor {
    let pool = ProcessPoolExecutor::builder()
        .max_workers(2)
        .build()
        .unwrap();
    let open = Gate::new();
    open.open();
    let handles: Vec<_> = (0..200)
        .map(|x| {
            let path = gate.sibling(&format!("warm-{x}"));
            (
                submit_mark(&pool, path, x),
                submit_gated(&pool, open.path()),
            )
        })
        .collect();
    for (x, (marked, gated)) in (0..).zip(handles) {
        assert_eq!(marked.wait(), Ok(x));
        assert!(gated.wait().is_ok());
    }
    pool
}

/// Waits for each of `jobs` while `slow` runs on: none may wait for it.
fn all_done_before(jobs: Vec<JobHandle<u64>>, slow: &JobHandle<u32>) -> Duration {
    let start = Instant::now();
    for (x, handle) in (0..).zip(jobs) {
        match handle.wait_timeout(GIVEN_BACK_WITHIN) {
            Ok(result) => assert_eq!(result, Ok(x)),
            Err(_) => panic!("job {x} still waits behind the slow job"),
        }
    }
    assert!(
        !slow.is_finished(),
        "the slow job ended: nothing was proven"
    );
    start.elapsed()
}

fn count_marks(gate: &Gate, prefix: &str) -> usize {
    let dir = std::path::Path::new(&gate.path())
        .parent()
        .unwrap()
        .to_owned();
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            name.to_str().unwrap().starts_with(prefix)
        })
        .count()
}

#[test]
fn jobs_behind_a_slow_job_go_to_the_worker_that_becomes_idle() {
    bounded_sync("the test", || {
        let (first, second) = (Gate::new(), Gate::new());
        let pool = warm_pool(&second);
        // One worker runs a job of unknown length, which nothing joins...
        let busy = pool.submit(block, first.path());
        let deadline = Instant::now() + BOUND;
        while pool.stats().workers_busy != 1 {
            assert!(Instant::now() < deadline, "the first job never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        // ...so the other takes a job that looks short, and the short jobs behind it.
        let slow = submit_gated(&pool, second.path());
        let behind: Vec<_> = (0..20)
            .map(|x| submit_mark(&pool, second.sibling(&format!("behind-{x}")), x))
            .collect();
        while pool.stats().workers_busy != 2 {
            assert!(Instant::now() < deadline, "the slow job never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        // The first worker becomes idle: the jobs waiting behind the slow one go to it.
        first.open();
        assert!(busy.wait().is_ok());
        let took = all_done_before(behind, &slow);
        eprintln!("20 jobs done {took:?} after the other worker became idle");
        second.open();
        assert!(slow.wait().is_ok(), "the worker that skipped them goes on");
        assert_eq!(count_marks(&second, "behind-"), 20, "each ran once");
        let stats = pool.stats();
        assert_eq!(stats.respawns, 0, "{stats:?}");
        assert_eq!(stats.jobs_failed, 0, "{stats:?}");
        // Both workers serve on.
        let after: Vec<_> = (0..100)
            .map(|x| submit_mark(&pool, second.sibling(&format!("after-{x}")), x))
            .collect();
        for (x, handle) in (0..).zip(after) {
            assert_eq!(handle.wait(), Ok(x));
        }
    });
}

#[test]
fn short_jobs_submitted_with_a_slow_one_do_not_wait_for_it() {
    bounded_sync("the test", || {
        let gate = Gate::new();
        let pool = warm_pool(&gate);
        // The case: a short-looking job that turns out slow, 30 short ones behind
        // it, and a second worker idle from the start.
        let slow = submit_gated(&pool, gate.path());
        let behind: Vec<_> = (0..30)
            .map(|x| submit_mark(&pool, gate.sibling(&format!("behind-{x}")), x))
            .collect();
        let took = all_done_before(behind, &slow);
        eprintln!("30 jobs submitted behind a slow one done in {took:?}");
        gate.open();
        assert!(slow.wait().is_ok());
        assert_eq!(count_marks(&gate, "behind-"), 30, "each ran once");
        assert_eq!(pool.stats().respawns, 0);
    });
}
