//! A worker runs in a process group of its own: stopping it (a cancelled or timed-out job,
//! the pool dropped) stops the processes its job started with it, and so does its end by
//! itself (a crash, or an exit when it is retired); a terminal's Ctrl-C, sent to the
//! application's group, does not reach it.
//!
//! Regressions: a process a job started (`sleep`, a helper, a server) outlived the job's
//! cancellation, its timeout and the pool itself; then, it outlived a worker that crashed,
//! and a pool that was shut down before it was dropped (a worker that exits by itself was
//! reaped before its group was stopped).

mod common;

use common::*;
use procpool::{ExecutorExt, JobError, JobOptions, ProcessPoolExecutor};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `sleep 600` (in the worker's process group, as a job's children are), writes its
/// pid to `pid_file`, then waits for `gate`.
fn start_a_sleeper((pid_file, gate): (String, String)) -> u32 {
    let sleeper = spawn_a_sleeper(&pid_file);
    assert!(wait_until_exists(&gate), "gate never opened");
    sleeper
}

fn until_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + BOUND;
    while !is_gone(pid) {
        assert!(Instant::now() < deadline, "{what}: process {pid} lives on");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The process group of `pid`.
fn group_of(pid: u32) -> u32 {
    stat_fields(pid).unwrap()[2].parse().unwrap() // state, ppid, pgrp
}

fn pool() -> ProcessPoolExecutor {
    ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_workers_group_is_its_own_not_the_applications() {
    let pool = pool();
    let worker = bounded("pid", pool.submit(pid, ())).await.unwrap();
    assert_eq!(group_of(worker), worker, "the worker leads a group");
    assert_ne!(group_of(worker), group_of(std::process::id()));
}

#[tokio::test]
async fn cancelling_a_job_stops_the_processes_it_started() {
    let pool = pool();
    let gate = Gate::new();
    let pid_file = gate.sibling("sleeper");
    let job = pool.submit(start_a_sleeper, (pid_file.clone(), gate.path()));
    let sleeper = bounded_sync("the sleeper", move || read_pid(&pid_file)) as u32;
    assert!(!is_gone(sleeper));
    assert!(job.cancel());
    assert!(bounded("cancel", job).await.unwrap_err().is_cancelled());
    until_gone(sleeper, "after the job's cancellation");
}

#[tokio::test]
async fn a_timed_out_job_and_a_dropped_pool_stop_the_processes_started() {
    let pool = pool();
    let gate = Gate::new();
    let pid_file = gate.sibling("sleeper");
    let limit = JobOptions::new().timeout(Duration::from_millis(500));
    let job = pool.submit_with(start_a_sleeper, (pid_file.clone(), gate.path()), limit);
    let sleeper = bounded_sync("the sleeper", move || read_pid(&pid_file)) as u32;
    assert!(bounded("timeout", job).await.unwrap_err().is_timeout());
    until_gone(sleeper, "after the job's timeout");

    let pid_file = gate.sibling("second sleeper");
    let _running = pool.submit(start_a_sleeper, (pid_file.clone(), gate.path()));
    let sleeper = bounded_sync("the sleeper", move || read_pid(&pid_file)) as u32;
    drop(pool);
    until_gone(sleeper, "after the pool was dropped");
}

/// Starts `sleep 600` in the worker's group, not holding the test's output open should it
/// outlive the test, and writes its pid to `pid_file`; returns the pid. The sleeper runs
/// on after the job; whoever stops it, its new parent reaps it.
#[expect(
    clippy::zombie_processes,
    reason = "the worker is stopped with it; the sleeper's new parent reaps it"
)]
fn spawn_a_sleeper(pid_file: &str) -> u32 {
    let sleeper = Command::new("sleep")
        .arg("600")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    write_pid(pid_file, sleeper.id());
    sleeper.id()
}

/// Starts a sleeper ([`spawn_a_sleeper`]), then aborts the worker.
fn start_a_sleeper_then_abort(pid_file: String) -> u32 {
    spawn_a_sleeper(&pid_file);
    std::process::abort()
}

/// Starts a sleeper ([`spawn_a_sleeper`]) and returns its pid.
fn start_a_sleeper_and_return(pid_file: String) -> u32 {
    spawn_a_sleeper(&pid_file)
}

/// Writes `pid` to `pid_file` whole: a reader never sees it half-written.
fn write_pid(pid_file: &str, pid: u32) {
    let tmp = format!("{pid_file}.tmp");
    std::fs::write(&tmp, pid.to_string()).unwrap();
    std::fs::rename(&tmp, pid_file).unwrap();
}

/// SIGKILLs `pid` if it still runs (a sleeper a failed test left behind).
fn clean_up(pid: u32) {
    if !is_gone(pid) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

// Regression: the worker's group was stopped only when the pool killed the worker; one
// that crashed was reaped when its exit was seen, and its group never stopped, so the
// sleeper outlived the job, the worker and the dropped pool.
#[tokio::test]
async fn a_dead_workers_job_processes_are_stopped_at_the_latest_with_the_pool() {
    let pool = pool();
    let gate = Gate::new();
    let pid_file = gate.sibling("sleeper");
    let err = bounded(
        "abort",
        pool.submit(start_a_sleeper_then_abort, pid_file.clone()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, JobError::WorkerDied { .. }), "{err:?}");
    let sleeper = read_pid(&pid_file) as u32;
    assert_eq!(
        bounded("still serving", pool.submit(double, 2)).await,
        Ok(4)
    );
    drop(pool);
    let outcome = std::panic::catch_unwind(|| until_gone(sleeper, "after its worker died"));
    clean_up(sleeper);
    outcome.unwrap();
}

// Regression: `shutdown()` retires each worker (it exits by itself), which was reaped
// before its group was stopped; the pool dropped afterwards had no worker left to kill,
// and the sleeper lived on. Dropped without a shutdown, the pool killed it.
#[tokio::test]
async fn a_shut_down_and_dropped_pool_stops_the_processes_its_jobs_started() {
    for shut_down_first in [false, true] {
        let pool = pool();
        let gate = Gate::new();
        let pid_file = gate.sibling("sleeper");
        let sleeper = bounded("job", pool.submit(start_a_sleeper_and_return, pid_file))
            .await
            .unwrap();
        if shut_down_first {
            bounded("shutdown", pool.shutdown()).await;
        }
        drop(pool);
        let what = if shut_down_first {
            "after shutdown() and drop"
        } else {
            "after drop"
        };
        let outcome = std::panic::catch_unwind(|| until_gone(sleeper, what));
        clean_up(sleeper);
        outcome.unwrap();
    }
}
