//! The job functions of the reference workloads (shared/bench/WORKLOADS.md), shared by the
//! benches and the `thread_vs_process` and `primes` examples.

/// W1, W5: the identity job.
pub fn ident(x: u64) -> u64 {
    x
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
