//! W4 (shared/bench/WORKLOADS.md), scaled down to primes below 1,000,000 (78,498 of them) in
//! 64 ranges: sequential, then each executor with 1 and 2 workers, and rayon.
//!
//! `cargo bench --bench cpu`

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use procpool::{Executor, ExecutorExt, ProcessPoolExecutor, ThreadPoolExecutor};
use procpool_bench_support::workloads::{count_primes, count_sequentially, ranges};

const LIMIT: u64 = 1_000_000;
const EXPECTED: u64 = 78_498;

fn w4_scaling(c: &mut Criterion) {
    let ranges = ranges(LIMIT, 64);
    let mut group = c.benchmark_group("w4_primes_1m");
    group.sample_size(10);
    group.bench_function("sequential", |b| {
        b.iter(|| assert_eq!(count_sequentially(&ranges), EXPECTED))
    });
    for workers in [1, 2] {
        let pools: [(&str, Box<dyn Executor>); 2] = [
            (
                "threads",
                Box::new(ThreadPoolExecutor::new(workers).unwrap()),
            ),
            (
                "processes",
                Box::new(ProcessPoolExecutor::new(workers).unwrap()),
            ),
        ];
        for (name, pool) in pools {
            pool.submit(count_primes, (0, 1)).wait().unwrap();
            group.bench_with_input(BenchmarkId::new(name, workers), &pool, |b, pool| {
                b.iter(|| {
                    let handles: Vec<_> = ranges
                        .iter()
                        .map(|&r| pool.submit(count_primes, r))
                        .collect();
                    let total: u64 = handles.into_iter().map(|h| h.wait().unwrap()).sum();
                    assert_eq!(total, EXPECTED);
                })
            });
        }
        let rayon = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .build()
            .unwrap();
        group.bench_with_input(BenchmarkId::new("rayon", workers), &rayon, |b, rayon| {
            b.iter(|| {
                use rayon::prelude::*;
                let total: u64 =
                    rayon.install(|| ranges.par_iter().map(|&r| count_primes(r)).sum());
                assert_eq!(total, EXPECTED);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, w4_scaling);
criterion_main!(benches);
