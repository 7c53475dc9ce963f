//! A bounded queue (`max_queued`) on both pools, through the public API: `try_submit` says
//! "full" and gives the argument back, `submit` fails its handle, `reserve` and
//! `submit_when_ready` wait for room in turn, a `map` waits instead of failing, room comes
//! back the moment a job ends (a cancelled queued job too), and a shutdown wakes whoever
//! waits. Jobs are held on gates, so "full" never depends on timing.

mod common;

use common::{Gate, bounded, leave_mark, report_pid_then_wait, wait_for_gate, wait_until_exists};
use futures::{FutureExt, StreamExt};
use procpool::{
    Executor, ExecutorExt, JobError, ProcessPoolExecutor, SubmitError, ThreadPoolExecutor,
};
use std::path::Path;

fn bounded_pools(workers: usize, queued: usize) -> Vec<(&'static str, Box<dyn Executor>)> {
    common::pools_built(workers, |t| t.max_queued(queued), |p| p.max_queued(queued))
}

fn echo(s: String) -> String {
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_refuses_try_submit_and_submit_then_takes_jobs_again() {
    for (name, pool) in bounded_pools(1, 1) {
        let gate = Gate::new();
        let running = pool.try_submit(wait_for_gate, gate.path()).unwrap();
        let waiting = pool.try_submit(wait_for_gate, gate.path()).unwrap();
        assert_eq!(pool.stats().max_queued, Some(1), "{name}");
        match pool.try_submit(echo, "keep me".to_owned()) {
            Err(SubmitError::Full(arg)) => assert_eq!(arg, "keep me", "{name}"),
            other => panic!("{name}: a full pool took a job: {other:?}"),
        }
        let refused = bounded("a refused submit", pool.submit(echo, "x".to_owned())).await;
        assert_eq!(refused, Err(JobError::QueueFull), "{name}");
        assert!(refused.unwrap_err().to_string().contains("max_queued"));
        gate.open();
        bounded("the gated jobs", async {
            running.await.unwrap();
            waiting.await.unwrap();
        })
        .await;
        // Room came back with the jobs' ends.
        let again = pool.try_submit(echo, "again".to_owned()).unwrap();
        assert_eq!(
            bounded("a job after", again).await.unwrap(),
            "again",
            "{name}"
        );
        pool.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_job_gives_its_room_back_at_once() {
    for (name, pool) in bounded_pools(1, 1) {
        let gate = Gate::new();
        let running = pool.submit(wait_for_gate, gate.path());
        let queued = pool.submit(leave_mark, gate.sibling("queued"));
        assert!(pool.try_submit(echo, String::new()).unwrap_err().is_full());
        assert!(queued.cancel(), "{name}: a queued job cancels");
        // The gate is still closed: the room can only have come from the cancellation.
        let next = pool.try_submit(echo, "next".to_owned()).unwrap();
        gate.open();
        assert!(bounded("running", running).await.is_ok(), "{name}");
        assert_eq!(bounded("next", next).await.unwrap(), "next", "{name}");
        assert!(bounded("queued", queued).await.unwrap_err().is_cancelled());
        assert!(
            !Path::new(&gate.sibling("queued")).exists(),
            "{name}: it ran"
        );
        pool.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_when_ready_and_reserve_wait_for_room_in_turn() {
    for (name, pool) in bounded_pools(1, 0) {
        let gate = Gate::new();
        let running = pool.submit(wait_for_gate, gate.path());
        // The first to get room holds it until its own gate opens.
        let first_gate = Gate::new();
        let first = first_gate.sibling("first");
        let mut waits_first = Box::pin(
            pool.submit_when_ready(report_pid_then_wait, (first.clone(), first_gate.path())),
        );
        let mut waits_second = Box::pin(pool.reserve());
        assert!(futures::poll!(&mut waits_first).is_pending(), "{name}");
        assert!(futures::poll!(&mut waits_second).is_pending(), "{name}");
        gate.open();
        bounded("the gated job", running).await.unwrap();
        // The first to ask gets the room; the second waits until its job has ended.
        let first_job = bounded("room", &mut waits_first).await.unwrap();
        assert!(
            wait_until_exists(&first),
            "{name}: the first job never started"
        );
        assert!(futures::poll!(&mut waits_second).is_pending(), "{name}");
        first_gate.open();
        bounded("first", first_job).await.unwrap();
        let permit = bounded("second's room", waits_second).await.unwrap();
        // The permit holds the room: nobody else gets it.
        assert!(pool.try_submit(echo, String::new()).unwrap_err().is_full());
        let job = permit.submit(echo, "with a permit".to_owned());
        assert_eq!(bounded("permit's job", job).await.unwrap(), "with a permit");
        // A permit dropped unused gives the room back.
        let unused = bounded("an unused permit", pool.reserve()).await.unwrap();
        assert!(pool.try_submit(echo, String::new()).unwrap_err().is_full());
        drop(unused);
        let after = pool.try_submit(echo, "after".to_owned()).unwrap();
        assert_eq!(bounded("after", after).await.unwrap(), "after", "{name}");
        pool.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_wakes_those_waiting_for_room() {
    for (name, pool) in bounded_pools(1, 0) {
        let gate = Gate::new();
        let running = pool.submit(wait_for_gate, gate.path());
        let mut waiting = Box::pin(pool.submit_when_ready(echo, "give it back".to_owned()));
        let mut reserving = Box::pin(pool.reserve());
        assert!(futures::poll!(&mut waiting).is_pending(), "{name}");
        assert!(futures::poll!(&mut reserving).is_pending(), "{name}");
        pool.begin_shutdown(false);
        match bounded("a waiter at shutdown", waiting).await {
            Err(SubmitError::ShutDown(arg)) => assert_eq!(arg, "give it back", "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        let reserved = bounded("a reserve at shutdown", reserving).await;
        assert_eq!(reserved.unwrap_err(), JobError::ShutDown, "{name}");
        gate.open();
        assert!(bounded("running", running).await.is_ok(), "{name}");
        pool.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_waits_for_room_instead_of_failing_its_chunks() {
    // 2 slots, 32 chunks in flight wanted: every chunk past the second waits for room.
    for (name, pool) in bounded_pools(2, 0) {
        let results: Vec<_> = bounded(
            "a map on a bounded pool",
            pool.map(common::double, 0..2_000_u64)
                .chunk_size(10)
                .max_in_flight(32)
                .collect(),
        )
        .await;
        let doubled: Vec<u64> = results.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(
            doubled,
            (0..2_000).map(|x| x * 2).collect::<Vec<_>>(),
            "{name}"
        );
        // And while the pool is full of someone else's jobs, it waits for them.
        let gate = Gate::new();
        let held: Vec<_> = (0..2)
            .map(|_| pool.submit(wait_for_gate, gate.path()))
            .collect();
        let mut map = pool.map(common::double, 0..100_u64).chunk_size(10);
        assert!(
            map.next().now_or_never().is_none(),
            "{name}: ran in a full pool"
        );
        gate.open();
        let rest: Vec<u64> = bounded("the map after the gate", map.collect::<Vec<_>>())
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(rest.len(), 100, "{name}");
        for handle in held {
            bounded("held", handle).await.unwrap();
        }
        pool.shutdown().await;
    }
}

/// A waker that says on a channel each time it is woken.
struct Told(std::sync::Mutex<std::sync::mpsc::Sender<()>>);

impl futures::task::ArcWake for Told {
    fn wake_by_ref(told: &std::sync::Arc<Told>) {
        let _ = told.0.lock().unwrap().send(());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_refused_with_nothing_in_flight_is_woken_when_room_comes_back() {
    // The map's first chunk finds the one slot taken by another job: nothing of its own
    // is in flight, so only its wait for room can wake it. Polled by hand, with a waker
    // that reports, so that no timer or runtime polls it again by chance.
    for (name, pool) in bounded_pools(1, 0) {
        let gate = Gate::new();
        let held = pool.submit(wait_for_gate, gate.path());
        let mut map = pool.map(common::double, 0..10_u64).chunk_size(5);
        let (told, woken) = std::sync::mpsc::channel();
        let waker = futures::task::waker(std::sync::Arc::new(Told(told.into())));
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(
            map.poll_next_unpin(&mut cx).is_pending(),
            "{name}: ran in a full pool"
        );
        gate.open();
        let waited = tokio::task::spawn_blocking(move || woken.recv_timeout(common::BOUND));
        assert!(
            waited.await.unwrap().is_ok(),
            "{name}: the map was not woken when the held job ended"
        );
        let doubled: Vec<u64> = bounded("the map after the wake-up", map.collect::<Vec<_>>())
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(
            doubled,
            (0..10).map(|x| x * 2).collect::<Vec<_>>(),
            "{name}"
        );
        bounded("held", held).await.unwrap();
        pool.shutdown().await;
    }
}

#[test]
fn an_unbounded_pool_never_says_full() {
    common::bounded_sync("many jobs on an unbounded pool", || {
        for (name, pool) in common::pools(1) {
            assert_eq!(pool.stats().max_queued, None, "{name}");
            let gate = Gate::new();
            let held = pool.submit(wait_for_gate, gate.path());
            let handles: Vec<_> = (0..1_000_u64)
                .map(|i| pool.try_submit(common::double, i).unwrap())
                .collect();
            gate.open();
            held.wait().unwrap();
            for (i, handle) in handles.into_iter().enumerate() {
                assert_eq!(handle.wait().unwrap(), 2 * i as u64, "{name}");
            }
        }
    });
}

#[test]
fn a_closure_spawned_on_a_full_thread_pool_fails_with_queue_full() {
    common::bounded_sync("spawn on a full pool", || {
        let pool = ThreadPoolExecutor::builder()
            .max_workers(1)
            .max_queued(0)
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let held = pool.spawn(move || rx.recv().is_ok());
        assert_eq!(pool.spawn(|| 1).wait(), Err(JobError::QueueFull));
        tx.send(()).unwrap();
        assert!(held.wait().unwrap());
        assert_eq!(pool.spawn(|| 2).wait(), Ok(2));
    });
}

/// The thread pool cannot stop a job past its time limit: the job ends with `TimedOut`,
/// but its thread runs on and takes no other job. Its room used to come back with that
/// end, so `max_queued(0)` let a job wait for the only thread, busy as it was; the thread
/// now holds the room until it returns from the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_job_still_running_keeps_its_room_in_a_bounded_thread_pool() {
    let pool = ThreadPoolExecutor::builder()
        .max_workers(1)
        .max_queued(0)
        .job_timeout(std::time::Duration::from_millis(50))
        .build()
        .unwrap();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let stuck = pool.spawn(move || go_rx.recv().is_ok());
    let ended = bounded("the time limit", stuck).await;
    assert!(matches!(ended, Err(JobError::TimedOut(_))), "{ended:?}");
    // Its thread is still inside the closure, waiting for `go`.
    match pool.try_submit(common::double, 1) {
        Err(SubmitError::Full(1)) => {}
        other => panic!("a job admitted to wait with max_queued(0), the thread busy: {other:?}"),
    }
    go_tx.send(()).unwrap();
    // The room comes back when the thread returns.
    let next = bounded(
        "room after the thread returns",
        pool.submit_when_ready(common::double, 2),
    )
    .await
    .unwrap();
    assert_eq!(bounded("the next job", next).await, Ok(4));
    // A timed job that ends in time gives its room back before its caller hears of it.
    let quick = pool.try_submit(common::double, 3).unwrap();
    assert_eq!(bounded("a job in time", quick).await, Ok(6));
    let after = pool.try_submit(common::double, 4).expect("room at once");
    assert_eq!(bounded("the job after it", after).await, Ok(8));
}

/// A producer that cancels what it queued (a request that timed out, a `CancelOnDrop`)
/// gets the room back at once, but the cancelled job, with its argument, stayed in the
/// queue until a thread popped it: behind a busy thread, 10,000 of them piled up in a
/// queue bounded to one job. A push now drops them once the queue holds twice the pool's
/// bound (`max_workers + max_queued`).
#[test]
fn cancelled_jobs_do_not_pile_up_past_max_queued() {
    common::bounded_sync("10,000 jobs cancelled behind a busy thread", || {
        let pool = ThreadPoolExecutor::builder()
            .max_workers(1)
            .max_queued(1)
            .build()
            .unwrap();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let busy = pool.spawn(move || {
            started_tx.send(()).unwrap();
            go_rx.recv().is_ok()
        });
        started_rx.recv().unwrap();
        // What each job holds: its count says how many jobs are still kept somewhere.
        let argument = std::sync::Arc::new(());
        for i in 0..10_000 {
            let held = argument.clone();
            let handle = pool.spawn(move || drop(held));
            assert!(handle.cancel(), "job {i} was admitted and queued");
            let queued = pool.stats().jobs_queued;
            assert!(queued <= 4, "{queued} jobs held in a queue bounded to 1");
            let kept = std::sync::Arc::strong_count(&argument) - 1;
            assert!(kept <= 4, "{kept} cancelled jobs' closures kept");
        }
        go_tx.send(()).unwrap();
        assert!(busy.wait().unwrap());
    });
}

fn broken_initializer() {
    panic!("no configuration file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_when_ready_on_a_broken_pool_says_why_it_broke() {
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .max_queued(0)
        .initializer(broken_initializer)
        .build()
        .unwrap();
    // The pool breaks when its first worker's initializer panics.
    let first = bounded("the first job", pool.submit(common::double, 1)).await;
    assert!(first.unwrap_err().is_pool_broken());
    let handle = bounded(
        "room on a broken pool",
        pool.submit_when_ready(common::double, 2),
    )
    .await
    .unwrap();
    let error = bounded("its job", handle).await.unwrap_err();
    assert!(error.is_pool_broken(), "{error}");
    assert!(
        error.to_string().contains("no configuration file"),
        "{error}"
    );
}
