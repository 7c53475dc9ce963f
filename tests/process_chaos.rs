//! Chaos: thousands of jobs while random workers are SIGKILLed over and over. Every job
//! must end exactly once (its result, or a worker-died error), nothing may hang, the pool
//! must get back to full size, and no child may outlive the pool. Its own test binary, so
//! that this process's children are exactly the pool's workers.

mod common;

use common::*;
use procpool::{Executor, ExecutorExt, JobError, ProcessPoolExecutor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WORKERS: usize = 3;
const JOBS: u64 = 3000;

/// About a quarter of a millisecond of work, then the answer.
fn work(x: u64) -> u64 {
    let end = Instant::now() + Duration::from_micros(250);
    let mut acc = x;
    while Instant::now() < end {
        acc = std::hint::black_box(acc.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    std::hint::black_box(acc);
    x * 2
}

/// The pids of this process's children, read from `/proc`.
fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name: state, ppid, ...
        let mut rest = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let (_state, ppid) = (rest.next(), rest.next());
        if ppid.and_then(|p| p.parse::<u32>().ok()) == Some(me) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_under_load_lose_nothing_and_leave_nothing() {
    let pool = ProcessPoolExecutor::builder()
        .max_workers(WORKERS)
        .build()
        .unwrap();
    // Warm up so that there are workers to kill from the start.
    bounded("warm-up", pool.submit(work, 0)).await.unwrap();

    let handles: Vec<_> = (0..JOBS).map(|i| pool.submit(work, i)).collect();

    let done = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(Mutex::new(Vec::new()));
    let killer = {
        let (done, killed) = (done.clone(), killed.clone());
        std::thread::spawn(move || {
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(15));
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let victims = children();
                if victims.is_empty() {
                    continue;
                }
                let victim = victims[(seed % victims.len() as u64) as usize];
                let success = std::process::Command::new("kill")
                    .args(["-9", &victim.to_string()])
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if success {
                    killed.lock().unwrap().push(victim);
                }
            }
        })
    };

    let results = bounded("every job", futures::future::join_all(handles)).await;
    done.store(true, Ordering::SeqCst);
    killer.join().unwrap();

    let mut ok = 0;
    let mut died = 0;
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(v) => {
                assert_eq!(v, 2 * i as u64, "job {i} returned a wrong value");
                ok += 1;
            }
            Err(JobError::WorkerDied { exit, .. }) => {
                assert_eq!(exit.signal(), Some(9), "job {i}: {exit}");
                died += 1;
            }
            Err(other) => panic!("job {i} ended with an unexpected error: {other:?}"),
        }
    }
    let killed = std::mem::take(&mut *killed.lock().unwrap());
    let kills = killed.len();
    eprintln!("{JOBS} jobs: {ok} results, {died} worker deaths, {kills} kills");
    assert_eq!(ok + died, JOBS as usize, "every job ended exactly once");
    assert!(
        kills > 0,
        "the chaos killed nobody: the test proves nothing"
    );
    assert!(died <= kills, "more deaths ({died}) than kills ({kills})");

    // The pool gets back to full size and keeps serving. A kill can land after the last
    // result, so first wait until the pool has reaped every worker killed (a worker it
    // has not noticed dead yet could still be handed the next job).
    let deadline = Instant::now() + BOUND;
    while pool.stats().workers_alive < WORKERS || children().iter().any(|pid| killed.contains(pid))
    {
        assert!(
            Instant::now() < deadline,
            "pool never got back to size: {:?}",
            pool.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(bounded("after chaos", pool.submit(work, 21)).await, Ok(42));
    let stats = pool.stats();
    assert!(stats.respawns as usize >= died, "{stats:?}");

    drop(pool);
    let left = children();
    assert!(left.is_empty(), "children outlived the pool: {left:?}");
}
