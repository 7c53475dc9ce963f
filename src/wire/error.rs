//! [`ProtocolError`]: what can go wrong on a link, and what it costs the job it hits.

use crate::error::{Cause, JobError};
use std::io;

/// What can go wrong on a link.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtocolError {
    #[error("frame exceeds the maximum frame size of {max} bytes")]
    FrameTooLarge { max: usize },
    #[error("message of {size} bytes exceeds the maximum frame size of {max} bytes")]
    MessageTooLarge { size: usize, max: usize },
    /// The header's lengths do not describe a frame.
    #[error("corrupt frame: {0}")]
    Corrupt(String),
    /// The message does not decode, or does not fill the length its header gives.
    #[error("corrupt frame: its message does not decode")]
    Malformed(#[source] postcard::Error),
    #[error("cannot encode a message")]
    Unencodable(#[source] postcard::Error),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("i/o error on the worker connection")]
    Io(#[from] io::Error),
}

impl ProtocolError {
    /// This error as the error of the job it cost: [`JobError::Protocol`], its text the
    /// reason and what lies underneath it (an I/O or a decoding error) the cause.
    pub(crate) fn into_job_error(self) -> JobError {
        let reason = self.to_string();
        let cause = match self {
            ProtocolError::Malformed(e) | ProtocolError::Unencodable(e) => Some(Cause::new(e)),
            ProtocolError::Io(e) => Some(Cause::new(e)),
            _ => None,
        };
        JobError::Protocol { reason, cause }
    }
}
