"""How many threads nanotorch uses.

At batch 4 the matrix products are small and a BLAS library's own threads mostly wait for each
other (measured: a training step got slower with two OpenBLAS threads than with one, and 7x
slower when another process was busy). So BLAS always gets one thread; the thread count goes to
Numba's kernels and to evaluation, which runs batches side by side (mnist.evaluate.predict_logits).
Running Conv2d's weight gradient on a second thread beside its input gradient was tried and gained
2%: the hand-over between threads costs as much as the overlap saves at these sizes.
"""
import numba
from threadpoolctl import threadpool_limits

_blas_limits = None


def set_num_threads(n):
    """Use n threads for Numba kernels and evaluation; BLAS gets one (see above)."""
    global _blas_limits
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    _blas_limits = threadpool_limits(limits=1, user_api="blas")


def get_num_threads():
    return numba.get_num_threads()
