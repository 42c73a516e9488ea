"""Optimisers and learning-rate schedulers with PyTorch's names, defaults and numbers."""
from nanotorch.optim import lr_scheduler
from nanotorch.optim.adam import Adam, AdamW
from nanotorch.optim.optimizer import Optimizer, flatten_state_dict, unflatten_state_dict
from nanotorch.optim.sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler", "flatten_state_dict", "unflatten_state_dict"]
