//! W1 (shared/bench/WORKLOADS.md): one sequential round trip of a `u64 -> u64` job, on each
//! executor, beside the floor of a bare Unix-socket ping-pong of 16 bytes.
//!
//! `cargo bench --bench latency`

use criterion::{Criterion, criterion_group, criterion_main};
use procpool::{ExecutorExt, ProcessPoolExecutor, ThreadPoolExecutor};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

fn identity(x: u64) -> u64 {
    x
}

fn w1_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("w1_round_trip");

    let (mut near, mut far) = UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0_u8; 16];
        while far.read_exact(&mut buf).is_ok() {
            if far.write_all(&buf).is_err() {
                break;
            }
        }
    });
    group.bench_function("socket_floor", |b| {
        let mut buf = [7_u8; 16];
        b.iter(|| {
            near.write_all(&buf).unwrap();
            near.read_exact(&mut buf).unwrap();
        })
    });
    drop(near);
    echo.join().unwrap();

    let processes = ProcessPoolExecutor::builder()
        .max_workers(2)
        .build()
        .unwrap();
    let mut x = 0_u64;
    group.bench_function("process_pool", |b| {
        b.iter(|| {
            x += 1;
            assert_eq!(processes.submit(identity, x).wait(), Ok(x));
        })
    });

    let threads = ThreadPoolExecutor::new(2).unwrap();
    group.bench_function("thread_pool", |b| {
        b.iter(|| {
            x += 1;
            assert_eq!(threads.submit(identity, x).wait(), Ok(x));
        })
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    group.bench_function("tokio_spawn_blocking", |b| {
        b.iter(|| {
            x += 1;
            let got = runtime.block_on(runtime.spawn_blocking(move || identity(x)));
            assert_eq!(got.unwrap(), x);
        })
    });
    group.finish();
}

criterion_group!(benches, w1_latency);
criterion_main!(benches);
