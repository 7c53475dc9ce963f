//! The job functions of the reference workloads (shared/bench/WORKLOADS.md), shared by the
//! benches and the `thread_vs_process` and `primes` examples.

/// W1, W5: the identity job.
pub fn ident(x: u64) -> u64 {
    x
}

/// W1 with a longer job: works (spins on the clock) for `micros` microseconds, and says
/// how many times it read the clock.
pub fn busy_for(micros: u64) -> u64 {
    let end = std::time::Instant::now() + std::time::Duration::from_micros(micros);
    let mut reads = 0;
    while std::time::Instant::now() < end {
        reads += 1;
    }
    reads
}

/// W2, W3: `x -> x * 2`.
pub fn double(x: u64) -> u64 {
    x * 2
}

/// W4: false below 2, else trial division by every d with d * d <= n.
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// W4: the primes in `[lo, hi)`; one job.
pub fn count_primes((lo, hi): (u64, u64)) -> u64 {
    (lo..hi).filter(|&n| is_prime(n)).count() as u64
}

/// W4 on one thread: the primes in every range, one after the other.
pub fn count_sequentially(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|&r| count_primes(r)).sum()
}

/// W4: `count` ranges of (almost) equal length covering `[0, limit)` (fewer when `limit`
/// is smaller than `count`: no range is empty).
pub fn ranges(limit: u64, count: u64) -> Vec<(u64, u64)> {
    (0..count)
        .map(|i| (limit * i / count, limit * (i + 1) / count))
        .filter(|(lo, hi)| lo < hi)
        .collect()
}

/// W6: the echo job.
pub fn echo(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

/// The mixed-cost map: `units` of integer work, each a few microseconds
/// (a dependent multiply-add chain the compiler cannot skip); returns its checksum.
pub fn mixed_work(units: u32) -> u64 {
    let mut x = u64::from(units);
    for _ in 0..u64::from(units) * 20_000 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
    }
    x >> 32
}

/// The mixed-cost map's items: `n` costs from 1 to 100 units, uniform and reproducible
/// (a fixed linear congruential sequence), so that neighbouring items differ up to 100×.
pub fn mixed_items(n: usize) -> Vec<u32> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            1 + ((state >> 33) % 100) as u32
        })
        .collect()
}
