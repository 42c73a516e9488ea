"""Frozen parameters (requires_grad=False) as PyTorch's: their grad stays None, so SGD and clip_grad_norm_
skip them; Parameter's NumPy conversion and numel."""
import copy

import numpy as np
import pytest

import nanotorch as nt
from nanotorch import nn, optim
from nanotorch.gradcheck import gradcheck_directional
from nanotorch.nn.fused import ConvBNGELU


def _freeze(model, how):
    """Freeze model[0] the three ways PyTorch's users do it."""
    if how == "module.requires_grad_":
        assert model[0].requires_grad_(False) is model[0]
    elif how == "attribute":
        for p in model[0].parameters():
            p.requires_grad = False
    else:                                   # a new Parameter(data, requires_grad=False) in each place
        for name, p in list(model[0].named_parameters()):
            setattr(model[0], name, nn.Parameter(p.data, requires_grad=False))


# (in, hidden, batch): the first Linear's gradients through its compiled small loops (grad_to_accumulate),
# or, at N * in * out >= 2**16, through BLAS (accumulate_grad)
@pytest.mark.parametrize("sizes", [(4, 8, 5), (32, 64, 64)], ids=["small", "blas"])
@pytest.mark.parametrize("how", ["module.requires_grad_", "attribute", "constructor"])
def test_fine_tuning_the_head_equals_torchs(how, sizes, rng):
    torch = pytest.importorskip("torch")
    n_in, hidden, batch = sizes
    model = nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, 3)).double()
    theirs = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 3)).double()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    _freeze(model, how)
    theirs[0].requires_grad_(False)
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in theirs.parameters()] \
        == [False, False, True, True]
    frozen = {k: v.copy() for k, v in model[0].state_dict().items()}
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    t_opt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    criterion, t_criterion = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    for step in range(5):
        x, y = rng.standard_normal((batch, n_in)), rng.integers(0, 3, batch)
        loss = criterion(model(x), y)
        opt.zero_grad()
        model.backward(criterion.backward())
        norm = nn.utils.clip_grad_norm_(model.parameters(), 0.05)
        opt.step()
        t_loss = t_criterion(theirs(torch.from_numpy(x)), torch.from_numpy(y))
        t_opt.zero_grad()
        t_loss.backward()
        t_norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.05)
        t_opt.step()
        assert float(t_norm) > 0.05                        # it clips
        np.testing.assert_allclose(float(loss), t_loss.item(), rtol=1e-12, err_msg=f"step {step}")
        np.testing.assert_allclose(float(norm), float(t_norm), rtol=1e-12, err_msg=f"step {step}")
        assert model[0].weight.grad is None and model[0].bias.grad is None
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[key], value.numpy(), rtol=1e-12, atol=1e-14, err_msg=key)
    for key, value in model[0].state_dict().items():
        assert np.array_equal(value, frozen[key]), key                     # not moved at all, weight decay included
    assert model[0].weight not in opt.state and model[0].bias not in opt.state     # no momentum buffer, as torch's
    assert len(opt.state) == len(t_opt.state) == 2


@pytest.mark.parametrize("frozen", ["0.weight", "1.weight", "1.bias", "1"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_block_with_a_frozen_child_computes_the_rest_as_unfrozen(frozen, dtype, rng):
    block = ConvBNGELU(3, 4, 3, padding=1).to(dtype)
    block[1].weight.data[...] = rng.uniform(0.5, 1.5, 4)
    block[1].bias.data[...] = rng.standard_normal(4)
    free = copy.deepcopy(block)
    if frozen == "1":
        block[1].requires_grad_(False)
    else:
        block.get_parameter(frozen).requires_grad = False
    assert block.uses_fused_kernels()
    x = rng.standard_normal((2, 3, 6, 5)).astype(dtype)
    out, out_free = block(x), free(x)
    da = rng.standard_normal(out.shape).astype(dtype)
    assert np.array_equal(out, out_free)
    assert np.array_equal(block.backward(da), free.backward(da))
    for (name, p), p_free in zip(block.named_parameters(), free.parameters()):
        if p.requires_grad:
            assert np.array_equal(p.grad, p_free.grad), name
        else:
            assert name.startswith(frozen) and p.grad is None, name
    for key, value in block.state_dict().items():                     # the running statistics too
        assert np.array_equal(value, free.state_dict()[key]), key
    before = {n: p.data.copy() for n, p in block.named_parameters()}
    optim.SGD(block.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1).step()
    for name, p in block.named_parameters():
        assert np.array_equal(p.data, before[name]) == (not p.requires_grad), name


def test_fused_block_frozen_in_a_conv_with_bias_and_on_the_im2col_path(rng):
    """The conv's bias (accumulate_grad) and the im2col convolution (a 5x5 kernel) frozen."""
    block = ConvBNGELU(2, 3, 5, padding=2, bias=True).double()
    free = copy.deepcopy(block)
    block[0].requires_grad_(False)
    x = rng.standard_normal((2, 2, 6, 6))
    out, out_free = block(x), free(x)
    assert np.array_equal(out, out_free) and not block[0].saved_for_backward()[2]     # (im2col, not direct)
    da = rng.standard_normal(out.shape)
    assert np.array_equal(block.backward(da), free.backward(da))
    assert block[0].weight.grad is None and block[0].bias.grad is None
    for p, p_free in zip(block[1].parameters(), free[1].parameters()):
        assert np.array_equal(p.grad, p_free.grad)


def test_freezing_changes_nothing_else_and_unfreezing_computes_the_grad_again(rng):
    lin = nn.Linear(3, 2).double()
    lin.weight.requires_grad_(False)
    x = rng.standard_normal((4, 3))
    lin.backward(np.ones_like(lin(x)))
    assert lin.weight.grad is None and lin.bias.grad is not None
    assert lin.weight.requires_grad_(True) is lin.weight
    lin.zero_grad()
    lin.backward(np.ones_like(lin(x)))
    np.testing.assert_allclose(lin.weight.grad, np.ones((2, 4)) @ x, rtol=1e-15)


def test_a_grad_set_by_hand_on_a_frozen_parameter_is_kept_and_used_as_torchs(rng):
    """PyTorch lets a frozen parameter hold a grad: backward does not add to it, clipping counts it, SGD uses it."""
    torch = pytest.importorskip("torch")
    lin = nn.Linear(3, 2).double()
    theirs = torch.nn.Linear(3, 2).double()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in lin.state_dict().items()})
    lin.weight.requires_grad = False
    theirs.weight.requires_grad_(False)
    hand = rng.standard_normal((2, 3))
    lin.weight.grad = hand.copy()
    theirs.weight.grad = torch.from_numpy(hand.copy())
    x = rng.standard_normal((4, 3))
    lin.backward(np.ones_like(lin(x)))
    theirs(torch.from_numpy(x)).sum().backward()
    assert np.array_equal(lin.weight.grad, hand) and np.array_equal(theirs.weight.grad.numpy(), hand)
    norm = nn.utils.clip_grad_norm_(lin.parameters(), 0.1)
    t_norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.1)
    np.testing.assert_allclose(norm, float(t_norm), rtol=1e-14)
    optim.SGD(lin.parameters(), lr=0.5).step()
    torch.optim.SGD(theirs.parameters(), lr=0.5).step()
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(lin.state_dict()[key], value.numpy(), rtol=1e-14, err_msg=key)
    lin.zero_grad(set_to_none=False)
    assert np.array_equal(lin.weight.grad, np.zeros((2, 3)))
    lin.zero_grad()
    assert lin.weight.grad is None and not lin.weight.requires_grad


def test_requires_grad_is_kept_by_casts_copies_and_load_state_dict_but_not_saved():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    model[0].requires_grad_(False)
    state = model.state_dict()
    assert list(state) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert all(isinstance(v, np.ndarray) for v in state.values())          # arrays, with no flag
    other = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    other.load_state_dict(state)
    assert all(p.requires_grad for p in other.parameters())                # the flag is the model's own
    model.load_state_dict(other.state_dict())
    assert model.double() is model
    for m in (model, copy.deepcopy(model)):
        assert [p.requires_grad for p in m.parameters()] == [False, False, True, True]
    assert model.requires_grad_() is model and all(p.requires_grad for p in model.parameters())


def test_requires_grad_must_be_a_bool_and_only_floating_parameters_exist():
    p = nn.Parameter(np.ones(2), requires_grad=False)
    assert p.requires_grad is False
    p.requires_grad = np.bool_(True)                      # (NumPy's bool let in, as Module.train lets it in)
    assert p.requires_grad is True
    for value in (0, 1, None, "no"):
        with pytest.raises(RuntimeError, match="requires_grad must be a bool"):     # PyTorch's error
            p.requires_grad = value
        with pytest.raises(TypeError, match="requires_grad must be a bool"):        # PyTorch's, from its constructor
            nn.Parameter(np.ones(2), requires_grad=value)
    with pytest.raises(RuntimeError, match="requires_grad must be a bool"):
        nn.Linear(2, 2).requires_grad_(0)
    assert p.requires_grad is True
    for frozen in (True, False):
        with pytest.raises(TypeError, match="expected floating-point data"):
            nn.Parameter(np.arange(3), requires_grad=frozen)


def test_a_frozen_parameter_prints_that_it_is_frozen():
    p = nn.Parameter(np.array([0.25, -1.5]), requires_grad=False)
    assert repr(p) == "Parameter containing (requires_grad=False):\n" + repr(p.data)
    p.requires_grad = True
    assert repr(p) == "Parameter containing:\n" + repr(p.data)


# --- flatten_parameters ----------------------------------------------------------------------------------
def test_flatten_parameters_refuses_a_frozen_parameter_and_says_what_to_do():
    model = nn.Sequential(nn.Linear(2, 3), nn.GELU(), nn.Linear(3, 1))
    model[2].bias.requires_grad = False
    before = model[0].weight.data
    with pytest.raises(ValueError, match=r"parameter 3 .*shape \(1,\).* requires_grad=False.*"
                                         r"if p\.requires_grad"):
        nn.utils.flatten_parameters(model.parameters())
    assert model[0].weight.grad is None and model[0].weight.data is before        # nothing flattened


def test_a_flattened_parameter_refuses_to_be_frozen():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    flat = nn.utils.flatten_parameters(model.parameters())
    for p in (model[0].weight, flat):
        with pytest.raises(RuntimeError, match=r"flatten_parameters.*freeze it before flattening"):
            p.requires_grad = False
        assert p.requires_grad is True
        p.requires_grad = True                                    # (nothing to refuse)
    with pytest.raises(RuntimeError, match="flatten_parameters"):
        model.requires_grad_(False)


def test_flattening_only_the_trainable_parameters_equals_training_them_unflattened(rng):
    """The way the refusal suggests: frozen parameters left out of the flat vector keep their grad None."""
    def train(flat):
        nt.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3)).double()
        model[0].requires_grad_(False)
        params = [nn.utils.flatten_parameters(p for p in model.parameters() if p.requires_grad)] if flat \
            else list(model.parameters())
        opt = optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1)
        data = np.random.default_rng(0)
        criterion, norms = nn.CrossEntropyLoss(), []
        for _ in range(5):
            criterion(model(data.standard_normal((5, 4))), data.integers(0, 3, 5))
            opt.zero_grad()
            model.backward(criterion.backward())
            norms.append(float(nn.utils.clip_grad_norm_(params, 0.05)))
            opt.step()
        assert model[0].weight.grad is None
        return model, norms
    (plain, norms), (flat, flat_norms) = train(False), train(True)
    np.testing.assert_allclose(flat_norms, norms, rtol=1e-12)
    for key, value in plain.state_dict().items():
        np.testing.assert_allclose(flat.state_dict()[key], value, rtol=1e-12, atol=1e-14, err_msg=key)
    nt.manual_seed(0)
    start = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3)).double()
    for model in (plain, flat):
        assert np.array_equal(model[0].weight.data, start[0].weight.data)


# --- gradcheck ---------------------------------------------------------------------------------------------
def test_gradcheck_checks_the_trainable_parameters_only(rng):
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)).double()
    model[0].weight.requires_grad = False
    x = rng.standard_normal((3, 3))
    result = nt.gradcheck(model, x)
    assert set(result.errors) == {"input", "0.bias", "2.weight", "2.bias"}
    assert result.max_error < 1e-6, result
    assert gradcheck_directional(model, x) < 1e-8
    with pytest.raises(ValueError, match=r"'0\.weight' has requires_grad=False"):
        nt.gradcheck(model, x, params=["0.weight", "2.bias"])
    assert model[0].weight.grad is None


# --- Parameter as an array ---------------------------------------------------------------------------------
def test_parameter_converts_to_its_data_and_counts_its_elements():
    torch = pytest.importorskip("torch")
    data = np.array([[3.0, -4.0, 0.0], [0.0, 12.0, 0.0]], dtype=np.float32)
    p = nn.Parameter(data)
    assert np.asarray(p) is p.data                                  # its data, not a copy
    assert np.linalg.norm(p) == np.linalg.norm(data) == 13.0
    copied = np.array(p)
    assert copied is not p.data and np.array_equal(copied, data)
    assert np.asarray(p, dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError):
        np.array(p, dtype=np.float64, copy=False)                  # a cast cannot avoid a copy
    assert p.numel() == torch.nn.Parameter(torch.from_numpy(data)).numel() == 6
    assert type(p.numel()) is int
    assert nn.Parameter().numel() == 0
    assert sum(q.numel() for q in nn.Linear(3, 2).parameters()) == 8
