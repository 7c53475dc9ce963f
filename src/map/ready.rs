//! [`Ready`]: the results of the chunk a [`Map`](super::Map) is handing out, one by one or
//! all at once.

use crate::error::JobError;
use crate::wire::items::EncodedItems;
use serde::de::DeserializeOwned;

/// The results of the chunk being handed out, one by one.
pub(super) enum Ready<R> {
    /// A thread pool's chunk whose every item succeeded.
    Values(std::vec::IntoIter<R>),
    /// Already decoded: a thread pool's chunk with failed items, or a chunk that failed
    /// as a whole.
    Decoded(std::vec::IntoIter<Result<R, JobError>>),
    /// A process pool's answer, decoded as it is read.
    Encoded(EncodedItems<R>),
}

impl<R> Ready<R> {
    pub(super) fn len(&self) -> usize {
        match self {
            Ready::Values(values) => values.len(),
            Ready::Decoded(results) => results.len(),
            Ready::Encoded(items) => items.remaining(),
        }
    }
}

impl<R: DeserializeOwned + 'static> Iterator for Ready<R> {
    type Item = Result<R, JobError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Ready::Values(values) => values.next().map(Ok),
            Ready::Decoded(results) => results.next(),
            Ready::Encoded(items) => items.next(),
        }
    }
}

impl<R: DeserializeOwned + 'static> Ready<R> {
    /// Appends the results left to `out`, stopping at the first failed one.
    pub(super) fn drain_ok_into(&mut self, out: &mut Vec<R>) -> Result<(), JobError> {
        match self {
            Ready::Values(values) => {
                out.extend(values); // a copy of the whole rest at once
                Ok(())
            }
            Ready::Decoded(results) => {
                out.reserve(results.len());
                for result in results {
                    out.push(result?);
                }
                Ok(())
            }
            Ready::Encoded(items) => items.drain_ok_into(out),
        }
    }
}
