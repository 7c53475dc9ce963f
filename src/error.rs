//! Error types: [`JobError`] for one job, [`Error`] for a pool, [`SubmitError`] for a
//! rejected submission, and [`Cause`], an underlying error kept for `source()`.
//!
//! The messages are shared by every pool: they name settings (`max_frame_size`), not the
//! builder of one backend.

use crate::exit::ExitInfo;
use std::fmt;
use std::sync::Arc;

/// Why a job did not produce its result.
///
/// Every submitted job ends exactly once, with its result or with one of these. The
/// `is_*` predicates let callers branch without matching on variants, and the enum is
/// `#[non_exhaustive]` so that later versions can add causes.
///
/// # Examples
///
/// ```
/// use procpool::{ExecutorExt, JobError, ThreadPoolExecutor};
///
/// fn boom(_: u32) -> u32 {
///     panic!("no luck")
/// }
///
/// # futures::executor::block_on(async {
/// let pool = ThreadPoolExecutor::new(1)?;
/// let err: JobError = pool.submit(boom, 1).await.unwrap_err();
/// assert!(err.is_panic());
/// assert_eq!(err.panic_message(), Some("no luck"));
/// # Ok::<(), procpool::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The job's function panicked. The worker (thread or process) survived and keeps
    /// serving. `location` is `file:line:column` where the process pool captured it; the
    /// thread pool cannot capture it without replacing the application's panic hook, so
    /// there it is `None`.
    #[error("job panicked: {message}{}", at(location))]
    Panicked {
        /// The panic message (the `&str` or `String` payload; a placeholder otherwise).
        message: String,
        /// Where the panic happened, when known.
        location: Option<String>,
        /// The worker's backtrace of the panic, when the process pool's worker captured one:
        /// with `RUST_BACKTRACE` (or `RUST_LIB_BACKTRACE`) set, as for any Rust program.
        /// Not in the error's text (it is long); read it with
        /// [`backtrace`](JobError::backtrace).
        backtrace: Option<String>,
    },
    /// The job was cancelled (by [`JobHandle::cancel`](crate::JobHandle::cancel), by a
    /// shutdown that cancels queued jobs, or by dropping a `map` stream) before it finished.
    #[error("job was cancelled before it finished")]
    Cancelled,
    /// The worker process running the job died (abort, signal, `exit`, out of memory)
    /// before returning a result. The pool replaces the worker. A job safe to run again
    /// can be retried by the pool itself ([`JobOptions::retries`](crate::JobOptions::retries));
    /// this error then ends its last attempt.
    #[error("worker process died while running the job ({exit}){}; the pool replaces it", tries(*attempts))]
    WorkerDied {
        /// How the worker of the last attempt ended.
        exit: ExitInfo,
        /// How many times the job was run: 1, or more with retries.
        attempts: u32,
    },
    /// The connection to the worker broke (a corrupt or oversized frame, an unexpected
    /// message). The worker was killed and replaced; resubmit if the job is safe to retry.
    #[error("lost the connection to the worker: {reason}")]
    Protocol {
        /// What went wrong on the connection.
        reason: String,
        /// The underlying error, when there is one (an I/O error, a message that does
        /// not decode); also [`source()`](std::error::Error::source).
        #[source]
        cause: Option<Cause>,
    },
    /// The job ran longer than its time limit
    /// ([`JobOptions::timeout`](crate::JobOptions::timeout) or the pool's default). On a
    /// process pool its worker was killed and replaced; on a thread pool the thread runs on
    /// until the function returns, and the result is discarded.
    #[error("job timed out after {0:?}")]
    TimedOut(std::time::Duration),
    /// The worker process running the job grew past the pool's memory limit and was killed
    /// and replaced. Raise the pool's `max_worker_memory` (for instance
    /// [`ProcessPoolBuilder::max_worker_memory`](crate::ProcessPoolBuilder::max_worker_memory))
    /// or make the job use less memory.
    #[error(
        "worker exceeded the pool's memory limit of {limit} bytes (resident: {resident} \
         bytes) while running the job; raise the pool's max_worker_memory or use less \
         memory per job"
    )]
    MemoryLimit {
        /// The configured limit, in bytes.
        limit: u64,
        /// The worker's resident memory when it was killed, in bytes.
        resident: u64,
    },
    /// The executor was shut down (or dropped) before the job could run, or the job was
    /// still running when a shutdown's time ran out. Submit jobs before calling shutdown.
    #[error("the executor is shut down: submit jobs before calling shutdown")]
    ShutDown,
    /// The pool was full when the job was submitted with
    /// [`submit`](crate::ExecutorExt::submit): it has a bound on waiting jobs
    /// ([`ProcessPoolBuilder::max_queued`](crate::ProcessPoolBuilder::max_queued)) and that
    /// many were waiting. The job never ran. Use
    /// [`try_submit`](crate::ExecutorExt::try_submit) to get the argument back, or
    /// [`submit_when_ready`](crate::ExecutorExt::submit_when_ready) to wait for room.
    #[error(
        "the pool's queue is full (max_queued): shed the job, or wait for room with \
         submit_when_ready or reserve"
    )]
    QueueFull,
    /// The job's argument could not be serialized for the worker process. Check the
    /// argument type's `Serialize` implementation: the message names the type that failed
    /// and gives what its code said (the text of an `S::Error::custom(..)` it returned,
    /// or of its panic).
    #[error("could not encode the job's argument for the worker: {0}")]
    Encode(String),
    /// The worker's answer could not be deserialized into the result type, or the worker
    /// could not decode the argument. Check that `Serialize` and `Deserialize` agree.
    #[error("could not decode the job's data: {0}")]
    Decode(String),
    /// An argument or result is larger than the pool's maximum frame size. Raise the
    /// pool's `max_frame_size` (for instance
    /// [`ProcessPoolBuilder::max_frame_size`](crate::ProcessPoolBuilder::max_frame_size)) or
    /// send less data per job.
    #[error(
        "message of {size} bytes exceeds the maximum frame size of {max} bytes: \
         raise the pool's max_frame_size or send less per job"
    )]
    TooLarge {
        /// Size of the encoded message, in bytes.
        size: usize,
        /// The configured maximum, in bytes.
        max: usize,
    },
    /// The function does not live in the main executable image (it comes from a
    /// dynamically loaded library), so a worker process cannot find it. Use a function
    /// compiled into the program, or the thread pool.
    #[error("function cannot be shipped to a worker process: {reason}")]
    Unshippable {
        /// Why the function was refused.
        reason: String,
    },
    /// The pool cannot run jobs at all: its workers fail to start, its initializer failed,
    /// or a worker reached the program's `main` instead of the worker loop. The reason
    /// says which and how to fix it.
    #[error("the pool cannot run jobs: {reason}")]
    PoolBroken {
        /// What broke the pool, and what to do.
        reason: String,
    },
}

fn tries(attempts: u32) -> String {
    if attempts > 1 {
        format!(" on each of {attempts} attempts")
    } else {
        String::new()
    }
}

fn at(location: &Option<String>) -> String {
    match location {
        Some(loc) => format!(" (at {loc})"),
        None => String::new(),
    }
}

impl JobError {
    /// `true` if the job's function panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, JobError::Panicked { .. })
    }

    /// `true` if the job was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, JobError::Cancelled)
    }

    /// `true` if the worker process running the job died.
    pub fn is_worker_died(&self) -> bool {
        matches!(self, JobError::WorkerDied { .. })
    }

    /// `true` if the job ran past its time limit.
    pub fn is_timeout(&self) -> bool {
        matches!(self, JobError::TimedOut(_))
    }

    /// `true` if the job's worker was killed for exceeding the pool's memory limit.
    pub fn is_memory_limit(&self) -> bool {
        matches!(self, JobError::MemoryLimit { .. })
    }

    /// `true` if the job did not run (or did not finish) because the executor shut down.
    pub fn is_shutdown(&self) -> bool {
        matches!(self, JobError::ShutDown)
    }

    /// `true` if the job was refused because the pool's queue was full (see
    /// [`JobError::QueueFull`]).
    pub fn is_queue_full(&self) -> bool {
        matches!(self, JobError::QueueFull)
    }

    /// `true` if the pool as a whole cannot run jobs (see [`JobError::PoolBroken`]).
    pub fn is_pool_broken(&self) -> bool {
        matches!(self, JobError::PoolBroken { .. })
    }

    /// `true` if the connection to the job's worker broke (see [`JobError::Protocol`]).
    pub fn is_protocol(&self) -> bool {
        matches!(self, JobError::Protocol { .. })
    }

    /// `true` if the job's argument or result could not be serialized (see
    /// [`JobError::Encode`]).
    pub fn is_encode(&self) -> bool {
        matches!(self, JobError::Encode(_))
    }

    /// `true` if the job's data could not be deserialized (see [`JobError::Decode`]).
    pub fn is_decode(&self) -> bool {
        matches!(self, JobError::Decode(_))
    }

    /// `true` if an argument or result exceeded the pool's maximum frame size (see
    /// [`JobError::TooLarge`]).
    pub fn is_too_large(&self) -> bool {
        matches!(self, JobError::TooLarge { .. })
    }

    /// `true` if the job's function cannot be shipped to a worker (see
    /// [`JobError::Unshippable`]).
    pub fn is_unshippable(&self) -> bool {
        matches!(self, JobError::Unshippable { .. })
    }

    /// The panic message, if the job panicked.
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            JobError::Panicked { message, .. } => Some(message),
            _ => None,
        }
    }

    /// The worker's backtrace of the job's panic, if it captured one (see
    /// [`JobError::Panicked`]).
    pub fn backtrace(&self) -> Option<&str> {
        match self {
            JobError::Panicked { backtrace, .. } => backtrace.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn from_panic_payload(payload: Box<dyn std::any::Any + Send>) -> JobError {
        JobError::Panicked {
            message: panic_message(payload),
            location: None,
            backtrace: None,
        }
    }
}

/// The text of a panic payload (the `&str` or `String` that `panic!` carries), which it
/// drops ([`drop_payload`]).
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any> (a panic payload that is not a string)".to_owned()
    };
    drop_payload(payload);
    message
}

/// Drops a panic payload whose `Drop` may itself panic (`std::panic::panic_any` takes
/// any value): that second panic is caught, and its own payload leaked rather than
/// dropped, as tokio does, so that it cannot end the thread that caught the first.
pub(crate) fn drop_payload(payload: Box<dyn std::any::Any + Send>) {
    if let Err(again) =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)))
    {
        std::mem::forget(again);
    }
}

/// A pool-level error: building a pool failed, or a job failed and was propagated with `?`.
///
/// `From<JobError>` lets `async fn main() -> Result<(), procpool::Error>` use `?` on job
/// results and on `build()` alike.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A job failed; see [`JobError`].
    #[error(transparent)]
    Job(#[from] JobError),
    /// A builder was given a value it cannot use; the message names the setter.
    #[error("invalid pool configuration: {0}")]
    Config(String),
    /// The operating system refused a resource the pool needs (a thread, a runtime, file
    /// descriptors).
    #[error("could not set up the pool: {context}")]
    Io {
        /// What the pool was doing.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// This process is a procpool worker, but it reached the program's `main` instead of
    /// the worker loop, and `main` tried to build a process pool. Keep the default
    /// `auto-init` feature, or call [`procpool::init()`](crate::init) first thing in `main`.
    #[error(
        "this process was started as a procpool worker but reached main(): keep the \
         `auto-init` feature enabled, or call procpool::init() first thing in main"
    )]
    EntryHookMissing,
    /// The ranks of an MPI job cannot serve as a pool (feature `mpi`): fewer than two
    /// ranks, MPI initialized before, or a rank that runs another build of the program
    /// (the message names both). Start every rank from the same build, with at least two
    /// ranks (`mpirun -n 3 ...`).
    #[error("the MPI job cannot serve as a pool: {0}")]
    Cluster(String),
    /// A shared array could not be created; see [`ShareError`].
    #[error(transparent)]
    Share(#[from] ShareError),
}

/// A shared array ([`SharedSlice`](crate::SharedSlice), [`SharedBuffer`](crate::SharedBuffer))
/// could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShareError {
    /// This platform has no `memfd` (shared arrays need Linux): pass the data in the jobs'
    /// arguments instead.
    #[error(
        "shared arrays need Linux (memfd), which this platform is not: pass the data in \
         the jobs' arguments instead"
    )]
    Unsupported,
    /// The array's length in bytes does not fit in memory's address range.
    #[error("a shared array of {len} elements is larger than this machine can address")]
    TooLarge {
        /// The length asked for, in elements.
        len: usize,
    },
    /// The system refused a new segment of this size: out of memory (or of the space of
    /// `/dev/shm`'s filesystem, which memfds count against), or of file descriptors
    /// (raise `ulimit -n`).
    #[error("could not create a shared segment of {bytes} bytes: {source}")]
    Create {
        /// The segment's size.
        bytes: usize,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// A submission the executor refused: it is full, or shut down. It gives back the argument.
///
/// Returned by [`ExecutorExt::try_submit`](crate::ExecutorExt::try_submit) and
/// [`ExecutorExt::submit_when_ready`](crate::ExecutorExt::submit_when_ready), in the manner
/// of tokio's `mpsc::error::TrySendError<T>`.
///
/// # Examples
///
/// ```
/// use procpool::{Executor, ExecutorExt, SubmitError, ThreadPoolExecutor};
///
/// let pool = ThreadPoolExecutor::new(1)?;
/// pool.begin_shutdown(false);
/// let refused = pool.try_submit(|x: u32| x, 7).unwrap_err();
/// assert!(matches!(refused, SubmitError::ShutDown(7)));
/// assert!(refused.is_shut_down() && !refused.is_full());
/// assert_eq!(refused.into_inner(), 7);
/// # Ok::<(), procpool::Error>(())
/// ```
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum SubmitError<A> {
    /// The pool has a bound on waiting jobs
    /// ([`ProcessPoolBuilder::max_queued`](crate::ProcessPoolBuilder::max_queued)) and it is
    /// reached: shed the work (a service answers 503), or wait for room with
    /// [`submit_when_ready`](crate::ExecutorExt::submit_when_ready).
    Full(A),
    /// A shutdown has begun: the pool takes no more jobs.
    ShutDown(A),
}

impl<A> SubmitError<A> {
    /// The argument that was not submitted.
    pub fn into_inner(self) -> A {
        match self {
            SubmitError::Full(arg) | SubmitError::ShutDown(arg) => arg,
        }
    }

    /// `true` if the pool was full (it may take the job later).
    pub fn is_full(&self) -> bool {
        matches!(self, SubmitError::Full(_))
    }

    /// `true` if the pool is shut down (it will never take the job).
    pub fn is_shut_down(&self) -> bool {
        matches!(self, SubmitError::ShutDown(_))
    }
}

impl<A> fmt::Debug for SubmitError<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Full(_) => f.write_str("Full(..)"),
            SubmitError::ShutDown(_) => f.write_str("ShutDown(..)"),
        }
    }
}

impl<A> fmt::Display for SubmitError<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Full(_) => f.write_str(
                "the pool's queue is full (max_queued): shed the job, or wait for room with \
                 submit_when_ready or reserve",
            ),
            SubmitError::ShutDown(_) => {
                f.write_str("the executor is shut down: submit jobs before calling shutdown")
            }
        }
    }
}

impl<A> std::error::Error for SubmitError<A> {}

/// The error underneath a [`JobError`], kept so that [`source()`](std::error::Error::source)
/// chains reach it (an I/O error on a worker's connection, say).
///
/// It is opaque: read it through its `Display` and its own `source()`. Two causes are equal
/// when their messages are.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    pub(crate) fn new(error: impl std::error::Error + Send + Sync + 'static) -> Cause {
        Cause(Arc::new(error))
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

/// `error` and its chain of sources, as one line (`what: why: why`), for logs and for
/// messages that cross a process boundary.
pub(crate) fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protocol_error_keeps_its_cause() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let err = JobError::Protocol {
            reason: "writing to the worker failed".into(),
            cause: Some(Cause::new(io)),
        };
        assert!(err.is_protocol());
        assert_eq!(
            err.source().map(|s| s.to_string()).as_deref(),
            Some("reset by peer")
        );
        assert_eq!(
            report(&err),
            "lost the connection to the worker: writing to the worker failed: reset by peer"
        );
        assert_eq!(err.clone(), err, "equal to itself through its cause");
    }

    #[test]
    fn every_variant_has_its_predicate() {
        type Predicate = fn(&JobError) -> bool;
        let cases: Vec<(JobError, Predicate)> = vec![
            (
                JobError::Panicked {
                    message: "p".into(),
                    location: None,
                    backtrace: None,
                },
                JobError::is_panic,
            ),
            (JobError::Cancelled, JobError::is_cancelled),
            (
                JobError::WorkerDied {
                    exit: ExitInfo::unknown(),
                    attempts: 1,
                },
                JobError::is_worker_died,
            ),
            (
                JobError::Protocol {
                    reason: "r".into(),
                    cause: None,
                },
                JobError::is_protocol,
            ),
            (
                JobError::TimedOut(std::time::Duration::ZERO),
                JobError::is_timeout,
            ),
            (
                JobError::MemoryLimit {
                    limit: 1,
                    resident: 2,
                },
                JobError::is_memory_limit,
            ),
            (JobError::ShutDown, JobError::is_shutdown),
            (JobError::QueueFull, JobError::is_queue_full),
            (JobError::Encode("e".into()), JobError::is_encode),
            (JobError::Decode("d".into()), JobError::is_decode),
            (
                JobError::TooLarge { size: 2, max: 1 },
                JobError::is_too_large,
            ),
            (
                JobError::Unshippable { reason: "u".into() },
                JobError::is_unshippable,
            ),
            (
                JobError::PoolBroken { reason: "b".into() },
                JobError::is_pool_broken,
            ),
        ];
        for (i, (error, _)) in cases.iter().enumerate() {
            for (j, (_, predicate)) in cases.iter().enumerate() {
                assert_eq!(predicate(error), i == j, "{error:?}, predicate {j}");
            }
        }
    }

    #[test]
    fn panic_display_includes_location() {
        let e = JobError::Panicked {
            message: "boom".into(),
            location: Some("src/x.rs:1:2".into()),
            backtrace: None,
        };
        assert_eq!(e.to_string(), "job panicked: boom (at src/x.rs:1:2)");
        assert!(e.is_panic() && !e.is_cancelled());
    }

    #[test]
    fn panic_message_reads_str_and_string_payloads() {
        let a: Box<dyn std::any::Any + Send> = Box::new("static");
        let b: Box<dyn std::any::Any + Send> = Box::new(String::from("owned"));
        let c: Box<dyn std::any::Any + Send> = Box::new(42_u8);
        assert_eq!(panic_message(a), "static");
        assert_eq!(panic_message(b), "owned");
        assert!(panic_message(c).contains("not a string"));
    }
}
