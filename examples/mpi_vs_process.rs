//! The MPI pool against the local process pool, side by side in one run, on the reference
//! workloads W1–W4 and W6 of `shared/bench/WORKLOADS.md` (feature `mpi`), with the floor
//! (a bare MPI ping-pong and 64 MiB echo between two ranks, through the `mpi` crate) and
//! `mpi4py.futures` when it is installed (`pip install mpi4py`). A sixth row runs W1 with
//! a job of 5 ms and reports the time beyond the job: what a pool adds to a job long
//! enough that the MPI threads stop polling hot and nap while it runs.
//!
//! ```text
//! cargo build --release --features mpi --example mpi_vs_process
//! target/release/examples/mpi_vs_process            # the driver: starts the mpirun jobs itself
//! ```
//!
//! Started without `mpirun`, the program is the driver: it runs itself under
//! `mpirun -n 2` (the floor), then under `mpirun -n 3` (both pools on rank 0: the local
//! `ProcessPoolExecutor` with 2 workers, and `MpiPoolExecutor` whose two agents have one
//! worker each), then `benches/support/mpi4py_reference.py` under
//! `mpirun -n 3 python3 -m mpi4py.futures`, and prints one table. Figures are medians;
//! compare ratios from one run. W6 is the steady state: every executor first echoes once
//! per worker untimed (the floor once), since a worker's first 64 MiB costs fresh memory
//! (its first echo through a node agent took 120–280 ms here, the next ones 39–55 ms).

#[path = "support/mod.rs"]
mod support;

use procpool::{Executor, ExecutorExt, MpiPoolExecutor, ProcessPoolExecutor};
use procpool_bench_support::workloads::{
    busy_for, count_sequentially, double, echo, ident, ranges,
};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// What the program does when `mpirun` starts it.
const MODE: &str = "MPI_VS_PROCESS_MODE";
const W1_N: usize = 2000;
/// W1 with a job of this long, as many times: what the pool adds to a job that keeps the
/// MPI threads waiting past their hot polling, into their naps.
const W1_LONG_US: u64 = 5000;
const W1_LONG_N: usize = 100;
const W2_N: u64 = 100_000;
const W2_SUM: u64 = 9_999_900_000;
const W3_N: u64 = 1_000_000;
const W3_SUM: u64 = 999_999_000_000;
const W6_BYTES: usize = 64 << 20;
/// W6's timed echoes, after the untimed ones.
const W6_REPS: usize = 11;

fn main() -> Result<()> {
    match std::env::var(MODE).as_deref() {
        Ok("floor") => floor(),
        Ok("pools") => pools(),
        _ => driver(),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    if ok { Ok(()) } else { Err(what().into()) }
}

// ---------------------------------------------------------------- the driver

fn mpirun(ranks: &str) -> Command {
    let mut command = Command::new("mpirun");
    command
        .args(["-n", ranks, "--oversubscribe", "--bind-to", "none"])
        .args(["--mca", "btl", "self,vader", "-x", MODE])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    command
}

/// Runs `command`, reading its `figure <workload> <executor> <value>` lines into `table`.
fn collect(mut command: Command, table: &mut BTreeMap<(String, String), f64>) -> Result<()> {
    let out = command.output()?;
    if !out.status.success() {
        return Err(format!(
            "{command:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let fields: Vec<_> = line.split_whitespace().collect();
        if let ["figure", workload, executor, value] = fields[..] {
            table.insert((workload.into(), executor.into()), value.parse()?);
        }
    }
    Ok(())
}

fn driver() -> Result<()> {
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut table = BTreeMap::new();
    println!("mpi_vs_process: the floor (mpirun -n 2)...");
    let mut floor = mpirun("2");
    floor.env(MODE, "floor").arg(&exe);
    collect(floor, &mut table)?;
    println!("mpi_vs_process: both pools (mpirun -n 3)...");
    let mut pools = mpirun("3");
    pools.env(MODE, "pools").arg(&exe);
    collect(pools, &mut table)?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/support/mpi4py_reference.py");
    let has_mpi4py = Command::new("python3")
        .args(["-c", "import mpi4py.futures"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_mpi4py {
        println!("mpi_vs_process: mpi4py.futures (mpirun -n 3 python3 -m mpi4py.futures)...");
        let mut python = mpirun("3");
        python
            .args(["python3", "-m", "mpi4py.futures"])
            .arg(&script);
        collect(python, &mut table)?;
    } else {
        println!("mpi_vs_process: mpi4py is not installed (pip install mpi4py): no Python column");
    }
    let get = |w: &str, e: &str| table.get(&(w.to_owned(), e.to_owned())).copied();
    // Speedups near 2 need their second decimal; the rest do not.
    let show = |v: Option<f64>| {
        v.map_or_else(
            || "-".to_owned(),
            |v| {
                if v < 10.0 {
                    format!("{v:.2}")
                } else {
                    format!("{v:.1}")
                }
            },
        )
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    println!(
        "\n{:<34} {:>12} {:>12} {:>12} {:>12} {:>10}",
        "workload", "processes", "MPI pool", "MPI floor", "mpi4py", "MPI/proc"
    );
    for (workload, name) in [
        ("W1", "W1 round trip, median us"),
        ("W1long", "W1, 5 ms job: us beyond the job"),
        ("W2", "W2 submit throughput, jobs/s"),
        ("W3", "W3 map (chunk 1000), items/s"),
        ("W4", "W4 primes speedup (2 workers)"),
        ("W6", "W6 64 MiB echo, ms"),
    ] {
        let (local, mpi) = (get(workload, "processes"), get(workload, "mpi"));
        println!(
            "{name:<34} {:>12} {:>12} {:>12} {:>12} {:>10}",
            show(local),
            show(mpi),
            show(get(workload, "floor")),
            show(get(workload, "mpi4py")),
            ratio(mpi, local)
        );
    }
    if let (Some(mpi), Some(python)) = (get("W2", "mpi"), get("W2", "mpi4py")) {
        println!(
            "\nW2: the MPI pool submits {:.0}x as many jobs/s as mpi4py.futures",
            mpi / python
        );
    }
    if let (Some(mpi), Some(floor)) = (get("W6", "mpi"), get("W6", "floor")) {
        println!(
            "W6: the MPI pool's echo takes {:.2}x the bare MPI echo",
            mpi / floor
        );
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------- the floor

/// Rank 0 and rank 1 with nothing between them: 16-byte ping-pong, 64 MiB echo.
fn floor() -> Result<()> {
    use mpi::traits::{Communicator, Destination, Source};
    let universe = mpi::initialize().ok_or("MPI did not initialize")?;
    let world = universe.world();
    let peer = world.process_at_rank(1 - world.rank());
    let mut small = [0_u8; 16];
    let mut large = vec![0_u8; W6_BYTES];
    if world.rank() == 0 {
        let mut times = Vec::new();
        for i in 0..(200 + W1_N) {
            let start = Instant::now();
            peer.send(&small[..]);
            peer.receive_into(&mut small[..]);
            if i >= 200 {
                times.push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
        println!("figure W1 floor {:.2}", median(&mut times));
        let payload: Vec<u8> = (0..W6_BYTES).map(|i| (i % 251) as u8).collect();
        let mut times = Vec::new();
        for i in 0..=W6_REPS {
            let start = Instant::now();
            peer.send(&payload[..]);
            peer.receive_into(&mut large[..]);
            if i > 0 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        ensure(large == payload, || "W6 floor: the echo differs".into())?;
        println!("figure W6 floor {:.2}", median(&mut times));
    } else {
        for _ in 0..(200 + W1_N) {
            peer.receive_into(&mut small[..]);
            peer.send(&small[..]);
        }
        for _ in 0..=W6_REPS {
            peer.receive_into(&mut large[..]);
            peer.send(&large[..]);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- the pools

fn pools() -> Result<()> {
    // Every rank runs this line; only rank 0 returns from it.
    let mpi = MpiPoolExecutor::world(ProcessPoolExecutor::builder())?;
    let local = ProcessPoolExecutor::builder().max_workers(2).build()?;
    let executors: [(&str, &dyn Executor); 2] = [("processes", &local), ("mpi", &mpi)];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // W1: one job at a time, as thread_vs_process measures it.
    for (name, pool) in executors {
        let mut times = Vec::new();
        for i in 0..(200 + W1_N) as u64 {
            let start = Instant::now();
            let got = pool.submit(ident, i).wait()?;
            if i >= 200 {
                times.push(start.elapsed().as_secs_f64() * 1e6);
            }
            ensure(got == i, || format!("W1 {name}: wrong echo"))?;
        }
        println!("figure W1 {name} {:.2}", median(&mut times));
        let mut beyond = Vec::new();
        for i in 0..(10 + W1_LONG_N) {
            let start = Instant::now();
            pool.submit(busy_for, W1_LONG_US).wait()?;
            if i >= 10 {
                beyond.push(start.elapsed().as_secs_f64() * 1e6 - W1_LONG_US as f64);
            }
        }
        println!("figure W1long {name} {:.2}", median(&mut beyond));
    }
    runtime.block_on(async {
        for (name, pool) in executors {
            let mut w2 = Vec::new();
            let mut w3 = Vec::new();
            for _ in 0..3 {
                let start = Instant::now();
                let handles: Vec<_> = (0..W2_N).map(|x| pool.submit(double, x)).collect();
                let mut sum = 0;
                for handle in handles {
                    sum += handle.await?;
                }
                w2.push(W2_N as f64 / start.elapsed().as_secs_f64());
                ensure(sum == W2_SUM, || format!("W2 {name}: sum {sum}"))?;
                let start = Instant::now();
                let mut sum = 0;
                let mut results = pool.map(double, 0..W3_N).chunk_size(1000);
                while let Some(x) = futures::StreamExt::next(&mut results).await {
                    sum += x?;
                }
                w3.push(W3_N as f64 / start.elapsed().as_secs_f64());
                ensure(sum == W3_SUM, || format!("W3 {name}: sum {sum}"))?;
            }
            println!("figure W2 {name} {:.0}", median(&mut w2));
            println!("figure W3 {name} {:.0}", median(&mut w3));
        }
        let ranges = ranges(5_000_000, 64);
        let start = Instant::now();
        let expected = count_sequentially(&ranges);
        let sequential = start.elapsed().as_secs_f64();
        ensure(expected == 348_513, || format!("W4: {expected} primes"))?;
        for (name, pool) in executors {
            let mut speedups = Vec::new();
            for _ in 0..3 {
                let (count, took) = support::count_primes_on(pool, &ranges).await?;
                speedups.push(sequential / took.as_secs_f64());
                ensure(count == expected, || format!("W4 {name}: {count} primes"))?;
            }
            println!("figure W4 {name} {:.3}", median(&mut speedups));
        }
        let payload: Vec<u8> = (0..W6_BYTES).map(|i| (i % 251) as u8).collect();
        for (name, pool) in executors {
            // Untimed: one echo per worker, at once, so that each has its memory mapped.
            let warm: Vec<_> = (0..pool.max_workers())
                .map(|_| pool.submit(echo, payload.clone()))
                .collect();
            for handle in warm {
                ensure(handle.await? == payload, || {
                    format!("W6 {name}: the echo differs")
                })?;
            }
            let mut times = Vec::new();
            for _ in 0..W6_REPS {
                let to_echo = payload.clone();
                let start = Instant::now();
                let back = pool.submit(echo, to_echo).await?;
                times.push(start.elapsed().as_secs_f64() * 1e3);
                ensure(back == payload, || format!("W6 {name}: the echo differs"))?;
            }
            println!("figure W6 {name} {:.2}", median(&mut times));
        }
        local.shutdown().await;
        mpi.shutdown().await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
