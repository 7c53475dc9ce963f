//! A worker runs in a process group of its own: stopping it (a cancelled or timed-out job,
//! the pool dropped) stops the processes its job started with it, and a terminal's
//! Ctrl-C, sent to the application's group, does not reach it.
//!
//! Regression: a process a job started (`sleep`, a helper, a server) outlived the job's
//! cancellation, its timeout and the pool itself.

mod common;

use common::*;
use procpool::{ExecutorExt, JobOptions, ProcessPoolExecutor};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `sleep 600` (in the worker's process group, as a job's children are), writes its
/// pid to `pid_file`, then waits for `gate`.
#[expect(
    clippy::zombie_processes,
    reason = "the worker is killed with it; the sleeper's new parent reaps it"
)]
fn start_a_sleeper((pid_file, gate): (String, String)) -> u32 {
    // Not holding the test's output open if it outlives the test.
    let sleeper = Command::new("sleep")
        .arg("600")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(&pid_file, sleeper.id().to_string()).unwrap();
    assert!(wait_until_exists(&gate), "gate never opened");
    sleeper.id()
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
