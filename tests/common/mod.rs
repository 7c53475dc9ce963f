//! Helpers shared by the integration tests: time bounds, gates, and job functions.
#![allow(dead_code)] // each test binary uses a different subset

pub mod events;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The bound on any single test step: a hang fails the test instead of blocking CI.
pub const BOUND: Duration = Duration::from_secs(60);

/// Awaits `future`, failing the test if it takes longer than [`BOUND`].
pub async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(BOUND, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {BOUND:?}"),
    }
}

/// Runs a blocking closure on its own thread, failing the test if it takes longer than
/// [`BOUND`].
pub fn bounded_sync<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(BOUND) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what} did not finish within {BOUND:?}"),
    }
}

/// Runs `first` on a new thread, then `at_exit` in a thread-local's destructor as that
/// thread ends, and returns what `at_exit` returned: code that runs after this thread's
/// other thread-locals, the ones `first` used, are gone. (std runs a thread's destructors
/// in the reverse order of registration, and this one is registered before `first` runs;
/// `LocalKey` does not promise that order.) A panic in `at_exit` aborts the test binary.
pub fn at_thread_exit<T: Send + 'static>(
    first: impl FnOnce() + Send + 'static,
    at_exit: impl FnOnce() -> T + Send + 'static,
) -> T {
    struct AtExit(Option<Box<dyn FnOnce()>>);
    impl Drop for AtExit {
        fn drop(&mut self) {
            if let Some(at_exit) = self.0.take() {
                at_exit();
            }
        }
    }
    thread_local! {
        static AT_EXIT: std::cell::RefCell<Option<AtExit>> =
            const { std::cell::RefCell::new(None) };
    }
    let (back, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let at_exit: Box<dyn FnOnce()> = Box::new(move || {
            let _ = back.send(at_exit());
        });
        AT_EXIT.with(|slot| *slot.borrow_mut() = Some(AtExit(Some(at_exit))));
        first();
    })
    .join()
    .expect("the thread ended without a panic");
    result.recv().expect("the thread-local's destructor ran")
}

/// A file-based latch that jobs in any process can wait on: the test opens it when it is
/// ready, so "still running" never depends on timing.
pub struct Gate {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Gate {
    pub fn new() -> Gate {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("open");
        Gate { _dir: dir, path }
    }

    /// The path to pass to a job.
    pub fn path(&self) -> String {
        self.path.to_str().unwrap().to_owned()
    }

    /// A path beside the gate, for jobs to leave marks in.
    pub fn sibling(&self, name: &str) -> String {
        self.path.with_file_name(name).to_str().unwrap().to_owned()
    }

    pub fn open(&self) {
        std::fs::write(&self.path, b"open").unwrap();
    }
}

/// Waits (polling) until `path` exists. Its own deadline is twice [`BOUND`], so that a
/// test's bound always fires first and a forgotten gate cannot hang a worker forever.
pub fn wait_until_exists(path: &str) -> bool {
    let deadline = Instant::now() + 2 * BOUND;
    while !Path::new(path).exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

// ---- job functions (plain `fn`s, so that both pools can run them) ----

pub fn double(x: u64) -> u64 {
    x * 2
}

pub fn fail_on_seven(x: u64) -> u64 {
    assert!(x != 7, "seven is unlucky");
    x
}

/// Blocks until the gate at `gate` opens; returns the worker's pid.
pub fn wait_for_gate(gate: String) -> u32 {
    assert!(wait_until_exists(&gate), "gate never opened");
    std::process::id()
}

/// Writes `mark` (proof that the job ran), then returns the pid.
pub fn leave_mark(mark: String) -> u32 {
    std::fs::write(&mark, b"ran").unwrap();
    std::process::id()
}

/// Writes the worker's pid to `pid_file`, then blocks until `gate` opens.
pub fn report_pid_then_wait((pid_file, gate): (String, String)) -> u32 {
    std::fs::write(&pid_file, std::process::id().to_string()).unwrap();
    assert!(wait_until_exists(&gate), "gate never opened");
    std::process::id()
}

pub fn pid(_: ()) -> u32 {
    std::process::id()
}

/// Reads a pid written by [`report_pid_then_wait`], waiting for the file to appear.
pub fn read_pid(pid_file: &str) -> i32 {
    assert!(
        wait_until_exists(pid_file),
        "the job never reported its pid"
    );
    loop {
        let text = std::fs::read_to_string(pid_file).unwrap();
        if let Ok(pid) = text.trim().parse() {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(1)); // written but not yet complete
    }
}

/// Closes this process's standard output and error, as a daemon does once it runs (a Rust
/// program cannot start with them closed: its runtime opens `/dev/null` on them).
///
/// One of the tests' three `unsafe` blocks, all fault injection: this one in a probe
/// process of its own.
#[allow(unsafe_code)]
pub fn close_stdout_and_stderr() {
    // SAFETY: closing descriptors 1 and 2 frees no memory of this process; what writes to
    // them afterwards (the test harness's output) gets EBADF, which Rust's standard streams
    // ignore.
    unsafe {
        libc::close(1);
        libc::close(2);
    }
}

/// Makes this process's memory unreadable to its workers, as Yama's `ptrace_scope = 1`
/// (Ubuntu's default) does for a user who is not root: workers then cannot borrow large
/// arguments, and the pool writes them to the socket. For the whole test binary, for good.
///
/// One of the tests' three `unsafe` blocks.
#[allow(unsafe_code)]
pub fn workers_cannot_read_this_process() {
    const CAP_SYS_PTRACE: libc::c_ulong = 19;
    // SAFETY: `prctl` with these options takes integers and touches no memory of this
    // process: it drops a capability from the bounding set (workers, started later,
    // lack it) and marks the process not dumpable (no process without it may read it).
    unsafe {
        libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// Stops this process (SIGSTOP) at once, from within, as a freeze from outside would
/// stop it at any instant: a worker then stops with the answers its outbox still holds.
/// (`kill -STOP` from a job takes a process start, long enough for them to go out.)
///
/// One of the tests' three `unsafe` blocks.
#[allow(unsafe_code)]
pub fn stop_this_process() {
    // SAFETY: `raise` takes a signal number and touches no memory of this process.
    unsafe {
        libc::raise(libc::SIGSTOP);
    }
}

/// `true` once `pid` has exited: it is gone, or a zombie waiting for its (new) parent to
/// reap it.
pub fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Waits (polling) until `pid` has exited, failing the test after [`BOUND`]: `why` says
/// what would keep it alive.
pub fn wait_until_gone(pid: u32, why: &str) {
    let deadline = Instant::now() + BOUND;
    while !is_gone(pid) {
        assert!(Instant::now() < deadline, "worker {pid} {why}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `true` while a process with this pid exists (a zombie counts: it has not been reaped).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The lowest descriptor, in `worker`, of its link to the pool: its only socket (a worker
/// has no other unless its job opens one; it reads and writes it through two descriptors).
pub fn link_fd_of(worker: u32) -> u32 {
    let mut sockets: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{worker}/fd"))
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            let target = target.to_str()?.to_owned();
            let fd = entry.file_name().to_str()?.parse().ok()?;
            target.starts_with("socket:[").then_some((fd, target))
        })
        .collect();
    sockets.sort();
    let mut distinct: Vec<&String> = sockets.iter().map(|(_, target)| target).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        1,
        "worker {worker} has one socket: {sockets:?}"
    );
    sockets[0].0
}

/// The name (a path, or `@` and an abstract name) of `worker`'s link to the pool, if it
/// has one: its socket's entry in `/proc/net/unix`. It must be a socket.
pub fn link_name_of(worker: u32) -> Option<String> {
    let fd = link_fd_of(worker);
    let target = std::fs::read_link(format!("/proc/{worker}/fd/{fd}")).unwrap();
    let target = target.to_str().unwrap();
    let inode = target
        .strip_prefix("socket:[")
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or_else(|| panic!("the link is {target}, not a socket"));
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let row = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(6) == Some(&inode))
        .expect("the socket is listed in /proc/net/unix");
    row.get(7).map(|name| name.to_string())
}

/// The error a job gets from a two-worker process pool built with `init`.
pub async fn error_with_initializer(init: fn()) -> procpool::JobError {
    use procpool::ExecutorExt;
    let pool = procpool::ProcessPoolExecutor::builder()
        .max_workers(2)
        .initializer(init)
        .build()
        .unwrap();
    let err = bounded("job", pool.submit(double, 1)).await.unwrap_err();
    assert!(err.is_pool_broken(), "{err:?}");
    err
}

/// The fields of `/proc/<pid>/stat` after the command name (state, ppid, pgrp, ...);
/// `None` once the process is gone.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit(')').next()?;
    Some(after_name.split_whitespace().map(str::to_owned).collect())
}

/// Both pools of `workers` workers, each builder given the same setting by its own
/// function (the two builders are different types).
pub fn pools_built(
    workers: usize,
    threads: impl FnOnce(procpool::ThreadPoolBuilder) -> procpool::ThreadPoolBuilder,
    processes: impl FnOnce(procpool::ProcessPoolBuilder) -> procpool::ProcessPoolBuilder,
) -> Vec<(&'static str, Box<dyn procpool::Executor>)> {
    let thread_pool = threads(procpool::ThreadPoolExecutor::builder().max_workers(workers));
    let process_pool = processes(procpool::ProcessPoolExecutor::builder().max_workers(workers));
    vec![
        ("threads", Box::new(thread_pool.build().unwrap())),
        ("processes", Box::new(process_pool.build().unwrap())),
    ]
}

/// Both pools, behind the same trait object, chosen at run time.
pub fn pools(workers: usize) -> Vec<(&'static str, Box<dyn procpool::Executor>)> {
    vec![
        (
            "threads",
            Box::new(procpool::ThreadPoolExecutor::new(workers).unwrap()),
        ),
        (
            "processes",
            Box::new(
                procpool::ProcessPoolExecutor::builder()
                    .max_workers(workers)
                    .build()
                    .unwrap(),
            ),
        ),
    ]
}

/// Doubles `x`; aborts its worker for `u64::MAX`.
pub fn double_or_abort(x: u64) -> u64 {
    if x == u64::MAX {
        std::process::abort();
    }
    x * 2
}

/// One round of the held-answers check: 2,000 jobs, then one that aborts its worker, then
/// 100 more. Every job before the abort gets its answer though its worker held some back
/// when it died; the abort fails with the worker's SIGABRT; the jobs after it run on a
/// new worker.
pub async fn jobs_around_an_abort(pool: &dyn procpool::Executor, round: u64) {
    use procpool::{ExecutorExt, JobError};
    // Timed as short, so that the pool streams the jobs to a worker a window ahead and
    // the abort arrives right behind the jobs before it.
    for x in 0..200 {
        assert_eq!(pool.submit(double_or_abort, x).await, Ok(x * 2));
    }
    let before: Vec<_> = (0..2_000)
        .map(|x| pool.submit(double_or_abort, x))
        .collect();
    let abort = pool.submit(double_or_abort, u64::MAX);
    let after: Vec<_> = (0..100).map(|x| pool.submit(double_or_abort, x)).collect();
    for (x, handle) in (0..).zip(before) {
        let result = bounded("a job before the abort", handle).await;
        assert_eq!(result, Ok(x * 2), "round {round}: job {x} before the abort");
    }
    match bounded("the abort", abort).await {
        Err(JobError::WorkerDied { exit, .. }) => {
            assert_eq!(exit.signal(), Some(libc::SIGABRT), "round {round}")
        }
        other => panic!("round {round}: the aborting job gave {other:?}"),
    }
    for (x, handle) in (0..).zip(after) {
        let result = bounded("a job after the abort", handle).await;
        assert_eq!(result, Ok(x * 2), "round {round}: job {x} after the abort");
    }
}
