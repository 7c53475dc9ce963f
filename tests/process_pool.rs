//! ProcessPoolExecutor behaviour with real worker processes: panics, deaths, cancellation,
//! initializers, recycling, large payloads, and clean-up.

mod common;

use common::*;
use futures::StreamExt;
use procpool::{Error, Executor, ExecutorExt, JobError, ProcessPoolExecutor};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};

fn pool(workers: usize) -> ProcessPoolExecutor {
    ProcessPoolExecutor::builder()
        .max_workers(workers)
        .build()
        .unwrap()
}

fn kill(pid: i32, signal: i32) {
    let rc = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(rc.success(), "kill -{signal} {pid} failed");
}

/// Submits one job per name that reports its worker's pid in a file of that name beside
/// `gate`, then waits for the gate. Returns the handles and the pids, read while the gate is
/// still closed: so every job is running at once, each on a worker of its own.
fn start_blocked<const N: usize>(
    pool: &ProcessPoolExecutor,
    gate: &Gate,
    names: [&str; N],
) -> (Vec<procpool::JobHandle<u32>>, [u32; N]) {
    let files = names.map(|name| gate.sibling(name));
    let handles = files
        .iter()
        .map(|file| pool.submit(report_pid_then_wait, (file.clone(), gate.path())))
        .collect();
    let pids = bounded_sync(
        "the blocked jobs to start before the gate opens",
        move || files.map(|file| read_pid(&file) as u32),
    );
    (handles, pids)
}

fn panic_here(_: u32) -> u32 {
    panic!("worker-side failure")
}

fn abort_now(_: ()) -> u32 {
    std::process::abort()
}

fn exit_with(code: i32) -> u32 {
    std::process::exit(code)
}

#[tokio::test]
async fn a_panic_reports_message_and_location_and_the_worker_survives() {
    let pool = pool(1);
    let before = bounded("pid", pool.submit(pid, ())).await.unwrap();
    let err = bounded("panic", pool.submit(panic_here, 1))
        .await
        .unwrap_err();
    match &err {
        JobError::Panicked {
            message, location, ..
        } => {
            assert_eq!(message, "worker-side failure");
            let location = location
                .as_deref()
                .expect("the process pool captures the location");
            assert!(location.starts_with("tests/process_pool.rs:"), "{location}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    let after = bounded("pid", pool.submit(pid, ())).await.unwrap();
    assert_eq!(before, after, "the same worker keeps serving after a panic");
}

#[tokio::test]
async fn a_worker_killed_from_outside_fails_only_its_job() {
    let pool = pool(1);
    let gate = Gate::new();
    let pid_file = gate.sibling("pid");
    let victim = pool.submit(report_pid_then_wait, (pid_file.clone(), gate.path()));
    let queued: Vec<_> = (0..3).map(|i| pool.submit(double, i)).collect();
    let worker = bounded_sync("victim start", move || read_pid(&pid_file));
    kill(worker, 9);
    let err = bounded("victim", victim).await.unwrap_err();
    match &err {
        JobError::WorkerDied { exit, .. } => assert_eq!(exit.signal(), Some(9), "{err}"),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert!(err.to_string().contains("SIGKILL"), "{err}");
    for (i, handle) in queued.into_iter().enumerate() {
        assert_eq!(
            bounded("queued", handle).await,
            Ok(2 * i as u64),
            "queued jobs are not lost"
        );
    }
    let replacement = bounded("pid", pool.submit(pid, ())).await.unwrap();
    assert_ne!(
        replacement as i32, worker,
        "a new worker took the dead one's place"
    );
}

#[tokio::test]
async fn abort_and_exit_inside_a_job_are_worker_deaths() {
    let pool = pool(1);
    let aborted = bounded("abort", pool.submit(abort_now, ()))
        .await
        .unwrap_err();
    match aborted {
        JobError::WorkerDied { exit, .. } => assert_eq!(exit.signal(), Some(libc::SIGABRT)),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    let exited = bounded("exit", pool.submit(exit_with, 3))
        .await
        .unwrap_err();
    match exited {
        JobError::WorkerDied { exit, .. } => assert_eq!(exit.code(), Some(3)),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_eq!(
        bounded("after", pool.submit(double, 4)).await,
        Ok(8),
        "the pool keeps serving"
    );
}

#[tokio::test]
async fn cancelling_a_running_job_kills_and_replaces_its_worker() {
    let pool = pool(1);
    let gate = Gate::new();
    let pid_file = gate.sibling("pid");
    let running = pool.submit(report_pid_then_wait, (pid_file.clone(), gate.path()));
    let worker = bounded_sync("start", move || read_pid(&pid_file)) as u32;
    assert!(
        running.cancel(),
        "a running job on a process pool can be stopped"
    );
    assert_eq!(
        bounded("cancelled", running).await,
        Err(JobError::Cancelled)
    );
    assert!(
        !process_exists(worker),
        "the cancelled job's worker was killed and reaped"
    );
    let replacement = bounded("pid", pool.submit(pid, ())).await.unwrap();
    assert_ne!(replacement, worker);
}

static INIT_RUNS: AtomicU32 = AtomicU32::new(0);

fn count_init() {
    INIT_RUNS.fetch_add(1, Ordering::SeqCst);
}

fn read_init_runs(_: ()) -> u32 {
    INIT_RUNS.load(Ordering::SeqCst)
}

#[tokio::test]
async fn the_initializer_runs_once_in_each_worker_before_its_jobs() {
    let pool = ProcessPoolExecutor::builder()
        .max_workers(2)
        .initializer(count_init)
        .build()
        .unwrap();
    let seen: Vec<u32> =
        futures::future::join_all((0..20).map(|_| pool.submit(read_init_runs, ())))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    assert!(
        seen.iter().all(|&n| n == 1),
        "each worker ran it exactly once: {seen:?}"
    );
    assert_eq!(
        INIT_RUNS.load(Ordering::SeqCst),
        0,
        "it ran in the workers, not here"
    );
}

fn failing_init() {
    panic!("no database")
}

#[tokio::test]
async fn a_panicking_initializer_breaks_the_pool_with_a_clear_error() {
    let err = error_with_initializer(failing_init).await;
    let text = err.to_string();
    assert!(
        text.contains("initializer panicked") && text.contains("no database"),
        "{text}"
    );
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .initializer(failing_init)
        .build()
        .unwrap();
    let first = bounded("first", pool.submit(double, 1)).await.unwrap_err();
    // Later submissions fail at once with the same cause, without new workers.
    let again = pool.submit(double, 2);
    assert!(again.is_finished());
    assert_eq!(bounded("again", again).await.unwrap_err(), first);
}

#[tokio::test]
async fn max_tasks_per_child_replaces_workers_after_n_jobs() {
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .max_tasks_per_child(2)
        .build()
        .unwrap();
    let mut pids = Vec::new();
    for _ in 0..6 {
        pids.push(bounded("pid", pool.submit(pid, ())).await.unwrap());
    }
    assert_eq!(pids[0], pids[1]);
    assert_eq!(pids[2], pids[3]);
    assert_eq!(pids[4], pids[5]);
    let distinct: HashSet<_> = pids.iter().collect();
    assert_eq!(distinct.len(), 3, "{pids:?}");
    assert!(!process_exists(pids[0]), "retired workers are reaped");
}

fn echo(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

#[tokio::test]
async fn a_64_mib_argument_round_trips() {
    let pool = pool(1);
    let payload: Vec<u8> = (0..64 << 20).map(|i: u32| (i % 251) as u8).collect();
    let back = bounded("echo", pool.submit(echo, payload.clone()))
        .await
        .unwrap();
    assert_eq!(back.len(), 64 << 20);
    assert!(back == payload, "the payload came back changed");
}

#[tokio::test]
async fn a_message_over_the_frame_limit_fails_only_its_job() {
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .max_frame_size(64 << 10)
        .build()
        .unwrap();
    let err = bounded("big", pool.submit(echo, vec![7; 100_000]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, JobError::TooLarge { max: 65536, .. }),
        "{err:?}"
    );
    let err = bounded("big result", pool.submit(|n: usize| vec![1_u8; n], 100_000))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("maximum frame size"), "{err}");
    assert_eq!(
        bounded("small", pool.submit(echo, vec![1, 2, 3]))
            .await
            .unwrap(),
        vec![1, 2, 3]
    );
}

// Regression: a result over the frame limit failed with `Encode`, although
// `max_frame_size` promises `TooLarge`.
#[tokio::test]
async fn a_result_over_the_frame_limit_is_too_large() {
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .max_frame_size(64 << 10)
        .build()
        .unwrap();
    let err = bounded("big result", pool.submit(|n: usize| vec![1_u8; n], 100_000))
        .await
        .unwrap_err();
    match &err {
        JobError::TooLarge { size, max } => {
            assert_eq!(*max, 64 << 10);
            assert!(*size > 100_000, "{size}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(err.is_too_large());
    // The same for one item of a chunk: the chunk's answer is over the limit.
    let items: Vec<_> = bounded(
        "big chunk",
        pool.map(|n: usize| vec![1_u8; n], [10, 100_000])
            .chunk_size(2)
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(
        items
            .iter()
            .all(|r| matches!(r, Err(JobError::TooLarge { .. }))),
        "{items:?}"
    );
    assert_eq!(
        bounded("small", pool.submit(echo, vec![1])).await.unwrap(),
        vec![1]
    );
}

/// The entries of the temporary directory named like a pool's private directory (which
/// pools made before their links became unnamed socket pairs).
fn pool_dirs_in_tmp() -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("procpool-"))
        .collect()
}

#[tokio::test]
async fn dropping_the_pool_reaps_workers_and_leaves_nothing_behind() {
    let before = pool_dirs_in_tmp();
    let pool = pool(2);
    let gate = Gate::new();
    // Two blocked jobs pin one job on each worker, so both pids are seen.
    let (blocked, pids) = start_blocked(&pool, &gate, ["a", "b"]);
    let made: Vec<_> = pool_dirs_in_tmp()
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    assert_eq!(made, Vec::<String>::new(), "a pool made no directory");
    drop(pool);
    for pid in &pids {
        assert!(
            !process_exists(*pid),
            "worker {pid} survived the pool or was not reaped"
        );
    }
    for handle in blocked {
        assert_eq!(bounded("blocked", handle).await, Err(JobError::ShutDown));
    }
}

// A worker's link is one end of a socket pair its parent made for it: it has no name in
// the filesystem or the abstract namespace, so nothing else can connect to the pool, and
// there is nothing to remove (nor a 108-byte path limit).
#[tokio::test]
async fn a_workers_link_has_no_name() {
    let pool = pool(1);
    let worker = bounded("pid", pool.submit(pid, ())).await.unwrap();
    assert_eq!(link_name_of(worker), None);
    assert!(link_fd_of(worker) > 2, "never on a standard descriptor");
}

#[test]
fn builder_validates_its_settings() {
    let bad = [
        ProcessPoolExecutor::builder().max_workers(0).build(),
        ProcessPoolExecutor::builder()
            .max_tasks_per_child(0)
            .build(),
        ProcessPoolExecutor::builder().max_frame_size(10).build(),
        ProcessPoolExecutor::builder()
            .handshake_timeout(std::time::Duration::ZERO)
            .build(),
    ];
    for result in bad {
        assert!(matches!(result, Err(Error::Config(_))), "{result:?}");
    }
    let default = ProcessPoolExecutor::builder().build().unwrap();
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        default.max_workers(),
        cpus,
        "the default is the available parallelism"
    );
}

/// Run in a child process (see below) with the worker variable set but no hook taking over:
/// `build()` must refuse instead of starting workers of its own.
#[test]
fn child_probe_build_in_a_worker_process_is_refused() {
    if std::env::var_os("PROCPOOL_WORKER").is_none() {
        return; // only meaningful in the child started by the test below
    }
    let err = ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::EntryHookMissing), "{err:?}");
    assert!(err.to_string().contains("procpool::init()"), "{err}");
}

#[test]
fn a_worker_that_reaches_main_never_starts_workers_of_its_own() {
    // A malformed spec keeps the entry hook from taking over, so the test binary's main
    // runs in the child, as it would with the hook disabled and init() forgotten.
    let status = bounded_sync("child", || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_probe_build_in_a_worker_process_is_refused",
                "--test-threads=1",
            ])
            .env("PROCPOOL_WORKER", "not-a-spec")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
    });
    assert!(
        status.success(),
        "the child's build() did not refuse: {status}"
    );
}

/// A value whose serialization always fails.
#[derive(Debug)]
struct Unserializable;

impl serde::Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this type refuses to be serialized",
        ))
    }
}

impl<'de> serde::Deserialize<'de> for Unserializable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unserializable)
    }
}

fn accept_unserializable(_: Unserializable) -> u8 {
    1
}

#[tokio::test]
async fn the_thread_pool_never_serializes_and_the_process_pool_fails_only_that_job() {
    let threads = procpool::ThreadPoolExecutor::new(1).unwrap();
    assert_eq!(
        bounded(
            "threads",
            threads.submit(accept_unserializable, Unserializable)
        )
        .await,
        Ok(1),
        "the thread pool runs the job without serializing its argument"
    );
    let processes = pool(1);
    let err = bounded(
        "processes",
        processes.submit(accept_unserializable, Unserializable),
    )
    .await
    .unwrap_err();
    // postcard drops the impl's own message; the error names the type instead.
    assert!(
        matches!(&err, JobError::Encode(m) if m.contains("Unserializable")),
        "{err:?}"
    );
    assert_eq!(bounded("next", processes.submit(double, 2)).await, Ok(4));
}

fn reverse_bytes(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.reverse();
    bytes
}

fn tagged((tag, bytes): (u8, Vec<u8>)) -> (u8, usize) {
    (tag, bytes.len())
}

#[tokio::test]
async fn byte_buffers_take_the_raw_path_and_agree_everywhere() {
    use futures::TryStreamExt;
    let pool = pool(1);
    // Single jobs ship Vec<u8> as raw bytes, empty ones included.
    assert_eq!(
        bounded("empty", pool.submit(reverse_bytes, Vec::new())).await,
        Ok(Vec::new())
    );
    assert_eq!(
        bounded("bytes", pool.submit(reverse_bytes, vec![1, 2, 3])).await,
        Ok(vec![3, 2, 1])
    );
    // Inside other types, and inside map chunks, they go through serde as usual.
    assert_eq!(
        bounded("tuple", pool.submit(tagged, (7, vec![0; 10]))).await,
        Ok((7, 10))
    );
    let chunks: Vec<Vec<u8>> = bounded(
        "map",
        pool.map(reverse_bytes, vec![vec![1, 2], vec![], vec![9]])
            .chunk_size(2)
            .try_collect(),
    )
    .await
    .unwrap();
    assert_eq!(chunks, vec![vec![2, 1], vec![], vec![9]]);
}

#[tokio::test]
async fn short_jobs_of_one_function_do_not_open_a_window_for_another() {
    use futures::TryStreamExt;
    // Both workers run many short jobs: each would take a long line of more short jobs.
    let pool = pool(2);
    let warm: Vec<u64> = bounded(
        "warm-up",
        pool.map(double, 0..2000).chunk_size(1).try_collect(),
    )
    .await
    .unwrap();
    assert_eq!(warm.len(), 2000);
    // Two jobs of a function neither worker has timed yet, submitted together: each must
    // go to a worker of its own, not wait in the line of the first one's worker. Both
    // report their pid while the gate is still closed only if they run side by side.
    let gate = Gate::new();
    let (handles, pids) = start_blocked(&pool, &gate, ["first", "second"]);
    assert_ne!(pids[0], pids[1], "the two jobs ran on one worker");
    gate.open();
    for handle in handles {
        bounded("a gated job", handle).await.unwrap();
    }
}
