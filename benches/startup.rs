//! W5 (shared/bench/WORKLOADS.md): from creating a process pool of 2 workers to its first
//! job's result, then shutting it down; beside the floor of starting two bare-socket echo
//! children and getting a first reply.
//!
//! `cargo bench --bench startup`

use criterion::{Criterion, criterion_group};
use futures::executor::block_on;
use procpool::{ExecutorExt, ProcessPoolExecutor};
use procpool_bench_support::workloads::ident;
use procpool_bench_support::{criterion_main_with_floor, floor};

fn w5_startup(c: &mut Criterion) {
    let mut group = c.benchmark_group("w5_start_2_workers");
    group.sample_size(20);
    group.bench_function("process_pool_first_result_and_shutdown", |b| {
        b.iter(|| {
            let pool = ProcessPoolExecutor::new(2).unwrap();
            assert_eq!(pool.submit(ident, 7).wait(), Ok(7));
            block_on(pool.shutdown());
        })
    });
    group.bench_function("socket_floor_first_reply", |b| {
        b.iter(|| {
            let floor = floor::Floor::new().unwrap();
            let children = [floor.spawn().unwrap(), floor.spawn().unwrap()];
            let (mut stream, _) = floor.listener.accept().unwrap();
            let mut back = Vec::new();
            floor::round_trip(&mut stream, &[7; 16], &mut back).unwrap();
            children.into_iter().for_each(floor::reap);
        })
    });
    group.finish();
}

criterion_group!(benches, w5_startup);

criterion_main_with_floor!(benches);
