"""Adam, AdamW, StepLR, CosineAnnealingLR, LinearLR and ExponentialLR: by hand, then against PyTorch 2.13."""
import warnings

import numpy as np
import pytest

from nanotorch.nn.module import Parameter
from nanotorch import optim
from nanotorch.optim import SGD, Adam, AdamW, flatten_state_dict, unflatten_state_dict
from nanotorch.optim.lr_scheduler import (CosineAnnealingLR, ExponentialLR, LinearLR, OneCycleLR, StepLR)


def param(values, grad=None, dtype=np.float64):
    p = Parameter(np.array(values, dtype=dtype))
    p.grad = None if grad is None else np.array(grad, dtype=dtype)
    return p


# --- Adam by hand -------------------------------------------------------------------------------
def test_adams_first_step_is_lr_times_the_sign_of_the_gradient():
    """Step 1: m_hat = g and v_hat = g^2 (the bias corrections undo the zero start), so
    p -= lr * g / (|g| + eps), whatever the betas."""
    g = np.array([0.5, -3.0, 1e-9])
    for betas in ((0.9, 0.999), (0.3, 0.5)):
        p = param([1.0, 2.0, 3.0], grad=g)
        Adam([p], lr=0.1, betas=betas).step()
        np.testing.assert_allclose(p.data, [1.0, 2.0, 3.0] - 0.1 * g / (np.abs(g) + 1e-8), rtol=1e-14)


def test_adam_two_steps_by_hand_with_l2_and_adamw_with_decoupled_decay():
    lr, (b1, b2), eps, wd = 0.01, (0.9, 0.99), 1e-8, 0.1
    p0, g1, g2 = np.array([1.0, -2.0]), np.array([0.3, 0.4]), np.array([-0.1, 0.2])

    def by_hand(decoupled):
        p, m, v = p0.copy(), 0.0, 0.0
        for t, g in ((1, g1), (2, g2)):
            if decoupled:
                p = p * (1 - lr * wd)
            else:
                g = g + wd * p
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        return p

    for cls, decoupled in ((Adam, False), (AdamW, True)):
        p = param(p0, grad=g1)
        opt = cls([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
        opt.step()
        p.grad = g2.copy()
        opt.step()
        np.testing.assert_allclose(p.data, by_hand(decoupled), rtol=1e-13)
        assert opt.state[p]["step"] == 2.0
    assert not np.allclose(by_hand(True), by_hand(False), rtol=1e-6)      # the two decays differ here


def test_amsgrad_divides_by_the_largest_second_moment_so_far():
    p = param([0.0], grad=[10.0])
    opt = Adam([p], lr=0.1, betas=(0.5, 0.5), amsgrad=True)
    opt.step()
    p.grad = np.array([0.0])
    opt.step()
    state = opt.state[p]
    np.testing.assert_allclose(state["exp_avg_sq"], [25.0])                # 0.5 * 50
    np.testing.assert_allclose(state["max_exp_avg_sq"], [50.0])            # the step-1 value kept
    # step 2: m = 2.5, m_hat = 2.5 / 0.75; v_hat from the max = 50 / 0.75
    expected = -0.1 * 10 / (10 + 1e-8) - 0.1 * (2.5 / 0.75) / (np.sqrt(50.0) / np.sqrt(0.75) + 1e-8)
    np.testing.assert_allclose(p.data, [expected], rtol=1e-14)


def test_adam_skips_parameters_without_grad_keeps_dtype_views_and_the_gradient():
    a, b = param([1.0, 2.0], grad=[1.0, 1.0], dtype=np.float32), param([5.0])
    data, grad = a.data, a.grad.copy()
    opt = AdamW([a, b], lr=0.1)
    assert opt.step(lambda: 2.5) == 2.5
    assert b not in opt.state and b.data[0] == 5.0
    assert a.data is data and a.data.dtype == np.float32
    assert all(opt.state[a][k].dtype == np.float32 for k in ("exp_avg", "exp_avg_sq"))
    np.testing.assert_array_equal(a.grad, grad)
    assert list(opt.state[a]) == ["step", "exp_avg", "exp_avg_sq"]         # PyTorch's keys, in its order


def test_adam_and_adamw_defaults_and_group_keys_are_pytorchs():
    a, b = param([1.0]), param([1.0])
    opt = Adam([{"params": [a]}, {"params": [b], "lr": 0.5}])
    assert list(opt.param_groups[0]) == ["params", "lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
                                         "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay"]
    g = opt.param_groups[0]
    assert (g["lr"], g["betas"], g["eps"], g["weight_decay"], g["amsgrad"]) == (1e-3, (0.9, 0.999), 1e-8, 0, False)
    assert opt.param_groups[1]["lr"] == 0.5
    w = AdamW([param([1.0])]).param_groups[0]
    assert (w["weight_decay"], w["decoupled_weight_decay"]) == (1e-2, True)
    assert "AdamW" in repr(AdamW([param([1.0])]))


# --- Adam: bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, message", [
    (dict(lr=-0.1), ValueError, r"invalid lr=-0.1: expected a non-negative learning rate"),
    (dict(lr=float("nan")), ValueError, "lr must be a number"),
    (dict(eps=-1e-8), ValueError, "invalid eps=-1e-08: expected a non-negative epsilon"),
    (dict(weight_decay=-1.0), ValueError, "invalid weight_decay=-1.0"),
    (dict(betas=(1.0, 0.999)), ValueError, r"beta parameter at index 0: 1.0 \(expected a value in \[0, 1\)\)"),
    (dict(betas=(0.9, -0.1)), ValueError, "beta parameter at index 1: -0.1"),
    (dict(betas=(0.9, 1.5)), ValueError, "beta parameter at index 1: 1.5"),
    (dict(betas=(0, 0.999)), ValueError, r"betas must be two floats .* got \(0, 0.999\)"),
    (dict(betas=0.9), TypeError, "betas must be a pair of floats"),
    (dict(capturable=True), NotImplementedError, "capturable"),
    (dict(differentiable=True), NotImplementedError, "differentiable"),
    (dict(foreach=True, fused=True), RuntimeError, "`fused` and `foreach` cannot be `True` together"),
])
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_adam_rejects_bad_arguments_with_torchs_error_types(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        getattr(optim, cls)([param([1.0])], **kwargs)
    if error is not NotImplementedError:                 # (PyTorch implements those two)
        torch = pytest.importorskip("torch")
        with pytest.raises(error):
            getattr(torch.optim, cls)([torch.zeros(1, requires_grad=True)], **kwargs)


def test_adam_refuses_a_bad_hyperparameter_set_in_a_group_after_construction():
    p = param([1.0], grad=[1.0])
    opt = Adam([p], lr=0.1)
    opt.param_groups[0]["capturable"] = True
    with pytest.raises(NotImplementedError, match="capturable"):
        opt.step()
    opt.param_groups[0].update(capturable=False, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="index 1"):
        opt.step()
    assert p.data[0] == 1.0


def test_adam_accepts_foreach_and_fused_which_only_choose_an_implementation():
    runs = []
    for kwargs in (dict(), dict(foreach=True), dict(fused=True), dict(foreach=False, fused=False)):
        p = param([1.0, -2.0], grad=[0.5, 0.25])
        Adam([p], lr=0.1, **kwargs).step()
        runs.append(p.data)
    assert all(np.array_equal(r, runs[0]) for r in runs)


def test_adam_refuses_switching_amsgrad_on_mid_run():
    p = param([1.0], grad=[1.0])
    opt = Adam([p])
    opt.step()
    opt.param_groups[0]["amsgrad"] = True
    with pytest.raises(ValueError, match="amsgrad cannot be switched on mid-run"):
        opt.step()


# --- Adam against PyTorch -------------------------------------------------------------------------
ADAM_CONFIGS = [
    ("Adam", dict()),
    ("Adam", dict(weight_decay=0.1)),
    ("Adam", dict(amsgrad=True)),
    ("Adam", dict(weight_decay=0.05, amsgrad=True, eps=1e-3)),
    ("Adam", dict(betas=(0.3, 0.8))),                        # lerp's other branch (weight 1 - beta1 >= 0.5)
    ("Adam", dict(betas=(0.0, 0.0))),                        # the ends of [0, 1) that PyTorch takes
    ("Adam", dict(weight_decay=0.1, decoupled_weight_decay=True)),
    ("AdamW", dict()),
    ("AdamW", dict(weight_decay=0)),
    ("AdamW", dict(weight_decay=0.2, amsgrad=True)),
]
SHAPES = [(4, 3), (5,), (), (2, 3, 2), (1001,)]


def adam_runs(cls, config, dtype=np.float64, steps=20, save_at=None):
    """nanotorch's and PyTorch's optimiser side by side for ``steps`` steps on the same random
    gradients, with two parameter groups (the second with its own lr and eps) and one parameter
    whose gradient is sometimes None. With save_at, ours is rebuilt from a flat .npz checkpoint
    of that step (fresh parameters given the saved values, a fresh optimiser loading the state)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    start = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]

    def groups(ps):
        return [{"params": ps[:3]}, {"params": ps[3:], "lr": 0.03, "eps": 1e-6}]

    def build(values):
        ps = [Parameter(v.copy()) for v in values]
        return ps, getattr(optim, cls)(groups(ps), lr=0.01, **config)

    ours, opt = build(start)
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in start]
    t_opt = getattr(torch.optim, cls)(groups(theirs), lr=0.01, **config)
    for t in range(steps):
        if t == save_at:
            flat = flatten_state_dict(opt.state_dict())
            assert all(isinstance(v, np.ndarray) and v.dtype != object for v in flat.values())
            buffer = __import__("io").BytesIO()
            np.savez(buffer, **flat)
            buffer.seek(0)
            with np.load(buffer, allow_pickle=False) as f:
                saved = unflatten_state_dict(f)
            ours, opt = build([p.data for p in ours])
            opt.load_state_dict(saved)
        for i, (p, tp) in enumerate(zip(ours, theirs)):
            if i == 1 and t % 4 == 2:
                p.grad, tp.grad = None, None
            else:
                p.grad, tp.grad = grads[t][i].copy(), torch.from_numpy(grads[t][i].copy())
        opt.step()
        t_opt.step()
    return ours, theirs, opt, t_opt


def assert_close(ours, theirs, rtol):
    """Relative to each value and, for values that cancelled to near 0 (PyTorch's multiply-adds are
    fused, NumPy's are not), to the array's largest."""
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * np.max(np.abs(theirs)))


def assert_matches_torch(ours, theirs, opt, t_opt, rtol=1e-12):
    for p, tp in zip(ours, theirs):
        assert_close(p.data, tp.detach().numpy(), rtol)
        state, t_state = opt.state[p], t_opt.state[tp]
        assert list(state) == list(t_state)
        assert state["step"] == t_state["step"].item()
        for key in list(state)[1:]:
            assert_close(state[key], t_state[key].numpy(), rtol)


@pytest.mark.parametrize("cls, config", ADAM_CONFIGS, ids=[f"{c}-{k}" for c, k in ADAM_CONFIGS])
def test_adam_trajectories_match_torch(cls, config):
    ours, theirs, opt, t_opt = adam_runs(cls, config)
    assert_matches_torch(ours, theirs, opt, t_opt)


def test_adam_float32_matches_torch_to_float32_rounding():
    ours, theirs, opt, t_opt = adam_runs("AdamW", dict(amsgrad=True), dtype=np.float32)
    assert all(p.data.dtype == np.float32 for p in ours)
    assert_matches_torch(ours, theirs, opt, t_opt, rtol=1e-5)


@pytest.mark.parametrize("cls, config", [
    ("Adam", dict()), ("Adam", dict(weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict()), ("AdamW", dict(weight_decay=0.2, amsgrad=True)),
], ids=["Adam", "Adam-l2-amsgrad", "AdamW", "AdamW-amsgrad"])
def test_adam_maximize_matches_torch(cls, config):
    """maximize=True: torch.optim.Adam's g = -grad at the start of the step (before the weight decay
    is added), then the same update, for 25 steps; the state_dict's groups say maximize=True as PyTorch's."""
    ours, theirs, opt, t_opt = adam_runs(cls, dict(config, maximize=True), steps=25)
    assert_matches_torch(ours, theirs, opt, t_opt)
    minimising, _, _, _ = adam_runs(cls, config, steps=25)
    assert not np.allclose(ours[0].data, minimising[0].data)
    assert opt.state_dict()["param_groups"] == t_opt.state_dict()["param_groups"]


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_adam_maximize_round_trips_through_a_flat_checkpoint_and_into_torch(cls):
    """The flag is a group key: saved, loaded into an optimiser built without it, and loaded into
    PyTorch's, each run on as the one that saved it."""
    torch = pytest.importorskip("torch")
    p = param([1.0, -2.0], grad=[0.5, 0.25])
    opt = getattr(optim, cls)([p], lr=0.1, maximize=True)
    opt.step()
    assert (p.data > [1.0, -2.0]).all()                          # up the gradient
    saved = unflatten_state_dict(flatten_state_dict(opt.state_dict()))
    assert saved["param_groups"][0]["maximize"] is True
    q = param(p.data.copy())
    resumed = getattr(optim, cls)([q], lr=0.5)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["maximize"] is True
    tq = torch.tensor(p.data.copy(), requires_grad=True)
    t_opt = getattr(torch.optim, cls)([tq], lr=0.5)
    t_opt.load_state_dict({"state": {0: {k: torch.tensor(v) for k, v in saved["state"][0].items()}},
                           "param_groups": saved["param_groups"]})
    assert t_opt.param_groups[0]["maximize"] is True
    for grad in ([1.0, -1.0], [0.5, 2.0]):
        p.grad, q.grad, tq.grad = np.array(grad), np.array(grad), torch.tensor(grad, dtype=torch.float64)
        opt.step(), resumed.step(), t_opt.step()
    np.testing.assert_array_equal(q.data, p.data)
    assert_close(p.data, tq.detach().numpy(), 1e-12)


@pytest.mark.parametrize("cls, config", [("Adam", dict(weight_decay=0.05, amsgrad=True)), ("AdamW", dict())])
def test_adam_checkpoint_through_npz_mid_run_continues_as_the_uninterrupted_run(cls, config):
    """Saved after 5 steps (flatten_state_dict, np.savez, np.load(allow_pickle=False)), loaded into a
    fresh optimiser: the next 15 steps are those of the run that was not interrupted, bit for bit."""
    straight, _, opt, _ = adam_runs(cls, config)
    resumed, theirs, opt2, t_opt = adam_runs(cls, config, save_at=5)
    for p, q in zip(straight, resumed):
        np.testing.assert_array_equal(p.data, q.data)
        assert opt.state[p]["step"] == opt2.state[q]["step"]
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key in opt.state[p]:
                np.testing.assert_array_equal(opt.state[p][key], opt2.state[q][key])
    assert_matches_torch(resumed, theirs, opt2, t_opt)
    assert type(opt2.state[resumed[0]]["step"]) is float
    assert opt2.param_groups[0]["betas"] == opt.param_groups[0]["betas"]


def test_adam_state_dict_has_torchs_layout():
    torch = pytest.importorskip("torch")
    ours, theirs, opt, t_opt = adam_runs("Adam", dict(amsgrad=True), steps=3)
    sd, t_sd = opt.state_dict(), t_opt.state_dict()
    assert sorted(sd["state"]) == sorted(t_sd["state"])
    for idx in sd["state"]:
        assert list(sd["state"][idx]) == list(t_sd["state"][idx])
    for g, tg in zip(sd["param_groups"], t_sd["param_groups"]):
        assert g == {k: v for k, v in tg.items()}               # the same keys and values, params as indices
    sd["state"][0]["exp_avg"][...] = 99.0                        # a copy
    assert not np.any(opt.state[ours[0]]["exp_avg"] == 99.0)
    del torch


@pytest.mark.parametrize("cls, config", [("Adam", dict(amsgrad=True, weight_decay=0.1)), ("AdamW", dict())])
def test_torchs_state_dict_loads_and_ours_loads_into_torch(cls, config):
    """PyTorch's optimiser state_dict, its tensors made arrays ('step' a 0-d float32 one), loads here
    and the run goes on as PyTorch's; ours, its arrays made tensors, loads into PyTorch's."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    start = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(12)]
    theirs = [torch.tensor(a, requires_grad=True) for a in start]
    t_opt = getattr(torch.optim, cls)(theirs, lr=0.02, **config)

    def run(params, opt, steps, as_tensor):
        for gs in steps:
            for p, g in zip(params, gs):
                p.grad = torch.from_numpy(g.copy()) if as_tensor else g.copy()
            opt.step()

    run(theirs, t_opt, grads[:5], True)
    t_sd = t_opt.state_dict()
    as_arrays = {"state": {i: {k: v.numpy() for k, v in s.items()} for i, s in t_sd["state"].items()},
                 "param_groups": t_sd["param_groups"]}
    ours = [Parameter(tp.detach().numpy().copy()) for tp in theirs]
    opt = getattr(optim, cls)(ours, lr=0.5)                        # the lr comes from the state
    opt.load_state_dict(as_arrays)
    assert opt.param_groups[0]["lr"] == 0.02 and opt.state[ours[0]]["step"] == 5.0

    back = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    t_back = getattr(torch.optim, cls)(back, lr=0.5, **config)
    sd = opt.state_dict()
    t_back.load_state_dict({"state": {i: {k: torch.tensor(v) for k, v in s.items()} for i, s in sd["state"].items()},
                            "param_groups": sd["param_groups"]})

    run(theirs, t_opt, grads[5:], True)
    run(ours, opt, grads[5:], False)
    run(back, t_back, grads[5:], True)
    assert_matches_torch(ours, theirs, opt, t_opt)
    for tp, tb in zip(theirs, back):
        np.testing.assert_array_equal(tp.detach().numpy(), tb.detach().numpy())


def test_adam_load_state_dict_fills_pytorchs_later_keys_and_adamw_stays_decoupled():
    p = param([1.0])
    sd = Adam([p], lr=0.1).state_dict()
    for key in ("amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay"):
        del sd["param_groups"][0][key]
    opt = Adam([p])
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["amsgrad"] is False and opt.param_groups[0]["decoupled_weight_decay"] is False
    w = AdamW([p])
    w.load_state_dict(sd)                              # an Adam state loaded into AdamW: decoupled, as PyTorch
    assert w.param_groups[0]["decoupled_weight_decay"] is True and w.param_groups[0]["lr"] == 0.1


def test_adam_refuses_an_sgd_state_and_a_bad_step():
    p = param([1.0, 2.0])
    sgd_state = SGD([p], lr=0.1, momentum=0.9).state_dict()
    opt = Adam([p])
    with pytest.raises(ValueError, match=r"param_groups\[0\] has no \['betas', 'eps'\]: is it the state_dict of"):
        opt.load_state_dict(sgd_state)
    groups = opt.state_dict()["param_groups"]
    with pytest.raises(ValueError, match="state 'step' of parameter 0 must be a number"):
        opt.load_state_dict({"state": {0: {"step": np.zeros(2), "exp_avg": np.zeros(2), "exp_avg_sq": np.zeros(2)}},
                             "param_groups": groups})
    with pytest.raises(ValueError, match=r"'exp_avg' of parameter 0 has shape \(3,\)"):
        opt.load_state_dict({"state": {0: {"step": 1.0, "exp_avg": np.zeros(3), "exp_avg_sq": np.zeros(2)}},
                             "param_groups": groups})
    assert opt.state == {}


def test_one_cycle_cycles_adams_beta1_as_torchs():
    torch = pytest.importorskip("torch")
    p, tp = param([0.0]), torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt, t_opt = Adam([p], lr=0.01, betas=(0.9, 0.99)), torch.optim.Adam([tp], lr=0.01, betas=(0.9, 0.99))
    kwargs = dict(max_lr=0.1, total_steps=30, pct_start=0.3)
    sched, t_sched = OneCycleLR(opt, **kwargs), torch.optim.lr_scheduler.OneCycleLR(t_opt, **kwargs)
    for t in range(30):
        assert opt.param_groups[0]["betas"] == t_opt.param_groups[0]["betas"]
        assert sched.get_last_lr() == t_sched.get_last_lr()
        p.grad, tp.grad = np.array([np.sin(t)]), torch.tensor([np.sin(t)], dtype=torch.float64)
        opt.step(), t_opt.step()
        sched.step(), t_sched.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12)
    assert opt.param_groups[0]["betas"][1] == 0.99 and "momentum" not in opt.param_groups[0]


# --- schedulers -----------------------------------------------------------------------------------
SCHEDULERS = [
    ("StepLR", dict(step_size=3), 20),
    ("StepLR", dict(step_size=4, gamma=0.5), 20),
    ("CosineAnnealingLR", dict(T_max=10), 30),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001), 21),
    ("CosineAnnealingLR", dict(T_max=1), 6),
    ("LinearLR", dict(), 10),
    ("LinearLR", dict(start_factor=0.1, end_factor=0.5, total_iters=7), 12),
    ("ExponentialLR", dict(gamma=0.9), 20),
]
IDS = [f"{n}-{k}" for n, k, _ in SCHEDULERS]


def two_group_sgd(torch=None):
    if torch is None:
        return SGD([{"params": [param([0.0])]}, {"params": [param([0.0])], "lr": 0.5}], lr=0.1, momentum=0.9)
    return torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]},
                            {"params": [torch.zeros(1, requires_grad=True)], "lr": 0.5}], lr=0.1, momentum=0.9)


@pytest.mark.parametrize("name, kwargs, steps", SCHEDULERS, ids=IDS)
def test_scheduler_lrs_equal_torchs(name, kwargs, steps):
    """Every step's lrs, of two groups, equal PyTorch's to the bit (CosineAnnealingLR over 3 T_max:
    its step() is recursive, and past T_max the lr climbs back)."""
    torch = pytest.importorskip("torch")
    opt, t_opt = two_group_sgd(), two_group_sgd(torch)
    sched = getattr(optim.lr_scheduler, name)(opt, **kwargs)
    t_sched = getattr(torch.optim.lr_scheduler, name)(t_opt, **kwargs)
    ours, theirs = [], []
    for _ in range(steps + 1):
        assert sched.last_epoch == t_sched.last_epoch
        ours.append(sched.get_last_lr())
        theirs.append(t_sched.get_last_lr())
        assert [g["lr"] for g in opt.param_groups] == ours[-1]
        opt.step(), t_opt.step()
        sched.step(), t_sched.step()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
    assert ours == theirs


def test_cosine_step_follows_torchs_recursion_not_only_the_closed_form():
    """The recursion drifts from the closed form by rounding; PyTorch's step() is the recursion.
    (At t - 1 = T_max the recursion's denominator would be 0: the other formula.)"""
    opt = SGD([param([0.0])], lr=0.1)
    sched = CosineAnnealingLR(opt, T_max=10, eta_min=0.01)
    lrs = [sched.get_last_lr()[0]]
    for _ in range(30):
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    closed = [0.01 + (0.1 - 0.01) * (1 + np.cos(np.pi * t / 10)) / 2 for t in range(31)]
    np.testing.assert_allclose(lrs, closed, rtol=1e-12, atol=1e-15)
    assert lrs[10] == pytest.approx(0.01, abs=1e-15) and lrs[20] == pytest.approx(0.1, rel=1e-12)
    assert lrs != closed                                                     # (not bit for bit)


def test_schedulers_follow_an_lr_set_by_hand_as_torchs_do():
    torch = pytest.importorskip("torch")
    for name, kwargs in (("StepLR", dict(step_size=2)), ("CosineAnnealingLR", dict(T_max=6)),
                         ("ExponentialLR", dict(gamma=0.8)), ("LinearLR", dict(total_iters=6))):
        opt, t_opt = two_group_sgd(), two_group_sgd(torch)
        sched = getattr(optim.lr_scheduler, name)(opt, **kwargs)
        t_sched = getattr(torch.optim.lr_scheduler, name)(t_opt, **kwargs)
        for t in range(8):
            if t == 3:
                opt.param_groups[0]["lr"] = t_opt.param_groups[0]["lr"] = 0.07
            opt.step(), t_opt.step()
            sched.step(), t_sched.step()
            assert sched.get_last_lr() == t_sched.get_last_lr(), (name, t)


def test_an_lr_or_beta1_a_scheduler_takes_out_of_range_is_stepped_with_and_reloaded_as_in_torch():
    """PyTorch range-checks lr and betas only in the optimiser's constructor, and a scheduler can take
    them out of range: LinearLR down to end_factor=0 rounds to lr = -1.85e-18 at its end; OneCycleLR's
    linear anneal ends below min_lr at its last step, and in a short cycle takes beta1 past 1 (1.03 here).
    PyTorch's optimisers step with them and load their checkpoint; so do ours."""
    schedules = [(lambda opt: LinearLR(opt, end_factor=0.0, total_iters=4), 4),
                 (lambda opt: OneCycleLR(opt, max_lr=0.1, total_steps=8, anneal_strategy="linear",
                                         base_momentum=0.5), 8)]
    for build, steps in schedules:
        for cls in (SGD, Adam, AdamW):
            p = param([1.0], grad=[1.0])
            opt = cls([p], lr=0.1)
            sched = build(opt)
            for _ in range(steps):
                opt.step()
                sched.step()
            group = opt.param_groups[0]
            assert group["lr"] < 0, (cls.__name__, group["lr"])
            if isinstance(sched, OneCycleLR) and cls is not SGD:
                assert group["betas"][0] == pytest.approx(1.0304, abs=1e-4)
            opt.step()                                          # (it used to raise: invalid lr, invalid beta)
            fresh = cls([param([1.0])], lr=0.1)
            fresh.load_state_dict(opt.state_dict())             # (it used to raise)
            assert fresh.param_groups[0]["lr"] == group["lr"]
    with pytest.raises(ValueError, match="invalid lr=-0.1"):        # given by the user: refused, as by PyTorch
        Adam([param([1.0])], lr=-0.1)
    with pytest.raises(ValueError, match="beta parameter at index 0"):
        Adam([param([1.0])], betas=(1.03, 0.999))
    # no scheduler writes the other hyper-parameters: out of range, they are still refused in step() and load
    for cls, key in ((Adam, "eps"), (AdamW, "weight_decay"), (SGD, "momentum"), (SGD, "weight_decay")):
        p = param([1.0], grad=[1.0])
        opt = cls([p], lr=0.1)
        saved = opt.state_dict()
        saved["param_groups"][0][key] = -0.01
        with pytest.raises(ValueError, match=f"invalid {key}=-0.01"):
            cls([param([1.0])], lr=0.1).load_state_dict(saved)
        if cls is not SGD:                                      # (SGD checks a group in step() for its flags only)
            opt.param_groups[0][key] = -0.01
            with pytest.raises(ValueError, match=f"invalid {key}=-0.01"):
                opt.step()
            assert p.data[0] == 1.0
    opt = Adam([param([1.0], grad=[1.0])], lr=0.1)
    opt.param_groups[0]["betas"] = (0.9, 1.0)                   # beta2: no scheduler writes it either
    with pytest.raises(ValueError, match="beta parameter at index 1"):
        opt.step()


@pytest.mark.parametrize("name, kwargs, steps", SCHEDULERS, ids=IDS)
def test_scheduler_step_with_an_epoch_takes_torchs_closed_form(name, kwargs, steps):
    torch = pytest.importorskip("torch")
    opt, t_opt = two_group_sgd(), two_group_sgd(torch)
    sched = getattr(optim.lr_scheduler, name)(opt, **kwargs)
    t_sched = getattr(torch.optim.lr_scheduler, name)(t_opt, **kwargs)
    for epoch in (5, 2, steps, 0):
        with pytest.warns(UserWarning, match="epoch parameter"):
            sched.step(epoch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_sched.step(epoch)
        assert sched.last_epoch == epoch and sched.get_last_lr() == t_sched.get_last_lr()


def test_scheduler_checkpoint_through_npz_continues_as_the_uninterrupted_run(tmp_path):
    """Adam with CosineAnnealingLR, saved after 5 steps into one flat .npz and loaded into fresh
    objects (the scheduler built before the optimiser's state is loaded, as lr_scheduler.py says)."""
    def build():
        opt = Adam([{"params": [param([1.0, 2.0])]}, {"params": [param([3.0])], "lr": 0.05}], lr=0.1)
        return opt, CosineAnnealingLR(opt, T_max=6, eta_min=0.001)

    def train(opt, sched, ts):
        for t in ts:
            for g in opt.param_groups:
                for p in g["params"]:
                    p.grad = np.full(p.data.shape, np.cos(t + p.data.size))
            opt.step()
            sched.step()

    opt, sched = build()
    train(opt, sched, range(15))
    opt2, sched2 = build()
    train(opt2, sched2, range(5))
    np.savez(tmp_path / "ckpt.npz", **{f"p{i}": g["params"][0].data for i, g in enumerate(opt2.param_groups)},
             **flatten_state_dict(opt2.state_dict(), prefix="optimizer."),
             **flatten_state_dict(sched2.state_dict(), prefix="scheduler."))
    opt3, sched3 = build()
    with np.load(tmp_path / "ckpt.npz", allow_pickle=False) as f:
        for i, g in enumerate(opt3.param_groups):
            g["params"][0].data[...] = f[f"p{i}"]
        opt3.load_state_dict(unflatten_state_dict(f, prefix="optimizer."))
        sched3.load_state_dict(unflatten_state_dict(f, prefix="scheduler."))
    assert sched3.last_epoch == 5 and sched3.state_dict() == sched2.state_dict()
    train(opt3, sched3, range(5, 15))
    for g, g3 in zip(opt.param_groups, opt3.param_groups):
        np.testing.assert_array_equal(g["params"][0].data, g3["params"][0].data)
        assert g["lr"] == g3["lr"]
    assert sched.get_last_lr() == sched3.get_last_lr()


def test_scheduler_state_dict_has_torchs_keys():
    torch = pytest.importorskip("torch")
    for name, kwargs, _ in SCHEDULERS:
        ours = getattr(optim.lr_scheduler, name)(two_group_sgd(), **kwargs).state_dict()
        theirs = getattr(torch.optim.lr_scheduler, name)(two_group_sgd(torch), **kwargs).state_dict()
        assert ours == {k: v for k, v in theirs.items() if k != "_get_lr_called_within_step"}, name


@pytest.mark.parametrize("cls, kwargs, message", [
    (StepLR, dict(step_size=0), "Expected positive integer step_size, but got 0"),
    (StepLR, dict(step_size=2.5), "step_size"),
    (StepLR, dict(step_size=2, gamma="0.1"), "gamma must be a number"),
    (CosineAnnealingLR, dict(T_max=0), "Expected positive integer T_max, but got 0"),
    (CosineAnnealingLR, dict(T_max=10, eta_min=None), "eta_min must be a number"),
    (LinearLR, dict(start_factor=0), r"Starting multiplicative factor .* got start_factor=0"),
    (LinearLR, dict(start_factor=1.5), "Starting multiplicative factor"),
    (LinearLR, dict(end_factor=1.5), r"Ending multiplicative factor .* got end_factor=1.5"),
    (LinearLR, dict(total_iters=0), "total_iters"),
    (ExponentialLR, dict(gamma=float("nan")), "gamma must be a number"),
])
def test_schedulers_reject_bad_arguments(cls, kwargs, message):
    opt = SGD([param([0.0])], lr=0.1)
    with pytest.raises(ValueError, match=message):
        cls(opt, **kwargs)
    assert opt.param_groups[0]["lr"] == 0.1 and "initial_lr" not in opt.param_groups[0]


@pytest.mark.parametrize("cls, kwargs", [(StepLR, dict(step_size=2)), (CosineAnnealingLR, dict(T_max=2)),
                                         (LinearLR, dict()), (ExponentialLR, dict(gamma=0.5))])
def test_schedulers_refuse_what_is_not_an_optimiser(cls, kwargs):
    with pytest.raises(TypeError, match="optimizer must be a nanotorch.optim.Optimizer, got list"):
        cls([param([0.0])], **kwargs)


def test_exports():
    assert optim.Adam is Adam and optim.AdamW is AdamW and issubclass(AdamW, Adam)
    for cls in (StepLR, CosineAnnealingLR, LinearLR, ExponentialLR):
        assert getattr(optim.lr_scheduler, cls.__name__) is cls and issubclass(cls, optim.lr_scheduler.LRScheduler)


@pytest.mark.parametrize("path", ["Adam", "AdamW", "lr_scheduler.StepLR", "lr_scheduler.CosineAnnealingLR",
                                  "lr_scheduler.LinearLR", "lr_scheduler.ExponentialLR"])
def test_signatures_are_pytorchs(path):
    """Every argument, positional and keyword-only, by name, kind and default, in PyTorch's order."""
    torch = pytest.importorskip("torch")
    import inspect
    import operator
    ours, theirs = operator.attrgetter(path)(optim), operator.attrgetter(path)(torch.optim)

    def args(f):
        return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]
    assert args(ours) == args(theirs)
