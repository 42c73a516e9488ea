"""How many threads nanotorch uses: Numba's threads for the big kernels, one BLAS thread.

``set_num_threads(n)``, like torch.set_num_threads: with n >= 2 the kernels that do most of a
step's work (the direct 3x3 convolution and its two gradients, padding, BatchNorm + GELU, max
pooling, the 3x3 im2col) split into independent tasks spread over n Numba threads
(nanotorch/kernels/tasks.py), on layers of at least MIN_PARALLEL_SIZE values (im2col counts its
columns: ``parallel()``). Until it is called, nanotorch's kernels run on the calling thread (and
NumPy's BLAS keeps its own default thread count). Results match one thread's to rounding, and a
given thread count gives the same bits on every run (tests/test_threads.py).

Only the thread that called set_num_threads spreads its kernels over threads (``parallel()``);
any other thread runs them alone, on its own core. mnist.evaluate relies on it: two threads
evaluate batches side by side, each on one core, which is faster than one thread whose kernels
fork and join on two cores. A forked child runs its kernels on its own thread for good, whatever
it asks for: GNU OpenMP, Numba's fastest thread pool here, terminates a forked child that enters
it once the parent has started it (which loading any of the kernels does), so the child never
enters it.

Numba is asked to prefer OpenMP (then TBB, then its own "workqueue"): its fork-join is the
cheapest here (~1.5 us; the workqueue pool's takes tens of microseconds), and the workqueue pool
cannot be entered by two threads at once.

The work is split inside each kernel, over Numba's threads, rather than handed between Python
threads: a hand-over between Python threads costs 40-60 us, against ~1.5 us for a fork-join. Below
MIN_PARALLEL_SIZE even a fork-join costs more than it saves (a BatchNorm + GELU of 28 channels of
4x4 planes runs slower on two threads than on one).

BLAS stays at one thread: Numba's OpenMP threads spin for a while after each kernel, and OpenBLAS
threads beside them compete for the same cores (evaluation ran several times slower). The im2col
convolutions of the MNIST model's layers on 7x7 and 4x4 planes and the Linear layers are small.
"""
import os
import threading

import numba
from threadpoolctl import threadpool_limits

if "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:                  # the user's choice wins
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]   # read when the pool starts
_state = {"parallel": False, "owner": None, "forked": False}
MIN_PARALLEL_SIZE = 8192


def set_num_threads(n):
    """Use n threads: the calling thread's big kernels spread over n Numba threads when n >= 2;
    BLAS on one thread. n above NUMBA_NUM_THREADS (by default the number of cores) is capped to it
    without an error, as torch.set_num_threads does not refuse large n; get_num_threads() tells the
    number used."""
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    threadpool_limits(limits=1, user_api="blas")       # stays in force: nothing restores the old limits
    _state["parallel"], _state["owner"] = n >= 2 and not _state["forked"], threading.get_ident()


def get_num_threads():
    return numba.get_num_threads() if _state["parallel"] else 1


def parallel(size):
    """Whether a kernel called from this thread spreads over Numba's threads. ``size`` is the size
    of the work the kernel splits, usually the layer's input (for a convolution, the smaller of
    its input and output, so that the 1 -> 4 channel layer stays on one thread; for the 3x3
    im2col, its columns, nine times its input, so that the 7x7 and 4x4 layers' im2col does
    spread): not below ``MIN_PARALLEL_SIZE``, where a fork-join costs more than it saves."""
    return _state["parallel"] and size >= MIN_PARALLEL_SIZE and threading.get_ident() == _state["owner"]


def _forget_in_child():
    """A forked child runs its kernels alone for good (see the module docstring)."""
    _state["forked"] = True
    _state["parallel"] = False


os.register_at_fork(after_in_child=_forget_in_child)
