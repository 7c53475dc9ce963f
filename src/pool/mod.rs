//! The supervision core, written once for every backend: the state a pool's handles share
//! ([`core`]), each slot's life cycle ([`slot`]), the per-worker event loop ([`serve`]),
//! the pipelining window ([`line`](mod@line)), and the boundary a backend implements ([`backend`]).
//!
//! A [`Pool`] runs supervision on a thread of its own, with a private current-thread tokio
//! runtime, so that supervision never runs on (or blocks) the caller's runtime. The
//! executors built on it (the local [`ProcessPoolExecutor`](crate::ProcessPoolExecutor))
//! hold a `Pool` and forward the [`Executor`](crate::Executor) methods to it.

pub(crate) mod backend;
pub(crate) mod core;
mod inputs;
mod line;
mod serve;
mod slot;
#[cfg(test)]
mod tests;

use self::backend::Backend;
use self::core::{Config, Core};
use crate::error::{Error, JobError};
use crate::exit::ExitInfo;
use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A running pool: its shared state and the thread that supervises its workers.
pub(crate) struct Pool {
    pub(crate) core: Arc<Core>,
    supervisor: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Pool {
    /// Starts supervision on its own thread, over the backend `make` builds there (inside
    /// the supervision runtime's context, so that it may create the runtime's I/O objects),
    /// and waits until it has started.
    ///
    /// The runtime lives and dies on that thread: a failure to set up drops it there, never
    /// on the caller's thread, which may be a runtime's (tokio refuses to drop a runtime
    /// inside another).
    pub(crate) fn start<B: Backend>(
        config: Config,
        make: impl FnOnce() -> Result<B, Error> + Send + 'static,
    ) -> Result<Pool, Error> {
        let core = Arc::new(Core::new(config));
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let thread_core = core.clone();
        let supervisor = std::thread::Builder::new()
            .name("procpool-supervisor".into())
            .spawn(move || {
                let started = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::io("starting the supervisor's runtime", e))
                    .and_then(|runtime| {
                        let backend = {
                            let _entered = runtime.enter();
                            make()?
                        };
                        // Before any job: the caller waits for `started`.
                        thread_core
                            .queue
                            .wake_idle_last(backend.caps().wake_idle_last);
                        Ok((runtime, Arc::new(backend)))
                    });
                let (runtime, backend) = match started {
                    Ok(started) => {
                        let _ = started_tx.send(Ok(()));
                        started
                    }
                    Err(error) => {
                        let _ = started_tx.send(Err(error));
                        return;
                    }
                };
                runtime.block_on(supervise(thread_core.clone(), backend.clone()));
                // Dropping the runtime drops the backend's background work and any start
                // in progress; then the backend itself.
                drop(runtime);
                drop(backend);
                // Slots stop only once the queue is closed; this is a safety net so that
                // no job can be left waiting.
                thread_core.queue.close(Some(JobError::ShutDown));
                thread_core.terminated.send_replace(true);
            })
            .map_err(|e| Error::io("spawning the supervisor thread", e))?;
        match started_rx.recv() {
            Ok(Ok(())) => Ok(Pool {
                core,
                supervisor: Mutex::new(Some(supervisor)),
            }),
            Ok(Err(error)) => {
                let _ = supervisor.join();
                Err(error)
            }
            Err(_) => Err(Error::io(
                "starting the supervisor",
                std::io::Error::other("the supervisor thread ended before it started"),
            )),
        }
    }
}

/// Runs the backend's background work and one task per slot until every slot stops.
async fn supervise<B: Backend>(core: Arc<Core>, backend: Arc<B>) {
    let background = tokio::spawn(backend.clone().background());
    let workers = core.config.max_workers;
    let slots_left = Arc::new(AtomicUsize::new(workers));
    let slots: Vec<_> = (0..workers)
        .map(|slot| {
            let run = slot::run_slot(core.clone(), backend.clone(), slot, slots_left.clone());
            tokio::spawn(run)
        })
        .collect();
    for slot in slots {
        if let Err(e) = slot.await {
            core.break_pool(format!("a supervisor task failed (a procpool bug): {e}"));
        }
    }
    background.abort();
    let _ = background.await;
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.core.queue.close(Some(JobError::ShutDown));
        self.core.kill.cancel();
        let supervisor = self
            .supervisor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(supervisor) = supervisor {
            // An executor that runs tasks inside `wake()` could drop the last handle on the
            // supervisor thread itself; it then finishes on its own, unjoined.
            if supervisor.thread().id() != std::thread::current().id() {
                // Stopping the workers takes milliseconds (the local backend's SIGKILL
                // cannot be ignored).
                let _ = supervisor.join();
            }
        }
    }
}

/// How long a worker told to exit (or that failed) may take before it is killed.
pub(crate) const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Waits up to `grace` for `link`'s worker to exit by itself, then stops it; how it ended.
pub(crate) async fn stop_within<L: backend::WorkerLink>(
    link: &mut L,
    kill: &CancellationToken,
    grace: Duration,
) -> ExitInfo {
    match exit_within(link.exited(), kill, grace).await {
        Some(exit) => exit,
        None => link.kill().await,
    }
}

/// How a worker ended, if `exited` resolves within `grace` and the pool is not killed
/// meanwhile; `None` if it is still running.
pub(crate) async fn exit_within(
    exited: impl Future<Output = ExitInfo>,
    kill: &CancellationToken,
    grace: Duration,
) -> Option<ExitInfo> {
    tokio::select! {
        exit = exited => Some(exit),
        _ = tokio::time::sleep(grace) => None,
        _ = kill.cancelled() => None,
    }
}
