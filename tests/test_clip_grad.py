"""clip_grad_norm_ (known norms by hand, then parity with torch) and clip_grad_value_ (against torch)."""
import contextlib
import math

import numpy as np
import pytest

import nanotorch.nn.utils
from nanotorch.nn.module import Parameter
from nanotorch.nn.utils import clip_grad_norm_


def with_grad(grad, dtype=np.float64):
    p = Parameter(np.zeros(np.shape(grad), dtype=dtype))
    p.grad = np.array(grad, dtype=dtype)
    return p


def test_known_norm_and_coefficient():
    p = with_grad([3.0, 4.0])
    total = clip_grad_norm_([p], max_norm=1.0)
    assert total == 5.0
    np.testing.assert_allclose(p.grad, np.array([3.0, 4.0]) * (1.0 / (5.0 + 1e-6)), rtol=1e-15)
    assert np.linalg.norm(p.grad) < 1.0


def test_norm_of_several_params_is_norm_of_their_norms():
    a, b = with_grad([[1.0, 2.0], [2.0, 0.0]]), with_grad([4.0])  # norms 3 and 4
    total = clip_grad_norm_([a, b], max_norm=2.5)
    assert total == pytest.approx(5.0, rel=1e-15)
    coef = 2.5 / (5.0 + 1e-6)
    np.testing.assert_allclose(b.grad, [4.0 * coef], rtol=1e-15)


def test_no_change_under_max_norm():
    p = with_grad([3.0, 4.0])
    total = clip_grad_norm_(p, max_norm=10.0)  # a single Parameter is accepted too
    assert total == 5.0
    np.testing.assert_array_equal(p.grad, [3.0, 4.0])  # coefficient clamped to exactly 1


def test_inf_and_one_norms():
    a, b = with_grad([1.0, -7.0]), with_grad([3.0])
    assert clip_grad_norm_([a, b], max_norm=100.0, norm_type=math.inf) == 7.0
    assert clip_grad_norm_([a, b], max_norm=100.0, norm_type="inf") == 7.0
    assert clip_grad_norm_([a, b], max_norm=100.0, norm_type=1) == 11.0
    clip_grad_norm_([a, b], max_norm=3.5, norm_type=math.inf)
    np.testing.assert_allclose(a.grad, np.array([1.0, -7.0]) * 3.5 / (7.0 + 1e-6), rtol=1e-15)


def test_returns_norm_before_clipping_and_ignores_missing_grads():
    a, b = with_grad([6.0, 8.0]), Parameter(np.ones(3))
    total = clip_grad_norm_(iter([a, b]), max_norm=1.0)  # a generator is read once only
    assert total == 10.0 and b.grad is None
    assert clip_grad_norm_([a], max_norm=1.0) == pytest.approx(1.0, rel=1e-6)
    assert clip_grad_norm_([b], max_norm=1.0) == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float16])     # float16: not the compiled norm's types
def test_keeps_dtype_and_clips_in_place(dtype):
    p = with_grad([3.0, 4.0], dtype=dtype)
    grad = p.grad
    total = clip_grad_norm_([p], max_norm=1.0)
    assert p.grad is grad and grad.dtype == dtype and total.dtype == dtype and total == 5.0
    assert float(np.linalg.norm(grad.astype(np.float64))) == pytest.approx(1.0, rel=1e-6 if dtype == np.float32 else 1e-3)


def test_nonfinite_norm():
    p = with_grad([1.0, np.inf])
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_([p], max_norm=1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(p.grad, [1.0, np.inf])  # nothing was scaled
    q = with_grad([1.0, np.nan])
    assert np.isnan(clip_grad_norm_([q], max_norm=1.0))
    assert np.isnan(q.grad).all()  # scaled by the nan coefficient, as PyTorch does


@pytest.mark.parametrize("norm_type", [math.inf, -math.inf, -1.0, -0.5])
def test_an_empty_gradient_has_no_norm_of_infinite_or_negative_order_as_in_torch(norm_type):
    """Over no entries these norms have no value (max, min and sum |g|^p with p < 0 have no identity):
    PyTorch raises, with the other gradients' or without. Orders 0, 1, 2, ... give 0."""
    torch = pytest.importorskip("torch")
    for shapes in ([(0,)], [(0,), (3,)]):
        params = [with_grad(np.ones(s)) for s in shapes]
        with pytest.raises(RuntimeError, match=f"cannot compute the {norm_type} norm of an empty gradient"):
            clip_grad_norm_(params, max_norm=1.0, norm_type=norm_type)
        np.testing.assert_array_equal(params[-1].grad, np.ones(shapes[-1]))     # nothing was scaled
        tensors = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
        for t in tensors:
            t.grad = torch.ones(t.shape, dtype=torch.float64)
        with pytest.raises(RuntimeError):
            torch.nn.utils.clip_grad_norm_(tensors, max_norm=1.0, norm_type=norm_type)
    assert clip_grad_norm_([with_grad(np.ones(0)), with_grad([3.0, 4.0])], max_norm=10.0, norm_type=0.5) > 0
    for norm_type in (0.0, 0.5, 1.0, 3.0):                 # the orders with a value over no entries: 0, as torch
        t = torch.zeros(0, dtype=torch.float64, requires_grad=True)
        t.grad = torch.zeros(0, dtype=torch.float64)
        assert torch.nn.utils.clip_grad_norm_([t], max_norm=1.0, norm_type=norm_type).item() == 0.0
        assert clip_grad_norm_([with_grad(np.ones(0))], max_norm=1.0, norm_type=norm_type) == 0.0


@pytest.mark.parametrize("max_norm", [-1.0, float("nan")])
def test_rejects_negative_max_norm(max_norm):
    with pytest.raises(ValueError, match="max_norm must be >= 0"):
        clip_grad_norm_([with_grad([1.0])], max_norm=max_norm)


@pytest.mark.parametrize("grad", [[3.0, 4.0], [0.0, 0.0]])
def test_max_norm_zero_zeroes_the_gradients_like_torch(grad):
    torch = pytest.importorskip("torch")
    p = with_grad(grad)
    tp = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    tp.grad = torch.tensor(grad, dtype=torch.float64)
    assert clip_grad_norm_([p], max_norm=0) == torch.nn.utils.clip_grad_norm_([tp], max_norm=0).item()
    np.testing.assert_array_equal(p.grad, tp.grad.numpy())
    np.testing.assert_array_equal(p.grad, [0.0, 0.0])


def test_coefficient_just_above_one_is_clamped_to_exactly_one():
    """max_norm a hair above the norm: max_norm / (norm + 1e-6) is just over 1, and min(coef, 1) leaves
    the gradients exactly as they were (no growth), as PyTorch's clamp(max=1.0)."""
    p = with_grad([3.0, 4.0])
    assert clip_grad_norm_([p], max_norm=5.0 * (1 + 1e-5)) == 5.0
    np.testing.assert_array_equal(p.grad, [3.0, 4.0])


def test_mixed_float32_and_float64_gradients_give_a_float64_norm_as_torchs():
    torch = pytest.importorskip("torch")
    grads = [np.array([3.0, 4.0], dtype=np.float32), np.array([0.1, 12.0])]       # float32 first
    ours = [with_grad(g, dtype=g.dtype) for g in grads]
    theirs = [torch.zeros(len(g), dtype=torch.from_numpy(g).dtype, requires_grad=True) for g in grads]
    for tp, g in zip(theirs, grads):
        tp.grad = torch.from_numpy(g.copy())
    total, t_total = clip_grad_norm_(ours, max_norm=1.0), torch.nn.utils.clip_grad_norm_(theirs, max_norm=1.0)
    assert total.dtype == np.float64 and t_total.dtype == torch.float64
    assert total == pytest.approx(t_total.item(), rel=1e-15)
    for p, tp in zip(ours, theirs):
        assert p.grad.dtype == tp.grad.numpy().dtype
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-6 if p.grad.dtype == np.float32 else 1e-15)


def test_no_gradient_at_all_gives_a_float32_zero_as_torchs_tensor():
    total = clip_grad_norm_([Parameter(np.ones(3))], max_norm=1.0)
    assert total == 0.0 and isinstance(total, np.float32)      # PyTorch: tensor(0.), float32


def test_importable_as_nn_utils():
    import nanotorch.nn as nn
    assert nanotorch.nn.utils.clip_grad_norm_ is clip_grad_norm_
    assert nn.utils.clip_grad_norm_ is clip_grad_norm_


# --- parity with PyTorch ----------------------------------------------------------------------
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0, 0.0, -math.inf])   # (0: counts parameters)
@pytest.mark.parametrize("max_norm", [0.5, 1e3])  # clipping, and coefficient clamped to 1
def test_matches_torch_float64(norm_type, max_norm):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(int(norm_type * 10 if math.isfinite(norm_type) else 99))
    grads = [rng.standard_normal(s) for s in [(16, 3, 3, 3), (16,), (10, 16), (10,)]]
    ours = [with_grad(g) for g in grads]
    theirs = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for tp, g in zip(theirs, grads):
        tp.grad = torch.from_numpy(g.copy())

    total = clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    t_total = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    assert total.dtype == np.float64
    assert float(total) == pytest.approx(t_total.item(), rel=1e-12)
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_matches_torch_float32(norm_type):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(s).astype(np.float32) for s in [(8, 4), (8,), (3, 3, 3)]]
    ours = [with_grad(g, dtype=np.float32) for g in grads]
    theirs = [torch.zeros(g.shape, requires_grad=True) for g in grads]
    for tp, g in zip(theirs, grads):
        tp.grad = torch.from_numpy(g.copy())
    total = clip_grad_norm_(ours, 1.0, norm_type=norm_type)
    t_total = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type=norm_type)
    assert float(total) == pytest.approx(t_total.item(), rel=1e-6)
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, -math.inf, 0.0, 3.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_parameter_matches_torch(norm_type, dtype):
    """One (flat) parameter, as mnist.train clips: the total is the norm of a single norm, which for
    p = 0 is a count (1), not the norm."""
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(5).standard_normal(1000).astype(dtype)
    ours = with_grad(g, dtype=dtype)
    theirs = torch.zeros(g.shape, dtype=getattr(torch, np.dtype(dtype).name), requires_grad=True)
    theirs.grad = torch.from_numpy(g.copy())
    total = clip_grad_norm_([ours], 0.5, norm_type=norm_type)
    t_total = torch.nn.utils.clip_grad_norm_([theirs], 0.5, norm_type=norm_type)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    assert total.dtype == dtype and float(total) == pytest.approx(t_total.item(), rel=rtol)
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=rtol, atol=rtol * 1e-2)


# --- clip_grad_value_ ---------------------------------------------------------------------------
# Gradients with what a clamp must get right: both sides, NaN, infinities, signed zeros, subnormals.
SPECIAL = [0.5, -2.0, 3.0, np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, -1.0, 1e-40, -1e-45, 0.1, -0.1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("clip_value", [1.0, 0.1, 2, 0.0, -0.0, -1.0, math.inf, math.nan, 1e-40])
def test_clip_grad_value_matches_torch_bit_for_bit(clip_value, dtype):
    """Each gradient clamped in place to [-clip_value, clip_value] (the bound rounded to its dtype), as
    torch.nn.utils.clip_grad_value_: NaN gradients stay NaN, a NaN bound makes every value NaN, a
    negative one (min > max) makes every value clip_value, ties keep their sign (-0.0 for clip_value 0)."""
    from nanotorch.nn.utils import clip_grad_value_
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    grads = [np.array(SPECIAL, dtype=dtype), (3 * rng.standard_normal((4, 5))).astype(dtype)]
    ours = [with_grad(g, dtype) for g in grads]
    views = [p.grad for p in ours]
    theirs = [torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype, requires_grad=True) for g in grads]
    for tp, g in zip(theirs, grads):
        tp.grad = torch.from_numpy(g.copy())
    assert clip_grad_value_(ours, clip_value) is None
    torch.nn.utils.clip_grad_value_(theirs, clip_value)
    bits = np.uint32 if dtype == np.float32 else np.uint64
    for p, view, tp in zip(ours, views, theirs):
        assert p.grad is view and p.grad.dtype == dtype                 # in place
        np.testing.assert_array_equal(p.grad.view(bits), tp.grad.numpy().view(bits))


def test_clip_grad_value_skips_missing_grads_and_takes_one_parameter_or_an_iterator():
    from nanotorch.nn.utils import clip_grad_value_
    p, frozen = with_grad([3.0, -0.5]), Parameter(np.array([7.0]))
    clip_grad_value_(iter([frozen, p]), 1, foreach=True)
    np.testing.assert_array_equal(p.grad, [1.0, -0.5])
    assert frozen.grad is None
    q = with_grad([-3.0, 0.25], np.float32)
    clip_grad_value_(q, 0.5, foreach=False)
    np.testing.assert_array_equal(q.grad, np.array([-0.5, 0.25], np.float32))


def test_clip_grad_value_errors_are_torchs():
    """No gradient at all is PyTorch's RuntimeError (its foreach grouping of an empty list), with a
    message that says so; a bound beyond float32 for float32 gradients is PyTorch's RuntimeError
    (nothing clipped); a bound that is no number, float()'s TypeError."""
    from nanotorch.nn.utils import clip_grad_value_
    torch = pytest.importorskip("torch")
    for params, t_params in (([], []), ([Parameter(np.zeros(2))], [torch.nn.Parameter(torch.zeros(2))])):
        with pytest.raises(RuntimeError):
            torch.nn.utils.clip_grad_value_(t_params, 1.0)
        with pytest.raises(RuntimeError, match="no gradient"):
            clip_grad_value_(params, 1.0)
    p = with_grad([1e30, -2.0], np.float32)
    tp = torch.nn.Parameter(torch.zeros(2))
    tp.grad = torch.tensor([1e30, -2.0])
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_value_([tp], 1e300)
    with pytest.raises(RuntimeError, match="1e.300.*float32"):
        clip_grad_value_([with_grad([0.5]), p], 1e300)      # (the float64 gradient is clipped by nothing either)
    np.testing.assert_array_equal(p.grad, np.array([1e30, -2.0], np.float32))
    with pytest.raises(TypeError):
        clip_grad_value_([p], None)
    assert nanotorch.nn.utils.clip_grad_value_ is clip_grad_value_


def test_clip_grad_value_bound_at_the_edge_of_float32_and_given_as_a_string_as_torchs():
    """float32's largest value is a bound; the doubles just past it in either sign, although they round
    to it in float32, are PyTorch's overflow error (their float64 value is compared, not the rounded
    one). clip_value goes through float(), so the string '0.5' is 0.5 there and here."""
    from nanotorch.nn.utils import clip_grad_value_
    torch = pytest.importorskip("torch")
    largest = float(np.finfo(np.float32).max)
    just_past = largest * (1 + 2 ** -30)
    assert np.float32(just_past) == np.float32(largest)
    for clip_value, overflows in ((largest, False), (-largest, False), (just_past, True), (-just_past, True),
                                  (-1e39, True)):
        p, tp = with_grad([3e38, -1.0], np.float32), torch.nn.Parameter(torch.zeros(2))
        tp.grad = torch.tensor([3e38, -1.0])
        with pytest.raises(RuntimeError) if overflows else contextlib.nullcontext():
            torch.nn.utils.clip_grad_value_([tp], clip_value)
        with pytest.raises(RuntimeError, match="without overflow") if overflows else contextlib.nullcontext():
            clip_grad_value_([p], clip_value)
        np.testing.assert_array_equal(p.grad, tp.grad.numpy(), err_msg=str(clip_value))
    p, tp = with_grad([-1.0, 0.25, 2.0]), torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    tp.grad = torch.tensor([-1.0, 0.25, 2.0], dtype=torch.float64)
    clip_grad_value_([p], "0.5")
    torch.nn.utils.clip_grad_value_([tp], "0.5")
    np.testing.assert_array_equal(p.grad, [-0.5, 0.25, 0.5])
    np.testing.assert_array_equal(p.grad, tp.grad.numpy())
