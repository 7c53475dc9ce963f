//! A process pool in an unusual environment: a temporary directory that is not UTF-8 or
//! is very long, a parent whose standard output and error are closed (as a daemon's are),
//! a parent killed with SIGKILL. Each runs in a probe: this test binary started again with
//! the environment under test.
//!
//! Regressions: a non-UTF-8 `TMPDIR` gave `build()` → `Ok`, then `PoolBroken` (the socket
//! path reached the worker through a lossy `display()`); a `TMPDIR` over the 108-byte
//! socket-path limit failed `build()`; with fds 1 and 2 closed, the worker's socket landed
//! on fd 1 and the first job that printed broke the protocol; a SIGKILLed parent left its
//! `procpool-XXXX` socket directory behind. The pool now has no socket path at all.

mod common;

use common::*;
use procpool::{ExecutorExt, ProcessPoolExecutor};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Prints to standard output and error, then answers.
fn print_lots(lines: u32) -> u32 {
    for i in 0..lines {
        println!("line {i} to stdout");
        eprintln!("line {i} to stderr");
    }
    lines
}

/// The probe: builds a pool, runs jobs that print, and leaves `ok` in
/// `PROCPOOL_TEST_PROBE_DIR`; with `PROCPOOL_TEST_CLOSE_STDIO`, first closes its standard
/// output and error; with `PROCPOOL_TEST_HOLD`, then waits to be killed.
#[test]
fn child_probe_a_pool_in_this_environment() {
    let Some(dir) = std::env::var_os("PROCPOOL_TEST_PROBE_DIR") else {
        return; // only meaningful in a probe started by the tests below
    };
    let dir = PathBuf::from(dir);
    if std::env::var_os("PROCPOOL_TEST_CLOSE_STDIO").is_some() {
        close_stdout_and_stderr();
    }
    let pool = ProcessPoolExecutor::builder()
        .max_workers(2)
        .build()
        .unwrap();
    assert_eq!(pool.submit(print_lots, 1000).wait(), Ok(1000));
    assert_eq!(pool.submit(double, 21).wait(), Ok(42));
    let worker = pool.submit(pid, ()).wait().unwrap();
    std::fs::write(dir.join("worker"), worker.to_string()).unwrap();
    std::fs::write(dir.join("ok"), b"").unwrap();
    if std::env::var_os("PROCPOOL_TEST_HOLD").is_some() {
        std::thread::sleep(BOUND); // killed long before this ends
    }
}

/// Runs the probe with `configure` applied; returns the directory it reports in.
fn run_probe(configure: impl FnOnce(&mut Command)) -> tempfile::TempDir {
    let report = tempfile::tempdir().unwrap();
    let mut probe = Command::new(std::env::current_exe().unwrap());
    probe
        .args([
            "--exact",
            "child_probe_a_pool_in_this_environment",
            "--test-threads=1",
        ])
        .env("PROCPOOL_TEST_PROBE_DIR", report.path())
        .stdout(Stdio::null());
    configure(&mut probe);
    let status = bounded_sync("the probe", move || probe.status().unwrap());
    assert!(status.success(), "the probe failed: {status}");
    assert!(
        report.path().join("ok").exists(),
        "the probe did not finish"
    );
    report
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn a_temporary_directory_that_is_not_utf8_or_is_very_long_is_harmless() {
    let base = tempfile::tempdir().unwrap();
    let odd = base
        .path()
        .join(OsString::from_vec(b"not \xff\xfe utf-8".to_vec()));
    let long = base.path().join("d".repeat(200));
    for tmp in [odd, long] {
        std::fs::create_dir(&tmp).unwrap();
        run_probe(|probe| {
            probe.env("TMPDIR", &tmp);
        });
        assert_eq!(entries(&tmp), Vec::<PathBuf>::new(), "left in {tmp:?}");
    }
}

#[test]
fn a_parent_whose_stdout_and_stderr_are_closed_is_served() {
    run_probe(|probe| {
        probe.env("PROCPOOL_TEST_CLOSE_STDIO", "1");
    });
}

#[test]
fn a_sigkilled_parent_leaves_nothing_in_the_temporary_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let report = tempfile::tempdir().unwrap();
    let mut parent = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_probe_a_pool_in_this_environment",
            "--test-threads=1",
        ])
        .env("PROCPOOL_TEST_PROBE_DIR", report.path())
        .env("PROCPOOL_TEST_HOLD", "1")
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ok = report.path().join("ok");
    assert!(
        wait_until_exists(ok.to_str().unwrap()),
        "the probe never got ready"
    );
    let worker = read_pid(report.path().join("worker").to_str().unwrap()) as u32;
    parent.kill().unwrap(); // SIGKILL: no destructor, no drop, nothing runs
    parent.wait().unwrap();
    bounded_sync("the worker to follow its parent", move || {
        while !is_gone(worker) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    });
    assert_eq!(entries(tmp.path()), Vec::<PathBuf>::new(), "left behind");
}
