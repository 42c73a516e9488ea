"""How many threads nanotorch uses: Numba's kernels, the BLAS behind NumPy's matmul, and the
background thread that computes convolution weight gradients during the backward (background.py).

``set_num_threads(n)``: with n >= 2 the background thread is on and each of the two threads gets
n // 2 BLAS threads (one each on a 2-core machine); with n = 1 everything runs on the calling thread.

Measured on a 2-core virtual machine, a training step at batch 4 took 2.70 ms with two BLAS threads
and 2.98 ms with one when the machine was quiet, but 4.0-4.4 ms with two when its host was busier,
and 7x slower with another process running: a BLAS library's threads spin while they wait. So
each thread gets one BLAS thread on a 2-core machine. Numba's parallel loops (prange) on top of two
BLAS threads made a step 30x slower: the two thread pools spin against each other.
Running Conv2d's weight gradient on a second Python thread beside its input gradient, waiting for
it in each layer, gained 2%: a hand-over between threads costs ~40 us. Queuing all of them and
waiting once, when a gradient is read, made a step 2-9% faster (nanotorch/background.py), and
that thread does not spin: it sleeps until it is given work.
"""
import numba
from threadpoolctl import threadpool_limits

from nanotorch import background

_blas_limits = None


def set_num_threads(n):
    """Use n threads (process-wide): the background gradient thread when n >= 2, n // 2 BLAS threads
    per thread (at least one), n for Numba."""
    global _blas_limits
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    _blas_limits = threadpool_limits(limits=max(1, n // 2), user_api="blas")
    background.enable(n >= 2)


def get_num_threads():
    return numba.get_num_threads()
