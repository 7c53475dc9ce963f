//! Threads against processes, side by side: the six reference workloads of
//! `shared/bench/WORKLOADS.md` on every executor, measured in one run.
//!
//! ```text
//! cargo run --release --example thread_vs_process                  # the full run
//! cargo run --release --example thread_vs_process -- --quick       # under a minute
//! cargo run --release --example thread_vs_process -- --no-python --svg speedup.svg
//! ```
//!
//! Executors: sequential code, `ThreadPoolExecutor` and `ProcessPoolExecutor` (2 workers),
//! tokio `spawn_blocking` (2 blocking threads), a rayon pool (2 threads), the floor (a bare
//! Unix socket to a child process: this same program in echo mode), and Python's
//! `concurrent.futures` / `multiprocessing` through `shared/bench/python_reference.py` when
//! `python3` and the script are there. For W4 it also measures the machine's ceiling: the
//! sequential run on both cores at once, which says how much of 2× two busy cores of this
//! machine can give at all. Figures are medians; compare ratios from one run.
//! Every workload checks its own result (the sums and counts in WORKLOADS.md) and the
//! example exits with an error if one is wrong. It also writes an SVG chart of W4 speedup
//! against worker count (`--svg PATH`, default `thread_vs_process.svg`).

#[path = "support/chunking.rs"]
mod chunking;
#[path = "support/mod.rs"]
mod support;

use futures::TryStreamExt;
use procpool::{Executor, ExecutorExt, ProcessPoolExecutor, ThreadPoolExecutor};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

const WORKERS: usize = 2;
const W6_BYTES: usize = 64 * 1024 * 1024;
const W6_CRC: u32 = 0x8d53_6c88;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

// ---------------------------------------------------------------- job functions

use procpool_bench_support::workloads::{
    count_primes, count_sequentially, double, echo, ident, ranges,
};

/// W6: the checksum job.
fn checksum(bytes: Vec<u8>) -> (u64, u32) {
    (bytes.len() as u64, crc32fast::hash(&bytes))
}

// ---------------------------------------------------------------- statistics

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn p99(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = (0.99 * values.len() as f64).ceil() as usize;
    values[rank.saturating_sub(1)]
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    if ok { Ok(()) } else { Err(what().into()) }
}

// ---------------------------------------------------------------- the floor

use procpool_bench_support::floor::{self, Floor, reap, round_trip};

// ---------------------------------------------------------------- results

/// One measured figure: workload, executor, metric name, value.
#[derive(Default)]
struct Report {
    rows: Vec<(String, String, String, f64)>,
}

impl Report {
    fn add(&mut self, workload: &str, executor: &str, metric: &str, value: f64) {
        self.rows
            .push((workload.into(), executor.into(), metric.into(), value));
    }

    /// Runs `workload` `reps` times and adds the median of each of its figures.
    fn add_medians_of(
        &mut self,
        reps: usize,
        mut workload: impl FnMut(&mut Report) -> Result<()>,
    ) -> Result<()> {
        let mut runs = Vec::new();
        for _ in 0..reps {
            let mut run = Report::default();
            workload(&mut run)?;
            runs.push(run);
        }
        let Some(first) = runs.first() else {
            return Ok(());
        };
        for (w, e, m, _) in &first.rows {
            let mut values: Vec<f64> = runs.iter().filter_map(|r| r.get(w, e, m)).collect();
            self.add(w, e, m, median(&mut values));
        }
        Ok(())
    }

    fn get(&self, workload: &str, executor: &str, metric: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|(w, e, m, _)| w == workload && e == executor && m == metric)
            .map(|r| r.3)
    }
}

struct Settings {
    quick: bool,
    python: bool,
    svg: String,
}

fn parse_args() -> Result<Settings> {
    let mut settings = Settings {
        quick: false,
        python: true,
        svg: "thread_vs_process.svg".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => settings.quick = true,
            "--no-python" => settings.python = false,
            "--svg" => settings.svg = args.next().ok_or("--svg needs a path")?,
            "-h" | "--help" => {
                println!("usage: thread_vs_process [--quick] [--no-python] [--svg PATH]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    Ok(settings)
}

fn pools() -> Result<Vec<(&'static str, Box<dyn Executor>)>> {
    Ok(vec![
        ("threads", Box::new(ThreadPoolExecutor::new(WORKERS)?)),
        ("processes", Box::new(ProcessPoolExecutor::new(WORKERS)?)),
    ])
}

fn blocking_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(WORKERS)
        .enable_all()
        .build()?)
}

fn rayon_pool(threads: usize) -> Result<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?)
}

// ---------------------------------------------------------------- W1 latency

fn w1(report: &mut Report, reps: usize) -> Result<()> {
    const WARMUP: usize = 200;
    const N: usize = 2000;
    type RoundTrip<'a> = Box<dyn FnMut(u64) -> Result<u64> + 'a>;

    let floor = Floor::new()?;
    let (child, mut stream) = floor.peer()?;
    let mut back = Vec::new();
    let pools = pools()?;
    let runtime = blocking_runtime()?;
    let mut executors: Vec<(&str, RoundTrip<'_>)> = vec![(
        "floor",
        Box::new(|i: u64| {
            let mut ping = [0_u8; 16];
            ping[..8].copy_from_slice(&i.to_le_bytes());
            round_trip(&mut stream, &ping, &mut back)?;
            Ok(u64::from_le_bytes(back[..8].try_into()?))
        }),
    )];
    for (name, pool) in &pools {
        executors.push((name, Box::new(move |i| Ok(pool.submit(ident, i).wait()?))));
    }
    let rt = &runtime;
    executors.push((
        "spawn_blocking",
        Box::new(move |i| Ok(rt.block_on(rt.spawn_blocking(move || ident(i)))?)),
    ));

    // Repetitions are interleaved (each executor in turn, every repetition), so that all
    // of them sample the same moments of a shared, noisy machine.
    let mut medians = vec![Vec::new(); executors.len()];
    let mut p99s = vec![Vec::new(); executors.len()];
    for _ in 0..reps {
        for (k, (name, rt)) in executors.iter_mut().enumerate() {
            for i in 0..WARMUP as u64 {
                ensure(rt(i)? == i, || format!("W1 {name}: wrong echo"))?;
            }
            let mut times = Vec::with_capacity(N);
            for i in 0..N as u64 {
                let start = Instant::now();
                let got = rt(i)?;
                times.push(start.elapsed().as_secs_f64() * 1e6);
                ensure(got == i, || format!("W1 {name}: wrong echo"))?;
            }
            medians[k].push(median(&mut times));
            p99s[k].push(p99(&mut times));
        }
    }
    for (k, (name, _)) in executors.iter().enumerate() {
        report.add("W1", name, "median_us", median(&mut medians[k]));
        report.add("W1", name, "p99_us", median(&mut p99s[k]));
    }
    drop(executors);
    reap(child);
    w1_awaited(report, reps, WARMUP, N)
}

/// W1 as a tokio service sees it: one task on a multi-thread runtime (2 worker threads)
/// submits one job at a time and `.await`s it, the rows "threads (await)" and
/// "processes (await)". Each repetition's median, then the median of those.
fn w1_awaited(report: &mut Report, reps: usize, warmup: usize, n: usize) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for (name, pool) in pools()? {
        let pool: std::sync::Arc<dyn Executor> = pool.into();
        let mut medians = Vec::new();
        let mut p99s = Vec::new();
        for _ in 0..reps {
            let pool = pool.clone();
            let mut times = runtime.block_on(runtime.spawn(async move {
                let mut times = Vec::with_capacity(n);
                for i in 0..(warmup + n) as u64 {
                    let start = Instant::now();
                    let got = pool.submit(ident, i).await.map_err(|e| e.to_string())?;
                    if i as usize >= warmup {
                        times.push(start.elapsed().as_secs_f64() * 1e6);
                    }
                    if got != i {
                        return Err(format!("W1 awaited: {got} for {i}"));
                    }
                }
                Ok(times)
            }))??;
            medians.push(median(&mut times));
            p99s.push(p99(&mut times));
        }
        let row = format!("{name} (await)");
        report.add("W1", &row, "median_us", median(&mut medians));
        report.add("W1", &row, "p99_us", median(&mut p99s));
    }
    Ok(())
}

// ---------------------------------------------------------------- W2, W3 throughput

const W2_N: u64 = 100_000;
const W2_SUM: u64 = 9_999_900_000;
const W3_N: u64 = 1_000_000;
const W3_SUM: u64 = 999_999_000_000;

/// Rounds of W2 run before the one measured: the first 100k jobs in a fresh process grow
/// its heap (about 4,100 page faults, against none from the third round on, on the thread
/// pool) and ran 15–30% slower. The first round is reported apart, as "(fresh pool)".
const W2_ROUNDS_BEFORE: usize = 2;

/// One W2 round on `pool`: 100k jobs submitted, then awaited in order; jobs per second.
async fn w2_round(name: &str, pool: &dyn Executor) -> Result<f64> {
    let start = Instant::now();
    let handles: Vec<_> = (0..W2_N).map(|x| pool.submit(double, x)).collect();
    let mut sum = 0;
    for handle in handles {
        sum += handle.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    ensure(sum == W2_SUM, || format!("W2 {name}: sum {sum}"))?;
    Ok(W2_N as f64 / secs)
}

async fn w2_w3(report: &mut Report) -> Result<()> {
    for (name, pool) in pools()? {
        pool.submit(ident, 0).await?; // workers up
        let fresh = w2_round(name, &*pool).await?;
        report.add("W2", &format!("{name} (fresh pool)"), "jobs_per_s", fresh);
        for _ in 1..W2_ROUNDS_BEFORE {
            w2_round(name, &*pool).await?;
        }
        report.add("W2", name, "jobs_per_s", w2_round(name, &*pool).await?);

        for (variant, chunk) in [
            ("chunk 1000", Some(1000)),
            ("chunk 10000", Some(10_000)),
            ("chunk 100000", Some(100_000)),
            ("auto chunk", None),
        ] {
            let start = Instant::now();
            let map = pool.map(double, 0..W3_N);
            let map = match chunk {
                Some(c) => map.chunk_size(c),
                None => map,
            };
            let sum = map.try_fold(0, |a, b| async move { Ok(a + b) }).await?;
            let secs = start.elapsed().as_secs_f64();
            ensure(sum == W3_SUM, || format!("W3 {name}: sum {sum}"))?;
            report.add(
                "W3",
                &format!("{name} ({variant})"),
                "items_per_s",
                W3_N as f64 / secs,
            );
        }
        // The same map, its results taken a chunk at a time rather than item by item.
        let start = Instant::now();
        let doubled = pool.map(double, 0..W3_N).chunk_size(1000).try_collect_vec();
        let sum: u64 = doubled.await?.iter().sum();
        let secs = start.elapsed().as_secs_f64();
        ensure(sum == W3_SUM, || {
            format!("W3 {name} try_collect_vec: sum {sum}")
        })?;
        report.add(
            "W3",
            &format!("{name} (chunk 1000, try_collect_vec)"),
            "items_per_s",
            W3_N as f64 / secs,
        );
    }

    let runtime = blocking_runtime()?;
    let mut rate = 0.0;
    for _ in 0..=W2_ROUNDS_BEFORE {
        let start = Instant::now();
        let sum = runtime.block_on(async {
            let handles: Vec<_> = (0..W2_N)
                .map(|x| tokio::task::spawn_blocking(move || double(x)))
                .collect();
            let mut sum = 0;
            for handle in handles {
                sum += handle.await?;
            }
            Ok::<_, tokio::task::JoinError>(sum)
        })?;
        ensure(sum == W2_SUM, || format!("W2 spawn_blocking: sum {sum}"))?;
        rate = W2_N as f64 / start.elapsed().as_secs_f64();
    }
    report.add("W2", "spawn_blocking", "jobs_per_s", rate);
    let start = Instant::now();
    let sum = runtime.block_on(async {
        let handles: Vec<_> = (0..W3_N / 1000)
            .map(|c| {
                tokio::task::spawn_blocking(move || {
                    // Results gathered per chunk, as a chunked map returns them.
                    (c * 1000..(c + 1) * 1000).map(double).collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut sum = 0;
        for handle in handles {
            sum += handle.await?.iter().sum::<u64>();
        }
        Ok::<_, tokio::task::JoinError>(sum)
    })?;
    ensure(sum == W3_SUM, || format!("W3 spawn_blocking: sum {sum}"))?;
    report.add(
        "W3",
        "spawn_blocking (chunk 1000)",
        "items_per_s",
        W3_N as f64 / start.elapsed().as_secs_f64(),
    );

    let rayon = rayon_pool(WORKERS)?;
    let mut rate = 0.0;
    for _ in 0..=W2_ROUNDS_BEFORE {
        let start = Instant::now();
        let total = std::sync::atomic::AtomicU64::new(0);
        rayon.scope(|s| {
            for x in 0..W2_N {
                let total = &total;
                s.spawn(move |_| {
                    total.fetch_add(double(x), std::sync::atomic::Ordering::Relaxed);
                });
            }
        });
        let sum = total.into_inner();
        ensure(sum == W2_SUM, || format!("W2 rayon: sum {sum}"))?;
        rate = W2_N as f64 / start.elapsed().as_secs_f64();
    }
    report.add("W2", "rayon", "jobs_per_s", rate);
    let start = Instant::now();
    let results: Vec<u64> = rayon.install(|| {
        use rayon::prelude::*;
        (0..W3_N as usize)
            .into_par_iter()
            .with_min_len(1000)
            .map(|x| double(x as u64))
            .collect()
    });
    let sum: u64 = results.iter().sum();
    ensure(sum == W3_SUM, || format!("W3 rayon: sum {sum}"))?;
    report.add(
        "W3",
        "rayon (chunk 1000)",
        "items_per_s",
        W3_N as f64 / start.elapsed().as_secs_f64(),
    );
    Ok(())
}

// ---------------------------------------------------------------- W4 CPU-bound

async fn primes_on(pool: &dyn Executor, ranges: &[(u64, u64)]) -> Result<(u64, f64)> {
    let (count, took) = support::count_primes_on(pool, ranges).await?;
    Ok((count, took.as_secs_f64()))
}

/// W4's row for the machine's ceiling (see [`w4`]).
const CEILING: &str = "ceiling: 2 copies at once";

async fn w4(report: &mut Report) -> Result<()> {
    let ranges = ranges(5_000_000, 64);
    let expect = 348_513;
    let start = Instant::now();
    let count = count_sequentially(&ranges);
    let sequential = start.elapsed().as_secs_f64();
    ensure(count == expect, || format!("W4 sequential: {count} primes"))?;
    report.add("W4", "sequential", "seconds", sequential);
    report.add("W4", "sequential", "speedup", 1.0);
    // The machine's own ceiling: the sequential run, once on each of WORKERS threads at
    // the same time, with nothing to schedule or send. Busy cores slow each other down
    // (shared caches and memory bandwidth, the host's other guests), so no executor can
    // beat WORKERS × (time alone) / (time for all): reported as seconds per copy.
    let start = Instant::now();
    let counts: Vec<u64> = std::thread::scope(|scope| {
        let copies: Vec<_> = (0..WORKERS)
            .map(|_| scope.spawn(|| count_sequentially(&ranges)))
            .collect();
        copies.into_iter().map(|c| c.join().unwrap_or(0)).collect()
    });
    let per_copy = start.elapsed().as_secs_f64() / WORKERS as f64;
    ensure(counts.iter().all(|&c| c == expect), || {
        format!("W4 ceiling: counts {counts:?}")
    })?;
    report.add("W4", CEILING, "seconds", per_copy);
    report.add("W4", CEILING, "speedup", sequential / per_copy);
    for (name, pool) in pools()? {
        let (count, secs) = primes_on(pool.as_ref(), &ranges).await?;
        ensure(count == expect, || format!("W4 {name}: {count} primes"))?;
        report.add("W4", name, "seconds", secs);
        report.add("W4", name, "speedup", sequential / secs);
        // The same 64 ranges through `map`, chunked by default.
        let (count, took) = chunking::primes_by_map(pool.as_ref(), &ranges).await?;
        ensure(count == expect, || format!("W4 {name} map: {count} primes"))?;
        let secs = took.as_secs_f64();
        report.add("W4", &format!("{name} (map)"), "seconds", secs);
        report.add("W4", &format!("{name} (map)"), "speedup", sequential / secs);
    }
    let runtime = blocking_runtime()?;
    let start = Instant::now();
    let count = runtime.block_on(async {
        let handles: Vec<_> = ranges
            .iter()
            .map(|&r| tokio::task::spawn_blocking(move || count_primes(r)))
            .collect();
        let mut count = 0;
        for handle in handles {
            count += handle.await?;
        }
        Ok::<_, tokio::task::JoinError>(count)
    })?;
    let secs = start.elapsed().as_secs_f64();
    ensure(count == expect, || {
        format!("W4 spawn_blocking: {count} primes")
    })?;
    report.add("W4", "spawn_blocking", "seconds", secs);
    report.add("W4", "spawn_blocking", "speedup", sequential / secs);
    let rayon = rayon_pool(WORKERS)?;
    let start = Instant::now();
    let count: u64 = rayon.install(|| {
        use rayon::prelude::*;
        ranges.par_iter().map(|&r| count_primes(r)).sum()
    });
    let secs = start.elapsed().as_secs_f64();
    ensure(count == expect, || format!("W4 rayon: {count} primes"))?;
    report.add("W4", "rayon", "seconds", secs);
    report.add("W4", "rayon", "speedup", sequential / secs);
    Ok(())
}

// ---------------------------------------------------------------- mixed-cost map

/// The mixed-cost map (see [`chunking`]): sequential, then each pool with fixed chunk
/// sizes and with the default.
async fn mixed(report: &mut Report) -> Result<()> {
    let (expect, took) = chunking::mixed_sequentially();
    report.add("MX", "sequential", "seconds", took.as_secs_f64());
    for (name, pool) in pools()? {
        let sizes = chunking::MIXED_CHUNKS.map(Some);
        for chunk in sizes.into_iter().chain([None]) {
            let (sum, took) = chunking::mixed_map(pool.as_ref(), chunk).await?;
            ensure(sum == expect, || format!("MX {name}: checksum {sum}"))?;
            let variant = match chunk {
                Some(size) => format!("{name} (chunk {size})"),
                None => format!("{name} (default)"),
            };
            report.add("MX", &variant, "seconds", took.as_secs_f64());
        }
    }
    Ok(())
}

/// How the default chunking compares, per pool: W4 through `map` against one by one, and
/// the mixed-cost map's default against its best fixed chunk size.
fn print_chunking(report: &Report) {
    println!();
    for name in ["threads", "processes"] {
        let by_map = report.get("W4", &format!("{name} (map)"), "speedup");
        let one_by_one = report.get("W4", name, "speedup");
        if let (Some(map), Some(one)) = (by_map, one_by_one) {
            println!(
                "  W4 {name}: map with default chunks reaches {:.3} of the speedup of one-by-one submits",
                map / one
            );
        }
        let best = chunking::MIXED_CHUNKS
            .iter()
            .filter_map(|c| {
                Some((
                    c,
                    report.get("MX", &format!("{name} (chunk {c})"), "seconds")?,
                ))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1));
        if let (Some((chunk, best)), Some(default)) = (
            best,
            report.get("MX", &format!("{name} (default)"), "seconds"),
        ) {
            println!(
                "  MX {name}: the default takes {:.3}x the time of the best fixed chunk size ({chunk})",
                default / best
            );
        }
    }
}

/// W4 speedup by worker count for the chart: `(workers, threads, processes)`.
async fn w4_scaling(quick: bool) -> Result<Vec<(usize, f64, f64)>> {
    let limit = if quick { 1_000_000 } else { 5_000_000 };
    let ranges = ranges(limit, 64);
    let start = Instant::now();
    let expect = count_sequentially(&ranges);
    let sequential = start.elapsed().as_secs_f64();
    let mut points = Vec::new();
    for workers in 1..=4 {
        let threads = ThreadPoolExecutor::new(workers)?;
        let processes = ProcessPoolExecutor::new(workers)?;
        let (count_t, secs_t) = primes_on(&threads, &ranges).await?;
        let (count_p, secs_p) = primes_on(&processes, &ranges).await?;
        ensure(count_t == expect && count_p == expect, || {
            "W4 scaling: counts disagree".into()
        })?;
        points.push((workers, sequential / secs_t, sequential / secs_p));
    }
    Ok(points)
}

fn draw_chart(path: &str, points: &[(usize, f64, f64)]) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let best = points.iter().map(|p| p.1.max(p.2)).fold(1.0_f64, f64::max);
    let top = ((best + 0.3) * 2.0).ceil() / 2.0; // headroom, in steps of 0.5
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "W4 primes: speedup over sequential ({} cores)",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(1_usize..4_usize, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("workers")
        .y_desc("speedup")
        .x_labels(4)
        .draw()?;
    type Series = (&'static str, RGBColor, Vec<(usize, f64)>);
    let series: [Series; 3] = [
        (
            "sequential",
            BLACK,
            points.iter().map(|p| (p.0, 1.0)).collect(),
        ),
        (
            "ThreadPoolExecutor",
            BLUE,
            points.iter().map(|p| (p.0, p.1)).collect(),
        ),
        (
            "ProcessPoolExecutor",
            RED,
            points.iter().map(|p| (p.0, p.2)).collect(),
        ),
    ];
    for (label, color, data) in series {
        chart
            .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(data.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

// ---------------------------------------------------------------- W5 start-up

async fn w5(report: &mut Report, reps: usize) -> Result<()> {
    let (mut startup, mut shutdown) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let start = Instant::now();
        let pool = ProcessPoolExecutor::new(WORKERS)?;
        ensure(pool.submit(ident, 7).await? == 7, || {
            "W5: wrong answer".into()
        })?;
        startup.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        pool.shutdown().await;
        shutdown.push(start.elapsed().as_secs_f64() * 1e3);
    }
    report.add("W5", "processes", "startup_ms", median(&mut startup));
    report.add("W5", "processes", "shutdown_ms", median(&mut shutdown));

    let mut floor_times = Vec::new();
    for _ in 0..reps {
        let floor = Floor::new()?;
        let start = Instant::now();
        let children = [floor.spawn()?, floor.spawn()?];
        let (mut stream, _) = floor.listener.accept()?;
        let mut back = Vec::new();
        round_trip(&mut stream, &[7; 16], &mut back)?;
        floor_times.push(start.elapsed().as_secs_f64() * 1e3);
        children.into_iter().for_each(reap);
    }
    report.add("W5", "floor", "startup_ms", median(&mut floor_times));
    Ok(())
}

// ---------------------------------------------------------------- W6 payload

async fn w6(report: &mut Report, reps: usize) -> Result<()> {
    let payload: Vec<u8> = (0..W6_BYTES).map(|i| (i % 251) as u8).collect();
    ensure(crc32fast::hash(&payload) == W6_CRC, || {
        "W6: the payload's CRC is off".into()
    })?;
    let mb = W6_BYTES as f64 / 1e6;

    let floor = Floor::new()?;
    let (child, mut stream) = floor.peer()?;
    let mut back = Vec::new();
    let mut times = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        round_trip(&mut stream, &payload, &mut back)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        ensure(back == payload, || "W6 floor: echo differs".into())?;
    }
    reap(child);
    let ms = median(&mut times);
    report.add("W6", "floor", "echo_ms", ms);
    report.add("W6", "floor", "echo_MBps", mb / (ms / 1e3));

    for (name, pool) in pools()? {
        pool.submit(ident, 0).await?;
        let (mut echo_times, mut sum_times) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let (to_echo, to_sum) = (payload.clone(), payload.clone()); // not timed
            let start = Instant::now();
            let back = pool.submit(echo, to_echo).await?;
            echo_times.push(start.elapsed().as_secs_f64() * 1e3);
            ensure(back == payload, || format!("W6 {name}: echo differs"))?;
            let start = Instant::now();
            let sum = pool.submit(checksum, to_sum).await?;
            sum_times.push(start.elapsed().as_secs_f64() * 1e3);
            ensure(sum == (W6_BYTES as u64, W6_CRC), || {
                format!("W6 {name}: checksum {sum:?}")
            })?;
        }
        let ms = median(&mut echo_times);
        report.add("W6", name, "echo_ms", ms);
        report.add("W6", name, "echo_MBps", mb / (ms / 1e3));
        report.add("W6", name, "checksum_ms", median(&mut sum_times));
    }
    Ok(())
}

// ---------------------------------------------------------------- Python

fn python(report: &mut Report, quick: bool) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/bench/python_reference.py");
    if !script.exists() {
        println!(
            "(python reference not found at {}: skipped)",
            script.display()
        );
        return;
    }
    let mut runs: Vec<Vec<&str>> = vec![vec!["ppe", "W1", "W2", "W3", "W5", "W6"]];
    if quick {
        runs[0].extend(["--reps", "1"]);
    } else {
        runs[0].insert(4, "W4");
        runs.push(vec!["mp_pool", "W1", "W2", "W3", "W4", "W5", "W6"]);
    }
    for args in runs {
        let output = Command::new("python3").arg(&script).args(&args).output();
        let Ok(output) = output else {
            println!("(python3 not available: Python comparison skipped)");
            return;
        };
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Ok(json) = serde_json_lite(line) else {
                continue;
            };
            let executor = json.get("impl").cloned().unwrap_or_default();
            let workload = json.get("workload").cloned().unwrap_or_default();
            for (key, value) in &json {
                if let Ok(v) = value.parse::<f64>() {
                    report.add(&workload, &executor, key, v);
                }
            }
        }
    }
}

/// The flat top-level fields of one JSON object line (strings and numbers), enough for the
/// Python script's output without a JSON dependency.
fn serde_json_lite(line: &str) -> std::result::Result<BTreeMap<String, String>, ()> {
    let body = line.trim().strip_prefix('{').ok_or(())?;
    let mut fields = BTreeMap::new();
    let mut rest = body;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let end = after.find('"').ok_or(())?;
        let key = after[..end].to_owned();
        let after = after[end + 1..]
            .trim_start()
            .strip_prefix(':')
            .ok_or(())?
            .trim_start();
        if after.starts_with('{') || after.starts_with('[') {
            // Nested values ("params", "runs") close the top level we need: stop here.
            let closing = if after.starts_with('{') { '}' } else { ']' };
            let skip = after.find(closing).ok_or(())? + 1;
            rest = &after[skip..];
            continue;
        }
        let (value, tail) = if let Some(s) = after.strip_prefix('"') {
            let end = s.find('"').ok_or(())?;
            (s[..end].to_owned(), &s[end + 1..])
        } else {
            let end = after.find([',', '}']).unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        fields.insert(key, value);
        rest = tail;
    }
    Ok(fields)
}

// ---------------------------------------------------------------- the table

fn print_report(report: &Report) {
    let floor_of = |w: &str, m: &str| report.get(w, "floor", m);
    let seq = report.get("W4", "sequential", "seconds");
    let width = report
        .rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(0)
        .max(28);
    let workloads = [
        (
            "W1",
            "median_us",
            "latency: median round trip, µs (lower is better)",
            true,
        ),
        (
            "W2",
            "jobs_per_s",
            "submit throughput: jobs/s of a third round of 100k jobs, \"(fresh pool)\" of the first, median over runs (higher is better)",
            false,
        ),
        (
            "W3",
            "items_per_s",
            "map throughput: items/s, median over runs (higher is better)",
            false,
        ),
        (
            "W4",
            "seconds",
            "CPU-bound primes below 5,000,000: seconds, median over runs (lower is better)",
            true,
        ),
        (
            "W5",
            "startup_ms",
            "start-up: pool of 2 to first result, ms (lower is better)",
            true,
        ),
        ("W6", "echo_ms", "64 MiB echo: ms (lower is better)", true),
        (
            "MX",
            "seconds",
            "mixed-cost map, 4,000 items of 1 to 100 units: seconds, median over runs (lower is better)",
            true,
        ),
    ];
    for (workload, metric, title, lower_better) in workloads {
        println!("\n{workload} {title}");
        let python = report
            .get(workload, "py_ppe", metric)
            .or_else(|| report.get(workload, "py_mp_pool", metric));
        let mut seen = Vec::new();
        for (w, executor, m, value) in &report.rows {
            if w != workload || m != metric || seen.contains(executor) {
                continue;
            }
            seen.push(executor.clone());
            let mut line = format!("  {executor:<width$} {:>14}", fmt_value(*value));
            if let Some(floor) = floor_of(workload, metric).filter(|_| executor != "floor") {
                line += &format!("   {:>6.2}x floor", value / floor);
            }
            if let Some(seq) = match workload {
                "W4" => seq,
                "MX" => report.get("MX", "sequential", "seconds"),
                _ => None,
            } {
                line += &format!("   speedup {:>5.2}", seq / value);
            }
            if let Some(py) = python.filter(|_| !executor.starts_with("py_")) {
                let better = if lower_better { py / value } else { value / py };
                line += &format!("   {better:>7.1}x Python ppe");
            }
            if workload == "W1"
                && let Some(p99) = report.get("W1", executor, "p99_us")
            {
                line += &format!("   (p99 {p99:.1} µs)");
            }
            println!("{line}");
        }
    }
    for py in ["py_ppe", "py_mp_pool"] {
        if let Some(speedup) = report.get("W4", py, "speedup") {
            println!("\n  ({py} W4 speedup over its own sequential run: {speedup:.2})");
        }
    }
    if let Some(shutdown) = report.get("W5", "processes", "shutdown_ms") {
        println!("\n  (process pool shutdown: {shutdown:.2} ms)");
    }
    if let Some(sum) = report.get("W6", "processes", "checksum_ms") {
        println!("  (64 MiB checksum job on processes: {sum:.1} ms)");
    }
}

fn fmt_value(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}", v)
    } else {
        format!("{v:.3}")
    }
}

/// Synchronous on purpose: procpool's handles need no runtime (`block_on` from `futures`
/// drives them), and tokio's own runtime is built only for the `spawn_blocking` figures.
fn main() -> Result<()> {
    use futures::executor::block_on;
    floor::serve_if_echo_child();
    let settings = parse_args()?;
    let reps = if settings.quick { 1 } else { 5 };
    let started = Instant::now();
    println!(
        "procpool thread_vs_process: {} workers, {} cores{}",
        WORKERS,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if settings.quick { ", quick" } else { "" }
    );
    let mut report = Report::default();
    w1(&mut report, reps)?;
    // A throughput run lasts milliseconds, and one W4 run a second: take the median of
    // several, each executor in turn in every one, as for W1.
    report.add_medians_of(reps.max(3), |run| block_on(w2_w3(run)))?;
    report.add_medians_of(reps.max(3), |run| block_on(w4(run)))?;
    report.add_medians_of(reps.max(3), |run| block_on(mixed(run)))?;
    block_on(w5(&mut report, if settings.quick { 3 } else { 10 }))?;
    // 64 MiB round trips vary with the kernel's page handling: take 3 even when quick.
    block_on(w6(&mut report, reps.max(3)))?;
    let points = block_on(w4_scaling(settings.quick))?;
    draw_chart(&settings.svg, &points)?;
    if settings.python {
        python(&mut report, settings.quick);
    }
    print_report(&report);
    print_chunking(&report);
    println!(
        "\nW4 speedup by workers (threads, processes): {:?}",
        points
            .iter()
            .map(|(w, t, p)| format!("{w}: {t:.2}, {p:.2}"))
            .collect::<Vec<_>>()
    );
    println!("chart written to {}", settings.svg);
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
