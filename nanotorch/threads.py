"""How many threads nanotorch uses: Numba's threads for the big kernels, one BLAS thread.

``set_num_threads(n)``, like torch.set_num_threads: with n >= 2 the kernels that do most of a
step's work (the direct 3x3 convolution and its two gradients, padding, BatchNorm + GELU, max
pooling, the 3x3 im2col) split into independent tasks spread over n Numba threads
(nanotorch/kernels/tasks.py), on layers of at least MIN_PARALLEL_SIZE values (im2col counts its
columns: ``parallel()``). Until it is called, nanotorch's kernels run on the calling thread (and
NumPy's BLAS keeps its own default thread count). Results are the same bits on any thread count
and on every run (tests/test_threads.py), so a training run can change its count as it goes:
``BusyFallback``, at the end, moves it to one thread while another process holds a core.

Only the thread that called set_num_threads spreads its kernels over threads (``parallel()``);
any other thread runs them alone, on its own core. mnist.evaluate relies on it: two threads
evaluate batches side by side, each on one core, which is faster than one thread whose kernels
fork and join on two cores. A forked child runs its kernels on its own thread for good, whatever
it asks for: GNU OpenMP, Numba's fastest thread pool here, terminates a forked child that enters
it once the parent has started it (which loading any of the kernels does), so the child never
enters it.

Numba is asked to prefer OpenMP (then TBB, then its own "workqueue"): its fork-join is the
cheapest here (~1.5 us; the workqueue pool's takes tens of microseconds), and the workqueue pool
cannot be entered by two threads at once.

The work is split inside each kernel, over Numba's threads, rather than handed between Python
threads: a hand-over between Python threads costs 40-60 us, against ~1.5 us for a fork-join. Below
MIN_PARALLEL_SIZE even a fork-join costs more than it saves (a BatchNorm + GELU of 28 channels of
4x4 planes runs slower on two threads than on one).

BLAS stays at one thread: Numba's OpenMP threads spin for a while after each kernel, and OpenBLAS
threads beside them compete for the same cores (evaluation ran several times slower). The im2col
convolutions of the MNIST model's layers on 7x7 and 4x4 planes and the Linear layers are small.
"""
import numbers
import os
import threading
import time

import numba
from threadpoolctl import threadpool_limits

if "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:                  # the user's choice wins
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]   # read when the pool starts
_state = {"parallel": False, "owner": None, "forked": False}
MIN_PARALLEL_SIZE = 8192


def set_num_threads(n):
    """Use n threads: the calling thread's big kernels spread over n Numba threads when n >= 2;
    BLAS on one thread. n above NUMBA_NUM_THREADS (by default the number of cores) is capped to it
    without an error, as torch.set_num_threads does not refuse large n; get_num_threads() tells the
    number used. n must be an int (a NumPy integer will do; a bool or 2.0 will not, as in torch)."""
    if not isinstance(n, numbers.Integral) or isinstance(n, bool):
        raise TypeError(f"set_num_threads: n must be an int, got {n!r} ({type(n).__name__})")
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    threadpool_limits(limits=1, user_api="blas")       # stays in force: nothing restores the old limits
    _state["parallel"], _state["owner"] = n >= 2 and not _state["forked"], threading.get_ident()


def get_num_threads():
    return numba.get_num_threads() if _state["parallel"] else 1


def parallel(size):
    """Whether a kernel called from this thread spreads over Numba's threads. ``size`` is the size
    of the work the kernel splits, usually the layer's input (for a convolution, the smaller of
    its input and output, so that the 1 -> 4 channel layer stays on one thread; for the 3x3
    im2col, its columns, nine times its input, so that the 7x7 and 4x4 layers' im2col does
    spread): not below ``MIN_PARALLEL_SIZE``, where a fork-join costs more than it saves."""
    return _state["parallel"] and size >= MIN_PARALLEL_SIZE and threading.get_ident() == _state["owner"]


def threads_for(size):
    """How many threads a kernel that takes a count rather than a flag (kernels/winograd.py) runs on
    from this thread: get_num_threads() where ``parallel(size)``, else one."""
    return get_num_threads() if parallel(size) else 1


def _forget_in_child():
    """A forked child runs its kernels alone for good (see the module docstring)."""
    _state["forked"] = True
    _state["parallel"] = False


os.register_at_fork(after_in_child=_forget_in_child)


class BusyFallback:
    """For a training loop on n >= 2 threads: fall back to one thread while another process holds a
    core, and go back to n when it no longer does. Call ``step()`` after every training step, and
    ``restart()`` after anything else that took time (an evaluation, a checkpoint).

    A step of the MNIST model forks and joins Numba's threads about 50 times. When another process
    holds a core, each join waits for the scheduler to run the other thread again. On this project's
    2-core machine, two trainings at once on two threads each ran 5-73 ms a step (0.73-1.14 ms for
    one alone), and on one thread each 1.07-1.17 ms (docs/performance.md). So steps are timed in
    windows of ``window`` steps, each judged by its mean step time without its slowest step (a busy
    core stalls many steps, often not most of them; a moment's stall, one), and a window on the
    other count (a probe) decides which is faster, against the window just before it. A window
    ends early once it is sure to lose: its steps have taken longer than a whole window at the
    pace it is measured against, two of them at least twice that long (a probe of n threads on a
    busy machine would otherwise cost the most).
    Probes run:
    - at the start: after the first step (on n threads, which starts them), a window runs on one
      thread, then n are probed, so that a run started on a busy machine finds out at once;
    - on n threads: after a window ``slower`` times slower than the fastest so far;
    - on one thread: after ``retry`` windows, then after twice as many each time, up to 4 times
      ``retry`` (two runs side by side would otherwise take turns at finding two threads fast).
    One thread and two compute the same bits here (tests/test_threads.py asserts it, kernel by
    kernel and for training steps), so a switch changes the run's speed, not its numbers.
    ``switches`` lists (step, threads) for each change kept: the step from which the run went on
    on that count, counted over the run (``step``: the steps it had done before this process, for
    a resumed run); ``say`` reports them. ``settled`` is the count the run is on as ``switches`` has
    it (a probe under way does not count). A resumed run passes the ``switches`` of the processes
    before it and ``threads_before``, the ``settled`` count saved with them (left out, as older
    checkpoints do: that of the last switch; with no switch, none is added); if it is not n, (step, n)
    is added, since the run goes on from there on n threads.
    """

    def __init__(self, n, window=20, slower=3.0, retry=50, clock=None, say=print, step=0, switches=(),
                 threads_before=None):
        self.n, self.window, self.slower, self.retry, self.say = n, window, slower, retry, say
        self.clock = clock or time.perf_counter
        self.threads, self.switches = n, [tuple(s) for s in switches]
        if threads_before is None:
            threads_before = self.switches[-1][1] if self.switches else n
        if threads_before != n:                            # this process starts on n threads
            self.switches.append((step, n))
        self._step, self._last, self._times = step, None, []   # the run's step; the clock at the last; this window's
        self.settled = n                                   # the count the last decision kept
        self._best = float("inf")                          # the fastest window on n threads (seconds a step)
        self._probe = None                                 # (threads, seconds) of the window before the probe
        self._first = n >= 2                               # the first window runs on one thread, then n are probed
        self._on_one, self._retry = 0, retry               # windows on one thread; how many before a probe

    def restart(self):
        """The time since the last step is not a step's: the next step is not timed."""
        self._last = None

    def step(self):
        self._step += 1
        if self.n < 2:
            return
        now = self.clock()
        if self._last is None:                             # not timed: the first step (which may compile the
            self._last = now                               # kernels), or the first after restart()
            if self._first and self.threads == self.n and self._probe is None:
                self._use(1)                               # (the first step started Numba's threads)
            return
        self._times.append(now - self._last)
        self._last = now
        times = self._times
        if self._probe:                                    # a probe: slower than the window before it?
            clearly_slow = self._slower_than(times, self._probe[1])
        else:                                              # on n: slower than the fastest so far?
            clearly_slow = self.threads == self.n and self._slower_than(times, self.slower * self._best)
        if len(times) == self.window or clearly_slow:
            self._times = []
            self._window_done(_typical(times))

    def _slower_than(self, times, seconds):
        """Whether a window is sure to be slower than ``seconds`` a step before its end: its steps
        so far took longer than a whole window at that pace, two of them at least twice that long
        (so that one stall cannot decide)."""
        return sum(times) > self.window * seconds and sum(t > 2 * seconds for t in times) >= 2

    def _window_done(self, seconds):
        if self._probe is not None:                        # this window was the probe: keep the faster
            before_threads, before = self._probe
            self._probe = None
            times = {before_threads: before, self.threads: seconds}
            if seconds < before:
                if self.threads == self.n:
                    self._best = min(self._best, seconds)
            else:
                self._use(before_threads)
                if before_threads == self.n:               # n were slow and one no faster: the machine is
                    self._best = before                    # slower now, so that is the pace to compare with
            self._decided(times)
        elif self._first:                                  # the first window, on one thread: probe n
            self._start_probe(self.n, seconds)
        elif self.threads == self.n:
            self._best = min(self._best, seconds)
            if seconds > self.slower * self._best:
                self._start_probe(1, seconds)
        else:
            self._on_one += 1
            if self._on_one >= self._retry:                # (each probe of n waits twice as long as the last)
                self._on_one, self._retry = 0, min(2 * self._retry, 4 * self.retry)
                self._start_probe(self.n, seconds)

    def _decided(self, times):
        """After a probe: report a change from the count kept before it."""
        self._first = False
        if self.threads == self.settled:
            return
        self.settled = self.threads
        self.switches.append((self._since, self.threads))
        self._on_one = 0
        why = (f"another process holds a core: continuing on one thread (the same results; {self.n} threads "
               f"are tried again after {self._retry * self.window} steps)" if self.threads == 1
               else f"back on {self.n} threads")
        self.say(f"note: steps took {1e3 * times[self.n]:.2f} ms on {self.n} threads, {1e3 * times[1]:.2f} ms "
                 f"on one: {why}")

    def _start_probe(self, threads, seconds):
        self._probe = (self.threads, seconds)
        self._use(threads)

    def _use(self, threads):
        self.threads, self._since = threads, self._step + 1      # (the next step is the first on it)
        set_num_threads(threads)


def _typical(times):
    """A window's seconds a step: the mean without its slowest step (a moment's stall is not the
    machine's pace; the join waits of a busy core, in many of the steps, are)."""
    return (sum(times) - max(times)) / (len(times) - 1) if len(times) > 1 else times[0]
