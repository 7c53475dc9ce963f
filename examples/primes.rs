//! The classic exercise: count the primes below N by splitting the range into chunks, run
//! sequentially, on a ThreadPoolExecutor and on a ProcessPoolExecutor, and compare.
//!
//! ```text
//! cargo run --release --example primes -- [--n 5000000] [--chunks 64] [--workers <cpus>]
//! ```
//!
//! The job, `count_primes`, is the reference workload W4 of `shared/bench/WORKLOADS.md`
//! (trial division by every d with d*d <= n), shared with the benches and
//! `thread_vs_process`. Every count must agree (348,513 below 5,000,000); the example exits
//! with an error if they do not.

#[path = "support/mod.rs"]
mod support;

use procpool::{ExecutorExt, ProcessPoolExecutor, ThreadPoolExecutor};
use procpool_bench_support::workloads::{count_sequentially, ranges};
use std::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut flags = support::Flags::parse("primes [--n N] [--chunks C] [--workers W]")?;
    let n: u64 = flags.get("n", 5_000_000)?;
    let chunks: u64 = flags.get("chunks", 64)?;
    let workers: usize = flags.get("workers", support::cpus())?;
    flags.finish()?;
    if chunks == 0 || workers == 0 {
        return Err("--chunks and --workers must be at least 1".into());
    }
    let ranges = ranges(n, chunks);
    println!(
        "counting primes below {n} in {} chunks, {workers} workers\n",
        ranges.len()
    );

    let start = Instant::now();
    let sequential = count_sequentially(&ranges);
    let sequential_time = start.elapsed();

    let threads = ThreadPoolExecutor::new(workers)?;
    let (thread_count, thread_time) = support::count_primes_on(&threads, &ranges).await?;
    threads.shutdown().await;

    let start = Instant::now();
    let processes = ProcessPoolExecutor::builder()
        .max_workers(workers)
        .build()?;
    let (process_count, process_time) = support::count_primes_on(&processes, &ranges).await?;
    let process_total = start.elapsed();
    processes.shutdown().await;

    support::print_timings(
        "primes",
        &[
            ("sequential", sequential_time, sequential.to_string()),
            ("ThreadPoolExecutor", thread_time, thread_count.to_string()),
            (
                "ProcessPoolExecutor",
                process_time,
                process_count.to_string(),
            ),
        ],
    );
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
    if n == 5_000_000 && sequential != 348_513 {
        return Err(
            format!("expected 348,513 primes below 5,000,000, counted {sequential}").into(),
        );
    }
    println!("all counts agree");
    Ok(())
}
