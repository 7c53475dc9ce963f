//! Reading another process's memory (`process_vm_readv`, Linux's cross-memory attach): how
//! a large argument or result crosses between a pool and its worker in one copy, instead
//! of being written to their socket and read from it (two copies, and the socket's own
//! bookkeeping).
//!
//! The reader copies bytes the other process *lent*: it keeps them alive and unchanged
//! until the reader says it is done (see [`crate::wire::message::Lent`]). Nothing here
//! writes to another process, and what is read lands in this process's own buffer, so a
//! lender that breaks its word (frees or changes the bytes) costs the reader wrong bytes
//! or an error, never memory safety.

use std::io;

/// Appends to `into` the `len` bytes at address `addr` of process `pid`. On error `into`
/// keeps its length; it may have grown its capacity.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn read_lent(pid: u32, addr: u64, len: usize, into: &mut Vec<u8>) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("no such process id"))?;
    let start = into.len();
    into.reserve_exact(len);
    let mut done = 0;
    while done < len {
        let remote_at = usize::try_from(addr)
            .ok()
            .and_then(|a| a.checked_add(done))
            .ok_or_else(|| io::Error::other("a lent range past the end of memory"))?;
        let spare = &mut into.spare_capacity_mut()[done..len];
        let local = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        };
        let remote = libc::iovec {
            iov_base: remote_at as *mut libc::c_void,
            iov_len: spare.len(),
        };
        // SAFETY: the kernel writes at most `local.iov_len` bytes at `local.iov_base`,
        // which is the spare capacity of `into` (borrowed mutably here); the remote range
        // is only read, in the other process, and the kernel checks it.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(io::Error::other("the lent bytes ended early")),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    // SAFETY: the loop ran until the kernel had written `len` bytes in order from the
    // start of the spare capacity, so the first `start + len` bytes are initialized.
    unsafe { into.set_len(start + len) };
    Ok(())
}

/// Without cross-memory attach nothing is ever lent (the handshake's probe fails).
#[cfg(not(target_os = "linux"))]
pub(crate) fn read_lent(_: u32, _: u64, _: usize, _: &mut Vec<u8>) -> io::Result<()> {
    Err(io::Error::other(
        "reading another process's memory needs Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_reads_what_it_lends_itself() {
        let lent: Vec<u8> = (0..=255).cycle().take(3 << 20).collect();
        let mut into = vec![7, 8];
        let pid = std::process::id();
        read_lent(pid, lent.as_ptr() as u64, lent.len(), &mut into).unwrap();
        assert_eq!(&into[..2], [7, 8]);
        assert_eq!(&into[2..], &lent[..]);
    }

    #[test]
    fn an_unmapped_range_or_a_missing_process_is_an_error() {
        let mut into = vec![1];
        let pid = std::process::id();
        assert!(read_lent(pid, 8, 16, &mut into).is_err(), "page zero");
        assert!(read_lent(u32::MAX, 8, 16, &mut into).is_err());
        assert_eq!(into, [1], "nothing appended");
    }
}
