//! Shipping functions to workers that run the same executable image: a function travels as
//! two offsets from an anchor function of this crate ([`Target`]), and a worker calls it
//! only after proving its parent runs the same image ([`VerifiedParent`]).
//!
//! [`raw`] holds the crate's only `unsafe` code for it (and nothing else); [`image`] says
//! what "the same image" means on one machine, [`build_id`] across machines. What a shipped call does once its function is found is
//! [`crate::run`]'s business; which trampoline pairs with which job is
//! [`crate::job`]'s.

// Only MPI ranks on other nodes compare build-ids.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) mod build_id;
mod image;
#[allow(unsafe_code)]
mod raw;

pub(crate) use image::{ImageId, exe_path};
pub(crate) use raw::{Body, Target, VerifiedParent, probe_offset, run_shipped};
