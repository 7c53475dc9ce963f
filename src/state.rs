//! Worker-local state: values a pool builds once per worker (a model, a lexicon, a
//! connection) and that jobs read by type, on threads and processes alike.
//!
//! The pools install a state with
//! [`ProcessPoolBuilder::worker_state`](crate::ProcessPoolBuilder::worker_state) and
//! [`ThreadPoolBuilder::worker_state`](crate::ThreadPoolBuilder::worker_state); a job
//! reaches it with [`with_worker_state`]. The state lives in the worker's own thread-local
//! storage: each worker process, and each thread of a thread pool, has its own value, built
//! once before its first job, so jobs never contend for a lock to read it.

use std::any::{Any, TypeId, type_name};
use std::cell::RefCell;
use std::rc::Rc;

thread_local! {
    static STATES: RefCell<Vec<(TypeId, Rc<dyn Any>)>> = const { RefCell::new(Vec::new()) };
}

/// Makes `value` this thread's worker state of type `S`, replacing any earlier one of the
/// same type.
///
/// The pools call this on each worker with what the builder's `worker_state` function
/// returns. Call it yourself to run job code outside a pool, on the current thread: a
/// sequential baseline, a unit test.
///
/// # Examples
///
/// ```
/// struct Greeting(&'static str);
///
/// procpool::install_worker_state(Greeting("hello"));
/// let len = procpool::with_worker_state(|g: &Greeting| g.0.len());
/// assert_eq!(len, 5);
/// ```
pub fn install_worker_state<S: 'static>(value: S) {
    let value: Rc<dyn Any> = Rc::new(value);
    STATES.with(|states| {
        let mut states = states.borrow_mut();
        let id = TypeId::of::<S>();
        match states.iter_mut().find(|(t, _)| *t == id) {
            Some(slot) => slot.1 = value,
            None => states.push((id, value)),
        }
    });
}

/// Calls `f` with this worker's state of type `S`, or returns `None` if there is none.
pub fn try_with_worker_state<S: 'static, T>(f: impl FnOnce(&S) -> T) -> Option<T> {
    // Clone the `Rc` out, so that `f` may itself read other states (or install one).
    let state = STATES.with(|states| {
        let id = TypeId::of::<S>();
        states
            .borrow()
            .iter()
            .find(|(t, _)| *t == id)
            .map(|(_, value)| value.clone())
    })?;
    let state = state
        .downcast_ref::<S>()
        .expect("procpool bug: worker state stored under the wrong TypeId");
    Some(f(state))
}

/// Calls `f` with this worker's state of type `S`: the value the pool's `worker_state`
/// function built on this worker before its first job.
///
/// # Panics
///
/// If this thread has no state of type `S` (the pool was built without
/// `worker_state::<S>`, or the code runs outside a pool without
/// [`install_worker_state`]). In a job, the panic becomes
/// [`JobError::Panicked`](crate::JobError::Panicked) naming the type.
///
/// # Examples
///
/// The same job code on both pools:
///
/// ```
/// use procpool::{ExecutorExt, ProcessPoolExecutor, ThreadPoolExecutor};
/// use std::collections::HashSet;
///
/// struct Stopwords(HashSet<&'static str>);
///
/// fn load() -> Stopwords {
///     Stopwords(["a", "the", "of"].into_iter().collect())
/// }
///
/// fn count_content_words(text: String) -> usize {
///     procpool::with_worker_state(|stop: &Stopwords| {
///         text.split_whitespace().filter(|w| !stop.0.contains(w)).count()
///     })
/// }
///
/// # futures::executor::block_on(async {
/// let threads = ThreadPoolExecutor::builder().max_workers(2).worker_state(load).build()?;
/// let processes = ProcessPoolExecutor::builder().max_workers(2).worker_state(load).build()?;
/// let text = "the art of the deal".to_string();
/// assert_eq!(threads.submit(count_content_words, text.clone()).await?, 2);
/// assert_eq!(processes.submit(count_content_words, text).await?, 2);
/// # Ok::<(), procpool::Error>(())
/// # }).unwrap();
/// ```
pub fn with_worker_state<S: 'static, T>(f: impl FnOnce(&S) -> T) -> T {
    match try_with_worker_state(f) {
        Some(value) => value,
        None => panic!(
            "no worker state of type `{}` on this thread: build the pool with \
             `.worker_state(...)` returning it, or call `procpool::install_worker_state` \
             to run this code outside a pool",
            type_name::<S>()
        ),
    }
}

/// Builds a state with `f` and installs it: the body of a `worker_state` initializer.
pub(crate) fn build_and_install<S: 'static>(f: fn() -> S) {
    install_worker_state(f());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_per_type_per_thread_and_replaceable() {
        install_worker_state(5_u32);
        install_worker_state(String::from("x"));
        install_worker_state(7_u32);
        assert_eq!(with_worker_state(|n: &u32| *n), 7);
        assert_eq!(with_worker_state(|s: &String| s.clone()), "x");
        let other = std::thread::spawn(|| try_with_worker_state(|n: &u32| *n))
            .join()
            .unwrap();
        assert_eq!(other, None, "another thread has its own states");
    }

    #[test]
    fn nested_reads_and_missing_state() {
        install_worker_state(1_u8);
        install_worker_state(2_u16);
        let sum = with_worker_state(|a: &u8| with_worker_state(|b: &u16| u16::from(*a) + b));
        assert_eq!(sum, 3);
        let missing = std::panic::catch_unwind(|| with_worker_state(|_: &i128| ()));
        let message = crate::error::panic_message(missing.unwrap_err());
        assert!(message.contains("i128"), "{message}");
    }
}
