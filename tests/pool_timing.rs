//! `PoolStats::queue_wait` and `PoolStats::run_time` through the public API: jobs that
//! sleep a known time give lower bounds the summaries must reach (sleeping never takes
//! less), never upper bounds on a shared machine.

mod common;

use procpool::{Executor, ExecutorExt, ProcessPoolExecutor, ThreadPoolExecutor};
use std::time::Duration;

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn the_process_pool_times_every_job() {
    common::bounded_sync("timed jobs on processes", || {
        let pool = ProcessPoolExecutor::builder()
            .max_workers(1)
            .build()
            .unwrap();
        let handles: Vec<_> = (0..3).map(|_| pool.submit(nap, 30)).collect();
        for handle in handles {
            assert_eq!(handle.wait().unwrap(), 30);
        }
        let stats = pool.stats();
        assert_eq!(stats.run_time.count, 3);
        assert_eq!(stats.queue_wait.count, 3);
        assert!(stats.run_time.p50 >= Duration::from_millis(30), "{stats:?}");
        assert!(stats.run_time.max >= stats.run_time.p99);
        // One worker: the third job waited for the two before it.
        assert!(
            stats.queue_wait.max >= Duration::from_millis(60),
            "{stats:?}"
        );
        assert!(
            stats.queue_wait.mean >= Duration::from_millis(30),
            "{stats:?}"
        );
    });
}

#[test]
fn the_thread_pool_times_one_job_in_sixteen() {
    common::bounded_sync("timed jobs on threads", || {
        // A thread of its own (bounded_sync's): its first job is timed, then every 16th.
        let pool = ThreadPoolExecutor::new(1).unwrap();
        // The worker is held until every job is queued, so that job 16 waits behind all
        // the jobs before it however the submitting thread is scheduled.
        let gate = common::Gate::new();
        let held = pool.submit(common::wait_for_gate, gate.path());
        let handles: Vec<_> = (1..32).map(|i| pool.submit(nap, i % 2)).collect();
        gate.open();
        held.wait().unwrap();
        for handle in handles {
            handle.wait().unwrap();
        }
        let stats = pool.stats();
        assert_eq!(stats.run_time.count, 2, "{stats:?}");
        assert_eq!(stats.queue_wait.count, 2, "{stats:?}");
        assert_eq!(stats.jobs_completed, 32);
        // Job 16 (0 ms) waited behind the jobs before it, eight of which slept 1 ms.
        assert!(
            stats.queue_wait.max >= Duration::from_millis(8),
            "{stats:?}"
        );
    });
}
