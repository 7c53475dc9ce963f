//! A worker that does not finish its initializers in time (one that hangs, or one stopped
//! from outside while it starts) is killed and replaced, and a graceful shutdown never
//! waits for a worker still starting once nothing is left to run.
//!
//! Regression: a worker frozen (SIGSTOP) while its initializer ran kept its slot starting
//! for good: the wait for its `Ready` raced only against the pool being killed. No job
//! ever ran, health said `Serving`, and `shutdown()` never returned.
//!
//! Initializers take no argument: each finds its marks by the name of its test and the
//! pid of the pool's process (its parent).

mod common;

use common::*;
use procpool::{Executor, ExecutorExt, JobError, ProcessPoolExecutor, ShutdownOptions};
use std::process::Command;
use std::time::{Duration, Instant};

/// The path of mark `name` of test `test`, for the test's process and its workers alike.
fn mark(test: &str, name: &str, pool_pid: u32) -> String {
    std::env::temp_dir()
        .join(format!("procpool_init_{test}_{name}_{pool_pid}"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// In a worker: the mark of `name` of `test`, whose pool is this worker's parent.
fn my_mark(test: &str, name: &str) -> String {
    mark(test, name, std::os::unix::process::parent_id())
}

/// In a worker: writes its pid to `pid_file` whole, so that a reader never sees it cut.
fn report_pid(pid_file: &str) {
    let tmp = format!("{pid_file}.tmp");
    std::fs::write(&tmp, std::process::id().to_string()).unwrap();
    std::fs::rename(&tmp, pid_file).unwrap();
}

/// Sends `signal` (`-STOP`, `-CONT`) to `pid`.
fn signal(signal: &str, pid: u32) {
    let sent = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal} {pid}");
}

/// Removes the marks `names` of `test` (they are in the shared temporary directory).
fn remove_marks(test: &str, names: &[&str]) {
    for name in names {
        let _ = std::fs::remove_file(mark(test, name, std::process::id()));
    }
}

/// Reports the worker's pid, then waits for the test's gate.
fn report_then_wait_for_the_gate() {
    report_pid(&my_mark("frozen", "pid"));
    assert!(wait_until_exists(&my_mark("frozen", "gate")));
}

#[tokio::test]
async fn a_worker_frozen_in_its_initializer_is_killed_and_replaced() {
    remove_marks("frozen", &["pid", "gate"]);
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .initializer(report_then_wait_for_the_gate)
        .initializer_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let worker = read_pid(&mark("frozen", "pid", std::process::id())) as u32;
    signal("-STOP", worker);
    // Later workers pass their initializer at once.
    std::fs::write(mark("frozen", "gate", std::process::id()), b"open").unwrap();
    let job = bounded("a job", pool.submit(double, 21)).await;
    let stopped = bounded(
        "shutdown",
        pool.shutdown_with(ShutdownOptions::new().cancel_queued(true)),
    )
    .await;
    let gone = is_gone(worker);
    if !gone {
        signal("-CONT", worker); // so that it can die
    }
    remove_marks("frozen", &["pid", "gate"]);
    assert_eq!(job, Ok(42), "the job ran on a replacement worker");
    assert!(stopped, "shutdown finished within its own time");
    assert!(gone, "the frozen worker {worker} was killed");
    assert!(pool.stats().respawns >= 1);
}

/// Reports the worker's pid, then waits for a gate that never opens (in time for the test:
/// `wait_until_exists` gives up after twice the test bound).
fn report_then_hang() {
    report_pid(&my_mark("stuck", "pid"));
    assert!(wait_until_exists(&my_mark("stuck", "never")));
}

/// A shutdown, given `within`, must end well before the initializer timeout (the default
/// of 60 s, which the pools below keep).
const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_shutdown_with_nothing_to_run_stops_a_worker_stuck_in_its_initializer() {
    // Nothing queued; then a job queued and cancelled by the shutdown.
    for with_a_job in [false, true] {
        remove_marks("stuck", &["pid"]);
        let pool = ProcessPoolExecutor::builder()
            .max_workers(1)
            .initializer(report_then_hang)
            .build()
            .unwrap();
        let worker = read_pid(&mark("stuck", "pid", std::process::id())) as u32;
        let job = with_a_job.then(|| pool.submit(double, 21));
        let started = Instant::now();
        let options = ShutdownOptions::new().cancel_queued(with_a_job);
        assert!(bounded("shutdown", pool.shutdown_with(options)).await);
        let took = started.elapsed();
        assert!(
            took < WITHIN,
            "shutdown (a job queued: {with_a_job}) waited {took:?} for a worker that was \
             still starting"
        );
        wait_until_gone(worker, "stuck in its initializer outlived the shutdown");
        if let Some(job) = job {
            assert_eq!(bounded("the job", job).await, Err(JobError::Cancelled));
        }
    }
    remove_marks("stuck", &["pid"]);
}

/// The first worker to start hangs in it; the others wait for the test's gate.
fn first_hangs_the_others_wait() {
    let first = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(my_mark("drained", "claimed"))
        .is_ok();
    if first {
        report_pid(&my_mark("drained", "pid"));
        assert!(wait_until_exists(&my_mark("drained", "never")));
    } else {
        assert!(wait_until_exists(&my_mark("drained", "gate")));
    }
}

#[tokio::test]
async fn a_shutdown_stops_a_worker_stuck_in_its_initializer_once_the_others_drained_the_queue() {
    let names = ["claimed", "pid", "gate"];
    remove_marks("drained", &names);
    let pool = ProcessPoolExecutor::builder()
        .max_workers(2)
        .initializer(first_hangs_the_others_wait)
        .build()
        .unwrap();
    let stuck = read_pid(&mark("drained", "pid", std::process::id())) as u32;
    // Queued while no worker is ready: the shutdown begins with a job left to run.
    let job = pool.submit(double, 21);
    // One shutdown, begun before the job runs: after the job, nothing else looks at the
    // queue but the worker that drained it.
    let shutdown = tokio::spawn({
        let pool = pool.clone();
        async move { pool.shutdown().await }
    });
    bounded("the shutdown to begin", async {
        while pool.health() != procpool::Health::ShutDown {
            tokio::task::yield_now().await;
        }
    })
    .await;
    std::fs::write(mark("drained", "gate", std::process::id()), b"open").unwrap();
    assert_eq!(bounded("the job", job).await, Ok(42));
    let job_done = Instant::now();
    bounded("shutdown", shutdown).await.unwrap();
    let took = job_done.elapsed();
    remove_marks("drained", &names);
    assert!(
        took < WITHIN,
        "shutdown waited {took:?} after the last job for a worker that was still starting"
    );
    wait_until_gone(stuck, "stuck in its initializer outlived the shutdown");
}

#[test]
fn a_zero_initializer_timeout_is_refused() {
    let built = ProcessPoolExecutor::builder()
        .initializer_timeout(Duration::ZERO)
        .build();
    assert!(
        matches!(&built, Err(procpool::Error::Config(text)) if text.contains("initializer_timeout")),
        "{:?}",
        built.err()
    );
}
