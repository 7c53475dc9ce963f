//! The classic parallel exercise: a moving-average filter over a long signal, run
//! sequentially, on a ThreadPoolExecutor and on a ProcessPoolExecutor.
//!
//! ```text
//! cargo run --release --example signal_filter -- [--n 10000000] [--window 101] [--chunks 64] [--workers <cpus>]
//! ```
//!
//! The filter is "valid" mode: output `i` is the mean of samples `i .. i + window`, so `n`
//! samples give `n - window + 1` outputs. The parallel runs split the *outputs* into
//! chunks; a chunk of outputs `s .. e` needs samples `s .. e + window - 1`, so neighbouring
//! input chunks overlap by `window - 1` samples. Each output is summed in the same order
//! whichever chunk computes it, so the parallel output equals the sequential one bit for
//! bit; the example checks that and exits with an error if not.
//!
//! Each pool runs it twice: with every chunk shipped in its job's argument as a
//! `Vec<f64>` (and its outputs shipped back), and with the signal in a [`SharedSlice`]
//! that every job reads in place and the outputs written into one [`SharedBuffer`], each
//! job its own part (nothing but handles travels).
//!
//! What to expect: each output costs about 100 additions but 16 bytes of traffic to and
//! from a worker process (8 in, 8 out), so on a 2-core machine a process pool that ships
//! the samples spends a large part of its time moving them, and threads, which share the
//! signal, win. With the signal and the output in shared memory, processes do what
//! threads do. The times are the filtering; copying the signal into shared memory and the
//! output back out are setup, printed beside them.

#[path = "support/mod.rs"]
mod support;

use futures::TryStreamExt;
use procpool::{
    Executor, ExecutorExt, ProcessPoolExecutor, SharedBuffer, SharedSlice, ThreadPoolExecutor,
};
use std::time::{Duration, Instant};

/// The filter: the mean of each full window of `samples`.
fn moving_average(samples: &[f64], window: usize) -> Vec<f64> {
    samples
        .windows(window)
        .map(|w| w.iter().sum::<f64>() / window as f64)
        .collect()
}

/// One job: filters one overlapping chunk of the signal.
fn filter_chunk((samples, window): (Vec<f64>, usize)) -> Vec<f64> {
    moving_average(&samples, window)
}

/// One job on shared memory: filters the samples it is given into its part of the
/// output.
fn filter_shared((samples, output, window): (SharedSlice<f64>, SharedBuffer<f64>, usize)) {
    output.write(0, &moving_average(&samples, window));
}

/// A deterministic test signal: two sines plus pseudo-random noise (xorshift64).
fn signal(n: usize) -> Vec<f64> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    (0..n)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            let t = i as f64;
            (t * 0.001).sin() + 0.3 * (t * 0.037).sin() + noise
        })
        .collect()
}

/// The input chunks: `chunks` ranges of outputs, each with the samples it needs.
fn chunk_inputs(
    samples: &[f64],
    window: usize,
    chunks: usize,
) -> impl Iterator<Item = (Vec<f64>, usize)> + '_ {
    let outputs = samples.len() + 1 - window;
    (0..chunks)
        .map(move |i| (outputs * i / chunks, outputs * (i + 1) / chunks))
        .filter(|(start, end)| start < end)
        .map(move |(start, end)| (samples[start..end + window - 1].to_vec(), window))
}

/// Filters on `pool`, chunk by chunk (ordered `map`, one chunk per job), and joins the
/// outputs. The pool is warmed up first, so that the time is the filtering.
async fn run_on(
    pool: &dyn Executor,
    samples: &[f64],
    window: usize,
    chunks: usize,
) -> Result<(Vec<f64>, Duration), procpool::JobError> {
    let warm_up = vec![(vec![0.0; window], window); pool.max_workers()];
    pool.map(filter_chunk, warm_up)
        .try_collect::<Vec<_>>()
        .await?;
    let start = Instant::now();
    let mut output = Vec::with_capacity(samples.len() + 1 - window);
    let mut parts = pool
        .map(filter_chunk, chunk_inputs(samples, window, chunks))
        .chunk_size(1);
    while let Some(part) = parts.try_next().await? {
        output.extend_from_slice(&part);
    }
    Ok((output, start.elapsed()))
}

/// Filters on `pool` through shared memory: one job per chunk, each reading its samples
/// from `samples` in place and writing its outputs into its part of a new output buffer
/// (created in the time taken, as the sequential run's output is).
async fn run_shared_on(
    pool: &dyn Executor,
    samples: &SharedSlice<f64>,
    window: usize,
    chunks: usize,
) -> Result<(SharedBuffer<f64>, Duration), Box<dyn std::error::Error>> {
    let scratch = SharedBuffer::zeroed(1)?;
    let warm_up =
        (0..pool.max_workers()).map(|_| (samples.slice(..window), scratch.clone(), window));
    pool.map(filter_shared, warm_up.collect::<Vec<_>>())
        .try_collect::<Vec<_>>()
        .await?;
    let start = Instant::now();
    let outputs = samples.len() + 1 - window;
    let output = SharedBuffer::zeroed(outputs)?;
    let jobs = (0..chunks)
        .map(|i| (outputs * i / chunks, outputs * (i + 1) / chunks))
        .filter(|(start, end)| start < end)
        .map(|(start, end)| {
            (
                samples.slice(start..end + window - 1),
                output.slice(start..end),
                window,
            )
        });
    pool.map(filter_shared, jobs)
        .chunk_size(1)
        .try_collect::<Vec<_>>()
        .await?;
    Ok((output, start.elapsed()))
}

/// The first index where `a` and `b` differ bit for bit, if any.
fn first_difference(a: &[f64], b: &[f64]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut flags =
        support::Flags::parse("signal_filter [--n N] [--window W] [--chunks C] [--workers W]")?;
    let n: usize = flags.get("n", 10_000_000)?;
    let window: usize = flags.get("window", 101)?;
    let workers: usize = flags.get("workers", support::cpus())?;
    let chunks: usize = flags.get("chunks", 64)?;
    flags.finish()?;
    if window == 0 || window > n || chunks == 0 || workers == 0 {
        return Err("need 1 <= window <= n, and at least one chunk and one worker".into());
    }

    let samples = signal(n);
    println!(
        "moving average, window {window}, over {n} samples ({} outputs): {chunks} chunks, {workers} workers\n",
        n + 1 - window
    );

    let start = Instant::now();
    let sequential = moving_average(&samples, window);
    let sequential_time = start.elapsed();

    let copy_in = Instant::now();
    let shared_samples = SharedSlice::from_slice(&samples)?;
    let copy_in = copy_in.elapsed();
    let pools: [(&str, Box<dyn Executor>); 2] = [
        (
            "ThreadPoolExecutor",
            Box::new(ThreadPoolExecutor::new(workers)?),
        ),
        (
            "ProcessPoolExecutor",
            Box::new(
                ProcessPoolExecutor::builder()
                    .max_workers(workers)
                    .build()?,
            ),
        ),
    ];
    let mut runs = Vec::new();
    let mut copy_out = Duration::ZERO;
    for (name, pool) in &pools {
        let (output, time) = run_on(&**pool, &samples, window, chunks).await?;
        runs.push((name.to_string(), time, output));
        let (shared_output, time) = run_shared_on(&**pool, &shared_samples, window, chunks).await?;
        let read_back = Instant::now();
        runs.push((format!("{name} (shared)"), time, shared_output.to_vec()));
        copy_out = copy_out.max(read_back.elapsed());
        pool.shutdown().await;
    }

    let checksum = |v: &[f64]| format!("{:.6}", v.iter().sum::<f64>());
    let mut rows = vec![("sequential", sequential_time, checksum(&sequential))];
    rows.extend(
        runs.iter()
            .map(|(name, time, output)| (name.as_str(), *time, checksum(output))),
    );
    support::print_timings("sum", &rows);
    println!(
        "\n(shared): the signal in a SharedSlice, the output in a SharedBuffer; copying the \
         signal in took {:.1} ms and the output out {:.1} ms, not counted above",
        copy_in.as_secs_f64() * 1e3,
        copy_out.as_secs_f64() * 1e3
    );
    for (name, _, output) in &runs {
        if let Some(i) = first_difference(&sequential, output) {
            return Err(format!(
                "the {name} output differs from the sequential one at index {i} \
                 ({} outputs against {})",
                output.len(),
                sequential.len()
            )
            .into());
        }
    }
    println!("parallel outputs equal the sequential output bit for bit");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_chunks_cover_every_output_exactly_once() {
        let samples = signal(1000);
        for chunks in [1, 3, 7, 1000] {
            let joined: Vec<f64> = chunk_inputs(&samples, 11, chunks)
                .flat_map(filter_chunk)
                .collect();
            assert_eq!(
                first_difference(&moving_average(&samples, 11), &joined),
                None
            );
        }
    }
}
