//! Mapping 10,000,000 items on a process pool keeps the parent's memory bounded: items are
//! pulled lazily and only a few chunks are in flight. Its own test binary, so that the peak
//! RSS it reads belongs to this test alone.

mod common;

use common::*;
use futures::StreamExt;
use procpool::{ExecutorExt, ProcessPoolExecutor};

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

fn triple(x: u64) -> u64 {
    x * 3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_ten_million_items_keeps_the_parent_small() {
    const N: u64 = 10_000_000;
    let pool = ProcessPoolExecutor::builder()
        .max_workers(2)
        .build()
        .unwrap();
    let before = peak_rss_kib();
    let mut stream = pool.map(triple, 0..N);
    let mut count = 0_u64;
    let mut sum = 0_u64;
    while let Some(result) = bounded("next item", stream.next()).await {
        sum += result.unwrap();
        count += 1;
    }
    assert_eq!(count, N);
    assert_eq!(sum, 3 * (N * (N - 1) / 2));
    let peak = peak_rss_kib();
    // Holding every item or result at once would take 80 MB each.
    assert!(
        peak < 64 * 1024,
        "peak RSS {peak} KiB (was {before} KiB before mapping)"
    );
    eprintln!("peak RSS: {before} KiB before, {peak} KiB after mapping {N} items");
}
