//! A thread pool's threads outlive whatever its jobs do short of aborting: a panic whose
//! payload panics again when dropped, a result no one awaits whose `Drop` panics, an
//! initializer that panics so, a time limit past the clock's range, and a shutdown
//! called from one of its own jobs.
//!
//! Regressions (found by a helper's review): each of these killed a pool thread or hung
//! the job, its pool, or the shutdown.

mod common;

use common::*;
use procpool::{Executor, ExecutorExt, JobError, ThreadPoolExecutor};
use std::sync::mpsc;
use std::time::Duration;

/// A panic payload (or a value) whose destructor panics.
struct DropBomb;

impl Drop for DropBomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("DropBomb went off");
        }
    }
}

fn panic_with_a_bomb(_: ()) -> u32 {
    std::panic::panic_any(DropBomb)
}

/// The doc: "A job that panics ends with JobError::Panicked ... and the thread keeps
/// serving." A payload whose Drop panics is dropped outside `catch_unwind`.
#[tokio::test]
async fn a_panic_payload_whose_drop_panics_still_ends_the_job_and_keeps_the_thread() {
    let pool = ThreadPoolExecutor::new(1).unwrap();
    let err = bounded("the panicking job", pool.submit(panic_with_a_bomb, ()))
        .await
        .unwrap_err();
    assert!(err.is_panic(), "{err:?}");
    assert_eq!(bounded("the next job", pool.submit(double, 4)).await, Ok(8));
}

/// Same, through `spawn`.
#[tokio::test]
async fn a_spawned_closure_panicking_with_a_bomb_payload_ends_its_job() {
    let pool = ThreadPoolExecutor::new(1).unwrap();
    let err = bounded(
        "the panicking closure",
        pool.spawn(|| -> u8 { std::panic::panic_any(DropBomb) }),
    )
    .await
    .unwrap_err();
    assert!(err.is_panic(), "{err:?}");
}

/// A detached handle's result is dropped on the pool thread, outside any catch_unwind:
/// a result whose Drop panics kills the pool thread, and the pool stops serving (and
/// its shutdown never ends).
#[tokio::test]
async fn a_detached_result_whose_drop_panics_does_not_kill_the_pool_thread() {
    let pool = ThreadPoolExecutor::new(1).unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let handle = pool.spawn(move || {
        go_rx.recv().unwrap();
        DropBomb
    });
    drop(handle); // detached: "it keeps running and its result is discarded"
    go_tx.send(()).unwrap();
    assert_eq!(
        bounded("a job after the detached one", pool.submit(double, 4)).await,
        Ok(8)
    );
    assert!(
        bounded("shutdown", pool.shutdown_timeout(BOUND)).await,
        "every thread exits"
    );
}

/// A job that shuts its own pool down (Python raises "cannot join current thread"):
/// here it waits for its own thread to exit, forever.
#[tokio::test]
async fn shutdown_from_inside_a_job_of_the_same_pool_does_not_hang() {
    let pool = ThreadPoolExecutor::new(2).unwrap();
    let inner = pool.clone();
    let handle = pool.spawn(move || futures::executor::block_on(inner.shutdown()));
    assert_eq!(bounded("the job that shuts down", handle).await, Ok(()));
    assert!(pool.is_shutdown());
}

/// max_workers jobs each waiting for a job of the same pool: no thread is left to run
/// the jobs they wait for.
/// The initializer's payload has the same problem: a thread that dies there was counted
/// alive, so a shutdown waits for it forever.
fn init_with_a_bomb() {
    std::panic::panic_any(DropBomb)
}

#[tokio::test]
async fn an_initializer_panicking_with_a_bomb_breaks_the_pool_and_shutdown_ends() {
    let pool = ThreadPoolExecutor::builder()
        .max_workers(1)
        .initializer(init_with_a_bomb)
        .build()
        .unwrap();
    let err = bounded("a job on the broken pool", pool.submit(double, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::PoolBroken { .. }), "{err:?}");
    assert!(bounded("shutdown", pool.shutdown_timeout(BOUND)).await);
}

/// "No limit, really": `Duration::MAX` as a job's time limit. The timer computes
/// `Instant::now() + timeout` on the pool thread, outside any catch_unwind.
#[tokio::test]
async fn a_job_with_a_huge_time_limit_runs() {
    let pool = ThreadPoolExecutor::new(1).unwrap();
    let options = procpool::JobOptions::new().timeout(Duration::MAX);
    assert_eq!(
        bounded(
            "a job with timeout(Duration::MAX)",
            pool.submit_with(double, 4, options)
        )
        .await,
        Ok(8)
    );
    assert_eq!(
        bounded("the next job", pool.submit(double, 5)).await,
        Ok(10)
    );
}

#[tokio::test]
async fn a_pool_with_a_huge_job_timeout_runs_jobs() {
    let pool = ThreadPoolExecutor::builder()
        .max_workers(1)
        .job_timeout(Duration::from_secs(u64::MAX))
        .build()
        .unwrap();
    assert_eq!(bounded("a job", pool.submit(double, 4)).await, Ok(8));
}
