//! The `Executor` / `ExecutorExt` contract, checked on both pools through `Box<dyn Executor>`.

mod common;

use common::*;
use futures::{StreamExt, TryStreamExt};
use procpool::{
    Executor, ExecutorExt, JobError, ProcessPoolExecutor, ReturnWhen, ThreadPoolExecutor,
    as_completed, wait,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[tokio::test]
async fn submit_returns_the_result_on_both_pools() {
    for (name, pool) in pools(2) {
        let handle = pool.submit(double, 21);
        assert_eq!(bounded(name, handle).await, Ok(42), "{name}");
        let closure = pool.submit(|(a, b): (u64, String)| format!("{b}{a}"), (7, "x".into()));
        assert_eq!(bounded(name, closure).await.unwrap(), "x7", "{name}");
        assert_eq!(pool.max_workers(), 2, "{name}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn works_under_a_current_thread_runtime() {
    for (name, pool) in pools(2) {
        let handles: Vec<_> = (0..50).map(|i| pool.submit(double, i)).collect();
        let results = bounded(name, futures::future::join_all(handles)).await;
        let values: Vec<u64> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(values, (0..50).map(|i| i * 2).collect::<Vec<_>>(), "{name}");
    }
}

#[test]
fn works_from_synchronous_code_without_a_runtime() {
    bounded_sync("blocking waits", || {
        for (name, pool) in pools(2) {
            assert_eq!(pool.submit(double, 5).wait(), Ok(10), "{name}");
            let mut handle = pool.submit(wait_for_gate, Gate::new().path());
            // The gate is never opened before the timeout: the handle comes back.
            handle = match handle.wait_timeout(std::time::Duration::from_millis(20)) {
                Err(handle) => handle,
                Ok(result) => panic!("{name}: finished without its gate: {result:?}"),
            };
            assert!(!handle.is_finished(), "{name}");
            drop(handle); // detaches; the pool's drop ends it
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arc_dyn_executor_is_shared_across_tasks() {
    for (name, pool) in pools(2) {
        let pool: Arc<dyn Executor> = Arc::from(pool);
        let tasks: Vec<_> = (0..8_u64)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.submit(double, i).await })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let result = bounded(name, task).await.unwrap();
            assert_eq!(result, Ok(2 * i as u64), "{name}");
        }
    }
}

#[tokio::test]
async fn map_is_ordered_for_every_chunk_size() {
    for (name, pool) in pools(2) {
        // The last two: far larger than the input, "everything in one chunk" (room is not
        // set aside for that many items ahead: that was a capacity-overflow panic for
        // usize::MAX, an aborted process for 2^40).
        for chunk in [1, 7, 1000, usize::MAX, 1 << 40] {
            let out: Vec<u64> = bounded(
                name,
                pool.map(double, 0..2500).chunk_size(chunk).try_collect(),
            )
            .await
            .unwrap();
            assert_eq!(
                out,
                (0..2500).map(|x| x * 2).collect::<Vec<_>>(),
                "{name} chunk {chunk}"
            );
        }
        let auto: Vec<u64> = bounded(name, pool.map(double, 0..2500).try_collect())
            .await
            .unwrap();
        assert_eq!(auto.len(), 2500, "{name} automatic chunk size");
        let empty: Vec<u64> = bounded(name, pool.map(double, Vec::new()).try_collect())
            .await
            .unwrap();
        assert!(empty.is_empty());
    }
}

#[tokio::test]
async fn a_failing_item_fails_only_itself_inside_a_chunk() {
    for (name, pool) in pools(2) {
        let results: Vec<Result<u64, JobError>> = bounded(
            name,
            pool.map(fail_on_seven, 0..20).chunk_size(10).collect(),
        )
        .await;
        assert_eq!(results.len(), 20, "{name}");
        for (i, result) in results.iter().enumerate() {
            if i == 7 {
                let err = result.as_ref().unwrap_err();
                assert!(err.is_panic(), "{name}: {err}");
                assert_eq!(err.panic_message(), Some("seven is unlucky"), "{name}");
            } else {
                assert_eq!(result, &Ok(i as u64), "{name}");
            }
        }
    }
}

fn label(x: u64) -> String {
    format!("#{x}")
}

#[tokio::test]
async fn try_collect_vec_gives_what_try_collect_does() {
    for (name, pool) in pools(2) {
        for chunk in [Some(1), Some(7), Some(1000), None] {
            let map = pool.map(double, 0..2500);
            let map = match chunk {
                Some(c) => map.chunk_size(c),
                None => map,
            };
            let out = bounded(name, map.try_collect_vec()).await.unwrap();
            let want: Vec<u64> = (0..2500).map(|x| x * 2).collect();
            assert_eq!(out, want, "{name} chunk {chunk:?}");
        }
        // Results that are not plain numbers take the general decoding path.
        let labels = bounded(
            name,
            pool.map(label, 0..300).chunk_size(7).try_collect_vec(),
        )
        .await
        .unwrap();
        assert_eq!(labels, (0..300).map(label).collect::<Vec<_>>(), "{name}");
        let mut unordered = bounded(
            name,
            pool.map_unordered(double, 0..500)
                .chunk_size(9)
                .try_collect_vec(),
        )
        .await
        .unwrap();
        unordered.sort_unstable();
        assert_eq!(
            unordered,
            (0..500).map(|x| x * 2).collect::<Vec<_>>(),
            "{name}"
        );
        let empty = bounded(name, pool.map(double, Vec::new()).try_collect_vec()).await;
        assert_eq!(empty, Ok(Vec::new()), "{name}");
    }
}

#[tokio::test]
async fn try_collect_vec_stops_at_the_first_failed_item() {
    for (name, pool) in pools(2) {
        // Item 7 first in its chunk (7), in the middle (3, 10), and alone (1).
        for chunk in [1, 3, 7, 10] {
            let result = bounded(
                name,
                pool.map(fail_on_seven, 0..40)
                    .chunk_size(chunk)
                    .try_collect_vec(),
            )
            .await;
            let err = result.expect_err(name);
            assert_eq!(
                err.panic_message(),
                Some("seven is unlucky"),
                "{name} chunk {chunk}: {err}"
            );
        }
        assert_eq!(bounded(name, pool.submit(double, 4)).await, Ok(8), "{name}");
    }
}

fn sign_of(x: f64) -> i8 {
    if x.is_nan() {
        0
    } else if x < 0.0 {
        -1
    } else {
        1
    }
}

fn widen(x: i8) -> isize {
    isize::from(x) * 1_000_000
}

fn odd(x: u16) -> bool {
    x % 2 == 1
}

fn flip(b: bool) -> f32 {
    if b { -1.5 } else { 2.5 }
}

#[tokio::test]
async fn plain_values_of_every_width_round_trip_through_map() {
    // Integers, floats and bools travel packed between processes (not through serde):
    // check each width in both directions, on both pools.
    let floats = vec![-2.5, 0.0, f64::INFINITY, f64::NAN, -0.0, f64::MIN];
    for (name, pool) in pools(2) {
        let signs: Vec<i8> = bounded(name, pool.map(sign_of, floats.clone()).try_collect())
            .await
            .unwrap();
        assert_eq!(signs, vec![-1, 1, 1, 0, 1, -1], "{name}");
        let wide: Vec<isize> = bounded(name, pool.map(widen, i8::MIN..=i8::MAX).try_collect())
            .await
            .unwrap();
        assert_eq!(
            wide,
            (-128..=127).map(|x| x * 1_000_000).collect::<Vec<_>>(),
            "{name}"
        );
        let odds: Vec<bool> = bounded(name, pool.map(odd, [0, 1, u16::MAX]).try_collect())
            .await
            .unwrap();
        assert_eq!(odds, vec![false, true, true], "{name}");
        let flipped: Vec<f32> = bounded(name, pool.map(flip, [true, false]).try_collect())
            .await
            .unwrap();
        assert_eq!(flipped, vec![-1.5, 2.5], "{name}");
    }
}

/// Halves each float, keeping NaN's bits.
fn halve(v: Vec<f64>) -> Vec<f64> {
    v.into_iter().map(|x| x / 2.0).collect()
}

/// Which of the numbers are even.
fn evens(v: Vec<usize>) -> Vec<bool> {
    v.into_iter().map(|x| x % 2 == 0).collect()
}

/// The sum of the signs, as a vector of one.
fn sum_signs(v: Vec<i8>) -> Vec<i64> {
    vec![v.into_iter().map(i64::from).sum()]
}

#[tokio::test]
async fn vectors_of_plain_values_round_trip_as_jobs_and_as_items() {
    // A `Vec` of integers, floats or bools travels packed between processes (not through
    // serde), as a job's argument and result and as a map item: check contents and edge
    // values (NaN's bits, usize::MAX, empty vectors) on both pools.
    let floats: Vec<f64> = (0..1 << 20)
        .map(|i| i as f64 - 0.5)
        .chain([f64::NAN, -0.0])
        .collect();
    for (name, pool) in pools(2) {
        let halved = bounded(name, pool.submit(halve, floats.clone()))
            .await
            .unwrap();
        assert_eq!(halved.len(), floats.len(), "{name}");
        for (x, y) in floats.iter().zip(&halved) {
            assert_eq!((x / 2.0).to_bits(), y.to_bits(), "{name}");
        }
        assert_eq!(
            bounded(name, pool.submit(halve, vec![])).await.unwrap(),
            [0.0; 0]
        );
        let flags = bounded(name, pool.submit(evens, vec![0, 3, usize::MAX, 8])).await;
        assert_eq!(flags.unwrap(), [true, false, false, true], "{name}");
        let items = vec![vec![1_i8, -1, 1], vec![], vec![-128; 1000]];
        let sums: Vec<Vec<i64>> = bounded(name, pool.map(sum_signs, items).try_collect())
            .await
            .unwrap();
        assert_eq!(sums, [vec![1], vec![0], vec![-128_000]], "{name}");
    }
}

#[tokio::test]
async fn map_unordered_yields_every_item_once() {
    for (name, pool) in pools(2) {
        let mut out: Vec<u64> = bounded(
            name,
            pool.map_unordered(double, 0..3000)
                .chunk_size(100)
                .try_collect(),
        )
        .await
        .unwrap();
        out.sort_unstable();
        assert_eq!(out, (0..3000).map(|x| x * 2).collect::<Vec<_>>(), "{name}");
    }
}

#[tokio::test]
async fn map_stream_takes_an_async_source() {
    for (name, pool) in pools(2) {
        let source = futures::stream::iter(0..500_u64).then(|x| async move {
            tokio::task::yield_now().await;
            x
        });
        let out: Vec<u64> = bounded(
            name,
            pool.map_stream(double, source).chunk_size(16).try_collect(),
        )
        .await
        .unwrap();
        assert_eq!(out, (0..500).map(|x| x * 2).collect::<Vec<_>>(), "{name}");
        let source = futures::stream::iter(0..500_u64);
        let mut out: Vec<u64> = bounded(
            name,
            pool.map_stream_unordered(double, source).try_collect(),
        )
        .await
        .unwrap();
        out.sort_unstable();
        assert_eq!(out.len(), 500, "{name}");
    }
}

/// An iterator that counts how many items were pulled from it.
struct Counted<I> {
    inner: I,
    pulled: Arc<AtomicUsize>,
}

impl<I: Iterator> Iterator for Counted<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        self.pulled.fetch_add(1, Ordering::SeqCst);
        self.inner.next()
    }
}

#[tokio::test]
async fn map_pulls_items_only_as_chunks_fit_in_flight() {
    const CHUNK: usize = 10;
    const IN_FLIGHT: usize = 3;
    for (name, pool) in pools(2) {
        let pulled = Arc::new(AtomicUsize::new(0));
        let source = Counted {
            inner: 0..100_000_u64,
            pulled: pulled.clone(),
        };
        let mut stream = pool
            .map(double, source)
            .chunk_size(CHUNK)
            .max_in_flight(IN_FLIGHT);
        let mut seen = 0;
        while let Some(item) = bounded(name, stream.next()).await {
            item.unwrap();
            seen += 1;
            let ahead = pulled.load(Ordering::SeqCst) - seen;
            // At most IN_FLIGHT chunks out plus the rest of the chunk being yielded.
            assert!(
                ahead <= (IN_FLIGHT + 1) * CHUNK,
                "{name}: {ahead} items pulled ahead"
            );
        }
        assert_eq!(seen, 100_000, "{name}");
    }
}

#[tokio::test]
async fn the_default_in_flight_bound_is_deeper_on_processes_for_small_chunks() {
    const CHUNK: usize = 10;
    // Threads: 2 chunks per worker. Processes: 32,768 items per worker, at most 16 chunks
    // per worker, as `Map::max_in_flight` documents.
    for ((name, pool), chunks) in pools(2).into_iter().zip([4, 32]) {
        let pulled = Arc::new(AtomicUsize::new(0));
        let source = Counted {
            inner: 0..10_000_u64,
            pulled: pulled.clone(),
        };
        let mut stream = pool.map(double, source).chunk_size(CHUNK);
        // The first poll fills every slot before any chunk can be taken back, so the first
        // result finds exactly the bound's worth of items pulled.
        assert_eq!(bounded(name, stream.next()).await, Some(Ok(0)), "{name}");
        assert_eq!(pulled.load(Ordering::SeqCst), chunks * CHUNK, "{name}");
        let mut sum = 0;
        while let Some(item) = bounded(name, stream.next()).await {
            sum += item.unwrap();
        }
        assert_eq!(sum, 10_000 * 9_999, "{name}");
    }
}

#[tokio::test]
async fn cancelling_a_queued_job_means_it_never_runs() {
    for (name, pool) in pools(1) {
        let gate = Gate::new();
        let blocker = pool.submit(wait_for_gate, gate.path());
        let mark = gate.sibling("queued-ran");
        let queued = pool.submit(leave_mark, mark.clone());
        assert!(queued.cancel(), "{name}: a queued job can be cancelled");
        assert!(queued.is_finished(), "{name}");
        gate.open();
        assert!(bounded(name, blocker).await.is_ok(), "{name}");
        assert_eq!(
            bounded(name, queued).await,
            Err(JobError::Cancelled),
            "{name}"
        );
        // The next job runs after the cancelled one would have: it did not run.
        bounded(name, pool.submit(double, 1)).await.unwrap();
        assert!(
            !std::path::Path::new(&mark).exists(),
            "{name}: the cancelled job ran"
        );
    }
}

#[tokio::test]
async fn dropping_a_map_stream_cancels_its_queued_chunks() {
    for (name, pool) in pools(1) {
        let gate = Gate::new();
        let blocker = pool.submit(wait_for_gate, gate.path());
        let marks: Vec<String> = (0..4)
            .map(|i| gate.sibling(&format!("chunk-{i}")))
            .collect();
        {
            let mut stream = pool
                .map(leave_mark, marks.clone())
                .chunk_size(1)
                .max_in_flight(4);
            // Poll once so that the chunks are submitted (they queue behind the blocker).
            assert!(futures::poll!(stream.next()).is_pending(), "{name}");
        }
        gate.open();
        bounded(name, blocker).await.unwrap();
        bounded(name, pool.submit(double, 1)).await.unwrap();
        for mark in &marks {
            assert!(
                !std::path::Path::new(mark).exists(),
                "{name}: {mark} ran after the drop"
            );
        }
    }
}

#[tokio::test]
async fn shutdown_waits_for_queued_and_running_jobs() {
    for (name, pool) in pools(1) {
        let gate = Gate::new();
        let running = pool.submit(wait_for_gate, gate.path());
        let queued: Vec<_> = (0..5).map(|i| pool.submit(double, i)).collect();
        let shutdown = pool.shutdown();
        futures::pin_mut!(shutdown);
        assert!(
            futures::poll!(shutdown.as_mut()).is_pending(),
            "{name}: waits for the gate"
        );
        assert!(pool.is_shutdown(), "{name}");
        gate.open();
        bounded(name, shutdown).await;
        assert!(running.is_finished(), "{name}");
        assert!(bounded(name, running).await.is_ok(), "{name}");
        for (i, handle) in queued.into_iter().enumerate() {
            assert_eq!(bounded(name, handle).await, Ok(2 * i as u64), "{name}");
        }
    }
}

#[tokio::test]
async fn shutdown_cancel_queued_cancels_only_what_has_not_started() {
    for (name, pool) in pools(1) {
        let gate = Gate::new();
        let pid_file = gate.sibling("pid");
        let running = pool.submit(report_pid_then_wait, (pid_file.clone(), gate.path()));
        // The running job has started once it reports its pid: no race with the shutdown.
        bounded_sync("the blocker to start", move || read_pid(&pid_file));
        let started = pool.submit(double, 100);
        let queued: Vec<_> = (0..5).map(|i| pool.submit(double, i)).collect();
        // `started` is queued behind `running` too, so it is cancelled.
        let shutdown = pool.shutdown_cancel_queued();
        futures::pin_mut!(shutdown);
        assert!(futures::poll!(shutdown.as_mut()).is_pending(), "{name}");
        for handle in queued {
            assert_eq!(
                bounded(name, handle).await,
                Err(JobError::Cancelled),
                "{name}"
            );
        }
        assert_eq!(
            bounded(name, started).await,
            Err(JobError::Cancelled),
            "{name}"
        );
        gate.open();
        bounded(name, shutdown).await;
        assert!(
            bounded(name, running).await.is_ok(),
            "{name}: the running job finished"
        );
    }
}

#[tokio::test]
async fn submitting_after_shutdown_is_an_error_not_a_panic() {
    for (name, pool) in pools(1) {
        bounded(name, pool.shutdown()).await;
        assert_eq!(
            bounded(name, pool.submit(double, 1)).await,
            Err(JobError::ShutDown),
            "{name}"
        );
        let refused = pool.try_submit(double, 99).unwrap_err();
        assert_eq!(refused.into_inner(), 99, "{name}: the argument comes back");
        let results: Vec<_> = bounded(name, pool.map(double, 0..3).collect::<Vec<_>>()).await;
        assert!(
            results.iter().all(|r| r == &Err(JobError::ShutDown)),
            "{name}"
        );
        // Shutting down twice is fine.
        bounded(name, pool.shutdown()).await;
    }
}

#[tokio::test]
async fn shutdown_timeout_reports_jobs_still_running() {
    for (name, pool) in pools(1) {
        let gate = Gate::new();
        let running = pool.submit(wait_for_gate, gate.path());
        let finished = bounded(
            name,
            pool.shutdown_timeout(std::time::Duration::from_millis(50)),
        )
        .await;
        assert!(
            !finished,
            "{name}: the job was still running at the deadline"
        );
        gate.open();
        match bounded(name, running).await {
            // The process pool kills what still runs; threads cannot be killed.
            Err(JobError::ShutDown) => assert_eq!(name, "processes"),
            Ok(_) => assert_eq!(name, "threads"),
            other => panic!("{name}: unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn as_completed_yields_every_result_with_its_index() {
    for (name, pool) in pools(2) {
        let gate = Gate::new();
        let slow = pool.submit(wait_for_gate, gate.path());
        let fast: Vec<_> = (0..5).map(|i| pool.submit(double, i)).collect();
        let mut stream = as_completed(fast);
        let mut seen = [false; 5];
        while let Some((index, result)) = bounded(name, stream.next()).await {
            assert_eq!(result, Ok(2 * index as u64), "{name}");
            seen[index] = true;
        }
        assert!(seen.iter().all(|&s| s), "{name}");
        assert!(!slow.is_finished(), "{name}: fast jobs came first");
        gate.open();
        let mut rest = as_completed(vec![slow]);
        assert!(
            bounded(name, rest.next()).await.unwrap().1.is_ok(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn wait_honours_return_when_and_timeout() {
    // Three workers: two block on gates, the third runs the jobs that must finish.
    for (name, pool) in pools(3) {
        let gate = Gate::new();
        let handles = vec![
            pool.submit(wait_for_gate, gate.path()),
            pool.submit(|x: u64| x as u32, 1),
        ];
        let waited = bounded(name, wait(handles, ReturnWhen::FirstCompleted, None)).await;
        assert_eq!((waited.done.len(), waited.pending.len()), (1, 1), "{name}");

        let timed_out = bounded(
            name,
            wait(
                waited.pending,
                ReturnWhen::AllCompleted,
                Some(std::time::Duration::from_millis(30)),
            ),
        )
        .await;
        assert_eq!(
            (timed_out.done.len(), timed_out.pending.len()),
            (0, 1),
            "{name}"
        );

        let gate2 = Gate::new();
        let mixed = vec![
            pool.submit(wait_for_gate, gate2.path()),
            pool.submit(|x: u64| -> u32 { panic!("bad {x}") }, 3),
        ];
        let first_error = bounded(name, wait(mixed, ReturnWhen::FirstError, None)).await;
        assert_eq!(
            first_error.done.len(),
            1,
            "{name}: returns at the first error"
        );
        let failed = first_error.done.into_iter().next().unwrap();
        assert!(
            bounded(name, failed).await.unwrap_err().is_panic(),
            "{name}"
        );

        gate.open();
        gate2.open();
        let all = bounded(
            name,
            wait(
                timed_out.pending.into_iter().chain(first_error.pending),
                ReturnWhen::AllCompleted,
                None,
            ),
        )
        .await;
        assert_eq!((all.done.len(), all.pending.len()), (2, 0), "{name}");
    }
}

#[test]
fn handles_and_pools_have_the_auto_traits_users_need() {
    fn send_sync<T: Send + Sync>() {}
    fn send_unpin<T: Send + Unpin>() {}
    send_sync::<ThreadPoolExecutor>();
    send_sync::<ProcessPoolExecutor>();
    send_sync::<Box<dyn Executor>>();
    send_unpin::<procpool::JobHandle<Vec<u8>>>();
    send_unpin::<procpool::AsCompleted<String>>();
    fn map_stream_is_send(pool: &ProcessPoolExecutor) -> impl Send + Unpin + '_ {
        pool.map(double, vec![1_u64, 2, 3])
    }
    let _ = map_stream_is_send;
    send_sync::<JobError>();
    send_sync::<procpool::Error>();
}

/// A worker-local state that records which build made it.
struct Lexicon {
    serial: usize,
    words: Vec<&'static str>,
}

static LEXICON_BUILDS: AtomicUsize = AtomicUsize::new(0);

fn build_lexicon() -> Lexicon {
    Lexicon {
        serial: LEXICON_BUILDS.fetch_add(1, Ordering::SeqCst),
        words: vec!["good", "great", "fine"],
    }
}

fn build_offset() -> u64 {
    1000
}

/// Returns (worker identity, the serial of its lexicon, a count read through two states).
fn lexicon_job(text: String) -> (String, usize, u64) {
    let worker = format!("{}/{:?}", std::process::id(), std::thread::current().id());
    let (serial, hits) = procpool::with_worker_state(|lex: &Lexicon| {
        let hits = text.split(' ').filter(|w| lex.words.contains(w)).count();
        (lex.serial, hits as u64)
    });
    let offset = procpool::with_worker_state(|o: &u64| *o);
    (worker, serial, offset + hits)
}

fn panicking_state() -> Lexicon {
    panic!("lexicon file missing")
}

fn pools_with_state(workers: usize) -> Vec<(&'static str, Box<dyn Executor>)> {
    common::pools_built(
        workers,
        |t| t.worker_state(build_lexicon).worker_state(build_offset),
        |p| p.worker_state(build_lexicon).worker_state(build_offset),
    )
}

#[tokio::test]
async fn worker_state_is_built_once_per_worker_and_read_by_jobs() {
    for (name, pool) in pools_with_state(2) {
        let texts = (0..200).map(|i| format!("a good {} great day", i % 3));
        let results: Vec<(String, usize, u64)> = bounded(
            name,
            pool.map(lexicon_job, texts).chunk_size(3).try_collect(),
        )
        .await
        .unwrap();
        assert!(results.iter().all(|r| r.2 == 1002), "{name}: {results:?}");
        let mut serial_of = std::collections::HashMap::new();
        for (worker, serial, _) in &results {
            let first = *serial_of.entry(worker.clone()).or_insert(*serial);
            assert_eq!(first, *serial, "{name}: {worker} rebuilt its state");
        }
        assert!(
            (1..=2).contains(&serial_of.len()),
            "{name}: {} workers",
            serial_of.len()
        );
    }
}

#[tokio::test]
async fn a_missing_worker_state_fails_the_job_naming_the_type() {
    for (name, pool) in pools(1) {
        let err = bounded(name, pool.submit(lexicon_job, "good".into()))
            .await
            .unwrap_err();
        match &err {
            JobError::Panicked { message, .. } => {
                assert!(message.contains("Lexicon"), "{name}: {message}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_panicking_state_builder_breaks_the_pool_with_its_message() {
    let pools: Vec<(&str, Box<dyn Executor>)> = vec![
        (
            "threads",
            Box::new(
                ThreadPoolExecutor::builder()
                    .max_workers(1)
                    .worker_state(panicking_state)
                    .build()
                    .unwrap(),
            ),
        ),
        (
            "processes",
            Box::new(
                ProcessPoolExecutor::builder()
                    .max_workers(1)
                    .worker_state(panicking_state)
                    .build()
                    .unwrap(),
            ),
        ),
    ];
    for (name, pool) in pools {
        let err = bounded(name, pool.submit(double, 1)).await.unwrap_err();
        assert!(err.is_pool_broken(), "{name}: {err:?}");
        assert!(
            err.to_string().contains("lexicon file missing"),
            "{name}: {err}"
        );
    }
}

/// Waits on the gate when one is given, then doubles.
fn gated_double((gate, x): (Option<String>, u64)) -> u64 {
    if let Some(gate) = gate {
        assert!(wait_until_exists(&gate), "gate never opened");
    }
    x * 2
}

#[tokio::test]
async fn map_progress_counts_every_item_and_knows_the_total() {
    use procpool::Progress;
    use std::sync::Mutex;
    for (name, pool) in pools(2) {
        for ordered in [true, false] {
            let seen = Arc::new(Mutex::new(Vec::<Progress>::new()));
            let log = seen.clone();
            let map = if ordered {
                pool.map(fail_on_seven, 0..1000)
            } else {
                pool.map_unordered(fail_on_seven, 0..1000)
            };
            assert_eq!(map.progress().total, Some(1000), "{name}: a range tells");
            let results: Vec<_> = bounded(
                name,
                map.chunk_size(64)
                    .on_progress(move |p| log.lock().unwrap().push(p))
                    .collect::<Vec<_>>(),
            )
            .await;
            assert_eq!(results.len(), 1000);
            let seen = seen.lock().unwrap();
            assert_eq!(
                seen[0],
                Progress {
                    completed: 0,
                    total: Some(1000)
                }
            );
            assert_eq!(
                seen.last().unwrap().completed,
                1000,
                "{name}: failed items count"
            );
            assert!(
                seen.windows(2).all(|w| w[0].completed < w[1].completed),
                "{name}: one call per chunk, increasing: {seen:?}"
            );
        }
        // A stream of unknown length: the total appears when it ends.
        let source = futures::stream::iter(0..100_u64).filter(|_| async { true });
        let mut map = pool.map_stream(double, source).chunk_size(10);
        assert_eq!(map.progress().total, None, "{name}");
        let mut count = 0;
        while let Some(result) = bounded(name, map.next()).await {
            result.unwrap();
            count += 1;
        }
        assert_eq!(count, 100);
        assert_eq!(
            map.progress(),
            Progress {
                completed: 100,
                total: Some(100)
            },
            "{name}"
        );
    }
}

#[tokio::test]
async fn ordered_map_progress_counts_chunks_finished_behind_a_slow_one() {
    use std::sync::atomic::AtomicU64;
    for (name, pool) in pools(2) {
        let gate = Gate::new();
        let items = (0..40_u64).map(|i| (if i == 0 { Some(gate.path()) } else { None }, i));
        let completed = Arc::new(AtomicU64::new(0));
        let counter = completed.clone();
        let mut map = pool
            .map(gated_double, items)
            .chunk_size(1)
            .max_in_flight(40)
            .on_progress(move |p| counter.store(p.completed, Ordering::SeqCst));
        // Item 0 is blocked on its gate, so the ordered stream can yield nothing, yet the
        // other 39 items finish and are counted.
        let counted = async {
            while completed.load(Ordering::SeqCst) < 39 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        tokio::select! {
            first = map.next() => panic!("{name}: yielded {first:?} before item 0 could run"),
            () = bounded(name, counted) => {}
        }
        gate.open();
        let first = bounded(name, map.next()).await;
        assert_eq!(first, Some(Ok(0)), "{name}");
        assert_eq!(map.progress().completed, 40, "{name}");
    }
}

#[test]
fn a_job_submitted_from_a_thread_locals_destructor_runs() {
    bounded_sync("jobs submitted as threads end", || {
        for (name, pool) in pools(1) {
            // Kept here too: the last handle on a pool shuts it down when dropped.
            let pool: Arc<dyn Executor> = Arc::from(pool);
            let (first, late) = (pool.clone(), pool.clone());
            // The first submit sets up the pool's thread-locals, gone by the late one.
            // (Were std's destructor order to change, this test would pass without
            // reaching the case: tests/shared_memory.rs would then fail.)
            let submitted = at_thread_exit(
                move || assert_eq!(first.submit(double, 1).wait(), Ok(2), "{name}"),
                move || {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        late.submit(double, 21)
                    }))
                },
            );
            let handle = submitted
                .unwrap_or_else(|_| panic!("{name}: submitting from a destructor panicked"));
            assert_eq!(handle.wait(), Ok(42), "{name}");
            drop(pool);
        }
    });
}

#[test]
fn a_blocking_wait_from_a_thread_locals_destructor_returns_the_result() {
    use procpool::Executor;
    use std::sync::Arc;
    bounded_sync("waits as threads end", || {
        for (name, pool) in pools(1) {
            let pool: Arc<dyn Executor> = Arc::from(pool);
            let late = pool.clone();
            let gate = Gate::new();
            let (gate_path, mark) = (gate.path(), gate.sibling("started"));
            // Opens the gate once the job has started: the wait below outlasts its spin.
            let opener = {
                let (mark, gate_path) = (mark.clone(), gate_path.clone());
                std::thread::spawn(move || {
                    assert!(wait_until_exists(&mark));
                    std::fs::write(gate_path, b"open").unwrap(); // the test keeps the gate
                })
            };
            let waited = at_thread_exit(
                // A blocking wait here sets up the thread-locals a blocking wait uses.
                || futures::executor::block_on(async {}),
                move || {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        late.submit(report_pid_then_wait, (mark, gate_path)).wait()
                    }))
                },
            );
            opener.join().unwrap();
            match waited {
                Ok(result) => assert!(result.is_ok(), "{name}: {result:?}"),
                Err(panic) => panic!(
                    "{name}: JobHandle::wait panicked in a thread-local's destructor: {}",
                    panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("?")
                ),
            }
        }
    });
}
