//! [`Progress`]: how far a map has come.

/// How far a [`Map`](super::Map) has come: the items whose results are known, and the
/// input's length when known. From [`Map::progress`](super::Map::progress) and
/// [`Map::on_progress`](super::Map::on_progress).
///
/// `completed` counts an item as soon as the worker's answer for its chunk arrives, failed
/// items included, even if an ordered map still holds it back behind slower chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Items whose results are known.
    pub completed: u64,
    /// The number of items: known from the start when the input tells its exact length
    /// (`size_hint`, as ranges, `Vec`s and most adapters do), otherwise once the input is
    /// exhausted.
    pub total: Option<u64>,
}

impl Progress {
    /// `completed / total`, between 0 and 1, once the total is known.
    pub fn fraction(&self) -> Option<f64> {
        self.total.map(|total| {
            if total == 0 {
                1.0
            } else {
                self.completed as f64 / total as f64
            }
        })
    }
}
