//! W6 (shared/bench/WORKLOADS.md) by size: echo a byte buffer of 16 B to 64 MiB through a
//! process pool, beside the floor of the same echo over a bare Unix socket to a child.
//!
//! `cargo bench --bench payload`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use procpool::{ExecutorExt, ProcessPoolExecutor};
use procpool_bench_support::workloads::echo;
use procpool_bench_support::{criterion_main_with_floor, floor};

fn w6_payload(c: &mut Criterion) {
    let mut group = c.benchmark_group("w6_echo");
    group.sample_size(10);
    let pool = ProcessPoolExecutor::new(1).unwrap();
    let floor = floor::Floor::new().unwrap();
    let (child, mut stream) = floor.peer().unwrap();
    let mut back = Vec::new();
    for size in [16, 1 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("socket_floor", size), &payload, |b, p| {
            b.iter(|| floor::round_trip(&mut stream, p, &mut back).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("process_pool", size), &payload, |b, p| {
            b.iter_batched(
                || p.clone(),
                |p| assert_eq!(pool.submit(echo, p).wait().unwrap().len(), size),
                criterion::BatchSize::PerIteration,
            )
        });
    }
    floor::reap(child);
    group.finish();
}

criterion_group!(benches, w6_payload);

criterion_main_with_floor!(benches);
