"""Module hooks (nanotorch/nn/hooks.py): when they run, what they see, what their results replace, and
how they go away; checked against PyTorch's where torch is installed."""
import copy
import pickle

import numpy as np
import pytest

import nanotorch as nt
from nanotorch import nn
from mnist.model import build_model


def floats(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape, dtype=dtype)


def small_net():
    nt.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.GELU(), nn.Linear(5, 2)).double()


def record(log, name):
    """A hook of any kind that appends (name, what it was given but the module) to log."""
    return lambda module, *given: log.append((name, given))


def keep(log, key, pick=lambda *given: given[-1]):
    """A hook of any kind that keeps pick(what it was given but the module) under log[key]; returns None."""
    return lambda module, *given: log.__setitem__(key, pick(*given))


# --- forward ---------------------------------------------------------------------------------------------
def test_forward_hooks_see_the_input_and_output_in_order():
    lin, x, log = small_net()[0], floats(4, 3), []
    lin.register_forward_hook(record(log, "after"))
    lin.register_forward_pre_hook(record(log, "before"))
    lin.register_forward_pre_hook(record(log, "first"), prepend=True)
    y = lin(x)
    assert [name for name, _ in log] == ["first", "before", "after"]
    (args_seen,), (_, out_seen) = log[1][1], log[2][1]
    assert args_seen[0] is x and out_seen is y


def test_forward_hooks_results_replace_the_input_and_output():
    lin, x = small_net()[0], floats(4, 3)
    expected = lin.forward(2 * x) + 1
    lin.register_forward_pre_hook(lambda m, args: args[0] * 2)       # one value: taken as (value,)
    lin.register_forward_hook(lambda m, args, out: out + 1)
    np.testing.assert_array_equal(lin(x), expected)
    np.testing.assert_array_equal(lin.forward(x), small_net()[0].forward(x))   # forward() itself: no hooks


def test_forward_hooks_with_kwargs_and_always_call():
    lin, x, log = small_net()[0], floats(4, 3), []
    lin.register_forward_pre_hook(lambda m, args, kwargs: ((args[0] * 0,), kwargs), with_kwargs=True)
    lin.register_forward_hook(lambda m, args, kwargs, out: log.append(kwargs), with_kwargs=True)
    np.testing.assert_array_equal(lin(x), np.broadcast_to(lin.bias.data, (4, 5)))
    assert log == [{}]
    lin.register_forward_pre_hook(lambda m, args, kwargs: "bad", with_kwargs=True)
    with pytest.raises(RuntimeError, match="must return None or a tuple of"):
        lin(x)

    broken, seen = nn.Linear(3, 2), []
    broken.register_forward_hook(lambda m, args, out: seen.append(("always", out)), always_call=True)
    broken.register_forward_hook(lambda m, args, out: seen.append(("not always", out)))
    with pytest.raises(ValueError, match="Linear"):
        broken(floats(4, 7, dtype=np.float32))                                          # the wrong width: forward raises
    assert seen == [("always", None)]


def test_a_handle_removes_its_hook_once_and_as_a_context_manager():
    lin, x, log = small_net()[0], floats(4, 3), []
    handle = lin.register_forward_hook(record(log, "h"))
    other = lin.register_forward_hook(record(log, "other"))
    assert handle.id != other.id
    handle.remove()
    handle.remove()                                                   # a second remove does nothing
    lin(x)
    with lin.register_forward_pre_hook(record(log, "scoped")):
        lin(x)
    lin(x)
    assert [name for name, _ in log] == ["other", "scoped", "other", "other"]
    with pytest.raises(TypeError, match="must be callable"):
        lin.register_forward_hook("not a function")


# --- backward --------------------------------------------------------------------------------------------
def test_backward_hooks_see_the_gradients_and_fire_whoever_calls_backward():
    net, x, log = small_net(), floats(4, 3), []
    for name, m in [("net", net), ("fc1", net[0]), ("gelu", net[1])]:
        m.register_full_backward_pre_hook(record(log, name + " pre"))
        m.register_full_backward_hook(record(log, name))
    dy = floats(4, 2, seed=1)
    net(x)
    dx = net.backward(dy)                                      # the top module's hooks too: called directly
    assert [name for name, _ in log] == ["net pre", "gelu pre", "gelu", "fc1 pre", "fc1", "net"]
    given = dict(log)
    assert given["net pre"] == ((dy,),)
    (grad_input, grad_output) = given["net"]
    assert grad_input[0] is dx and grad_output[0] is dy
    fc1_in, fc1_out = given["fc1"]
    assert fc1_in[0] is dx and fc1_out[0] is given["gelu"][0][0]      # gelu's grad_input is fc1's grad_output


def test_backward_hooks_results_replace_the_gradients():
    net, x, dy = small_net(), floats(4, 3), floats(4, 2, seed=1)
    net(x)
    plain_dx = net.backward(dy)
    plain_grads = [p.grad.copy() for p in net.parameters()]
    net.zero_grad()
    net[2].register_full_backward_pre_hook(lambda m, grad_output: (2 * grad_output[0],))
    net[0].register_full_backward_hook(lambda m, grad_input, grad_output: (grad_input[0] + 1,))
    net(x)
    dx = net.backward(dy)
    np.testing.assert_allclose(dx, 2 * plain_dx + 1, rtol=1e-12)       # the chain is linear in dy
    for p, g in zip(net.parameters(), plain_grads):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-12)
    net[1].register_full_backward_hook(lambda m, grad_input, grad_output: (1, 2))
    net(x)
    with pytest.raises(RuntimeError, match="invalid number of grad_input, got 2, but expected 1"):
        net.backward(dy)


def test_removing_the_last_backward_hook_takes_the_wrapper_away():
    lin = small_net()[0]
    first = lin.register_full_backward_hook(lambda *a: None)
    second = lin.register_full_backward_pre_hook(lambda *a: None)
    assert "backward" in lin.__dict__
    first.remove()
    assert "backward" in lin.__dict__
    second.remove()
    assert "backward" not in lin.__dict__ and not lin._hooked


def test_a_loss_module_takes_backward_hooks():
    ce, logits, seen = nn.CrossEntropyLoss(), floats(4, 10), []
    ce.register_full_backward_hook(lambda m, grad_input, grad_output: seen.append((grad_input, grad_output)))
    ce(logits, np.array([1, 2, 3, 4]))
    dlogits = ce.backward()
    assert seen[0][0][0] is dlogits and seen[0][1] == ()                # backward() was given nothing


# --- the fused block, copies ----------------------------------------------------------------------------
def test_hooks_on_a_fused_blocks_children_run_them_one_by_one_with_the_same_numbers():
    nt.manual_seed(0)
    model, x = build_model(), floats(3, 1, 28, 28, dtype=np.float32)
    block = model[1]
    nt.manual_seed(1)                                                 # (the same dropout mask each time)
    plain_out = model(x)
    plain_dx = model.backward(np.ones_like(plain_out))
    plain_grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()

    seen = {}
    handles = [block[i].register_forward_hook(keep(seen, f"out{i}")) for i in range(3)]
    handles.append(block[0].register_full_backward_hook(keep(seen, "conv dz", lambda gi, go: go[0])))
    assert not block.uses_fused_kernels()
    nt.manual_seed(1)
    out = model(x)
    dx = model.backward(np.ones_like(out))
    assert seen["out0"].shape == seen["out1"].shape == seen["out2"].shape == seen["conv dz"].shape == (3, 8, 28, 28)
    np.testing.assert_allclose(out, plain_out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx, plain_dx, rtol=1e-3, atol=1e-5)
    for p, g in zip(model.parameters(), plain_grads):
        np.testing.assert_allclose(p.grad, g, rtol=1e-3, atol=1e-4)
    for h in handles:
        h.remove()
    assert block.uses_fused_kernels()


def module_level_hook(module, args, out):
    module.calls = getattr(module, "calls", 0) + 1


def test_copies_and_pickles_run_their_own_hooks():
    lin, x, seen = small_net()[0], floats(4, 3), []
    lin.register_full_backward_hook(lambda m, gi, go: seen.append(m))
    twin = copy.deepcopy(lin)
    shallow = copy.copy(lin)
    for m in (twin, shallow):
        m(x)
        m.backward(np.ones((4, 5)))
    assert seen[0] is twin and seen[1] is shallow

    lin2 = small_net()[0]
    lin2.register_forward_hook(module_level_hook)
    lin2.register_full_backward_pre_hook(print)
    back = pickle.loads(pickle.dumps(lin2))
    back(x)
    assert back.calls == 1 and not hasattr(lin2, "calls")
    assert back.backward.__self__ is back


# --- against PyTorch ------------------------------------------------------------------------------------
def test_hooks_see_what_pytorchs_see():
    torch = pytest.importorskip("torch")
    net, x, dy = small_net(), floats(4, 3), floats(4, 2, seed=1)
    tnet = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.GELU(), torch.nn.Linear(5, 2)).double()
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    ours, theirs = {}, {}
    for model, log in ((net, ours), (tnet, theirs)):
        for i in range(3):
            model[i].register_forward_hook(keep(log, f"out{i}"))
            model[i].register_full_backward_hook(keep(log, f"grads{i}", lambda gi, go: (gi[0], go[0])))
        model[2].register_full_backward_pre_hook(lambda m, go: (3 * go[0],))
    net(x)
    net.backward(dy)
    tx = torch.from_numpy(x).requires_grad_()
    tnet(tx).backward(torch.from_numpy(dy))
    for key in ("out0", "out1", "out2"):
        np.testing.assert_allclose(ours[key], theirs[key].detach().numpy(), rtol=1e-12)
    for key in ("grads0", "grads1", "grads2"):
        for a, b in zip(ours[key], theirs[key]):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(net[0].weight.grad, tnet[0].weight.grad.numpy(), rtol=1e-10)


def test_always_call_hooks_run_when_a_pre_hook_or_a_hook_raises_as_pytorchs():
    """PyTorch calls the always_call hooks not yet run whatever raised in module(x): a pre-hook (they
    see output None) or an earlier forward hook (they see the output so far)."""
    def boom(*given):
        raise KeyError("boom")

    x, seen = floats(4, 3), []
    lin = small_net()[0]
    lin.register_forward_pre_hook(boom)
    lin.register_forward_hook(lambda m, args, out: seen.append(out), always_call=True)
    with pytest.raises(KeyError, match="boom"):
        lin(x)
    assert seen == [None]

    seen.clear()
    lin = small_net()[0]
    lin.register_forward_hook(lambda m, args, out: out + 1)
    lin.register_forward_hook(boom)
    lin.register_forward_hook(lambda m, args, out: seen.append(out), always_call=True)
    with pytest.raises(KeyError, match="boom"):
        lin(x)
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], lin.forward(x) + 1)


def test_backward_hooks_may_return_a_list_of_the_right_length_as_pytorchs():
    """PyTorch takes a list of grad_output / grad_input as it takes a tuple (a list comprehension)."""
    net, x, dy = small_net(), floats(4, 3), floats(4, 2, seed=1)
    net(x)
    plain_dx = net.backward(dy)
    net[2].register_full_backward_pre_hook(lambda m, grad_output: [2 * g for g in grad_output])
    net[0].register_full_backward_hook(lambda m, grad_input, grad_output: [g + 1 for g in grad_input])
    net(x)
    np.testing.assert_allclose(net.backward(dy), 2 * plain_dx + 1, rtol=1e-12)


def test_the_hooks_that_the_other_tests_leave_out():
    """A pre-hook alone, two backward pre-hooks, a backward pre-hook's wrong count, new kwargs, and an
    always_call hook that already ran not run again when a later hook raises."""
    lin, x = small_net()[0], floats(4, 3)
    lin.register_forward_pre_hook(lambda m, args: (args[0] * 0,))              # a pre-hook only
    np.testing.assert_array_equal(lin(x), np.broadcast_to(lin.bias.data, (4, 5)))

    net, dy = small_net(), floats(4, 2, seed=1)
    net(x)
    plain_dx = net.backward(dy)
    net.register_full_backward_pre_hook(lambda m, grad_output: (2 * grad_output[0],))
    net.register_full_backward_pre_hook(lambda m, grad_output: (3 * grad_output[0],))
    net(x)
    np.testing.assert_allclose(net.backward(dy), 6 * plain_dx, rtol=1e-12)
    net.register_full_backward_pre_hook(lambda m, grad_output: (grad_output[0], grad_output[0]))
    net(x)
    with pytest.raises(RuntimeError, match="invalid number of grad_output, got 2, but expected 1"):
        net.backward(dy)

    class Scaled(nn.Module):
        def forward(self, x, scale=1.0):
            return x * scale
    scaled = Scaled()
    scaled.register_forward_pre_hook(lambda m, args, kwargs: (args, {"scale": 3.0}), with_kwargs=True)
    np.testing.assert_array_equal(scaled(x, scale=2.0), 3 * x)

    def boom(*given):
        raise KeyError("boom")
    seen = []
    lin = small_net()[0]
    lin.register_forward_hook(lambda m, args, out: seen.append("always"), always_call=True)
    lin.register_forward_hook(boom)
    with pytest.raises(KeyError, match="boom"):
        lin(x)
    assert seen == ["always"]


@pytest.mark.parametrize("child", [0, 1, 2])
@pytest.mark.parametrize("kind", ["forward_pre", "forward", "full_backward_pre", "full_backward"])
def test_any_hook_on_any_child_of_a_fused_block_runs_the_children_one_by_one(child, kind):
    """Any one hook, of any of the four kinds, on any one child is run (the block does not fuse it away)."""
    nt.manual_seed(0)
    block, x, calls = nn.ConvBNGELU(2, 3, 3, padding=1).double(), floats(2, 2, 5, 5), []
    handle = getattr(block[child], f"register_{kind}_hook")(lambda m, *given: calls.append(m))
    assert not block.uses_fused_kernels()
    block.backward(np.ones_like(block(x)))
    assert calls == [block[child]]
    handle.remove()
    assert block.uses_fused_kernels()


def test_a_backward_given_its_gradient_by_keyword_runs_its_hooks():
    """criterion.backward(grad_out=2.0) works with a backward hook as without one; the hooks see the
    gradient given by keyword in grad_output, as if given by position."""
    logits, targets, seen = floats(4, 10), np.array([1, 2, 3, 4]), []
    ce = nn.CrossEntropyLoss()
    ce(logits, targets)
    plain = ce.backward(grad_out=2.0)
    ce.register_full_backward_pre_hook(lambda m, grad_output: seen.append(grad_output))
    ce(logits, targets)
    np.testing.assert_array_equal(ce.backward(grad_out=2.0), plain)
    assert seen == [(2.0,)]


def test_a_backward_hook_registered_during_the_backward_runs_from_the_next_one_as_pytorchs():
    """PyTorch takes a module's backward hooks as they are when its backward starts (at its forward):
    one registered by a backward pre-hook runs from the next backward on, not in this one."""
    net, x, dy, log = small_net(), floats(4, 3), floats(4, 2, seed=1), []
    def adder(m, grad_output):
        if not m._backward_hooks:
            m.register_full_backward_hook(lambda *given: log.append("added"))
    net[0].register_full_backward_pre_hook(adder)
    for _ in range(2):
        net(x)
        net.backward(dy)
        log.append("|")
    assert log == ["|", "added", "|"]


def test_a_backward_hook_on_a_module_with_its_own_backward_is_refused():
    """The wrapper that runs backward hooks goes in the instance's __dict__: one already there (a
    patched backward) would hide it, and the hook would never run."""
    lin = small_net()[0]
    lin.backward = lambda grad: grad
    with pytest.raises(RuntimeError, match="has its own backward"):
        lin.register_full_backward_hook(lambda *a: None)
    with pytest.raises(RuntimeError, match="has its own backward"):
        lin.register_full_backward_pre_hook(lambda *a: None)
    assert not lin._backward_hooks and not lin._backward_pre_hooks and not lin._hooked
    lin.register_forward_hook(lambda *a: None)                         # forward hooks do not need it


def test_a_shallow_copy_has_its_own_hooks():
    lin, x, dy, seen = small_net()[0], floats(4, 3), np.ones((4, 5)), []
    twin = copy.copy(lin)
    twin.register_full_backward_hook(lambda m, gi, go: seen.append(m))
    twin.register_forward_hook(lambda m, args, out: seen.append("forward"))
    lin(x)
    lin.backward(dy)                                                    # the original has none
    assert seen == [] and not lin._hooked
    twin(x)
    twin.backward(dy)
    assert seen == ["forward", twin]
