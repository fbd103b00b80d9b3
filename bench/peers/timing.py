"""Timing helper shared by the PyTorch peer scripts (as bench/timing.lua)."""
import time


def best(f, n, reps=5):
    """Best-of-`reps` seconds per call of f, each rep running `n` calls."""
    b = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        b = min(b, (time.perf_counter() - t0) / n)
    return b
