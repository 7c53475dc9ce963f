//! `JobHandle::cancel_on_drop`: dropping the guard cancels its job (a queued one never
//! runs; a running one on the process pool has its worker killed), while a plain handle
//! or a detached guard lets the job run on.

mod common;

use common::{Gate, bounded, leave_mark, read_pid, report_pid_then_wait, wait_for_gate};
use procpool::{ExecutorExt, ProcessPoolExecutor};
use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_guard_of_a_running_job_kills_its_worker() {
    let pool = ProcessPoolExecutor::new(1).unwrap();
    let gate = Gate::new();
    let pid_file = gate.sibling("pid");
    let running = pool
        .submit(report_pid_then_wait, (pid_file.clone(), gate.path()))
        .cancel_on_drop();
    let pid = read_pid(&pid_file) as u32;
    assert!(!running.is_finished());
    drop(running);
    common::wait_until_gone(pid, "still runs the dropped job");
    // The pool replaced it: the next job runs in another worker. The gate never opened.
    let next = bounded("a job after", pool.submit(common::pid, ()))
        .await
        .unwrap();
    assert_ne!(next, pid);
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_guard_of_a_queued_job_never_runs_and_a_detached_one_does() {
    for (name, pool) in common::pools(1) {
        let gate = Gate::new();
        let running = pool.submit(wait_for_gate, gate.path());
        let (dropped, plain, detached) = (
            gate.sibling("dropped"),
            gate.sibling("plain"),
            gate.sibling("detached"),
        );
        drop(pool.submit(leave_mark, dropped.clone()).cancel_on_drop());
        drop(pool.submit(leave_mark, plain.clone()));
        drop(
            pool.submit(leave_mark, detached.clone())
                .cancel_on_drop()
                .detach(),
        );
        let last = pool.submit(common::double, 21).cancel_on_drop();
        gate.open();
        bounded("the gated job", running).await.unwrap();
        // FIFO: once the last job has ended, the three before it have too.
        assert_eq!(bounded("the last job", last).await.unwrap(), 42, "{name}");
        assert!(!Path::new(&dropped).exists(), "{name}: a cancelled job ran");
        assert!(
            Path::new(&plain).exists(),
            "{name}: a detached handle's job did not run"
        );
        assert!(
            Path::new(&detached).exists(),
            "{name}: detach() did not keep the job"
        );
        pool.shutdown().await;
    }
}
