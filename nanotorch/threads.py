"""How many threads nanotorch uses: Numba's kernels, the BLAS behind NumPy's matmul, and evaluation.

Measured on an idle 2-core machine, a training step at batch 4 took 2.70 ms with two BLAS threads
and 2.98 ms with one. But a BLAS library's threads spin while they wait, and with another busy
process on the machine two threads made the step 7x slower: when the machine is shared, use one.
Running Conv2d's weight gradient on a second Python thread beside its input gradient was also tried
and gained 2%: at these sizes the hand-over between threads costs as much as the overlap saves.
"""
import numba
from threadpoolctl import threadpool_limits

_blas_limits = None


def set_num_threads(n):
    """Use n threads for Numba kernels, for BLAS and for evaluation batches (process-wide)."""
    global _blas_limits
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    _blas_limits = threadpool_limits(limits=n, user_api="blas")


def get_num_threads():
    return numba.get_num_threads()
