"""The global random generator used for initialisation and dropout.

``manual_seed(s)`` makes a run repeatable, like ``torch.manual_seed``; the numbers
differ from PyTorch's (different generator), the distributions are the same.
"""
import numbers

import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed):
    """Reseed the global generator; returns it. The seeds are torch.manual_seed's: an int in
    [-2**63, 2**64), a negative one taken modulo 2**64 (-1 is the seed 2**64 - 1), as torch's
    ``initial_seed()`` shows (NumPy's generators take non-negative seeds only)."""
    global _generator
    if not isinstance(seed, numbers.Integral):
        raise TypeError(f"manual_seed: seed must be an int, got {seed!r} ({type(seed).__name__})")
    if not -2**63 <= seed < 2**64:
        raise ValueError(f"manual_seed: seed must be in [-2**63, 2**64), as torch.manual_seed's, got {seed}")
    _generator = np.random.default_rng(int(seed) % 2**64)
    return _generator


def default_generator():
    return _generator
