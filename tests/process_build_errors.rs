//! `build()` returns its error when setting a pool up fails, also inside an async runtime.
//! Its own test binary: it lowers the process's open-file limit, which no other test may
//! share.
//!
//! Regression: the supervision runtime was created on the caller's thread, and dropped
//! there when a later step failed (the socket, say); inside `#[tokio::main]` that drop
//! panicked ("Cannot drop a runtime in a context where blocking is not allowed") where a
//! plain thread got `Err(Io)`.

mod common;

use common::*;
use procpool::{Error, ProcessPoolExecutor};
use std::fs::File;

/// The open-file limit of this process: (soft, hard).
fn open_file_limit() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// Sets this process's soft open-file limit with util-linux's `prlimit`.
fn set_soft_limit(soft: u64, hard: u64) {
    let status = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={soft}:{hard}"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit failed: {status}");
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[tokio::test]
async fn building_a_pool_short_of_file_descriptors_is_an_error_not_a_panic() {
    let (soft, hard) = open_file_limit();
    let mut failed = 0;
    // From no descriptor to spare up to enough for a whole pool: every step of setting up
    // fails once, whichever comes first.
    for spare in 0..16 {
        // Descriptors kept aside, so that restoring the limit (which starts a process)
        // has room.
        let reserve: Vec<File> = (0..8).map(|_| File::open("/dev/null").unwrap()).collect();
        set_soft_limit(open_fds() - 1 + spare, hard);
        let built =
            std::panic::catch_unwind(|| ProcessPoolExecutor::builder().max_workers(1).build());
        drop(reserve);
        set_soft_limit(soft, hard);
        match built {
            Ok(Ok(pool)) => drop(pool),
            Ok(Err(Error::Io { .. })) => failed += 1,
            Ok(Err(other)) => panic!("with {spare} spare descriptors: {other:?}"),
            Err(_) => panic!("build() panicked with {spare} spare descriptors"),
        }
    }
    assert!(failed > 0, "no attempt ran out of descriptors");
    // The pool builds and works again with the limit restored.
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .unwrap();
    use procpool::ExecutorExt;
    assert_eq!(bounded("job", pool.submit(double, 21)).await, Ok(42));
}
