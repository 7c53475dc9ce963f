//! How a worker ended ([`ExitInfo`]) and which worker it was ([`WorkerId`]): a local
//! process by its pid, or a rank of an MPI job.

use std::fmt;

/// Which worker ran a job: a process (by its pid), a rank of an MPI job, or a process on
/// a rank.
///
/// # Examples
///
/// ```
/// use procpool::{ExecutorExt, JobError, ProcessPoolExecutor};
///
/// fn abort(_: ()) {
///     std::process::abort()
/// }
///
/// # futures::executor::block_on(async {
/// let pool = ProcessPoolExecutor::builder().max_workers(1).build()?;
/// match pool.submit(abort, ()).await {
///     Err(JobError::WorkerDied { exit, .. }) => {
///         let worker = exit.worker().expect("a process pool knows its workers");
///         assert!(worker.pid().is_some());
///         assert_eq!(worker.rank(), None);
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), procpool::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerId {
    pid: Option<u32>,
    rank: Option<u32>,
}

impl WorkerId {
    /// A local worker process.
    pub(crate) fn process(pid: u32) -> WorkerId {
        WorkerId {
            pid: Some(pid),
            rank: None,
        }
    }

    /// A worker process on a rank of an MPI job.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn on_rank(pid: u32, rank: u32) -> WorkerId {
        WorkerId {
            pid: Some(pid),
            rank: Some(rank),
        }
    }

    /// A worker that is a rank of an MPI job.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn of_rank(rank: u32) -> WorkerId {
        WorkerId {
            pid: None,
            rank: Some(rank),
        }
    }

    /// The worker's process id, if it is a process this pool knows.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The MPI rank the worker is or lives on, if any.
    pub fn rank(&self) -> Option<u32> {
        self.rank
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.pid, self.rank) {
            (Some(pid), None) => write!(f, "process {pid}"),
            (Some(pid), Some(rank)) => write!(f, "process {pid} on rank {rank}"),
            (None, Some(rank)) => write!(f, "rank {rank}"),
            (None, None) => f.write_str("an unknown worker"),
        }
    }
}

/// How a worker ended: its exit code or the signal that killed it, and which worker it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    code: Option<i32>,
    signal: Option<i32>,
    worker: Option<WorkerId>,
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
            worker: None,
        }
    }

    pub(crate) fn unknown() -> ExitInfo {
        ExitInfo {
            code: None,
            signal: None,
            worker: None,
        }
    }

    /// The same ending, of `worker`.
    /// An exit with this code or signal, of an unknown worker.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn from_parts(code: Option<i32>, signal: Option<i32>) -> ExitInfo {
        ExitInfo {
            code,
            signal,
            worker: None,
        }
    }

    pub(crate) fn of(self, worker: WorkerId) -> ExitInfo {
        ExitInfo {
            worker: Some(worker),
            ..self
        }
    }

    /// The worker that ended, when known.
    pub fn worker(&self) -> Option<WorkerId> {
        self.worker
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_info_display_names_signals_and_codes() {
        let by_signal = ExitInfo {
            code: None,
            signal: Some(9),
            worker: None,
        };
        assert_eq!(by_signal.to_string(), "killed by signal 9 (SIGKILL)");
        let by_code = ExitInfo {
            code: Some(3),
            signal: None,
            worker: Some(WorkerId::process(7)),
        };
        assert_eq!(by_code.to_string(), "exit code 3");
        assert_eq!(ExitInfo::unknown().to_string(), "exit status unknown");
    }

    #[test]
    fn workers_say_where_they_ran() {
        assert_eq!(WorkerId::process(12).to_string(), "process 12");
        assert_eq!(WorkerId::of_rank(2).to_string(), "rank 2");
        let on_rank = WorkerId {
            rank: Some(2),
            ..WorkerId::process(12)
        };
        assert_eq!(on_rank.to_string(), "process 12 on rank 2");
        let exit = ExitInfo::unknown().of(WorkerId::of_rank(3));
        assert_eq!(exit.worker().and_then(|w| w.rank()), Some(3));
    }
}
