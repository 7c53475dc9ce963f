//! A job's panic in a worker process carries the worker's backtrace when `RUST_BACKTRACE`
//! asks for one, as a panic in the program itself would print it (CPython re-raises a
//! worker's exception with the remote traceback as its cause). Each case runs in a probe:
//! this test binary started again with the variable set or unset, which its workers
//! inherit.

mod common;

use common::*;
use futures::StreamExt;
use procpool::{ExecutorExt, JobError, ProcessPoolExecutor};
use std::process::{Command, Stdio};

/// The frame the backtrace must show.
#[inline(never)]
fn explode_in_the_job(depth: u32) -> u32 {
    if depth == 0 {
        panic!("deep failure");
    }
    explode_in_the_job(depth - 1) + 1
}

/// What the probe saw: for a single job and for an item of a chunk, whether the error had
/// a backtrace naming `explode_in_the_job`, as two lines of `yes` / `no` / `missing`.
fn describe(err: &JobError) -> &'static str {
    match err.backtrace() {
        Some(bt) if bt.contains("explode_in_the_job") => "yes",
        Some(_) => "other",
        None => "missing",
    }
}

#[test]
fn child_probe_a_panicking_job() {
    let Some(report) = std::env::var_os("PROCPOOL_TEST_BACKTRACE_REPORT") else {
        return; // only meaningful in a probe started by the tests below
    };
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .unwrap();
    let single = pool.submit(explode_in_the_job, 3).wait().unwrap_err();
    assert_eq!(single.panic_message(), Some("deep failure"));
    let items: Vec<_> = futures::executor::block_on(
        pool.map(explode_in_the_job, [0, 3])
            .chunk_size(2)
            .collect::<Vec<_>>(),
    );
    let item = items[1].as_ref().unwrap_err();
    let text = format!("{}\n{}\n", describe(&single), describe(item));
    std::fs::write(report, text).unwrap();
}

fn probe(backtrace: Option<&str>) -> String {
    let report = tempfile::tempdir().unwrap();
    let file = report.path().join("report");
    let mut probe = Command::new(std::env::current_exe().unwrap());
    probe
        .args(["--exact", "child_probe_a_panicking_job", "--test-threads=1"])
        .env("PROCPOOL_TEST_BACKTRACE_REPORT", &file)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(value) = backtrace {
        probe.env("RUST_BACKTRACE", value);
    }
    let status = bounded_sync("the probe", move || probe.status().unwrap());
    assert!(status.success(), "the probe failed: {status}");
    std::fs::read_to_string(file).unwrap()
}

#[test]
fn with_rust_backtrace_set_a_panic_carries_the_workers_backtrace() {
    assert_eq!(probe(Some("1")), "yes\nyes\n");
}

#[test]
fn without_it_there_is_none() {
    assert_eq!(probe(None), "missing\nmissing\n");
}
