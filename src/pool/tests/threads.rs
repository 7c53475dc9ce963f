//! The core over a second backend, of threads ([`Threads`]), which cannot stop a running
//! job: what the core promises then, and the core's scheduling (windows, give-back) seen
//! without processes.

use super::*;

/// A backend whose workers are threads of this process, each running the worker loop over
/// one end of a socket pair: a second implementation of the boundary, which cannot stop a
/// running job (a thread cannot be killed). Its workers' memory, if it reports any, is
/// what a test sets in a [`Gauge`].
struct Threads {
    respawn: bool,
    started: AtomicU64,
    memory: Option<Arc<Gauge>>,
    /// How many more requests to take jobs back, from any worker, find it not started on
    /// the head yet (as a process still reading it would be).
    not_yet: Arc<std::sync::atomic::AtomicU32>,
    /// Whether the pool may "stop" a running job (the link detaches its thread), so that
    /// `cancel()` reaches jobs its workers hold.
    stoppable: bool,
    /// Holds back what the links deliver while it is set, as a pool that has not read its
    /// socket yet would: shared by the backend's links.
    hold: Option<Arc<Hold>>,
}

/// While set, the links read nothing from their sockets; a link's `kill` releases it.
#[derive(Default)]
struct Hold {
    held: std::sync::atomic::AtomicBool,
    changed: tokio::sync::Notify,
}

impl Hold {
    fn set(&self, held: bool) {
        self.held.store(held, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Resolves once nothing is held.
    async fn released(&self) {
        loop {
            let changed = self.changed.notified();
            if !self.held.load(Ordering::SeqCst) {
                return;
            }
            changed.await;
        }
    }

    /// Resolves once something is held.
    async fn holding(&self) {
        loop {
            let changed = self.changed.notified();
            if self.held.load(Ordering::SeqCst) {
                return;
            }
            changed.await;
        }
    }
}

/// The resident memory a [`Threads`] backend reports for every worker. A test sets
/// `pending`; it becomes the reported value when the link delivers its next frame, so that
/// it rises exactly between two answers, at no time a memory poll could see first.
#[derive(Default)]
struct Gauge {
    resident: AtomicU64,
    pending: AtomicU64,
}

/// One worker thread and the pool's end of its socket.
struct ThreadWorker {
    conn: Framed<tokio::net::UnixStream, Codec<FromWorker>>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
    id: WorkerId,
    memory: Option<Arc<Gauge>>,
    /// The word the thread claims jobs in.
    claims: Arc<AtomicU64>,
    /// Shared with the backend: see [`Threads::not_yet`].
    not_yet: Arc<std::sync::atomic::AtomicU32>,
    /// Shared with the backend: see [`Threads::hold`].
    hold: Option<Arc<Hold>>,
}

impl ThreadWorker {
    fn exit(&self) -> ExitInfo {
        ExitInfo::unknown().of(self.id)
    }

    /// The next frame, or the thread's end.
    async fn next(&mut self) -> Received {
        if let Some(hold) = self.hold.clone() {
            loop {
                hold.released().await;
                tokio::select! {
                    biased;
                    () = hold.holding() => {}
                    received = self.next_now() => return received,
                }
            }
        }
        self.next_now().await
    }

    /// The next frame, or the thread's end, however [`Hold`] is.
    async fn next_now(&mut self) -> Received {
        let Some(done) = self.done.as_mut() else {
            // Detached or ended: the link's end is all there is to wait for.
            return match self.conn.next().await {
                None => Received::Exited(self.exit()),
                item => Received::from_stream(item),
            };
        };
        tokio::select! {
            biased;
            item = self.conn.next() => Received::from_stream(item),
            _ = done => {
                self.done = None;
                Received::Exited(self.exit())
            }
        }
    }
}

impl Backend for Threads {
    type Link = ThreadWorker;

    fn caps(&self) -> Caps {
        Caps {
            respawn: self.respawn,
            stop_running: self.stoppable,
            memory: self.memory.is_some(),
            lead: Duration::ZERO,
            wake_idle_last: false,
        }
    }

    async fn start(&self, _slot: usize, _: &CancellationToken) -> Result<ThreadWorker, StartError> {
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        let transient = |e: std::io::Error| StartError::Transient(e.to_string());
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(transient)?;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let claims = Arc::new(AtomicU64::new(0));
        let word = claims.clone();
        std::thread::spawn(move || {
            let mut conn = worker::Conn::new(theirs, HANDSHAKE_MAX_FRAME);
            let me = worker::Identity {
                worker_id: n,
                secret: [0; 32],
            };
            let _ = worker::serve(&mut conn, &me, Some(&word), None);
            let _ = done_tx.send(());
        });
        ours.set_nonblocking(true).map_err(transient)?;
        let stream = tokio::net::UnixStream::from_std(ours).map_err(transient)?;
        let mut link = ThreadWorker {
            conn: Framed::new(stream, Codec::new(1 << 20)),
            done: Some(done_rx),
            id: WorkerId::of_rank(u32::try_from(n).unwrap_or(u32::MAX)),
            memory: self.memory.clone(),
            claims,
            not_yet: self.not_yet.clone(),
            hold: self.hold.clone(),
        };
        let Received::Frame(Frame {
            message: FromWorker::Hello(hello),
            ..
        }) = link.recv().await
        else {
            return Err(StartError::Transient("no hello".into()));
        };
        let (image, probe) = (hello.image, hello.probe);
        let mut welcome = bytes::BytesMut::new();
        let message = ToWorker::Welcome {
            image,
            probe,
            initializers: Vec::new(),
            max_frame: 1 << 20,
            lending: None,
        };
        put_frame(&message, &[], 1 << 20, &mut welcome).unwrap();
        link.send(&welcome, &bytes::Bytes::new())
            .await
            .map_err(transient)?;
        match link.recv().await {
            Received::Frame(Frame {
                message: FromWorker::Ready { .. },
                ..
            }) => Ok(link),
            other => Err(StartError::Transient(other.describe())),
        }
    }

    fn resident_memory(&self, _: WorkerId) -> Option<u64> {
        let gauge = self.memory.as_ref()?;
        Some(gauge.resident.load(Ordering::SeqCst))
    }
}

impl WorkerLink for ThreadWorker {
    fn id(&self) -> WorkerId {
        self.id
    }

    async fn send(&mut self, frames: &[u8], payload: &bytes::Bytes) -> std::io::Result<()> {
        let stream = self.conn.get_mut();
        stream.write_all(frames).await?;
        stream.write_all(payload).await
    }

    async fn recv(&mut self) -> Received {
        let received = self.next().await;
        if let (Received::Frame(_), Some(gauge)) = (&received, &self.memory) {
            let pending = gauge.pending.swap(0, Ordering::SeqCst);
            if pending > 0 {
                gauge.resident.store(pending, Ordering::SeqCst);
            }
        }
        received
    }

    async fn exited(&mut self) -> ExitInfo {
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        self.exit()
    }

    /// A thread cannot be stopped: shuts its socket, so that it takes no further job, and
    /// detaches it.
    async fn kill(&mut self) -> ExitInfo {
        if let Some(hold) = &self.hold {
            hold.set(false);
        }
        let _ = self.conn.get_mut().shutdown().await;
        self.done = None;
        self.exit()
    }

    fn can_revoke(&self) -> bool {
        true
    }

    fn revoke(&self, from: u64, next: u64) -> crate::wire::claims::Revoke {
        let not_yet = self
            .not_yet
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if not_yet.is_ok() {
            return crate::wire::claims::Revoke::NotYet;
        }
        crate::wire::claims::revoke(&self.claims, from, next)
    }
}

/// A pool of `workers` threads behind the supervision core.
fn thread_pool(workers: usize, respawn: bool) -> Pool {
    thread_pool_with(workers, respawn, None)
}

/// The same, reporting memory from `gauge` against a ceiling of `limit` bytes.
fn thread_pool_with(workers: usize, respawn: bool, memory: Option<(u64, Arc<Gauge>)>) -> Pool {
    thread_pool_of(workers, respawn, memory, Arc::default())
}

/// The same, as many requests to take jobs back as `not_yet` says (when they are made)
/// coming too early.
fn thread_pool_of(
    workers: usize,
    respawn: bool,
    memory: Option<(u64, Arc<Gauge>)>,
    not_yet: Arc<std::sync::atomic::AtomicU32>,
) -> Pool {
    let config = Config {
        max_workers: workers,
        max_tasks_per_child: None,
        max_frame: 1 << 20,
        job_timeout: None,
        max_worker_memory: memory.as_ref().map(|(limit, _)| *limit),
        max_queued: None,
    };
    let backend = Threads {
        respawn,
        started: AtomicU64::new(0),
        memory: memory.map(|(_, gauge)| gauge),
        not_yet,
        stoppable: false,
        hold: None,
    };
    Pool::start(config, || Ok(backend)).unwrap()
}

fn submit<A, R>(pool: &Pool, f: fn(A) -> R, arg: A, options: JobOptions) -> JobHandle<R>
where
    A: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    R: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let job = ErasedJob::single(f, arg).with_options(options);
    JobHandle::from_erased(pool.core.execute(job).expect("the pool is open"))
}

/// Waits (in the worker) until `gate` exists, for at most [`BOUND`].
fn hold(gate: PathBuf) -> u64 {
    gated((gate, false))
}

#[test]
fn another_backend_plugs_in_under_the_same_core() {
    bounded(|| {
        let pool = thread_pool(2, true);
        let handles: Vec<_> = (0..1000)
            .map(|x| submit(&pool, double, x, JobOptions::new()))
            .collect();
        for (x, handle) in (0..).zip(handles) {
            assert_eq!(handle.wait(), Ok(2 * x));
        }
        // The pool does not wait for its workers to start: the first may have run all
        // 1000 jobs before the second is up.
        let deadline = Instant::now() + BOUND / 4;
        while pool.core.stats().workers_alive != 2 {
            assert!(Instant::now() < deadline, "{:?}", pool.core.stats());
            std::thread::sleep(Duration::from_millis(1));
        }
        let stats = pool.core.stats();
        assert_eq!(stats.jobs_completed, 1000, "{stats:?}");
        assert_eq!(stats.workers_alive, 2, "{stats:?}");
        assert_eq!(stats.respawns, 0, "{stats:?}");
    });
}

#[test]
fn a_running_job_a_backend_cannot_stop_is_not_cancelled() {
    bounded(|| {
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("gate");
        let pool = thread_pool(1, true);
        let running = submit(&pool, hold, gate.clone(), JobOptions::new());
        let core = pool.core.clone();
        let deadline = Instant::now() + BOUND;
        while core.stats().workers_busy != 1 {
            assert!(Instant::now() < deadline, "the job never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!running.cancel(), "a thread cannot be stopped");
        open(&gate);
        assert_eq!(running.wait(), Ok(7), "the job ran to its end");
        assert_eq!(core.stats().respawns, 0);
    });
}

#[test]
fn a_job_past_its_limit_fails_and_its_unstoppable_worker_is_replaced() {
    bounded(|| {
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("gate");
        let pool = thread_pool(1, true);
        let limit = JobOptions::new().timeout(Duration::from_millis(50));
        let late = submit(&pool, hold, gate.clone(), limit);
        assert_eq!(
            late.wait(),
            Err(JobError::TimedOut(Duration::from_millis(50)))
        );
        // The detached thread still runs its job; a new worker serves meanwhile.
        assert_eq!(submit(&pool, double, 4, JobOptions::new()).wait(), Ok(8));
        assert_eq!(pool.core.stats().respawns, 1);
        open(&gate);
    });
}

#[test]
fn a_pool_that_cannot_replace_its_last_worker_breaks_instead_of_hanging() {
    bounded(|| {
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("gate");
        let pool = thread_pool(1, false);
        let limit = JobOptions::new().timeout(Duration::from_millis(50));
        let late = submit(&pool, hold, gate.clone(), limit);
        let queued = submit(&pool, double, 1, JobOptions::new());
        assert!(late.wait().unwrap_err().is_timeout());
        let err = queued.wait().unwrap_err();
        assert!(err.is_pool_broken(), "{err:?}");
        assert!(err.to_string().contains("cannot replace"), "{err}");
        open(&gate);
    });
}

/// Jobs of [`count`] run, in this process.
static COUNTED: AtomicU64 = AtomicU64::new(0);

/// Counts that it ran.
fn count(_: ()) -> u64 {
    COUNTED.fetch_add(1, Ordering::SeqCst)
}

// Regression: a worker found over the memory limit after an answer was retired with the
// next job already running on it (the line promotes it while reading the answers at
// hand): that job was dropped unanswered, its caller waited forever, and the jobs behind
// it were put back in the queue while the worker still ran them, so they ran twice.
#[test]
fn a_worker_retired_over_the_memory_limit_finishes_the_jobs_it_holds_once_each() {
    bounded(|| {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("first"), dir.path().join("second"));
        let gauge = Arc::new(Gauge::default());
        let pool = thread_pool_with(1, true, Some((100, gauge.clone())));
        let never = JobOptions::new();
        // Jobs are timed per function pointer, and an optimized build may give a small
        // function a copy of its own where a closure takes its address: each is taken once.
        let hold: fn(PathBuf) -> u64 = hold;
        let count: fn(()) -> u64 = count;
        // A round in which the worker's line did not take all six jobs (a loaded machine
        // timed the warm-up long, and the rest waited in the queue) runs again.
        let (counted, leaking, next, behind) = 'round: {
            for round in 1..=10 {
                let _ = std::fs::remove_file(&first);
                let _ = std::fs::remove_file(&second);
                // Time both functions, so that they stream behind each other.
                for _ in 0..50 {
                    assert_eq!(submit(&pool, hold, dir.path().into(), never).wait(), Ok(7));
                    submit(&pool, count, (), never).wait().unwrap();
                }
                let counted = COUNTED.load(Ordering::SeqCst);
                let leaking = submit(&pool, hold, first.clone(), never);
                let next = submit(&pool, hold, second.clone(), never);
                let behind: Vec<_> = (0..5).map(|_| submit(&pool, count, (), never)).collect();
                let core = &pool.core;
                let deadline = Instant::now() + BOUND / 4;
                while core.counters.waiting() + core.queue.len() != 6 {
                    assert!(Instant::now() < deadline, "the jobs never settled");
                    std::thread::sleep(Duration::from_millis(1));
                }
                if core.counters.waiting() == 6 {
                    break 'round (counted, leaking, next, behind);
                }
                open(&first);
                open(&second);
                for handle in [leaking, next].into_iter().chain(behind) {
                    assert!(handle.wait().is_ok());
                }
                println!("round {round}: the line did not take all six jobs");
            }
            panic!("in 10 rounds, the worker's line never took all six jobs");
        };
        // The worker grows past the limit with the first job's answer.
        gauge.pending.store(200, Ordering::SeqCst);
        open(&first);
        assert_eq!(leaking.wait(), Ok(7));
        open(&second);
        assert_eq!(
            next.wait(),
            Ok(7),
            "the job running when the worker was found over"
        );
        for handle in behind {
            assert!(handle.wait().is_ok());
        }
        assert_eq!(
            COUNTED.load(Ordering::SeqCst) - counted,
            5,
            "each job ran once"
        );
        gauge.resident.store(0, Ordering::SeqCst);
        assert_eq!(submit(&pool, double, 4, never).wait(), Ok(8));
        assert_eq!(pool.core.stats().respawns, 1, "the worker was replaced");
    });
}

// ---------------------------------------------------------------- jobs given back

/// Jobs of [`tally`] run, in this process.
static TALLIED: AtomicU64 = AtomicU64::new(0);

/// Counts that it ran; returns `x`.
fn tally(x: u64) -> u64 {
    TALLIED.fetch_add(1, Ordering::SeqCst);
    x
}

/// Waits for `gate` as [`hold`] does: a function the pool has never timed.
fn block(gate: PathBuf) -> u64 {
    gated((gate, false))
}

#[test]
fn jobs_waiting_behind_a_slow_job_go_to_a_worker_that_becomes_idle() {
    bounded(|| jobs_behind_a_slow_job_are_given_back(0));
}

/// A worker asked before it has started the slow job (a process may still be reading it)
/// is asked again: asking once per head would leave the jobs behind it waiting.
#[test]
fn jobs_behind_a_slow_job_are_taken_back_once_the_worker_has_started_it() {
    bounded(|| jobs_behind_a_slow_job_are_given_back(3));
}

/// Both tests count the jobs that ran in one static.
static GIVE_BACK_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn jobs_behind_a_slow_job_are_given_back(too_early: u32) {
    let _alone = GIVE_BACK_TESTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("first"), dir.path().join("second"));
        let not_yet = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let pool = thread_pool_of(2, true, None, not_yet.clone());
        let never = JobOptions::new();
        let hold: fn(PathBuf) -> u64 = hold;
        let tally: fn(u64) -> u64 = tally;
        let block: fn(PathBuf) -> u64 = block;
        // Whether the jobs behind the slow one wait in its line or in the queue depends
        // on how long this machine takes to dispatch them (a head that has run past its
        // estimate takes no more behind it): a round in which none waited in a line
        // asks no worker anything, and is run again.
        for round in 1.. {
            let _ = std::fs::remove_file(&first);
            let _ = std::fs::remove_file(&second);
            // One worker runs a job of unknown length: nothing joins it...
            let busy = submit(&pool, block, first.clone(), never);
            let deadline = Instant::now() + BOUND / 2;
            while pool.core.stats().workers_busy != 1 {
                assert!(Instant::now() < deadline, "the first job never started");
                std::thread::sleep(Duration::from_millis(1));
            }
            // ...so the other times `hold` and `tally` as short (and forgets a slow `hold`
            // of an earlier round), that they stream behind each other...
            for _ in 0..50 {
                let pair = [
                    submit(&pool, hold, dir.path().into(), never),
                    submit(&pool, tally, 1, never),
                ];
                for handle in pair {
                    assert!(handle.wait().is_ok());
                }
            }
            // ...then takes a short-looking job that turns out slow, and the jobs behind it.
            not_yet.store(too_early, Ordering::SeqCst);
            let slow = submit(&pool, hold, second.clone(), never);
            let tallied = TALLIED.load(Ordering::SeqCst);
            let behind: Vec<_> = (0..20).map(|x| submit(&pool, tally, x, never)).collect();
            let core = &pool.core;
            while core.counters.waiting() + core.queue.len() != 20 {
                assert!(Instant::now() < deadline, "the jobs never settled");
                std::thread::sleep(Duration::from_millis(1));
            }
            let in_line = core.counters.waiting();
            // The first worker becomes idle: the jobs waiting behind the slow one go to it.
            open(&first);
            assert_eq!(busy.wait(), Ok(7));
            for (x, handle) in (0..).zip(behind) {
                match handle.wait_timeout(Duration::from_secs(10)) {
                    Ok(result) => assert_eq!(result, Ok(x)),
                    Err(_) => panic!("job {x} still waits behind the slow one"),
                }
            }
            assert!(!slow.is_finished(), "they did not wait for the slow job");
            open(&second);
            assert_eq!(slow.wait(), Ok(7));
            assert_eq!(
                TALLIED.load(Ordering::SeqCst) - tallied,
                20,
                "each ran once"
            );
            if in_line > 0 {
                assert_eq!(
                    not_yet.load(Ordering::SeqCst),
                    0,
                    "asked {too_early} times too early"
                );
                break;
            }
            assert!(
                round < 10,
                "in 10 rounds, no job waited in the slow job's line"
            );
        }
        // The worker that skipped them goes on serving.
        let after: Vec<_> = (0..100).map(|x| submit(&pool, tally, x, never)).collect();
        for (x, handle) in (0..).zip(after) {
            assert_eq!(handle.wait(), Ok(x));
        }
        let stats = pool.core.stats();
        assert_eq!(stats.respawns, 0, "{stats:?}");
        assert_eq!(stats.jobs_queued, 0, "{stats:?}");
    }
}

/// A pool of one thread worker that the pool may "stop" (detach), whose link holds back
/// what it delivers while `hold` is set.
fn stoppable_thread_pool(hold: Arc<Hold>) -> Pool {
    let config = Config {
        max_workers: 1,
        max_tasks_per_child: None,
        max_frame: 1 << 20,
        job_timeout: None,
        max_worker_memory: None,
        max_queued: None,
    };
    let backend = Threads {
        respawn: true,
        started: AtomicU64::new(0),
        memory: None,
        not_yet: Arc::default(),
        stoppable: true,
        hold: Some(hold),
    };
    Pool::start(config, || Ok(backend)).unwrap()
}

/// Leaves the mark `mark` (which must not exist yet: a job that runs twice panics), then
/// waits for `gate`, if any.
fn mark_then_wait((mark, gate): (PathBuf, Option<PathBuf>)) -> u64 {
    std::fs::File::create_new(&mark).expect("the job ran once");
    if let Some(gate) = gate {
        hold(gate);
    }
    1
}

fn until_true(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND / 2;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A worker lost (here: stopped for a `cancel()`) with answers the pool has not read
/// yet: the answer of the head, those of jobs taken back from it (skipped), then the
/// answer of a job sent after them. Every answer there is taken: the job that answered
/// completes, and only the job running when it was lost ends with the loss's error.
#[test]
fn answers_after_skipped_ones_are_taken_when_a_worker_is_lost() {
    bounded(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let hold_flag = Arc::new(Hold::default());
        let pool = stoppable_thread_pool(hold_flag.clone());
        let never = JobOptions::new();
        let step: fn((PathBuf, Option<PathBuf>)) -> u64 = mark_then_wait;
        let untimed: fn(PathBuf) -> u64 = block;
        for x in 0..100 {
            let warm = submit(&pool, step, (path(&format!("warm-{x}")), None), never);
            assert_eq!(warm.wait(), Ok(1));
        }
        let core = &pool.core;
        // Queued behind a job of a function not timed, the four are written together.
        let first = submit(&pool, untimed, path("first"), never);
        until_true("the untimed job never started", || {
            core.stats().workers_busy == 1
        });
        let head = submit(&pool, step, (path("head"), Some(path("head-gate"))), never);
        let cancelled = submit(&pool, step, (path("cancelled"), None), never);
        let kept = submit(&pool, step, (path("kept"), None), never);
        let last = submit(&pool, step, (path("last"), Some(path("last-gate"))), never);
        open(&path("first"));
        assert_eq!(first.wait(), Ok(7));
        until_true("the four were never written together", || {
            path("head").exists() && core.counters.waiting() == 3
        });
        // Taken back with the cancelled one, `kept` and `last` are written again behind
        // the head.
        assert!(cancelled.cancel());
        assert_eq!(cancelled.wait(), Err(JobError::Cancelled));
        until_true("the two were never written again", || {
            core.queue.len() == 0 && core.counters.waiting() == 2
        });
        // The worker answers the head, skips the three taken back, answers `kept` and
        // runs `last`, none of which the pool reads yet.
        hold_flag.set(true);
        open(&path("head-gate"));
        until_true("the last job never started", || path("last").exists());
        assert!(path("kept").exists());
        // The head's stop kills the worker, then the pool reads what it answered.
        assert!(head.cancel());
        assert_eq!(head.wait(), Ok(1), "it had answered: the result wins");
        let kept = kept.wait();
        let last = last.wait();
        open(&path("last-gate"));
        assert_eq!(kept, Ok(1), "it ran and answered; it was not cancelled");
        assert_eq!(
            last,
            Err(JobError::Cancelled),
            "the job running when the worker was stopped ends, and does not run again"
        );
    });
}
