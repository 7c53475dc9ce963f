//! Large arguments and results lent across (see [`crate::wire::message::Lent`]): counted
//! per pool, so that a test sees they really were lent, and with lending off, so that
//! the socket path is seen to give the same answers. Workers that die, are cancelled or
//! retire while something is lent leave the pool whole.

use super::{BOUND, bounded};
use crate::{Executor, ExecutorExt, JobError, ProcessPoolExecutor};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Above the size from which arguments and results are lent.
const SIZE: usize = 3 << 20;

fn reversed(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.reverse();
    bytes
}

fn abort_with(bytes: Vec<u8>) -> usize {
    if bytes[0] == 0xab {
        std::process::abort();
    }
    bytes.len()
}

fn sleep_with(bytes: Vec<u8>) -> usize {
    std::thread::sleep(BOUND);
    bytes.len()
}

fn payload(seed: u8) -> Vec<u8> {
    (0..SIZE).map(|i| (i % 251) as u8 ^ seed).collect()
}

fn pool(lend: bool, workers: usize) -> (ProcessPoolExecutor, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let pool = ProcessPoolExecutor::builder()
        .max_workers(workers)
        .lending(lend, count.clone())
        .build()
        .unwrap();
    (pool, count)
}

#[test]
fn large_arguments_and_results_are_lent_or_written_with_the_same_answers() {
    bounded(|| {
        for lend in [true, false] {
            let (pool, count) = pool(lend, 1);
            for seed in 0..3 {
                let input = payload(seed);
                let mut expected = input.clone();
                expected.reverse();
                assert!(pool.submit(reversed, input).wait().unwrap() == expected);
            }
            // A small one is never lent.
            assert_eq!(
                pool.submit(reversed, vec![1, 2, 3]).wait(),
                Ok(vec![3, 2, 1])
            );
            // Each large job: its argument lent, its result read.
            let lent = if lend { 6 } else { 0 };
            assert_eq!(count.load(Ordering::SeqCst), lent, "lend: {lend}");
            assert!(futures::executor::block_on(pool.shutdown_timeout(BOUND)));
        }
    });
}

#[test]
fn a_worker_that_dies_with_a_lent_argument_is_replaced_and_the_next_job_runs() {
    bounded(|| {
        let (pool, count) = pool(true, 1);
        let mut doomed = payload(0);
        doomed[0] = 0xab;
        let err = pool.submit(abort_with, doomed).wait().unwrap_err();
        assert!(matches!(err, JobError::WorkerDied { .. }), "{err:?}");
        let input = payload(1);
        assert_eq!(pool.submit(abort_with, input).wait(), Ok(SIZE));
        assert_eq!(count.load(Ordering::SeqCst), 2, "both arguments were lent");
        assert_eq!(pool.stats().respawns, 1);
    });
}

#[test]
fn a_running_job_with_a_lent_argument_can_be_cancelled_or_time_out() {
    bounded(|| {
        let (pool, _) = pool(true, 1);
        let running = pool.submit(sleep_with, payload(2));
        let deadline = std::time::Instant::now() + BOUND;
        while pool.stats().workers_busy == 0 {
            assert!(std::time::Instant::now() < deadline, "never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(running.cancel());
        assert_eq!(running.wait(), Err(JobError::Cancelled));
        let options = crate::JobOptions::new().timeout(Duration::from_millis(200));
        let timed = pool.submit_with(sleep_with, payload(3), options).wait();
        assert!(matches!(timed, Err(JobError::TimedOut { .. })), "{timed:?}");
        let mut expected = payload(4);
        expected.reverse();
        assert!(pool.submit(reversed, payload(4)).wait().unwrap() == expected);
    });
}

#[test]
fn a_worker_retiring_after_each_job_waits_for_its_lent_result_to_be_read() {
    bounded(|| {
        let count = Arc::new(AtomicU64::new(0));
        let pool = ProcessPoolExecutor::builder()
            .max_workers(1)
            .max_tasks_per_child(1)
            .lending(true, count.clone())
            .build()
            .unwrap();
        for seed in 0..3 {
            let mut expected = payload(seed);
            expected.reverse();
            assert!(pool.submit(reversed, payload(seed)).wait().unwrap() == expected);
        }
        assert_eq!(count.load(Ordering::SeqCst), 6);
        assert!(futures::executor::block_on(pool.shutdown_timeout(BOUND)));
    });
}
