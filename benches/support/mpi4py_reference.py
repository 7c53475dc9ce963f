#!/usr/bin/env python3
"""mpi4py.futures on the reference workloads W1, W2, W3 and W6 (WORKLOADS.md in
shared/bench), for examples/mpi_vs_process.rs, which runs it as

    mpirun -n 3 --oversubscribe python3 -m mpi4py.futures benches/support/mpi4py_reference.py

(rank 0 runs this script, ranks 1 and 2 are the two workers). It prints one line per
figure, `figure <workload> mpi4py <value>`, with the statistics of python_reference.py
(the median over repetitions). W2 submits 20,000 jobs rather than 100,000: at about 5,000
jobs/s the full count takes 20 s a repetition. W4 (pure-Python trial division up to
5,000,000) is left out: it measures the interpreter, not the pool.
"""
import statistics
import time

from mpi4py.futures import MPIPoolExecutor

W1_WARMUP, W1_N = 200, 2000
W2_N = 20_000
W3_N, W3_CHUNK = 1_000_000, 1000
W6_BYTES = 64 * 1024 * 1024
REPS = 3
# W6: the timed echoes after one untimed echo per worker (ranks 1 and 2), as
# examples/mpi_vs_process.rs measures the Rust pools.
WORKERS = 2
W6_REPS = 11


def ident(x):
    return x


def double(x):
    return x * 2


def echo(b):
    return b


def main():
    with MPIPoolExecutor() as ex:
        for i in range(W1_WARMUP):
            assert ex.submit(ident, i).result() == i
        times = []
        for i in range(W1_N):
            t = time.perf_counter()
            assert ex.submit(ident, i).result() == i
            times.append((time.perf_counter() - t) * 1e6)
        print(f"figure W1 mpi4py {statistics.median(times):.2f}", flush=True)

        rates = []
        for _ in range(REPS):
            t = time.perf_counter()
            futures = [ex.submit(double, x) for x in range(W2_N)]
            total = sum(f.result() for f in futures)
            rates.append(W2_N / (time.perf_counter() - t))
            assert total == sum(2 * x for x in range(W2_N))
        print(f"figure W2 mpi4py {statistics.median(rates):.0f}", flush=True)

        rates = []
        for _ in range(REPS):
            t = time.perf_counter()
            total = sum(ex.map(double, range(W3_N), chunksize=W3_CHUNK))
            rates.append(W3_N / (time.perf_counter() - t))
            assert total == 999_999_000_000
        print(f"figure W3 mpi4py {statistics.median(rates):.0f}", flush=True)

        payload = bytes(i % 251 for i in range(W6_BYTES))
        # Untimed, as for the Rust pools: one echo per worker, at once.
        for back in [ex.submit(echo, payload) for _ in range(WORKERS)]:
            assert back.result() == payload
        times = []
        for _ in range(W6_REPS):
            t = time.perf_counter()
            back = ex.submit(echo, payload).result()
            times.append((time.perf_counter() - t) * 1e3)
            assert back == payload
        print(f"figure W6 mpi4py {statistics.median(times):.2f}", flush=True)


if __name__ == "__main__":
    main()
