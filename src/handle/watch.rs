//! Which functions' jobs come back so soon that a task awaiting one should watch for the
//! answer for a moment rather than sleep on it: the bounded poll of a
//! [`JobHandle`](super::JobHandle)'s first `poll`.
//!
//! A task that returns `Pending` gives its thread back to the runtime, which parks it once
//! nothing else is ready; the pool's wake-up then has to unpark that thread (on a VM, often
//! a sleeping CPU) before the task runs again. For a job that is back in a few tens of
//! microseconds that wake-up is most of the round trip. So the first poll of a job's handle
//! watches its state for up to [`WATCH`] when the function's jobs have been coming back
//! within that time, and parks as before when they have not.
//!
//! Only a job that went straight to a worker (no other job waited in the pool's queue,
//! and on a process pool a worker was idle), awaited by the thread that submitted it
//! before that thread submits anything else, is watched: a caller awaiting the job it
//! has just submitted to a pool with room (a request handler, a loop of one job at a
//! time) is waiting for that answer alone. One awaiting the first of many jobs it
//! submitted would take the CPU its workers need, for an answer queued behind theirs; and
//! on a busy pool a watch would hold the runtime's thread while other tasks could have
//! submitted more (the pool's load, not the watch, then decides when answers come). Nor is
//! one watched unless the task runs alone on a tokio multi-thread runtime (at most one live
//! task): a task that watches its jobs one after another would hold its thread, and the
//! tasks queued behind it, for as long as the answers keep coming within a watch (a
//! service's many requests would run one at a time per thread instead of interleaved); a
//! current-thread runtime's one thread also runs its drivers and any `LocalSet`, whose
//! tasks its count leaves out; and outside tokio nothing says what else waits.
//!
//! What a function's jobs did is kept per function, in a small table every thread shares,
//! by trial: a function not seen yet is watched; a watch that sees the answer keeps the
//! function watched; a watch that misses (a long job, or a busy pool whose queue holds the
//! job back) skips the function's next [`FIRST_SKIP`] jobs, then twice as many after each
//! miss in a row, up to [`MOST_SKIP`]. So a function whose jobs are long costs one watch
//! per 1,024 of its jobs once six watches in a row have missed. The table is a hint: two
//! functions that share a slot skip together (so a long one cannot escape its skips by
//! alternating with a short one), and two threads writing one slot at once cost at most a
//! watch that was not needed or one not made.
//!
//! The thread-local mark holds the address of the job's completion cell, not the cell: a
//! cell freed and its memory reused by another job may, rarely, make that job's first
//! poll on this thread look like the marked one's, which costs at most one watch.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// How long the first poll of a job's handle watches for its answer, at most.
///
/// The most tokio's guidance allows a task between two `.await`s (10 to 100 µs), as long
/// as a blocking [`wait`](super::JobHandle::wait) watches: longer than a short job's round
/// trip through a process pool, also when the machine is in the slow mode the README's W1
/// figures show (40–50 µs).
pub(crate) const WATCH: Duration = Duration::from_micros(100);

/// Jobs skipped after a watch that missed.
const FIRST_SKIP: u32 = 32;
/// Jobs skipped, at most, after misses in a row.
const MOST_SKIP: u32 = 1024;

const SLOTS: usize = 64;

/// What the table holds of one function.
struct Slot {
    /// The function's address, or 0: which function the rest is about.
    key: AtomicUsize,
    /// How many of its jobs' handles are still to be skipped.
    skip: AtomicU32,
    /// How many to skip after the next miss.
    next_skip: AtomicU32,
}

/// A slot that holds no function.
const fn unseen() -> Slot {
    Slot {
        key: AtomicUsize::new(0),
        skip: AtomicU32::new(0),
        next_skip: AtomicU32::new(FIRST_SKIP),
    }
}

#[cfg(not(test))]
static TABLE: [Slot; SLOTS] = [const { unseen() }; SLOTS];

thread_local! {
    /// The job this thread submitted last, if it went straight to a worker: the
    /// address of its completion cell, and its function (a [`key_of`], once known; 0
    /// before); until its first poll asks about it.
    static LATEST: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    /// What [`few_tasks`] said on this thread, and for how many more asks it holds.
    static FEW: Cell<(bool, u32)> = const { Cell::new((false, 0)) };
}

/// Asks on one thread between two looks at its runtime's task count.
const RECOUNT: u32 = 64;

fn address<T>(cell: *const T) -> usize {
    cell.cast::<()>() as usize
}

/// This thread is submitting a job: no job it submitted before is to be watched, also when
/// this one is refused or fails before it is queued.
pub(crate) fn submitting() {
    LATEST.with(|latest| latest.set((0, 0)));
}

/// This thread has just submitted the job whose completion cell is `cell`, which went
/// `straight` to a worker (no job waited ahead of it, and the pool saw no reason it would
/// wait) or not.
pub(crate) fn submitted<T>(cell: &Arc<T>, straight: bool) {
    let cell = if straight {
        address(Arc::as_ptr(cell))
    } else {
        0
    };
    LATEST.with(|latest| latest.set((cell, 0)));
}

/// The job at `cell`, just submitted, runs `function`: what its first poll asks about.
pub(crate) fn of_function(cell: *const (), function: usize) {
    LATEST.with(|latest| {
        if latest.get().0 == address(cell) {
            latest.set((address(cell), function));
        }
    });
}

/// At the first poll of the job at `cell`: its function, if it is the job this thread
/// submitted last (and nothing since), it went straight to a worker, and its
/// function is known. A second ask says `None`.
pub(crate) fn first_poll(cell: *const ()) -> Option<usize> {
    LATEST.with(|latest| {
        let (last, function) = latest.get();
        if last != address(cell) || function == 0 {
            return None;
        }
        latest.set((0, 0));
        Some(function)
    })
}

/// The job at `cell` is not to be watched at its first poll (a blocking wait watches on
/// its own).
pub(crate) fn forget(cell: *const ()) {
    LATEST.with(|latest| {
        if latest.get().0 == address(cell) {
            latest.set((0, 0));
        }
    });
}

/// [`few_tasks`], looked at once every [`RECOUNT`] asks on this thread: a look clones the
/// runtime's handle, whose count every thread of the runtime shares.
pub(crate) fn few_tasks_lately() -> bool {
    FEW.with(|cached| {
        let (few, left) = cached.get();
        if left > 0 {
            cached.set((few, left - 1));
            return few;
        }
        let few = few_tasks();
        cached.set((few, RECOUNT - 1));
        few
    })
}

/// Whether a watch on this thread would keep no other task from running: on a tokio
/// multi-thread runtime with at most one live task (the watching one, or one beside the
/// `block_on` future that watches, which another worker thread runs). Not on a
/// current-thread runtime, whose one thread also runs the I/O and timer drivers and any
/// `LocalSet` (whose tasks the runtime's count leaves out), nor outside tokio, where
/// nothing says how many tasks wait.
fn few_tasks() -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        && runtime.metrics().num_alive_tasks() <= 1
}

/// Which functions to watch: the process's table, or in a test a table of its own.
pub(crate) struct Watch<'a> {
    slots: &'a [Slot; SLOTS],
}

/// The process's table.
#[cfg(not(test))]
pub(crate) fn table() -> Watch<'static> {
    Watch { slots: &TABLE }
}

/// In tests, a table per thread: tests run side by side, each on its thread, and one's
/// functions must not take another's slots.
#[cfg(test)]
pub(crate) fn table() -> Watch<'static> {
    thread_local! {
        static MINE: &'static [Slot; SLOTS] = Box::leak(Box::new([const { unseen() }; SLOTS]));
    }
    Watch {
        slots: MINE.with(|mine| *mine),
    }
}

/// The key of function `f`, for the table: its address (never 0).
pub(crate) fn key_of<A, R>(f: fn(A) -> R) -> usize {
    (f as usize).max(1)
}

impl Watch<'_> {
    fn slot(&self, key: usize) -> &Slot {
        // Functions are aligned to at least 16 bytes on the targets that matter; the bits
        // above spread them.
        &self.slots[(key >> 4) % SLOTS]
    }

    /// Whether the first poll of a job of `key` should watch for its answer. Called once
    /// per handle: it counts the skipped ones.
    pub(crate) fn should_watch(&self, key: usize) -> bool {
        let slot = self.slot(key);
        let left = slot.skip.load(Relaxed);
        if left > 0 {
            // Skipping, whichever function the slot is about: two functions that share
            // it skip together, so a long one never escapes its skips by alternating with
            // another.
            slot.skip.store(left - 1, Relaxed);
            return false;
        }
        if slot.key.load(Relaxed) != key {
            // Not seen, or its slot held another function, which is not skipping: try it.
            slot.next_skip.store(FIRST_SKIP, Relaxed);
            slot.key.store(key, Relaxed);
        }
        true
    }

    /// Whether the table holds `key`'s slot: a watch of it was asked about.
    #[cfg(test)]
    pub(crate) fn knows(&self, key: usize) -> bool {
        self.slot(key).key.load(Relaxed) == key
    }

    /// How many slots hold a function.
    #[cfg(test)]
    pub(crate) fn known(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.key.load(Relaxed) != 0)
            .count()
    }

    /// How many asks `key`'s slot will still skip.
    #[cfg(test)]
    pub(crate) fn skips(&self, key: usize) -> u32 {
        self.slot(key).skip.load(Relaxed)
    }

    /// What a watch of a job of `key` saw: the answer (`true`), or not within [`WATCH`].
    pub(crate) fn watched(&self, key: usize, saw_it: bool) {
        let slot = self.slot(key);
        if slot.key.load(Relaxed) != key {
            return;
        }
        if saw_it {
            slot.next_skip.store(FIRST_SKIP, Relaxed);
        } else {
            let skip = slot.next_skip.load(Relaxed).clamp(FIRST_SKIP, MOST_SKIP);
            slot.skip.store(skip, Relaxed);
            slot.next_skip.store((skip * 2).min(MOST_SKIP), Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
