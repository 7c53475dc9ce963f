//! `map`'s automatic chunk size through the public API, on both pools: heavy items go to
//! the workers one by one, cheap ones in batches.

mod common;

use common::*;
use futures::TryStreamExt;
use procpool::ExecutorExt;
use std::time::Duration;

fn heavy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn cheap(x: u64) -> u64 {
    x ^ 0x5a
}

#[tokio::test]
async fn heavy_items_of_a_new_function_go_one_per_chunk() {
    for (name, pool) in pools(2) {
        let before = pool.stats().jobs_completed;
        let results: Vec<u64> = bounded(
            "the map",
            pool.map(heavy, [30, 20, 30, 20, 30, 20, 30, 20])
                .try_collect(),
        )
        .await
        .unwrap();
        assert_eq!(results, [30, 20, 30, 20, 30, 20, 30, 20], "{name}");
        // Unknown cost: one item; then each costs 20-30 ms, far more than a chunk's 2 ms.
        assert_eq!(
            pool.stats().jobs_completed - before,
            8,
            "{name}: one job per item"
        );
    }
}

#[tokio::test]
async fn cheap_items_go_in_batches() {
    const N: u64 = 200_000;
    for (name, pool) in pools(2) {
        let before = pool.stats().jobs_completed;
        let sum: u64 = bounded(
            "the map",
            pool.map(cheap, 0..N)
                .try_fold(0, |a, b| async move { Ok(a + b) }),
        )
        .await
        .unwrap();
        assert_eq!(sum, (0..N).map(cheap).sum::<u64>(), "{name}");
        let jobs = pool.stats().jobs_completed - before;
        // Items that take nanoseconds: after the first measurements, chunks of
        // thousands (the last few shrink to single items near the end).
        assert!(jobs < N / 20, "{name}: {jobs} jobs for {N} items");
    }
}

fn fails_on_seven(x: u64) -> u64 {
    assert_ne!(x, 7, "seven fails");
    x
}

#[tokio::test]
async fn try_collect_vec_of_an_endless_input_ends_at_its_first_failed_item() {
    for (name, pool) in pools(2) {
        // Endless, and as long as an exact hint can say: neither is gathered room for.
        let endless = bounded(
            "an endless map",
            pool.map(fails_on_seven, 0_u64..)
                .chunk_size(4)
                .try_collect_vec(),
        );
        assert!(
            matches!(endless.await, Err(procpool::JobError::Panicked { .. })),
            "{name}"
        );
        let huge = bounded(
            "a map of 2^40 items",
            pool.map(fails_on_seven, 0..1_u64 << 40)
                .chunk_size(4)
                .try_collect_vec(),
        );
        assert!(
            matches!(huge.await, Err(procpool::JobError::Panicked { .. })),
            "{name}"
        );
        pool.shutdown().await;
    }
}

#[tokio::test]
async fn the_size_hint_of_an_endless_map_saturates() {
    use futures::{Stream, StreamExt};
    for (name, pool) in pools(2) {
        let mut map = pool.map(double, 0_u64..).chunk_size(4);
        let first = bounded("the first result", map.next()).await;
        assert_eq!(first.map(|r| r.ok()), Some(Some(0)), "{name}");
        // Items in flight plus an endless rest: no overflow, the most a usize holds.
        assert_eq!(map.size_hint(), (usize::MAX, None), "{name}");
        drop(map);
        pool.shutdown().await;
    }
}

/// Waits for the gate at `path`, or (with `open`) opens it.
fn wait_or_open((path, open): (String, bool)) -> bool {
    if open {
        std::fs::write(&path, b"open").unwrap();
    } else {
        assert!(wait_until_exists(&path), "gate never opened");
    }
    open
}

/// A slow stream: the second item comes once the first chunk is in flight, while the pool
/// has an idle worker. It must reach that worker: here it opens the gate the first item
/// waits on, so holding it back (as the map did while any chunk of its own was out)
/// hangs the map. (Found by a helper's review.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_streams_partial_chunk_goes_out_while_a_worker_idles() {
    use futures::{FutureExt, StreamExt};
    for (name, pool) in pools(2) {
        let gate = Gate::new();
        let (tx, rx) = futures::channel::mpsc::unbounded::<(String, bool)>();
        let mut map = pool.map_stream_unordered(wait_or_open, rx).chunk_size(4);
        tx.unbounded_send((gate.path(), false)).unwrap();
        assert!(map.next().now_or_never().is_none(), "{name}: done at once");
        tx.unbounded_send((gate.path(), true)).unwrap();
        // The input stays open (a live event stream): only the pool can free the items.
        let results: Vec<_> = bounded(name, (&mut map).take(2).collect::<Vec<_>>()).await;
        assert_eq!(results.len(), 2, "{name}");
        drop(tx);
        bounded(name, pool.shutdown()).await;
    }
}
