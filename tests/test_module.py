"""Module bookkeeping as PyTorch keeps it: parameters set to None, Sequential slices, Flatten's dims,
and the fused ConvBNGELU falling back to its children when they no longer fit its kernels."""
import math

import numpy as np
import pytest

import nanotorch as nt
from nanotorch import nn, optim


def floats(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape, dtype=dtype)


# --- a parameter set to None ------------------------------------------------------------------------------
def test_parameter_set_to_none_leaves_parameters_and_state_dict():
    conv = nn.Conv2d(1, 2, 3)
    conv.bias = None
    assert [n for n, _ in conv.named_parameters()] == ["weight"]
    assert list(conv.state_dict()) == ["weight"]
    assert list(conv.parameters()) == [conv.weight]
    conv.double().zero_grad()                      # nothing iterating the parameters trips on the None
    y = conv(floats(2, 1, 5, 5))
    conv.backward(np.ones_like(y))
    opt = optim.SGD(conv.parameters(), lr=0.1)
    opt.step()
    conv.load_state_dict(conv.state_dict())
    with pytest.raises(ValueError, match=r"unexpected keys: \['bias'\]"):
        conv.load_state_dict({**conv.state_dict(), "bias": np.zeros(2)})


def test_parameter_set_back_keeps_its_place():
    lin = nn.Linear(3, 2)
    lin.bias = None
    lin.bias = nn.Parameter(np.zeros(2, dtype=np.float32))
    assert list(lin.state_dict()) == ["weight", "bias"]


def test_assigning_an_array_to_a_parameter_is_a_type_error():
    conv = nn.Conv2d(1, 2, 3)
    with pytest.raises(TypeError, match=r"cannot assign 'numpy.ndarray' as parameter 'bias' "
                                        r"\(nanotorch.nn.Parameter or None expected\)"):
        conv.bias = np.zeros(2, dtype=np.float32)
    assert isinstance(conv.bias, nn.Parameter) and list(conv.state_dict()) == ["weight", "bias"]


# --- a child set to None --------------------------------------------------------------------------------
def test_keys_under_a_child_set_to_none_are_not_unexpected():
    """As in PyTorch: the slot stays, state_dict and parameters() skip it, and load_state_dict passes
    over keys under it (a checkpoint of the model before the child was removed still loads strictly)."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    full = model.state_dict()
    setattr(model[1], "0", None)
    assert list(model.state_dict()) == ["0.weight", "0.bias"] and len(list(model.parameters())) == 2
    assert model.load_state_dict(full) == ([], [])
    setattr(model, "1", None)
    assert model.load_state_dict({**full, "1.0.weight.x": np.zeros(1)}) == ([], [])
    assert model.load_state_dict({**full, "1": np.zeros(1), "2.weight": np.zeros(1)}, strict=False) == \
        ([], ["1", "2.weight"])                           # "1" names the slot itself, "2" no child: unexpected


# --- Sequential slices --------------------------------------------------------------------------------------
def test_sequential_slice_is_a_sequential_with_the_original_keys():
    nt.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    tail = model[1:]
    assert type(tail) is nn.Sequential and len(tail) == 2
    assert tail[1] is model[2] and model[-1] is model[2]
    assert list(tail.state_dict()) == ["2.weight", "2.bias"]            # as torch keeps them
    x = floats(5, 4, dtype=np.float32)
    np.testing.assert_array_equal(tail(model[:1](x)), model(x))
    assert len(model[::2]) == 2 and len(model[3:]) == 0


# --- Flatten's dims, as torch.flatten checks them -----------------------------------------------------------
@pytest.mark.parametrize("start, end, shape", [
    (1, -1, (2, 60)), (0, -1, (120,)), (-4, 3, (120,)), (3, 3, (2, 3, 4, 5)), (-1, -1, (2, 3, 4, 5)),
    (1, 2, (2, 12, 5)),
])
def test_flatten_dims(start, end, shape):
    f = nn.Flatten(start, end)
    x = floats(2, 3, 4, 5)
    assert f(x).shape == shape
    np.testing.assert_array_equal(f.backward(f(x)), x)


@pytest.mark.parametrize("start, end, got", [(5, -1, 5), (-9, -1, -9), (1, 4, 4)])
def test_flatten_dim_out_of_range(start, end, got):
    with pytest.raises(IndexError, match=rf"Flatten: .*expected to be in range of \[-4, 3\], but got {got}\b"):
        nn.Flatten(start, end)(floats(2, 3, 4, 5))


@pytest.mark.parametrize("start, end", [(2, 1), (3, -2)])
def test_flatten_start_after_end(start, end):
    with pytest.raises(RuntimeError, match="Flatten: start_dim cannot come after end_dim"):
        nn.Flatten(start, end)(floats(2, 3, 4, 5))


def test_flatten_0d_and_empty_batch():
    f = nn.Flatten(0, -1)
    assert f(np.array(3.0)).shape == (1,) and f.backward(np.ones(1)).shape == ()
    with pytest.raises(IndexError, match=r"range of \[-1, 0\], but got 1\b"):
        nn.Flatten()(np.array(3.0))                    # start_dim=1 does not exist, as in torch
    assert nn.Flatten()(np.zeros((0, 3, 4))).shape == (0, 12)


# --- ConvBNGELU runs its children when they no longer fit the fused kernels ------------------------------
def _set_child(i, layer):
    return lambda block: setattr(block, str(i), layer.double())


@pytest.mark.parametrize("change", [
    pytest.param(lambda b: setattr(b[2], "approximate", "tanh"), id="gelu-tanh"),
    pytest.param(_set_child(1, nn.BatchNorm2d(3, affine=False)), id="batchnorm-affine-False"),
    pytest.param(lambda b: b[1].eval(), id="batchnorm-eval-in-a-training-block"),
    pytest.param(_set_child(2, nn.ReLU()), id="relu-instead-of-gelu"),
])
def test_conv_bn_gelu_falls_back_to_its_children(change):
    nt.manual_seed(0)
    block = nn.ConvBNGELU(2, 3, 3, padding=1).double()
    change(block)
    assert not block.uses_fused_kernels()
    conv, bn, act = block
    x, dy = floats(2, 2, 5, 5), floats(2, 3, 5, 5, seed=1)
    before = block.state_dict()
    want = act(bn(conv(x)))                                       # the children one by one
    want_dx = conv.backward(bn.backward(act.backward(dy)))
    want_grads = {n: p.grad.copy() for n, p in block.named_parameters()}
    want_state = block.state_dict()
    block.zero_grad()
    block.load_state_dict(before)                                 # BatchNorm's statistics as they were
    np.testing.assert_allclose(block(x), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(block.backward(dy), want_dx, rtol=1e-12, atol=1e-12)
    for n, p in block.named_parameters():
        np.testing.assert_allclose(p.grad, want_grads[n], rtol=1e-12, atol=1e-12, err_msg=n)
    for k, v in block.state_dict().items():
        np.testing.assert_allclose(v, want_state[k], rtol=1e-12, atol=1e-12, err_msg=k)


def test_conv_bn_gelu_still_fuses_by_default():
    block = nn.ConvBNGELU(2, 3, 3, padding=1)
    assert block.uses_fused_kernels()
    block(floats(2, 2, 5, 5, dtype=np.float32))
    assert block.cache[0] is not None                    # the fused forward's saved tensors


# --- a child module set to None, BatchNorm without a bias --------------------------------------------------
def test_child_set_to_none_leaves_modules_and_a_non_module_is_a_type_error():
    seq = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    setattr(seq, "1", None)
    assert [n for n, _ in seq.named_modules()] == ["", "0"]
    assert len(list(seq.children())) == 1
    with pytest.raises(TypeError, match=r"as child module '0' \(nanotorch.nn.Module or None expected\)"):
        setattr(seq, "0", np.zeros(3))


def test_batchnorm_with_its_bias_set_to_none_runs_as_a_zero_bias():
    x, dy = floats(4, 3, 5, 5), floats(4, 3, 5, 5, seed=1)
    plain, no_bias = nn.BatchNorm2d(3).double(), nn.BatchNorm2d(3).double()
    no_bias.bias = None
    np.testing.assert_allclose(no_bias(x), plain(x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(no_bias.backward(dy), plain.backward(dy), rtol=0, atol=1e-12)
    np.testing.assert_allclose(no_bias.weight.grad, plain.weight.grad, rtol=0, atol=1e-12)
    assert list(no_bias.state_dict()) == ["weight", "running_mean", "running_var", "num_batches_tracked"]


def test_block_backward_after_an_eval_forward_under_no_grad_is_an_error_and_touches_no_gradient():
    """The fused evaluation path keeps nothing: a backward after it must not reuse an older cache
    (here the fallback's, which would run BatchNorm's backward on stale values)."""
    block = nn.ConvBNGELU(1, 2, 3, padding=1).double()
    block[2].approximate = "tanh"                   # the children run one by one ...
    block(floats(2, 1, 6, 6))
    block[2].approximate = "none"                   # ... then the fused kernels, in eval under no_grad
    block.eval()
    with nt.no_grad():
        y = block(floats(2, 1, 6, 6))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        block.backward(np.ones_like(y))
    assert block[1].weight.grad is None and block[0].weight.grad is None


# --- a module run twice in one Sequential; shared Parameters listed once ------------------------------------
@pytest.mark.parametrize("build", [
    pytest.param(lambda act: nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 4), act), id="same-ReLU-twice"),
    pytest.param(lambda act: nn.Sequential(nn.Sequential(act), nn.Sequential(nn.Linear(4, 4), act)), id="nested"),
    pytest.param(lambda act: setattr(nn.Sequential(nn.Linear(4, 4), act), "extra", act), id="assigned-later"),
])
def test_a_module_a_sequential_would_run_twice_is_refused(build):
    """Its cache holds one call's values, so the second call would silently corrupt the first's
    backward (measured before the check: dx off by 0.55): the Sequential refuses it instead."""
    with pytest.raises(ValueError, match=r"ReLU at '.*' is already at '.*', so forward would run it twice"):
        build(nn.ReLU())


def test_a_sequential_cannot_contain_itself_but_can_wrap_the_child_it_replaces():
    seq = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="already at this Sequential"):
        seq.loop = seq
    holder = nn.Sequential()
    holder.block = nn.Linear(2, 2)
    holder.block = nn.Sequential(holder.block, nn.ReLU())       # the old child, wrapped: allowed
    holder.block = holder.block                                  # and assigned to itself
    assert [n for n, _ in holder.named_modules()] == ["", "block", "block.0", "block.1"]


def test_a_module_may_hold_a_handle_to_a_layer_and_swap_its_children():
    """What a hand-written forward does with its children is its own business, as in PyTorch: a
    second name for a layer (which named_modules lists once), or two children swapped."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Linear(3, 3), nn.GELU())
            self.first = self.features[0]
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)
            self.a, self.b = self.b, self.a
    net = Net()
    assert [n for n, _ in net.named_modules()] == ["", "features", "features.0", "features.1", "a", "b"]
    assert len(list(net.parameters())) == 6 and "first.weight" in net.state_dict()


def test_a_shared_parameter_is_listed_once_and_gets_both_uses_gradients():
    """Tied weights as PyTorch ties them (b.weight = a.weight): parameters() lists the array once
    (so SGD and clipping see it once), state_dict() under both names, and its gradient is the sum
    of both uses', which a finite-difference check of the whole model confirms."""
    from nanotorch.gradcheck import gradcheck
    nt.manual_seed(0)
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    model = nn.Sequential(a, nn.GELU(), b).double()
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.bias"]
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    optim.SGD(model.parameters(), lr=0.1)                        # no "same Parameter twice"
    result = gradcheck(model, floats(4, 3))
    assert result.max_error < 1e-6, result
    assert set(result.errors) >= {"input", "0.weight", "2.bias"}


def test_a_parameter_prints_its_values_as_pytorchs_does():
    """print(layer.weight) showed only the shape and dtype, where PyTorch shows the values."""
    p = nn.Parameter(np.array([[0.25, -1.5]], dtype=np.float32))
    assert repr(p) == "Parameter containing:\n" + repr(p.data)
    assert "0.25" in str(p) and "-1.5" in str(p)


def test_a_subclass_with_forward_only_is_told_to_write_its_backward():
    """PyTorch's habit (a model class with forward alone) got 'NotImplementedError: Net.backward'."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x)
    net = Net()
    out = net(np.ones((1, 2), dtype=np.float32))
    with pytest.raises(NotImplementedError, match=r"Net\.backward: nanotorch has no autograd.*reverse.*Sequential"):
        net.backward(np.ones_like(out))


def test_requires_grad_false_freezes_instead_of_being_refused():
    """It was refused (nanotorch could not freeze); now the frozen weight's grad stays None (tests/test_freeze.py)."""
    lin = nn.Linear(2, 2).double()
    lin.weight.requires_grad = False
    lin.backward(np.ones_like(lin(floats(3, 2))))
    assert lin.weight.grad is None and lin.bias.grad is not None


def test_train_mode_must_be_a_bool_and_load_state_dict_returns_the_key_lists():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with pytest.raises(ValueError, match="training mode is expected to be boolean"):    # PyTorch's error
        model.train("no")
    state = model.state_dict()
    del state["1.running_var"]
    state["extra"] = np.zeros(1)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["1.running_var"] and unexpected == ["extra"]
    assert model.load_state_dict(model.state_dict()) == ([], [])


def test_parameters_recurse_and_state_dict_prefix_as_pytorch():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert list(model.parameters(recurse=False)) == [] and len(list(model[0].parameters(recurse=False))) == 2
    assert list(model.buffers(recurse=False)) == [] and [n for n, _ in model.named_buffers()] == [
        "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    state = model.state_dict(prefix="net.")
    assert list(state)[:2] == ["net.0.weight", "net.0.bias"]
    into = {"other": 1}
    assert model.state_dict(destination=into) is into and "1.running_mean" in into and into["other"] == 1
    with pytest.raises(NotImplementedError, match="keep_vars"):
        model.state_dict(keep_vars=True)


def test_load_state_dict_error_is_a_runtime_error_as_in_pytorch_and_a_value_error():
    model = nn.Sequential(nn.Linear(2, 2))
    for exc in (RuntimeError, ValueError):
        with pytest.raises(exc, match="missing keys"):
            model.load_state_dict({})


def test_a_state_dict_without_batchnorms_count_loads_as_in_pytorch():
    """PyTorch fills a missing num_batches_tracked (state dicts from before it existed) by keeping the
    module's own; any other missing key is still an error."""
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model[1].num_batches_tracked[()] = 7
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert model.load_state_dict(state) == ([], [])
    assert int(model[1].num_batches_tracked) == 7
    del state["1.running_mean"]
    with pytest.raises(RuntimeError, match=r"missing keys: \['1.running_mean'\]"):
        model.load_state_dict(state)


def test_load_state_dict_refuses_an_array_of_the_right_size_but_another_shape():
    """A transposed weight or a reshaped buffer has the right number of values, not the right shape."""
    model = nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2))
    before = model.state_dict()
    state = model.state_dict()
    state["0.weight"] = np.ascontiguousarray(state["0.weight"].T)                 # (4, 2) for (2, 4)
    state["1.running_mean"] = state["1.running_mean"].reshape(1, 2)               # (1, 2) for (2,)
    with pytest.raises(ValueError, match=r"0\.weight: checkpoint \(4, 2\) vs model \(2, 4\)(.|\n)*"
                                         r"1\.running_mean: checkpoint \(1, 2\) vs model \(2,\)"):
        model.load_state_dict(state)
    for k, v in model.state_dict().items():
        assert v.shape == before[k].shape and np.array_equal(v, before[k]), k


def test_load_state_dict_non_strict_still_refuses_a_wrong_shape():
    """strict=False forgives missing and unexpected keys, not a wrong shape (PyTorch's size mismatch),
    even one that would broadcast."""
    model = nn.Sequential(nn.Linear(4, 2))
    bias = model[0].bias.data.copy()
    state = {"0.bias": np.full(1, 5.0, dtype=np.float32)}
    with pytest.raises(ValueError, match=r"0\.bias: checkpoint \(1,\) vs model \(2,\)"):
        model.load_state_dict(state, strict=False)
    np.testing.assert_array_equal(model[0].bias.data, bias)


def test_loaded_buffers_are_copies_in_the_modules_dtype():
    """Training after a load must not write into the caller's state_dict, and a float64 state_dict
    loaded into a float32 module leaves it float32."""
    bn = nn.BatchNorm1d(3)
    state = {k: v.astype(np.float64) if v.dtype == np.float32 else v.copy() for k, v in bn.state_dict().items()}
    saved = {k: v.copy() for k, v in state.items()}
    bn.load_state_dict(state)
    assert bn.running_mean.dtype == bn.running_var.dtype == np.float32
    bn(floats(4, 3, dtype=np.float32))                # a training forward updates the running statistics
    assert not np.array_equal(bn.running_mean, saved["running_mean"])
    for k in state:
        np.testing.assert_array_equal(state[k], saved[k], err_msg=k)


def test_manual_seed_sets_the_initial_weights():
    def weights(seed):
        nt.manual_seed(seed)
        return nn.Linear(5, 4).weight.data.copy()
    first, again, other = weights(1), weights(1), weights(2)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert nt.manual_seed(3) is nt.default_generator()


def test_no_grad_turns_gradients_back_on_after_an_exception_and_lets_it_through():
    enabled = nt.grad_mode.is_grad_enabled

    @nt.no_grad
    def fails():
        raise FloatingPointError("boom")

    with pytest.raises(FloatingPointError, match="boom"):
        fails()
    assert enabled()
    with pytest.raises(FloatingPointError, match="boom"):
        with nt.no_grad():
            raise FloatingPointError("boom")
    assert enabled()


# --- traversals are iterators; Sequential as a list; registration by name (a second audit against torch) ------
TRAVERSALS = ["parameters", "buffers", "modules", "children",
              "named_parameters", "named_buffers", "named_modules", "named_children"]


def identities(items):
    """What a traversal lists, comparable: (name, id) pairs or ids (a buffer is an array, whose == is elementwise)."""
    return [(x[0], id(x[1])) if isinstance(x, tuple) else id(x) for x in items]


@pytest.mark.parametrize("method", TRAVERSALS)
def test_traversals_are_iterators_that_next_takes_and_len_refuses(method):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Sequential(nn.ReLU()))
    items = getattr(model, method)()
    assert iter(items) is items
    first = next(items)
    with pytest.raises(TypeError):
        len(getattr(model, method)())
    assert identities([first, *items]) == identities(list(getattr(model, method)()))
    assert not list(items)                                     # used up, as a generator is


def test_next_of_parameters_and_sgd_and_clipping_take_the_iterator():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    assert next(model.parameters()) is model[0].weight
    opt = optim.SGD(model.parameters(), lr=0.1)
    assert identities(opt.param_groups[0]["params"]) == identities(p for _, p in model.named_parameters())
    for p in opt.param_groups[0]["params"]:
        p.grad = np.full_like(p.data, 3.0)
    total = nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    assert np.isclose(total, 3.0 * math.sqrt(3 * 2 + 2 + 2 + 1), rtol=1e-6)     # every gradient counted once
    assert all(np.allclose(p.grad, 3.0 / (total + 1e-6)) for p in opt.param_groups[0]["params"])   # and clipped


def linears(*sizes):
    """Linear(1, s) layers: each one's out_features tells it apart."""
    return [nn.Linear(1, s) for s in sizes]


def layout(seq):
    """Each child's key and its Linear's out_features."""
    return [(k, m.out_features) for k, m in seq._modules.items()]


def test_sequential_list_operations_renumber_their_keys_as_pytorch():
    seq = nn.Sequential(*linears(1, 2, 3))
    assert seq.append(linears(4)[0]) is seq and layout(seq) == [("0", 1), ("1", 2), ("2", 3), ("3", 4)]
    assert seq.insert(-1, linears(5)[0]) is seq and layout(seq) == [("0", 1), ("1", 2), ("2", 3), ("3", 5), ("4", 4)]
    del seq[1]
    assert layout(seq) == [("0", 1), ("1", 3), ("2", 5), ("3", 4)]
    assert list(seq.state_dict())[2:4] == ["1.weight", "1.bias"]
    assert seq.pop(-1).out_features == 4 and layout(seq) == [("0", 1), ("1", 3), ("2", 5)]
    seq[-3] = linears(6)[0]
    assert layout(seq) == [("0", 6), ("1", 3), ("2", 5)]
    assert seq.extend(linears(7, 8)) is seq and layout(seq)[3:] == [("3", 7), ("4", 8)]
    del seq[::2]
    assert layout(seq) == [("0", 3), ("1", 7)]
    assert [m.out_features for m in seq.pop(slice(0, 2))] == [3, 7] and len(seq) == 0
    assert seq.insert(0, linears(9)[0]) is seq and layout(seq) == [("0", 9)]


def test_sequential_index_errors_and_non_modules():
    seq = nn.Sequential(*linears(1, 2))
    for index in (2, -3):
        for operation in (lambda: seq[index], lambda: seq.__setitem__(index, nn.ReLU()),
                          lambda: seq.__delitem__(index), lambda: seq.pop(index)):
            with pytest.raises(IndexError, match=f"index {index} is out of range"):
                operation()
    with pytest.raises(IndexError, match="index 3 is out of range"):
        seq.insert(3, nn.ReLU())
    with pytest.raises(TypeError, match="cannot be interpreted as an integer"):
        seq["0"]
    for operation in (lambda: seq.append(3), lambda: seq.insert(0, 3), lambda: seq.extend([3])):
        with pytest.raises(TypeError, match="int is not a Module"):
            operation()
    with pytest.raises(TypeError, match=r"cannot assign 'int' as child module '1'"):
        seq[-1] = 3
    assert layout(seq) == [("0", 1), ("1", 2)]


def test_sequential_refuses_a_layer_it_would_run_twice_however_it_is_added():
    seq = nn.Sequential(*linears(1, 2))
    for operation in (lambda: seq.append(seq[0]), lambda: seq.insert(0, seq[1]), lambda: seq.extend([seq[0]]),
                      lambda: seq.__setitem__(0, seq[1]), lambda: seq.append(nn.Sequential(seq[1]))):
        with pytest.raises(ValueError, match="would run it twice"):
            operation()
    assert layout(seq) == [("0", 1), ("1", 2)]
    seq[0] = seq[0]                                              # (the same layer in its own place)


def test_a_refused_extend_or_add_in_place_changes_nothing():
    """extend and += of several layers, one of which would run twice, are refused before any is
    added (as insert is), not after the layers before it."""
    seq = nn.Sequential(*linears(1, 2))
    for operation in (lambda: seq.extend([*linears(3), seq[0]]),
                      lambda: seq.__iadd__(nn.Sequential(*linears(3), seq[1]))):
        with pytest.raises(ValueError, match="would run it twice"):
            operation()
        assert layout(seq) == [("0", 1), ("1", 2)]
    with pytest.raises(ValueError, match="would run it twice"):
        seq += seq                                               # (itself: every layer twice)
    assert layout(seq) == [("0", 1), ("1", 2)]


def test_sequential_with_empty_slots_takes_new_layers_and_renumbers_the_slots():
    """Children set to None (slots PyTorch keeps) are no layer run twice, and are renumbered as layers are."""
    seq = nn.Sequential(*linears(1, 2, 3))
    seq[0] = seq[2] = None
    seq.append(linears(4)[0])
    seq.insert(1, linears(5)[0])
    del seq[0]
    assert [(k, m and m.out_features) for k, m in seq._modules.items()] == [("0", 5), ("1", 2), ("2", None), ("3", 4)]
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]


def test_sequential_of_an_ordered_dict_keeps_its_names_until_renumbered():
    from collections import OrderedDict
    first, second, third = linears(1, 2, 3)
    seq = nn.Sequential(OrderedDict([("conv", first), ("act", nn.ReLU()), ("fc", second)]))
    assert list(seq.state_dict()) == ["conv.weight", "conv.bias", "fc.weight", "fc.bias"] and seq.fc is second
    seq.append(third)                                            # under str(len), as PyTorch's
    assert list(seq._modules) == ["conv", "act", "fc", "3"]
    seq.insert(0, nn.ReLU())    # renumbered, as after a del (PyTorch's insert fails on such keys with a KeyError)
    assert list(seq._modules) == ["0", "1", "2", "3", "4"] and seq[1] is first
    with pytest.raises(TypeError, match="item 'fc' is a int, expected a Module"):
        nn.Sequential(OrderedDict(fc=3))
    with pytest.raises(TypeError, match="item 0 is a dict, expected a Module"):
        nn.Sequential({"fc": nn.ReLU()})           # a plain dict is no OrderedDict: an item, as in PyTorch


def test_add_module_and_register_parameter_register_by_name():
    box = nn.Module()
    box.add_module("body", nn.Linear(2, 2))
    box.register_module("head", None)                # an empty slot, as PyTorch keeps it
    box.register_parameter("scale", nn.Parameter(np.ones(1, np.float32)))
    box.register_parameter("shift", None)
    assert list(box._modules) == ["body", "head"] and box.head is None
    assert list(box.state_dict()) == ["scale", "body.weight", "body.bias"] and box.shift is None
    box.add_module("head", nn.Linear(2, 1))          # a slot may be filled, a parameter replaced
    box.register_parameter("scale", nn.Parameter(np.zeros(1, np.float32)))
    assert box.get_submodule("head") is box.head and box.get_parameter("scale").data[0] == 0
    for bad, error in [(("bo.dy", nn.ReLU()), KeyError), (("", nn.ReLU()), KeyError), ((3, nn.ReLU()), TypeError),
                       (("scale", nn.ReLU()), KeyError), (("training", nn.ReLU()), KeyError),
                       (("x", np.zeros(1)), TypeError)]:
        with pytest.raises(error):
            box.add_module(*bad)
    for bad, error in [(("a.b", None), KeyError), (("", None), KeyError), ((3, None), TypeError),
                       (("body", None), KeyError), (("w", np.zeros(1)), TypeError)]:
        with pytest.raises(error):
            box.register_parameter(*bad)
    with pytest.raises(TypeError, match=r"cannot assign 'numpy.ndarray' object to parameter 'w' "
                                        r"\(nanotorch.nn.Parameter or None required\)"):
        box.register_parameter("w", np.zeros(1))


def test_get_submodule_parameter_and_buffer_follow_dotted_names():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.BatchNorm1d(2)))
    assert model.get_submodule("") is model and model.get_submodule("1.0") is model[1][0]
    assert model.get_parameter("0.weight") is model[0].weight
    assert model.get_buffer("1.0.running_var") is model[1][0].running_var
    for get, target, message in [
            (model.get_submodule, "2", "Sequential has no attribute `2`"),
            (model.get_submodule, "0.weight", "`weight` is not an nn.Module"),
            (model.get_submodule, "1.0.x", "BatchNorm1d has no attribute `x`"),
            (model.get_parameter, "1.0.running_var", "`running_var` is not an nn.Parameter"),
            (model.get_parameter, "0.w", "Linear has no attribute `w`"),
            (model.get_buffer, "0.weight", "`weight` is not a buffer"),
            (model.get_buffer, "3.running_var", "Sequential has no attribute `3`")]:
        with pytest.raises(AttributeError, match=message):
            get(target)


def test_get_buffer_takes_registered_buffers_only_as_pytorch():
    # As torch's: a plain array attribute is no buffer; a buffer registered as None is one (get_buffer gives None).
    bn = nn.BatchNorm1d(2)
    bn.scratch = np.zeros(2)
    bn.register_buffer("extra", None)
    with pytest.raises(AttributeError, match="`scratch` is not a buffer"):
        bn.get_buffer("scratch")
    assert bn.get_buffer("extra") is None
