"""Stochastic gradient descent with momentum, dampening, weight decay and Nesterov (torch.optim.SGD)."""

import numpy as np

from nanotorch.kernels.optim import sgd_update
from nanotorch.optim.optimizer import Optimizer


class SGD(Optimizer):
    r"""PyTorch's SGD, step for step and bit for bit. For each parameter p with a gradient, at step t:

        g   = -grad   if maximize   else   grad
        g   = g + weight_decay * p                           (if weight_decay != 0)
        buf = g                                              (if momentum != 0, first step)
        buf = momentum * buf + (1 - dampening) * g           (if momentum != 0, later steps)
        g   = g + momentum * buf   if nesterov   else   buf  (if momentum != 0)
        p   = p - lr * g

    with each ``x + a * y`` rounded once (a fused multiply-add, as PyTorch's CPU ``add_(y, alpha=a)``
    computes it; kernels/optim.py), so that float32 runs give PyTorch's bits too.
    This is PyTorch's form: the learning rate multiplies the whole buffer, so changing lr
    mid-run (a scheduler) rescales past momentum too (unlike Sutskever's ``v = m v - lr g``).
    Parameters whose ``grad`` is None are skipped and keep their buffer. ``p.data`` is
    updated in place, so its dtype and any views of it are kept.

    Args:
        params: iterable of Parameters, or of dicts (parameter groups, see ``Optimizer``).
        lr: learning rate, >= 0. Default: 1e-3.
        momentum: momentum factor, >= 0. Default: 0.
        dampening: dampening for momentum. Default: 0.
        weight_decay: L2 penalty coefficient, >= 0. Default: 0.
        nesterov: Nesterov momentum; needs momentum > 0 and dampening == 0 (checked on these
            arguments, as PyTorch checks them: a group's own momentum may be 0, which runs plain SGD
            for it, as does OneCycleLR's base_momentum=0 at the peak). Default: False.
        maximize: step up the gradient (maximise the objective): g = -grad, above. Default: False.
        differentiable: PyTorch's; only its default, False, is implemented.
        foreach, fused: choose among PyTorch's implementations of this same update; nanotorch has
            one (a compiled loop), so any value gives the numbers above.

    The momentum buffers live in ``self.state[p]['momentum_buffer']`` (same shape and dtype as p)
    and are saved by ``state_dict()``.
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused)
        self._check_group(defaults)                     # (the keys of PyTorch's param_groups, in its order)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"SGD: nesterov=True requires momentum > 0 and dampening == 0, got "
                             f"momentum={momentum}, dampening={dampening}")
        super().__init__(params, defaults)

    def _check_group(self, group, scheduled=False):
        self._check_hyperparameters(
            group, numeric=("lr", "momentum", "dampening", "weight_decay"),
            non_negative=(("lr", "learning rate"), ("momentum", "momentum factor"), ("weight_decay", "weight decay")),
            unimplemented=("differentiable",),                           # (a key of a torch.optim.SGD state_dict)
            scheduled=scheduled)

    def step(self, closure=None):
        """One update of every parameter that has a gradient (see the class docstring).

        ``closure``, if given, is called first and its result (the loss) returned, as in PyTorch.
        """
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            if group.get("differentiable"):      # set in a group since: refused, not ignored
                self._check_group(group, scheduled=True)
            lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
            weight_decay, nesterov, maximize = group["weight_decay"], group["nesterov"], group.get("maximize", False)
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = None
                if momentum != 0:
                    state = self.state.setdefault(p, {})
                    buf = state.get("momentum_buffer")
                first = buf is None
                if momentum != 0 and first:
                    # PyTorch starts the buffer at g, not at 0: no bias towards zero at step 1.
                    buf = state["momentum_buffer"] = np.empty_like(p.data)
                args = (lr, momentum, dampening, weight_decay, nesterov, first)
                # The loop takes contiguous arrays of p's dtype: the arrays themselves when they are
                # (always, for the flat parameters of nn.utils.flatten_parameters), else copies written back.
                dtype = p.data.dtype
                data, grad = np.ascontiguousarray(p.data, dtype), np.ascontiguousarray(p.grad, dtype)
                if maximize:
                    grad = -grad          # PyTorch's g = -grad, a new array (p.grad is kept); exact, so still its bits
                buf_ = data if buf is None else np.ascontiguousarray(buf, dtype)   # without momentum, never read
                sgd_update(data.reshape(-1), grad.reshape(-1), buf_.reshape(-1), *args)
                if data is not p.data:
                    p.data[...] = data
                if buf is not None and buf_ is not buf:
                    buf[...] = buf_
        return loss
