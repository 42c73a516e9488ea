"""Shared helpers for the benchmarks: thread setup, median timing, SGEMM and multiply-add peaks, the
check of --out, CSV writing (the check of count flags is mnist.cli's, shared with mnist's commands).

Timing on a shared machine is noisy, so ``timeit_many`` interleaves the functions it compares
(one repeat of each in turn) and every number reported is a median over repeats.

But never interleave NumPy and PyTorch finely: after a call, OpenBLAS's worker threads (under
np.matmul) busy-wait for ~0.1 s and PyTorch's OpenMP threads spin too, so on a 2-core machine each
library's threads steal the cores the other one's parallel region is waiting for. Measured here,
grad-weight of a 14x14 layer alternating with torch every 2 ms took 25x longer than either alone.
So time each library's functions in a block of their own and ``settle()`` between blocks.
"""
import contextlib
import csv
import os
import statistics
import time
from pathlib import Path

import numpy as np
from numba import njit

from mnist.files import write_atomic
from nanotorch.kernels.simd import fma, lanes_of, load, splat, store

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def try_import_torch():
    """torch, or None when it is not installed (the benchmarks then measure nanotorch only)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


@contextlib.contextmanager
def threads(n, torch=None):
    """Run the block with each framework at n threads: nanotorch.set_num_threads(n) (Numba's threads
    for the big kernels, one BLAS thread) and, if the module is passed, torch.set_num_threads(n); the
    previous thread counts are set again after (BLAS stays at one thread, as nanotorch leaves it).
    Yields a dict saying what was set.
    """
    import nanotorch as nt
    before = nt.get_num_threads()
    nt.set_num_threads(n)
    info = {"threads": n, "numba": nt.get_num_threads(), "blas": 1, "blas_kernels": blas_kernels(), "torch": None}
    try:
        with contextlib.ExitStack() as stack:
            if torch is not None:
                stack.enter_context(torch_threads(torch, n))
                info["torch"] = n
            yield info
    finally:
        nt.set_num_threads(before)


def blas_kernels():
    """Which kernels NumPy's BLAS runs, as threadpoolctl reports them (OpenBLAS's "Haswell" are AVX2,
    "SkylakeX" AVX-512), and OPENBLAS_CORETYPE if the environment chose them: a machine that sets
    OPENBLAS_CORETYPE=Haswell runs its products at about half the speed of an AVX-512 CPU's own choice."""
    from threadpoolctl import threadpool_info
    names = sorted({i.get("architecture") or "?" for i in threadpool_info() if i.get("user_api") == "blas"})
    chosen = os.environ.get("OPENBLAS_CORETYPE")
    return "/".join(names) + (f" (OPENBLAS_CORETYPE={chosen})" if chosen else "")


@contextlib.contextmanager
def torch_threads(torch, n):
    """torch.set_num_threads(n) for the block (nothing if torch is None)."""
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def timeit_many(fns, repeats=7, min_time=0.02):
    """Median seconds per call of each function in ``fns`` (name -> zero-argument callable).

    Each function is called three times to warm up (caches, JIT, oneDNN's kernel generation); the
    fastest of those sets how many calls make one repeat last at least ``min_time`` seconds. The
    repeats then run interleaved (one repeat of every function in turn), so a burst of load from
    another process hits all of them alike.
    """
    number = {}
    for name, fn in fns.items():
        once = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            fn()
            once = min(once, time.perf_counter() - t)
        number[name] = max(1, int(min_time / max(once, 1e-9)))
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(number[name]):
                fn()
            samples[name].append((time.perf_counter() - t) / number[name])
    return {name: statistics.median(s) for name, s in samples.items()}


def settle(seconds=0.3):
    """Wait for the thread pools of the library just timed to stop spinning (see the module docstring)."""
    time.sleep(seconds)


def timeit(fn, repeats=7, min_time=0.02):
    """Median seconds per call of ``fn`` (see ``timeit_many``)."""
    return timeit_many({"fn": fn}, repeats, min_time)["fn"]


def sgemm_peak(n=1024, tries=5, min_time=0.5):
    """This machine's float32 matrix-product rate in GFLOP/s: the best of at least ``tries`` n x n
    np.matmul, going on until ``min_time`` seconds have passed, so that a moment when the shared
    host is busy does not become the peak (at whatever BLAS thread count is in force)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, n, n), dtype=np.float32)
    np.matmul(a, b)
    best, done, started = float("inf"), 0, time.perf_counter()
    while done < tries or time.perf_counter() - started < min_time:
        t = time.perf_counter()
        np.matmul(a, b)
        best = min(best, time.perf_counter() - t)
        done += 1
    return 2 * n ** 3 / best / 1e9


@njit(cache=True)
def _fma_chains(x, n):
    """n rounds of 12 vector multiply-adds, each into its own sum: 12 independent chains, enough to
    keep a core's multiply-add units busy through their latency (4 cycles on two units here)."""
    a, b = load(x, 0), load(x, lanes_of(x))
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = s9 = s10 = s11 = splat(x[0])
    for _ in range(n):
        s0 = fma(a, b, s0); s1 = fma(a, b, s1); s2 = fma(a, b, s2); s3 = fma(a, b, s3)
        s4 = fma(a, b, s4); s5 = fma(a, b, s5); s6 = fma(a, b, s6); s7 = fma(a, b, s7)
        s8 = fma(a, b, s8); s9 = fma(a, b, s9); s10 = fma(a, b, s10); s11 = fma(a, b, s11)
    out = np.empty(12 * lanes_of(x), x.dtype)       # stored, so that the compiler keeps every chain
    for k, s in enumerate((s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11)):
        store(out, k * lanes_of(x), s)
    return out


def fma_peak(rounds=2_000_000, tries=5, min_time=0.3):
    """One core's float32 multiply-add rate in GFLOP/s (2 FLOP a multiply-add): the best of at least
    ``tries`` runs of a compiled loop of independent vector multiply-adds (nanotorch/kernels/simd.py,
    16 lanes with AVX-512), going on until ``min_time`` seconds have passed. No kernel that loads its
    operands goes faster on this core; the convolutions' GFLOP/s are read against it."""
    lanes = lanes_of(np.empty(0, np.float32))
    x = np.full(2 * lanes, 1e-3, np.float32)        # the two operands, a and b
    _fma_chains(x, 10)                              # compiled (or loaded from the cache) before timing
    flops = 2 * 12 * lanes * rounds                 # 12 chains of `lanes` multiply-adds a round
    best, done, started = float("inf"), 0, time.perf_counter()
    while done < tries or time.perf_counter() - started < min_time:
        t = time.perf_counter()
        _fma_chains(x, rounds)
        best = min(best, time.perf_counter() - t)
        done += 1
    return flops / best / 1e9


def seconds_since_process_start():
    """Wall time since this process started (Linux /proc; elsewhere since this module was imported)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


def peak_rss_mb():
    """The process's peak resident set size so far, in MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    import resource
    import sys
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def check_out_dir(ap, out):
    """ap.error unless the --out folder exists or can be made, and can be written to: checked as the
    command line is read, not after minutes of measuring that would then be lost."""
    if os.path.exists(out) and not os.path.isdir(out):
        ap.error(f"--out {out} is a file, not a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        ap.error(f"--out {out}: cannot make that folder ({e.strerror})")
    if not os.access(out, os.W_OK | os.X_OK):
        ap.error(f"--out {out}: the folder is not writable")


def write_csv(path, rows):
    """Write a list of dicts (all with the first row's keys) as CSV, atomically; floats get 6 significant digits."""
    def write(f):
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    path = Path(path)
    write_atomic(path, write, mode="w", newline="")
    return path


def format_table(rows, columns=None):
    """A plain-text table of a list of dicts (floats to 4 significant digits)."""
    columns = columns or list(rows[0])
    cells = [[f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(row) for row in cells])
