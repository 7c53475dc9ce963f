//! A large answer is read into memory the parent already has mapped (the large argument
//! its worker received), not into fresh pages: counted in page faults, which is what
//! fresh memory costs. Its own test binary, so that no other test faults meanwhile.

mod common;

use common::*;
use procpool::{ExecutorExt, ProcessPoolExecutor};

fn echo(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

/// Minor page faults of this process so far.
fn minor_faults() -> i64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name: state (3), ..., minflt is field 10.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[7].parse().unwrap()
}

#[tokio::test]
async fn a_large_answer_is_read_into_the_arguments_buffer() {
    // Above 32 MiB, glibc's largest threshold for serving a buffer from its heap, so
    // that every new buffer this large is fresh memory from the kernel.
    const SIZE: usize = 48 << 20;
    const FRESH: i64 = (SIZE / 4096) as i64; // a fault per page of a new buffer
    let pool = ProcessPoolExecutor::new(1).unwrap();
    let payload: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let mut faults = Vec::new();
    for _ in 0..4 {
        let arg = payload.clone(); // faulted in here, not counted
        let before = minor_faults();
        let back = bounded("the echo", pool.submit(echo, arg)).await.unwrap();
        faults.push(minor_faults() - before);
        assert!(back == payload);
    }
    eprintln!("page faults per echo of {SIZE} bytes: {faults:?} (a new buffer: {FRESH})");
    // The first answer may land in fresh memory; after it, a round trip faults far less
    // than one new buffer's pages.
    assert!(
        faults[1..].iter().all(|&f| f < FRESH / 4),
        "{faults:?}: answers landed in fresh memory"
    );
    bounded("shutdown", pool.shutdown()).await;
}
