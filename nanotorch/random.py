"""The global random generator used for initialisation and dropout.

``manual_seed(s)`` makes a run repeatable, like ``torch.manual_seed``; the numbers
differ from PyTorch's (different generator), the distributions are the same.
"""
import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed):
    """Reseed the global generator; returns it."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def default_generator():
    return _generator
