//! Helpers shared by the examples: flag parsing and the timing table. Not an example itself
//! (Cargo only builds `examples/*.rs` and `examples/*/main.rs`).
#![allow(dead_code)] // each example uses a different subset

use std::str::FromStr;
use std::time::Duration;

/// `--name value` flags, read once from the command line.
pub struct Flags {
    usage: &'static str,
    pairs: Vec<(String, String)>,
}

impl Flags {
    /// Parses the command line; `--help` prints `usage` and exits.
    pub fn parse(usage: &'static str) -> Result<Flags, String> {
        let mut pairs = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                println!("usage: {usage}");
                std::process::exit(0);
            }
            if !flag.starts_with("--") {
                return Err(format!("unexpected argument {flag:?} (usage: {usage})"));
            }
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            pairs.push((flag, value));
        }
        Ok(Flags { usage, pairs })
    }

    /// The value of `--name`, or `default`.
    pub fn get<T>(&mut self, name: &str, default: T) -> Result<T, String>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let flag = format!("--{name}");
        match self.pairs.iter().position(|(f, _)| *f == flag) {
            Some(i) => {
                let (_, value) = self.pairs.remove(i);
                value.parse().map_err(|e| format!("{flag} {value:?}: {e}"))
            }
            None => Ok(default),
        }
    }

    /// Fails on any flag no `get` asked for.
    pub fn finish(self) -> Result<(), String> {
        match self.pairs.first() {
            Some((flag, _)) => Err(format!("unknown flag {flag} (usage: {})", self.usage)),
            None => Ok(()),
        }
    }
}

/// The number of CPUs, the default worker count of the CPU-bound examples.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Prints a table of executors with their time and speedup over the first row, plus one
/// extra column (at least 10 wide, wider if its values need it).
pub fn print_timings(extra: &str, rows: &[(&str, Duration, String)]) {
    let width = rows
        .iter()
        .map(|r| r.2.len())
        .chain([extra.len(), 10])
        .max()
        .unwrap_or(10);
    let names = rows
        .iter()
        .map(|r| r.0.len())
        .chain([22])
        .max()
        .unwrap_or(22);
    println!(
        "{:<names$} {:>12} {:>9} {extra:>width$}",
        "executor", "time", "speedup"
    );
    let base = rows.first().map_or(1.0, |r| r.1.as_secs_f64());
    for (name, time, value) in rows {
        let speedup = base / time.as_secs_f64();
        println!(
            "{name:<names$} {:>9.1} ms {speedup:>8.2}x {value:>width$}",
            time.as_secs_f64() * 1e3
        );
    }
}

/// W4 on `pool`: one job per range, the counts summed, and how long that took; the
/// workers are warmed up first, so that the time is the computation, not the start-up.
pub async fn count_primes_on(
    pool: &dyn procpool::Executor,
    ranges: &[(u64, u64)],
) -> Result<(u64, Duration), procpool::JobError> {
    use procpool::ExecutorExt;
    use procpool_bench_support::workloads::count_primes;
    pool.submit(count_primes, (0, 1)).await?; // every worker is started
    let start = std::time::Instant::now();
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
