"""Threads (nanotorch/threads.py, kernels/tasks.py): the kernels' task loops give the same bits on
one thread and on two, and on every run; only the thread that asked for them spreads its kernels;
a forked child still trains; BusyFallback moves a training run to one thread when two are slower."""
import os
import threading

import numba
import numpy as np
import pytest

import nanotorch as nt
from nanotorch import nn, optim, threads
from nanotorch.kernels import conv3x3_same, conv3x3_same_grad_weight, maxpool2d_backward, maxpool2d_forward
from nanotorch.kernels import (conv3x3_winograd, im2col, matmul, maxpool2x2_forward, maxpool2x2_max, pad_planes,
                               winograd_weights)
from nanotorch.kernels.batchnorm_gelu import bn_gelu_backward, bn_gelu_forward, bn_gelu_inference
from mnist.evaluate import predict_logits
from mnist.model import build_model


# With NUMBA_NUM_THREADS=1 (or one core) set_num_threads(2) gives one thread: these tests would
# compare one thread with one
needs_two_threads = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2,
                                       reason="NUMBA_NUM_THREADS < 2: set_num_threads(2) would give one thread")


def train(steps, n_threads, direct=False, after_step=None):
    """A few SGD steps of the seed model on fixed random batches of 3; returns (weights, last gradients).
    ``direct``: every 3x3 convolution through the direct kernel (else the 7x7 and 4x4 ones use im2col).
    ``after_step``: called after each step (a BusyFallback's step)."""
    nt.set_num_threads(n_threads)
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
        if after_step:
            after_step()
    return flat.data.copy(), flat.grad.copy()


@needs_two_threads
@pytest.mark.parametrize("direct", [False, True])
def test_training_on_two_threads_matches_one_and_repeats_bitwise(direct, restore_threads):
    """The same bits on one thread and on two: what lets BusyFallback switch without changing a run."""
    w1, g1 = train(4, 1, direct)
    w2, g2 = train(4, 2, direct)
    assert nt.get_num_threads() == 2
    np.testing.assert_array_equal(g2, g1)
    np.testing.assert_array_equal(w2, w1)
    w2_again, g2_again = train(4, 2, direct)                  # same seed, same threads: same bits
    np.testing.assert_array_equal(g2_again, g2)
    np.testing.assert_array_equal(w2_again, w2)


def _bn_gelu_training(z, v, p):
    """bn_gelu_forward with the batch's statistics, returned along with the running statistics it updated."""
    running_mean, running_var = np.zeros(z.shape[0], z.dtype), np.ones(z.shape[0], z.dtype)
    return (*bn_gelu_forward(z, running_mean, running_var, v, v, True, 0.1, 1e-5, p), running_mean, running_var)


def _bn_gelu_backward(da, xhat, d, inv_std, v, p, padded_width=0):
    dgamma, dbeta = np.zeros_like(v), np.zeros_like(v)
    return bn_gelu_backward(da, xhat, d, inv_std, v, True, dgamma, dbeta, p, padded_width), dgamma, dbeta


def _kernel_runs(rng, dtype):
    """Each kernel with a task loop, on odd shapes, as a function of ``parallel``."""
    x = rng.standard_normal((3, 5, 9, 11)).astype(dtype)
    w = rng.standard_normal((7, 5, 3, 3)).astype(dtype)
    xp, dzp = pad_planes(x), pad_planes(rng.standard_normal((3, 7, 9, 11)).astype(dtype))
    z = rng.standard_normal((7, 3, 13)).astype(dtype)
    v = rng.uniform(0.5, 2.0, 7).astype(dtype)
    stats = rng.uniform(0.5, 2.0, 7)
    a, xhat, d, inv_std = bn_gelu_forward(z, np.zeros(7), np.ones(7), v, v, True, 0.1, 1e-5)
    da = rng.standard_normal(a.shape).astype(dtype)
    xe = rng.standard_normal((3, 5, 10, 12)).astype(dtype)
    out, window = maxpool2x2_forward(xe, 5, 6)
    arg = maxpool2d_forward(xe, 3, 3, 2, 2, 1, 1, 5, 6)[1]          # overlapping windows
    dout = rng.standard_normal(out.shape).astype(dtype)
    x_cf = np.ascontiguousarray(x.transpose(1, 0, 2, 3))
    ma, mb = rng.standard_normal((45, 21)).astype(dtype), rng.standard_normal((45, 37)).astype(dtype)
    return {"im2col (3x3, padding 1)": lambda p: im2col(x, 3, 3, 1, 1, 1, 1, 9, 11, p),
            "pad_planes": lambda p: pad_planes(x, p),
            "matmul (a transposed)": lambda p: matmul(ma.T, mb, p),
            "pad_planes (channels first)": lambda p: pad_planes(x_cf, p, True),
            "conv3x3_same": lambda p: conv3x3_same(xp, w, 9, 11, True, p),
            "conv3x3_same (N, OC, L)": lambda p: conv3x3_same(xp, w, 9, 11, False, p),
            "conv3x3_same (flipped)": lambda p: conv3x3_same(dzp, w, 9, 11, False, p, True),
            "conv3x3_same_grad_weight": lambda p: conv3x3_same_grad_weight(xp, dzp, 9, 11, p),
            "conv3x3_winograd": lambda p: conv3x3_winograd(xe, winograd_weights(w), 7, 2 if p else 1),
            "bn_gelu_forward (training)": lambda p: _bn_gelu_training(z, v, p),
            "bn_gelu_forward (eval)": lambda p: bn_gelu_forward(z, stats - 1, stats, v, -v / 2, False, 0.0, 1e-5, p),
            "bn_gelu_inference": lambda p: bn_gelu_inference(z, v, -v / 2, p),     # (scale, shift: not the same)
            "bn_gelu_backward": lambda p: _bn_gelu_backward(da, xhat, d, inv_std, v, p),
            "bn_gelu_backward (padded)": lambda p: _bn_gelu_backward(da, xhat, d, inv_std, v, p, 13),
            "maxpool2x2_forward": lambda p: maxpool2x2_forward(xe, 5, 6, p),
            "maxpool2x2_max": lambda p: maxpool2x2_max(xe, 5, 6, p),
            "maxpool2d_backward (window codes)": lambda p: maxpool2d_backward(dout, window, 10, 12, p, True),
            "maxpool2d_backward": lambda p: maxpool2d_backward(dout, arg, 10, 12, p)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_task_loop_gives_the_same_bits_in_parallel(dtype, restore_threads):
    """Each task is the same arithmetic on either path. The two loops are compiled separately and
    with fastmath the compiler could order a task's sums differently in each; here it does not,
    and this test keeps it so (tasks.py)."""
    nt.set_num_threads(2)
    for name, run in _kernel_runs(np.random.default_rng(0), dtype).items():
        serial, spread, again = run(False), run(True), run(True)
        as_list = lambda r: list(r) if isinstance(r, tuple) else [r]
        for s, p, p2 in zip(as_list(serial), as_list(spread), as_list(again)):
            np.testing.assert_array_equal(p, s, err_msg=name)
            np.testing.assert_array_equal(p2, p, err_msg=name)


@needs_two_threads
def test_only_the_thread_that_set_the_count_spreads_its_kernels(restore_threads):
    big = threads.MIN_PARALLEL_SIZE
    nt.set_num_threads(2)
    assert threads.parallel(big) and nt.get_num_threads() == 2
    assert not threads.parallel(big - 1)                   # too small to be worth a fork-join
    seen = []
    other = threading.Thread(target=lambda: seen.append(threads.parallel(big)))
    other.start()
    other.join()
    assert seen == [False]
    nt.set_num_threads(1)
    assert not threads.parallel(big) and nt.get_num_threads() == 1
    with pytest.raises(ValueError, match="n must be >= 1"):
        nt.set_num_threads(0)


@pytest.mark.parametrize("n", [True, 2.0, "2"])
def test_set_num_threads_takes_an_int_only(n, restore_threads):
    """As torch.set_num_threads, which refuses a bool or a float (True was one thread, 2.7 two)."""
    with pytest.raises(TypeError, match=rf"set_num_threads: n must be an int, got {n!r} \({type(n).__name__}\)"):
        nt.set_num_threads(n)
    nt.set_num_threads(np.int64(1))                      # a NumPy integer is an int
    assert nt.get_num_threads() == 1


def test_set_num_threads_above_numbas_count_is_capped_not_refused(restore_threads):
    """As torch.set_num_threads: n above NUMBA_NUM_THREADS runs on Numba's threads, no error."""
    nt.set_num_threads(numba.config.NUMBA_NUM_THREADS + 3)
    assert nt.get_num_threads() == numba.config.NUMBA_NUM_THREADS


@needs_two_threads
def test_evaluating_on_two_threads_gives_the_same_logits(restore_threads):
    nt.set_num_threads(2)
    assert nt.get_num_threads() == 2
    nt.manual_seed(0)
    model = build_model()
    x = np.random.default_rng(0).standard_normal((40, 1, 28, 28)).astype(np.float32)
    # threads=1: the main thread, its kernels spread over two; threads=2: two workers, each alone
    np.testing.assert_array_equal(predict_logits(model, x, 16, threads=2), predict_logits(model, x, 16, threads=1))


def _train_in_child(queue):
    queue.put(train(2, 2, direct=True)[0])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.parametrize("parent_threads", [2, 1])
def test_a_forked_child_trains_on_two_threads(parent_threads, restore_threads):
    """GNU OpenMP terminates a forked child that enters it once the parent has started it, which
    the parent's kernels do even on one thread: the child must run its kernels alone."""
    import multiprocessing
    expected = train(2, 2, direct=True)[0]
    train(1, parent_threads, direct=True)                  # the parent's last use of its kernels
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_train_in_child, args=(queue,))
    child.start()
    try:
        got = queue.get(timeout=60)                        # before join: the child exits once it is read
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, expected)            # the child on one thread: the same bits


def _parallel_in_child(queue):
    queue.put((threads.parallel(threads.MIN_PARALLEL_SIZE), nt.get_num_threads()))


@needs_two_threads
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_runs_alone_without_setting_the_count(restore_threads):
    """The child inherits its parent's "spread over two threads" from the thread that forked; it must
    not act on it (GNU OpenMP would terminate it), also when it never calls set_num_threads."""
    import multiprocessing
    nt.set_num_threads(2)
    assert threads.parallel(threads.MIN_PARALLEL_SIZE)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_parallel_in_child, args=(queue,))
    child.start()
    try:
        got = queue.get(timeout=60)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    assert got == (False, 1) and child.exitcode == 0
    assert threads.parallel(threads.MIN_PARALLEL_SIZE)     # the parent's own state is untouched


# ----------------------------------------------------------------------------- BusyFallback

class FakeClock:
    """A clock for BusyFallback: each call moves on by one step's time, ``step_ms[threads]`` for
    the count the fallback runs now (read through ``fallback``, set after it is built)."""

    def __init__(self, step_ms):
        self.step_ms, self.now, self.fallback = step_ms, 0.0, None

    def __call__(self):
        self.now += self.step_ms[self.fallback.threads] / 1e3
        return self.now


def run_fallback(steps, step_ms, window=5, retry=4, start=None):
    """Drive a BusyFallback(2) for ``steps`` steps; ``step_ms(step)`` gives {threads: ms} at each step."""
    notes = []
    clock = FakeClock(step_ms(0))
    fallback = threads.BusyFallback(2, window=window, retry=retry, clock=clock, say=notes.append)
    clock.fallback = fallback
    for step in range(steps):
        clock.step_ms = step_ms(step)
        fallback.step()
    return fallback, notes


@needs_two_threads
def test_fallback_on_an_idle_machine_stays_on_two_threads(restore_threads):
    fallback, notes = run_fallback(200, lambda s: {2: 1.0, 1: 1.3})
    assert fallback.threads == 2 and nt.get_num_threads() == 2
    assert fallback.switches == [] and notes == []          # the first window's probe on one thread lost


@needs_two_threads
def test_fallback_on_a_busy_machine_goes_to_one_thread_and_back_when_it_is_free(restore_threads):
    busy = lambda s: 20 <= s < 300
    fallback, notes = run_fallback(500, lambda s: {2: 12.0 if busy(s) else 1.0, 1: 1.3})
    # Step 1 (on two threads) is not timed. Steps 2-6: the first window, on one thread; 7-11 the
    # probe of two (won). The machine is busy from step 21: the window of steps 17-21 has one slow
    # step, which does not count. Steps 22-23 are slow, more than a window at 3x the best pace:
    # the window ends there, and the probe 24-28 on one thread is kept, from step 24. On one
    # thread, two are tried after 4 windows (steps 49-50: two steps of 12 ms are more than the
    # 5 x 1.3 ms of the window before, so the probe ends there, lost), after 8 (91-92), then every
    # 16 (the cap, 4 x 4: 173-174, 255-256, lost; 337-341, won).
    assert fallback.switches == [(24, 1), (337, 2)]
    assert fallback.threads == 2 and nt.get_num_threads() == 2
    assert "another process holds a core: continuing on one thread" in notes[0]
    assert "back on 2 threads" in notes[1] and len(notes) == 2


@needs_two_threads
def test_fallback_note_names_the_wait_before_the_next_probe(restore_threads):
    """Probes of two threads wait twice as long each time (up to 4x ``retry`` windows); a second
    fall back says the wait that holds then, not the first one."""
    busy = lambda s: 20 <= s < 300 or s >= 400
    fallback, notes = run_fallback(500, lambda s: {2: 12.0 if busy(s) else 1.0, 1: 1.3})
    assert [threads for _, threads in fallback.switches] == [1, 2, 1]
    assert "tried again after 20 steps" in notes[0] and "tried again after 80 steps" in notes[2]


@needs_two_threads
def test_fallback_on_a_machine_busy_from_the_start_finds_out_at_once(restore_threads):
    fallback, notes = run_fallback(100, lambda s: {2: 30.0, 1: 1.2})
    # steps 2-6 on one thread; the probe of two, 7-8, lost: one thread from step 9
    assert fallback.switches == [(9, 1)] and fallback.threads == 1 and nt.get_num_threads() == 1
    assert notes == ["note: steps took 30.00 ms on 2 threads, 1.20 ms on one: another process holds a core: "
                     "continuing on one thread (the same results; 2 threads are tried again after 20 steps)"]


@needs_two_threads
def test_fallback_on_a_slow_phase_keeps_two_threads(restore_threads):
    """Everything 4x slower for a while (the host, not a busy core): one thread is no faster, so the
    run goes back to two, and takes the slower pace as its measure instead of probing again."""
    fallback, notes = run_fallback(300, lambda s: {2: 4.0, 1: 5.2} if s >= 50 else {2: 1.0, 1: 1.3})
    assert fallback.switches == [] and fallback.threads == 2 and notes == []


@needs_two_threads
def test_fallback_ignores_a_moment_s_stall(restore_threads):
    """One step of 40 ms on an idle machine (a checkpoint, a page fault): the window's median is not
    slow, so there is no probe, and no switch."""
    fallback, notes = run_fallback(400, lambda s: {2: 40.0 if s == 200 else 0.75, 1: 1.3}, window=20)
    assert fallback.switches == [] and fallback.threads == 2 and notes == []


@needs_two_threads
@pytest.mark.parametrize("epoch_steps", [3, 5, 7, 12, 20, 21, 25, 40])
def test_fallback_windows_run_across_epochs(epoch_steps, restore_threads):
    """restart() after each epoch's evaluation leaves the window and any probe going: epochs of
    any length reach their decisions (a busy machine here, then an idle one)."""
    notes = []
    clock = FakeClock({2: 30.0, 1: 1.2})
    fallback = threads.BusyFallback(2, window=5, retry=4, clock=clock, say=notes.append)
    clock.fallback = fallback
    for step in range(200):
        if step % epoch_steps == 0:
            clock.now += 1.0                        # an evaluation: a second outside the steps
            fallback.restart()
        clock.step_ms = {2: 30.0, 1: 1.2} if step < 100 else {2: 1.0, 1: 1.2}
        fallback.step()
    assert [threads for _, threads in fallback.switches] == [1, 2] and fallback.threads == 2


@needs_two_threads
def test_fallback_counts_the_steps_of_a_resumed_run(restore_threads):
    clock = FakeClock({2: 30.0, 1: 1.2})
    fallback = threads.BusyFallback(2, window=5, clock=clock, say=lambda note: None, step=60)
    clock.fallback = fallback
    for _ in range(20):
        fallback.step()
    assert fallback.switches == [(69, 1)]           # as (9, 1) in a run from step 0


@pytest.mark.parametrize("n, before, threads_before, after", [
    (2, [[24, 1]], 1, [(24, 1), (500, 2)]),             # (as JSON gives them back) it went on one thread
    (2, [[24, 1], [337, 2]], 2, [(24, 1), (337, 2)]),   # it was back on two
    (2, [], 2, []),
    (1, [], 2, [(500, 1)]),                             # resumed on another count: a switch, the first
    (1, [[24, 1], [337, 2]], 2, [(24, 1), (337, 2), (500, 1)]),
    (2, [[24, 1]], None, [(24, 1), (500, 2)]),          # a checkpoint from before threads_before was saved:
    (1, [[24, 1]], None, [(24, 1)]),                    # the count of its last switch,
    (1, [], None, []),                                  # or, without one, none told
])
def test_fallback_continues_the_switches_of_a_resumed_run(n, before, threads_before, after, restore_threads):
    fallback = threads.BusyFallback(n, clock=lambda: 0.0, say=lambda note: None, step=500, switches=before,
                                    threads_before=threads_before)
    assert fallback.switches == after


@needs_two_threads
def test_fallback_settled_is_the_count_kept_not_a_probes(restore_threads):
    """During the first window the run is on one thread to probe it, but the count it is on, as its
    switches tell, is still n (what a checkpoint saves for threads_before)."""
    fallback = threads.BusyFallback(2, clock=lambda: 0.0, say=lambda note: None)
    for _ in range(5):
        fallback.step()
    assert (fallback.threads, fallback.settled, fallback.switches) == (1, 2, [])


@needs_two_threads
def test_fallback_probe_is_not_ended_by_one_stall(restore_threads):
    """A stall inside the first probe of two threads on an idle machine (a slow first step on
    them, say): one slow step cannot end the probe, so the run stays on two threads."""
    fallback, notes = run_fallback(100, lambda s: {2: 40.0 if s == 22 else 0.75, 1: 1.3}, window=20)   # step 23
    assert fallback.switches == [] and fallback.threads == 2 and notes == []


def test_fallback_on_one_thread_does_nothing(restore_threads):
    nt.set_num_threads(1)
    fallback = threads.BusyFallback(1, window=2, clock=lambda: 0.0)
    for _ in range(20):
        fallback.step()
    assert fallback.threads == 1 and fallback.switches == []


@needs_two_threads
def test_a_run_that_switches_threads_gives_the_bits_of_one_that_does_not(restore_threads):
    """Training steps on one thread and two in turn, as BusyFallback may switch them: the same
    weights and gradients as on two threads throughout."""
    expected = train(12, 2, direct=True)
    count = iter(range(100))
    got = train(12, 2, direct=True, after_step=lambda: nt.set_num_threads(1 + next(count) % 2))
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
