"""Fixtures shared by the test files."""
import signal
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


@pytest.fixture(autouse=True)
def _sigint_handled_as_python_handles_it():
    """Ctrl-C as a terminal's Python gets it, whatever the suite was started with: under a shell that
    started it ignoring SIGINT (a job a script starts with &), mnist.train would rightly keep ignoring
    the SIGINTs that the tests send it. (A subprocess gets SIGINT's default action: only an ignored
    signal passes through exec.)"""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
