//! A pool's bounded admission (`max_queued` on its builder): at most `max_workers +
//! max_queued` jobs admitted and not yet ended, counted by a fair semaphore, so that
//! `try_submit` can say "full", `reserve` can wait for room in turn, and a job's slot comes
//! back the moment it ends (also when it is cancelled while queued), except that a
//! thread-pool job that timed out keeps it until its thread returns.

use crate::error::SubmitError;
use crate::executor::Executor;
use crate::handle::JobState;
use crate::job::ErasedJob;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The admission of one pool: unbounded, or a semaphore of `max_workers + max_queued`
/// slots, closed when the pool shuts down.
#[derive(Debug, Clone, Default)]
pub(crate) struct Admission {
    slots: Option<Arc<Semaphore>>,
    /// The `max_queued` it was built with, for [`PoolStats`](crate::PoolStats).
    max_queued: Option<usize>,
    /// `max_workers + max_queued`, if bounded: the most jobs admitted and not yet ended.
    limit: Option<usize>,
}

/// Why a job was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Every slot is taken.
    Full,
    /// The pool is shut down (or broken).
    ShutDown,
}

impl Refusal {
    /// The error of a handle whose job was refused this way.
    pub(crate) fn job_error(self) -> crate::JobError {
        match self {
            Refusal::Full => crate::JobError::QueueFull,
            Refusal::ShutDown => crate::JobError::ShutDown,
        }
    }

    /// The typed error that gives `arg` back.
    pub(crate) fn with<A>(self, arg: A) -> SubmitError<A> {
        match self {
            Refusal::Full => SubmitError::Full(arg),
            Refusal::ShutDown => SubmitError::ShutDown(arg),
        }
    }
}

impl Admission {
    /// No bound with `None`; else `max_workers + max_queued` slots.
    pub(crate) fn new(max_workers: usize, max_queued: Option<usize>) -> Admission {
        let limit = max_queued.map(|queued| {
            max_workers
                .saturating_add(queued)
                .min(Semaphore::MAX_PERMITS)
        });
        Admission {
            slots: limit.map(|n| Arc::new(Semaphore::new(n))),
            max_queued,
            limit,
        }
    }

    pub(crate) fn max_queued(&self) -> Option<usize> {
        self.max_queued
    }

    /// The most jobs admitted and not yet ended at once (`max_workers + max_queued`), if
    /// bounded: also the most jobs in the queue that have not ended.
    pub(crate) fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// The semaphore, if bounded: what [`Reserve`] waits on.
    #[inline]
    pub(crate) fn slots(&self) -> Option<&Arc<Semaphore>> {
        self.slots.as_ref()
    }

    /// Takes a slot for a job: `reserved`, the permit it was reserved with, if that is one
    /// of this pool's, or a free one now. `None` on an unbounded pool, which counts
    /// nothing.
    #[inline]
    pub(crate) fn admit(
        &self,
        reserved: Option<OwnedSemaphorePermit>,
    ) -> Result<Option<Slot>, Refusal> {
        match &self.slots {
            None => Ok(None),
            Some(slots) => Admission::admit_bounded(slots, reserved).map(Some),
        }
    }

    fn admit_bounded(
        slots: &Arc<Semaphore>,
        reserved: Option<OwnedSemaphorePermit>,
    ) -> Result<Slot, Refusal> {
        let permit = match reserved {
            Some(permit) if Arc::ptr_eq(permit.semaphore(), slots) => permit,
            _ => slots.clone().try_acquire_owned().map_err(|e| match e {
                TryAcquireError::NoPermits => Refusal::Full,
                TryAcquireError::Closed => Refusal::ShutDown,
            })?,
        };
        permit.forget();
        Ok(Slot(Some(slots.clone())))
    }

    /// Moves the slot `state`'s job holds to the caller, who gives it back by dropping it,
    /// for a worker that runs on after the job ends: a thread-pool job that timed out
    /// keeps its room until its thread returns. `None`, without looking at the job, on an
    /// unbounded pool.
    pub(crate) fn take_from(&self, state: &JobState) -> Option<Slot> {
        self.slots.as_ref()?;
        state.take_slot().map(|slots| Slot(Some(slots)))
    }

    /// Refuses every later admission and wakes those waiting for room: at shutdown.
    pub(crate) fn close(&self) {
        if let Some(slots) = &self.slots {
            slots.close();
        }
    }
}

/// A slot taken for one job: given back when dropped, unless it went to the job's state,
/// which gives it back when the job ends.
#[derive(Debug)]
#[must_use]
pub(crate) struct Slot(Option<Arc<Semaphore>>);

impl Slot {
    /// Hands the slot to the job: it comes back the moment the job ends, however it ends.
    pub(crate) fn hold_until_end(mut self, state: &JobState) {
        if let Some(slots) = self.0.take() {
            state.give_back_at_end(slots);
        }
    }

    /// Hands `slot`, if the pool counts one, to the job (see
    /// [`hold_until_end`](Slot::hold_until_end)).
    #[inline]
    pub(crate) fn held_by(slot: Option<Slot>, state: &JobState) {
        if let Some(slot) = slot {
            slot.hold_until_end(state);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(slots) = self.0.take() {
            slots.add_permits(1);
        }
    }
}

/// Room for one job on a pool, held until it is used or dropped: from
/// [`ExecutorExt::reserve`](crate::ExecutorExt::reserve).
///
/// [`submit`](Permit::submit) uses it; dropping it unused gives the room back. On a pool
/// without a bound ([`max_queued`](crate::ProcessPoolBuilder::max_queued) not set) it is
/// always granted at once and holds nothing.
///
/// # Examples
///
/// ```
/// use procpool::{ExecutorExt, ThreadPoolExecutor};
///
/// # futures::executor::block_on(async {
/// let pool = ThreadPoolExecutor::builder().max_workers(1).max_queued(1).build()?;
/// let permit = pool.reserve().await?; // waits while two jobs are unfinished
/// let handle = permit.submit(|x: u32| x * 2, 21);
/// assert_eq!(handle.await?, 42);
/// # Ok::<(), procpool::Error>(())
/// # }).unwrap();
/// ```
#[must_use = "a permit holds room in the pool until it is used or dropped"]
pub struct Permit<'a, E: ?Sized> {
    pub(crate) executor: &'a E,
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

impl<'a, E: Executor + ?Sized> Permit<'a, E> {
    /// Submits `f(arg)` in the room this permit holds: it is never refused as full.
    ///
    /// After a shutdown began, the handle yields [`JobError::ShutDown`](crate::JobError::ShutDown),
    /// as [`ExecutorExt::submit`](crate::ExecutorExt::submit)'s does.
    pub fn submit<A, R>(self, f: fn(A) -> R, arg: A) -> crate::JobHandle<R>
    where
        A: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
        R: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    {
        self.submit_with(f, arg, crate::JobOptions::new())
    }

    /// Like [`submit`](Permit::submit), with settings for this job; see
    /// [`JobOptions`](crate::JobOptions).
    pub fn submit_with<A, R>(
        self,
        f: fn(A) -> R,
        arg: A,
        options: crate::JobOptions,
    ) -> crate::JobHandle<R>
    where
        A: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
        R: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    {
        let mut job = ErasedJob::single(f, arg).with_options(options);
        job.permit = self.permit;
        crate::executor::handle_of(self.executor, job).watching(crate::handle::key_of(f))
    }
}

impl<E: ?Sized> std::fmt::Debug for Permit<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("bounded", &self.permit.is_some())
            .finish()
    }
}

/// Waits for a slot of `slots` (in turn: the semaphore is fair), or `None` at once when
/// unbounded. `Err` once the pool is shut down.
pub(crate) async fn reserve(
    slots: Option<Arc<Semaphore>>,
) -> Result<Option<OwnedSemaphorePermit>, Refusal> {
    match slots {
        None => Ok(None),
        Some(slots) => slots
            .acquire_owned()
            .await
            .map(Some)
            .map_err(|_| Refusal::ShutDown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbounded_admits_everything() {
        let admission = Admission::new(1, None);
        for _ in 0..1000 {
            assert!(
                admission.admit(None).unwrap().is_none(),
                "nothing is counted"
            );
        }
        assert!(admission.slots().is_none());
    }

    #[test]
    fn bounded_admits_workers_plus_queued_then_says_full() {
        let admission = Admission::new(2, Some(1));
        let a = admission.admit(None).unwrap();
        let b = admission.admit(None).unwrap();
        let c = admission.admit(None).unwrap();
        assert!(a.is_some() && b.is_some() && c.is_some(), "counted");
        assert_eq!(admission.admit(None).unwrap_err(), Refusal::Full);
        drop(b); // a slot not handed to a job comes back when dropped
        let d = admission.admit(None).unwrap();
        assert_eq!(admission.admit(None).unwrap_err(), Refusal::Full);
        admission.close();
        drop((a, c, d));
        assert_eq!(admission.admit(None).unwrap_err(), Refusal::ShutDown);
    }

    #[test]
    fn a_slot_held_by_a_job_comes_back_when_the_job_ends() {
        let admission = Admission::new(1, Some(0));
        let state = JobState::new();
        Slot::held_by(admission.admit(None).unwrap(), &state);
        assert_eq!(admission.admit(None).unwrap_err(), Refusal::Full);
        assert!(state.fail_queued(crate::JobError::Cancelled));
        let again = admission.admit(None).unwrap();
        drop(again);
        // Ending twice gives back nothing more: still one slot.
        assert!(!state.fail_queued(crate::JobError::Cancelled));
        let _one = admission.admit(None).unwrap();
        assert_eq!(admission.admit(None).unwrap_err(), Refusal::Full);
    }

    #[test]
    fn a_reserved_permit_is_used_only_by_its_own_pool() {
        let ours = Admission::new(1, Some(0));
        let theirs = Admission::new(1, Some(0));
        let reserved = futures::executor::block_on(reserve(ours.slots().cloned())).unwrap();
        assert_eq!(ours.admit(None).unwrap_err(), Refusal::Full, "reserved");
        // Another pool's permit does not count there: it takes a slot of its own, and
        // the permit goes back to its pool.
        let _theirs = theirs.admit(reserved).unwrap();
        assert_eq!(theirs.admit(None).unwrap_err(), Refusal::Full);
        let reserved = futures::executor::block_on(reserve(ours.slots().cloned())).unwrap();
        let _ours = ours.admit(reserved).unwrap(); // its own permit, not a second slot
        assert_eq!(ours.admit(None).unwrap_err(), Refusal::Full);
    }
}
