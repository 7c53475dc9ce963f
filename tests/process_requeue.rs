//! A job put back in the pool's queue (its worker died: to run again, or waiting behind a
//! head that crashed) is queued again: `cancel()` removes it there, and it neither runs
//! nor stops the next worker.
//!
//! Regressions: such a job stayed claimed. `cancel()` returned `false` for the jobs that
//! had waited behind a lost head, which then ran; for a retried one it returned `true`
//! but the job did not end until a worker took it, and the stop request it left killed
//! that worker.

mod common;

use common::*;
use procpool::{ExecutorExt, JobError, ProcessPoolExecutor};
use std::time::Duration;

/// The directory the test and its workers share, named after the test process (a worker's
/// parent).
fn shared_dir(parent: u32, test: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("procpool-requeue-{parent}-{test}"))
}

/// Initializer: a worker started once `hold` exists records its pid and waits for
/// `release`, so that a respawned worker holds no job until the test says.
fn hold_respawned_worker() {
    hold_respawned_worker_in("retried");
}

fn hold_respawned_worker_in(test: &str) {
    let dir = shared_dir(std::os::unix::process::parent_id(), test);
    if dir.join("hold").exists() {
        std::fs::write(dir.join("held-pid"), std::process::id().to_string()).unwrap();
        assert!(wait_until_exists(dir.join("release").to_str().unwrap()));
    }
}

/// First attempt: marks itself, asks the next worker to hold, and aborts its worker.
/// A later attempt marks itself and returns its pid.
fn abort_first_time(dir: String) -> u32 {
    let dir = std::path::Path::new(&dir);
    if !dir.join("attempt-1").exists() {
        std::fs::write(dir.join("attempt-1"), b"ran").unwrap();
        std::fs::write(dir.join("hold"), b"hold").unwrap();
        std::process::abort();
    }
    std::fs::write(dir.join("attempt-2"), b"ran").unwrap();
    std::process::id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_retried_job_while_it_waits_in_the_queue_removes_it() {
    let dir = shared_dir(std::process::id(), "retried");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .initializer(hold_respawned_worker)
        .build()
        .unwrap();
    let mut job = pool.submit_with(
        abort_first_time,
        dir.to_str().unwrap().to_owned(),
        procpool::JobOptions::new().retries(1),
    );
    // The first attempt aborted its worker; the job went back to the queue, and the new
    // worker (held in its initializer) has not taken it: it is queued, nothing runs it.
    let held_pid_file = dir.join("held-pid");
    let held = read_pid(held_pid_file.to_str().unwrap()) as u32;
    assert!(dir.join("attempt-1").exists());
    assert!(!job.is_finished());
    let cancelled = job.cancel();
    let ended_at_once = tokio::time::timeout(Duration::from_secs(10), &mut job).await;
    std::fs::write(dir.join("release"), b"go").unwrap();
    let result = ended_at_once.ok();
    let result_after = match &result {
        Some(r) => r.clone(),
        None => bounded("the job, after the release", &mut job).await,
    };
    let next = bounded("a job after", pool.submit(common::pid, ())).await;
    let ran_again = dir.join("attempt-2").exists();
    pool.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "cancel() -> {cancelled}; ended within 10 s: {}; result {result_after:?}; ran again: {ran_again}; \
         held worker {held}, next job ran in {next:?}",
        result.is_some()
    );
    assert!(cancelled, "cancel() of a queued job returned false");
    assert!(
        result.is_some(),
        "cancel() returned true, but the queued job did not end until a worker took it \
         (it then ended with {result_after:?})"
    );
    assert_eq!(result_after, Err(JobError::Cancelled));
    assert!(!ran_again, "the cancelled job ran again");
    assert_eq!(
        next,
        Ok(held),
        "the idle worker was killed for a job cancelled while queued"
    );
}

// ---- jobs that waited behind a head whose worker died, back in the queue, cancelled ----

fn hold_respawned_worker_behind() {
    hold_respawned_worker_in("behind");
}

/// `(dir, x, what)`: 0 returns `x`; 1 asks the next worker to hold, waits for `dir/gate`,
/// and aborts its worker; 2 leaves the mark `dir/ran-x` and returns `x`.
fn short_or_abort((dir, x, what): (String, u64, u8)) -> u64 {
    let dir = std::path::Path::new(&dir);
    match what {
        1 => {
            std::fs::write(dir.join("hold"), b"hold").unwrap();
            assert!(wait_until_exists(dir.join("gate").to_str().unwrap()));
            std::process::abort();
        }
        2 => std::fs::write(dir.join(format!("ran-{x}")), b"ran").unwrap(),
        _ => {}
    }
    x
}

#[inline(never)]
fn submit_short(
    pool: &ProcessPoolExecutor,
    dir: &str,
    x: u64,
    what: u8,
) -> procpool::JobHandle<u64> {
    pool.submit(short_or_abort, (dir.to_owned(), x, what))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_job_put_back_in_the_queue_by_a_lost_worker_removes_it() {
    let dir_path = shared_dir(std::process::id(), "behind");
    let _ = std::fs::remove_dir_all(&dir_path);
    std::fs::create_dir_all(&dir_path).unwrap();
    let dir = dir_path.to_str().unwrap().to_owned();
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .initializer(hold_respawned_worker_behind)
        .build()
        .unwrap();
    // Timed as short on the one worker: its jobs are written to it behind each other.
    for x in 0..200 {
        assert_eq!(
            bounded("warm-up", submit_short(&pool, &dir, x, 0)).await,
            Ok(x)
        );
    }
    // Queued behind a job of a function the pool has not timed (nothing joins a worker
    // behind such a job), the head and `behind` are written to the worker together when
    // it ends.
    let first = dir_path.join("first").to_str().unwrap().to_owned();
    let untimed = pool.submit(wait_for_gate, first.clone());
    let head = submit_short(&pool, &dir, 1000, 1);
    let behind = submit_short(&pool, &dir, 1, 2);
    std::fs::write(&first, b"open").unwrap();
    assert!(bounded("the untimed job", untimed).await.is_ok());
    // The head aborts its worker; the jobs behind it never started and go back to the
    // queue; the new worker is held in its initializer, so they wait there.
    std::fs::write(dir_path.join("gate"), b"open").unwrap();
    let held = read_pid(dir_path.join("held-pid").to_str().unwrap()) as u32;
    let head_result = bounded("the head", head).await;
    assert!(
        matches!(head_result, Err(JobError::WorkerDied { .. })),
        "{head_result:?}"
    );
    assert!(!behind.is_finished());
    let cancelled = behind.cancel();
    std::fs::write(dir_path.join("release"), b"go").unwrap();
    let result = bounded("the job behind", behind).await;
    let ran = dir_path.join("ran-1").exists();
    pool.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir_path);
    eprintln!("worker {held} held; cancel() -> {cancelled}; result {result:?}; ran: {ran}");
    assert!(
        cancelled,
        "cancel() of a job waiting in the pool's queue returned false"
    );
    assert_eq!(result, Err(JobError::Cancelled));
    assert!(!ran, "a job cancelled while queued ran");
}
