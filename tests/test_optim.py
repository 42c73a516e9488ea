"""SGD, OneCycleLR and optimiser checkpoints: closed-form expectations, then parity with PyTorch."""
import contextlib
import math

import numpy as np
import pytest

from nanotorch.nn.module import Parameter
from nanotorch.optim import SGD, Optimizer, flatten_state_dict, lr_scheduler, unflatten_state_dict
from nanotorch.optim.lr_scheduler import OneCycleLR


def param(values, grad=None, dtype=np.float64):
    p = Parameter(np.array(values, dtype=dtype))
    p.grad = None if grad is None else np.array(grad, dtype=dtype)
    return p


# --- SGD: the update rule by hand -------------------------------------------------------------
def test_plain_step_is_p_minus_lr_g():
    p = param([1.0, 2.0], grad=[0.5, -1.0])
    SGD([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, [1.0 - 0.05, 2.0 + 0.1], rtol=0, atol=1e-15)


def test_default_lr_is_pytorchs():
    p = param([1.0], grad=[1.0])
    opt = SGD([p])
    assert opt.param_groups[0]["lr"] == 1e-3
    opt.step()
    assert p.data[0] == pytest.approx(1.0 - 1e-3, abs=1e-15)


def test_momentum_first_step_uses_buf_equal_to_grad():
    p = param([1.0, -1.0], grad=[2.0, 4.0])
    opt = SGD([p], lr=0.1, momentum=0.9)
    opt.step()
    # buf = g on the first step (not 0.9*0 + g*(1-dampening), not (1-m)*g)
    np.testing.assert_array_equal(opt.state[p]["momentum_buffer"], [2.0, 4.0])
    np.testing.assert_allclose(p.data, [1.0 - 0.2, -1.0 - 0.4], rtol=0, atol=1e-15)


def test_momentum_two_steps_by_hand():
    lr, m = 0.1, 0.9
    g1, g2 = np.array([1.0, -2.0]), np.array([0.5, 3.0])
    p = param([0.0, 0.0], grad=g1)
    opt = SGD([p], lr=lr, momentum=m)
    opt.step()
    p.grad = g2.copy()
    opt.step()
    buf2 = m * g1 + g2
    np.testing.assert_allclose(opt.state[p]["momentum_buffer"], buf2, rtol=0, atol=1e-15)
    np.testing.assert_allclose(p.data, -lr * g1 - lr * buf2, rtol=0, atol=1e-15)


def test_dampening_scales_new_gradients_but_not_the_first():
    lr, m, d = 0.1, 0.9, 0.3
    g1, g2 = np.array([1.0, -2.0]), np.array([0.5, 3.0])
    p = param([0.0, 0.0], grad=g1)
    opt = SGD([p], lr=lr, momentum=m, dampening=d)
    opt.step()
    np.testing.assert_array_equal(opt.state[p]["momentum_buffer"], g1)
    p.grad = g2.copy()
    opt.step()
    buf2 = m * g1 + (1 - d) * g2
    np.testing.assert_allclose(p.data, -lr * g1 - lr * buf2, rtol=0, atol=1e-15)


def test_weight_decay_adds_wd_times_p_to_the_gradient():
    p = param([2.0, -4.0], grad=[1.0, 1.0])
    SGD([p], lr=0.1, weight_decay=0.5).step()
    g = np.array([1.0 + 0.5 * 2.0, 1.0 + 0.5 * -4.0])
    np.testing.assert_allclose(p.data, [2.0, -4.0] - 0.1 * g, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(p.grad, [1.0, 1.0])  # the stored gradient is not modified


def test_nesterov_two_steps_by_hand():
    lr, m = 0.1, 0.9
    g1, g2 = np.array([1.0, -2.0]), np.array([0.5, 3.0])
    p = param([0.0, 0.0], grad=g1)
    opt = SGD([p], lr=lr, momentum=m, nesterov=True)
    opt.step()
    step1 = g1 + m * g1  # buf = g1, then g + m*buf
    np.testing.assert_allclose(p.data, -lr * step1, rtol=0, atol=1e-15)
    p.grad = g2.copy()
    opt.step()
    buf2 = m * g1 + g2
    np.testing.assert_allclose(p.data, -lr * step1 - lr * (g2 + m * buf2), rtol=0, atol=1e-15)


def test_params_without_grad_are_skipped():
    a, b = param([1.0], grad=[1.0]), param([5.0])
    opt = SGD([a, b], lr=0.5, momentum=0.9)
    opt.step()
    assert b.data[0] == 5.0 and b not in opt.state
    assert a.data[0] == 0.5


def test_update_is_in_place_and_keeps_dtype():
    p = param([1.0, 2.0], grad=[1.0, 1.0], dtype=np.float32)
    data = p.data
    SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-4).step()
    assert p.data is data and p.data.dtype == np.float32


def test_zero_grad_to_none_or_zeros():
    p = param([1.0], grad=[3.0])
    opt = SGD([p], lr=0.1)
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(p.grad, [0.0])
    opt.zero_grad()
    assert p.grad is None


def test_param_groups_take_defaults_and_their_own_values():
    a, b = param([1.0], grad=[1.0]), param([1.0], grad=[1.0])
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert all(g["momentum"] == 0.9 and g["nesterov"] is False for g in opt.param_groups)
    assert list(opt.param_groups[0]) == ["params", "lr", "momentum", "dampening", "weight_decay", "nesterov",
                                         "maximize", "foreach", "differentiable", "fused"]     # PyTorch's keys
    opt.step()
    assert a.data[0] == pytest.approx(0.9) and b.data[0] == pytest.approx(0.5)


def test_add_param_group_after_construction_takes_the_defaults_and_a_single_parameter():
    a, b, c = param([1.0], grad=[1.0]), param([1.0], grad=[1.0]), param([1.0], grad=[1.0])
    opt = SGD([a], lr=0.1, momentum=0.9)
    opt.add_param_group({"params": b, "lr": 0.5})          # one Parameter, not in a list (as PyTorch)
    opt.add_param_group({"params": [c]})
    assert [g["params"] for g in opt.param_groups] == [[a], [b], [c]]
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5, 0.1]
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0.9, 0.9]
    assert list(opt.param_groups[2]) == list(opt.param_groups[0])
    opt.step()
    assert (a.data[0], b.data[0], c.data[0]) == (pytest.approx(0.9), pytest.approx(0.5), pytest.approx(0.9))


def test_add_param_group_refuses_a_parameter_twice_in_a_group_or_already_in_another():
    a, b = param([1.0]), param([2.0])
    opt = SGD([a], lr=0.1)
    with pytest.raises(ValueError, match="the same Parameter twice"):
        opt.add_param_group({"params": [b, b]})
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [b, a]})
    with pytest.raises(ValueError, match="the same Parameter twice"):
        SGD([a, a], lr=0.1)
    assert len(opt.param_groups) == 1


def test_a_frozenset_of_parameters_in_a_group_is_refused_as_a_set_is():
    # A frozenset's order changes between runs as a set's does (the saved state is indexed in that order):
    # refused in a group as a set is. (Stricter than PyTorch 2.13, whose check is isinstance(params, set).)
    a, b = param([1.0]), param([2.0])
    with pytest.raises(TypeError, match="ordered collections"):
        SGD([{"params": frozenset([a, b])}], lr=0.1)
    opt = SGD([a], lr=0.1)
    with pytest.raises(TypeError, match="ordered collections"):
        opt.add_param_group({"params": frozenset([b])})
    assert len(opt.param_groups) == 1


def test_schedulers_change_lr_through_param_groups():
    p = param([1.0], grad=[1.0])
    opt = SGD([p], lr=0.1)
    opt.param_groups[0]["lr"] = 0.25
    opt.step()
    assert p.data[0] == pytest.approx(0.75)


def test_closure_loss_is_returned():
    opt = SGD([param([1.0], grad=[1.0])], lr=0.1)
    assert opt.step(lambda: 3.5) == 3.5
    assert isinstance(opt, Optimizer) and "SGD" in repr(opt)


# --- SGD: bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=-0.1), "lr"),
    (dict(momentum=-0.5), "momentum"),
    (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(nesterov=True), "nesterov"),
    (dict(nesterov=True, momentum=0.9, dampening=0.1), "dampening"),
    (dict(nesterov=True, momentum=0.9, dampening=-0.1), "dampening"),   # (!= 0, as PyTorch checks it)
    (dict(lr=float("nan")), "lr"),
])
def test_sgd_rejects_bad_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SGD([param([1.0])], **kwargs)


def test_sgd_rejects_bad_group_and_bad_params():
    with pytest.raises(ValueError, match="lr"):
        SGD([{"params": [param([1.0])], "lr": -1.0}], lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="list"):
        SGD(param([1.0]), lr=0.1)
    p = param([1.0])
    with pytest.raises(ValueError, match="more than one"):
        SGD([{"params": [p]}, {"params": [p]}], lr=0.1)



def test_sgd_given_the_method_or_the_model_says_to_call_parameters():
    """PyTorch's errors here ('method' object is not iterable; ... got a Linear) do not say what to do."""
    from nanotorch import nn
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"call it: model\.parameters\(\)"):
        SGD(model.parameters, lr=0.1)
    for wrong, name in ((model, "Sequential"), (model[0], "Linear"), ([model[0]], "Linear")):
        with pytest.raises(TypeError, match=rf"{name}.*pass model\.parameters\(\), not the model"):
            SGD(wrong, lr=0.1)


def test_sgd_refuses_a_saved_state_it_would_not_follow():
    """A torch.optim.SGD state_dict carries differentiable (and foreach, fused...): a differentiable=True
    state is refused (nanotorch has no autograd to differentiate the step), and the optimiser is left
    as it was."""
    opt = SGD([param([1.0])], lr=0.1, momentum=0.9)
    saved = opt.state_dict()
    saved["param_groups"][0].update(differentiable=True, foreach=None, lr=0.5)
    with pytest.raises(NotImplementedError, match="differentiable"):
        opt.load_state_dict(saved)
    assert opt.param_groups[0]["lr"] == 0.1
    saved["param_groups"][0].update(differentiable=False)
    opt.load_state_dict(saved)                    # PyTorch's defaults are fine
    assert opt.param_groups[0]["lr"] == 0.5


def test_sgd_maximize_steps_up_the_gradient_and_round_trips_through_a_flat_checkpoint():
    """maximize=True negates the gradient at the start of the step (g = -grad, as torch.optim.SGD);
    the flag is a group key, saved and loaded with the state (into an optimiser built without it),
    and one set in a group after construction is followed."""
    p = param([1.0, 2.0], grad=[0.5, -1.0])
    opt = SGD([p], lr=0.1, momentum=0.9, maximize=True)
    opt.step()
    np.testing.assert_array_equal(p.data, [1.0 + 0.1 * 0.5, 2.0 - 0.1 * 1.0])
    np.testing.assert_array_equal(opt.state[p]["momentum_buffer"], [-0.5, 1.0])     # the buffer of -grad
    saved = unflatten_state_dict(flatten_state_dict(opt.state_dict()))
    assert saved["param_groups"][0]["maximize"] is True

    q = param(p.data.copy())
    resumed = SGD([q], lr=0.5, momentum=0.9)                 # maximize=False: the state brings it
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["maximize"] is True
    for grad in ([0.25, 1.0], [-2.0, 0.5]):
        p.grad, q.grad = np.array(grad), np.array(grad)
        opt.step()
        resumed.step()
    np.testing.assert_array_equal(q.data, p.data)

    r = param([1.0], grad=[1.0])
    plain = SGD([r], lr=0.1)
    plain.param_groups[0]["maximize"] = True
    plain.step()
    assert r.data[0] == 1.1


def test_each_groups_own_momentum_dampening_weight_decay_and_nesterov_are_used_as_torchs():
    """Every hyper-parameter is read from the parameter's own group, not from the defaults."""
    torch = pytest.importorskip("torch")
    groups = [dict(), dict(momentum=0.5, dampening=0.5, weight_decay=0.1), dict(nesterov=True, lr=0.2)]
    start, grads = np.array([1.0, -2.0]), [np.array([0.5, 3.0]), np.array([-1.0, 0.25]), np.array([2.0, 1.0])]
    ours = [Parameter(start.copy()) for _ in groups]
    theirs = [torch.tensor(start.copy(), requires_grad=True) for _ in groups]
    opt = SGD([dict(g, params=[p]) for g, p in zip(groups, ours)], lr=0.1, momentum=0.9)
    t_opt = torch.optim.SGD([dict(g, params=[p]) for g, p in zip(groups, theirs)], lr=0.1, momentum=0.9)
    for g in grads:
        for p, tp in zip(ours, theirs):
            p.grad, tp.grad = g.copy(), torch.from_numpy(g.copy())
        opt.step(), t_opt.step()
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-15, atol=0)


@pytest.mark.parametrize("key", ["momentum", "weight_decay"])
def test_a_saved_negative_momentum_or_weight_decay_is_refused_though_a_scheduled_negative_lr_loads(key):
    """Only lr may be negative in a loaded group (a scheduler can write one, Optimizer._check_hyperparameters);
    the other ranges are checked as at construction, and the optimiser is left as it was."""
    opt = SGD([param([1.0])], lr=0.1, momentum=0.9)
    saved = opt.state_dict()
    saved["param_groups"][0].update({key: -0.5})
    with pytest.raises(ValueError, match=key):
        opt.load_state_dict(saved)
    assert opt.param_groups[0][key] == (0.9 if key == "momentum" else 0)
    saved["param_groups"][0].update({key: 0.5, "lr": -1e-18})
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["lr"] == -1e-18


def test_sgd_maximize_leaves_the_gradient_as_it_was_as_torch():
    """maximize steps with -grad, a new array: p.grad itself keeps its sign (PyTorch's too), so a
    second step on the same gradient moves the same way again."""
    p = param([1.0, 2.0], grad=[0.5, -1.0])
    opt = SGD([p], lr=0.1, momentum=0.9, maximize=True)
    opt.step()
    np.testing.assert_array_equal(p.grad, [0.5, -1.0])
    opt.step()
    np.testing.assert_allclose(p.data, [1.0 + 0.05 + 0.095, 2.0 - 0.1 - 0.19], rtol=0, atol=1e-15)


# --- OneCycleLR: closed form ------------------------------------------------------------------
def one_cycle(total_steps=100, max_lr=0.1, momentum=0.9, **kwargs):
    opt = SGD([param([1.0])], lr=0.001, momentum=momentum)
    return opt, OneCycleLR(opt, max_lr=max_lr, total_steps=total_steps, **kwargs)


def run_to(opt, sched, step):
    while sched.last_epoch < step:
        sched.step()
    return opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]


def test_one_cycle_step0_warmup_end_and_final_values():
    opt, sched = one_cycle(total_steps=100, pct_start=0.25, max_lr=0.1)
    group = opt.param_groups[0]
    # Step 0 is written at construction.
    assert sched.last_epoch == 0
    assert group["lr"] == pytest.approx(0.1 / 25.0, rel=1e-12)
    assert group["momentum"] == pytest.approx(0.95, rel=1e-12)
    assert sched.get_last_lr() == [group["lr"]]
    # End of warm-up at float(0.25 * 100) - 1 = 24: the peak lr and the lowest momentum.
    lr, mom = run_to(opt, sched, 24)
    assert lr == pytest.approx(0.1, rel=1e-12) and mom == pytest.approx(0.85, rel=1e-12)
    # Last step T - 1 = 99: min_lr = initial_lr / final_div_factor, momentum back at the top.
    lr, mom = run_to(opt, sched, 99)
    assert lr == pytest.approx(0.1 / 25.0 / 1e4, rel=1e-12) and mom == pytest.approx(0.95, rel=1e-12)
    assert group["initial_lr"] == 0.1 / 25.0 and group["min_lr"] == 0.1 / 25.0 / 1e4


def test_one_cycle_cos_midpoint_and_momentum_mirrors_lr():
    opt, sched = one_cycle(total_steps=101, pct_start=0.5, max_lr=1.0)
    # Warm-up ends at float(0.5 * 101) - 1 = 49.5, a non-integer step; the formula still applies.
    for step in (10, 30, 60, 90):
        lr, mom = run_to(opt, sched, step)
        if step <= 49.5:
            pct, start, end = step / 49.5, 1.0 / 25, 1.0
            m_start, m_end = 0.95, 0.85
        else:
            pct, start, end = (step - 49.5) / (100 - 49.5), 1.0, 1.0 / 25 / 1e4
            m_start, m_end = 0.85, 0.95
        cos_w = (math.cos(math.pi * pct) + 1) / 2
        assert lr == pytest.approx(end + (start - end) * cos_w, rel=1e-12)
        assert mom == pytest.approx(m_end + (m_start - m_end) * cos_w, rel=1e-12)


def test_one_cycle_linear():
    opt, sched = one_cycle(total_steps=100, pct_start=0.5, anneal_strategy="linear", max_lr=1.0)
    lr, mom = run_to(opt, sched, 24)  # step 24 of a warm-up ending at float(0.5 * 100) - 1 = 49
    assert lr == pytest.approx(0.04 + (1.0 - 0.04) * 24 / 49, rel=1e-12)
    assert mom == pytest.approx(0.95 + (0.85 - 0.95) * 24 / 49, rel=1e-12)


def test_one_cycle_three_phase():
    opt, sched = one_cycle(total_steps=100, pct_start=0.3, three_phase=True, max_lr=0.1)
    lr, mom = run_to(opt, sched, 29)
    assert lr == pytest.approx(0.1, rel=1e-12) and mom == pytest.approx(0.85, rel=1e-12)
    lr, mom = run_to(opt, sched, 58)  # end of the symmetric descent: back to initial_lr
    assert lr == pytest.approx(0.004, rel=1e-12) and mom == pytest.approx(0.95, rel=1e-12)
    lr, mom = run_to(opt, sched, 80)
    assert mom == pytest.approx(0.95, rel=1e-12) and 0.004 / 1e4 < lr < 0.004
    lr, mom = run_to(opt, sched, 99)
    assert lr == pytest.approx(0.004 / 1e4, rel=1e-12)


def test_one_cycle_epochs_times_steps_and_per_group_max_lr():
    a, b = param([1.0]), param([1.0])
    opt = SGD([{"params": [a]}, {"params": [b]}], lr=0.01, momentum=0.9)
    sched = OneCycleLR(opt, max_lr=[0.1, 1.0], epochs=4, steps_per_epoch=25)
    assert sched.total_steps == 100
    assert sched.get_last_lr() == pytest.approx([0.004, 0.04], rel=1e-12)


def test_one_cycle_get_lr_past_total_steps_raises_as_torchs():
    """get_lr() itself refuses a last_epoch past total_steps (set by hand), as PyTorch's; total_steps
    itself is still a step."""
    opt, sched = one_cycle(total_steps=10)
    sched.last_epoch = 10
    assert len(sched.get_lr()) == 1
    sched.last_epoch = 11
    with pytest.raises(ValueError, match="Tried to step 11 times. The specified number of total steps is 10"):
        sched.get_lr()


def test_one_cycle_steps_to_total_steps_then_raises():
    opt, sched = one_cycle(total_steps=10)
    for _ in range(10):  # PyTorch allows step number total_steps itself
        sched.step()
    with pytest.raises(ValueError, match="Tried to step 11 times. The specified number of total steps is 10"):
        sched.step()
    assert sched.last_epoch == 10


def test_one_cycle_cycles_the_momentum_of_an_sgd_built_without_momentum():
    """As PyTorch: SGD's default momentum 0 is overwritten with max_momentum at construction."""
    opt, _ = one_cycle(momentum=0)
    assert opt.param_groups[0]["momentum"] == 0.95


@pytest.mark.parametrize("kwargs, name", [
    (dict(total_steps=None), "total_steps"),
    (dict(total_steps=None, epochs=3), "steps_per_epoch"),
    (dict(total_steps=0), "total_steps"),
    (dict(total_steps=-5), "total_steps"),
    (dict(total_steps=2.5), "total_steps"),
    (dict(total_steps=None, epochs=0, steps_per_epoch=10), "epochs"),
    (dict(pct_start=1.5), "pct_start"),
    (dict(pct_start=-0.1), "pct_start"),
    (dict(pct_start=1), "pct_start must be a float"),           # (PyTorch refuses ints: 1.0)
    (dict(pct_start=0), "pct_start must be a float"),
    (dict(pct_start=np.float32(0.25)), "pct_start must be a float"),   # (PyTorch's isinstance(pct_start, float))
    (dict(anneal_strategy="exp"), "anneal_strategy"),
    (dict(max_lr=[0.1, 0.2]), "max_lr"),
])
def test_one_cycle_rejects_bad_arguments(kwargs, name):
    kwargs = dict(dict(total_steps=100), **kwargs)
    with pytest.raises(ValueError, match=name):
        one_cycle(**kwargs)


def test_one_cycle_refuses_to_cycle_the_momentum_of_an_optimiser_without_one_as_torch():
    """cycle_momentum=True needs a 'momentum' or 'betas' hyper-parameter (PyTorch's ValueError too);
    with cycle_momentum=False such an optimiser is scheduled, and no momentum is written."""
    class Plain(Optimizer):
        def step(self):
            pass

    opt = Plain([param([1.0])], dict(lr=0.01))
    with pytest.raises(ValueError, match="cycle_momentum"):
        OneCycleLR(opt, max_lr=0.1, total_steps=10)
    opt = Plain([param([1.0])], dict(lr=0.01))
    OneCycleLR(opt, max_lr=0.1, total_steps=10, cycle_momentum=False)
    assert "momentum" not in opt.param_groups[0] and opt.param_groups[0]["lr"] == pytest.approx(0.004)


def test_one_cycle_without_momentum_cycling_leaves_momentum_alone():
    opt, sched = one_cycle(momentum=0, cycle_momentum=False)
    sched.step()
    assert opt.param_groups[0]["momentum"] == 0


def test_one_cycle_total_steps_takes_precedence_over_epochs_and_steps_per_epoch_as_torchs():
    torch = pytest.importorskip("torch")
    opt, sched = one_cycle(total_steps=10, epochs=3, steps_per_epoch=5)
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.001, momentum=0.9)
    t_sched = torch.optim.lr_scheduler.OneCycleLR(t_opt, max_lr=0.1, total_steps=10, epochs=3, steps_per_epoch=5)
    assert sched.total_steps == t_sched.total_steps == 10
    lr, _ = run_to(opt, sched, 9)            # the last step of a 10-step cycle: min_lr
    assert lr == pytest.approx(0.1 / 25.0 / 1e4, rel=1e-12)


def test_one_cycle_replaces_an_initial_lr_an_earlier_scheduler_left_as_torchs():
    """A group's 'initial_lr' from an earlier scheduler is overwritten by max_lr / div_factor (PyTorch
    sets it, not setdefault), so the cycle starts from there and ends at that / final_div_factor."""
    torch = pytest.importorskip("torch")
    opt = SGD([param([1.0])], lr=0.001, momentum=0.9)
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.001, momentum=0.9)
    lr_scheduler.StepLR(opt, step_size=2), torch.optim.lr_scheduler.StepLR(t_opt, step_size=2)
    assert opt.param_groups[0]["initial_lr"] == 0.001
    sched = OneCycleLR(opt, max_lr=0.1, total_steps=20)
    torch.optim.lr_scheduler.OneCycleLR(t_opt, max_lr=0.1, total_steps=20)
    for key in ("lr", "initial_lr", "min_lr"):
        assert opt.param_groups[0][key] == t_opt.param_groups[0][key]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / 25.0, rel=1e-12) and sched.base_lrs == [0.1 / 25.0]


# --- checkpoints: save, load into fresh objects, continue exactly ------------------------------
def make_run(seed=0):
    rng = np.random.default_rng(seed)
    params = [param(rng.standard_normal(s), dtype=np.float32) for s in [(4, 3), (3,), (2, 2, 2)]]
    opt = SGD(params, lr=0.001, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = OneCycleLR(opt, max_lr=0.1, total_steps=40, pct_start=0.25)
    return params, opt, sched


def train(params, opt, sched, steps, rng):
    for _ in range(steps):
        for i, p in enumerate(params):
            # param 1 sometimes has no gradient, so its buffer must survive skipped steps too
            p.grad = None if (i == 1 and rng.random() < 0.3) else rng.standard_normal(p.shape).astype(np.float32)
        opt.step()
        sched.step()


def test_state_dict_round_trip_through_npz_continues_identically(tmp_path):
    params, opt, sched = make_run()
    train(params, opt, sched, 30, np.random.default_rng(1))

    params2, opt2, sched2 = make_run()
    rng = np.random.default_rng(1)
    train(params2, opt2, sched2, 10, rng)
    path = tmp_path / "ckpt.npz"
    np.savez(path, **{f"model.{i}": p.data for i, p in enumerate(params2)},
             **flatten_state_dict(opt2.state_dict(), prefix="optimizer."),
             **flatten_state_dict(sched2.state_dict(), prefix="scheduler."))

    params3, opt3, sched3 = make_run(seed=123)  # fresh objects with different weights
    with np.load(path, allow_pickle=False) as f:
        for i, p in enumerate(params3):
            p.data[...] = f[f"model.{i}"]
        opt3.load_state_dict(unflatten_state_dict(f, prefix="optimizer."))
        sched3.load_state_dict(unflatten_state_dict(f, prefix="scheduler."))
    assert sched3.last_epoch == 10
    train(params3, opt3, sched3, 20, rng)

    for a, b in zip(params, params3):
        np.testing.assert_array_equal(a.data, b.data)
        assert b.data.dtype == np.float32
        np.testing.assert_array_equal(opt.state[a]["momentum_buffer"], opt3.state[b]["momentum_buffer"])
    assert opt.param_groups[0]["lr"] == opt3.param_groups[0]["lr"]
    assert opt.param_groups[0]["momentum"] == opt3.param_groups[0]["momentum"]
    assert sched.get_last_lr() == sched3.get_last_lr()


def test_state_dict_layout_is_pytorchs_and_copies_arrays():
    params, opt, sched = make_run()
    assert opt.state_dict()["state"] == {}
    train(params, opt, sched, 2, np.random.default_rng(0))
    sd = opt.state_dict()
    assert sorted(sd["state"]) == [0, 1, 2]        # (with this seed param 1 has a gradient in both steps)
    assert sd["param_groups"][0]["params"] == [0, 1, 2]
    assert {"lr", "momentum", "dampening", "weight_decay", "nesterov", "initial_lr", "max_lr",
            "min_lr", "max_momentum", "base_momentum"} <= set(sd["param_groups"][0])
    sd["state"][0]["momentum_buffer"][...] = 99.0
    assert not np.any(opt.state[params[0]]["momentum_buffer"] == 99.0)


def test_flatten_round_trip_keeps_structure_and_types():
    tree = {"state": {0: {"momentum_buffer": np.arange(6.0).reshape(2, 3)}, 3: {"step": 4}},
            "param_groups": [{"lr": 0.1, "nesterov": True, "name": "head", "params": [0, 1], "foreach": None},
                             {"lr": 0.2, "nesterov": False, "name": "body", "params": [], "fused": None}],
            "empty": {}, "phases": [{"end_step": 3.5}], "nothing": None}
    flat = flatten_state_dict(tree)
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in flat.values())
    back = unflatten_state_dict(flat)
    np.testing.assert_array_equal(back["state"][0]["momentum_buffer"], tree["state"][0]["momentum_buffer"])
    back["state"][0]["momentum_buffer"] = tree["state"][0]["momentum_buffer"] = None
    assert back == tree
    assert type(back["param_groups"][0]["nesterov"]) is bool and type(back["state"][3]["step"]) is int


def test_a_momentum_buffer_saved_as_none_means_none_yet():
    """PyTorch can save momentum_buffer None (a parameter that has had no step with a gradient):
    loading it starts the buffer at the next step, as PyTorch does."""
    p = param([1.0, 2.0])
    opt = SGD([p], lr=0.1, momentum=0.9)
    opt.load_state_dict({"state": {0: {"momentum_buffer": None}}, "param_groups": opt.state_dict()["param_groups"]})
    p.grad = np.array([1.0, 1.0])
    opt.step()
    np.testing.assert_allclose(p.data, [0.9, 1.9], rtol=1e-6)
    np.testing.assert_allclose(opt.state[p]["momentum_buffer"], [1.0, 1.0])


def test_load_state_dict_rejects_a_different_optimiser():
    params, opt, _ = make_run()
    other = SGD([param([1.0]), param([2.0])], lr=0.1)
    with pytest.raises(ValueError, match="parameter group 0"):
        other.load_state_dict(opt.state_dict())
    two_groups = SGD([{"params": [param([1.0])]}, {"params": [param([1.0])]}], lr=0.1)
    with pytest.raises(ValueError, match="groups"):
        two_groups.load_state_dict(opt.state_dict())


def test_load_state_dict_casts_buffers_to_the_parameters_dtype_and_checks_their_size():
    p = param([1.0, 2.0], dtype=np.float32)
    opt = SGD([p], lr=0.1, momentum=0.9)
    groups = opt.state_dict()["param_groups"]
    opt.load_state_dict({"state": {0: {"momentum_buffer": np.array([0.1, 0.2])}}, "param_groups": groups})
    assert opt.state[p]["momentum_buffer"].dtype == np.float32          # float64 saved, float32 parameter
    with pytest.raises(ValueError, match=r"'momentum_buffer' of parameter 0 has shape \(3,\)"):
        opt.load_state_dict({"state": {0: {"momentum_buffer": np.zeros(3)}}, "param_groups": groups})


def test_a_loaded_scheduler_reports_the_last_lr_it_was_saved_with():
    params, opt, sched = make_run()
    train(params, opt, sched, 10, np.random.default_rng(1))
    _, opt2, sched2 = make_run()
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr() == [opt2.param_groups[0]["lr"]]


def test_lr_scheduler_module_exports():
    assert lr_scheduler.OneCycleLR is OneCycleLR and issubclass(OneCycleLR, lr_scheduler.LRScheduler)


def test_one_cycle_step_with_an_epoch_warns_and_goes_to_that_step():
    """PyTorch's deprecated step(epoch): a warning, last_epoch = epoch, and that step's lr and momentum
    (those of a schedule stepped there one by one); an epoch that is no step of the cycle is refused
    and leaves the schedule as it was."""
    def run():
        opt = SGD([param([0.0])], lr=0.001, momentum=0.9)
        return opt, OneCycleLR(opt, max_lr=0.1, total_steps=40, pct_start=0.25)
    opt, sched = run()
    for epoch in (17, 4, 40):
        with pytest.warns(UserWarning, match=r"The epoch parameter in `scheduler.step\(\)` .* deprecated"):
            sched.step(epoch)
        other, stepped = run()
        for _ in range(epoch):
            stepped.step()
        assert sched.last_epoch == epoch and sched.get_last_lr() == stepped.get_last_lr()
        assert opt.param_groups[0]["momentum"] == other.param_groups[0]["momentum"]
    before = dict(sched.state_dict(), _last_lr=sched.get_last_lr())
    for epoch, error, message in [(41, ValueError, "Tried to step 41 times. The specified number of total steps is 40"),
                                  (-1, ValueError, r"epoch must be in \[0, total_steps=40\], got -1"),
                                  (2.5, TypeError, "epoch must be an int"), (True, TypeError, "epoch must be an int")]:
        with pytest.raises(error, match=message), pytest.warns(UserWarning):
            sched.step(epoch)
    assert dict(sched.state_dict(), _last_lr=sched.get_last_lr()) == before


# (kwargs, the step at which PyTorch divides by zero (0: in the constructor), the phase named, the fix named)
EMPTY_PHASES = [
    (dict(total_steps=10, pct_start=0.1), 0, "warm-up", "raise pct_start or total_steps"),
    (dict(total_steps=1, pct_start=1.0), 0, "warm-up", "raise pct_start or total_steps"),
    (dict(total_steps=2, pct_start=0.5, three_phase=True), 0, "warm-up", "raise pct_start or total_steps"),
    (dict(total_steps=10, pct_start=1.0), 10, "annealing", "lower pct_start"),
    (dict(total_steps=9, pct_start=5 / 9, three_phase=True), 9, "annealing", "lower pct_start"),
]


@pytest.mark.parametrize("kwargs, at, phase, fix", EMPTY_PHASES)
def test_one_cycle_with_an_empty_phase_raises_torchs_zero_division_error_where_torch_does(kwargs, at, phase, fix):
    """A phase that ends where it starts (pct_start * total_steps == 1 for the warm-up; pct_start 1.0,
    or three-phase 2 * pct_start * total_steps - 2 == total_steps - 1, for the last) has a pct of
    0 / 0: PyTorch raises a bare ZeroDivisionError at the step that falls in it; so does nanotorch,
    with the same type (code catching PyTorch's still works), at the same step, saying which phase
    is empty and what to change. The schedule is left at the step before."""
    torch = pytest.importorskip("torch")
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.001, momentum=0.9)
    opt = SGD([param([0.0])], lr=0.001, momentum=0.9)
    with pytest.raises(ZeroDivisionError) if at == 0 else contextlib.nullcontext():
        t_sched = torch.optim.lr_scheduler.OneCycleLR(t_opt, max_lr=0.1, **kwargs)
    warm_up_message = rf"{phase} phase.*is empty: it starts at step 0 .*{fix}"
    with pytest.raises(ZeroDivisionError, match=warm_up_message) if at == 0 else contextlib.nullcontext():
        sched = OneCycleLR(opt, max_lr=0.1, **kwargs)
    if at == 0:
        return
    for _ in range(at - 1):
        opt.step(), t_opt.step()
        sched.step(), t_sched.step()
        assert sched.get_last_lr() == t_sched.get_last_lr()
    opt.step(), t_opt.step()
    with pytest.raises(ZeroDivisionError):
        t_sched.step()
    with pytest.raises(ZeroDivisionError,
                       match=rf"step {at} .*{phase} phase.*is empty: it starts where the phase before it ends.*{fix}"):
        sched.step()
    assert sched.last_epoch == at - 1 and sched.get_last_lr() == [opt.param_groups[0]["lr"]]


@pytest.mark.parametrize("kwargs", [
    dict(total_steps=10, pct_start=0.0), dict(total_steps=10, pct_start=0.05), dict(total_steps=1, pct_start=0.3),
    dict(total_steps=10, pct_start=0.05, three_phase=True), dict(total_steps=10, pct_start=0.6, three_phase=True),
    dict(total_steps=10, pct_start=0.19), dict(total_steps=10, pct_start=0.99),
    dict(total_steps=10, pct_start=0.575, three_phase=True),
])
def test_one_cycle_phases_shorter_than_a_step_but_not_empty_run_as_torchs(kwargs):
    """No division by zero where PyTorch has none: a warm-up ending before step 0 (pct_start * total_steps
    < 1), a phase shorter than a step, a last phase reached only at step total_steps (for three phases
    with pct_start 0.575 it ends, at step 9, before it starts, at 9.5: a pct of -1, not an empty phase)."""
    torch = pytest.importorskip("torch")
    opt = SGD([param([0.0])], lr=0.001, momentum=0.9)
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.001, momentum=0.9)
    sched = OneCycleLR(opt, max_lr=0.1, **kwargs)
    t_sched = torch.optim.lr_scheduler.OneCycleLR(t_opt, max_lr=0.1, **kwargs)
    for _ in range(kwargs["total_steps"]):
        opt.step(), t_opt.step()
        sched.step(), t_sched.step()
        assert sched.get_last_lr() == t_sched.get_last_lr()
        assert opt.param_groups[0]["momentum"] == t_opt.param_groups[0]["momentum"]


# --- parity with PyTorch ----------------------------------------------------------------------
def test_seed_recipe_lr_and_momentum_match_torch_for_all_15000_steps():
    torch = pytest.importorskip("torch")
    kwargs = dict(max_lr=0.1, total_steps=15000, pct_start=0.25, anneal_strategy="cos")

    opt = SGD([param([0.0])], lr=0.001, momentum=0.9)
    sched = OneCycleLR(opt, **kwargs)
    ours = [(opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"])]
    for _ in range(15000):
        opt.step()
        sched.step()
        ours.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))

    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.001, momentum=0.9)
    t_sched = torch.optim.lr_scheduler.OneCycleLR(t_opt, **kwargs)
    theirs = [(t_opt.param_groups[0]["lr"], t_opt.param_groups[0]["momentum"])]
    for _ in range(15000):
        t_opt.step()
        t_sched.step()
        theirs.append((t_opt.param_groups[0]["lr"], t_opt.param_groups[0]["momentum"]))

    np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=0, atol=1e-12)
    assert ours == theirs  # the same float operations in the same order: bit for bit


@pytest.mark.parametrize("kwargs", [
    dict(max_lr=0.5, total_steps=97, pct_start=0.3, anneal_strategy="linear"),
    dict(max_lr=0.5, total_steps=97, pct_start=0.3, three_phase=True),
    dict(max_lr=0.2, epochs=7, steps_per_epoch=13, div_factor=10.0, final_div_factor=100.0,
         base_momentum=0.8, max_momentum=0.99),
])
def test_other_one_cycle_settings_match_torch(kwargs):
    torch = pytest.importorskip("torch")
    opt = SGD([param([0.0])], lr=0.001, momentum=0.9)
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.001, momentum=0.9)
    sched, t_sched = OneCycleLR(opt, **kwargs), torch.optim.lr_scheduler.OneCycleLR(t_opt, **kwargs)
    for _ in range(sched.total_steps):
        assert opt.param_groups[0]["lr"] == t_opt.param_groups[0]["lr"]
        assert opt.param_groups[0]["momentum"] == t_opt.param_groups[0]["momentum"]
        assert sched.get_last_lr() == t_sched.get_last_lr()
        opt.step(), t_opt.step()
        sched.step(), t_sched.step()


SGD_CONFIGS = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.05, momentum=0.9),
    "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
    "weight_decay": dict(lr=0.1, weight_decay=0.01),
    "dampening": dict(lr=0.05, momentum=0.8, dampening=0.3),
    "combination": dict(lr=0.03, momentum=0.95, weight_decay=5e-3, nesterov=True),
    "combination_damped": dict(lr=0.03, momentum=0.7, dampening=0.1, weight_decay=1e-2),
}


def sgd_trajectories(config, dtype, steps=50, scheduled=False, missing_grads=False):
    """Run nanotorch's and PyTorch's SGD side by side on the same random gradients. The shapes
    include one of 1,001 values, so that PyTorch's vectorised loop runs as well as its scalar one."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    shapes = [(4, 3), (5,), (2, 3, 2), (1001,)]
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]

    ours = [Parameter(a.copy()) for a in start]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in start]
    opt, t_opt = SGD(ours, **config), torch.optim.SGD(theirs, **config)
    if scheduled:
        sched = OneCycleLR(opt, max_lr=0.2, total_steps=steps, pct_start=0.3)
        t_sched = torch.optim.lr_scheduler.OneCycleLR(t_opt, max_lr=0.2, total_steps=steps, pct_start=0.3)
    for t in range(steps):
        for i, (p, tp) in enumerate(zip(ours, theirs)):
            if missing_grads and i == 1 and t % 3 == 1:
                p.grad, tp.grad = None, None
            else:
                p.grad, tp.grad = grads[t][i].copy(), torch.from_numpy(grads[t][i].copy())
        opt.step()
        t_opt.step()
        if scheduled:
            sched.step()
            t_sched.step()
    return ours, theirs, opt, t_opt


def assert_torchs_bits(ours, theirs):
    """Bit for bit where PyTorch's CPU kernels are vectorised (AVX2, AVX-512, NEON, ...), whose
    ``add_(y, alpha=a)`` is one fused multiply-add, as ours is; to rounding on its DEFAULT (scalar)
    build (ATEN_CPU_CAPABILITY=default), which rounds the product and the sum separately."""
    import torch
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        f32 = ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=1e-5 if f32 else 1e-12, atol=1e-6 if f32 else 1e-12)
    else:
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", SGD_CONFIGS)
def test_sgd_trajectories_match_torch_bit_for_bit(name, dtype):
    """Each of PyTorch's ``add_(y, alpha=a)`` is one fused multiply-add on the CPU, and so is ours."""
    ours, theirs, opt, t_opt = sgd_trajectories(SGD_CONFIGS[name], dtype)
    for p, tp in zip(ours, theirs):
        assert p.data.dtype == dtype
        assert_torchs_bits(p.data, tp.detach().numpy())
        if "momentum" in SGD_CONFIGS[name]:
            assert_torchs_bits(opt.state[p]["momentum_buffer"], t_opt.state[tp]["momentum_buffer"].numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["plain", "momentum", "nesterov", "weight_decay", "dampening", "combination",
                                  "combination_damped"])
def test_sgd_maximize_matches_torch(name, dtype):
    """maximize=True: torch.optim.SGD's g = -grad at the start of the step, then the same update; the
    negation is exact, so the bits are still PyTorch's (and the run is not the minimising one)."""
    config = dict(SGD_CONFIGS[name], maximize=True)
    ours, theirs, opt, t_opt = sgd_trajectories(config, dtype, steps=25)
    minimising, _, _, _ = sgd_trajectories(SGD_CONFIGS[name], dtype, steps=25)
    for p, tp, q in zip(ours, theirs, minimising):
        assert_torchs_bits(p.data, tp.detach().numpy())
        assert not np.allclose(p.data, q.data)
        if "momentum" in config:
            assert_torchs_bits(opt.state[p]["momentum_buffer"], t_opt.state[tp]["momentum_buffer"].numpy())
    assert opt.state_dict()["param_groups"] == t_opt.state_dict()["param_groups"]      # maximize: True in both


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_with_one_cycle_and_missing_grads_matches_torch_bit_for_bit(dtype):
    ours, theirs, _, _ = sgd_trajectories(SGD_CONFIGS["combination"], dtype, scheduled=True, missing_grads=True)
    for p, tp in zip(ours, theirs):
        assert_torchs_bits(p.data, tp.detach().numpy())


def test_sgd_on_non_contiguous_parameters_matches_the_contiguous_update():
    """A parameter that is a strided view takes the same loop, on contiguous copies written back."""
    rng = np.random.default_rng(3)
    base, grads = rng.standard_normal((6, 8)), rng.standard_normal((3, 6, 4))
    strided, plain = Parameter(base.copy()[:, ::2]), Parameter(np.ascontiguousarray(base[:, ::2]))
    assert not strided.data.flags.c_contiguous
    opts = [SGD([q], lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True) for q in (strided, plain)]
    for g in grads:
        for q, opt in zip((strided, plain), opts):
            q.grad = g.copy()
            opt.step()
    np.testing.assert_array_equal(strided.data, plain.data)
    np.testing.assert_array_equal(opts[0].state[strided]["momentum_buffer"], opts[1].state[plain]["momentum_buffer"])


def test_sgd_on_a_fortran_ordered_parameter_keeps_its_momentum_buffer():
    """A transposed parameter (Fortran order) gets a Fortran-ordered buffer: the loop works on a
    contiguous copy of it, which must be written back, or the next step starts from garbage."""
    rng = np.random.default_rng(4)
    base, grads = rng.standard_normal((5, 3)), rng.standard_normal((3, 3, 5))
    fortran, plain = Parameter(base.copy().T), Parameter(np.ascontiguousarray(base.T))
    assert fortran.data.flags.f_contiguous and not fortran.data.flags.c_contiguous
    opts = [SGD([q], lr=0.1, momentum=0.9) for q in (fortran, plain)]
    for g in grads:
        for q, opt in zip((fortran, plain), opts):
            q.grad = g.copy()
            opt.step()
    np.testing.assert_array_equal(opts[0].state[fortran]["momentum_buffer"], opts[1].state[plain]["momentum_buffer"])
    np.testing.assert_array_equal(fortran.data, plain.data)


# --- SGD's kernel: every multiply-add rounded once -----------------------------------------------
def test_fma_rounds_once():
    from numba import njit
    from nanotorch.kernels.optim import fma
    compiled = njit(lambda a, b, c: fma(a, b, c))
    for t in (np.float32, np.float64):
        eps = np.finfo(t).eps
        a, b, c = t(1 + eps), t(1 - eps), t(-1)            # a * b = 1 - eps^2 exactly; rounded, it is 1
        assert t(a * b) + c == 0
        assert compiled(a, b, c) == fma(a, b, c) == -t(eps) * t(eps)



def test_sgd_reference_takes_nan_and_inf_as_the_kernel_does():
    """The float64 reference's exact fractions have no NaN or inf: those values take the plain formula."""
    from nanotorch.kernels.optim import sgd_update, sgd_update_reference
    p = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])
    g = np.array([np.nan, np.inf, 1e308])
    buf = np.empty(3), np.empty(3)
    sgd_update(p[0], g, buf[0], 1e10, 0.9, 0.0, 0.0, False, True)
    sgd_update_reference(p[1], g, buf[1], 1e10, 0.9, 0.0, 0.0, False, True)
    np.testing.assert_array_equal(p[0], p[1])                 # nan, -inf, -inf
    assert np.isnan(p[0][0]) and p[0][1] == p[0][2] == -np.inf


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_without_weight_decay_leaves_an_infinite_parameter_infinite(momentum):
    """weight_decay == 0 skips the decay's multiply-add, as torch.optim.SGD skips it: p * 0 would turn
    an infinite parameter into NaN (torch: inf - lr * g stays inf)."""
    from nanotorch.kernels.optim import sgd_update, sgd_update_reference
    for twin in (sgd_update, sgd_update_reference):
        p, g, buf = np.array([np.inf, -np.inf, 1.0]), np.ones(3), np.empty(3)
        twin(p, g, buf, 0.1, momentum, 0.0, 0.0, False, True)
        np.testing.assert_array_equal(p, [np.inf, -np.inf, 0.9])
