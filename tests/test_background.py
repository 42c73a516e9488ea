"""The background gradient thread (nanotorch/background.py): same numbers as without it, and no
gradient is read before its job is done."""
import threading
import time

import numpy as np
import pytest

import nanotorch as nt
from nanotorch import background, nn, optim
from mnist.model import build_model


@pytest.fixture
def with_background():
    was = background.enabled()
    background.enable(True)
    yield
    background.enable(was)


def train(steps, on, direct=False):
    """A few SGD steps of the seed model on fixed random batches; returns (weights, last gradients).
    ``direct``: every 3x3 convolution through the direct kernel (else the 7x7 and 4x4 ones use im2col)."""
    was = background.enabled()
    background.enable(on)
    try:
        nt.manual_seed(0)
        model = build_model()
        if direct:
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    m.direct_min_width = 1
        flat = nn.utils.flatten_parameters(model.parameters())
        sgd = optim.SGD([flat], lr=0.05, momentum=0.9)
        loss = nn.CrossEntropyLoss()
        rng = np.random.default_rng(1)
        for _ in range(steps):
            x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
            y = rng.integers(0, 10, 3)
            loss(model(x), y)
            sgd.zero_grad()
            model.backward(loss.backward())
            nn.utils.clip_grad_norm_([flat], 1.0)
            sgd.step()
        return flat.data.copy(), flat.grad.copy()
    finally:
        background.enable(was)


@pytest.mark.parametrize("direct", [False, True])
def test_training_with_the_background_thread_is_bitwise_equal(direct):
    w_off, g_off = train(4, on=False, direct=direct)
    w_on, g_on = train(4, on=True, direct=direct)
    np.testing.assert_array_equal(g_on, g_off)
    np.testing.assert_array_equal(w_on, w_off)


def test_reading_grad_waits_for_queued_jobs(with_background):
    p = nn.Parameter(np.zeros(3))
    started = threading.Event()

    def slow():
        started.set()
        time.sleep(0.2)
        p.accumulate_grad(np.ones(3))

    background.run(slow)
    started.wait()
    np.testing.assert_array_equal(p.grad, np.ones(3))      # not None: the read waited for the job


def test_jobs_run_in_order_and_on_another_thread(with_background):
    seen = []
    for i in range(5):
        background.run(lambda i=i: seen.append((i, threading.current_thread() is threading.main_thread())))
    background.wait()
    assert seen == [(i, False) for i in range(5)]


def test_a_failing_job_raises_where_its_gradient_is_read(with_background):
    p = nn.Parameter(np.zeros(2))
    p.grad = np.zeros(2)
    background.run(lambda: p.accumulate_grad(np.ones(3)))          # wrong shape: a broadcasting error
    time.sleep(0.2)                                                 # the job has long failed: still reported
    with pytest.raises(ValueError):
        _ = p.grad
    background.wait()                                               # reported once, then cleared


def test_without_the_thread_jobs_run_at_once():
    was = background.enabled()
    background.enable(False)
    try:
        seen = []
        background.run(lambda: seen.append(threading.current_thread() is threading.main_thread()))
        assert seen == [True]
    finally:
        background.enable(was)


def test_set_num_threads_turns_it_on_and_off():
    was, before = background.enabled(), nt.get_num_threads()
    try:
        nt.set_num_threads(2)
        assert background.enabled()
        nt.set_num_threads(1)
        assert not background.enabled()
    finally:
        nt.set_num_threads(before)
        background.enable(was)


def test_a_batch_of_one_keeps_its_own_copy_of_the_gradient(with_background):
    """With n == 1 the (OC, N, L) transpose of dout is a view of it: the queued dW must not read the
    caller's buffer after backward returned (the caller may reuse it)."""
    grads = {}
    for on in (False, True):
        background.enable(on)
        nt.manual_seed(0)
        conv = nn.Conv2d(2, 3, 3, padding=1)
        x = np.random.default_rng(0).standard_normal((1, 2, 6, 6))
        dout = np.ones_like(conv(x))
        conv.backward(dout)
        dout.fill(0)                                     # the caller reuses its buffer
        grads[on] = conv.weight.grad.copy()
    np.testing.assert_array_equal(grads[True], grads[False])
    assert np.abs(grads[True]).sum() > 0


def test_two_threads_reading_gradients_both_return(with_background):
    p = nn.Parameter(np.zeros(3))
    background.run(lambda: (time.sleep(0.2), p.accumulate_grad(np.ones(3))))
    got = {}
    readers = [threading.Thread(target=lambda name=name: got.setdefault(name, p.grad.copy())) for name in "ab"]
    for r in readers:
        r.start()
    for r in readers:
        r.join(5)
    assert sorted(got) == ["a", "b"] and all(np.array_equal(g, np.ones(3)) for g in got.values())


def _conv_grad_in_child(queue):
    conv = nn.Conv2d(1, 2, 3, padding=1)
    x = np.ones((2, 1, 5, 5), np.float32)
    conv.backward(np.ones_like(conv(x)))
    queue.put(float(conv.weight.grad.sum()))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_a_forked_child_computes_gradients_without_the_parents_thread(with_background):
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_conv_grad_in_child, args=(queue,))
    child.start()
    child.join(30)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0
    background.enable(False)
    expected = queue.get(timeout=5)
    _conv_grad_in_child(queue)                             # the same in this process, without the thread
    assert queue.get(timeout=5) == expected
