//! The crate's only `unsafe` code: shipping function pointers between processes that run
//! the same executable image, and the few operating-system calls a worker makes at start.
//!
//! # How a function travels
//!
//! A job's function is a plain `fn(A) -> R`. The parent cannot send the pointer itself (ASLR
//! places the image at a different address in each process), so it sends two **offsets
//! from [`anchor`]**, a function of this crate: the offset of the user's function and the
//! offset of a monomorphized trampoline (`single::<A, R>`, `chunk::<A, R>` or `init`) that
//! knows `A` and `R`. The worker adds its own anchor address back and calls the trampoline
//! through the erased signature [`Trampoline`]; the trampoline turns the user function's
//! address back into `fn(A) -> R`.
//!
//! # The invariant
//!
//! Both transmutes below are sound only if **the worker runs the very same image as the
//! parent that computed the offsets**, and the offsets were computed by [`Target::single`],
//! [`Target::chunk`], [`Target::initializer`] or [`Target::state`] for the same `(A, R)` the trampoline is
//! instantiated with. The second half holds by construction: those constructors are the
//! only way to make a [`Target`] in the parent, and they pair each trampoline with a
//! function of the matching type. The first half is checked by the worker itself in
//! [`VerifiedParent::verify`] (the parent's executable identity and probe offset must equal
//! the worker's), and [`run_shipped`] cannot be called without that proof. The worker only
//! takes targets from the parent that spawned it, over a socket in the parent's private
//! directory whose path the parent handed down in the environment.

use crate::job::{ImageId, Outcome};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The fixed point every shipped address is measured from. `#[inline(never)]` and a body
/// that cannot be merged with another function keep its address unique.
#[inline(never)]
fn anchor() -> u64 {
    std::hint::black_box(0x7072_6f63_706f_6f6c) // "procpool"
}

/// A second fixed function whose offset from [`anchor`] both sides compare during the
/// handshake: equal offsets mean the same code layout.
#[inline(never)]
fn probe() -> u64 {
    std::hint::black_box(0x6f66_6673_6574_7321)
}

fn anchor_addr() -> usize {
    anchor as fn() -> u64 as usize
}

fn offset_of(addr: usize) -> i64 {
    addr.wrapping_sub(anchor_addr()) as i64
}

fn resolve(offset: i64) -> usize {
    anchor_addr().wrapping_add(offset as usize)
}

/// The offset of [`probe`] from [`anchor`] in this process.
pub(crate) fn probe_offset() -> i64 {
    offset_of(probe as fn() -> u64 as usize)
}

/// Address of the anchor, for locating the main image in the memory map.
pub(crate) fn anchor_address() -> usize {
    anchor_addr()
}

/// The erased signature of every trampoline: the user function's address, the encoded
/// input, and a buffer for the encoded output.
type Trampoline = unsafe fn(usize, &mut Vec<u8>, &mut Vec<u8>) -> Outcome;

/// What a worker needs to call one function: two offsets from [`anchor`].
///
/// Only [`Target::single`], [`Target::chunk`], [`Target::initializer`] and [`Target::state`]
/// create one in the parent; the worker receives them over the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Target {
    trampoline: i64,
    function: i64,
}

impl Target {
    /// The target that calls `f` on one decoded argument.
    pub(crate) fn single<A, R>(f: fn(A) -> R) -> Target
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
    {
        Target {
            trampoline: offset_of(single::<A, R> as Trampoline as usize),
            function: offset_of(f as usize),
        }
    }

    /// The target that calls `f` on each item of a decoded `Vec<A>`.
    pub(crate) fn chunk<A, R>(f: fn(A) -> R) -> Target
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
    {
        Target {
            trampoline: offset_of(chunk::<A, R> as Trampoline as usize),
            function: offset_of(f as usize),
        }
    }

    /// The target that calls a worker initializer `f()`.
    pub(crate) fn initializer(f: fn()) -> Target {
        Target {
            trampoline: offset_of(init as Trampoline as usize),
            function: offset_of(f as usize),
        }
    }

    /// The target that builds a worker-local state with `f()` and installs it.
    pub(crate) fn state<S: 'static>(f: fn() -> S) -> Target {
        Target {
            trampoline: offset_of(state::<S> as Trampoline as usize),
            function: offset_of(f as usize),
        }
    }

    /// The absolute addresses of the trampoline and the function in this process.
    pub(crate) fn addresses(&self) -> [usize; 2] {
        [resolve(self.trampoline), resolve(self.function)]
    }
}

/// # Safety
///
/// `f` must be the address of a `fn(A) -> R` in this image (see the module's invariant).
unsafe fn single<A, R>(f: usize, input: &mut Vec<u8>, out: &mut Vec<u8>) -> Outcome
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    // SAFETY: by this function's contract `f` is the address of a `fn(A) -> R` of this
    // image; function pointers and `usize` have the same size on every supported target.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(f) };
    crate::job::run_single(f, input, out)
}

/// # Safety
///
/// `f` must be the address of a `fn(A) -> R` in this image (see the module's invariant).
#[expect(clippy::ptr_arg, reason = "the signature is the shared `Trampoline`")]
unsafe fn chunk<A, R>(f: usize, input: &mut Vec<u8>, out: &mut Vec<u8>) -> Outcome
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    // SAFETY: as in `single`: `f` is the address of a `fn(A) -> R` of this image.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(f) };
    crate::job::run_chunk(f, &input[..], out)
}

/// # Safety
///
/// `f` must be the address of a `fn()` in this image (see the module's invariant).
unsafe fn init(f: usize, _input: &mut Vec<u8>, _out: &mut Vec<u8>) -> Outcome {
    // SAFETY: `f` is the address of a `fn()` of this image, paired with this trampoline by
    // `Target::initializer`.
    let f = unsafe { std::mem::transmute::<usize, fn()>(f) };
    crate::job::run_initializer(f)
}

/// # Safety
///
/// `f` must be the address of a `fn() -> S` in this image (see the module's invariant).
unsafe fn state<S: 'static>(f: usize, _input: &mut Vec<u8>, _out: &mut Vec<u8>) -> Outcome {
    // SAFETY: `f` is the address of a `fn() -> S` of this image, paired with this
    // trampoline by `Target::state::<S>`.
    let f = unsafe { std::mem::transmute::<usize, fn() -> S>(f) };
    crate::job::run_initializer(move || crate::state::build_and_install(f))
}

/// Proof that the parent runs the same executable image as this worker.
///
/// The only constructor is [`VerifiedParent::verify`], which compares the identity and
/// code layout the parent reports with this process's own.
pub(crate) struct VerifiedParent(());

impl VerifiedParent {
    /// Checks that the parent's executable identity and probe offset equal this process's.
    pub(crate) fn verify(parent_image: &ImageId, parent_probe: i64) -> Result<Self, String> {
        let own = ImageId::current().map_err(|e| format!("cannot identify own image: {e}"))?;
        if own != *parent_image {
            return Err(format!(
                "parent runs a different executable ({parent_image:?}, worker has {own:?})"
            ));
        }
        if parent_probe != probe_offset() {
            return Err(format!(
                "parent's code layout differs (probe offset {parent_probe}, worker has {})",
                probe_offset()
            ));
        }
        Ok(VerifiedParent(()))
    }
}

/// Calls the function a [`Target`] names, on `input`, writing the encoded result to `out`.
pub(crate) fn run_shipped(
    _proof: &VerifiedParent,
    target: Target,
    input: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Outcome {
    let [trampoline, function] = target.addresses();
    // SAFETY: `_proof` shows the parent runs this same image, so the offsets it computed
    // with `Target::{single, chunk, initializer, state}` land on the same trampoline and function
    // here, and those constructors pair each trampoline with a function of its type.
    let trampoline = unsafe { std::mem::transmute::<usize, Trampoline>(trampoline) };
    // SAFETY: the trampoline's contract (`function` is a function of the type it expects)
    // is the pairing described above.
    unsafe { trampoline(function, input, out) }
}

/// Makes writes to a closed socket fail with `EPIPE` instead of killing the worker. Rust's
/// `main` does this for ordinary programs; a worker entered before `main` must do it itself.
#[cfg(unix)]
pub(crate) fn ignore_sigpipe() {
    // SAFETY: `signal` with `SIG_IGN` installs no handler code; it only changes the
    // disposition of SIGPIPE, which this worker process owns.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Asks the kernel to SIGKILL this worker when the thread that spawned it (the pool's
/// supervisor) dies, and exits at once if the parent is already gone. Returns `false` if
/// the parent is not `expected_parent` any more.
#[cfg(target_os = "linux")]
pub(crate) fn die_with_parent(expected_parent: u32) -> bool {
    // SAFETY: `prctl(PR_SET_PDEATHSIG, sig)` takes an integer argument and touches no
    // memory of this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    }
    // The parent may have died between fork and prctl: then we were re-parented.
    std::os::unix::process::parent_id() == expected_parent
}

#[cfg(all(unix, not(target_os = "linux")))]
pub(crate) fn die_with_parent(expected_parent: u32) -> bool {
    std::os::unix::process::parent_id() == expected_parent
}

/// The automatic entry hook: a static constructor that runs before `main` and turns a
/// process started as a worker into one, so that no user code runs in it.
#[cfg(all(unix, feature = "auto-init"))]
#[ctor::ctor]
unsafe fn procpool_enter_worker() {
    if let Some(spec) = crate::process::entry::take_spec() {
        // SAFETY: static constructors run before `main`, while the process has a single
        // thread, so nothing reads the environment concurrently. Removing the variable
        // keeps programs that a job starts from becoming workers themselves.
        unsafe { std::env::remove_var(crate::process::entry::WORKER_ENV) };
        crate::process::worker::run(spec);
    }
}

/// A reference to the entry hook, so that linkers keep the object file that holds it.
#[cfg(all(unix, feature = "auto-init"))]
pub(crate) fn entry_hook_address() -> usize {
    procpool_enter_worker as unsafe fn() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u32) -> u32 {
        x * 2
    }

    #[test]
    fn targets_resolve_to_their_functions() {
        let t = Target::single(double);
        let [tramp, f] = t.addresses();
        assert_eq!(f, double as fn(u32) -> u32 as usize);
        assert_eq!(tramp, single::<u32, u32> as Trampoline as usize);
    }

    #[test]
    fn shipped_call_round_trips_in_process() {
        let image = ImageId::current().unwrap();
        let proof = VerifiedParent::verify(&image, probe_offset()).unwrap();
        let mut input = postcard::to_allocvec(&21_u32).unwrap();
        let mut out = Vec::new();
        let outcome = run_shipped(&proof, Target::single(double), &mut input, &mut out);
        assert_eq!(outcome, Outcome::Ok);
        assert_eq!(postcard::from_bytes::<u32>(&out).unwrap(), 42);
    }

    #[test]
    fn verify_rejects_a_different_layout() {
        let image = ImageId::current().unwrap();
        assert!(VerifiedParent::verify(&image, probe_offset() + 16).is_err());
    }
}
