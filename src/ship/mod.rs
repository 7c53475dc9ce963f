//! Shipping functions to workers that run the same executable image: a function travels as
//! two offsets from an anchor function of this crate ([`Target`]), and a worker calls it
//! only after proving its parent runs the same image ([`VerifiedParent`]).
//!
//! [`raw`] holds the crate's only `unsafe` code for it (and nothing else); [`image`] says
//! what "the same image" means. What a shipped call does once its function is found is
//! [`crate::run`]'s business; which trampoline pairs with which job is
//! [`crate::job`]'s.

mod image;
#[allow(unsafe_code)]
mod raw;

pub(crate) use image::{ImageId, exe_path};
pub(crate) use raw::{Body, Target, VerifiedParent, probe_offset, run_shipped};
