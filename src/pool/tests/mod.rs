//! The supervision core's own tests.
//!
//! - Through the local backend, with real worker processes: broken frames (see
//!   `worker::fault`) drop the connection, fail the job with a protocol error and replace
//!   the worker; jobs waiting in a worker behind the one it runs go back to the queue
//!   untouched when the worker is lost, a cancelled one is discarded, and a large one never
//!   waits there. These read the pool's internals to see jobs waiting.
//! - Through a backend of threads ([`threads`]), which cannot stop a running job: the core
//!   degrades its promises as the boundary says.

use super::Pool;
use super::backend::{Backend, Caps, Received, StartError, WorkerLink};
use super::core::Config;
use crate::exit::{ExitInfo, WorkerId};
use crate::handle::JobHandle;
use crate::job::ErasedJob;
use crate::options::JobOptions;
use crate::wire::frame::{Codec, Frame, put_frame};
use crate::wire::message::{FromWorker, HANDSHAKE_MAX_FRAME, ToWorker};
use crate::worker::{self, fault};
use crate::{Executor, ExecutorExt, JobError, ProcessPoolExecutor};
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(60);

/// Runs `f` on its own thread and fails if it takes longer than [`BOUND`].
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(BOUND).expect("did not finish in time")
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn double(x: u64) -> u64 {
    x * 2
}

// ---------------------------------------------------------------- broken frames

fn reply_with(mode: u8) -> u32 {
    fault::NEXT_REPLY.store(mode, Ordering::SeqCst);
    std::process::id()
}

fn broken_reply_fails_the_job_and_the_worker_is_replaced(mode: u8, expect: &str) {
    let expect = expect.to_owned();
    bounded(move || {
        let pool = ProcessPoolExecutor::builder()
            .max_workers(1)
            .build()
            .unwrap();
        let first = pool.submit(pid, ()).wait().unwrap();
        let err = pool.submit(reply_with, mode).wait().unwrap_err();
        match &err {
            JobError::Protocol { reason, .. } => assert!(reason.contains(&expect), "{reason}"),
            other => panic!("expected a protocol error, got {other:?}"),
        }
        assert!(err.is_protocol());
        let replacement = pool.submit(pid, ()).wait().unwrap();
        assert_ne!(
            first, replacement,
            "the worker that sent garbage was replaced"
        );
    });
}

#[test]
fn a_worker_that_never_handshakes_hits_the_deadline() {
    bounded(|| {
        let pool = ProcessPoolExecutor::builder()
            .max_workers(1)
            .handshake_timeout(Duration::from_millis(100))
            .stall_handshake()
            .build()
            .unwrap();
        let err = pool.submit(pid, ()).wait().unwrap_err();
        assert!(err.is_pool_broken(), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("did not complete its handshake within 100ms"),
            "{text}"
        );
        assert!(
            text.contains("5 times with none started in between"),
            "{text}"
        );
        // The hint about procpool::init() is for workers that reached `main` only.
        assert!(!text.contains("procpool::init()"), "{text}");
    });
}

#[test]
fn a_corrupt_frame_fails_only_its_job() {
    broken_reply_fails_the_job_and_the_worker_is_replaced(fault::CORRUPT, "corrupt frame");
}

#[test]
fn a_frame_whose_message_overruns_its_frame_fails_only_its_job() {
    broken_reply_fails_the_job_and_the_worker_is_replaced(
        fault::MESSAGE_OVERRUN,
        "a message of 9 bytes in a frame of 4",
    );
}

#[test]
fn a_frame_cut_short_by_the_workers_exit_is_a_worker_death() {
    bounded(|| {
        let pool = ProcessPoolExecutor::builder()
            .max_workers(1)
            .build()
            .unwrap();
        let err = pool
            .submit(reply_with, fault::TRUNCATED)
            .wait()
            .unwrap_err();
        match err {
            JobError::WorkerDied { exit, .. } => {
                assert_eq!(exit.code(), Some(0));
                assert!(exit.worker().and_then(|w| w.pid()).is_some(), "{exit:?}");
            }
            other => panic!("expected WorkerDied, got {other:?}"),
        }
        assert_eq!(pool.submit(pid, ()).wait().map(|_| ()), Ok(()));
    });
}

#[test]
fn an_oversized_frame_is_refused_without_allocating() {
    broken_reply_fails_the_job_and_the_worker_is_replaced(
        fault::OVERSIZED,
        "exceeds the maximum frame size",
    );
}

// ---------------------------------------------------------------- jobs behind the head

/// Waits until `path` exists (for at most [`BOUND`]), then returns 7, or aborts its worker
/// if `abort`. One function for every gated job, so that the warm-up times it.
fn gated((path, abort): (PathBuf, bool)) -> u64 {
    let deadline = Instant::now() + BOUND;
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    if abort {
        std::process::abort();
    }
    7
}

// The pool times jobs per function pointer, and a small function may have a copy of its
// own in each codegen unit that takes its address: every job of these tests is submitted
// through the two helpers below, so that the warm-up times the same copies.

/// Submits `double(x)`.
#[inline(never)]
fn submit_double(pool: &ProcessPoolExecutor, x: u64) -> JobHandle<u64> {
    pool.submit(double, x)
}

/// Submits a job that waits for `path`, then aborts its worker if `abort`.
#[inline(never)]
fn submit_gated(pool: &ProcessPoolExecutor, path: PathBuf, abort: bool) -> JobHandle<u64> {
    pool.submit(gated, (path, abort))
}

fn len(bytes: Vec<u8>) -> usize {
    bytes.len()
}

/// A pool of one worker that has run enough tiny jobs to pipeline them: of `double`, and
/// of `gated` on a path that exists, so that a gated job is expected to be short and jobs
/// are sent to wait behind it. Submitted all at once, they stream, and their times are the
/// worker's, not those of a round trip to an idle worker.
fn warm_pool() -> ProcessPoolExecutor {
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .unwrap();
    let handles: Vec<_> = (0..100)
        .map(|x| {
            let open = submit_gated(&pool, std::env::temp_dir(), false);
            (submit_double(&pool, x), open)
        })
        .collect();
    for (x, (doubled, open)) in (0..).zip(handles) {
        assert_eq!(doubled.wait(), Ok(2 * x));
        assert_eq!(open.wait(), Ok(7));
    }
    pool
}

/// Polls until `jobs` jobs wait behind the running one in the worker (and none in the
/// queue).
fn until_waiting_in_worker(pool: &ProcessPoolExecutor, jobs: usize) {
    until_waiting(pool.core(), jobs);
}

/// Waits until the `jobs` just submitted behind a blocked head have settled, held by the
/// worker or queued, and says whether the worker holds them all. A loaded machine times
/// the warm-up long, so that the worker's line takes fewer (the rest wait in the queue
/// until the head ends): a test that needs them all held runs such a round again.
fn held_behind(pool: &ProcessPoolExecutor, jobs: usize) -> bool {
    let core = pool.core();
    let deadline = Instant::now() + BOUND / 4;
    while core.counters.waiting() + core.queue.len() != jobs {
        assert!(Instant::now() < deadline, "the jobs never settled");
        std::thread::sleep(Duration::from_millis(1));
    }
    core.counters.waiting() == jobs
}

/// A warm one-worker pool running a job gated on a file (that aborts its worker when the
/// gate opens, if `abort`), with `jobs` doubles held behind it by the worker: a new pool
/// for each round in which the worker did not hold them all (see [`held_behind`]), up to
/// 10 rounds. The gate's directory, the gate, the pool, the gated job, the doubles.
fn jobs_held_behind_a_gated_one(
    abort: bool,
    jobs: u64,
) -> (
    tempfile::TempDir,
    PathBuf,
    ProcessPoolExecutor,
    JobHandle<u64>,
    Vec<JobHandle<u64>>,
) {
    for round in 1..=10 {
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("gate");
        let pool = warm_pool();
        let gated = submit_gated(&pool, gate.clone(), abort);
        let behind: Vec<_> = (0..jobs).map(|x| submit_double(&pool, x)).collect();
        if held_behind(&pool, behind.len()) {
            return (dir, gate, pool, gated, behind);
        }
        println!("round {round}: the worker did not hold all {jobs} jobs");
        // Spread the rounds over a second or two, past a moment of load from other tests.
        std::thread::sleep(Duration::from_millis(40 * round));
    }
    panic!("in 10 rounds, the worker never held all {jobs} jobs");
}

fn open(gate: &Path) {
    std::fs::write(gate, b"").unwrap();
}

#[test]
fn jobs_waiting_behind_a_job_that_kills_its_worker_run_elsewhere() {
    bounded(|| {
        let (_dir, gate, pool, fatal, behind) = jobs_held_behind_a_gated_one(true, 10);
        open(&gate);
        match fatal.wait() {
            Err(JobError::WorkerDied { exit, .. }) => assert_eq!(exit.signal(), Some(6)),
            other => panic!("expected the worker to die, got {other:?}"),
        }
        for (x, handle) in (0..).zip(behind) {
            assert_eq!(handle.wait(), Ok(2 * x), "job {x} behind the fatal one");
        }
        let stats = pool.stats();
        assert_eq!(stats.respawns, 1, "{stats:?}");
        assert_eq!(stats.jobs_failed, 1, "{stats:?}");
        assert_eq!(stats.jobs_queued, 0, "{stats:?}");
    });
}

#[test]
fn a_job_waiting_in_a_worker_is_taken_back_when_cancelled() {
    bounded(|| {
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("gate");
        let pool = warm_pool();
        let running = submit_gated(&pool, gate.clone(), false);
        let waiting = submit_double(&pool, 1);
        let kept = submit_double(&pool, 2);
        until_waiting_in_worker(&pool, 2);
        // Handed to the worker, not running yet: taken back from it, the worker lives.
        assert!(waiting.cancel());
        assert_eq!(waiting.wait(), Err(JobError::Cancelled));
        open(&gate);
        assert_eq!(running.wait(), Ok(7));
        assert_eq!(kept.wait(), Ok(4), "taken back with it, it runs");
        let stats = pool.stats();
        assert_eq!(stats.respawns, 0, "{stats:?}");
        assert_eq!(stats.jobs_completed, 202, "{stats:?}");
        assert_eq!(stats.jobs_failed, 0, "it never ran: {stats:?}");
    });
}

#[test]
fn a_running_job_with_jobs_waiting_behind_it_can_still_be_stopped() {
    bounded(|| {
        let (_dir, _never, pool, running, behind) = jobs_held_behind_a_gated_one(false, 5);
        assert!(running.cancel());
        assert_eq!(running.wait(), Err(JobError::Cancelled));
        for (x, handle) in (0..).zip(behind) {
            assert_eq!(handle.wait(), Ok(2 * x), "job {x} behind the cancelled one");
        }
        assert_eq!(pool.stats().respawns, 1);
    });
}

#[test]
fn a_large_argument_never_waits_behind_a_running_job() {
    bounded(|| {
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("gate");
        let pool = warm_pool();
        let running = submit_gated(&pool, gate.clone(), false);
        let small = submit_double(&pool, 1);
        until_waiting_in_worker(&pool, 1);
        let large = pool.submit(len, vec![1_u8; 1 << 20]);
        let last = submit_double(&pool, 2);
        // The large job is taken and handed back; the worker takes nothing more until its
        // line is empty.
        let core = pool.core();
        let deadline = Instant::now() + BOUND;
        while core.queue.len() != 2 {
            assert!(Instant::now() < deadline, "the queue never settled");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(core.counters.waiting(), 1);
        open(&gate);
        assert_eq!(running.wait(), Ok(7));
        assert_eq!(small.wait(), Ok(2));
        assert_eq!(large.wait(), Ok(1 << 20));
        assert_eq!(last.wait(), Ok(4));
    });
}

// ---------------------------------------------------------------- a backend of threads

/// Polls until `jobs` jobs wait in a worker behind the one it runs (and none in the queue).
fn until_waiting(core: &super::core::Core, jobs: usize) {
    let deadline = Instant::now() + BOUND;
    while core.counters.waiting() != jobs || core.queue.len() != 0 {
        assert!(
            Instant::now() < deadline,
            "never saw {jobs} jobs waiting in the worker: {} there, {} queued",
            core.counters.waiting(),
            core.queue.len()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

mod lending;
mod threads;
