//! How [`Map`](super::Map) sizes its chunks when the caller does not: [`AutoChunk`], guided
//! self-scheduling over what an item costs a worker, and the in-flight bound that follows
//! the chunk size.
//!
//! A chunk should be long enough to amortize handing it to a worker (a socket round trip
//! on the process pool) and short enough that the workers finish together. So a function
//! of unknown cost starts with one item per chunk; each chunk that comes back says how
//! long a worker ran it, and the next chunk holds about [`TARGET`] of work (on a pool
//! whose hand-off is a round trip, [`TARGET_ROUND_TRIP`]); and when the
//! input's length is known, no chunk holds more than a `1 / (GUIDED × workers)` share of
//! the items left (guided self-scheduling, in the "factoring" form of Hummel, Schonberg
//! and Flynn, 1992), so chunks shrink as the end nears. The cost is remembered per
//! function, so that the next map of it starts at the right size.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The largest chunk the automatic size grows to: W3 (a million `u64`s doubled) ran at
/// about 49 M items/s on the thread pool in chunks of 8,192 and 16,384, 40–43 M in chunks
/// of 32,768 and 65,536 (whose result buffers are large enough to be fresh memory each
/// time), and within noise of 55–61 M from 1,000 to 65,536 on processes.
pub(super) const MAX_AUTO_CHUNK: usize = 1 << 14;
/// How much work an automatic chunk aims for, as its worker measures it, where handing
/// out a chunk is cheap (threads)...
const TARGET: Duration = Duration::from_millis(2);
/// ...and where it costs a round trip to a worker process (30 to 60 µs a chunk on two
/// cores, from the mixed-cost map's one-item chunks): chunks of 2 ms left the mixed-cost
/// map 5-10% slower than its best fixed size, 128 items (18 ms).
const TARGET_ROUND_TRIP: Duration = Duration::from_millis(10);
/// Near the end, a chunk holds at most the items left over this many times the workers.
const GUIDED: u64 = 2;

/// Items per worker that the default in-flight bound of a process pool aims to keep queued
/// or running.
const ITEMS_IN_FLIGHT_PER_WORKER: usize = 32_768;
/// The default in-flight bound's range, in chunks per worker.
const CHUNKS_IN_FLIGHT_PER_WORKER: (usize, usize) = (2, 16);

/// The default of [`Map::max_in_flight`](super::Map::max_in_flight) for chunks of `chunk`
/// items: the least chunks per worker where handing out a chunk is cheap (threads), and
/// where it costs a round trip (processes) enough chunks to keep
/// [`ITEMS_IN_FLIGHT_PER_WORKER`] items out.
pub(super) fn default_in_flight(chunk: usize, workers: usize, round_trip: bool) -> usize {
    let (min, max) = CHUNKS_IN_FLIGHT_PER_WORKER;
    let per_worker = if round_trip {
        ITEMS_IN_FLIGHT_PER_WORKER
            .div_ceil(chunk.max(1))
            .clamp(min, max)
    } else {
        min
    };
    per_worker * workers.max(1)
}

/// The automatic chunk size of one map.
#[derive(Debug, Clone, Copy)]
pub(super) struct AutoChunk {
    /// What one item costs a worker (a moving average over the chunks so far), once known.
    per_item: Option<Duration>,
    workers: u64,
    /// The work a chunk aims for.
    target: Duration,
}

impl AutoChunk {
    /// For a pool of `workers` (handing out a chunk being a `round_trip` or not), with
    /// what an item is `known` to cost, if anything.
    pub(super) fn new(known: Option<Duration>, workers: usize, round_trip: bool) -> AutoChunk {
        AutoChunk {
            per_item: known,
            workers: workers.max(1) as u64,
            target: if round_trip {
                TARGET_ROUND_TRIP
            } else {
                TARGET
            },
        }
    }

    /// What an item costs, as far as the chunks so far tell.
    pub(super) fn per_item(&self) -> Option<Duration> {
        self.per_item
    }

    /// The size of the next chunk, with `left` items still to come if the input's length
    /// is known.
    pub(super) fn size(&self, left: Option<u64>) -> usize {
        let by_cost = match self.per_item {
            None => 1,
            Some(cost) => {
                let fit = self.target.as_nanos() / cost.as_nanos().max(1);
                usize::try_from(fit)
                    .unwrap_or(usize::MAX)
                    .clamp(1, MAX_AUTO_CHUNK)
            }
        };
        match left {
            Some(left) => {
                let share = left.div_ceil(GUIDED * self.workers).max(1);
                by_cost.min(usize::try_from(share).unwrap_or(usize::MAX))
            }
            None => by_cost,
        }
    }

    /// Learns from a chunk of `items` that a worker ran in `ran_for`.
    pub(super) fn observe(&mut self, items: usize, ran_for: Duration) {
        let Ok(items) = u32::try_from(items) else {
            return;
        };
        if items == 0 {
            return;
        }
        let sample = ran_for / items;
        self.per_item = Some(match self.per_item {
            None => sample,
            Some(old) => (old * 3 + sample) / 4,
        });
    }
}

/// What an item of a function costs on a kind of pool, from the maps of it so far: by the
/// function's address and whether handing out a chunk is a round trip.
type CostKey = (usize, bool);

/// The functions remembered: the most recently mapped.
const REMEMBERED: usize = 32;

static KNOWN: Mutex<Vec<(CostKey, Duration)>> = Mutex::new(Vec::new());

/// What an item of `key`'s function cost in the last map of it, if it ran in this process.
pub(super) fn known_cost(key: CostKey) -> Option<Duration> {
    let known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
    known.iter().find(|(k, _)| *k == key).map(|(_, cost)| *cost)
}

/// Remembers what an item of `key`'s function costs.
pub(super) fn remember_cost(key: CostKey, per_item: Duration) {
    let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
    known.retain(|(k, _)| *k != key);
    if known.len() >= REMEMBERED {
        known.remove(0);
    }
    known.push((key, per_item));
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);

    #[test]
    fn a_function_of_unknown_cost_starts_with_one_item_per_chunk() {
        let auto = AutoChunk::new(None, 2, false);
        assert_eq!(auto.size(None), 1);
        assert_eq!(auto.size(Some(1_000_000)), 1);
    }

    #[test]
    fn chunks_hold_two_or_ten_milliseconds_of_measured_work() {
        let mut auto = AutoChunk::new(None, 2, false);
        // A first item that took 20 us (mostly the chunk's own overhead)...
        auto.observe(1, 20 * US);
        assert_eq!(auto.size(None), 100);
        // ...then 100 items in 100 us: the average moves towards 1 us an item.
        auto.observe(100, 100 * US);
        assert_eq!(auto.per_item(), Some(Duration::from_nanos(15_250)));
        for _ in 0..20 {
            let size = auto.size(None);
            auto.observe(size, size as u32 * US);
        }
        let size = auto.size(None);
        assert!((1900..=2000).contains(&size), "{size}");
        // Where a chunk costs a round trip: five times as long.
        let processes = AutoChunk::new(auto.per_item(), 2, true).size(None);
        assert!((9500..=10_000).contains(&processes), "{processes}");
        // Heavy items: one per chunk.
        let heavy = AutoChunk::new(Some(17 * MS), 2, true);
        assert_eq!(heavy.size(None), 1);
        // Items too cheap to time: the cap.
        let free = AutoChunk::new(Some(Duration::ZERO), 2, false);
        assert_eq!(free.size(None), MAX_AUTO_CHUNK);
    }

    #[test]
    fn chunks_shrink_as_the_end_of_a_known_input_nears() {
        let auto = AutoChunk::new(Some(Duration::from_nanos(10)), 2, false);
        // By cost alone: 200,000 items (for 2 ms), capped.
        assert_eq!(auto.size(None), MAX_AUTO_CHUNK);
        assert_eq!(auto.size(Some(1_000_000)), MAX_AUTO_CHUNK);
        // A quarter of what is left, with two workers.
        assert_eq!(auto.size(Some(40_000)), 10_000);
        assert_eq!(auto.size(Some(10)), 3);
        assert_eq!(auto.size(Some(1)), 1);
        assert_eq!(auto.size(Some(0)), 1);
        // Pulling a whole input this way: the chunks fall off to single items, and no
        // chunk holds more than a quarter of what was left when it was cut.
        let mut left = 100_000_u64;
        let mut sizes = Vec::new();
        while left > 0 {
            let size = auto.size(Some(left)) as u64;
            assert!(size <= left.div_ceil(4), "{size} of {left}");
            sizes.push(size);
            left -= size;
        }
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
        assert_eq!(sizes.last(), Some(&1));
        assert!(sizes.len() < 60, "{} chunks", sizes.len());
    }

    #[test]
    fn the_cost_of_a_function_is_remembered_per_kind_of_pool() {
        let key = (0x1234, true);
        assert_eq!(known_cost(key), None);
        remember_cost(key, 3 * US);
        remember_cost((0x1234, false), 5 * US);
        assert_eq!(known_cost(key), Some(3 * US));
        assert_eq!(known_cost((0x1234, false)), Some(5 * US));
        remember_cost(key, 4 * US);
        assert_eq!(known_cost(key), Some(4 * US));
        for f in 0..REMEMBERED {
            remember_cost((0x10_0000 + f, true), US);
        }
        assert_eq!(known_cost(key), None, "the oldest are forgotten");
    }

    #[test]
    fn the_default_in_flight_bound_follows_the_chunk_size() {
        assert_eq!(
            default_in_flight(1, 2, true),
            32,
            "at most 16 chunks per worker"
        );
        assert_eq!(default_in_flight(1000, 2, true), 32);
        assert_eq!(
            default_in_flight(4096, 2, true),
            16,
            "32,768 items per worker"
        );
        assert_eq!(default_in_flight(10_000, 2, true), 8);
        assert_eq!(
            default_in_flight(MAX_AUTO_CHUNK, 2, true),
            4,
            "at least 2 per worker"
        );
        assert_eq!(
            default_in_flight(MAX_AUTO_CHUNK, 0, true),
            2,
            "a pool reports 1+ workers"
        );
        for chunk in [1, 1000, MAX_AUTO_CHUNK] {
            assert_eq!(
                default_in_flight(chunk, 2, false),
                4,
                "threads: 2 per worker"
            );
        }
    }
}
