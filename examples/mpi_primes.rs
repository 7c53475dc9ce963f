//! The primes count of `primes`, on an MPI job: rank 0 supervises, every other rank runs
//! jobs in local worker processes (feature `mpi`).
//!
//! ```text
//! cargo build --release --features mpi --example mpi_primes
//! mpirun -n 3 --oversubscribe target/release/examples/mpi_primes [--n 5000000] [--chunks 64] [--workers-per-rank W]
//! ```
//!
//! As root, Open MPI also wants `OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1`;
//! on several hosts, add `--hostfile hosts` and put the binary (or a copy of the same
//! build) at the same path on each. Rank 0 prints the time and the speedup against the
//! sequential count it also makes, and exits with an error unless every count agrees
//! (348,513 below 5,000,000).

#[path = "support/mod.rs"]
mod support;

use procpool::{Executor, ExecutorExt, MpiPoolExecutor, ProcessPoolExecutor};
use procpool_bench_support::workloads::{count_sequentially, ranges};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut flags = support::Flags::parse(
        "mpirun -n 3 mpi_primes [--n N] [--chunks C] [--workers-per-rank W]",
    )?;
    let n: u64 = flags.get("n", 5_000_000)?;
    let chunks: u64 = flags.get("chunks", 64)?;
    let per_rank: usize = flags.get("workers-per-rank", 0)?;
    flags.finish()?;
    let mut local = ProcessPoolExecutor::builder();
    if per_rank > 0 {
        local = local.max_workers(per_rank);
    }
    // Every rank runs the lines above; from here on, only rank 0.
    let pool = MpiPoolExecutor::world(local)?;
    let ranges = ranges(n, chunks.max(1));
    println!(
        "counting primes below {n} in {} chunks on {} workers (by rank: {:?})\n",
        ranges.len(),
        pool.max_workers(),
        pool.workers_by_rank()
    );

    let start = Instant::now();
    let sequential = count_sequentially(&ranges);
    let sequential_time = start.elapsed();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (count, cluster_time) = runtime.block_on(async {
        let counted = support::count_primes_on(&pool, &ranges).await;
        pool.shutdown().await;
        counted
    })?;

    support::print_timings(
        "mpi_primes",
        &[
            (
                "sequential (rank 0)",
                sequential_time,
                sequential.to_string(),
            ),
            ("MpiPoolExecutor", cluster_time, count.to_string()),
        ],
    );
    println!(
        "\nspeedup {:.2} on {} workers",
        sequential_time.as_secs_f64() / cluster_time.as_secs_f64(),
        pool.max_workers()
    );
    if count != sequential {
        return Err(format!("counts disagree: sequential {sequential}, MPI {count}").into());
    }
    if n == 5_000_000 && sequential != 348_513 {
        return Err(
            format!("expected 348,513 primes below 5,000,000, counted {sequential}").into(),
        );
    }
    println!("all counts agree");
    Ok(())
}
