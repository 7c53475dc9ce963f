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
//! # Worker-local state
//!
//! What is costly to build and must not travel with every job (a model, a lexicon, a
//! compiled rule set, a connection) is built once per worker by the pool and read by jobs
//! by its type, with no `static mut` and no hand-written global:
//!
//! ```
//! use procpool::{ExecutorExt, ProcessPoolExecutor};
//! use std::collections::HashMap;
//!
//! struct Lexicon(HashMap<&'static str, i32>);
//!
//! fn load_lexicon() -> Lexicon {
//!     Lexicon(HashMap::from([("good", 1), ("bad", -1)]))
//! }
//!
//! fn score(review: String) -> i32 {
//!     procpool::with_worker_state(|lex: &Lexicon| {
//!         review.split(' ').map(|w| lex.0.get(w).copied().unwrap_or(0)).sum()
//!     })
//! }
//!
//! # futures::executor::block_on(async {
//! let pool = ProcessPoolExecutor::builder().worker_state(load_lexicon).build()?;
//! assert_eq!(pool.submit(score, "good good bad".into()).await?, 1);
//! # Ok::<(), procpool::Error>(())
//! # }).unwrap();
//! ```
//!
//! The same two functions work with [`ThreadPoolBuilder::worker_state`] (one value per
//! thread) and, after [`install_worker_state`], on the current thread.
//!
//! # Progress
//!
//! A [`Map`] counts the items whose results are known and knows the input's length when
//! the input tells it; [`Map::on_progress`] calls back on every finished chunk, which is
//! what a progress bar needs (`examples/sentiment.rs` feeds an `indicatif` bar this way).
//!
//! # Threads or processes?
//!
//! | | [`ThreadPoolExecutor`] | [`ProcessPoolExecutor`] |
//! |---|---|---|
//! | per-job cost | a queue push and a wake-up | a socket round trip and (de)serialization |
//! | CPU-bound Rust code | scales too (no GIL) | scales, with crash isolation |
//! | data the job reads | shared, no copy | copied to the worker and back, unless it is in a [`SharedSlice`] / [`SharedBuffer`] |
//! | a job panics | [`JobError::Panicked`] | [`JobError::Panicked`], with location |
//! | a job aborts, segfaults, exits | the whole program dies | only that job fails; the worker is replaced |
//! | stop a running job | impossible | [`JobHandle::cancel`] kills its worker |
//! | closures that capture | [`ThreadPoolExecutor::spawn`] | no: `fn` pointers only |
//!
//! Rust has no GIL, so the question is not the one Python users know. Pick **threads** for
//! blocking I/O, for short jobs, and for jobs that read much data compared with the work
//! they do (or put that data in shared arrays, below); pick **processes** for work that
//! may crash, leak or hang, that must be stoppable, or that must not share an address
//! space with the service.
//!
//! The evidence, measured on a 2-core machine (2026-12-07, evening, commit 75ca4b3, 2
//! workers; the ranges are three runs, with the machine in its slow mode: the bare socket's
//! round trip 51–55 µs, the sequential `sentiment` pass 286–336 ms against 230–246 ms on a
//! quieter afternoon; the commands reproduce it on yours):
//!
//! | what | sequential | threads | processes | command |
//! |---|---|---|---|---|
//! | one tiny job, round trip with `wait()` (W1) | | 4.7–5.2 µs | 18.2–23.2 µs (bare socket: 51.0–55.1 µs) | `cargo run --release --example thread_vs_process` |
//! | the same, `.await`ed on a multi-thread tokio runtime (the first poll watches a short job) | | 4.5–4.7 µs | 18.9–19.1 µs | same |
//! | 100,000 tiny jobs (W2), third round on a pool (first round on a fresh pool) | | 4.72–4.84 M jobs/s (3.87–4.05 M) | 1.72–1.88 M jobs/s (1.44–1.62 M) | same |
//! | 1M items mapped, chunks of 1,000 (W3) | | 161–172 M items/s | 74–91 M items/s | same |
//! | the same through [`Map::try_collect_vec`] | | 206–423 M items/s | 75–95 M items/s | same |
//! | a 64 MiB `Vec<u8>` there and back (W6) | | no copy | 19–21 ms, lent (bare socket: 30–31 ms in those runs) | same |
//! | primes below 5M, CPU only (W4) | 1.00× | 1.93–1.96× | 1.93–1.98× | same |
//! | 1M short reviews, lexicon per worker, strings moved into the jobs | 1.00× | 1.46–1.60× | 0.91–1.31× | `cargo run --release --example sentiment` |
//! | moving average, 10M samples (80 MB each way) | 1.00× | 1.68–1.84× | 1.37–1.48× | `cargo run --release --example signal_filter` |
//! | the same, signal and output in shared arrays | 1.00× | 1.69–1.74× | 1.58–1.59× | same |
//!
//! Arguments and results of 1 MiB or more are lent: on Linux the receiving side reads
//! them out of the other's memory in one copy (`process_vm_readv`) instead of through the
//! socket; elsewhere, or where the system forbids it, the socket carries them.
//!
//! The moving average does about 100 additions per 16 bytes shipped, so processes that
//! ship the samples spend much of their time moving them: keep such work on threads, or
//! put the data in shared arrays, which processes read and write in place. A review
//! takes about a third of a microsecond to classify. Moved into the jobs (`map(f,
//! reviews)`, not `reviews.iter().cloned()`), the strings cost the caller nothing per item
//! on threads; cloning each one in the timed loop held the thread pool to 1.2–1.6× on two
//! cores (runs of 2026-12-04), the caller's allocations taking their time from the workers.
//! A process pool still encodes, sends and decodes every string, and frees it on the
//! caller's side: the caller's process spent 90–117 ms of CPU per million reviews
//! (2026-12-07, `getrusage` around the map), on the two cores the workers need, and a
//! profile puts about a seventh of the workers' own time into decoding the strings and
//! encoding the answers.
//! Counting primes ships a few bytes per millisecond of work, and processes scale as well
//! as threads while isolating crashes.
//!
//! Small `map` chunks on processes need many in flight (see [`Map::max_in_flight`]): each
//! costs a round trip to a worker, which otherwise waits for the stream to hand it the
//! next one. Mapping `x -> x * 2` over a million `u64`s in chunks of 100 items on 2 workers
//! ran at 18.8–20.1 M items/s with the default (32 chunks in flight) and at 3.2–4.3 M with
//! `max_in_flight(4)` (medians of 5 runs, three rounds, 2026-12-01).
//!
//! # Shared arrays
//!
//! A [`SharedSlice`] is a read-only array that every job reads in place; a
//! [`SharedBuffer`] is an array many jobs write, each its own part
//! ([`SharedBuffer::slice`]). Their elements are plain numbers ([`Element`]); they live in
//! a shared memory segment, so that a job's argument carries a handle of a few dozen
//! bytes, whatever the array's length. On threads they are plain shared memory: the same
//! job runs on either pool.
//!
//! ```
//! use futures::TryStreamExt;
//! use procpool::{ExecutorExt, ProcessPoolExecutor, SharedBuffer, SharedSlice};
//!
//! /// The running mean of three samples, for one part of the output.
//! fn smooth((samples, out): (SharedSlice<f64>, SharedBuffer<f64>)) {
//!     let means: Vec<f64> = samples.windows(3).map(|w| w.iter().sum::<f64>() / 3.0).collect();
//!     out.write(0, &means);
//! }
//!
//! # futures::executor::block_on(async {
//! let pool = ProcessPoolExecutor::new(2)?;
//! let samples = SharedSlice::from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
//! let out = SharedBuffer::zeroed(4)?;
//! let parts = [(samples.slice(0..4), out.slice(0..2)), (samples.slice(2..), out.slice(2..))];
//! pool.map(smooth, parts).try_collect::<Vec<()>>().await?;
//! assert_eq!(out.to_vec(), [2.0, 3.0, 4.0, 5.0]);
//! # Ok::<(), procpool::Error>(())
//! # }).unwrap();
//! ```
//!
//! The pool holds the segments a job's argument names until the job has ended; the kernel
//! frees a segment when its last holder lets go, also when a worker or the whole program is
//! killed, and nothing is left in `/dev/shm` or a temporary directory. See
//! [`shared`] for how values travel and how long they live.
//!
//! # Migrating from Python
//!
//! | Python (`concurrent.futures`, `multiprocessing`) | procpool |
//! |---|---|
//! | `ProcessPoolExecutor(max_workers=4)` | `ProcessPoolExecutor::builder().max_workers(4).build()?` |
//! | `ThreadPoolExecutor(max_workers=8)` | `ThreadPoolExecutor::new(8)?` |
//! | `initializer=f, initargs=(...)` | [`initializer(f)`](ProcessPoolBuilder::initializer); state it builds: [`worker_state(build)`](ProcessPoolBuilder::worker_state) + [`with_worker_state`] |
//! | `max_tasks_per_child=n` | [`max_tasks_per_child(n)`](ProcessPoolBuilder::max_tasks_per_child) |
//! | `fut = ex.submit(f, x)`; `fut.result()` | `let h = pool.submit(f, x);` `h.await?` or `h.wait()?` |
//! | `fut.result(timeout=5)` | [`h.wait_timeout(d)`](JobHandle::wait_timeout), or `submit_with(f, x, JobOptions::new().timeout(d))` to stop the job too |
//! | `fut.cancel()` (queued jobs only) | [`h.cancel()`](JobHandle::cancel): queued jobs never run; a running job's worker is killed |
//! | `fut.done()` | [`h.is_finished()`](JobHandle::is_finished) |
//! | (no bounded queue: `submit` always queues) | [`max_queued(n)`](ProcessPoolBuilder::max_queued) on either builder: [`try_submit`](ExecutorExt::try_submit) says [`SubmitError::Full`] and gives the argument back, [`submit_when_ready`](ExecutorExt::submit_when_ready) and [`reserve`](ExecutorExt::reserve) wait for room |
//! | (a dropped future keeps running) | [`h.cancel_on_drop()`](JobHandle::cancel_on_drop): dropping it cancels the job, killing a running job's worker ([`CancelOnDrop`]) |
//! | (no health check: `BrokenProcessPool` on the next submit) | [`pool.health()`](Executor::health): serving, restarting a worker, broken (why), shut down |
//! | `ex.map(f, xs)` (one item per task) | `pool.map(f, xs)`: a `Stream` of `Result`s, lazy and bounded, in chunks sized by what the items cost the workers (heavy ones one by one, cheap ones up to 16,384 at a time, smaller near the end; see [`Map::chunk_size`]) |
//! | `ex.map(f, xs, chunksize=64)` | `pool.map(f, xs).chunk_size(64)` |
//! | `Pool.imap_unordered(f, xs)` | `pool.map_unordered(f, xs)` |
//! | `Pool.map_async` / `starmap` | `pool.map(...)` is already async; several arguments travel as a tuple |
//! | `as_completed(futs)` | [`as_completed(handles)`](as_completed), yielding `(index, result)` |
//! | `wait(futs, return_when=FIRST_COMPLETED)` | [`wait(handles, ReturnWhen::FirstCompleted, timeout)`](wait()) |
//! | `ex.shutdown(wait=True)` | [`pool.shutdown().await`](ExecutorExt::shutdown) |
//! | `ex.shutdown(cancel_futures=True)` | [`pool.shutdown_cancel_queued().await`](ExecutorExt::shutdown_cancel_queued) |
//! | `with ProcessPoolExecutor() as ex:` | drop the pool: workers are killed and reaped |
//! | `BrokenProcessPool` after one crash | [`JobError::WorkerDied`] for that job only; the pool goes on |
//! | retrying a task by hand after a crash (Ray's `max_retries`, Dask's `retries`) | [`JobOptions::retries`] / [`Map::retries`] |
//! | `if __name__ == "__main__":` | nothing: workers enter before `main` (see [the entry hook](#the-entry-hook)) |
//! | pickling a lambda fails at run time | a capturing closure is a compile error |
//! | `tqdm(pool.imap(...), total=n)` | [`Map::on_progress`] |
//! | `multiprocessing.shared_memory.SharedMemory` + a NumPy array; joblib's memory-mapped arguments | [`SharedSlice`] (read by every job) and [`SharedBuffer`] (written in parts), freed with their last holder: no `unlink()` to forget |
//! | `mpi4py.futures.MPIPoolExecutor()` under `python -m mpi4py.futures` | `MpiPoolExecutor::world(ProcessPoolExecutor::builder())?` first thing in `main`, under `mpirun` (feature `mpi`, see [Past one machine](#past-one-machine)) |
//! | `MPICommExecutor(comm, root=0)` | the same call, except that the other ranks exit when the pool shuts down, where mpi4py's go on after the `with` block |
//!
//! # Failure semantics
//!
//! Every failure is a [`JobError`] on the job it concerns, never a panic in your code and
//! never a hang:
//!
//! - **A job panics:** [`JobError::Panicked`] with the message (and, in a process, the
//!   location, and the worker's backtrace when `RUST_BACKTRACE` is set:
//!   [`JobError::backtrace`]). The worker goes on. In a `map`, only that item fails.
//! - **A worker process dies** (abort, segfault, `exit`, OOM killer, `kill -9`): its job
//!   gets [`JobError::WorkerDied`] with the exit code or signal; the pool starts a
//!   replacement and every other job is untouched. A job that may safely run twice can ask
//!   to be run again instead, up to [`JobOptions::retries`] more times; its last error
//!   says how many attempts it had. A worker that breaks the protocol gets
//!   [`JobError::Protocol`] and is replaced the same way.
//! - **Time limits and memory ceilings** ([`JobOptions::timeout`],
//!   [`ProcessPoolBuilder::job_timeout`], [`ProcessPoolBuilder::max_worker_memory`]):
//!   [`JobError::TimedOut`] / [`JobError::MemoryLimit`]; a process worker is killed and
//!   replaced. A thread cannot be stopped: its future fails, the thread runs on.
//! - **Cancellation:** [`JobError::Cancelled`]. A queued job never starts; a running
//!   process job is stopped by killing its worker. A short job already streamed to a
//!   worker behind the one it runs is taken back from the worker (it never runs, and the
//!   worker lives on); one the worker had just started is stopped like a running job.
//! - **Jobs behind a lost worker:** the jobs streamed to a worker behind the one it runs
//!   have not started; if the worker dies, times out or is stopped, they go back to the
//!   front of the queue and run on another worker. Only the job it was running fails.
//! - **Jobs behind a slow job:** when the job a worker runs has taken 2 ms with short jobs
//!   streamed behind it, and another worker is idle, the pool takes back those the worker
//!   has not started (it skips them) and the idle worker runs them: a short job does not
//!   wait behind a slow or hung one while a worker idles (Linux; elsewhere it waits for
//!   it). While the pool drains after a shutdown, the other workers exit instead, and
//!   jobs already streamed stay where they are.
//! - **Data:** an argument or result that fails to (de)serialize (its `Serialize` or
//!   `Deserialize` returns an error or panics), or exceeds
//!   [`ProcessPoolBuilder::max_frame_size`], fails that job with [`JobError::Encode`],
//!   [`JobError::Decode`] or [`JobError::TooLarge`]; a function that cannot be shipped
//!   (from a dynamic library) with [`JobError::Unshippable`]. A job's user code (its
//!   types' `Serialize`, `Deserialize` and `Drop`) runs on the caller's threads, when it
//!   submits and when it reads the result, never on the pool's own thread: a slow or
//!   panicking impl delays nobody else's timeout, cancellation or replacement.
//! - **The pool cannot work** (an initializer or `worker_state` builder panics, the entry
//!   hook is missing, the executable cannot run, workers exit or crash as they start five
//!   times with none started in between): [`JobError::PoolBroken`] naming the cause, rather than respawning
//!   forever. A worker killed from outside while it starts is started again, after a
//!   back-off capped at 500 ms, for as long as the pool lives. [`Executor::health`] reads
//!   which of these the pool is in, for a service's health check.
//! - **Setting up:** [`ProcessPoolBuilder::build`] returns its error ([`Error::Io`] when
//!   descriptors or processes run out) in an async context as from a plain thread.
//!   Workers reach the pool over an inherited socket pair with no path: `TMPDIR` (of any
//!   bytes or length) is never used, nothing can be left there, and a parent whose
//!   standard descriptors are closed (a daemon) is fine, since links never take fds 0–2.
//! - **A full pool** (one built with [`ProcessPoolBuilder::max_queued`]): `try_submit`
//!   gives the argument back in [`SubmitError::Full`], `submit`'s handle fails with
//!   [`JobError::QueueFull`]; nothing is queued, so nothing is lost. A `map` and
//!   [`ExecutorExt::submit_when_ready`] wait for room instead.
//! - **Shutdown:** jobs submitted afterwards get [`JobError::ShutDown`] (or
//!   [`SubmitError::ShutDown`] from `try_submit`); dropping a process pool kills and reaps its
//!   workers, and a worker whose parent dies is killed by the kernel (Linux) so that no
//!   orphan is left.
//! - **Ctrl-C:** each worker process leads a process group of its own, so a terminal's
//!   Ctrl-C (SIGINT to the foreground group) reaches the application, not its workers:
//!   the application decides what becomes of the jobs (`examples/tokio_service.rs`
//!   drains them). If the application dies of it, its workers follow (above).
//! - **Processes a job starts** stay in its worker's group unless they leave it, and are
//!   stopped with the worker however it ends: when its job is cancelled or times out,
//!   when it crashes, when it is retired (`max_tasks_per_child`, a graceful `shutdown()`)
//!   and when the pool is dropped. A process meant to outlive its worker leaves the group
//!   (`std::process::Command::process_group(0)`, or `setsid`).
//!
//! # Past one machine
//!
//! With the `mpi` feature (Open MPI's `libopenmpi-dev` and libclang to build),
//! `MpiPoolExecutor` runs the same [`Executor`] trait on an MPI job, in the model of
//! `python -m mpi4py.futures`: one program started by `mpirun -n N` calls
//! `MpiPoolExecutor::world(local)` first thing in `main`; rank 0 gets the executor, every
//! other rank becomes a *node agent* that serves until the pool shuts down and then exits.
//! Every rank runs `main` up to that call, so nothing before it may have effects the
//! program wants once (printing, writing files, reading standard input, starting
//! threads). `examples/mpi_primes.rs` is a complete program:
//!
//! ```text
//! cargo build --release --features mpi --example mpi_primes
//! mpirun -n 3 --oversubscribe target/release/examples/mpi_primes
//! mpirun -n 9 --hostfile hosts --bind-to none target/release/examples/mpi_primes
//! ```
//!
//! - **On several hosts**, list them in a hostfile (`node1 slots=4` per line; mpirun
//!   reaches each over `ssh` without a password) and let MPI carry messages over TCP
//!   between hosts (Open MPI does by default; `--mca btl self,vader,tcp` names it when
//!   restricting transports). Every host needs the binary at the path mpirun starts, or a
//!   copy of the same build at the path given for that host (`-n 1 ./app : -n 8 --host
//!   node1:8 /scratch/app`): rank 0 compares each rank's GNU build-id (a hash of the file
//!   the linker writes; Rust on Linux links with one) and refuses another build with
//!   [`Error::Cluster`] naming both build-ids, hosts and paths. `tests/mpi.rs` runs two
//!   agents on a second host as Open MPI sees it (its own daemon, started through a
//!   stand-in for `ssh` in a namespace with another host name, a copy of the program at
//!   another path, TCP to rank 0), where jobs run, a 16 MiB payload crosses, a crash is
//!   isolated and a timeout kills.
//! - **Each agent runs its jobs in local worker processes**, so on every node a job that
//!   panics, aborts, segfaults, is killed, times out or is cancelled fails alone with the
//!   same [`JobError`] as on one machine, and its worker is replaced; the rank and the MPI
//!   job live on. The local pool's settings apply per node: `initializer`, `worker_state`,
//!   `max_tasks_per_child`, `max_worker_memory`, timeouts; `max_workers` counts workers
//!   per rank (by default, each agent takes its share of its node's cores, rank 0 only
//!   supervises). An agent bound to one core (mpirun's default for `-n 2`) gets one
//!   worker: `--bind-to none` or `--map-by node:PE=4` gives it more.
//! - **What MPI cannot survive:** if a rank itself dies (killed, or the machine lost),
//!   `mpirun` ends the whole job within about a second; the program exits non-zero.
//!   `tests/mpi.rs` kills a node agent and sees the job end in about 1.1 s. A panic on
//!   rank 0 unwinds through the pool's drop, which stops the agents and finalizes MPI, so
//!   the program ends with the panic's status; a panic on a rank's MPI thread (a procpool
//!   bug) aborts the MPI job (`MPI_Abort`) rather than unwinding through MPI.
//! - **Scheduling:** a round trip through rank 0's and an agent's MPI threads costs one to
//!   a few milliseconds on a loaded machine, so a worker running a job of known length is
//!   sent the next one 30 ms before the running one is expected to end, and does not wait
//!   for the round trip. That job cannot be taken back: its `cancel()` stops it when it
//!   becomes the running one, killing the worker then, and it waits if the running job
//!   takes longer than expected, even while another worker is idle. An MPI thread polls without a pause
//!   for 300 µs after anything happened, then naps a sixteenth of the time it has waited
//!   (at most 1 ms) between polls, so an answer that comes later is taken late by up to
//!   that: a 5 ms job called one at a time came back 0.3–0.7 ms after its time on two
//!   shared cores (0.06–0.4 ms on the local pool; `mpi_vs_process`).
//! - **Weaker than on one machine:** jobs are not taken back from behind a slow one on
//!   another node (that needs memory both processes map); one MPI pool per run (MPI is
//!   initialized once); rank 0 needs every other rank to call `world`: if one has not
//!   introduced itself within 30 s (or the handshake timeout, if longer), rank 0 says
//!   which on standard error and aborts the MPI job, which could not finalize.
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
//! The rule that follows: **code that runs before `main`, or in `main` before `init()`,
//! runs in every worker too.** Keep such code free of side effects (no files written, no
//! sockets bound, no pools built), as you would keep a Python module's top level under
//! `if __name__ == "__main__":`. Job functions must live in the executable itself, not in a
//! dynamically loaded library.
//!
//! # Runtimes
//!
//! Handles and streams are runtime-agnostic (no tokio type in any public signature): they
//! work under `#[tokio::main]` (multi-thread or current-thread), under any other executor,
//! and from synchronous code ([`JobHandle::wait`]). The process pool's supervision runs on
//! its own thread, so a busy or blocked runtime never delays a worker's replacement.
//!
//! # In a service
//!
//! A tokio / axum / tower service puts its CPU-heavy or crash-prone work on a pool and
//! keeps its runtime free. What it needs from the pool:
//!
//! - **Back-pressure:** [`ProcessPoolBuilder::max_queued`] (and the thread pool's) bounds
//!   the unfinished jobs; [`try_submit`](ExecutorExt::try_submit) sheds at once,
//!   [`submit_when_ready`](ExecutorExt::submit_when_ready) and
//!   [`reserve`](ExecutorExt::reserve) wait for room in turn (a timeout around them is a
//!   bounded wait).
//! - **Stopping work nobody waits for:** [`JobHandle::cancel_on_drop`], so that a request
//!   dropped by a timeout or a client that hung up kills its running job's worker; or a
//!   job's own [`JobOptions::timeout`], which stops it on the worker.
//! - **Health:** [`Executor::health`] for `/health` (serving, restarting a worker, broken
//!   and why, shut down), [`Executor::stats`] for a status page.
//! - **tower** (feature `tower`): `PoolService` is one function on a pool as a
//!   `tower::Service` whose `poll_ready` is the pool's admission and whose future cancels
//!   its job when dropped, so `load_shed`, `concurrency_limit`, `timeout` and `buffer`
//!   compose with it.
//! - **Metrics** (feature `metrics`): `PoolStats::record_metrics` and
//!   `Health::record_metrics` hand the pool's counters, gauges and duration summaries to
//!   whatever `metrics` recorder the application installed (Prometheus, say).
//!
//! `examples/tokio_service.rs` puts all of it together in an axum service.
//!
//! # Platforms
//!
//! | platform | status |
//! |---|---|
//! | Linux (x86-64) | **tested**: every test, bench and example runs in CI |
//! | Linux, other architectures | expected to work (nothing is architecture-specific); not tested |
//! | macOS, FreeBSD and other Unix | expected to build and run; not tested; the promises below marked Linux do not hold there |
//! | Windows | not supported yet: the crate does not compile there |
//! | MPI (feature `mpi`) | **tested** with Open MPI 4.1 on Linux x86-64 (CI): `mpirun -n 3` on one host, and ranks on a second host simulated on the same machine (its own Open MPI daemon and host name, TCP between hosts); real multi-machine clusters: expected to work, not tested |
//!
//! What holds only on Linux, and what happens elsewhere:
//!
//! | promise | on Linux, through | elsewhere |
//! |---|---|---|
//! | a worker dies within a second of its parent's SIGKILL | `PR_SET_PDEATHSIG` | it exits when its current job ends (its socket is closed) |
//! | [`ProcessPoolBuilder::max_worker_memory`] is enforced | `/proc/<pid>/status` | not enforced |
//! | a function from a dynamic library is refused ([`JobError::Unshippable`]) | `/proc/self/maps` | the check is skipped |
//! | workers run the very file the pool runs, even if it is replaced on disk | `/proc/self/exe` | `current_exe()` is started; a replaced binary is caught by the image check |
//! | short jobs are taken back from behind a slow one | a shared word in a sealed `memfd` | they wait for it |
//! | a worker holds small answers back to send them in batches, journaled so that a crash loses none | a journal in the same `memfd` | each answer is sent at once (on Linux, sending each at once gave W2 0.39 M jobs/s against 0.75 M holding) |
//! | shared arrays ([`SharedSlice`], [`SharedBuffer`]) | a sealed `memfd`, opened through `/proc/<pid>/fd` | [`ShareError::Unsupported`] |
//! | [`init()`] removes the worker variable from a worker's environment | counting threads in `/proc/self/task` | only the `auto-init` hook removes it; after `init()` it stays set, with a warning |
//!
//! Everywhere on Unix: workers in process groups of their own (Ctrl-C, stopping the
//! processes a job starts), links over inherited socket pairs, restarts with back-off.
//!
//! # Examples
//!
//! In `examples/`, each checks its own result:
//! `primes` (the main demo), `signal_filter` (a moving average, exact against the
//! sequential output), `sentiment` (worker-local state and a progress bar),
//! `tokio_service` (an axum service with back-pressure and graceful shutdown),
//! `thread_vs_process` (every executor on the reference workloads, with a chart) and
//! `no_auto_init`.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![doc(test(attr(deny(warnings))))]

#[cfg(not(unix))]
compile_error!("procpool supports Unix platforms only for now (it is tested on Linux)");

mod admission;
mod cancel_on_drop;
mod error;
mod executor;
mod exit;
mod handle;
mod job;
mod map;
#[cfg(feature = "metrics")]
mod metrics_export;
#[cfg(feature = "mpi")]
mod mpi;
mod options;
mod pool;
mod process;
mod queue;
mod run;
#[cfg(feature = "tower")]
mod service;
pub mod shared;
mod ship;
mod spares;
mod state;
mod stats;
mod sys;
mod thread;
mod timing;
mod wait;
mod wire;
mod worker;

pub use admission::Permit;
pub use cancel_on_drop::CancelOnDrop;
pub use error::{Cause, Error, JobError, ShareError, SubmitError};
pub use executor::{Executor, ExecutorExt, ShutdownOptions};
pub use exit::{ExitInfo, WorkerId};
pub use handle::{ErasedHandle, JobHandle};
pub use job::ErasedJob;
pub use map::{Map, Progress};
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use mpi::MpiPoolExecutor;
pub use options::JobOptions;
pub use process::{ProcessPoolBuilder, ProcessPoolExecutor};
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use service::PoolService;
pub use shared::{Element, SharedBuffer, SharedSlice};
pub use state::{install_worker_state, try_with_worker_state, with_worker_state};
pub use stats::{FailureCounts, Health, PoolStats};
pub use thread::{ThreadPoolBuilder, ThreadPoolExecutor};
pub use timing::DurationSummary;
pub use wait::{AsCompleted, ReturnWhen, Waited, as_completed, wait};

/// Entry points for the fuzz targets in `fuzz/`; not a public API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes arbitrary bytes as wire frames (both directions) and as chunk payloads.
    pub fn decode(data: &[u8]) {
        crate::wire::frame::fuzz_decode(data);
        crate::wire::items::fuzz_decode(data);
        crate::run::fuzz_decode(data);
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
/// A worker removes the variable that made it one before it runs a job, so that programs
/// its jobs start do not become workers too. That is only sound while the process runs a
/// single thread, which Linux can tell: called after threads were started (under
/// `#[tokio::main]`, say), or on another Unix, the worker keeps the variable and says so on
/// its standard error.
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
    process::entry::enter(false);
}
