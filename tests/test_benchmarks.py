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
    assert common.fma_peak(rounds=1000, tries=2, min_time=0.0) > 0
    assert common.seconds_since_process_start() > 0
    table = common.format_table([{"a": 1.23456, "b": "x"}, {"a": 2.0, "b": "long"}])
    assert table.splitlines()[2].split() == ["1.235", "x"]


def test_fma_chains_compiled_as_in_python():
    """The peak's loop computes what its Python reading does (12 chains of x * x + s from s = x[0])."""
    x = np.linspace(0.5, 1.0, 2 * common.lanes_of(np.empty(0, np.float32)), dtype=np.float32)
    assert np.array_equal(common._fma_chains(x, 3), common._fma_chains.py_func(x, 3))


def test_forward_flops_counts_convolutions_and_linear_layers():
    from benchmarks import epoch
    from nanotorch import nn
    from mnist.model import build_model
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(6, 5))
    model.train()
    # (4, 4, 4) outputs of 2 * 2 * 9 FLOPs; (6, 2, 2) of 2 * 4 * 9; 5 of 2 * 6
    assert epoch.forward_flops(model, (2, 4, 4)) == 64 * 36 + 24 * 72 + 5 * 12
    assert model.training                                         # the mode it was in
    seed = build_model()
    convs = 18 * (784 * (1 * 4 + 4 * 8 + 8 * 12 + 12 * 16) + 196 * 16 * 20 + 49 * 20 * 24 + 16 * 24 * 28)
    assert epoch.forward_flops(seed) == convs + 2 * (28 * 56 + 56 * 10)
    # conv3-conv5 (Conv2d's Winograd) and conv6, conv7 (pooled with their pooling): 4 of those 9 multiply-adds
    winograd = 18 * (784 * 8 * 12 + 784 * 12 * 16 + 196 * 16 * 20 + 49 * 20 * 24 + 16 * 24 * 28)
    assert epoch.forward_flops(seed, as_run=True) == convs - winograd * 5 // 9 + 2 * (28 * 56 + 56 * 10)
    assert not any(m._hooked for m in seed.modules())             # its counting hooks removed (else no fusion)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_conv_kernels_quick(tmp_path):
    assert ck.main(["--quick", "--plot", "--threads", "1", "--out", str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "conv_kernels.csv")
    assert {r["layer"] for r in rows} == {"conv1", "conv5"} and {r["batch"] for r in rows} == {"4"}
    impls = {r["impl"] for r in rows}
    assert {"naive", "im2col_numba", "im2col_matmul", "im2col_stride", "nanotorch"} <= impls
    assert ("torch" in impls) == (common.try_import_torch() is not None)
    assert all(float(r["us"]) > 0 and float(r["gflops"]) > 0 for r in rows)
    pairs = {(r["impl"], r["op"]) for r in rows}
    assert {("nanotorch", "backward"), ("naive", "backward"), ("naive", "grad_weight")} <= pairs
    assert (tmp_path / "conv_kernels.png").stat().st_size > 0


def test_conv_kernels_quick_without_torch(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)                  # import torch raises ImportError
    assert ck.main(["--quick", "--impl", "nanotorch", "torch", "--out", str(tmp_path)]) == 0
    assert {r["impl"] for r in read_csv(tmp_path / "conv_kernels.csv")} == {"nanotorch"}


@pytest.mark.parametrize("name", ["conv_kernels", "epoch"])
def test_an_unusable_out_is_refused_before_measuring(name, tmp_path, monkeypatch, capsys):
    """--out is checked as the command line is read (it was written to only at the end: a traceback
    after the whole run, its measurements lost)."""
    from benchmarks import epoch

    def measuring(*args, **kwargs):
        raise AssertionError("started measuring")
    monkeypatch.setattr(ck, "sgemm_peak", measuring)
    monkeypatch.setattr(epoch, "load_mnist", measuring)
    main = {"conv_kernels": ck.main, "epoch": epoch.main}[name]
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for out, says in ((a_file, "is a file, not a folder"), (a_file / "sub", "cannot make that folder")):
        with pytest.raises(SystemExit) as exit_:
            main(["--quick", "--out", str(out)])
        assert exit_.value.code == 2
        error = capsys.readouterr().err.splitlines()[-1]
        assert f"--out {out}" in error and says in error


def test_a_folder_out_that_cannot_be_written_to_is_refused(tmp_path, monkeypatch, capsys):
    """A folder without write permission is refused (os.access stands in for the permission bits,
    which root, running the tests, would pass anyway)."""
    monkeypatch.setattr(common.os, "access", lambda path, mode: not mode & os.W_OK)
    monkeypatch.setattr(ck, "sgemm_peak", lambda *args, **kwargs: pytest.fail("started measuring"))
    with pytest.raises(SystemExit) as exit_:
        ck.main(["--quick", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert f"--out {tmp_path}: the folder is not writable" in capsys.readouterr().err


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
    limit = result["eval_limit"]                                 # no framework beyond its arithmetic limit
    assert limit["direct"]["forward_mflop_per_image"] == pytest.approx(6.3224) and limit["fma_peak_gflops_per_core"] > 0
    assert limit["nanotorch"]["forward_mflop_per_image"] == pytest.approx(3.09456)
    assert all(0 < f < 1 for f in limit["fraction"].values()) and set(limit["fraction"]) == set(result["frameworks"])
    assert ("torch" in limit["fraction"]) == has_torch == (limit["ratio_at_limit"] is not None)
    if has_torch:                                                # nanotorch at its limit: faster than it is
        assert limit["ratio_at_limit"] < result["eval_nanotorch_over_torch"]
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


# ----------------------------------------------------------------------------- the numbers reported

class FakeClock:
    """time.perf_counter for the benchmark helpers: moves only when a timed function moves it."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_timeit_many_is_the_median_of_the_repeats(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(common, "time", clock)
    durations = iter([9.0, 9.0, 9.0, 5.0, 1.0, 2.0])           # three warm-ups, then three repeats

    def fn():
        clock.now += next(durations)
    assert common.timeit_many({"f": fn}, repeats=3, min_time=0.0) == {"f": 2.0}


def test_sgemm_peak_counts_two_flops_per_multiply_add(monkeypatch):
    clock = FakeClock()

    class Ticking:                                  # each reading one second after the last
        def perf_counter(self):
            clock.now += 1.0
            return clock.now
    monkeypatch.setattr(common, "time", Ticking())
    assert common.sgemm_peak(n=4, tries=2, min_time=0.0) == pytest.approx(2 * 4 ** 3 / 1e9)


def test_write_csv_keeps_six_significant_digits(tmp_path):
    path = common.write_csv(tmp_path / "r.csv", [{"a": 1.23456789, "b": "x", "c": 3}, {"a": 2e-7, "b": "y", "c": 4}])
    assert path.read_bytes() == b"a,b,c\r\n1.23457,x,3\r\n2e-07,y,4\r\n"


def test_threads_sets_both_frameworks_counts_back(restore_threads):
    import nanotorch as nt
    import numba
    torch_count = [3]
    torch = type("FakeTorch", (), {"get_num_threads": staticmethod(lambda: torch_count[0]),
                                   "set_num_threads": staticmethod(lambda n: torch_count.__setitem__(0, n))})
    outside = min(2, numba.config.NUMBA_NUM_THREADS)
    nt.set_num_threads(outside)
    with common.threads(1, torch) as info:
        assert (nt.get_num_threads(), torch_count[0], info["torch"]) == (1, 1, 1)
    assert (nt.get_num_threads(), torch_count[0]) == (outside, 3)


def test_bench_layer_flops_and_fraction_of_peak(monkeypatch):
    """2*N*Cout*H*W*Cin*9 flops an op, twice that for a backward; a backward of separate ops is
    timed as their sum; % of peak is 100 * GFLOP/s / peak."""
    seconds = {"forward": 1e-3, "grad_input": 2e-3, "grad_weight": 3e-3, "backward": 4e-3}
    monkeypatch.setattr(ck, "settle", lambda: None)
    monkeypatch.setattr(ck, "timeit_many", lambda fns, repeats, min_time: {k: seconds[k[1]] for k in fns})
    rows = ck.bench_layer(1, 0, ["naive", "nanotorch"], repeats=1, min_time=0.0, peak=0.5)
    flops = 2 * 1 * 4 * 28 * 28 * 1 * 9                          # conv1: 1 -> 4 channels, 28x28
    got = {(r["impl"], r["op"]): (r["us"], r["gflops"], r["pct_peak"], r["how"]) for r in rows}
    expected = {("naive", "forward"): (1e-3, flops, "measured"),
                ("naive", "grad_input"): (2e-3, flops, "measured"),
                ("naive", "grad_weight"): (3e-3, flops, "measured"),
                ("naive", "backward"): (5e-3, 2 * flops, "grad_input + grad_weight"),
                ("nanotorch", "forward"): (1e-3, flops, "measured"),
                ("nanotorch", "backward"): (4e-3, 2 * flops, "measured")}
    assert list(got) == list(expected)
    for key, (s, f, how) in expected.items():
        gflops = f / s / 1e9
        assert got[key] == (pytest.approx(s * 1e6), pytest.approx(gflops), pytest.approx(100 * gflops / 0.5), how), key


def test_time_evaluation_is_the_median_of_the_repeats_per_batch_size(monkeypatch):
    from benchmarks import epoch
    clock = FakeClock()
    monkeypatch.setattr(epoch, "time", clock)
    monkeypatch.setattr(epoch, "settle", lambda: None)
    durations = {("a", 16): iter([99.0, 1.0, 5.0, 2.0]), ("a", 32): iter([99.0, 4.0, 4.0, 8.0]),
                 ("b", 16): iter([99.0, 3.0, 3.0, 9.0]), ("b", 32): iter([99.0, 1.0, 2.0, 9.0])}

    def evaluator(name):
        def evaluate(batch_size):
            clock.now += next(durations[name, batch_size])
        return evaluate
    got = epoch.time_evaluation({"a": evaluator("a"), "b": evaluator("b")}, 100, 3, batch_sizes=(16, 32))
    assert got == {"a": {16: 50.0, 32: 25.0}, "b": {16: pytest.approx(100 / 3), 32: 50.0}}


def test_compare_reports_the_median_of_per_repeat_ratios_and_each_at_its_fastest_batch(monkeypatch):
    """nanotorch time / torch time: the median of the repeats' ratios (2, 4.5, 1 -> 2; not their mean,
    2.5, nor the ratio of the medians, 1.5); evaluation: each framework at its own fastest batch size."""
    import argparse
    from benchmarks import epoch
    from mnist.model import build_model
    nanotorch_seconds, torch_seconds = iter([0.1, 2.0, 9.0, 3.0]), iter([0.1, 1.0, 2.0, 3.0])   # (a warm-up first)
    monkeypatch.setattr(epoch, "settle", lambda: None)
    monkeypatch.setattr(epoch, "new_nanotorch", lambda: (build_model(),))
    monkeypatch.setattr(epoch, "train_nanotorch", lambda batches: (next(nanotorch_seconds), 2.3, None))
    monkeypatch.setattr(epoch, "train_torch", lambda torch, batches, state: (next(torch_seconds), 2.3, None))
    evals = {"nanotorch": {16: 100.0, 32: 300.0, 64: 200.0}, "torch": {16: 500.0, 32: 400.0, 64: 450.0}}
    monkeypatch.setattr(epoch, "time_evaluation", lambda evaluators, n_images, repeats: evals)
    torch = type("FakeTorch", (), {"from_numpy": staticmethod(lambda a: a), "__version__": "0"})
    batches = [(np.zeros((4, 1, 28, 28), np.float32), np.zeros(4, np.int64))] * 2
    result = epoch.compare(argparse.Namespace(repeats=3, threads=1), torch, batches, np.zeros((8, 1, 28, 28)), {})
    assert result["nanotorch_over_torch"] == pytest.approx(2.0)
    assert result["eval_nanotorch_over_torch"] == pytest.approx(500 / 300)
    nano, theirs = result["frameworks"]["nanotorch"], result["frameworks"]["torch"]
    assert (nano["eval_images_per_s"], nano["eval_batch_size"]) == (300.0, 32)
    assert (theirs["eval_images_per_s"], theirs["eval_batch_size"]) == (500.0, 16)
    assert nano["ms_per_step"] == pytest.approx(1e3 * 3.0 / 2) and nano["best_ms_per_step"] == pytest.approx(1e3)
    assert theirs["ms_per_step"] == pytest.approx(1e3 * 2.0 / 2)
    assert nano["repeat_seconds"] == [2.0, 9.0, 3.0]
