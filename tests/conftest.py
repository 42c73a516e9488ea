"""Fixtures shared by the test files."""
import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id (with its parameters): a test draws the same inputs
    whichever tests ran before it, so a failure reproduces alone with -k."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
