"""Learning-rate schedulers (torch.optim.lr_scheduler): they rewrite ``group['lr']`` between steps.

Call ``scheduler.step()`` after ``optimizer.step()``: once per batch for OneCycleLR, once per
epoch (as usually used) for StepLR, CosineAnnealingLR, LinearLR and ExponentialLR. Building a
scheduler already writes the step-0 learning rate into the optimiser.

Resuming: build a fresh optimiser and scheduler, then ``optimizer.load_state_dict(...)``
(after building the scheduler, or the scheduler would overwrite the loaded lr) and
``scheduler.load_state_dict(...)``. The scheduler's state_dict holds only ints, floats, bools,
strings and lists/dicts of them, so ``optim.flatten_state_dict`` can store it without pickle.
"""
import math
import numbers
import warnings

from nanotorch.optim.optimizer import Optimizer, is_number

EPOCH_DEPRECATION_WARNING = (
    "The epoch parameter in `scheduler.step()` was not necessary and is being deprecated where possible. "
    "Please use `scheduler.step()` to step the scheduler. (As in PyTorch, step(epoch) sets last_epoch to "
    "epoch and computes that step's learning rates.)")


class LRScheduler:
    """Base class: ``last_epoch`` is the step the schedule is at, which each ``step()`` advances by one
    (``step(epoch)`` sets it); ``get_lr()`` gives that step's lrs.

    At construction (``last_epoch=-1``) each group's ``'initial_lr'`` is set to its current lr
    (unless a subclass set it already) and one ``step()`` is taken, so ``last_epoch`` is 0 and
    the optimiser holds the step-0 learning rates. During that step ``_is_initial`` is True:
    a scheduler whose ``get_lr()`` works from the current lrs (CosineAnnealingLR's, ExponentialLR's) keeps them.

    ``step(epoch)`` takes a subclass's ``_get_closed_form_lr()`` where it has one, as PyTorch does.
    """

    _is_initial = False

    def __init__(self, optimizer, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a nanotorch.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"param_groups[{i}] has no 'initial_lr': to resume with last_epoch="
                                   f"{last_epoch}, load the optimiser's state_dict first")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self):
        """The learning rates for step ``self.last_epoch``, one per group (subclasses implement)."""
        raise NotImplementedError(f"{type(self).__name__}.get_lr")

    def step(self, epoch=None):
        """Advance one step and write the new learning rates into the optimiser.

        ``epoch``, deprecated in PyTorch (which warns with EPOCH_DEPRECATION_WARNING, as this does),
        jumps to that step instead: last_epoch = epoch, and the lrs of ``_get_closed_form_lr()``
        there, or for a scheduler without a closed form (OneCycleLR) those get_lr() gives, as PyTorch.
        """
        if epoch is not None:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
            if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral):
                raise TypeError(f"{type(self).__name__}.step: epoch must be an int (the step to go to), got {epoch!r}")
        step = self.last_epoch + 1 if epoch is None else epoch
        self._check_step(step)
        self._step_count += 1
        self.last_epoch = step
        closed_form = getattr(self, "_get_closed_form_lr", None)
        lrs = closed_form() if epoch is not None and closed_form is not None else self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _check_step(self, step):
        """Raise, before anything changes, for a step the schedule does not have (subclasses)."""

    def get_last_lr(self):
        """The learning rates the last ``step()`` (or the constructor) wrote, one per group."""
        return list(self._last_lr)

    def state_dict(self):
        """Every attribute except the optimiser, as PyTorch saves it."""
        return {key: value for key, value in self.__dict__.items() if key != "optimizer"}

    def load_state_dict(self, state_dict):
        self.__dict__.update(state_dict)


def _per_group(name, optimizer, value):
    """A float or one value per parameter group -> a list with one value per group."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(optimizer.param_groups):
            raise ValueError(f"{name} has {len(value)} values, expected one per parameter group "
                             f"({len(optimizer.param_groups)})")
        return list(value)
    return [value] * len(optimizer.param_groups)


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


class OneCycleLR(LRScheduler):
    r"""The 1cycle policy (Smith & Topin, "Super-Convergence", 2017), PyTorch's OneCycleLR exactly.

    The lr rises from ``initial_lr = max_lr / div_factor`` to ``max_lr``, then falls to
    ``min_lr = initial_lr / final_div_factor``; momentum moves the opposite way between
    ``max_momentum`` and ``base_momentum``. With T = total_steps and pct_start = s:

        two phases (default)   step 0 .. sT-1      : initial_lr -> max_lr,  max_momentum -> base_momentum
                               sT-1 .. T-1         : max_lr -> min_lr,      base_momentum -> max_momentum
        three_phase=True       step 0 .. sT-1      : initial_lr -> max_lr,  max_momentum -> base_momentum
                               sT-1 .. 2sT-2       : max_lr -> initial_lr,  base_momentum -> max_momentum
                               2sT-2 .. T-1        : initial_lr -> min_lr,  max_momentum (constant)

    (the phase ends are floats: ``float(pct_start * T) - 1``). Within a phase running from step
    a to step b, with pct = (t - a) / (b - a), a value goes from ``start`` to ``end`` by

        cos:     end + (start - end) / 2 * (cos(pi * pct) + 1)
        linear:  (end - start) * pct + start

    evaluated in this order, so the floats equal PyTorch's bit for bit. ``step()`` may be
    called ``total_steps`` times; one more raises ValueError.

    A phase that ends where it starts has no pct (0 / 0): the warm-up when pct_start * total_steps
    is 1 (at the constructor's step 0), the last phase when pct_start is 1.0 (at step total_steps),
    or in three phases when 2 * pct_start * total_steps - 2 == total_steps - 1. PyTorch raises a
    bare ZeroDivisionError at the step that falls in it; so does this, with a message naming the
    empty phase and the fix, and, as for the ValueError, before the schedule moves.

    Args:
        optimizer: the wrapped optimiser.
        max_lr: peak learning rate, a float or one per parameter group.
        total_steps: number of steps in the cycle; or give ``epochs`` and ``steps_per_epoch``
            (total_steps = epochs * steps_per_epoch). total_steps takes precedence.
        pct_start: fraction of the cycle spent raising the lr, a float in [0, 1] (as PyTorch, ints
            such as 1 are refused: 1.0, and so is a np.float32). Default: 0.3.
        anneal_strategy: 'cos' or 'linear'. Default: 'cos'.
        cycle_momentum: cycle ``group['momentum']`` (Adam's beta1, ``group['betas'][0]``) inversely
            to the lr. Default: True.
        base_momentum, max_momentum: momentum at the lr peak and at the ends (float or per group).
            Defaults: 0.85, 0.95.
        div_factor: initial_lr = max_lr / div_factor. Default: 25.
        final_div_factor: min_lr = initial_lr / final_div_factor. Default: 1e4.
        three_phase: use the three-phase schedule above. Default: False.
        last_epoch: index of the last step taken, to resume; -1 starts afresh. Default: -1.

    The per-group values ``initial_lr``, ``max_lr``, ``min_lr``, ``max_momentum`` and
    ``base_momentum`` are stored in the optimiser's param_groups, as in PyTorch.
    """

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85,
                 max_momentum=0.95, div_factor=25.0, final_div_factor=1e4, three_phase=False,
                 last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a nanotorch.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer

        if total_steps is not None:
            if not _is_int(total_steps) or total_steps <= 0:
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
            self.total_steps = int(total_steps)
        elif epochs is not None and steps_per_epoch is not None:
            if not _is_int(epochs) or epochs <= 0:
                raise ValueError(f"Expected positive integer epochs, but got {epochs}")
            if not _is_int(steps_per_epoch) or steps_per_epoch <= 0:
                raise ValueError(f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}")
            self.total_steps = int(epochs) * int(steps_per_epoch)
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")

        if not isinstance(pct_start, float):     # (PyTorch refuses ints, even 0 and 1, and NumPy's float32;
            # np.float64 is a float subclass, taken by both)
            raise ValueError(f"OneCycleLR: pct_start must be a float between 0 and 1, such as 0.3 or 1.0, "
                             f"got {pct_start!r}")
        if not 0 <= pct_start <= 1:
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy!r}")
        self._anneal_func_type = anneal_strategy

        # Each phase names the param_group keys it anneals between (PyTorch's layout).
        if three_phase:
            self._schedule_phases = [
                dict(end_step=float(pct_start * self.total_steps) - 1, start_lr="initial_lr",
                     end_lr="max_lr", start_momentum="max_momentum", end_momentum="base_momentum"),
                dict(end_step=float(2 * pct_start * self.total_steps) - 2, start_lr="max_lr",
                     end_lr="initial_lr", start_momentum="base_momentum", end_momentum="max_momentum"),
                dict(end_step=self.total_steps - 1, start_lr="initial_lr",
                     end_lr="min_lr", start_momentum="max_momentum", end_momentum="max_momentum"),
            ]
        else:
            self._schedule_phases = [
                dict(end_step=float(pct_start * self.total_steps) - 1, start_lr="initial_lr",
                     end_lr="max_lr", start_momentum="max_momentum", end_momentum="base_momentum"),
                dict(end_step=self.total_steps - 1, start_lr="max_lr",
                     end_lr="min_lr", start_momentum="base_momentum", end_momentum="max_momentum"),
            ]

        max_lrs = _per_group("max_lr", optimizer, max_lr)
        if last_epoch == -1:
            for group, group_max_lr in zip(optimizer.param_groups, max_lrs):
                group["initial_lr"] = group_max_lr / div_factor
                group["max_lr"] = group_max_lr
                group["min_lr"] = group["initial_lr"] / final_div_factor

        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            # Only optimisers without a momentum hyper-parameter are refused; SGD always has one
            # (0 by default) and gets max_momentum, as in PyTorch. Adam's is beta1 (betas[0]).
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ValueError(f"cycle_momentum=True needs an optimiser with momentum or beta1, "
                                 f"{type(optimizer).__name__} has neither: pass cycle_momentum=False")
            self.use_beta1 = "betas" in optimizer.defaults
            max_momentums = _per_group("max_momentum", optimizer, max_momentum)
            base_momentums = _per_group("base_momentum", optimizer, base_momentum)
            if last_epoch == -1:
                for group, m_max, m_base in zip(optimizer.param_groups, max_momentums, base_momentums):
                    self._set_momentum(group, m_max)
                    group["max_momentum"] = m_max
                    group["base_momentum"] = m_base

        super().__init__(optimizer, last_epoch)

    def _set_momentum(self, group, momentum):
        """SGD's ``momentum``, or Adam's beta1 (``betas[0]``; beta2 kept), as PyTorch's ``use_beta1``."""
        if getattr(self, "use_beta1", False):
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum

    def _anneal(self, start, end, pct):
        if self._anneal_func_type == "cos":
            cos_out = math.cos(math.pi * pct) + 1
            return end + (start - end) / 2.0 * cos_out
        return (end - start) * pct + start

    def _phase_at(self, step_num):
        """The phase step ``step_num`` falls in and how far through it the step is: (phase, pct).

        The first phase whose end_step the step does not pass; the last phase also takes step
        total_steps (pct slightly > 1), as PyTorch allows. An empty phase (end_step == its start)
        raises ZeroDivisionError, PyTorch's type, saying which phase and what to change."""
        phases = self._schedule_phases
        start_step = 0.0
        for i, phase in enumerate(phases):
            if step_num <= phase["end_step"] or i == len(phases) - 1:
                break
            start_step = phase["end_step"]
        if phase["end_step"] == start_step:
            raise self._empty_phase_error(step_num, i, start_step)
        return phase, (step_num - start_step) / (phase["end_step"] - start_step)

    def _empty_phase_error(self, step_num, i, start_step):
        """The ZeroDivisionError for step ``step_num`` in phase ``i``, which starts and ends at ``start_step``."""
        last = len(self._schedule_phases) - 1
        names = (["warm-up phase (initial_lr -> max_lr)", "annealing phase (max_lr -> min_lr)"] if last == 1 else
                 ["warm-up phase (initial_lr -> max_lr)", "second phase (max_lr -> initial_lr)",
                  "annealing phase (initial_lr -> min_lr)"])
        ends = ["float(pct_start * total_steps) - 1", "float(2 * pct_start * total_steps) - 2"][:last]
        ends.append("total_steps - 1")
        starts = "at step 0" if i == 0 else f"where the phase before it ends, at step {ends[i - 1]} = {start_step},"
        fix = ("raise pct_start or total_steps, so that pct_start * total_steps > 1" if i < last else
               "lower pct_start, so that " + ("pct_start < 1.0" if last == 1 else
                                              "2 * pct_start * total_steps - 2 < total_steps - 1"))
        return ZeroDivisionError(
            f"OneCycleLR: step {step_num} falls in the {names[i]}, which is empty: it starts {starts} and ends at "
            f"step {ends[i]} = {self._schedule_phases[i]['end_step']} (total_steps={self.total_steps}), so the "
            f"step's fraction of it is 0 / 0 (PyTorch raises a bare ZeroDivisionError here). To fix it, {fix}.")

    def get_lr(self):
        """The lrs for step ``last_epoch``; with cycle_momentum, also writes each group's momentum."""
        step_num = self.last_epoch
        if step_num > self.total_steps:
            raise ValueError(f"Tried to step {step_num} times. "
                             f"The specified number of total steps is {self.total_steps}")
        phase, pct = self._phase_at(step_num)
        lrs = []
        for group in self.optimizer.param_groups:
            lrs.append(self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct))
            if self.cycle_momentum:
                self._set_momentum(group, self._anneal(group[phase["start_momentum"]],
                                                       group[phase["end_momentum"]], pct))
        return lrs

    def _check_step(self, step):
        """A ValueError past ``total_steps``, as PyTorch's (which raises it after moving last_epoch there;
        this leaves the state as it was); and for a step(epoch) before the cycle's first. A step in an
        empty phase: PyTorch's ZeroDivisionError, here too before anything moves (see ``_phase_at``)."""
        if step < 0:
            raise ValueError(f"OneCycleLR.step: epoch must be in [0, total_steps={self.total_steps}], got {step}")
        if step > self.total_steps:
            raise ValueError(f"Tried to step {step} times. The specified number of total steps is {self.total_steps}")
        self._phase_at(step)


def _check_positive_int(name, value):
    if not _is_int(value) or value <= 0:
        raise ValueError(f"Expected positive integer {name}, but got {value!r}")


def _check_number(name, value):
    if not is_number(value):
        raise ValueError(f"{name} must be a number, got {value!r}")


class StepLR(LRScheduler):
    r"""PyTorch's StepLR: multiply each group's lr by ``gamma`` every ``step_size`` steps,

        lr_t = initial_lr * gamma ** (t // step_size)

    computed as PyTorch's step() computes it, from the current lr: ``lr * gamma`` when t is a
    positive multiple of step_size, else the lr unchanged (so an lr set by hand between steps
    carries on). ``step(epoch)`` takes the closed form above.

    Args:
        optimizer: the wrapped optimiser.
        step_size: steps (usually epochs) between decays, a positive int.
        gamma: multiplicative factor of the decay. Default: 0.1.
        last_epoch: index of the last step taken, to resume; -1 starts afresh. Default: -1.
    """

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        _check_positive_int("step_size", step_size)
        _check_number("gamma", gamma)
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return [group["lr"] for group in self.optimizer.param_groups]
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size) for base_lr in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    r"""PyTorch's CosineAnnealingLR (SGDR's cosine, Loshchilov & Hutter 2017, without restarts):

        lr_t = eta_min + (initial_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2

    from initial_lr at t = 0 to eta_min at t = T_max; past T_max it rises again (a period of
    2 T_max), as PyTorch's does. ``step()`` computes it as PyTorch does, from the current lr,

        lr_t = (1 + cos(pi t / T_max)) / (1 + cos(pi (t - 1) / T_max)) * (lr_{t-1} - eta_min) + eta_min

    except where that denominator is 0 (t - 1 = T_max, 3 T_max, ...), where
    lr_t = lr_{t-1} + (initial_lr - eta_min) * (1 - cos(pi / T_max)) / 2; so the floats are PyTorch's
    (they drift from the closed form by rounding), and an lr changed by hand between steps is
    annealed on from there. ``step(epoch)`` takes the closed form.

    Args:
        optimizer: the wrapped optimiser.
        T_max: steps (usually epochs) from initial_lr down to eta_min, a positive int.
        eta_min: the lowest lr. Default: 0.
        last_epoch: index of the last step taken, to resume; -1 starts afresh. Default: -1.
    """

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        _check_positive_int("T_max", T_max)
        _check_number("eta_min", eta_min)
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        groups = self.optimizer.param_groups
        if self._is_initial:
            return [group["lr"] for group in groups]
        # (PyTorch has one more case, _step_count == 1 and last_epoch > 0, which only its initial step
        # could reach, and that takes the case above.)
        if (self.last_epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [group["lr"] + (base_lr - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
                    for base_lr, group in zip(self.base_lrs, groups)]
        return [(1 + math.cos(math.pi * self.last_epoch / self.T_max))
                / (1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max))
                * (group["lr"] - self.eta_min) + self.eta_min
                for group in groups]

    def _get_closed_form_lr(self):
        return [self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base_lr in self.base_lrs]


class LinearLR(LRScheduler):
    r"""PyTorch's LinearLR (a linear warm-up, usually): the lr goes linearly from
    ``start_factor * initial_lr`` at t = 0 to ``end_factor * initial_lr`` at t = total_iters, then stays:

        lr_t = initial_lr * (start_factor + (end_factor - start_factor) * min(t, total_iters) / total_iters)

    ``step()`` computes it as PyTorch does, from the current lr (``lr_t = lr_{t-1} * (1 + (end_factor
    - start_factor) / (total_iters * start_factor + (t - 1) * (end_factor - start_factor)))``);
    ``step(epoch)`` takes the closed form.

    Args:
        optimizer: the wrapped optimiser.
        start_factor: factor of the lr at step 0, in (0, 1]. Default: 1/3.
        end_factor: factor of the lr from step total_iters on, in [0, 1]. Default: 1.
        total_iters: steps from start_factor to end_factor, a positive int. Default: 5.
        last_epoch: index of the last step taken, to resume; -1 starts afresh. Default: -1.
    """

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, last_epoch=-1):
        _check_number("start_factor", start_factor)
        _check_number("end_factor", end_factor)
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError("Starting multiplicative factor expected to be greater than 0 and less or equal to 1, "
                             f"got start_factor={start_factor}")
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError("Ending multiplicative factor expected to be between 0 and 1, "
                             f"got end_factor={end_factor}")
        _check_positive_int("total_iters", total_iters)
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        groups = self.optimizer.param_groups
        if self.last_epoch == 0:
            return [group["lr"] * self.start_factor for group in groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return [group["lr"] for group in groups]
        return [group["lr"] * (1.0 + (self.end_factor - self.start_factor)
                               / (self.total_iters * self.start_factor
                                  + (self.last_epoch - 1) * (self.end_factor - self.start_factor)))
                for group in groups]

    def _get_closed_form_lr(self):
        return [base_lr * (self.start_factor + (self.end_factor - self.start_factor)
                           * min(self.total_iters, self.last_epoch) / self.total_iters)
                for base_lr in self.base_lrs]


class ExponentialLR(LRScheduler):
    r"""PyTorch's ExponentialLR: multiply each group's lr by ``gamma`` every step,
    lr_t = initial_lr * gamma ** t, computed as PyTorch's step() does (``lr * gamma``);
    ``step(epoch)`` takes the closed form.

    Args:
        optimizer: the wrapped optimiser.
        gamma: multiplicative factor of the decay.
        last_epoch: index of the last step taken, to resume; -1 starts afresh. Default: -1.
    """

    def __init__(self, optimizer, gamma, last_epoch=-1):
        _check_number("gamma", gamma)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self._is_initial:
            return [group["lr"] for group in self.optimizer.param_groups]
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * self.gamma ** self.last_epoch for base_lr in self.base_lrs]
