"""How many threads nanotorch uses: Numba's parallel loops and the BLAS behind NumPy's matmul.

At batch 4 the matrix products are small, and a second BLAS thread mostly waits for the first:
with another busy process on a 2-core machine, OpenBLAS's spinning threads made a training step
7x slower than one thread did. The training script therefore sets the thread count explicitly.
"""
import numba
from threadpoolctl import threadpool_limits

_limits = None


def set_num_threads(n):
    """Use n threads for Numba kernels and for BLAS (process-wide, until set again)."""
    global _limits
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    _limits = threadpool_limits(limits=n, user_api="blas")


def get_num_threads():
    return numba.get_num_threads()
