"""nn.utils.flatten_parameters: one vector for SGD and clipping, the same numbers as per-parameter."""
import numpy as np

import nanotorch as nt
from nanotorch import nn, optim
from mnist.model import build_model
from mnist.train import train_step


def _train(flat, steps=25):
    nt.manual_seed(0)
    model = build_model().double()
    params = [nn.utils.flatten_parameters(model.parameters())] if flat else model.parameters()
    opt = optim.SGD(params, lr=0.001, momentum=0.9)
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=100, pct_start=0.25)
    rng = np.random.default_rng(0)
    norms = [train_step(model, nn.CrossEntropyLoss(), opt, sched, rng.standard_normal((4, 1, 28, 28)),
                        rng.integers(0, 10, 4), 1.0)[2] for _ in range(steps)]
    return model.state_dict(), norms


def test_flat_training_equals_per_parameter_training():
    (a, norms_a), (b, norms_b) = _train(False), _train(True)
    np.testing.assert_allclose(norms_a, norms_b, rtol=1e-12)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_parameters_become_views_that_stay_views():
    model = build_model()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    flat = nn.utils.flatten_parameters(model.parameters())
    assert flat.data.size == sum(p.data.size for p in model.parameters()) == 18582
    for (name, p) in model.named_parameters():
        assert np.shares_memory(p.data, flat.data) and np.shares_memory(p.grad, flat.grad), name
        np.testing.assert_array_equal(p.data, before[name])
    model.zero_grad()                                   # set_to_none: zeroes the shared buffer instead
    flat.grad += 1
    assert all(np.all(p.grad == 1) for p in model.parameters())
    optim.SGD([flat], lr=0.1).zero_grad()
    assert not flat.grad.any()
    model.load_state_dict(before)                       # copies in place: the views survive
    assert all(np.shares_memory(p.data, flat.data) for p in model.parameters())


def test_mixed_dtypes_flatten_into_the_wider_one_without_rounding():
    """float32 and float64 parameters: one float64 vector (np.result_type), every value kept exactly."""
    a = nn.Parameter(np.array([0.1, 0.2], dtype=np.float32))
    b = nn.Parameter(np.array([1 / 3, 1e-300], dtype=np.float64))
    before = [a.data.copy(), b.data.copy()]
    flat = nn.utils.flatten_parameters([a, b])
    assert flat.data.dtype == np.float64
    np.testing.assert_array_equal(flat.data, np.concatenate([before[0].astype(np.float64), before[1]]))
    np.testing.assert_array_equal(b.data, before[1])
    assert np.shares_memory(a.data, flat.data) and np.shares_memory(b.data, flat.data)
