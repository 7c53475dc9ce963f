//! User code in a job's types (`Serialize`, `Deserialize`, `Drop`) runs on the caller's
//! threads, never on the pool's supervision thread: a panic there fails only that job, and
//! a slow one delays nobody else's timers.
//!
//! Regressions: a result whose `Deserialize` panicked, or an argument whose `Serialize`
//! panicked, killed a supervision task (the job never resolved and the next one got
//! `PoolBroken`); an argument that took seconds to serialize held every other job's
//! timeout, cancellation and respawn for as long.

mod common;

use common::*;
use futures::StreamExt;
use procpool::{
    Executor, ExecutorExt, JobError, JobOptions, ProcessPoolExecutor, ReturnWhen, wait,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn pool(workers: usize) -> ProcessPoolExecutor {
    ProcessPoolExecutor::builder()
        .max_workers(workers)
        .build()
        .unwrap()
}

/// Serializes fine; its `Deserialize` panics.
#[derive(Debug, Serialize)]
struct PanicsOnDecode(u8);

impl<'de> Deserialize<'de> for PanicsOnDecode {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("no decoding this")
    }
}

fn make_panics_on_decode(x: u8) -> PanicsOnDecode {
    PanicsOnDecode(x)
}

/// Its `Serialize` panics (a worker never sees one, so its `Deserialize` is plain).
#[derive(Debug, Deserialize)]
struct PanicsOnEncode(u8);

impl Serialize for PanicsOnEncode {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("no encoding this")
    }
}

fn take_panics_on_encode(x: PanicsOnEncode) -> u8 {
    x.0
}

/// Waits until both workers are up (a dead supervision task would leave one slot empty).
async fn until_two_workers(pool: &ProcessPoolExecutor) {
    let deadline = Instant::now() + BOUND;
    while pool.stats().workers_alive != 2 {
        assert!(Instant::now() < deadline, "{:?}", pool.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_result_whose_deserialize_panics_fails_only_its_job() {
    let pool = pool(2);
    let err = bounded("decode", pool.submit(make_panics_on_decode, 1))
        .await
        .unwrap_err();
    match &err {
        JobError::Decode(m) => assert!(m.contains("no decoding this"), "{m}"),
        other => panic!("expected Decode, got {other:?}"),
    }
    for x in 0..20 {
        assert_eq!(bounded("next", pool.submit(double, x)).await, Ok(2 * x));
    }
    until_two_workers(&pool).await;
    // In a chunk, each item fails on its own and the stream goes on.
    let items: Vec<_> = bounded(
        "map",
        pool.map(make_panics_on_decode, 0..4)
            .chunk_size(4)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(items.len(), 4);
    assert!(
        items.iter().all(|r| matches!(r, Err(JobError::Decode(_)))),
        "{items:?}"
    );
    assert_eq!(bounded("after", pool.submit(double, 5)).await, Ok(10));
}

#[tokio::test]
async fn an_argument_whose_serialize_panics_fails_only_its_job() {
    let pool = pool(2);
    let err = bounded(
        "encode",
        pool.submit(take_panics_on_encode, PanicsOnEncode(1)),
    )
    .await
    .unwrap_err();
    match &err {
        JobError::Encode(m) => assert!(m.contains("no encoding this"), "{m}"),
        other => panic!("expected Encode, got {other:?}"),
    }
    for x in 0..20 {
        assert_eq!(bounded("next", pool.submit(double, x)).await, Ok(2 * x));
    }
    until_two_workers(&pool).await;
    let items: Vec<_> = bounded(
        "map",
        pool.map(take_panics_on_encode, (0..3).map(PanicsOnEncode))
            .chunk_size(3)
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(
        items.iter().all(|r| matches!(r, Err(JobError::Encode(_)))),
        "{items:?}"
    );
}

/// Its `Serialize` leaves `started`, then waits for `gate` to open.
#[derive(Debug)]
struct SlowToEncode {
    started: String,
    gate: String,
}

impl Serialize for SlowToEncode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        std::fs::write(&self.started, b"").unwrap();
        assert!(wait_until_exists(&self.gate), "gate never opened");
        serializer.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for SlowToEncode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <()>::deserialize(deserializer)?;
        Ok(SlowToEncode {
            started: String::new(),
            gate: String::new(),
        })
    }
}

fn take_slow(_: SlowToEncode) -> u32 {
    1
}

/// Its `Deserialize` (in the caller) leaves the file named in it, then waits for the gate
/// named in it to open.
#[derive(Debug, Serialize)]
struct SlowToDecode {
    started: String,
    gate: String,
}

impl<'de> Deserialize<'de> for SlowToDecode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (started, gate) = <(String, String)>::deserialize(deserializer)?;
        std::fs::write(&started, b"").unwrap();
        assert!(wait_until_exists(&gate), "gate never opened");
        Ok(SlowToDecode { started, gate })
    }
}

fn make_slow((started, gate): (String, String)) -> SlowToDecode {
    SlowToDecode { started, gate }
}

/// While another job's user code blocks (`busy` leaves `started` and waits for `gate`),
/// a job with a 300 ms limit on the other worker times out all the same.
async fn a_timeout_fires_while(
    pool: &ProcessPoolExecutor,
    busy: impl FnOnce(String, String) + Send + 'static,
) {
    let gate = Gate::new();
    let started = gate.sibling("started");
    let (started_for_job, gate_for_job) = (started.clone(), gate.path());
    let blocked = std::thread::spawn(move || busy(started_for_job, gate_for_job));
    assert!(wait_until_exists(&started), "the user code never ran");
    // Now that user code is blocked, a job that must time out.
    let limit = JobOptions::new().timeout(Duration::from_millis(300));
    let timed = pool.submit_with(wait_for_gate, Gate::new().path(), limit);
    assert_eq!(
        bounded("the timed job", timed).await,
        Err(JobError::TimedOut(Duration::from_millis(300)))
    );
    gate.open();
    bounded_sync("the blocked user code", move || blocked.join().unwrap());
}

#[tokio::test]
async fn a_slow_serialize_delays_no_other_jobs_timer() {
    let pool = pool(2);
    let submitter = pool.clone();
    a_timeout_fires_while(&pool, move |started, gate| {
        let handle = submitter.submit(take_slow, SlowToEncode { started, gate });
        assert_eq!(handle.wait(), Ok(1));
    })
    .await;
}

#[tokio::test]
async fn a_slow_deserialize_delays_no_other_jobs_timer() {
    let pool = pool(2);
    let submitter = pool.clone();
    a_timeout_fires_while(&pool, move |started, gate| {
        let handle = submitter.submit(make_slow, (started, gate));
        assert!(handle.wait().is_ok());
    })
    .await;
}

/// Where the parent dropped the arguments of [`take_recorder`] jobs.
static DROPPED_ON: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records the thread it is dropped on (in the process that drops it).
#[derive(Debug, Serialize, Deserialize)]
struct DropRecorder(u8);

impl Drop for DropRecorder {
    fn drop(&mut self) {
        let name = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        DROPPED_ON.lock().unwrap().push(name);
    }
}

fn take_recorder(r: DropRecorder) -> u8 {
    r.0
}

#[tokio::test]
async fn a_jobs_argument_is_dropped_on_the_submitting_thread() {
    let pool = pool(1);
    let handles: Vec<_> = (0..20)
        .map(|x| pool.submit(take_recorder, DropRecorder(x)))
        .collect();
    for (x, handle) in (0..).zip(handles) {
        assert_eq!(bounded("job", handle).await, Ok(x));
    }
    let dropped = DROPPED_ON.lock().unwrap().clone();
    assert_eq!(dropped.len(), 20, "{dropped:?}");
    assert!(
        dropped.iter().all(|t| t != "procpool-supervisor"),
        "dropped on the pool's thread: {dropped:?}"
    );
}

/// Arguments of [`take_counted`] alive in this process.
static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts its instances alive in the process that holds them; its `Serialize` panics for
/// a multiple of 7.
#[derive(Debug, Deserialize)]
struct Counted(u64);

impl Counted {
    fn new(x: u64) -> Counted {
        LIVE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Counted(x)
    }
}

impl Serialize for Counted {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        assert!(!self.0.is_multiple_of(7), "no encoding a multiple of 7");
        self.0.serialize(serializer)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn take_counted(x: Counted) -> u64 {
    x.0 * 2
}

#[tokio::test]
async fn a_map_drops_each_argument_once_it_is_encoded_and_a_failed_one_fails_alone() {
    let pool = pool(2);
    // Each argument is made as the map pulls it; how many were alive at that moment says
    // whether the map gathers a chunk of arguments (1,000 alive) or encodes each at once.
    let most_alive = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = most_alive.clone();
    let source = (0..3_000).map(move |x| {
        seen.fetch_max(
            LIVE.load(std::sync::atomic::Ordering::SeqCst),
            std::sync::atomic::Ordering::SeqCst,
        );
        Counted::new(x)
    });
    let results: Vec<_> = bounded(
        "map",
        pool.map(take_counted, source)
            .chunk_size(1_000)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(results.len(), 3_000);
    for (x, result) in (0..).zip(&results) {
        match result {
            Err(JobError::Encode(m)) if x % 7 == 0 => {
                assert!(m.contains("no encoding a multiple of 7"), "{m}")
            }
            Ok(doubled) if x % 7 != 0 => assert_eq!(*doubled, 2 * x),
            other => panic!("item {x}: {other:?}"),
        }
    }
    let most = most_alive.load(std::sync::atomic::Ordering::SeqCst);
    assert!(most <= 1, "{most} arguments were alive at once");
    assert_eq!(LIVE.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A price that refuses, in its `Serialize`, to be negative (with an error, not a panic).
#[derive(Debug, Deserialize)]
struct Price(i64);

impl Serialize for Price {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 < 0 {
            return Err(serde::ser::Error::custom(format!(
                "a price cannot be negative ({})",
                self.0
            )));
        }
        s.serialize_i64(self.0)
    }
}

fn cents(price: Price) -> i64 {
    price.0 * 100
}

/// The same refusal in a result, made on the worker.
fn negated(price: i64) -> Price {
    Price(-price)
}

#[tokio::test]
async fn a_serialize_error_keeps_its_own_message() {
    // postcard alone reports "Serde Serialization Error" for any of these.
    let pool = pool(1);
    let submitted = bounded("submit", pool.submit(cents, Price(-5))).await;
    match &submitted {
        Err(JobError::Encode(m)) => {
            assert!(m.contains("a price cannot be negative (-5)"), "{m}");
            assert!(m.contains("Price"), "names the type: {m}");
        }
        other => panic!("expected Encode, got {other:?}"),
    }
    let items: Vec<_> = bounded(
        "map",
        pool.map(cents, [Price(1), Price(-2), Price(3)])
            .chunk_size(3)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(items[0], Ok(100));
    assert!(
        matches!(&items[1], Err(JobError::Encode(m)) if m.contains("cannot be negative (-2)")),
        "{:?}",
        items[1]
    );
    assert_eq!(items[2], Ok(300));
    let answered = bounded("a result", pool.submit(negated, 7)).await;
    assert!(
        matches!(&answered, Err(e) if e.to_string().contains("a price cannot be negative (-7)")),
        "{answered:?}"
    );
}

/// Encodes fine in the worker; its `Deserialize` (run in the parent) fails.
#[derive(Debug, Serialize)]
struct FailsToDecode(u8);

impl<'de> Deserialize<'de> for FailsToDecode {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("no decoding this"))
    }
}

fn make_fails_to_decode(x: u8) -> FailsToDecode {
    FailsToDecode(x)
}

fn gated_fails_to_decode(gate: String) -> FailsToDecode {
    assert!(wait_until_exists(&gate), "gate never opened");
    FailsToDecode(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_first_error_returns_on_a_result_that_fails_to_decode() {
    let pool = ProcessPoolExecutor::builder()
        .max_workers(2)
        .build()
        .unwrap();
    let gate = Gate::new();
    let handles = vec![
        pool.submit(gated_fails_to_decode, gate.path()),
        pool.submit(make_fails_to_decode, 1),
    ];
    // The second job has finished (and the first cannot until the gate opens).
    let first = bounded(
        "first completed",
        wait(handles, ReturnWhen::FirstCompleted, None),
    )
    .await;
    assert_eq!((first.done.len(), first.pending.len()), (1, 1));
    let handles: Vec<_> = first.pending.into_iter().chain(first.done).collect();
    // One of them has ended with an error (awaiting it gives Decode): FirstError must return.
    let waited = tokio::time::timeout(
        Duration::from_secs(15),
        wait(handles, ReturnWhen::FirstError, None),
    )
    .await;
    gate.open();
    let waited =
        waited.expect("wait(FirstError) did not return though a finished job's result is an error");
    assert_eq!(waited.done.len(), 1);
    let failed = waited.done.into_iter().next().unwrap();
    assert!(matches!(
        bounded("failed", failed).await,
        Err(JobError::Decode(_))
    ));
    pool.shutdown().await;
}
