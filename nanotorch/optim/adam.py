"""Adam and AdamW (torch.optim.Adam, torch.optim.AdamW): PyTorch's algorithm, operation for operation."""

import numpy as np

from nanotorch.optim.optimizer import Optimizer


def adam_update(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
                decoupled_weight_decay):
    r"""One Adam step in place on arrays of one shape and dtype, PyTorch's operations in its order
    (torch.optim.adam._single_tensor_adam, the CPU path), for step t = ``step`` (already counted, >= 1),
    with g the gradient (its negation with maximize, which the caller passes):

        p   = p * (1 - lr * weight_decay)                 (decoupled, AdamW; if weight_decay != 0)
        g   = g + weight_decay * p                        (coupled, Adam's L2; if weight_decay != 0)
        m   = lerp(m, g, 1 - beta1)                       = beta1 * m + (1 - beta1) * g
        v   = v * beta2 + (1 - beta2) * g * g
        vmax = max(vmax, v)                               (amsgrad: max_exp_avg_sq given, else vmax = v)
        p   = p - lr / (1 - beta1^t) * m / (sqrt(vmax) / sqrt(1 - beta2^t) + eps)

    i.e. p -= lr * m_hat / (sqrt(v_hat) + eps) with the bias corrections m_hat = m / (1 - beta1^t),
    v_hat = vmax / (1 - beta2^t) (vmax = v without amsgrad), arranged as PyTorch arranges them (eps
    added after dividing by sqrt(1 - beta2^t), as its docs' pseudo-code writes it). ``g`` is not changed.
    p, g, exp_avg, exp_avg_sq, max_exp_avg_sq: arrays of p's shape (max_exp_avg_sq None without amsgrad).
    """
    if weight_decay != 0:
        if decoupled_weight_decay:
            p *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * p
    # exp_avg.lerp_(g, w), as ATen's lerp computes it: from the nearer end, for accuracy.
    w = 1 - beta1
    if abs(w) < 0.5:
        exp_avg += w * (g - exp_avg)
    else:
        exp_avg[...] = g - (g - exp_avg) * (1 - w)
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * g * g                    # addcmul_(g, g, value=1 - beta2)

    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2 ** 0.5
    if max_exp_avg_sq is not None:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        denom = np.sqrt(max_exp_avg_sq) / bias_correction2_sqrt + eps
    else:
        denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
    p += -step_size * exp_avg / denom                    # addcdiv_(exp_avg, denom, value=-step_size)


class Adam(Optimizer):
    r"""PyTorch's Adam (Kingma & Ba, 2014), with its L2 weight decay, AMSGrad and bias corrections:
    ``adam_update`` above for each parameter that has a gradient. Parameters whose ``grad`` is
    None are skipped: their step count and moments stay as they were. ``p.data`` is updated in
    place, so its dtype and any views of it are kept.

    Args:
        params: iterable of Parameters, or of dicts (parameter groups, see ``Optimizer``).
        lr: learning rate, >= 0. Default: 1e-3.
        betas: (beta1, beta2), the decay rates of the moments, two floats in [0, 1) (as PyTorch,
            ints are refused). Default: (0.9, 0.999).
        eps: added to the denominator, >= 0. Default: 1e-8.
        weight_decay: >= 0; added to the gradient as weight_decay * p (L2), or with
            decoupled_weight_decay=True shrinks p by (1 - lr * weight_decay) (AdamW). Default: 0.
        amsgrad: divide by the running maximum of the second moment (Reddi et al., 2018). Default: False.
        decoupled_weight_decay: AdamW's weight decay (Loshchilov & Hutter, 2019). Default: False.
        maximize: step up the gradient (maximise the objective): g = -grad before everything in
            ``adam_update``, as PyTorch. Default: False.
        capturable, differentiable: PyTorch's; only their default, False, is implemented.
        foreach, fused: choose among PyTorch's implementations of this same update; nanotorch has
            one (NumPy), so any value gives the numbers above (both True is refused, as PyTorch refuses it).

    State per parameter, PyTorch's keys (``self.state[p]``, saved by ``state_dict()``):
        step            the number of steps taken with a gradient (a float, as PyTorch's float32 tensor)
        exp_avg         first moment m, p's shape and dtype
        exp_avg_sq      second moment v
        max_exp_avg_sq  running maximum of v (amsgrad only)
    """

    _scalar_state = ("step",)      # state entries that are numbers, not arrays of the parameter's shape

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False):
        # (the keys of PyTorch's param_groups, in its order)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable, differentiable=differentiable,
                        fused=fused, decoupled_weight_decay=decoupled_weight_decay)
        self._check_group(defaults)
        if fused and foreach:
            raise RuntimeError(f"{type(self).__name__}: `fused` and `foreach` cannot be `True` together.")
        defaults["betas"] = tuple(betas)
        super().__init__(params, defaults)

    def _check_group(self, group, scheduled=False):
        name = type(self).__name__
        self._check_hyperparameters(group, numeric=("lr", "eps", "weight_decay"),
                                    non_negative=(("lr", "learning rate"), ("eps", "epsilon"),
                                                  ("weight_decay", "weight decay")), scheduled=scheduled)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{name}: betas must be a pair of floats (beta1, beta2), such as (0.9, 0.999), "
                            f"got {betas!r}")
        if not all(isinstance(b, (float, np.floating)) for b in betas):     # (PyTorch refuses ints too)
            raise ValueError(f"{name}: betas must be two floats (beta1, beta2), such as (0.9, 0.999), got {betas!r}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0 and not (scheduled and i == 0):    # (beta1: OneCycleLR's momentum, which
                # its linear anneal takes past max_momentum at its last step: see _check_hyperparameters)
                raise ValueError(f"{name}: invalid beta parameter at index {i}: {beta} (expected a value in [0, 1))")
        self._check_hyperparameters(group, unimplemented=("capturable", "differentiable"))

    def load_state_dict(self, state_dict):
        """As ``Optimizer.load_state_dict``; a group saved without one of PyTorch's later keys (amsgrad,
        decoupled_weight_decay, ...) gets its default, as PyTorch's ``__setstate__`` gives it."""
        defaults = dict(amsgrad=False, maximize=False, foreach=None, capturable=False, differentiable=False,
                        fused=None, decoupled_weight_decay=False)
        groups = []
        for i, group in enumerate(state_dict["param_groups"]):
            missing = [key for key in ("lr", "betas", "eps", "weight_decay") if key not in group]
            if missing:
                raise ValueError(f"{type(self).__name__}.load_state_dict: param_groups[{i}] has no {missing}: "
                                 "is it the state_dict of another optimiser?")
            groups.append({**defaults, **group})
            if isinstance(groups[-1]["betas"], list):                # (unflatten_state_dict gives lists)
                groups[-1]["betas"] = tuple(groups[-1]["betas"])
        super().load_state_dict({**state_dict, "param_groups": groups})

    def step(self, closure=None):
        """One update of every parameter that has a gradient (see ``adam_update``).

        ``closure``, if given, is called first and its result (the loss) returned, as in PyTorch.
        """
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            self._check_group(group, scheduled=True)   # a hyper-parameter set in a group since: refused, not ignored
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.setdefault(p, {})
                if not state:                   # PyTorch's lazy initialisation, at a parameter's first gradient
                    state["step"] = 0.0
                    state["exp_avg"] = np.zeros_like(p.data)
                    state["exp_avg_sq"] = np.zeros_like(p.data)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = np.zeros_like(p.data)
                if group["amsgrad"] and "max_exp_avg_sq" not in state:
                    raise ValueError(f"{type(self).__name__}: amsgrad is on but parameter {p.data.shape} has no "
                                     "'max_exp_avg_sq' (its state began without amsgrad): amsgrad cannot be "
                                     "switched on mid-run")
                state["step"] += 1
                grad = np.asarray(p.grad, dtype=p.data.dtype)
                if grad.shape != p.data.shape:
                    raise ValueError(f"{type(self).__name__}: a gradient of shape {grad.shape} for a parameter "
                                     f"of shape {p.data.shape}")
                if group["maximize"]:
                    grad = -grad                # PyTorch's g = -grad at the start of the step (p.grad is kept)
                adam_update(p.data, grad, state["exp_avg"], state["exp_avg_sq"],
                            state["max_exp_avg_sq"] if group["amsgrad"] else None, state["step"], group["lr"],
                            beta1, beta2, group["eps"], group["weight_decay"], group["decoupled_weight_decay"])
        return loss


class AdamW(Adam):
    r"""PyTorch's AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019),
    ``p = p * (1 - lr * weight_decay)`` before the Adam step, in place of adding weight_decay * p
    to the gradient. Same arguments as ``Adam`` (without decoupled_weight_decay, always True here),
    but weight_decay defaults to 1e-2.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)

    def load_state_dict(self, state_dict):
        """As ``Adam.load_state_dict``; the weight decay stays decoupled whatever was saved, as in PyTorch."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
