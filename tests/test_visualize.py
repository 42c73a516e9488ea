"""Tests for mnist.visualize: every picture is a valid PNG of the size its figure promises.

The pictures run on a tiny run directory (an untrained seed network saved with save_model and a
small synthetic log.csv and layers.csv). visualize_run runs once on a small synthetic test set (load_mnist
patched) and once on the first 500 real test images when NANOTORCH_DATA is set.
"""
import math
import os
import struct
import warnings

import matplotlib.figure
import numpy as np
import pytest

from mnist import data, visualize
from mnist.checkpoint import save_model
from mnist.model import build_model
from mnist.summary import summarize

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_PICTURES = ["architecture.png", "parameters.png", "filters.png", "training_curves.png", "gradient_flow.png",
                "feature_maps.png", "confusion_matrix.png", "misclassified.png"]
LAYERS = ["block1", "block2", "block3", "block4", "block5", "block6", "block7", "fc1", "fc2"]
STATS = ("grad_norm", "weight_norm", "update_ratio")
LAYERS_HEADER = ",".join(["step", "epoch"] + [f"{n}_{s}" for s in STATS for n in LAYERS])


def png_size(path):
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    length, kind = struct.unpack(">I4s", head[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", head[16:24])


def expected(figsize):
    """Pixels of a figure saved at visualize.DPI: matplotlib truncates (with a 1e-8 tolerance)."""
    return tuple(int(inches * visualize.DPI + 1e-8) for inches in figsize)


def write_log(path, steps=60, steps_per_epoch=20):
    """A log.csv like mnist.train's: loss falling, running accuracy rising, a one-cycle schedule."""
    rng = np.random.default_rng(0)
    lines = ["step,epoch,loss,accuracy,lr,momentum"]
    for s in range(1, steps + 1):
        up = min(s / (0.3 * steps), 1.0)
        lr = 0.1 * up if up < 1 else 0.1 * (1 + math.cos(math.pi * (s - 0.3 * steps) / (0.7 * steps))) / 2
        loss = 2.3 * math.exp(-s / 15) + 0.1 + 0.05 * rng.random()
        lines.append(f"{s},{s / steps_per_epoch:.4f},{loss:.5f},{1 - 0.9 * math.exp(-s / 20):.5f},"
                     f"{lr:.6g},{0.95 - 0.1 * lr / 0.1:.6g}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_layers(path, steps=60, every=2, steps_per_epoch=20):
    """A layers.csv like mnist.train's: gradient norms growing with depth and scattering, weight norms
    slowly growing, update ratios following a one-cycle learning rate (and one row with a zero)."""
    rng = np.random.default_rng(1)
    lines = [LAYERS_HEADER]
    for s in range(every, steps + 1, every):
        lr = 0.1 * math.sin(math.pi * s / (steps + 1)) + 1e-6
        grads = [0.05 * (1 + j) * 10 ** rng.normal(0, 0.5) for j in range(len(LAYERS))]
        weights = [1 + j + s / steps for j in range(len(LAYERS))]
        ratios = [lr * 0.1 * 10 ** rng.normal(0, 0.1) for _ in LAYERS]
        if s == 10:
            grads[0] = 0.0                             # (a log scale leaves it out)
        lines.append(",".join(f"{v:.6g}" for v in [s, s / steps_per_epoch, *grads, *weights, *ratios]))
    path.write_text("\n".join(lines) + "\n")
    return path


def digit(value=7, seed=0):
    """A 28x28 uint8 picture with a bright stroke: enough to light up the feature maps."""
    img = np.zeros((28, 28), np.uint8)
    img[6:8, 8:21] = 255
    img[8:23, 17 - np.arange(15) // 3 + value % 3, ] = 220
    noise = np.random.default_rng(seed).integers(0, 30, (28, 28))
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    save_model(d / "model.npz", build_model())
    write_log(d / "log.csv")
    write_layers(d / "layers.csv")
    return d


@pytest.fixture(scope="module")
def model(run_dir):
    from mnist.checkpoint import load_model
    return load_model(str(run_dir / "model.npz"))


def test_architecture(model, tmp_path):
    path = visualize.plot_architecture(model, str(tmp_path / "a.png"))
    assert path == str(tmp_path / "a.png")
    assert png_size(path) == expected(visualize.architecture_figsize(summarize(model)))


def test_parameter_counts(model, tmp_path):
    path = visualize.plot_parameter_counts(model, str(tmp_path / "p.png"))
    assert png_size(path) == expected(visualize.FIGSIZE["parameters"])


def test_first_layer_filters(model, tmp_path):
    path = visualize.plot_first_layer_filters(model, str(tmp_path / "f.png"))
    assert png_size(path) == expected(visualize.FIGSIZE["filters"])


def test_training_curves(run_dir, tmp_path):
    path = visualize.plot_training_curves(str(run_dir / "log.csv"), str(tmp_path / "c.png"))
    assert png_size(path) == expected(visualize.FIGSIZE["training_curves"])


def test_training_curves_draw_the_test_accuracy_when_given(run_dir, tmp_path, monkeypatch):
    drawn = []
    real_axhline = visualize.plt.Axes.axhline
    monkeypatch.setattr(visualize.plt.Axes, "axhline",
                        lambda ax, y, **kw: drawn.append((y, kw.get("label"))) or real_axhline(ax, y, **kw))
    visualize.plot_training_curves(str(run_dir / "log.csv"), str(tmp_path / "c.png"), test_accuracy=0.9912)
    assert drawn == [(pytest.approx(99.12), "test accuracy of the saved model: 99.12%")]
    drawn.clear()
    visualize.plot_training_curves(str(run_dir / "log.csv"), str(tmp_path / "d.png"))
    assert drawn == []


def test_training_curves_of_a_one_row_log(tmp_path):
    """A run of fewer steps than --log-every... has one row: drawn as dots, without matplotlib's
    warning about an empty x range (the warning is an error here)."""
    (tmp_path / "log.csv").write_text("step,epoch,loss,accuracy,lr,momentum,grad_norm\n10,1,2.3,0.1,0.004,0.95,1.0\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = visualize.plot_training_curves(str(tmp_path / "log.csv"), str(tmp_path / "c.png"))
    assert png_size(path) == expected(visualize.FIGSIZE["training_curves"])


def test_training_curves_reject_a_log_without_the_columns(tmp_path):
    (tmp_path / "log.csv").write_text("step,loss\n1,2.3\n")
    with pytest.raises(ValueError, match="accuracy"):
        visualize.plot_training_curves(str(tmp_path / "log.csv"), str(tmp_path / "c.png"))


def test_read_log_drops_a_last_row_cut_short(tmp_path):
    """As a run killed while writing it leaves it (mnist.train drops it too, on resume)."""
    rows = "step,epoch,loss,accuracy,lr,momentum,grad_norm\n1,1,2.3,0.1,0.004,0.95,1.0\n2,1,2.2,0.2,0.005,0.94,1.1\n"
    for cut in ("3,1,2.1,0.3,0.0", "3,1,2.1,0.3,0.006,0.93,", "3,1,2.1,0.3\n", "3,1,2.1,0.3,0.006,0.93,1.2,",
                "3,1,2.1,0.3,0.006,0.93,1"):       # (the last: all its values parse, "1" of "1.2" perhaps)
        (tmp_path / "log.csv").write_text(rows + cut)
        log = visualize.read_log(str(tmp_path / "log.csv"))
        assert list(log["step"]) == [1, 2] and list(log["grad_norm"]) == [1.0, 1.1]
    visualize.plot_training_curves(str(tmp_path / "log.csv"), str(tmp_path / "c.png"))


@pytest.mark.parametrize("text", ["step,epoch,loss,accuracy,lr,momentum,grad_norm\n1,1,2.3,0.1", "step,epo"],
                         ids=["first-row-cut", "header-cut"])
def test_read_log_of_a_header_and_a_first_row_cut_short_is_empty(tmp_path, text):
    """The run was killed while writing its first row (or its header): no rows (EmptyLog, the curves
    skipped with a note), as for a header alone, and as mnist.train's resume reads it."""
    path = tmp_path / "log.csv"
    path.write_text(text)
    with pytest.raises(visualize.EmptyLog):
        visualize.read_log(str(path))


@pytest.mark.parametrize("bad, fragment", [("2,1,2.2,0.2,0.005\n", "5 values"),
                                           ("2,1,2.2,0.2,0.005,x,1.1\n", "could not convert string to float: 'x'")])
def test_read_log_names_the_line_of_a_malformed_row(tmp_path, bad, fragment):
    path = tmp_path / "log.csv"
    path.write_text("step,epoch,loss,accuracy,lr,momentum,grad_norm\n1,1,2.3,0.1,0.004,0.95,1.0\n" + bad +
                    "3,1,2.1,0.3,0.006,0.93,1.2\n")
    with pytest.raises(ValueError) as info:
        visualize.read_log(str(path))
    assert str(info.value) == (f"{path}, line 3: {fragment} (expected 7 numbers: "
                               "step,epoch,loss,accuracy,lr,momentum,grad_norm)")


@pytest.mark.parametrize("last, fragment", [("3,1,2.1,0.3,0.006,0.93,1.2,9\n", "8 values"),
                                            ("3,1,abc,0.3,0.006,0.93,1.2\n", "could not convert string to float")])
def test_read_log_names_the_line_of_a_malformed_last_row_that_is_not_cut_short(tmp_path, last, fragment):
    """Whole (ended by a line end, with all its values): not what a run killed while writing it leaves."""
    path = tmp_path / "log.csv"
    path.write_text("step,epoch,loss,accuracy,lr,momentum,grad_norm\n1,1,2.3,0.1,0.004,0.95,1.0\n" + last)
    with pytest.raises(ValueError, match=f"line 3: {fragment}"):
        visualize.read_log(str(path))


def test_read_log_of_blank_lines_is_empty_and_a_header_may_follow_them(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("\n\r\n\n")
    with pytest.raises(visualize.EmptyLog):
        visualize.read_log(str(path))
    path.write_text("\n\nstep,epoch,loss,accuracy,lr,momentum,grad_norm\n\n1,1,2.3,0.1,0.004,0.95,1.0\n")
    assert list(visualize.read_log(str(path))["loss"]) == [2.3]


def test_gradient_flow(run_dir, tmp_path, monkeypatch):
    """Two log-scaled panels, a line pair (each row, and their mean) per layer with the layer's name,
    and the 1e-3 rule of thumb on the update panel."""
    lines, ruled = [], []
    real_plot, real_axhline = visualize.plt.Axes.plot, visualize.plt.Axes.axhline
    monkeypatch.setattr(visualize.plt.Axes, "plot", lambda ax, *a, **kw: lines.append(kw.get("label")) or
                        real_plot(ax, *a, **kw))
    monkeypatch.setattr(visualize.plt.Axes, "axhline", lambda ax, y, **kw: ruled.append(y) or real_axhline(ax, y, **kw))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = visualize.plot_gradient_flow(str(run_dir / "layers.csv"), str(tmp_path / "g.png"))
    assert png_size(path) == expected(visualize.FIGSIZE["gradient_flow"])
    assert [label for label in lines if label] == LAYERS * 2 and len(lines) == 4 * len(LAYERS)
    assert ruled == [1e-3]


def test_gradient_flow_of_a_short_run_and_of_one_row(tmp_path):
    """Up to 20 rows: the rows themselves, dotted; one row: centred, without matplotlib's warning."""
    write_layers(tmp_path / "layers.csv", steps=10, every=5)
    one = tmp_path / "one.csv"
    one.write_text("\n".join((tmp_path / "layers.csv").read_text().splitlines()[:2]) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("layers.csv", "one.csv"):
            path = visualize.plot_gradient_flow(str(tmp_path / name), str(tmp_path / f"{name}.png"))
            assert png_size(path) == expected(visualize.FIGSIZE["gradient_flow"])


def test_read_layer_log_drops_a_last_row_cut_short_and_names_missing_columns(tmp_path):
    path = write_layers(tmp_path / "layers.csv", steps=6)
    whole = path.read_text()
    path.write_text(whole + "8,0.4,0.1,0.2")                      # killed while writing its row
    step, epoch, layers, stats = visualize.read_layer_log(str(path))
    assert list(step) == [2, 4, 6] and list(epoch) == [0.1, 0.2, 0.3] and layers == LAYERS
    assert {k: v.shape for k, v in stats.items()} == {s: (3, 9) for s in STATS}
    row = [float(v) for v in whole.splitlines()[2].split(",")]   # step 4: the columns in their places
    assert list(stats["weight_norm"][1]) == row[2 + 9:2 + 18] and list(stats["update_ratio"][1]) == row[2 + 18:]
    path.write_text(whole.replace("fc2_update_ratio", "fc2_other"))
    with pytest.raises(ValueError, match=r"missing columns \['fc2_update_ratio'\]"):
        visualize.read_layer_log(str(path))
    path.write_text(LAYERS_HEADER + "\n")
    with pytest.raises(visualize.EmptyLog):
        visualize.read_layer_log(str(path))


def test_centred_mean_shrinks_its_window_at_the_ends():
    assert list(visualize.centred_mean([1, 2, 3, 4, 5, 100], 2)) == pytest.approx([1, 2, 3, 22.8, 109 / 3, 100])
    assert list(visualize.centred_mean([3, 1, 2], 0)) == [3, 1, 2]


def test_feature_maps(model, tmp_path):
    maps = visualize.feature_maps(model, digit())
    assert [(name, a.shape) for name, a in maps] == [
        ("block1", (4, 28, 28)), ("block2", (8, 28, 28)), ("block3", (12, 28, 28)),
        ("block4", (16, 28, 28)), ("block5", (20, 14, 14)), ("block6", (24, 7, 7)), ("block7", (28, 4, 4))]
    path = visualize.plot_feature_maps(model, digit(), str(tmp_path / "m.png"))
    assert png_size(path) == expected(visualize.FIGSIZE["feature_maps"])


def test_confusion_matrix(tmp_path):
    rng = np.random.default_rng(1)
    off_diagonal = rng.poisson(0.5, (10, 10)) * (1 - np.eye(10, dtype=int))
    confusion = np.diag(rng.integers(900, 1100, 10)) + off_diagonal
    path = visualize.plot_confusion_matrix(confusion, str(tmp_path / "cm.png"))
    assert png_size(path) == expected(visualize.FIGSIZE["confusion_matrix"])


def test_confusion_matrix_bars_are_each_true_digits_share_recognised(tmp_path, monkeypatch):
    """Rows are true digits: a digit's bar is its diagonal count over its row (recall), not its column."""
    bars = []
    real_barh = visualize.plt.Axes.barh
    monkeypatch.setattr(visualize.plt.Axes, "barh",
                        lambda ax, y, width, **kw: bars.append(np.asarray(width) + kw["left"]) or real_barh(ax, y, width, **kw))
    confusion = np.array([[8, 2, 0], [0, 5, 5], [0, 0, 10]])          # columns sum to 8, 7, 15
    visualize.plot_confusion_matrix(confusion, str(tmp_path / "cm.png"))
    assert len(bars) == 1 and bars[0] == pytest.approx([80.0, 50.0, 100.0])


def test_misclassified_shows_the_most_confident_mistakes_first(tmp_path, monkeypatch):
    titles = []
    real_set_title = visualize.plt.Axes.set_title
    monkeypatch.setattr(visualize.plt.Axes, "set_title",
                        lambda ax, label, *a, **kw: titles.append(label) or real_set_title(ax, label, *a, **kw))
    labels = np.arange(6)
    predictions = np.array([0, 2, 4, 9, 4, 5])                          # wrong: images 1, 2 and 3
    confidence = np.array([0.99, 0.3, 0.9, 0.6, 0.95, 0.97])
    images = np.stack([digit(v, seed=int(v)) for v in labels])
    visualize.plot_misclassified(images, labels, predictions, confidence, str(tmp_path / "x.png"), max_images=2)
    assert [t.split("\n")[0] for t in titles] == ["true 2, predicted 4", "true 3, predicted 9"]


@pytest.mark.parametrize("wrong", [5, 0])
def test_misclassified(tmp_path, wrong):
    labels = np.arange(40) % 10
    predictions = labels.copy()
    predictions[:wrong] = (labels[:wrong] + 1) % 10
    probs = np.full((40, 10), 0.02)
    probs[np.arange(40), predictions] = 0.82
    images = np.stack([digit(v, seed=i) for i, v in enumerate(labels)])
    path = visualize.plot_misclassified(images, labels, predictions, probs, str(tmp_path / "x.png"))
    assert png_size(path) == expected(visualize.misclassified_figsize(36))
    # the probability of the prediction alone, (N,), works too
    visualize.plot_misclassified(images, labels, predictions, probs.max(axis=1), str(tmp_path / "y.png"),
                                 max_images=4)
    assert png_size(str(tmp_path / "y.png")) == expected(visualize.misclassified_figsize(4))


def test_a_failed_save_leaves_the_old_picture_and_no_temp_file(model, tmp_path, monkeypatch):
    path = visualize.plot_first_layer_filters(model, str(tmp_path / "f.png"))
    before = open(path, "rb").read()

    def savefig_fails_halfway(fig, fname, **kwargs):
        with open(fname, "wb") if isinstance(fname, (str, os.PathLike)) else fname as f:
            f.write(before[:100])
        raise OSError("No space left on device")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig_fails_halfway)
    with pytest.raises(OSError, match="No space left"):
        visualize.plot_first_layer_filters(model, path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["f.png"]


def test_a_failed_save_closes_its_figure(model, tmp_path, monkeypatch):
    """Else each failure leaves a figure open in a long-lived process (matplotlib warns past 20)."""
    before = set(visualize.plt.get_fignums())

    def savefig_fails(fig, fname, **kwargs):
        raise OSError("No space left on device")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig_fails)
    with pytest.raises(OSError, match="No space left"):
        visualize.plot_first_layer_filters(model, str(tmp_path / "f.png"))
    assert set(visualize.plt.get_fignums()) == before


def test_run_draws_the_test_accuracy_only_when_scored_on_the_whole_test_set(run_dir, monkeypatch):
    """With test_images, the accuracy is that of a part of the test set: not drawn as the model's."""
    given = []
    monkeypatch.setattr(visualize, "plot_training_curves", lambda log, path, acc=None: given.append(acc) or path)
    for name in ("plot_architecture", "plot_parameter_counts", "plot_first_layer_filters", "plot_feature_maps",
                 "plot_confusion_matrix", "plot_misclassified", "plot_gradient_flow"):
        monkeypatch.setattr(visualize, name, lambda *args: args[-1])   # (each returns its path, the last argument)
    images, labels = np.stack([digit(v) for v in range(4)]), np.arange(4)
    evaluation = {"accuracy": 0.75, "confusion": np.eye(10, dtype=int), "predictions": labels,
                  "logits": np.zeros((4, 10))}
    visualize.visualize_run(str(run_dir), test_set=(images, labels), evaluation=evaluation)
    visualize.visualize_run(str(run_dir), test_images=2, test_set=(images, labels), evaluation=evaluation)
    assert given == [0.75, None]


def test_run_without_a_model_says_what_it_needs(tmp_path, capsys):
    with pytest.raises(FileNotFoundError,
                       match=r"neither model\.npz nor checkpoint\.npz.*python -m mnist\.train --out"):
        visualize.visualize_run(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such folder") as missing:
        visualize.visualize_run(str(tmp_path / "missing"))
    assert "model.npz" not in str(missing.value)      # (a file is refused: its folder is what it takes)
    assert visualize.main([str(tmp_path)]) == 1
    assert "model.npz" in capsys.readouterr().err


def test_run_on_a_synthetic_test_set(run_dir, tmp_path, monkeypatch, capsys):
    """The whole run, with load_mnist patched to a 60-image test set; then again without log.csv
    and layers.csv (a run from before mnist.train wrote layers.csv skips only its picture)."""
    labels = (np.arange(60) % 10).astype(np.uint8)
    images = np.stack([digit(v, seed=i) for i, v in enumerate(labels)])
    monkeypatch.setattr(data, "load_mnist", lambda split, data_dir=None: (images, labels))
    assert visualize.main([str(run_dir)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(os.path.basename(p) for p in printed) == sorted(ALL_PICTURES)
    for p in printed:
        assert png_size(p)

    d = tmp_path / "nolog"
    d.mkdir()
    save_model(d / "model.npz", build_model())
    paths = visualize.visualize_run(str(d))
    assert sorted(os.path.basename(p) for p in paths) == sorted(set(ALL_PICTURES) -
                                                                {"training_curves.png", "gradient_flow.png"})
    out = capsys.readouterr().out
    assert "log.csv not found" in out
    assert f"note: {d / 'layers.csv'} not found, skipping gradient_flow.png" in out


@pytest.mark.parametrize("log, layers", [("step,epoch,loss,accuracy,lr,momentum,grad_norm\n", LAYERS_HEADER + "\n"),
                                         ("", "")], ids=["header-only", "empty"])
def test_run_stopped_before_its_first_log_row_draws_all_but_the_curves(tmp_path, monkeypatch, capsys, log, layers):
    labels = (np.arange(20) % 10).astype(np.uint8)
    images = np.stack([digit(v, seed=i) for i, v in enumerate(labels)])
    monkeypatch.setattr(data, "load_mnist", lambda split, data_dir=None: (images, labels))
    save_model(tmp_path / "model.npz", build_model())
    (tmp_path / "log.csv").write_text(log)
    (tmp_path / "layers.csv").write_text(layers)
    assert visualize.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    drawn = [os.path.basename(line) for line in out.splitlines() if not line.startswith("note: ")]
    assert sorted(drawn) == sorted(set(ALL_PICTURES) - {"training_curves.png", "gradient_flow.png"})
    for name, picture in (("log.csv", "training_curves.png"), ("layers.csv", "gradient_flow.png")):
        assert (f"note: {tmp_path / name} has no rows: its run stopped before its first --log-every steps; "
                f"skipping {picture}") in out


@pytest.mark.parametrize("name, edit, says", [
    ("log.csv", lambda text: text.replace("\n3,", "\n3,x,", 1), ", line 4: 7 values (expected 6 numbers: "),
    ("log.csv", lambda text: text.replace("\n3,", "\nnan,", 1), ", line 4: step nan is not a finite number"),
    ("layers.csv", lambda text: text.replace("block1_update_ratio", "block1_ratio"),
     ": missing columns ['block1_update_ratio']"),
], ids=["log-row", "log-step", "layers-header"])
def test_run_with_a_log_that_does_not_parse_writes_no_picture(tmp_path, monkeypatch, capsys, name, edit, says):
    """Everything the pictures need is read first: a log that does not parse fails before the first
    picture is written (it failed after three, leaving pictures of two runs mixed), in one line."""
    labels = (np.arange(20) % 10).astype(np.uint8)
    monkeypatch.setattr(data, "load_mnist", lambda split, data_dir=None: (np.zeros((20, 28, 28), np.uint8), labels))
    save_model(tmp_path / "model.npz", build_model())
    write_log(tmp_path / "log.csv")
    write_layers(tmp_path / "layers.csv")
    (tmp_path / name).write_text(edit((tmp_path / name).read_text()))
    before = sorted(f.name for f in tmp_path.iterdir())
    assert visualize.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / name}{says}") and err.count("\n") == 1
    assert sorted(f.name for f in tmp_path.iterdir()) == before


@pytest.mark.skipif(not os.environ.get("NANOTORCH_DATA"), reason="needs the real MNIST (NANOTORCH_DATA)")
def test_run_on_the_real_test_set(run_dir):
    paths = visualize.visualize_run(str(run_dir), test_images=500)
    assert sorted(os.path.basename(p) for p in paths) == sorted(ALL_PICTURES)
    for p in paths:
        assert os.path.dirname(p) == str(run_dir) and png_size(p)
