//! The `concurrent.futures` of async Rust: run plain functions on a pool of **child
//! processes** ([`ProcessPoolExecutor`], for CPU-bound and crash-prone work) or of **OS
//! threads** ([`ThreadPoolExecutor`], for blocking I/O and light work), and await the
//! results.
//!
//! Both pools implement one object-safe trait, [`Executor`]; its typed API comes from
//! [`ExecutorExt`] (`submit`, `map`, `map_unordered`, `shutdown`). Switching strategy is
//! changing one constructor, also at run time through `Box<dyn Executor>`.
//!
//! ```
//! use futures::TryStreamExt;
//! use procpool::{ExecutorExt, ProcessPoolExecutor};
//!
//! fn is_prime(n: u64) -> bool {
//!     n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
//! }
//!
//! # futures::executor::block_on(async {
//! let pool = ProcessPoolExecutor::builder().max_workers(2).build()?;
//! let one: bool = pool.submit(is_prime, 97).await?; // a JobHandle is a Future
//! let all: Vec<bool> = pool
//!     .map(is_prime, 0..10_000u64) // ordered, lazy, chunked
//!     .chunk_size(1024)
//!     .try_collect()
//!     .await?;
//! assert!(one);
//! assert_eq!(all.iter().filter(|&&p| p).count(), 1229);
//! pool.shutdown().await; // or drop it: the workers are terminated and reaped
//! # Ok::<(), procpool::Error>(())
//! # }).unwrap();
//! ```
//!
//! # Jobs
//!
//! A job is a plain function pointer `fn(A) -> R` and its argument: a function item or a
//! closure that captures nothing; several arguments travel as a tuple. Arguments and results
//! are `serde` types. A capturing closure does not coerce to `fn(A) -> R`, so it is a
//! compile error, not a run-time surprise (see [`ExecutorExt`]).
//!
//! # Threads or processes?
//!
//! | | [`ThreadPoolExecutor`] | [`ProcessPoolExecutor`] |
//! |---|---|---|
//! | per-job cost | a queue push and a wake-up | a socket round trip and (de)serialization |
//! | CPU-bound Rust code | scales too (no GIL) | scales, with crash isolation |
//! | a job panics | [`JobError::Panicked`] | [`JobError::Panicked`], with location |
//! | a job aborts, segfaults, exits | the whole program dies | only that job fails; the worker is replaced |
//! | stop a running job | impossible | [`JobHandle::cancel`] kills its worker |
//! | closures that capture | [`ThreadPoolExecutor::spawn`] | no: `fn` pointers only |
//!
//! Pick threads for blocking I/O and for short jobs; pick processes for work that may
//! crash, leak or hang, or that must be stoppable.
//!
//! # The entry hook
//!
//! Worker processes are this same executable started again with an environment variable.
//! With the default `auto-init` feature, a static constructor sees it and enters the worker
//! loop **before `main` runs**, in binaries, tests, doctests and benches alike. Without the
//! feature, call [`init()`] first thing in `main`. A worker that reaches `main` anyway never
//! starts a pool of its own: the parent's pool reports [`JobError::PoolBroken`] naming the
//! fix.
//!
//! # Runtimes
//!
//! Handles and streams are runtime-agnostic (no tokio type in any public signature): they
//! work under `#[tokio::main]` (multi-thread or current-thread), under any other executor,
//! and from synchronous code ([`JobHandle::wait`]). The process pool's supervision runs on
//! its own thread.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![doc(test(attr(deny(warnings))))]

#[cfg(not(unix))]
compile_error!("procpool supports Unix platforms only for now (it is tested on Linux)");

mod error;
mod executor;
mod handle;
mod job;
mod map;
mod options;
mod process;
mod queue;
#[allow(unsafe_code)]
mod raw;
mod state;
mod stats;
mod thread;
mod wait;

pub use error::{Error, ExitInfo, JobError, SubmitError};
pub use executor::{Executor, ExecutorExt, ShutdownOptions};
pub use handle::{ErasedHandle, JobHandle};
pub use job::ErasedJob;
pub use map::{Map, Progress};
pub use options::JobOptions;
pub use process::{ProcessPoolBuilder, ProcessPoolExecutor};
pub use state::{install_worker_state, try_with_worker_state, with_worker_state};
pub use stats::PoolStats;
pub use thread::{ThreadPoolBuilder, ThreadPoolExecutor};
pub use wait::{AsCompleted, ReturnWhen, Waited, as_completed, wait};

/// Entry points for the fuzz targets in `fuzz/`; not a public API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes arbitrary bytes as wire frames (both directions) and as chunk payloads.
    pub fn decode(data: &[u8]) {
        crate::process::fuzz_decode(data);
        crate::job::fuzz_decode(data);
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Enters the worker loop if this process was started as a pool worker; returns at once
/// otherwise.
///
/// Only needed when the default `auto-init` feature is disabled: then call it **first
/// thing in `main`**, before any other work, so that a worker process runs none of the
/// program. With `auto-init` (the default) the hook already ran before `main`, and this is
/// a no-op.
///
/// # Examples
///
/// ```no_run
/// # #[allow(clippy::needless_doctest_main)]
/// fn main() {
///     procpool::init(); // a worker never returns from here
///     // ... the program, which may build pools ...
/// }
/// ```
pub fn init() {
    if let Some(spec) = process::entry::take_spec() {
        process::worker::run(spec);
    }
}
