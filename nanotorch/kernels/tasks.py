"""How a kernel spreads over threads: independent tasks, in a ``prange`` or a plain loop.

Kernels that take ``parallel`` split their work into tasks that share nothing they write: an
image and four output channels of a convolution, a channel of BatchNorm, an output row of max
pooling (a plane in its backward). Each task writes only its own part of the output and adds its
sums in its own order, so no result depends on which thread ran it. The loop over tasks is
written twice:

    if parallel:
        for t in prange(tasks): task(t)        spread over Numba's threads (OpenMP: ~1.5 us a fork-join)
    else:
        for t in range(tasks): task(t)         on the calling thread, without Numba's thread pool

The two loops are compiled separately, and with fastmath the compiler could order a task's sums
differently in each. It does not: one thread and two give the same bits, which
tests/test_threads.py asserts for every kernel, so that a training run may switch between them
(nanotorch.threads.BusyFallback). A kernel change that breaks it shows there.

The plain loop never enters Numba's threading layer. That is what every thread but the one that
called nanotorch.set_num_threads uses (mnist.evaluate runs batches on two threads, and Numba's
"workqueue" layer aborts if two threads enter it at once), and what a forked child uses (GNU
OpenMP terminates a child of a process that started it as soon as the child enters it).
nanotorch.threads decides which one runs.

Some task functions are inlined into the loops (``inline="always"``, in Numba's IR: BatchNorm +
GELU's channels, max pooling's rows): the same bits, without a call per task. The others are
calls: inlined, maxpool2d_backward's scatter and the padding ran many times slower and
conv3x3_same's task markedly slower (the compiler then vectorises their loops worse); the
weight gradient's task and im2col's channel task are calls too.

``PRANGE`` turns on only Numba's prange rewrite: with its other parallel rewrites on, np.zeros
and .sum() inside a kernel would enter the thread pool too, even on the plain path.
"""
PRANGE = dict(parallel=dict(prange=True, comprehension=False, setitem=False, reduction=False, numpy=False,
                            stencil=False, fusion=False, inplace_binop=False))
