"""Timing helpers shared by the PyTorch peer scripts (as bench/timing.lua)."""
import os, time


def best(f, n, reps=5):
    """Best-of-`reps` seconds per call of f, each rep running `n` calls."""
    b = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        b = min(b, (time.perf_counter() - t0) / n)
    return b


def threads():
    """The thread count bench/run.lua measures moelua with (MOE_BENCH_THREADS)."""
    return int(os.environ.get("MOE_BENCH_THREADS") or 2)

