//! The operating-system calls a worker makes as it starts: signal dispositions, the
//! parent-death signal, and removing the worker variable from its environment. Each
//! function that needs `unsafe` allows it for itself alone.

/// Makes writes to a closed socket fail with `EPIPE` instead of killing the worker. Rust's
/// `main` does this for ordinary programs; a worker entered before `main` must do it itself.
#[allow(unsafe_code)]
pub(crate) fn ignore_sigpipe() {
    // SAFETY: `signal` with `SIG_IGN` installs no handler code; it only changes the
    // disposition of SIGPIPE, which this worker process owns.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Asks the kernel to SIGKILL this worker when the thread that spawned it (the pool's
/// supervisor) dies. Returns `false` if the parent is not `expected_parent` any more (it
/// died between fork and this call, and the worker was re-parented).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(expected_parent: u32) -> bool {
    // SAFETY: `prctl(PR_SET_PDEATHSIG, sig)` takes an integer argument and touches no
    // memory of this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    }
    std::os::unix::process::parent_id() == expected_parent
}

/// Without a parent-death signal, only checks that the parent is `expected_parent`.
#[cfg(not(target_os = "linux"))]
pub(crate) fn die_with_parent(expected_parent: u32) -> bool {
    std::os::unix::process::parent_id() == expected_parent
}

/// Sends SIGKILL to process group `group`: a worker (its leader, started in a group of its
/// own) and the processes its jobs started that stayed in it.
///
/// The caller must know that the group's leader has not been reaped yet, so that `group`
/// still names that group and no other: a process's id is not reused while it is
/// unreaped, nor while its group has members.
#[allow(unsafe_code)]
pub(crate) fn kill_group(group: u32) {
    let Ok(group) = libc::pid_t::try_from(group) else {
        return;
    };
    if group <= 1 {
        return; // never every process, nor init's group
    }
    // SAFETY: `kill` takes integers and touches no memory of this process.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
}

/// Whether this process runs one thread only: `Some` where that can be told (Linux).
fn is_single_threaded() -> Option<bool> {
    // Every thread of the process has an entry in /proc/self/task.
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(tasks.take(2).count() == 1)
}

/// Removes `name` from this process's environment, so that the programs it starts do not
/// inherit it, if that can be done soundly: when this process runs one thread only.
/// `before_main` says the caller is a static constructor, which runs before `main`, where
/// a process has one thread unless another constructor started one (checked too where it
/// can be). Returns whether it removed the variable.
///
/// `std::env::remove_var` races with any other thread reading the environment (glibc's
/// `getenv` is not synchronized with it). With a single thread there is no other thread,
/// and none appears during the call: only this thread could start one.
#[allow(unsafe_code)]
pub(crate) fn remove_env_if_alone(name: &str, before_main: bool) -> bool {
    if !is_single_threaded().unwrap_or(before_main) {
        return false;
    }
    // SAFETY: this process has one thread, so nothing can read or write the environment
    // concurrently, and this thread starts no other before the call returns. Where threads
    // are counted (Linux) that was checked just above; elsewhere it rests on the caller
    // being a static constructor, before `main` and before any thread a program starts
    // (another crate's constructor could start one: the removal then races with it, as
    // `std::env::remove_var` in such a constructor always would).
    unsafe { std::env::remove_var(name) };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_binary_runs_several_threads() {
        // The test harness runs tests on threads of their own: the environment must be left
        // alone here.
        let helper =
            std::thread::spawn(|| std::thread::park_timeout(std::time::Duration::from_secs(1)));
        if cfg!(target_os = "linux") {
            assert_eq!(is_single_threaded(), Some(false));
        }
        assert!(!remove_env_if_alone("PATH", false));
        assert!(std::env::var_os("PATH").is_some());
        helper.thread().unpark();
        helper.join().unwrap();
    }
}
