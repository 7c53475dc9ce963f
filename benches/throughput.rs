//! W2 and W3 (shared/bench/WORKLOADS.md) by worker count: submit 100,000 `x -> x * 2` jobs
//! and gather them (the sum must be 9,999,900,000); map the same over 1,000,000 items with
//! chunks of 1,000 and with automatic chunking.
//!
//! `cargo bench --bench throughput`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::TryStreamExt;
use futures::executor::block_on;
use procpool::{Executor, ExecutorExt, ProcessPoolExecutor, ThreadPoolExecutor};
use procpool_bench_support::workloads::double;

const W2_N: u64 = 100_000;
const W3_N: u64 = 1_000_000;

fn pools(workers: usize) -> [(&'static str, Box<dyn Executor>); 2] {
    [
        (
            "threads",
            Box::new(ThreadPoolExecutor::new(workers).unwrap()),
        ),
        (
            "processes",
            Box::new(ProcessPoolExecutor::new(workers).unwrap()),
        ),
    ]
}

fn w2_submit(c: &mut Criterion) {
    let mut group = c.benchmark_group("w2_submit_100k");
    group.throughput(Throughput::Elements(W2_N));
    group.sample_size(10);
    for workers in [1, 2] {
        for (name, pool) in pools(workers) {
            pool.submit(double, 0).wait().unwrap();
            group.bench_with_input(BenchmarkId::new(name, workers), &pool, |b, pool| {
                b.iter(|| {
                    let handles: Vec<_> = (0..W2_N).map(|x| pool.submit(double, x)).collect();
                    let sum: u64 = handles.into_iter().map(|h| h.wait().unwrap()).sum();
                    assert_eq!(sum, 9_999_900_000);
                })
            });
        }
    }
    group.finish();
}

fn w3_map(c: &mut Criterion) {
    let mut group = c.benchmark_group("w3_map_1m");
    group.throughput(Throughput::Elements(W3_N));
    group.sample_size(10);
    for workers in [1, 2] {
        for (name, pool) in pools(workers) {
            for chunk in [Some(1000), None] {
                let label = format!("{name}/{}", chunk.map_or("auto".into(), |c| c.to_string()));
                group.bench_with_input(BenchmarkId::new(label, workers), &pool, |b, pool| {
                    b.iter(|| {
                        let map = pool.map(double, 0..W3_N);
                        let map = match chunk {
                            Some(c) => map.chunk_size(c),
                            None => map,
                        };
                        let sum = block_on(map.try_fold(0, |a, x| async move { Ok(a + x) }));
                        assert_eq!(sum, Ok(999_999_000_000));
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, w2_submit, w3_map);
criterion_main!(benches);
