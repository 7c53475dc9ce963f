//! The classic exercise: count the primes below N by splitting the range into chunks, run
//! sequentially, on a ThreadPoolExecutor and on a ProcessPoolExecutor, and compare.
//!
//! ```text
//! cargo run --release --example primes -- [--n 5000000] [--chunks 64] [--workers <cpus>]
//! ```
//!
//! `is_prime` is the reference workload W4 of `shared/bench/WORKLOADS.md`: trial division
//! by every d with d*d <= n. Every count must agree (348,513 below 5,000,000); the example
//! exits with an error if they do not.

use procpool::{Executor, ExecutorExt, ProcessPoolExecutor, ThreadPoolExecutor};
use std::time::{Duration, Instant};

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Counts the primes in `[lo, hi)`: one job.
fn count_primes((lo, hi): (u64, u64)) -> u64 {
    (lo..hi).filter(|&n| is_prime(n)).count() as u64
}

/// `chunks` ranges of (almost) equal length covering `[0, n)`.
fn ranges(n: u64, chunks: u64) -> Vec<(u64, u64)> {
    (0..chunks)
        .map(|i| (n * i / chunks, n * (i + 1) / chunks))
        .filter(|(lo, hi)| lo < hi)
        .collect()
}

struct Args {
    n: u64,
    chunks: u64,
    workers: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        n: 5_000_000,
        chunks: 64,
        workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => args.n = value()?.parse().map_err(|e| format!("--n: {e}"))?,
            "--chunks" => args.chunks = value()?.parse().map_err(|e| format!("--chunks: {e}"))?,
            "--workers" => {
                args.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?
            }
            "-h" | "--help" => {
                println!("usage: primes [--n N] [--chunks C] [--workers W]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if args.chunks == 0 || args.workers == 0 {
        return Err("--chunks and --workers must be at least 1".into());
    }
    Ok(args)
}

/// Submits one job per range and sums the counts; the pool is warmed up first so that the
/// time is the computation, not the start-up.
async fn run_on(
    pool: &dyn Executor,
    ranges: &[(u64, u64)],
) -> Result<(u64, Duration), procpool::Error> {
    pool.submit(count_primes, (0, 1)).await?; // warm-up: every worker is started
    let start = Instant::now();
    let handles: Vec<_> = ranges
        .iter()
        .map(|&r| pool.submit(count_primes, r))
        .collect();
    let mut total = 0;
    for handle in handles {
        total += handle.await?;
    }
    Ok((total, start.elapsed()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let ranges = ranges(args.n, args.chunks);
    println!(
        "counting primes below {} in {} chunks, {} workers\n",
        args.n,
        ranges.len(),
        args.workers
    );

    let start = Instant::now();
    let sequential: u64 = ranges.iter().map(|&r| count_primes(r)).sum();
    let sequential_time = start.elapsed();

    let threads = ThreadPoolExecutor::new(args.workers)?;
    let (thread_count, thread_time) = run_on(&threads, &ranges).await?;
    threads.shutdown().await;

    let start = Instant::now();
    let processes = ProcessPoolExecutor::builder()
        .max_workers(args.workers)
        .build()?;
    let (process_count, process_time) = run_on(&processes, &ranges).await?;
    let process_total = start.elapsed();
    processes.shutdown().await;

    println!(
        "{:<22} {:>12} {:>9} {:>10}",
        "executor", "time", "speedup", "primes"
    );
    for (name, time, count) in [
        ("sequential", sequential_time, sequential),
        ("ThreadPoolExecutor", thread_time, thread_count),
        ("ProcessPoolExecutor", process_time, process_count),
    ] {
        let speedup = sequential_time.as_secs_f64() / time.as_secs_f64();
        println!(
            "{name:<22} {:>9.1} ms {speedup:>8.2}x {count:>10}",
            time.as_secs_f64() * 1e3
        );
    }
    println!(
        "\n(process pool including start-up and warm-up: {:.1} ms)",
        process_total.as_secs_f64() * 1e3
    );

    if thread_count != sequential || process_count != sequential {
        return Err(format!(
            "counts disagree: sequential {sequential}, threads {thread_count}, processes {process_count}"
        )
        .into());
    }
    if args.n == 5_000_000 && sequential != 348_513 {
        return Err(
            format!("expected 348,513 primes below 5,000,000, counted {sequential}").into(),
        );
    }
    println!("all counts agree");
    Ok(())
}
