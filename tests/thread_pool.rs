//! ThreadPoolExecutor behaviour: closures, panics, initializer, defaults.

mod common;

use common::*;
use procpool::{Error, Executor, ExecutorExt, JobError, ThreadPoolExecutor};
use std::sync::atomic::{AtomicUsize, Ordering};

#[tokio::test]
async fn spawn_runs_capturing_closures() {
    let pool = ThreadPoolExecutor::new(2).unwrap();
    let words = ["a".to_string(), "bb".to_string()];
    let total = bounded(
        "spawn",
        pool.spawn(move || words.iter().map(String::len).sum::<usize>()),
    )
    .await;
    assert_eq!(total, Ok(3));
    // No serde bound on spawn: any Send type comes back.
    let cell = bounded("spawn", pool.spawn(|| std::rc::Rc::new(5).as_ref() + 1)).await;
    assert_eq!(cell, Ok(6));
}

#[tokio::test]
async fn a_panicking_job_leaves_its_thread_serving() {
    let pool = ThreadPoolExecutor::new(1).unwrap();
    let thread = || std::thread::current().id();
    let before = bounded("before", pool.spawn(thread)).await.unwrap();
    let err = bounded(
        "panic",
        pool.spawn(|| -> u8 { panic!("thread boom {}", 7) }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.panic_message(), Some("thread boom 7"));
    assert!(matches!(err, JobError::Panicked { location: None, .. }));
    let err = bounded("submit", pool.submit(fail_on_seven, 7))
        .await
        .unwrap_err();
    assert!(err.is_panic());
    let after = bounded("after", pool.spawn(thread)).await.unwrap();
    assert_eq!(before, after, "the same thread keeps serving");
}

#[tokio::test]
async fn a_running_job_cannot_be_cancelled_on_threads() {
    let pool = ThreadPoolExecutor::new(1).unwrap();
    let gate = Gate::new();
    let pid_file = gate.sibling("started");
    let running = pool.submit(report_pid_then_wait, (pid_file.clone(), gate.path()));
    bounded_sync("start", move || read_pid(&pid_file));
    assert!(!running.cancel(), "threads cannot be stopped");
    gate.open();
    assert!(bounded("running", running).await.is_ok());
}

static THREAD_INITS: AtomicUsize = AtomicUsize::new(0);

fn count_thread_init() {
    THREAD_INITS.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test]
async fn the_initializer_runs_once_per_thread() {
    let pool = ThreadPoolExecutor::builder()
        .max_workers(3)
        .thread_name("init-test")
        .initializer(count_thread_init)
        .build()
        .unwrap();
    let name = bounded(
        "name",
        pool.spawn(|| std::thread::current().name().map(str::to_owned)),
    )
    .await;
    assert_eq!(name.unwrap().as_deref(), Some("init-test"));
    bounded("shutdown", pool.shutdown()).await;
    assert_eq!(THREAD_INITS.load(Ordering::SeqCst), 3);
}

fn bad_thread_init() {
    panic!("cannot open the model")
}

#[tokio::test]
async fn a_panicking_initializer_breaks_the_thread_pool() {
    let pool = ThreadPoolExecutor::builder()
        .max_workers(1)
        .initializer(bad_thread_init)
        .build()
        .unwrap();
    let err = bounded("job", pool.submit(double, 1)).await.unwrap_err();
    assert!(err.is_pool_broken(), "{err:?}");
    assert!(err.to_string().contains("cannot open the model"), "{err}");
}

#[test]
fn defaults_and_validation() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let pool = ThreadPoolExecutor::builder().build().unwrap();
    assert_eq!(pool.max_workers(), (cpus + 4).min(32));
    assert!(matches!(ThreadPoolExecutor::new(0), Err(Error::Config(_))));
}

#[tokio::test]
async fn dropping_the_pool_ends_queued_jobs_without_blocking() {
    let pool = ThreadPoolExecutor::new(1).unwrap();
    let gate = Gate::new();
    let pid_file = gate.sibling("started");
    let running = pool.submit(report_pid_then_wait, (pid_file.clone(), gate.path()));
    bounded_sync("start", move || read_pid(&pid_file));
    let queued = pool.submit(double, 1);
    drop(pool); // must not wait for the running job
    assert_eq!(bounded("queued", queued).await, Err(JobError::ShutDown));
    gate.open();
    assert!(
        bounded("running", running).await.is_ok(),
        "the running job finishes"
    );
}
