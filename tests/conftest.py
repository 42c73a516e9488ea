"""Fixtures shared by the test files."""
import zlib

import numba
import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

from nanotorch import threads


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id (with its parameters): a test draws the same inputs
    whichever tests ran before it, so a failure reproduces alone with -k."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def restore_threads():
    """Puts back everything set_num_threads changes: nanotorch's state (whether and which thread
    spreads its kernels), Numba's thread count and the BLAS libraries' thread counts."""
    state, numba_threads = dict(threads._state), numba.get_num_threads()
    blas = [(lib, lib.num_threads) for lib in ThreadpoolController().select(user_api="blas").lib_controllers]
    yield
    numba.set_num_threads(numba_threads)
    for lib, n in blas:
        lib.set_num_threads(n)
    threads._state.update(state)
