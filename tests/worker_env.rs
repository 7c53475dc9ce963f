//! A worker does not pass its role on: programs a job starts (this executable among them)
//! run their own `main`, whichever way the worker was entered: by the automatic hook (the
//! default features) or by `procpool::init()` (`--no-default-features`, as `.ci/run` also
//! runs this test). Regression: `init()` used to leave `PROCPOOL_WORKER` set, so a job that
//! started this program again got a process that tried to become a worker and exited.
//!
//! Its own binary, without the test harness: `main` must call `init()` first.

use procpool::{ExecutorExt, ProcessPoolExecutor};
use std::process::Command;
use std::time::Duration;

/// Set on the process a job starts.
const CHILD_ENV: &str = "PROCPOOL_TEST_STARTED_BY_A_JOB";

/// Starts this executable again and returns what it printed.
fn start_this_program(_: ()) -> String {
    let exe = std::env::current_exe().expect("the worker's executable");
    match Command::new(exe).env(CHILD_ENV, "1").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => format!("the started program failed ({})", out.status),
        Err(e) => format!("could not start the program: {e}"),
    }
}

fn main() {
    procpool::init(); // a worker never returns from here
    if std::env::var_os(CHILD_ENV).is_some() {
        let role = match std::env::var_os("PROCPOOL_WORKER") {
            Some(_) => "with the worker variable",
            None => "without the worker variable",
        };
        println!("reached main {role}");
        return;
    }
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        eprintln!("worker_env did not finish within a minute");
        std::process::exit(2);
    });
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .expect("a pool");
    let seen = pool
        .submit(start_this_program, ())
        .wait()
        .expect("the job ran");
    assert_eq!(seen, "reached main without the worker variable");
    let entry = if cfg!(feature = "auto-init") {
        "the automatic hook"
    } else {
        "procpool::init()"
    };
    println!("test a_program_a_job_starts_is_no_worker ({entry}) ... ok");
}
