//! The crate's only `unsafe` code for shipping functions: turning an address received from
//! the parent back into a function pointer, and calling it.
//!
//! # How a function travels
//!
//! A job's function is a plain function pointer (`fn(A) -> R`, or `fn() -> S` for worker
//! initializers). The parent cannot send the pointer itself (ASLR places the image at a
//! different address in each process), so it sends a [`Target`]: the **offsets from
//! [`anchor`]** of the function and of a trampoline, `trampoline::<F, B>`, monomorphized
//! for the function's type `F` and for what to do with it, `B` (a safe [`Body`]: decode the
//! argument, call, encode the result). The worker adds its own anchor address back, calls
//! the trampoline through the erased signature [`Trampoline`], and the trampoline turns the
//! function's address back into an `F`.
//!
//! # The invariant
//!
//! The conversion back is sound only if the address is that of a function of type `F`.
//! That holds when:
//!
//! 1. **the pairing is right**: both offsets of a [`Target`] come from one instantiation of
//!    [`Target::new`], which takes the function as an `F` and the trampoline as
//!    `trampoline::<F, B>` for that same `F`. No other code builds a `Target` in the
//!    parent (a worker only deserializes those its parent sent);
//! 2. **the function lives in the main image**: the parent ships only targets that passed
//!    [`Target::check_shippable`] (the pool checks every job and every initializer before
//!    it accepts them), so an offset never points into a library mapped elsewhere in the
//!    worker. The check reads `/proc/self/maps`; where there is none (outside Linux), this
//!    part rests on the documented rule that job functions live in the executable;
//! 3. **the worker runs the very same image as its peer**: [`run_shipped`] takes a
//!    [`VerifiedParent`], which only [`VerifiedParent::verify`] makes, after comparing the
//!    executable identity and probe offset the peer sent with the worker's own. Who the
//!    peer is rests on the local backend's link: one end of an unnamed socket pair, which
//!    the parent that started the worker made and kept the other end of, so that nothing
//!    else can reach it. The worker checks its peer's claims; the parent authenticates the
//!    worker (its secret), not the reverse.
//!
//! Each `unsafe` block below names the part it rests on.

use super::image::{ImageId, main_image_ranges};
use crate::run::Outcome;
use serde::{Deserialize, Serialize};

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

/// A function pointer type that a worker can rebuild from an address.
///
/// # Safety
///
/// Implement it only for function pointer types: `Self` must have the size of a `usize`,
/// and the address of any function of type `Self`, read back as a `Self`, must be that
/// function pointer.
pub(crate) unsafe trait FnPtr: Copy + 'static {
    /// The function's address in this process.
    fn address(self) -> usize;
}

// SAFETY: `fn(A) -> R` is a function pointer type, a `usize`-sized address.
unsafe impl<A: 'static, R: 'static> FnPtr for fn(A) -> R {
    fn address(self) -> usize {
        self as usize
    }
}

// SAFETY: `fn() -> S` is a function pointer type, a `usize`-sized address.
unsafe impl<S: 'static> FnPtr for fn() -> S {
    fn address(self) -> usize {
        self as usize
    }
}

/// What a worker does with a shipped function once it is rebuilt: the safe half of a
/// trampoline (decode the argument, call, encode the result; see [`crate::run`]).
pub(crate) trait Body<F: FnPtr> {
    fn run(f: F, input: &mut Vec<u8>, out: &mut Vec<u8>) -> Outcome;
}

/// The erased signature of every trampoline: the function's address, the encoded input,
/// and a buffer for the encoded output.
type Trampoline = unsafe fn(usize, &mut Vec<u8>, &mut Vec<u8>) -> Outcome;

/// Rebuilds the function at `f` as an `F` and runs `B` on it.
///
/// # Safety
///
/// `f` must be the address of a function of type `F` in this process (see the module's
/// invariant).
unsafe fn trampoline<F: FnPtr, B: Body<F>>(
    f: usize,
    input: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Outcome {
    const { assert!(size_of::<F>() == size_of::<usize>()) };
    // SAFETY: `F: FnPtr` is a `usize`-sized function pointer type (the trait's contract,
    // and the assertion above), and `f` is the address of a function of type `F` (this
    // function's contract), so reading it back as an `F` gives that function pointer.
    let f = unsafe { std::mem::transmute_copy::<usize, F>(&f) };
    B::run(f, input, out)
}

/// Where a worker finds one function: the offsets from [`anchor`] of a trampoline and of
/// the function it calls.
///
/// Invariant (the first part of the module's): `trampoline` is the offset of
/// `trampoline::<F, B>` and `function` that of a function of type `F`, for one `F`. Only
/// [`Target::new`] makes a `Target` in the parent; the worker deserializes those its
/// verified parent sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Target {
    trampoline: i64,
    function: i64,
}

impl Target {
    /// The target that runs `B` on `f`.
    pub(crate) fn new<F: FnPtr, B: Body<F>>(f: F) -> Target {
        Target {
            trampoline: offset_of(trampoline::<F, B> as Trampoline as usize),
            function: offset_of(f.address()),
        }
    }

    /// The absolute addresses of the trampoline and the function in this process.
    fn addresses(&self) -> [usize; 2] {
        [resolve(self.trampoline), resolve(self.function)]
    }

    /// Checks that both addresses lie in the main executable image, where a worker finds
    /// them (the invariant's second part); `Err` gives the first address outside it (a
    /// function from a dynamically loaded library). Where the memory map cannot be read
    /// (outside Linux), every target passes.
    pub(crate) fn check_shippable(&self) -> Result<(), usize> {
        let Some(ranges) = main_image_ranges(anchor_addr()) else {
            return Ok(());
        };
        match self
            .addresses()
            .into_iter()
            .find(|addr| !ranges.iter().any(|&(lo, hi)| (lo..hi).contains(addr)))
        {
            Some(outside) => Err(outside),
            None => Ok(()),
        }
    }
}

/// Proof that the parent says it runs the same executable image as this worker (the
/// invariant's third part).
///
/// Invariant: it exists only if the executable identity and probe offset the parent sent
/// equal this process's; its only constructor, [`VerifiedParent::verify`], compares them.
#[derive(Debug)]
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

/// Calls the function a [`Target`] from the verified parent names, on `input`, writing the
/// encoded result to `out`.
pub(crate) fn run_shipped(
    _proof: &VerifiedParent,
    target: Target,
    input: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Outcome {
    let [trampoline, function] = target.addresses();
    // SAFETY: `_proof` shows the parent runs this same image, so the offsets it computed
    // land on the same code here; `Target::new` took the trampoline's offset from
    // `trampoline::<F, B>` (a function of type `Trampoline`), and the parent checked that
    // it lies in the main image.
    let trampoline = unsafe { std::mem::transmute::<usize, Trampoline>(trampoline) };
    // SAFETY: the trampoline's contract, `function` is a function of its `F`, is the
    // pairing `Target::new` made, carried to this image by the same proof.
    unsafe { trampoline(function, input, out) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u32) -> u32 {
        x * 2
    }

    /// A body that decodes a `u32`, calls, and encodes the result.
    struct Postcard;

    impl Body<fn(u32) -> u32> for Postcard {
        fn run(f: fn(u32) -> u32, input: &mut Vec<u8>, out: &mut Vec<u8>) -> Outcome {
            let x: u32 = postcard::from_bytes(input).unwrap();
            out.extend_from_slice(&postcard::to_allocvec(&f(x)).unwrap());
            Outcome::Ok
        }
    }

    #[test]
    fn targets_resolve_to_their_functions() {
        let t = Target::new::<_, Postcard>(double as fn(u32) -> u32);
        let [tramp, f] = t.addresses();
        assert_eq!(f, double as fn(u32) -> u32 as usize);
        assert_eq!(
            tramp,
            trampoline::<fn(u32) -> u32, Postcard> as Trampoline as usize
        );
    }

    #[test]
    fn shipped_call_round_trips_in_process() {
        let image = ImageId::current().unwrap();
        let proof = VerifiedParent::verify(&image, probe_offset()).unwrap();
        let mut input = postcard::to_allocvec(&21_u32).unwrap();
        let mut out = Vec::new();
        let target = Target::new::<_, Postcard>(double as fn(u32) -> u32);
        let outcome = run_shipped(&proof, target, &mut input, &mut out);
        assert_eq!(outcome, Outcome::Ok);
        assert_eq!(postcard::from_bytes::<u32>(&out).unwrap(), 42);
    }

    #[test]
    fn verify_rejects_a_different_layout() {
        let image = ImageId::current().unwrap();
        assert!(VerifiedParent::verify(&image, probe_offset() + 16).is_err());
    }

    #[test]
    fn functions_of_this_binary_are_shippable_and_others_are_not() {
        let target = Target::new::<_, Postcard>(double as fn(u32) -> u32);
        assert_eq!(target.check_shippable(), Ok(()));
        // An offset far outside any mapping (here: past the end of the address space the
        // image could occupy) is refused on Linux, where the map is read.
        let far = Target {
            function: i64::MAX / 2,
            ..target
        };
        if cfg!(target_os = "linux") {
            assert!(far.check_shippable().is_err());
        }
    }
}
