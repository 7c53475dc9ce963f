//! Building without the automatic entry hook (`--no-default-features`): call
//! `procpool::init()` first thing in `main`.
//!
//! ```text
//! cargo run --example no_auto_init --no-default-features                     # works
//! FORGET_INIT=1 cargo run --example no_auto_init --no-default-features        # clear error
//! ```
//!
//! (An environment variable, not a flag: worker processes inherit the environment but are
//! started without the parent's arguments.) With `FORGET_INIT=1`, worker processes run `main` instead of the worker loop; the pool
//! must then fail with an error that names the fix, never start workers of its own, and
//! never hang. The example checks that and exits non-zero otherwise.

use procpool::{ExecutorExt, JobError, ProcessPoolExecutor};

fn square(x: u64) -> u64 {
    x * x
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let forget = std::env::var_os("FORGET_INIT").is_some_and(|v| v == "1");
    if !forget {
        procpool::init(); // a worker process never returns from here
    }
    let pool = ProcessPoolExecutor::builder().max_workers(2).build()?;
    match (forget, pool.submit(square, 12).wait()) {
        (_, Ok(144)) if !forget => println!("init() called: square(12) = 144 in a worker"),
        (true, Ok(_)) => println!(
            "the automatic entry hook is enabled, so forgetting init() is harmless \
             (build with --no-default-features to see the error)"
        ),
        (true, Err(e @ JobError::PoolBroken { .. }))
            if e.to_string().contains("procpool::init()") =>
        {
            println!("init() forgotten: the pool refused with: {e}")
        }
        (_, other) => return Err(format!("unexpected outcome: {other:?}").into()),
    }
    Ok(())
}
