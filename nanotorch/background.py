"""A second thread for gradients nobody needs yet: Conv2d's weight gradient, overlapped with the backward.

Each convolution's backward makes two results from the incoming gradient D (nanotorch/nn/conv.py):

    dx = col2im(W^T @ D)      needed at once: it is the gradient the layer below starts from
    dW = D @ cols^T           needed only when the optimizer (or clipping) reads .grad

(or, on the direct 3x3 path, the same two from the padded input and padded D: nanotorch/kernels/conv3x3.py).

So with two threads, ``run(job)`` queues dW on a background thread and the backward pass moves on
to the next layer; the weight gradients of all layers are computed beside the rest of the backward.
Reading or setting any ``Parameter.grad`` first waits for the queued jobs, so nothing reads a
gradient before it is complete. NumPy's matmul and the Numba kernels release the GIL, so the two
threads run on two cores; the arithmetic is the same as on one thread, so results are bitwise
equal (tests/test_background.py).

Measured on the 2-core machine (BLAS at one thread in both cases), 30 alternating 60-step runs of
the seed recipe with and without the thread, three times: median 2.46 -> 2.23 ms, 2.46 -> 2.27 ms
and 2.67 -> 2.62 ms a step (2-9% faster; the machine's speed drifts). Waiting on each layer's dW before
moving on gained only 2%: a hand-over between threads costs ~40 us here, about what one overlap
saves, which is why the jobs are only waited for once, when a gradient is read.

Off by default; ``nanotorch.set_num_threads(n)`` with n >= 2 turns it on.
"""
import os
import queue
import threading


class _State:
    """The thread, its job queue, and how many jobs were queued and have finished."""

    def __init__(self):
        self.worker = None
        self.jobs = queue.SimpleQueue()
        self.progress = threading.Condition()
        self.queued = 0
        self.finished = 0
        self.errors = []


_state = _State()


def _forget_in_child():
    """A forked child has no background thread: start it with no queue (and none running)."""
    global _state
    _state = _State()


os.register_at_fork(after_in_child=_forget_in_child)


def _serve(state):
    while True:
        job = state.jobs.get()
        if job is None:
            return
        try:
            job()
        except BaseException as error:      # handed to wait() on the thread that reads the gradient
            with state.progress:
                state.errors.append(error)
        with state.progress:
            state.finished += 1
            state.progress.notify_all()


def enable(on):
    """Start (or, with on=False, finish the queued jobs and stop) the background thread."""
    state = _state
    if on and state.worker is None:
        state.worker = threading.Thread(target=_serve, args=(state,), name="nanotorch-grad", daemon=True)
        state.worker.start()
    elif not on and state.worker is not None:
        try:
            wait()
        finally:
            state.jobs.put(None)
            state.worker.join()
            state.worker = None


def enabled():
    return _state.worker is not None


def run(job):
    """Run ``job()`` on the background thread if there is one, else right now. Jobs run in order.
    A job must only read arrays that nobody changes until its result is read (Conv2d hands over
    the columns, or padded input, it keeps and a gradient array of its own)."""
    state = _state
    if state.worker is None:
        job()
        return
    with state.progress:
        state.queued += 1
    state.jobs.put(job)


def wait():
    """Block until every job queued so far is done (from any thread that reads a gradient);
    re-raises the first error a job raised, once."""
    state = _state
    if (state.queued == state.finished and not state.errors) or threading.current_thread() is state.worker:
        return
    with state.progress:
        target = state.queued
        while state.finished < target:
            state.progress.wait()
        errors, state.errors = state.errors, []
    if errors:
        raise errors[0]
