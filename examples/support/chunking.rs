//! `thread_vs_process`'s rows for `map`'s automatic chunk size: W4 through `map` with the
//! default chunking against the same jobs submitted one by one, and a mixed-cost map (items
//! whose cost varies 100× at random) with the default against fixed chunk sizes.

use procpool::{Executor, ExecutorExt};
use procpool_bench_support::workloads::{count_primes, mixed_items, mixed_work};
use std::time::{Duration, Instant};

/// The mixed-cost map's length: about 0.5 s of work on one core.
pub const MIXED_N: usize = 4_000;
/// The fixed chunk sizes the default is measured against.
pub const MIXED_CHUNKS: [usize; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// W4's primes through `pool.map(count_primes, ranges)`, chunked by default; the count and
/// the time it took.
pub async fn primes_by_map(
    pool: &dyn Executor,
    ranges: &[(u64, u64)],
) -> Result<(u64, Duration), procpool::JobError> {
    use futures::TryStreamExt;
    pool.submit(count_primes, (0, 1)).await?; // every worker is started
    let start = Instant::now();
    let count = pool
        .map(count_primes, ranges.iter().copied())
        .try_fold(0, |a, b| async move { Ok(a + b) })
        .await?;
    Ok((count, start.elapsed()))
}

/// The mixed-cost map on `pool` with `chunk` items per chunk (`None`: the default); its
/// checksum and the time it took.
pub async fn mixed_map(
    pool: &dyn Executor,
    chunk: Option<usize>,
) -> Result<(u64, Duration), procpool::JobError> {
    use futures::TryStreamExt;
    let items = mixed_items(MIXED_N);
    pool.submit(mixed_work, 1).await?;
    let start = Instant::now();
    let map = pool.map(mixed_work, items);
    let map = match chunk {
        Some(size) => map.chunk_size(size),
        None => map,
    };
    let sum = map
        .try_fold(0_u64, |a, b| async move { Ok(a.wrapping_add(b)) })
        .await?;
    Ok((sum, start.elapsed()))
}

/// The mixed-cost map's checksum and time on this thread alone.
pub fn mixed_sequentially() -> (u64, Duration) {
    let items = mixed_items(MIXED_N);
    let start = Instant::now();
    let sum = items
        .into_iter()
        .map(mixed_work)
        .fold(0_u64, u64::wrapping_add);
    (sum, start.elapsed())
}
