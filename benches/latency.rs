//! W1 (shared/bench/WORKLOADS.md): one sequential round trip of a `u64 -> u64` job on each
//! executor, beside the floor: a 16-byte ping-pong with a child process over a bare Unix
//! socket.
//!
//! `cargo bench --bench latency`

use criterion::{Criterion, criterion_group};
use procpool::{ExecutorExt, ProcessPoolExecutor, ThreadPoolExecutor};
use procpool_bench_support::workloads::ident;
use procpool_bench_support::{criterion_main_with_floor, floor};

fn w1_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("w1_round_trip");

    let floor = floor::Floor::new().unwrap();
    let (child, mut stream) = floor.peer().unwrap();
    let mut back = Vec::new();
    group.bench_function("socket_floor", |b| {
        b.iter(|| floor::round_trip(&mut stream, &[7; 16], &mut back).unwrap())
    });
    floor::reap(child);

    let processes = ProcessPoolExecutor::new(2).unwrap();
    let mut x = 0_u64;
    group.bench_function("process_pool", |b| {
        b.iter(|| {
            x += 1;
            assert_eq!(processes.submit(ident, x).wait(), Ok(x));
        })
    });

    let threads = ThreadPoolExecutor::new(2).unwrap();
    group.bench_function("thread_pool", |b| {
        b.iter(|| {
            x += 1;
            assert_eq!(threads.submit(ident, x).wait(), Ok(x));
        })
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    group.bench_function("tokio_spawn_blocking", |b| {
        b.iter(|| {
            x += 1;
            let got = runtime.block_on(runtime.spawn_blocking(move || ident(x)));
            assert_eq!(got.unwrap(), x);
        })
    });
    group.finish();
}

criterion_group!(benches, w1_latency);

criterion_main_with_floor!(benches);
