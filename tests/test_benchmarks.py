"""The benchmarks: their reference convolutions are right, every registered implementation agrees
with them, and each benchmark's --quick mode runs in-process and writes its results (with and
without PyTorch). The epoch benchmark needs real MNIST: it runs when NANOTORCH_DATA is set."""
import csv
import json
import os
import sys

import numpy as np
import pytest

from benchmarks import common, conv_kernels as ck
from nanotorch import nn
from nanotorch.kernels import col2im, im2col

SHAPES = [  # (N, C, OC, H, W, k, padding)
    (2, 3, 4, 5, 5, 3, 1), (1, 1, 1, 1, 1, 3, 1), (3, 2, 5, 7, 4, 3, 0), (2, 4, 3, 6, 5, 5, 2), (2, 3, 2, 4, 6, 1, 0),
    (4, 16, 20, 14, 14, 3, 1),
]


def random_case(n, c, oc, h, w, k, p, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((oc, c, k, k)).astype(dtype)
    dout = rng.standard_normal((n, oc, h + 2 * p - k + 1, w + 2 * p - k + 1)).astype(dtype)
    return x, weight, dout


@pytest.mark.parametrize("shape", SHAPES)
def test_naive_convolution_matches_conv2d_layer(shape):
    n, c, oc, h, w, k, p = shape
    x, weight, dout = random_case(*shape)
    layer = nn.Conv2d(c, oc, k, padding=p, bias=False).double()
    layer.weight.data = weight
    np.testing.assert_allclose(ck.conv2d_naive(x, weight, p), layer(x), rtol=1e-12, atol=1e-12)
    dx = layer.backward(dout)
    np.testing.assert_allclose(ck.conv2d_grad_input_naive(dout, weight, x.shape, p), dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ck.conv2d_grad_weight_naive(x, dout, weight.shape, p), layer.weight.grad,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_stride_trick_im2col_and_col2im_match_the_kernels(shape):
    n, c, oc, h, w, k, p = shape
    x, _, dout = random_case(*shape)
    oh, ow = dout.shape[2:]
    cols = ck.im2col_stride(x, k, k, p)                                   # (N, K, OH*OW)
    ours = im2col(x, k, k, 1, 1, p, p, oh, ow)
    per_image = ours.ndim == 3                                            # else (K, N*OH*OW)
    np.testing.assert_array_equal(cols if per_image else cols.transpose(1, 0, 2).reshape(len(ours), -1), ours)
    dcols = np.random.default_rng(1).standard_normal(cols.shape)
    if per_image:
        theirs = col2im(dcols, c, h, w, k, k, 1, 1, p, p, oh, ow)
    else:
        wide = np.ascontiguousarray(dcols.transpose(1, 0, 2).reshape(len(ours), -1))
        theirs = col2im(wide, n, c, h, w, k, k, 1, 1, p, p, oh, ow)
    np.testing.assert_allclose(ck.col2im_stride(dcols, x.shape, k, k, p), theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ck.IMPLEMENTATIONS))
@pytest.mark.parametrize("layer", [0, 4, 6])
def test_every_implementation_matches_naive(name, layer):
    x, w, dout = ck.inputs(3, *ck.LAYERS[layer])
    ops = ck.IMPLEMENTATIONS[name](x, w, dout, ck.PADDING)
    if ops is None:
        pytest.skip(f"{name} is not available")
    ref = ck.reference(x, w, dout, ck.PADDING)
    assert set(ops) <= set(ck.OPS) and ("forward" in ops)
    for op, fn in ops.items():
        ck.check(name, op, fn(), ref[op])


def test_check_catches_a_wrong_result():
    x, w, dout = ck.inputs(2, *ck.LAYERS[1])
    ref = ck.reference(x, w, dout, ck.PADDING)
    wrong = ck.conv2d_naive(x, w, ck.PADDING)
    wrong[0, 0, 0, 0] += 1
    with pytest.raises(AssertionError, match="relative error"):
        ck.check("wrong", "forward", wrong, ref["forward"])


def test_timing_helpers():
    assert 0 < common.timeit(lambda: sum(range(100)), repeats=3, min_time=0.001) < 0.01
    assert common.sgemm_peak(n=128, tries=2, min_time=0.01) > 0
    assert common.seconds_since_process_start() > 0
    table = common.format_table([{"a": 1.23456, "b": "x"}, {"a": 2.0, "b": "long"}])
    assert table.splitlines()[2].split() == ["1.235", "x"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_conv_kernels_quick(tmp_path):
    assert ck.main(["--quick", "--plot", "--threads", "1", "--out", str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "conv_kernels.csv")
    assert {r["layer"] for r in rows} == {"conv1", "conv5"} and {r["batch"] for r in rows} == {"4"}
    impls = {r["impl"] for r in rows}
    assert {"naive", "im2col_numba", "im2col_stride", "nanotorch"} <= impls
    assert ("torch" in impls) == (common.try_import_torch() is not None)
    assert all(float(r["us"]) > 0 and float(r["gflops"]) > 0 for r in rows)
    pairs = {(r["impl"], r["op"]) for r in rows}
    assert {("nanotorch", "backward"), ("naive", "backward"), ("naive", "grad_weight")} <= pairs
    assert (tmp_path / "conv_kernels.png").stat().st_size > 0


def test_conv_kernels_quick_without_torch(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)                  # import torch raises ImportError
    assert ck.main(["--quick", "--impl", "nanotorch", "torch", "--out", str(tmp_path)]) == 0
    assert {r["impl"] for r in read_csv(tmp_path / "conv_kernels.csv")} == {"nanotorch"}


needs_mnist = pytest.mark.skipif(not os.environ.get("NANOTORCH_DATA"), reason="needs real MNIST (NANOTORCH_DATA)")


@needs_mnist
@pytest.mark.parametrize("with_torch", [True, False])
def test_epoch_quick(tmp_path, monkeypatch, with_torch):
    from benchmarks import epoch
    if not with_torch:
        monkeypatch.setitem(sys.modules, "torch", None)
    has_torch = with_torch and common.try_import_torch() is not None
    assert epoch.main(["--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "epoch.json").read_text())
    assert set(result["frameworks"]) == ({"nanotorch", "torch"} if has_torch else {"nanotorch"})
    assert (result["nanotorch_over_torch"] is not None) == has_torch
    for r in result["frameworks"].values():
        assert r["steps_per_s"] > 0 and r["eval_images_per_s"] > 0 and np.isfinite(r["mean_loss"])
        assert r["eval_batch_size"] in epoch.EVAL_BATCH_SIZES
    assert (result["eval_nanotorch_over_torch"] is not None) == has_torch
    for name, per_batch in result["eval_images_per_s"].items():      # every batch size timed, the best reported
        assert sorted(map(int, per_batch)) == sorted(epoch.EVAL_BATCH_SIZES)
        assert max(per_batch.values()) == result["frameworks"][name]["eval_images_per_s"]
    assert result["seconds_to_first_nanotorch_step"] > 0 and result["peak_rss_mb"]["end"] > 0
    assert len(read_csv(tmp_path / "epoch.csv")) == len(result["frameworks"])
    profile = read_csv(tmp_path / "epoch_profile.csv")
    children = [r for r in profile if r["kind"] == "child"]
    assert len(children) == 17
    step = float(next(r["total_ms"] for r in profile if r["kind"] == "total"))
    assert sum(float(r["total_ms"]) for r in children) <= step


@pytest.mark.parametrize("module, argv", [
    ("epoch", ["--steps", "0"]), ("epoch", ["--repeats", "0"]), ("epoch", ["--threads", "0"]),
    ("epoch", ["--profile-steps", "-1"]), ("conv_kernels", ["--threads", "0"]), ("conv_kernels", ["--batch", "4", "0"]),
    ("conv_kernels", ["--repeats", "0"])])
def test_counts_below_one_are_usage_errors(module, argv, capsys):
    """Not the defaults in their place (--steps 0 ran 300 steps), nor a traceback (--threads 0, --batch 0)."""
    import importlib
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"benchmarks.{module}").parse_args(argv)
    assert exit_.value.code == 2
    assert f"{argv[0]} must be >= 1, got {argv[-1]}" in capsys.readouterr().err


def test_epoch_defaults():
    from benchmarks import epoch
    args, quick = epoch.parse_args([]), epoch.parse_args(["--quick", "--steps", "5"])
    assert (args.steps, args.repeats, args.profile_steps) == (300, 5, 100)
    assert (quick.steps, quick.repeats, quick.profile_steps) == (5, 1, 10)


def test_profiled_restores_the_layers():
    from benchmarks import epoch
    from mnist.model import build_model
    model = build_model()
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    with epoch.profiled(model) as totals:
        model.backward(np.ones_like(model(x)))
    assert all(totals[m][0] > 0 and totals[m][1] > 0 for m in model)        # each top-level layer
    assert all(fs <= f and bs <= b for f, b, fs, bs in totals.values())
    assert not any("forward" in m.__dict__ or "backward" in m.__dict__ for m in model.modules())
