//! A job written to a worker behind the one it runs, then cancelled (`cancel()`, a dropped
//! `CancelOnDrop`, a dropped `Map`), is taken back from the worker: it never runs, and
//! the worker is not killed. With real worker processes and one worker, so that no idle
//! worker takes the jobs instead: short jobs wait behind one that blocks on a gate, and
//! each leaves a mark when it runs.
//!
//! Whether a job is still in the queue or already written to the worker when it is
//! cancelled is the pool's business, and both must end the same way; each round checks
//! that, and the rounds go on until the pool's event says it took jobs back from the
//! worker (the case this file is for), so that a test of only the queue cannot pass.

mod common;

use common::events::{count, record_events};
use common::*;
use futures::StreamExt;
use procpool::{Executor, ExecutorExt, JobError, ProcessPoolExecutor};
use std::path::Path;
use std::time::{Duration, Instant};

/// What the pool reports when it takes jobs back to drop a cancelled one.
const TOOK_BACK: &str = "took back the jobs behind the head to drop a cancelled one";
/// Rounds tried before giving up on seeing jobs taken back from the worker.
const ROUNDS: usize = 20;
/// How long a round waits for the pool to say it took a dropped map's chunks back before
/// it counts as one where they were never written to the worker: far longer than the pool
/// takes (microseconds).
const INCONCLUSIVE_AFTER: Duration = Duration::from_secs(2);

/// Waits for `gate` (if any), then leaves the mark `path`, which must not exist yet: a
/// job that ran twice fails. One function for the blocking job and the short ones, so
/// that they can go to the worker in one write.
fn step((gate, path): (Option<String>, String)) -> u64 {
    if let Some(gate) = gate {
        wait_for_gate(gate);
    }
    std::fs::File::create_new(&path).expect("the job ran once");
    1
}

/// A pool of one worker that has timed `step`, as a job and as a map's chunk of one item,
/// as short: such jobs are written to the worker to wait behind each other.
fn warm_pool(gate: &Gate) -> ProcessPoolExecutor {
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .unwrap();
    let warm: Vec<_> = (0..100)
        .map(|x| pool.submit(step, (None, gate.sibling(&format!("warm-{x}")))))
        .collect();
    for handle in warm {
        assert_eq!(handle.wait(), Ok(1));
    }
    let items = (0..100).map(|x| (None, gate.sibling(&format!("warm-map-{x}"))));
    let mapped = pool.map(step, items).chunk_size(1).try_collect_vec();
    assert_eq!(
        futures::executor::block_on(mapped).map(|v| v.len()),
        Ok(100)
    );
    pool
}

/// Waits (polling, bounded) until the pool's one worker runs a job.
fn until_busy(pool: &ProcessPoolExecutor) {
    let deadline = Instant::now() + BOUND;
    while pool.stats().workers_busy != 1 {
        assert!(Instant::now() < deadline, "the blocking job never started");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `round` until the pool has taken jobs back from its worker during one. A round
/// queues its jobs behind one of a function the pool has not timed (nothing joins a
/// worker behind such a job: they wait in the queue), then calls `open` to let that one
/// end, after which the pool writes them to the worker together; then it cancels them.
/// No mark named `behind-*` may be left, and no worker killed.
fn until_taken_back(what: &str, round: impl Fn(&ProcessPoolExecutor, &Gate, &dyn Fn())) {
    for attempt in 1..=ROUNDS {
        eprintln!("{what}: round {attempt}");
        let before = count(TOOK_BACK);
        let gate = Gate::new();
        let pool = warm_pool(&gate);
        let first = Gate::new();
        let untimed = pool.submit(wait_for_gate, first.path());
        until_busy(&pool);
        let open = || first.open();
        round(&pool, &gate, &open);
        assert!(untimed.wait().is_ok(), "{what}");
        // FIFO on one worker: once a later job has ended, every job before it has.
        let last = pool.submit(step, (None, gate.sibling("last")));
        assert_eq!(last.wait(), Ok(1), "{what}");
        for x in 0..8 {
            let mark = gate.sibling(&format!("behind-{x}"));
            assert!(!Path::new(&mark).exists(), "{what}: cancelled job {x} ran");
        }
        let stats = pool.stats();
        assert_eq!(stats.respawns, 0, "{what}: a worker was killed: {stats:?}");
        drop(pool);
        if count(TOOK_BACK) > before {
            eprintln!("{what}: jobs taken back from the worker in round {attempt}");
            return;
        }
    }
    panic!("{what}: in {ROUNDS} rounds the cancelled jobs never waited in the worker");
}

/// Opens the first gate, then waits until the blocking job that was queued behind it runs:
/// the jobs queued with it were written to the worker in the same write, as far as the
/// window had room.
fn release(pool: &ProcessPoolExecutor, open: &dyn Fn()) {
    let deadline = Instant::now() + BOUND;
    let done = pool.stats().jobs_completed;
    open();
    while pool.stats().jobs_completed == done || pool.stats().workers_busy != 1 {
        assert!(Instant::now() < deadline, "the blocking job never started");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// During a graceful shutdown (the queue closed and drained), the jobs taken back with a
/// cancelled one go back to the queue and must still run before the workers leave.
fn jobs_taken_back_during_a_shutdown_still_run() {
    let gate = Gate::new();
    let pool = warm_pool(&gate);
    let first = Gate::new();
    let untimed = pool.submit(wait_for_gate, first.path());
    until_busy(&pool);
    let slow = pool.submit(step, (Some(gate.path()), gate.sibling("slow")));
    let cancelled = pool.submit(step, (None, gate.sibling("behind-0")));
    let kept = pool.submit(step, (None, gate.sibling("kept")));
    release(&pool, &|| first.open());
    assert!(untimed.wait().is_ok());
    std::thread::scope(|scope| {
        let shutdown = scope.spawn(|| futures::executor::block_on(pool.shutdown()));
        // Time for the worker's loop to find the queue closed and empty; the outcome
        // checked below must be the same if it has not.
        std::thread::sleep(Duration::from_millis(20));
        assert!(cancelled.cancel());
        let deadline = Instant::now() + BOUND;
        while !cancelled.is_finished() {
            assert!(Instant::now() < deadline, "the cancelled job never ended");
            std::thread::sleep(Duration::from_millis(1));
        }
        gate.open();
        shutdown.join().unwrap();
    });
    assert_eq!(slow.wait(), Ok(1));
    assert_eq!(cancelled.wait(), Err(JobError::Cancelled));
    assert_eq!(
        kept.wait(),
        Ok(1),
        "a job taken back during the shutdown ran"
    );
    assert!(!Path::new(&gate.sibling("behind-0")).exists());
}

#[test]
fn cancelled_jobs_waiting_in_a_worker_are_taken_back_and_never_run() {
    record_events();
    bounded_sync("the test", || {
        // `cancel()` and a dropped `CancelOnDrop`: both end with `Cancelled`; the jobs
        // between them, not cancelled, go back to the queue and run once.
        until_taken_back("cancel", |pool, gate, open| {
            let slow = pool.submit(step, (Some(gate.path()), gate.sibling("slow")));
            let mut cancelled = Vec::new();
            let mut guards = Vec::new();
            let mut kept = Vec::new();
            for x in 0..8 {
                let arg = (None, gate.sibling(&format!("behind-{x}")));
                match x % 3 {
                    0 => cancelled.push(pool.submit(step, arg)),
                    1 => guards.push(pool.submit(step, arg).cancel_on_drop()),
                    _ => kept.push(pool.submit(step, (None, gate.sibling(&format!("kept-{x}"))))),
                }
            }
            release(pool, open);
            drop(guards);
            for handle in &cancelled {
                assert!(handle.cancel(), "a job not started is cancelled");
            }
            // The pool acts on a `cancel()` on its own thread: once these have ended, it
            // has dealt with every request before them (the guards' too, asked first).
            // Until it has, the worker could get to them first, when the gate opens.
            let deadline = Instant::now() + BOUND;
            while !cancelled.iter().all(|handle| handle.is_finished()) {
                assert!(Instant::now() < deadline, "cancelled jobs never ended");
                std::thread::sleep(Duration::from_millis(1));
            }
            gate.open();
            assert_eq!(slow.wait(), Ok(1));
            for handle in cancelled {
                assert_eq!(handle.wait(), Err(JobError::Cancelled));
            }
            for handle in kept {
                assert_eq!(handle.wait(), Ok(1), "a job taken back with them runs");
            }
        });
        // A dropped `Map`: its chunk that runs finishes, those behind it never run.
        until_taken_back("map", |pool, gate, open| {
            let items = std::iter::once((Some(gate.path()), gate.sibling("slow")))
                .chain((0..8).map(|x| (None, gate.sibling(&format!("behind-{x}")))));
            let mut map = pool.map(step, items).chunk_size(1).max_in_flight(9);
            // One poll submits every chunk: none has ended.
            let polled = futures::executor::block_on(async { futures::poll!(map.next()) });
            assert!(polled.is_pending());
            release(pool, open);
            let before = count(TOOK_BACK);
            drop(map);
            // Nothing says when the pool has dealt with a dropped map's chunks: wait a
            // while for it to report taking them back. If it does not, they were still
            // queued (and ended at the drop), and the round proves nothing: another runs.
            let deadline = Instant::now() + INCONCLUSIVE_AFTER;
            while count(TOOK_BACK) == before && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            gate.open();
            assert!(
                wait_until_exists(&gate.sibling("slow")),
                "the running chunk ends"
            );
        });
        jobs_taken_back_during_a_shutdown_still_run();
    });
}
