//! A slot's life cycle: start a worker, serve it, replace it when it is lost or retired,
//! back off after failed starts, and break the pool when starting cannot succeed.
//!
//! The policy follows the supervisors people trust (systemd's restart back-off,
//! Kubernetes' crash-loop back-off): never give up silently, never spin, always say why.
//! A failure from outside the worker is retried for as long as the pool lives, each
//! attempt after a back-off that doubles up to [`MAX_BACKOFF`]; a failure that will
//! repeat breaks the pool (at once, or after [`MAX_REPEATED_FAILURES`] in a row), naming
//! its cause. Meanwhile the pool's health says it is restarting, and why.

use super::backend::{Backend, StartError, WorkerLink};
use super::core::Core;
use super::serve::{Next, serve};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Failures of the worker's own doing in a row, in one slot, after which the pool reports
/// itself broken.
const MAX_REPEATED_FAILURES: u32 = 5;
/// The first back-off after a failed start; it doubles with each further failure...
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// ...up to this, so that a slot comes back soon after the trouble ends.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The back-off before the next start, after `failures` failed ones in a row.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_BACKOFF * 2_u32.pow(doublings)).min(MAX_BACKOFF)
}

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
    // Failed starts in a row, of any kind; and of the worker's own doing.
    let mut failures = 0_u32;
    let mut repeated = 0_u32;
    let mut first = true;
    loop {
        if core.kill.is_cancelled() || core.queue.is_drained() {
            return;
        }
        if !std::mem::take(&mut first) {
            counters.respawns.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(slot, "starting a replacement worker");
        }
        let reason = match backend.start(slot, &core.start_token()).await {
            Ok(link) => {
                repeated = 0;
                core.slot_started(slot);
                tracing::debug!(slot, worker = %link.id(), "worker started");
                counters.workers_alive.fetch_add(1, Ordering::Relaxed);
                let next = serve(&core, &*backend, slot, link).await;
                counters.workers_alive.fetch_sub(1, Ordering::Relaxed);
                match next {
                    Next::Stop => {
                        // Drained: workers still starting have nothing to run.
                        core.stop_starts_if_drained();
                        return;
                    }
                    Next::Respawn if backend.caps().respawn => {
                        failures = 0;
                        continue;
                    }
                    // Ended before it answered a job: the back-off goes on doubling.
                    Next::Failed(reason) if backend.caps().respawn => reason,
                    Next::Respawn | Next::Failed(_) => {
                        let last = slots_left.fetch_sub(1, Ordering::AcqRel) == 1;
                        tracing::warn!(slot, "lost a worker that this pool cannot replace");
                        if last && !core.queue.is_drained() {
                            core.break_pool(
                                "every worker was lost, and this pool cannot replace its \
                                 workers"
                                    .into(),
                            );
                        }
                        return;
                    }
                }
            }
            Err(StartError::Killed) => return,
            Err(StartError::Fatal(reason)) => {
                core.break_pool(reason);
                return;
            }
            Err(StartError::Repeating(reason)) => {
                repeated += 1;
                if repeated >= MAX_REPEATED_FAILURES {
                    core.break_pool(format!(
                        "workers failed to start {repeated} times with none started in \
                         between; last: {reason}"
                    ));
                    return;
                }
                reason
            }
            Err(StartError::Transient(reason)) => reason,
        };
        failures += 1;
        tracing::warn!(slot, failures, %reason, "worker failed to start");
        core.slot_failed(slot, reason);
        tokio::select! {
            _ = core.kill.cancelled() => return,
            _ = tokio::time::sleep(backoff(failures)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_doubles_up_to_its_cap() {
        let waits: Vec<_> = (1..=6).map(backoff).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(waits, [ms(50), ms(100), ms(200), ms(400), ms(500), ms(500)]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF, "no overflow");
    }
}
