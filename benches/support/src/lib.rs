//! What procpool's benches and its `thread_vs_process` and `primes` examples share: the job
//! functions of the reference workloads (`shared/bench/WORKLOADS.md`) and the floor they
//! are measured against, a bare Unix socket to a child process.
//!
//! A dev-dependency of procpool only; not published.

pub mod floor;
pub mod workloads;
