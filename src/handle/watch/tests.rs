//! The watch's tests: its table and thread-local marks alone, a handle's first poll, and
//! real pools (each test on its own thread, with its own table, and a function of its own).

use super::*;
use crate::handle::{ErasedHandle, JobHandle, JobState};
use crate::{ExecutorExt, JobError, ProcessPoolExecutor, ThreadPoolExecutor};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A tokio multi-thread runtime, where a handle polled by its `block_on` may be watched.
fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn fresh() -> &'static [Slot; SLOTS] {
    Box::leak(Box::new([const { unseen() }; SLOTS]))
}

/// How many of the next `n` handles of `key` would watch.
fn watches(watch: &Watch<'_>, key: usize, n: u32) -> u32 {
    (0..n).filter(|_| watch.should_watch(key)).count() as u32
}

#[test]
fn only_the_job_a_thread_submitted_last_straight_to_a_worker_is_asked_about_and_once() {
    let (a, b) = (Arc::new(1_u8), Arc::new(2_u8));
    let at = |cell: &Arc<u8>| Arc::as_ptr(cell).cast::<()>();
    let submit = |cell: &Arc<u8>, straight: bool, function: usize| {
        submitted(cell, straight);
        of_function(at(cell), function);
    };
    submit(&a, true, 7);
    submit(&b, true, 8);
    assert_eq!(first_poll(at(&a)), None, "b came after it");
    submit(&a, true, 7);
    assert_eq!(first_poll(at(&a)), Some(7));
    assert_eq!(first_poll(at(&a)), None, "asked once");
    submit(&a, false, 7);
    assert_eq!(first_poll(at(&a)), None, "not straight to a worker");
    submit(&a, true, 0);
    assert_eq!(first_poll(at(&a)), None, "no function said");
    submit(&a, true, 7);
    forget(at(&a));
    assert_eq!(first_poll(at(&a)), None, "forgotten");
    submit(&b, true, 8);
    let b_at = at(&b) as usize;
    let elsewhere = std::thread::spawn(move || first_poll(b_at as *const ()));
    assert_eq!(
        elsewhere.join().unwrap(),
        None,
        "another thread submitted nothing"
    );
    assert_eq!(first_poll(at(&b)), Some(8));
}

#[test]
fn a_function_not_seen_is_watched_and_stays_watched_while_watches_see_answers() {
    let watch = Watch { slots: fresh() };
    for _ in 0..100 {
        assert!(watch.should_watch(0x1000));
        watch.watched(0x1000, true);
    }
}

#[test]
fn a_miss_skips_then_skips_twice_as_many_after_each_miss_in_a_row() {
    let watch = Watch { slots: fresh() };
    let key = 0x2000;
    assert!(watch.should_watch(key));
    watch.watched(key, false);
    assert_eq!(watches(&watch, key, FIRST_SKIP), 0, "skipped after a miss");
    assert!(watch.should_watch(key), "tried again after the skip");
    watch.watched(key, false);
    assert_eq!(watches(&watch, key, 2 * FIRST_SKIP), 0, "twice as many");
    assert!(watch.should_watch(key));
    watch.watched(key, true);
    assert!(
        watch.should_watch(key),
        "a watch that saw it ends the skips"
    );
    watch.watched(key, false);
    assert_eq!(
        watches(&watch, key, FIRST_SKIP),
        0,
        "back to the first skip"
    );
    assert!(watch.should_watch(key));
}

#[test]
fn skips_stop_growing_at_the_most() {
    let watch = Watch { slots: fresh() };
    let key = 0x3000;
    for _ in 0..20 {
        while !watch.should_watch(key) {}
        watch.watched(key, false);
    }
    assert_eq!(watches(&watch, key, MOST_SKIP), 0);
    assert!(watch.should_watch(key));
}

#[test]
fn functions_are_kept_apart_and_two_that_share_a_slot_skip_together() {
    let watch = Watch { slots: fresh() };
    let (a, b) = (0x5000, 0x5010);
    assert!(watch.should_watch(a));
    watch.watched(a, false);
    assert!(watch.should_watch(b), "another slot, not skipped");
    assert!(!watch.should_watch(a), "a's skips go on");
    // Same slot as a: it skips with a, then takes the slot over.
    let c = a + 16 * SLOTS;
    assert_eq!(watches(&watch, c, FIRST_SKIP - 1), 0, "skips shared with a");
    assert!(watch.should_watch(c), "the skips are over: c is tried");
    assert!(watch.knows(c));
    watch.watched(a, true); // about a, which lost its slot: ignored
    watch.watched(c, false);
    assert_eq!(watches(&watch, c, FIRST_SKIP), 0);
    assert_eq!(watches(&watch, a, 0), 0);
    assert!(watch.should_watch(a), "a takes the slot back, afresh");
}

/// A started job's handle, made as `submit` makes one for a job of `function`, which
/// went `straight` to an idle worker or not.
fn submitted_handle(function: usize, straight: bool) -> (Arc<JobState>, JobHandle<u8>) {
    let state = JobState::new();
    assert!(state.try_start());
    submitted(&state, straight);
    let handle = JobHandle::from_erased(ErasedHandle::new(state.clone())).watching(function);
    (state, handle)
}

fn poll_once(handle: &mut JobHandle<u8>) -> Poll<Result<u8, JobError>> {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    Pin::new(handle).poll(&mut cx)
}

#[test]
fn a_first_poll_watches_a_job_sent_straight_to_a_worker_and_a_miss_stops_the_next() {
    fn only_here(x: u8) -> u8 {
        x.wrapping_add(7)
    }
    let function = key_of(only_here as fn(u8) -> u8);
    multi_thread().block_on(async {
        let (state, mut handle) = submitted_handle(function, true);
        let start = Instant::now();
        assert!(poll_once(&mut handle).is_pending());
        assert!(start.elapsed() >= WATCH, "the first poll watched");
        assert!(
            !table().should_watch(function),
            "the miss skips the next jobs of the function"
        );
        assert!(poll_once(&mut handle).is_pending());
        assert_eq!(
            table().skips(function),
            FIRST_SKIP - 1,
            "a second poll does not ask about a watch"
        );
        assert!(state.complete(Ok(Box::new(3_u8))));
        assert_eq!(poll_once(&mut handle).map(Result::ok), Poll::Ready(Some(3)));
    });
}

#[test]
fn a_job_queued_behind_others_or_submitted_before_another_is_not_watched() {
    fn queued_here(x: u8) -> u8 {
        x.wrapping_add(9)
    }
    fn earlier_here(x: u8) -> u8 {
        x.wrapping_add(11)
    }
    multi_thread().block_on(async {
        let queued = key_of(queued_here as fn(u8) -> u8);
        let (_state, mut handle) = submitted_handle(queued, false);
        assert!(poll_once(&mut handle).is_pending());
        assert!(!table().knows(queued), "not asked about: not watched");

        let earlier = key_of(earlier_here as fn(u8) -> u8);
        let (_first, mut first) = submitted_handle(earlier, true);
        submitting(); // another job, refused before it was queued
        assert!(poll_once(&mut first).is_pending());
        assert!(!table().knows(earlier), "another job came after it");
    });
}

#[test]
fn no_watch_outside_a_tokio_multi_thread_runtime_or_beside_other_tasks() {
    fn alone_here(x: u8) -> u8 {
        x.wrapping_add(13)
    }
    let function = key_of(alone_here as fn(u8) -> u8);
    let outside = |what: &str| {
        let (_state, mut handle) = submitted_handle(function, true);
        assert!(poll_once(&mut handle).is_pending());
        assert!(!table().knows(function), "watched {what}");
    };
    outside("outside any runtime");
    FEW.with(|few| few.set((false, 0))); // looked at afresh
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(async { outside("on a current-thread runtime") });
    FEW.with(|few| few.set((false, 0)));
    let runtime = multi_thread();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (a, b) = (
        runtime.spawn(stopped),
        runtime.spawn(std::future::pending::<()>()),
    );
    runtime.block_on(async { outside("beside two other tasks") });
    drop(stop);
    b.abort();
    runtime.block_on(async {
        assert!(a.await.is_ok());
        assert!(b.await.is_err());
    });
}

/// Gates that hold the thread pool's jobs until a test opens them, one per job: a job
/// that is held is not done at its first poll, which therefore asks about a watch.
static GATES: [std::sync::atomic::AtomicBool; 5] =
    [const { std::sync::atomic::AtomicBool::new(false) }; 5];

/// Waits (bounded) until gate `k` opens.
fn hold(k: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !GATES[k].load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A job held at gate `K`: one function per gate, which only these tests submit, so
/// that each is unseen at first.
fn held<const K: usize>(x: u64) -> u64 {
    hold(K);
    x + 1 + K as u64
}

fn thread_second(x: u64) -> u64 {
    x + 7
}

fn process_once(x: u64) -> u64 {
    x + 5
}

/// The function of the job this thread just submitted, as the pool marked it: 0 unless it
/// went straight to a worker. (A function's address is not one value: a copy of a small
/// function may be made in each codegen unit that takes it, so a test cannot take it
/// itself.)
fn marked_function() -> usize {
    LATEST.with(|latest| latest.get().1)
}

/// Polls `handle`, the job this thread just submitted, once (it must find it held at
/// gate `k`), opens the gate and awaits the job; whether its first poll watched it.
async fn watched<R: 'static>(handle: JobHandle<R>, k: usize) -> (Result<R, JobError>, bool) {
    let function = marked_function();
    let mut handle = std::pin::pin!(handle);
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    assert!(
        handle.as_mut().poll(&mut cx).is_pending(),
        "held at its gate"
    );
    let seen = function != 0 && table().knows(function);
    GATES[k].store(true, std::sync::atomic::Ordering::SeqCst);
    (handle.await, seen)
}

#[test]
fn each_way_of_submitting_to_a_thread_pool_with_room_is_watched() {
    let pool = ThreadPoolExecutor::new(1).expect("a pool");
    multi_thread().block_on(async {
        let once = watched(pool.submit(held::<0>, 1), 0).await;
        assert_eq!(once, (Ok(2), true), "submit");
        let tried = pool.try_submit(held::<1>, 1).expect("room");
        assert_eq!(watched(tried, 1).await, (Ok(3), true), "try_submit");
        let ready = pool.submit_when_ready(held::<2>, 1).await;
        let ready = watched(ready.expect("room"), 2).await;
        assert_eq!(ready, (Ok(4), true), "submit_when_ready");
        let permit = pool.reserve().await.expect("room");
        let reserved = watched(permit.submit(held::<3>, 1), 3).await;
        assert_eq!(reserved, (Ok(5), true), "Permit::submit");
    });
}

#[test]
fn a_job_submitted_before_another_is_not_watched_on_a_thread_pool() {
    let pool = ThreadPoolExecutor::new(1).expect("a pool");
    multi_thread().block_on(async {
        let first = pool.submit(held::<4>, 1); // straight to the idle worker, held there
        assert_ne!(
            marked_function(),
            0,
            "the first went straight to the worker"
        );
        let second = pool.submit(thread_second, 1); // marked or not, it came after
        let mut first = std::pin::pin!(first);
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        assert!(
            first.as_mut().poll(&mut cx).is_pending(),
            "held at its gate"
        );
        assert_eq!(table().known(), 0, "the first poll asked about a watch");
        GATES[4].store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(first.await, Ok(6));
        assert_eq!(second.await, Ok(8));
    });
}

#[test]
fn a_job_submitted_to_a_process_pool_with_an_idle_worker_is_watched() {
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .expect("a pool");
    multi_thread().block_on(async {
        // The worker is idle once the pool has seen its answer, which may be just after
        // the caller has (and the first job finds it starting): a few tries.
        for x in 0..50 {
            let handle = pool.submit(process_once, x);
            let function = marked_function();
            // Done before its first poll (the thread was held up): no watch to ask about.
            let asks = function != 0 && !handle.is_finished();
            assert_eq!(handle.await, Ok(x + 5));
            if asks {
                assert!(table().knows(function), "straight to a worker, not watched");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no job of 50 went straight to the idle worker");
    });
}
