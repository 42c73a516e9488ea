"""How many threads nanotorch uses: Numba's kernels and the BLAS behind NumPy's matmul.

Measured on a 2-core virtual machine, a training step at batch 4 took 2.70 ms with two BLAS threads
and 2.98 ms with one when the machine was quiet, but 4.0-4.4 ms with two when its host was busier,
and 7x slower with another process running: a BLAS library's threads spin while they wait. So
mnist.train uses one by default. Numba's parallel loops (prange) on top of two BLAS threads made
a step 30x slower: the two thread pools spin against each other.
Running Conv2d's weight gradient on a second Python thread beside its input gradient was also tried
and gained 2%: at these sizes the hand-over between threads costs as much as the overlap saves.
"""
import numba
from threadpoolctl import threadpool_limits

_blas_limits = None


def set_num_threads(n):
    """Use n threads for Numba kernels and for BLAS (process-wide)."""
    global _blas_limits
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    _blas_limits = threadpool_limits(limits=n, user_api="blas")


def get_num_threads():
    return numba.get_num_threads()
