//! The process pool reports worker start, death, respawn, timeout and kill as `tracing`
//! events. Its own test binary: it installs a global subscriber that records them.

mod common;

use common::events::{record_events, seen};
use common::*;
use procpool::{ExecutorExt, JobOptions, ProcessPoolExecutor};
use std::time::Duration;

#[tokio::test]
async fn lifecycle_events_are_reported() {
    record_events();
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .unwrap();
    bounded("start", pool.submit(double, 1)).await.unwrap();
    assert!(seen("worker started"));

    // Death and respawn.
    let gate = Gate::new();
    let pid_file = gate.sibling("pid");
    let victim = pool.submit(report_pid_then_wait, (pid_file.clone(), gate.path()));
    let pid = bounded_sync("victim", move || read_pid(&pid_file));
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(
        bounded("victim", victim)
            .await
            .unwrap_err()
            .is_worker_died()
    );
    bounded("respawned", pool.submit(double, 2)).await.unwrap();
    assert!(seen("worker died while running a job"));
    assert!(seen("starting a replacement worker"));

    // Timeout, and cancellation (a kill).
    let options = JobOptions::new().timeout(Duration::from_millis(50));
    let timed = pool.submit_with(wait_for_gate, Gate::new().path(), options);
    assert!(bounded("timeout", timed).await.unwrap_err().is_timeout());
    assert!(seen("job timed out; killed its worker"));
    let gate = Gate::new();
    let pid_file = gate.sibling("pid");
    let running = pool.submit(report_pid_then_wait, (pid_file.clone(), gate.path()));
    bounded_sync("start", move || read_pid(&pid_file));
    assert!(running.cancel());
    assert!(bounded("cancel", running).await.unwrap_err().is_cancelled());
    assert!(seen("killed a worker to cancel its running job"));

    // A live worker for the shutdown to retire: a shutdown that lands before the killed
    // worker's replacement starts has none (and starts none).
    bounded("replacement", pool.submit(double, 3))
        .await
        .unwrap();
    bounded("shutdown", pool.shutdown()).await;
    assert!(seen("worker exited"));
}
