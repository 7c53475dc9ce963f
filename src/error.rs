//! Error types: [`JobError`] for one job, [`Error`] for a pool, [`SubmitError`] for a
//! rejected submission.

use std::fmt;

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
    },
    /// The job was cancelled (by [`JobHandle::cancel`](crate::JobHandle::cancel), by a
    /// shutdown that cancels queued jobs, or by dropping a `map` stream) before it finished.
    #[error("job was cancelled before it finished")]
    Cancelled,
    /// The worker process running the job died (abort, signal, `exit`, out of memory)
    /// before returning a result. The pool replaces the worker; resubmit if the job is
    /// safe to retry.
    #[error("worker process died while running the job ({exit}); the pool replaces it")]
    WorkerDied {
        /// How the worker ended.
        exit: ExitInfo,
    },
    /// The connection to the worker broke (a corrupt or oversized frame, an unexpected
    /// message). The worker was killed and replaced; resubmit if the job is safe to retry.
    #[error("lost the connection to the worker: {reason}")]
    Protocol {
        /// What went wrong on the connection.
        reason: String,
    },
    /// The job ran longer than its time limit
    /// ([`JobOptions::timeout`](crate::JobOptions::timeout) or the pool's default). On a
    /// process pool its worker was killed and replaced; on a thread pool the thread runs on
    /// until the function returns, and the result is discarded.
    #[error("job timed out after {0:?}")]
    TimedOut(std::time::Duration),
    /// The worker process running the job grew past the pool's memory limit and was killed
    /// and replaced. Raise
    /// [`ProcessPoolBuilder::max_worker_memory`](crate::ProcessPoolBuilder::max_worker_memory)
    /// or make the job use less memory.
    #[error(
        "worker exceeded the pool's memory limit of {limit} bytes (resident: {resident} \
         bytes) while running the job; raise ProcessPoolBuilder::max_worker_memory or use \
         less memory per job"
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
    /// The job's argument could not be serialized for the worker process. Check the
    /// argument type's `Serialize` implementation.
    #[error("could not encode the job's argument for the worker: {0}")]
    Encode(String),
    /// The worker's answer could not be deserialized into the result type, or the worker
    /// could not decode the argument. Check that `Serialize` and `Deserialize` agree.
    #[error("could not decode the job's data: {0}")]
    Decode(String),
    /// An argument or result is larger than the pool's maximum frame size. Raise
    /// [`ProcessPoolBuilder::max_frame_size`](crate::ProcessPoolBuilder::max_frame_size) or
    /// send less data per job.
    #[error(
        "message of {size} bytes exceeds the maximum frame size of {max} bytes: \
         raise ProcessPoolBuilder::max_frame_size or send less per job"
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

    /// `true` if the pool as a whole cannot run jobs (see [`JobError::PoolBroken`]).
    pub fn is_pool_broken(&self) -> bool {
        matches!(self, JobError::PoolBroken { .. })
    }

    /// The panic message, if the job panicked.
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            JobError::Panicked { message, .. } => Some(message),
            _ => None,
        }
    }

    pub(crate) fn from_panic_payload(payload: &(dyn std::any::Any + Send)) -> JobError {
        JobError::Panicked {
            message: panic_message(payload),
            location: None,
        }
    }
}

/// The text of a panic payload: the `&str` or `String` that `panic!` carries.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any> (a panic payload that is not a string)".to_owned()
    }
}

/// How a worker process ended: its exit code or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    code: Option<i32>,
    signal: Option<i32>,
}

impl ExitInfo {
    pub(crate) fn from_status(status: std::process::ExitStatus) -> ExitInfo {
        #[cfg(unix)]
        let signal = std::os::unix::process::ExitStatusExt::signal(&status);
        #[cfg(not(unix))]
        let signal = None;
        ExitInfo {
            code: status.code(),
            signal,
        }
    }

    pub(crate) fn unknown() -> ExitInfo {
        ExitInfo {
            code: None,
            signal: None,
        }
    }

    /// The exit code, if the process exited by itself (`exit`, or returning from `main`).
    pub fn code(&self) -> Option<i32> {
        self.code
    }

    /// The number of the signal that killed the process (Unix only), such as 9 for
    /// `SIGKILL` or 6 for `SIGABRT`.
    pub fn signal(&self) -> Option<i32> {
        self.signal
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(sig)) => match signal_name(sig) {
                Some(name) => write!(f, "killed by signal {sig} ({name})"),
                None => write!(f, "killed by signal {sig}"),
            },
            (None, None) => f.write_str("exit status unknown"),
        }
    }
}

fn signal_name(sig: i32) -> Option<&'static str> {
    #[cfg(unix)]
    {
        let name = match sig {
            libc::SIGABRT => "SIGABRT",
            libc::SIGBUS => "SIGBUS",
            libc::SIGFPE => "SIGFPE",
            libc::SIGILL => "SIGILL",
            libc::SIGINT => "SIGINT",
            libc::SIGKILL => "SIGKILL",
            libc::SIGPIPE => "SIGPIPE",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGTERM => "SIGTERM",
            _ => return None,
        };
        Some(name)
    }
    #[cfg(not(unix))]
    {
        let _ = sig;
        None
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
    /// The operating system refused a resource the pool needs (a thread, the private socket
    /// directory, the listening socket).
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
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// A submission the executor refused because it is shut down. It gives back the argument.
///
/// Returned by [`ExecutorExt::try_submit`](crate::ExecutorExt::try_submit), in the manner
/// of crossbeam-channel's `SendError<T>`.
#[derive(PartialEq, Eq, Clone, Copy)]
pub struct SubmitError<A>(pub A);

impl<A> SubmitError<A> {
    /// The argument that was not submitted.
    pub fn into_inner(self) -> A {
        self.0
    }
}

impl<A> fmt::Debug for SubmitError<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubmitError(..)")
    }
}

impl<A> fmt::Display for SubmitError<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the executor is shut down: submit jobs before calling shutdown")
    }
}

impl<A> std::error::Error for SubmitError<A> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_info_display_names_signals_and_codes() {
        let by_signal = ExitInfo {
            code: None,
            signal: Some(9),
        };
        assert_eq!(by_signal.to_string(), "killed by signal 9 (SIGKILL)");
        let by_code = ExitInfo {
            code: Some(3),
            signal: None,
        };
        assert_eq!(by_code.to_string(), "exit code 3");
        assert_eq!(ExitInfo::unknown().to_string(), "exit status unknown");
    }

    #[test]
    fn panic_display_includes_location() {
        let e = JobError::Panicked {
            message: "boom".into(),
            location: Some("src/x.rs:1:2".into()),
        };
        assert_eq!(e.to_string(), "job panicked: boom (at src/x.rs:1:2)");
        assert!(e.is_panic() && !e.is_cancelled());
    }

    #[test]
    fn panic_message_reads_str_and_string_payloads() {
        let a: Box<dyn std::any::Any + Send> = Box::new("static");
        let b: Box<dyn std::any::Any + Send> = Box::new(String::from("owned"));
        let c: Box<dyn std::any::Any + Send> = Box::new(42_u8);
        assert_eq!(panic_message(&*a), "static");
        assert_eq!(panic_message(&*b), "owned");
        assert!(panic_message(&*c).contains("not a string"));
    }
}
