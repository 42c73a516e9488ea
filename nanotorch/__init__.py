"""nanotorch: a deep-learning mini-framework in NumPy with hand-written backprop."""
from nanotorch import nn, optim
from nanotorch.random import manual_seed, default_generator
from nanotorch.gradcheck import gradcheck, gradcheck_directional
from nanotorch.grad_mode import is_grad_enabled, no_grad
from nanotorch.threads import get_num_threads, set_num_threads

__all__ = ["nn", "optim", "manual_seed", "default_generator", "gradcheck", "gradcheck_directional", "set_num_threads",
           "get_num_threads", "no_grad", "is_grad_enabled"]
__version__ = "0.1.0"
