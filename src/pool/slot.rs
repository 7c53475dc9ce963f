//! A slot's life cycle: start a worker, serve it, replace it when it is lost or retired,
//! back off after failed starts, and break the pool when starting cannot succeed.

use super::backend::{Backend, StartError, WorkerLink};
use super::core::Core;
use super::serve::{Next, serve};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Consecutive start-up failures of one slot after which the pool reports itself broken.
const MAX_START_FAILURES: u32 = 5;
/// The first back-off after a failed start; it doubles with each further failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Runs slot `slot` until the pool stops. `slots_left` counts the slots that may still
/// have a worker: with a backend that cannot replace workers, the pool breaks when the
/// last is lost.
pub(crate) async fn run_slot<B: Backend>(
    core: Arc<Core>,
    backend: Arc<B>,
    slot: usize,
    slots_left: Arc<AtomicUsize>,
) {
    let counters = &core.counters;
    let mut failures = 0_u32;
    let mut first = true;
    loop {
        if core.kill.is_cancelled() || core.queue.is_drained() {
            return;
        }
        if !std::mem::take(&mut first) {
            counters.respawns.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(slot, "starting a replacement worker");
        }
        let link = match backend.start(slot, &core.kill).await {
            Ok(link) => {
                failures = 0;
                tracing::debug!(slot, worker = %link.id(), "worker started");
                link
            }
            Err(StartError::Killed) => return,
            Err(StartError::Fatal(reason)) => {
                core.break_pool(reason);
                return;
            }
            Err(StartError::Transient(reason)) => {
                failures += 1;
                tracing::warn!(slot, failures, %reason, "worker failed to start");
                if failures >= MAX_START_FAILURES {
                    core.break_pool(format!(
                        "workers failed to start {failures} times in a row; last: {reason}"
                    ));
                    return;
                }
                let backoff = FIRST_BACKOFF * 2_u32.pow(failures - 1);
                tokio::select! {
                    _ = core.kill.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => continue,
                }
            }
        };
        counters.workers_alive.fetch_add(1, Ordering::Relaxed);
        let next = serve(&core, &*backend, slot, link).await;
        counters.workers_alive.fetch_sub(1, Ordering::Relaxed);
        match next {
            Next::Stop => return,
            Next::Respawn if backend.caps().respawn => {}
            Next::Respawn => {
                let last = slots_left.fetch_sub(1, Ordering::AcqRel) == 1;
                tracing::warn!(slot, "lost a worker that this pool cannot replace");
                if last && !core.queue.is_drained() {
                    core.break_pool(
                        "every worker was lost, and this pool cannot replace its workers".into(),
                    );
                }
                return;
            }
        }
    }
}
