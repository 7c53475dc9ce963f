//! The supervision promises of a process pool, proven with real processes: deaths of every
//! kind, timeouts, the memory ceiling, start-up failures, recycling under load, parent death,
//! other users, and the stats that report all of it.

mod common;

use common::*;
use futures::StreamExt;
use procpool::{
    Executor, ExecutorExt, JobError, JobOptions, ProcessPoolExecutor, ThreadPoolExecutor,
};
use std::time::{Duration, Instant};

fn pool(workers: usize) -> ProcessPoolExecutor {
    ProcessPoolExecutor::builder()
        .max_workers(workers)
        .build()
        .unwrap()
}

fn signal_of(err: &JobError) -> Option<i32> {
    match err {
        JobError::WorkerDied { exit, .. } => exit.signal(),
        _ => None,
    }
}

/// Sends SIGSEGV to its own worker, as a wild pointer would.
fn segfault(_: ()) -> u32 {
    let me = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-SEGV", &me])
        .status();
    // Never reached: the signal is delivered before `kill` returns to us.
    loop {
        std::thread::park();
    }
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    recurse(frame[7] + 1) + frame[0]
}

#[tokio::test]
async fn segfault_and_stack_overflow_fail_only_their_jobs() {
    let pool = pool(1);
    let err = bounded("segfault", pool.submit(segfault, ()))
        .await
        .unwrap_err();
    assert_eq!(signal_of(&err), Some(libc::SIGSEGV), "{err:?}");
    let err = bounded("overflow", pool.submit(recurse, 0))
        .await
        .unwrap_err();
    // A worker overflows its stack before Rust's main installs the handler that turns the
    // guard-page fault into an abort: either signal is a death, never a hang.
    let signal = signal_of(&err);
    assert!(
        signal == Some(libc::SIGSEGV) || signal == Some(libc::SIGABRT),
        "{err:?}"
    );
    assert_eq!(bounded("after", pool.submit(double, 21)).await, Ok(42));
    assert_eq!(pool.stats().workers_alive, 1);
}

#[tokio::test]
async fn a_job_past_its_timeout_has_its_worker_killed_and_replaced() {
    let pool = pool(1);
    let gate = Gate::new(); // never opened: the job would wait two minutes
    let pid_file = gate.sibling("pid");
    let options = JobOptions::new().timeout(Duration::from_millis(200));
    let handle = pool.submit_with(
        report_pid_then_wait,
        (pid_file.clone(), gate.path()),
        options,
    );
    let err = bounded("timeout", handle).await.unwrap_err();
    assert_eq!(err, JobError::TimedOut(Duration::from_millis(200)));
    assert!(err.is_timeout());
    let worker = read_pid(&pid_file) as u32;
    assert!(
        !process_exists(worker),
        "the timed-out worker was killed and reaped"
    );
    let replacement = bounded("next", pool.submit(pid, ())).await.unwrap();
    assert_ne!(replacement, worker);
}

#[tokio::test]
async fn the_pool_default_timeout_applies_unless_a_job_overrides_it() {
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .job_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let gate = Gate::new();
    let err = bounded("default", pool.submit(wait_for_gate, gate.path()))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    // Opting out: this job outlives the default and finishes once the gate opens.
    let patient = pool.submit_with(wait_for_gate, gate.path(), JobOptions::new().no_timeout());
    let pid_file = gate.sibling("started");
    let marker = pool.submit_with(leave_mark, pid_file.clone(), JobOptions::new().no_timeout());
    tokio::time::sleep(Duration::from_millis(300)).await; // well past the 100 ms default
    assert!(
        !patient.is_finished(),
        "no_timeout() lifted the pool's default"
    );
    gate.open();
    assert!(bounded("patient", patient).await.is_ok());
    assert!(bounded("marker", marker).await.is_ok());
}

#[tokio::test]
async fn map_chunks_time_out_item_by_item() {
    let pool = pool(2);
    let gate = Gate::new();
    let items = vec![gate.sibling("fast-a"), gate.path(), gate.sibling("fast-b")];
    // Items that are not the gate name a file that is created right away.
    let results: Vec<Result<u32, JobError>> = bounded(
        "map",
        pool.map(wait_or_mark, items)
            .chunk_size(1)
            .timeout(Duration::from_millis(200))
            .collect(),
    )
    .await;
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(results[1].as_ref().unwrap_err().is_timeout(), "{results:?}");
}

/// Waits for `path` if it names the gate ("open"), else creates it.
fn wait_or_mark(path: String) -> u32 {
    if path.ends_with("/open") {
        wait_for_gate(path)
    } else {
        leave_mark(path)
    }
}

#[tokio::test]
async fn the_thread_pool_times_out_the_future_while_its_thread_runs_on() {
    let pool = ThreadPoolExecutor::builder()
        .max_workers(1)
        .build()
        .unwrap();
    let gate = Gate::new();
    let options = JobOptions::new().timeout(Duration::from_millis(100));
    let handle = pool.submit_with(wait_for_gate, gate.path(), options);
    assert_eq!(
        bounded("timeout", handle).await,
        Err(JobError::TimedOut(Duration::from_millis(100)))
    );
    let queued = pool.submit(double, 2);
    assert!(
        !queued.is_finished(),
        "the thread is still busy with the timed-out job"
    );
    gate.open();
    assert_eq!(
        bounded("queued", queued).await,
        Ok(4),
        "then it serves again"
    );
}

/// Allocates and touches `mib` MiB, then waits for the gate.
fn hold_memory((mib, gate): (usize, String)) -> usize {
    let block = vec![1_u8; mib << 20];
    wait_for_gate(gate);
    block.iter().map(|&b| b as usize).sum()
}

/// Leaks `mib` MiB (touched) and returns at once.
fn leak_memory(mib: usize) -> u32 {
    let block = vec![1_u8; mib << 20];
    std::hint::black_box(Box::leak(block.into_boxed_slice()));
    std::process::id()
}

#[tokio::test]
async fn a_worker_over_the_memory_limit_is_replaced_and_its_job_says_why() {
    const LIMIT: u64 = 128 << 20;
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .max_worker_memory(LIMIT)
        .build()
        .unwrap();
    let gate = Gate::new(); // never opened: the job holds its memory until killed
    let err = bounded("hog", pool.submit(hold_memory, (256, gate.path())))
        .await
        .unwrap_err();
    match err {
        JobError::MemoryLimit { limit, resident } => {
            assert_eq!(limit, LIMIT);
            assert!(resident > LIMIT, "resident {resident}");
        }
        other => panic!("expected MemoryLimit, got {other:?}"),
    }
    assert!(err_text_names_the_limit(&pool).await);
    // Jobs that each leak 48 MiB push their worker past the limit within a few jobs. The
    // job that crosses it either is caught running (MemoryLimit) or finishes and its worker
    // is retired right after: either way the leaky worker is replaced.
    let first = bounded("pid", pool.submit(pid, ())).await.unwrap();
    let mut replaced = false;
    for _ in 0..6 {
        match bounded("leak", pool.submit(leak_memory, 48)).await {
            Ok(worker) if worker != first => {
                replaced = true;
                break;
            }
            Ok(_) => {}
            Err(JobError::MemoryLimit { .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
        if bounded("pid", pool.submit(pid, ())).await.unwrap() != first {
            replaced = true;
            break;
        }
    }
    assert!(
        replaced,
        "a worker leaking past the limit was never replaced"
    );
    assert!(!process_exists(first), "the leaky worker was reaped");
}

async fn err_text_names_the_limit(pool: &ProcessPoolExecutor) -> bool {
    let gate = Gate::new();
    let err = bounded("hog", pool.submit(hold_memory, (256, gate.path())))
        .await
        .unwrap_err();
    err.to_string().contains("memory limit") && err.to_string().contains("max_worker_memory")
}

fn exit_during_init() {
    std::process::exit(9)
}

#[tokio::test]
async fn workers_that_keep_dying_at_start_break_the_pool_without_a_respawn_storm() {
    let err = error_with_initializer(exit_during_init).await;
    let text = err.to_string();
    assert!(
        text.contains("failed to start 5 times with none started") && text.contains("exit code 9"),
        "{text}"
    );
    let pool = ProcessPoolExecutor::builder()
        .max_workers(2)
        .initializer(exit_during_init)
        .build()
        .unwrap();
    let again = bounded("job", pool.submit(double, 1)).await.unwrap_err();
    assert!(again.is_pool_broken(), "{again:?}");
    let stats = pool.stats();
    // Five attempts per slot at the most: four replacements each.
    assert!(stats.respawns <= 8, "{stats:?}");
    assert_eq!(stats.workers_alive, 0);
}

#[tokio::test]
async fn recycling_every_job_under_load_never_hangs() {
    // Python's gh-115634: max_tasks_per_child with a backlog could hang the pool.
    let pool = ProcessPoolExecutor::builder()
        .max_workers(2)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    let handles: Vec<_> = (0..100).map(|i| pool.submit(double, i)).collect();
    let results = bounded("backlog", futures::future::join_all(handles)).await;
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result, Ok(2 * i as u64));
    }
    let stats = pool.stats();
    assert!(
        stats.respawns >= 98,
        "every job retired its worker: {stats:?}"
    );
    assert_eq!(stats.jobs_completed, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_a_task_that_awaits_a_job_does_not_leak_the_worker() {
    let pool = std::sync::Arc::new(pool(1));
    let gate = Gate::new();
    let pid_file = gate.sibling("pid");
    let task = {
        let pool = pool.clone();
        let args = (pid_file.clone(), gate.path());
        tokio::spawn(async move { pool.submit(report_pid_then_wait, args).await })
    };
    bounded_sync("start", move || read_pid(&pid_file));
    task.abort();
    assert!(bounded("abort", task).await.unwrap_err().is_cancelled());
    gate.open(); // the detached job finishes and frees its worker
    assert_eq!(bounded("next", pool.submit(double, 3)).await, Ok(6));
    let stats = pool.stats();
    assert_eq!(
        (stats.workers_busy, stats.workers_alive),
        (0, 1),
        "{stats:?}"
    );
}

/// A type that serializes fine but refuses to be deserialized.
#[derive(Debug, serde::Serialize)]
struct WriteOnly(u8);

impl<'de> serde::Deserialize<'de> for WriteOnly {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("write-only"))
    }
}

fn make_write_only(x: u8) -> WriteOnly {
    WriteOnly(x)
}

#[tokio::test]
async fn a_result_that_fails_to_decode_fails_only_its_job() {
    let pool = pool(1);
    let err = bounded("decode", pool.submit(make_write_only, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::Decode(_)), "{err:?}");
    assert_eq!(bounded("next", pool.submit(double, 1)).await, Ok(2));
    // Inside a chunk, too: each item fails on its own and the stream goes on.
    let items: Vec<_> = bounded(
        "map",
        pool.map(make_write_only, 0..5)
            .chunk_size(5)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(items.len(), 5);
    assert!(items.iter().all(|r| matches!(r, Err(JobError::Decode(_)))));
}

#[tokio::test]
async fn stats_count_workers_and_jobs_on_both_pools() {
    let pools: Vec<(&str, Box<dyn Executor>)> = vec![
        ("threads", Box::new(ThreadPoolExecutor::new(2).unwrap())),
        ("processes", Box::new(pool(2))),
    ];
    for (name, pool) in pools {
        for i in 0..10 {
            bounded(name, pool.submit(double, i)).await.unwrap();
        }
        bounded(name, pool.submit(fail_on_seven, 7))
            .await
            .unwrap_err();
        let gate = Gate::new();
        let pid_file = gate.sibling("pid");
        let running = pool.submit(report_pid_then_wait, (pid_file.clone(), gate.path()));
        bounded_sync("start", move || read_pid(&pid_file));
        // A pool does not wait for its workers to start: the second may still be starting.
        // Nor does a worker wait for its pool: it may run the job before the pool's thread,
        // descheduled right after writing it, has counted it as running.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while {
            let stats = pool.stats();
            stats.workers_alive != 2 || stats.workers_busy != 1
        } {
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: {:?}",
                pool.stats()
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let stats = pool.stats();
        assert_eq!(stats.max_workers, 2, "{name}");
        assert_eq!(stats.workers_alive, 2, "{name}: {stats:?}");
        assert_eq!(
            (stats.workers_busy, stats.jobs_running),
            (1, 1),
            "{name}: {stats:?}"
        );
        assert_eq!(
            (stats.jobs_completed, stats.jobs_failed),
            (10, 1),
            "{name}: {stats:?}"
        );
        assert_eq!(stats.respawns, 0, "{name}");
        gate.open();
        bounded(name, running).await.unwrap();
        assert_eq!(pool.stats().jobs_completed, 11, "{name}");
    }
}

/// An argument whose `Serialize` fails: its job fails before it reaches a worker.
#[derive(Debug, serde::Deserialize)]
struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("not this one"))
    }
}

fn take_unencodable(_: Unencodable) -> u32 {
    0
}

fn panic_now(_: ()) -> u32 {
    panic!("on purpose")
}

/// Waits until `pool`'s stats satisfy `done`, and returns them.
async fn stats_when(
    pool: &ProcessPoolExecutor,
    what: &str,
    done: impl Fn(&procpool::PoolStats) -> bool,
) -> procpool::PoolStats {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = pool.stats();
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn the_stats_count_failures_by_kind() {
    let pool = pool(1);
    // A different count for each kind, so that two kinds counted in each other's place fail.
    for _ in 0..5 {
        let panicked = bounded("panic", pool.submit(panic_now, ())).await;
        assert!(panicked.unwrap_err().is_panic());
    }
    for _ in 0..3 {
        let died = bounded("abort", pool.submit(abort_now, ())).await;
        assert!(died.unwrap_err().is_worker_died());
    }
    let short = JobOptions::new().timeout(Duration::from_millis(100));
    let gate = Gate::new();
    for _ in 0..2 {
        let late = bounded(
            "timeout",
            pool.submit_with(wait_for_gate, gate.path(), short),
        )
        .await;
        assert!(late.unwrap_err().is_timeout());
    }
    for _ in 0..4 {
        let refused = bounded("encode", pool.submit(take_unencodable, Unencodable)).await;
        assert!(refused.unwrap_err().is_encode());
    }
    // A running job, cancelled.
    let running = pool.submit(wait_for_gate, gate.path());
    stats_when(&pool, "the job to start", |stats| stats.jobs_running == 1).await;
    running.cancel();
    let stats = stats_when(&pool, "the cancelled job to be counted", |stats| {
        stats.jobs_failed == 15
    })
    .await;
    let failures = stats.failures;
    assert_eq!(
        (
            failures.panicked,
            failures.worker_died,
            failures.timed_out,
            failures.data,
            failures.cancelled,
        ),
        (5, 3, 2, 4, 1),
        "{stats:?}"
    );
    assert_eq!(
        (failures.memory_limit, failures.shut_down, failures.other),
        (0, 0, 0)
    );
    assert_eq!(failures.total(), stats.jobs_failed, "{stats:?}");
    assert_eq!(stats.jobs_completed, 0, "{stats:?}");
}

// ---- parent death ----

/// Run as a child process by the test below: builds a pool whose two workers block, writes
/// their pids, then waits to be killed.
#[test]
fn child_probe_parent_that_gets_killed() {
    let Some(dir) = std::env::var_os("PROCPOOL_TEST_ORPHAN_DIR") else {
        return; // only meaningful in the child started by the test below
    };
    let dir = std::path::PathBuf::from(dir);
    let pool = pool(2);
    let gate = dir.join("never").to_str().unwrap().to_owned();
    let handles: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| {
            let pid_file = dir.join(n).to_str().unwrap().to_owned();
            pool.submit(report_pid_then_wait, (pid_file, gate.clone()))
        })
        .collect();
    std::fs::write(dir.join("parent-ready"), b"").unwrap();
    std::thread::sleep(BOUND); // killed long before this ends
    drop(handles);
}

#[test]
fn workers_exit_within_a_second_when_their_parent_is_sigkilled() {
    let dir = tempfile::tempdir().unwrap();
    let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_probe_parent_that_gets_killed",
            "--test-threads=1",
            "--nocapture",
        ])
        .env("PROCPOOL_TEST_ORPHAN_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = dir.path().join("parent-ready").to_str().unwrap().to_owned();
    assert!(
        wait_until_exists(&ready),
        "the probe parent never got ready"
    );
    let workers: Vec<u32> = ["a", "b"]
        .iter()
        .map(|n| read_pid(dir.path().join(n).to_str().unwrap()) as u32)
        .collect();
    parent.kill().unwrap(); // SIGKILL: no destructor, no drop, nothing runs
    let killed_at = Instant::now();
    parent.wait().unwrap();
    while !workers.iter().all(|&w| is_gone(w)) {
        assert!(
            killed_at.elapsed() < BOUND,
            "workers {workers:?} outlived their parent"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = killed_at.elapsed();
    eprintln!("workers exited {took:?} after their parent was SIGKILLed");
    assert!(
        took < Duration::from_secs(1),
        "workers took {took:?} to exit"
    );
}

// ---- other users ----

/// Run as `nobody` by the test below: tries to open the worker's end of its link, the
/// one handle to it outside the pool (its socket has no name to connect to).
#[test]
fn child_probe_reach_the_link_as_another_user() {
    let Some(link) = std::env::var_os("PROCPOOL_TEST_LINK") else {
        return;
    };
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&link);
    match opened {
        Ok(_) => panic!("another user opened a worker's link"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}"),
    }
}

#[tokio::test]
async fn another_local_user_cannot_connect() {
    // SAFETY-free check of who we are: root's home is /root and its uid is 0 in /proc.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .to_owned();
    let pool = pool(1);
    let worker = bounded("pid", pool.submit(pid, ())).await.unwrap();
    assert_eq!(link_name_of(worker), None, "no name to connect to");
    let link = format!("/proc/{worker}/fd/{}", link_fd_of(worker));
    if uid != "0" {
        // Not root: we cannot become another user.
        eprintln!("not root: the cross-user attempt is skipped");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let status = bounded_sync("setpriv", move || {
        std::process::Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(exe)
            .args([
                "--exact",
                "child_probe_reach_the_link_as_another_user",
                "--test-threads=1",
            ])
            .env("PROCPOOL_TEST_LINK", &link)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("setpriv (util-linux) runs the probe as nobody")
    });
    assert!(
        status.success(),
        "the probe as nobody was not refused: {status}"
    );
    assert_eq!(
        bounded("still serving", pool.submit(double, 2)).await,
        Ok(4)
    );
}

/// Appends this worker's pid to `attempts` (one line per attempt), then waits for `gate`.
fn note_attempt_then_wait((attempts, gate): (String, String)) -> u32 {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&attempts)
        .unwrap();
    writeln!(file, "{}", std::process::id()).unwrap();
    drop(file);
    assert!(wait_until_exists(&gate), "gate never opened");
    std::process::id()
}

/// The pids `note_attempt_then_wait` wrote, once there are `n` of them.
fn attempts_seen(attempts: &str, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + BOUND;
    loop {
        let text = std::fs::read_to_string(attempts).unwrap_or_default();
        let pids: Vec<u32> = text.lines().filter_map(|l| l.parse().ok()).collect();
        if pids.len() >= n {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "saw {} of {n} attempts",
            pids.len()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn abort_now(_: ()) {
    std::process::abort()
}

#[tokio::test]
async fn a_job_whose_worker_dies_runs_again_when_it_may() {
    let pool = pool(1);
    let gate = Gate::new();
    let attempts = gate.sibling("attempts");
    let retry = JobOptions::new().retries(2);
    let job = pool.submit_with(
        note_attempt_then_wait,
        (attempts.clone(), gate.path()),
        retry,
    );
    let file = attempts.clone();
    let first = bounded_sync("the first attempt", move || attempts_seen(&file, 1))[0];
    let killed = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let file = attempts.clone();
    let seen = bounded_sync("the second attempt", move || attempts_seen(&file, 2));
    assert_ne!(
        seen[0], seen[1],
        "the second attempt ran on the replacement"
    );
    gate.open();
    assert_eq!(bounded("the job", job).await, Ok(seen[1]));
    assert_eq!(
        attempts_seen(&attempts, 2).len(),
        2,
        "two attempts, no more"
    );

    // When every attempt's worker dies, the error says how many there were.
    let err = bounded(
        "aborts",
        pool.submit_with(abort_now, (), JobOptions::new().retries(1)),
    )
    .await
    .unwrap_err();
    match &err {
        JobError::WorkerDied { exit, attempts } => {
            assert_eq!(*attempts, 2, "{err}");
            assert_eq!(exit.signal(), Some(libc::SIGABRT));
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert!(err.to_string().contains("2 attempts"), "{err}");
    // Off by default: one attempt.
    let err = bounded("abort once", pool.submit(abort_now, ()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, JobError::WorkerDied { attempts: 1, .. }),
        "{err:?}"
    );
    assert_eq!(pool.stats().jobs_failed, 2, "each job failed once");
}
