//! The wire format between a pool and its workers, whatever carries it: how a frame is laid
//! out and decoded ([`frame`], with its [`error`]s), the messages it carries
//! ([`message`]), how the items of a `map` chunk travel inside a payload ([`items`], with
//! [`plain`] values packed, and [`why`] one failed to encode), and the worker's blocking
//! end of a link ([`blocking`], with the [`outbox`] that holds its answers back for a
//! moment).
//!
//! Nothing here starts a worker or opens a socket: a backend moves the bytes these modules
//! produce and hands back the bytes it received.

pub(crate) mod blocking;
pub(crate) mod claims;
pub(crate) mod error;
pub(crate) mod frame;
#[cfg(feature = "mpi")]
pub(crate) mod headers;
pub(crate) mod items;
pub(crate) mod message;
pub(crate) mod outbox;
pub(crate) mod plain;
pub(crate) mod why;
