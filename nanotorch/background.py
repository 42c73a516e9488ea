"""A second thread for gradients nobody needs yet: Conv2d's weight gradient, overlapped with the backward.

Each convolution's backward makes two products from the incoming gradient D (nanotorch/nn/conv.py):

    dx = col2im(W^T @ D)      needed at once: it is the gradient the layer below starts from
    dW = D @ cols^T           needed only when the optimizer (or clipping) reads .grad

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
import queue
import threading

_worker = None          # the background thread, or None
_jobs = queue.SimpleQueue()
_done = threading.Semaphore(0)
_pending = 0            # jobs queued and not yet waited for
_errors = []


def _serve():
    while True:
        job = _jobs.get()
        if job is None:
            return
        try:
            job()
        except BaseException as error:      # handed to wait() on the main thread
            _errors.append(error)
        _done.release()


def enable(on):
    """Start (or, with on=False, finish and stop) the background thread."""
    global _worker
    if on and _worker is None:
        _worker = threading.Thread(target=_serve, name="nanotorch-grad", daemon=True)
        _worker.start()
    elif not on and _worker is not None:
        wait()
        _jobs.put(None)
        _worker.join()
        _worker = None


def enabled():
    return _worker is not None


def run(job):
    """Run ``job()`` on the background thread if there is one, else right now. Jobs run in order."""
    global _pending
    if _worker is None:
        job()
    else:
        _pending += 1
        _jobs.put(job)


def wait():
    """Block until every queued job is done; re-raises the first error a job raised."""
    global _pending
    if not _pending or threading.current_thread() is _worker:
        return
    while _pending:
        _done.acquire()
        _pending -= 1
    if _errors:
        error = _errors[0]
        _errors.clear()
        raise error
