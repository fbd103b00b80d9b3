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


def warm_up(f, n):
    """Seconds for the first n calls of f: for a torch.compile'd step, the
    compile time (tracing, inductor's code generation and C++ builds)."""
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return time.perf_counter() - t0


def compiler(on):
    """torch.compile (inductor, the default backend) when `on`, else the identity."""
    if not on:
        return lambda f: f
    import torch
    return torch.compile


def steady(step, n, reps=3, warm=10, compiled=False):
    """Seconds per call of `step`, best of `reps` runs of n calls after `warm`
    calls. For a compiled step, first prints compile_s (its first two calls:
    forward and backward graphs traced, generated and built) and how many of
    those graphs came from inductor's on-disk cache of an earlier run."""
    if compiled:
        print(f"compile_s\t{warm_up(step, 2):.2f}")
        try:
            from torch._dynamo.utils import counters
            hits, misses = (counters["inductor"][k] for k in ("fxgraph_cache_hit", "fxgraph_cache_miss"))
            print(f"compile_cache_hits\t{hits}\ncompile_graphs\t{hits + misses}")
        except Exception:
            pass
    warm_up(step, warm)
    return best(step, n, reps)


def has_cpu_bf16():
    """Whether the CPU has bf16 arithmetic (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run(f):
    """Runs a peer case; an exception prints error<TAB>reason (for the table)."""
    try:
        f()
    except Exception as e:  # e.g. inductor's C++ build failing on this machine
        msg = (str(e).strip().splitlines() or [""])[0][:160]
        print(f"error\t{type(e).__name__}: {msg}", flush=True)
