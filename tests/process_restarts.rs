//! Workers killed from outside while they start are started again for as long as the
//! pool lives, with a capped back-off, and the pool says so through `health()`. Its own
//! test binary: it kills every worker this process starts.
//!
//! Regression: killing each new worker before it was ready for 3 s left the pool
//! permanently broken ("workers failed to start 5 times in a row ... call
//! procpool::init()"), in a binary whose entry hook was fine.

mod common;

use common::*;
use procpool::{Executor, ExecutorExt, Health, ProcessPoolExecutor};
use std::process::Command;
use std::time::{Duration, Instant};

/// Keeps each worker starting for a while, so that it is killed while it starts.
fn slow_start() {
    std::thread::sleep(Duration::from_millis(100));
}

/// The worker processes this process started (its children that carry the variable).
fn workers() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            // state, ppid: a live child of this process
            stat_fields(pid).is_some_and(|f| f[0] != "Z" && f[1].parse() == Ok(me))
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.windows(16).any(|w| w == b"PROCPOOL_WORKER="))
        })
        .collect()
}

#[tokio::test]
async fn a_burst_of_kills_while_workers_start_is_survived() {
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .initializer(slow_start)
        .build()
        .unwrap();
    let job = pool.submit(double, 21);
    // Kill every worker for three seconds.
    let burst = Duration::from_secs(3);
    let (kills, saw_restarting) = bounded_sync("the burst", {
        let pool = pool.clone();
        move || {
            let start = Instant::now();
            let (mut kills, mut saw_restarting) = (0, false);
            while start.elapsed() < burst {
                for worker in workers() {
                    let killed = Command::new("kill")
                        .args(["-9", &worker.to_string()])
                        .status()
                        .unwrap();
                    kills += usize::from(killed.success());
                }
                saw_restarting |= matches!(pool.health(), Health::Restarting { .. });
                std::thread::sleep(Duration::from_millis(10));
            }
            (kills, saw_restarting)
        }
    });
    let burst_over = Instant::now();
    assert_eq!(bounded("the job", job).await, Ok(42));
    let back = burst_over.elapsed();
    assert!(kills > 5, "only {kills} kills: the burst proves nothing");
    assert!(saw_restarting, "health never said the pool was restarting");
    println!("{kills} kills in {burst:?}; serving again {back:?} after the burst");
    // The back-off is capped at 500 ms; the bound leaves room for a loaded machine.
    assert!(
        back < Duration::from_secs(3),
        "took {back:?} to serve again"
    );
    assert_eq!(pool.health(), Health::Serving);
    assert!(pool.stats().respawns >= 5, "{:?}", pool.stats());
}
