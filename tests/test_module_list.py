"""ModuleList: PyTorch's list API with PyTorch's keys, and a hand-written Module that loops over
ModuleLists in its forward and backward (gradient-checked, and loaded into the same torch model)."""
import re

import numpy as np
import pytest

import nanotorch
from nanotorch import nn as nt_nn
from nanotorch.gradcheck import gradcheck, gradcheck_directional


def residual_mlp(nn):
    """x: (N, 5) -> (N, 3): an input layer, three residual blocks x + act(norm(lin(x))) whose layers sit
    in three ModuleLists, and a head. Built on ``nn``, nanotorch's or torch's (which ignores backward)."""
    class ResidualMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(5, 6)
            # (no bias before a BatchNorm: in training its gradient is 0 up to rounding, see test_gradcheck.py)
            self.linears = nn.ModuleList([nn.Linear(6, 6, bias=False) for _ in range(3)])
            self.norms = nn.ModuleList(nn.BatchNorm1d(6) for _ in range(3))          # (a generator will do)
            self.acts = nn.ModuleList([nn.Tanh(), nn.Sigmoid()])
            self.acts.append(nn.LeakyReLU(0.2))
            self.head = nn.ModuleList([nn.Identity(), nn.Linear(6, 3)])

        def forward(self, x):
            x = self.inp(x)
            for lin, norm, act in zip(self.linears, self.norms, self.acts):
                x = x + act(norm(lin(x)))
            for layer in self.head:
                x = layer(x)
            return x

        def backward(self, grad_out):
            """The chain rule in reverse; at each block y = x + f(x), so dx = dy + f'(x)^T dy."""
            for layer in reversed(self.head):
                grad_out = layer.backward(grad_out)
            for lin, norm, act in reversed(list(zip(self.linears, self.norms, self.acts))):
                grad_out = grad_out + lin.backward(norm.backward(act.backward(grad_out)))
            return self.inp.backward(grad_out)
    return ResidualMLP()


def randomized(model, seed=3):
    """Random BatchNorm affine parameters and running statistics (at their start, eval is near the identity)."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, nt_nn.BatchNorm1d):
            m.weight.data[...] = rng.uniform(0.5, 1.5, 6) * rng.choice([-1.0, 1.0], 6)
            m.bias.data[...] = rng.standard_normal(6)
            m.running_mean[...] = rng.standard_normal(6)
            m.running_var[...] = rng.uniform(0.5, 2.0, 6)
    return model


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_module_looping_over_module_lists_passes_gradcheck(mode):
    nanotorch.manual_seed(0)
    model = randomized(residual_mlp(nt_nn).double()).train(mode == "train")
    x = np.random.default_rng(1).standard_normal((7, 5))
    result = gradcheck(model, x)
    assert result.max_error < 1e-6, f"{mode}: {result}"
    assert set(result.errors) == {"input"} | {n for n, _ in model.named_parameters()}
    assert gradcheck_directional(model, x, seed=2) < 1e-8


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_module_looping_over_module_lists_loads_into_torch_and_matches_it(mode):
    torch = pytest.importorskip("torch")
    nanotorch.manual_seed(0)
    ours = randomized(residual_mlp(nt_nn).double())
    theirs = residual_mlp(torch.nn).double()
    assert theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()}) == ([], [])
    assert list(ours.state_dict())[:6] == ["inp.weight", "inp.bias", "linears.0.weight", "linears.1.weight",
                                            "linears.2.weight", "norms.0.weight"]
    ours.train(mode == "train"), theirs.train(mode == "train")
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal((7, 5)), rng.standard_normal((7, 3))
    out = ours(x)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    out_t = theirs(xt)
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-10, atol=1e-10)
    dx = ours.backward(g)
    out_t.backward(torch.from_numpy(g))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, theirs_params[name].grad.numpy(), rtol=1e-10, atol=1e-10, err_msg=name)
    for key, value in theirs.state_dict().items():          # the running statistics the forward moved
        np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), rtol=1e-10, atol=1e-10, err_msg=key)


# --- the list API, step by step against torch's ----------------------------------------------------------------
def layout(ml):
    """The keys (with each Linear's out_features, which tell the layers apart) and the state_dict's keys."""
    layers = [(key, getattr(m, "out_features", type(m).__name__)) for key, m in ml._modules.items()]
    return layers, list(ml.state_dict())


def returned(value):
    """What a step returned, comparable across the two libraries."""
    if isinstance(value, nt_nn.Module) or type(value).__module__.startswith("torch"):
        if type(value).__name__ == "ModuleList":
            return "ModuleList", layout(value)
        return getattr(value, "out_features", type(value).__name__)
    return value


MODULE_LIST_STEPS = [
    ("append", lambda nn, ml: ml.append(nn.Linear(1, 4)) is ml),
    ("insert at 1", lambda nn, ml: ml.insert(1, nn.Linear(1, 5))),
    ("insert at 0", lambda nn, ml: ml.insert(0, nn.Linear(1, 6))),
    ("insert at len", lambda nn, ml: ml.insert(len(ml), nn.Linear(1, 7))),
    ("del [1]", lambda nn, ml: ml.__delitem__(1)),
    ("del [-1]", lambda nn, ml: ml.__delitem__(-1)),
    ("set [-2]", lambda nn, ml: ml.__setitem__(-2, nn.Linear(1, 8))),
    ("set [0] None", lambda nn, ml: ml.__setitem__(0, None)),
    ("get [-1]", lambda nn, ml: ml[-1]),
    ("get [0] None", lambda nn, ml: ml[0]),
    ("extend a list", lambda nn, ml: ml.extend([nn.Linear(1, 9), nn.ReLU(), nn.Linear(1, 10)]) is ml),
    ("extend a ModuleList", lambda nn, ml: ml.extend(nn.ModuleList([nn.Linear(1, 11)])) is ml),
    ("extend a generator", lambda nn, ml: ml.extend(nn.Linear(1, k) for k in (12, 13)) is ml),
    ("+= a list", lambda nn, ml: ml.__iadd__([nn.Linear(1, 14)]) is ml),
    ("slice [2:5]", lambda nn, ml: ml[2:5]),
    ("slice [::-2]", lambda nn, ml: ml[::-2]),
    ("+ a list", lambda nn, ml: ml + [nn.Linear(1, 15)]),
    ("pop(0)", lambda nn, ml: ml.pop(0)),
    ("pop(-2)", lambda nn, ml: ml.pop(-2)),
    ("del [1:3]", lambda nn, ml: ml.__delitem__(slice(1, 3))),
    ("del [::2]", lambda nn, ml: ml.__delitem__(slice(None, None, 2))),
    ("pop a slice", lambda nn, ml: ml.pop(slice(-2, None))),
    ("len", lambda nn, ml: len(ml)),
    ("iter", lambda nn, ml: [returned(m) for m in ml]),
    ("reversed", lambda nn, ml: [returned(m) for m in reversed(ml)]),
    ("dir has no digits", lambda nn, ml: [k for k in dir(ml) if k.isdigit()]),
]


def test_module_list_operations_give_torchs_keys_and_values():
    """Each step on both libraries' ModuleLists: the same value returned, the same keys after it."""
    torch = pytest.importorskip("torch")
    ours = nt_nn.ModuleList([nt_nn.Linear(1, k) for k in (1, 2, 3)])
    theirs = torch.nn.ModuleList([torch.nn.Linear(1, k) for k in (1, 2, 3)])
    assert layout(ours) == layout(theirs)
    for name, step in MODULE_LIST_STEPS:
        got, want = step(nt_nn, ours), step(torch.nn, theirs)
        assert returned(got) == returned(want), name
        assert type(got).__name__ == type(want).__name__, name
        assert layout(ours) == layout(theirs), name
    assert len(ours) == 2        # (the steps left something to compare)


def test_module_list_slices_and_sums_are_new_module_lists_keyed_from_0():
    a, b, c = nt_nn.Linear(1, 1), nt_nn.ReLU(), nt_nn.Linear(1, 2)
    ml = nt_nn.ModuleList([a, b, c])
    part = ml[1:]
    assert type(part) is nt_nn.ModuleList and list(part._modules) == ["0", "1"] and part[0] is b and part[1] is c
    assert list(ml._modules) == ["0", "1", "2"] and ml[1] is b            # the original as it was
    total = ml + part
    assert type(total) is nt_nn.ModuleList and list(total._modules) == ["0", "1", "2", "3", "4"]
    assert [m for m in total] == [a, b, c, b, c] and len(ml) == 3
    assert list(total.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    ml += ml                                                                # (extend by itself: doubled)
    assert [m for m in ml] == [a, b, c, a, b, c]
    assert [n for n, _ in ml.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]   # shared: once


def test_module_list_registers_its_modules_for_parameters_modes_and_dtype():
    ml = nt_nn.ModuleList([nt_nn.Linear(2, 3), nt_nn.BatchNorm1d(3)])
    assert [n for n, _ in ml.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    ml.eval()
    assert not ml[0].training and not ml[1].training
    ml.double()
    assert ml[0].weight.dtype == ml[1].running_mean.dtype == np.float64
    del ml[0]
    assert list(ml.state_dict()) == ["0.weight", "0.bias", "0.running_mean", "0.running_var", "0.num_batches_tracked"]
    assert not hasattr(ml, "1")                                              # no stale attribute left behind


# --- errors ------------------------------------------------------------------------------------------------------
def test_module_list_index_and_type_errors_as_torchs():
    torch = pytest.importorskip("torch")
    for nn in (nt_nn, torch.nn):
        ml = nn.ModuleList([nn.Linear(1, 1), nn.Linear(1, 2)])
        for index in (2, -3):
            for operation in (lambda: ml[index], lambda: ml.__setitem__(index, nn.ReLU()),
                              lambda: ml.__delitem__(index), lambda: ml.pop(index)):
                with pytest.raises(IndexError, match=f"index {index} is out of range"):
                    operation()
        for operation in (lambda: ml["0"], lambda: ml[1.0]):
            with pytest.raises(TypeError, match="cannot be interpreted as an integer"):
                operation()
        for operation in (lambda: ml.append(3), lambda: ml.extend([nn.ReLU(), 3]), lambda: nn.ModuleList([3]),
                          lambda: ml + [3]):
            with pytest.raises(TypeError, match="int is not a Module subclass"):
                operation()
        for operation in (lambda: ml.extend(3), lambda: ml.__iadd__(3), lambda: nn.ModuleList(3)):
            with pytest.raises(TypeError, match="ModuleList.extend should be called with an iterable, but got int"):
                operation()
        with pytest.raises(TypeError, match=re.escape("cannot assign 'int' as child module '1'")):
            ml[1] = 3
        with pytest.raises(NotImplementedError, match="ModuleList"):
            ml(np.zeros((2, 1)) if nn is nt_nn else torch.zeros(2, 1))
        assert len(ml) == 3 and isinstance(ml[2], nn.ReLU)        # (the extend that failed added its first)


def test_module_list_insert_refuses_what_torchs_mishandles():
    """PyTorch's insert raises a KeyError for a negative index (after moving some modules), leaves a
    gap in the keys past the end and stores a non-Module; here an index counts as a list's, and the
    others are refused with the list unchanged."""
    a, b = nt_nn.Linear(1, 1), nt_nn.Linear(1, 2)
    ml = nt_nn.ModuleList([a, b])
    with pytest.raises(TypeError, match="int is not a Module subclass"):
        ml.insert(1, 3)
    for index in (3, -3):
        with pytest.raises(IndexError, match=f"ModuleList.insert: index {index} is out of range for its 2 modules"):
            ml.insert(index, nt_nn.ReLU())
    assert list(ml._modules) == ["0", "1"] and ml[0] is a and ml[1] is b
    relu, tanh = nt_nn.ReLU(), nt_nn.Tanh()
    assert ml.insert(-1, relu) is None
    ml.insert(-3, tanh)
    assert [m for m in ml] == [tanh, a, relu, b] and list(ml._modules) == ["0", "1", "2", "3"]


def test_module_list_has_no_forward_or_backward_and_says_what_to_do():
    ml = nt_nn.ModuleList([nt_nn.Linear(2, 2)])
    with pytest.raises(NotImplementedError, match=r"ModuleList has no forward.*own forward.*nn\.Sequential"):
        ml(np.zeros((1, 2), np.float32))
    with pytest.raises(NotImplementedError, match=r"ModuleList has no backward.*reversed"):
        ml.backward(np.zeros((1, 2), np.float32))


# --- printing --------------------------------------------------------------------------------------------------
REPR_CASES = [
    ("empty", lambda nn: nn.ModuleList()),
    ("one", lambda nn: nn.ModuleList([nn.Linear(2, 3)])),
    ("runs", lambda nn: nn.ModuleList([nn.Linear(2, 3), nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.Linear(2, 3),
                                       nn.Linear(2, 3), nn.Tanh(), nn.ReLU()])),
    ("equal-reprs-different-layers", lambda nn: nn.ModuleList([nn.Linear(2, 3) for _ in range(4)])),
    ("nested-multiline", lambda nn: nn.ModuleList([nn.Sequential(nn.Linear(1, 1), nn.ReLU()) for _ in range(2)]
                                                  + [nn.ModuleList([nn.Sigmoid(), nn.Sigmoid()]), nn.Identity()])),
    ("with-none", lambda nn: nn.ModuleList([nn.ReLU(), nn.ReLU()]).append(None)),
    ("inside-a-module", lambda nn: nn.Sequential(nn.ModuleList([nn.LeakyReLU(0.1), nn.LeakyReLU(0.1)]),
                                                 nn.ModuleList())),
]


@pytest.mark.parametrize("build", [pytest.param(b, id=i) for i, b in REPR_CASES])
def test_module_list_repr_is_torchs(build):
    torch = pytest.importorskip("torch")
    assert repr(build(nt_nn)) == repr(build(torch.nn))
