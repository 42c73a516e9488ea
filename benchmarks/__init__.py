"""Benchmarks (run from the repository root; results go to benchmarks/results/ by default):

    python -m benchmarks.conv_kernels [--quick] [--batch 4 128] [--threads N] [--out DIR] [--plot]
    python -m benchmarks.epoch [--steps 300] [--repeats 5] [--threads 2] [--quick] [--out DIR]

``conv_kernels`` times every convolution of the MNIST model under each implementation in its
registry (naive loops, nanotorch's Numba im2col, a NumPy stride-trick im2col, the nn.Conv2d layer,
PyTorch); ``epoch`` trains the seed recipe in nanotorch and in PyTorch on the same batches and
profiles nanotorch layer by layer. PyTorch is optional: without it only nanotorch is measured.
"""
