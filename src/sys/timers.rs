//! The MPI thread's timers: a timer slack of 1 ns, so that its short naps end when due.

/// Asks the kernel to end the timed sleeps of the calling thread when they are due, rather
/// than up to 50 µs later (the default timer slack, which lets it batch wake-ups). For a
/// thread whose short naps decide a latency (the MPI thread's): on this project's VMs a
/// 2 µs sleep took 74–78 µs with the default slack and 20 µs with this. Best effort: an
/// error changes nothing.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn precise_timers() {
    // SAFETY: `prctl(PR_SET_TIMERSLACK, n)` takes integer arguments (passed as the
    // `unsigned long`s the kernel reads), touches no memory of this process, and changes
    // only how late the timers of this thread, and of threads it starts later, may fire.
    unsafe {
        libc::prctl(
            libc::PR_SET_TIMERSLACK,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
    }
}

/// Elsewhere timers keep the system's slack.
#[cfg(not(target_os = "linux"))]
pub(crate) fn precise_timers() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's timer slack, in nanoseconds.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn timer_slack() -> i32 {
        // SAFETY: `prctl(PR_GET_TIMERSLACK)` takes no pointer and touches no memory of this
        // process; it returns the slack.
        unsafe {
            libc::prctl(
                libc::PR_GET_TIMERSLACK,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn precise_timers_leave_the_calling_thread_a_slack_of_a_nanosecond_and_no_other() {
        let (before, after) = std::thread::spawn(|| {
            let before = timer_slack();
            precise_timers();
            (before, timer_slack())
        })
        .join()
        .expect("the thread");
        assert_ne!(before, 1, "the slack before");
        assert_eq!(after, 1);
        assert_eq!(timer_slack(), before, "another thread's slack changed");
    }
}
