"""Tests for mnist.summary: rows computed from the layers (shapes, parameters, receptive fields)."""
import numpy as np
import pytest

from mnist import summary
from mnist.model import build_model, count_parameters
from mnist.summary import format_summary, summarize
from nanotorch import nn

SEED_SHAPES = [(4, 28, 28), (8, 28, 28), (12, 28, 28), (16, 28, 28), (16, 14, 14), (20, 14, 14),
               (20, 7, 7), (24, 7, 7), (24, 4, 4), (28, 4, 4), (28, 2, 2), (28, 1, 1), (28,), (56,),
               (56,), (56,), (10,)]


def test_seed_network_rows():
    model = build_model()
    rows = summarize(model)
    assert rows[0]["name"] == "input" and rows[0]["output_shape"] == (1, 28, 28)
    assert [r["output_shape"] for r in rows[1:]] == SEED_SHAPES
    assert [r["name"] for r in rows[1:6]] == ["block1", "block2", "block3", "block4", "pool1"]
    assert rows[-1]["name"] == "fc2" and rows[-1]["output_shape"] == (10,)
    assert [r["key"] for r in rows[1:]] == [str(i) for i in range(len(model))]


def test_parameters_are_the_models():
    model = build_model()
    rows = summarize(model)
    total = sum(r["params"] for r in rows)
    assert total == count_parameters(model) == sum(p.data.size for p in model.parameters()) == 18_582
    assert total < 25_000
    for r, child in zip(rows[1:], model):
        assert r["params"] == sum(p.data.size for p in child.parameters())
    assert rows[1]["params"] == 1 * 4 * 9 + 2 * 4          # conv without bias + BN's gamma and beta


def test_receptive_fields_grow_with_each_window():
    rows = summarize(build_model())
    rf = [r["receptive_field"] for r in rows]
    # conv 3x3 adds 2 * jump, pool 2x2 adds 1 * jump and doubles the jump; global pooling of 2x2 adds 16
    assert rf[:13] == [1, 3, 5, 7, 9, 10, 14, 16, 24, 28, 44, 52, 68]
    assert all(b > a for a, b in zip(rf[:13], rf[1:13]))         # strictly increasing to the gap
    assert rf[13:] == [68] * 5                                     # the head sees what the gap saw
    assert [r["jump"] for r in rows[:13]] == [1, 1, 1, 1, 1, 2, 2, 4, 4, 8, 8, 16, 32]


def test_computed_for_any_sequential():
    # conv 5x5 stride 2: rf 5, jump 2; maxpool 3 stride 2: rf 5 + 2*2 = 9, jump 4;
    # flatten of a 6x6 map: a 6-wide window, rf 9 + 5*4 = 29
    model = nn.Sequential(nn.Conv2d(1, 2, 5, stride=2, padding=2), nn.MaxPool2d(3, stride=2),
                          nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    rows = summarize(model, input_shape=(1, 28, 28))
    assert [r["output_shape"] for r in rows[1:]] == [(2, 14, 14), (2, 6, 6), (72,), (3,)]
    assert [r["receptive_field"] for r in rows[1:]] == [5, 9, 29, 29]
    assert [r["params"] for r in rows[1:]] == [2 * 25 + 2, 0, 0, 72 * 3 + 3]
    assert [r["name"] for r in rows[1:]] == ["conv1", "pool1", "flatten", "fc1"]


def test_non_square_windows_give_each_axis_its_own_rf_and_jump():
    # conv 3x5 stride 1x2: rf (3, 5), jump (1, 2); maxpool 2x3 stride 2x1: rf (3 + 1*1, 5 + 2*2), jump (2, 2)
    model = nn.Sequential(nn.Conv2d(1, 2, (3, 5), stride=(1, 2), padding=(1, 2)), nn.MaxPool2d((2, 3), stride=(2, 1)))
    rows = summarize(model, input_shape=(1, 12, 12))
    assert [r["output_shape"] for r in rows[1:]] == [(2, 12, 6), (2, 6, 4)]
    assert [r["receptive_field"] for r in rows[1:]] == [(3, 5), (4, 9)]
    assert [r["jump"] for r in rows[1:]] == [(1, 2), 2]
    assert format_summary(rows).splitlines()[3].split()[-2:] == ["3x5", "1x2"]      # the conv row's RF, jump


def test_adaptive_pooling_to_several_cells_counts_its_window():
    # 7 rows pooled to 3: windows of rows 0-2, 2-4, 4-6 (3 rows), starting every 2 rows (7 // 3)
    rows = summarize(nn.Sequential(nn.AdaptiveAvgPool2d(3)), input_shape=(1, 7, 7))
    assert (rows[1]["output_shape"], rows[1]["receptive_field"], rows[1]["jump"]) == ((1, 3, 3), 3, 2)


@pytest.mark.parametrize("size, out", [(5, 3), (7, 3), (10, 4), (6, 4), (9, 2)])
def test_adaptive_pooling_receptive_field_is_its_widest_window(size, out):
    """When H is not a multiple of out, the windows differ in width (5 -> 3: rows 0-1, 1-3, 3-4):
    the receptive field is the widest, as the layer's own backward shows."""
    pool = nn.AdaptiveAvgPool2d(out)
    pool(np.zeros((1, 1, size, size)))
    widths = []
    for i in range(out):
        g = np.zeros((1, 1, out, out))
        g[0, 0, i, i] = 1
        rows = np.flatnonzero(pool.backward(g)[0, 0].any(axis=1))
        widths.append(rows[-1] - rows[0] + 1)
    rf = summarize(nn.Sequential(nn.AdaptiveAvgPool2d(out)), input_shape=(1, size, size))[1]["receptive_field"]
    assert rf == max(widths)


@pytest.mark.parametrize("out, shape, rf, jump", [((None, 3), (1, 7, 3), (1, 3), (1, 2)),   # None keeps H: no mixing of rows
                                                ((0, 2), (1, 0, 2), 1, 1)])         # an empty output: no window
def test_adaptive_pooling_with_none_or_zero_sizes_as_pytorch_takes_them(out, shape, rf, jump):
    rows = summarize(nn.Sequential(nn.AdaptiveAvgPool2d(out)), input_shape=(1, 7, 7))
    assert (rows[1]["output_shape"], rows[1]["receptive_field"], rows[1]["jump"]) == (shape, rf, jump)


def test_summarize_leaves_the_model_as_it_was():
    model = build_model().train()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    summarize(model)
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)   # eval mode: no stats update
    model.eval()
    summarize(model)
    assert not model.training


def test_format_summary_has_every_row_and_the_total(capsys):
    rows = summarize(build_model())
    text = format_summary(rows)
    assert "total parameters: 18,582" in text
    for r in rows:
        assert r["name"] in text
    assert "16 x 14 x 14" in text and "conv3x3 1->4" in text
    summary.main([])
    assert capsys.readouterr().out == text + "\n"
