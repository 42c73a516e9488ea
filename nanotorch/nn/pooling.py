"""Pooling: MaxPool2d and AdaptiveAvgPool2d.

MaxPool2d:  out = max over each window; the max passes its gradient to the one input that won
            (d max / d x_i = 1 for the argmax, 0 for the rest). Where windows overlap, an input that
            wins several gets the sum of their gradients. Plain NumPy versions:
            maxpool2d_forward_reference / maxpool2d_backward_reference in nanotorch/kernels/pooling.py,
            beside the compiled kernels the layer runs. For kernel 2, stride 2 and no padding (every
            pooling of the MNIST model), the winner is kept as an int8 code 2 r + c of the pixel
            (2y + r, 2x + c), r, c in {0, 1}, in its window (the references name these offsets dy, dx;
            they are not gradients): maxpool2x2_reference / maxpool2x2_backward_reference.
            Output size, as PyTorch:  O = floor_or_ceil((H + 2p - k) / s) + 1, and with ceil_mode the
            last window must start inside the input or the left padding: if (O - 1) s >= H + p, O -= 1.

AdaptiveAvgPool2d(output_size):  out[i, j] = mean of x over rows [floor(i H / OH), ceil((i+1) H / OH))
            and the same for columns; each input in a window gets dout / (window area). When OH does not
            divide H the windows overlap (H = 5, OH = 3: rows [0, 2), [1, 4), [3, 5)), and an input in
            several windows gets the sum of their shares. As in PyTorch, None for OH (or OW) keeps
            the input's H (W), and 0 gives an empty output.
"""
import numpy as np

from nanotorch.grad_mode import is_grad_enabled
from nanotorch.threads import parallel
from nanotorch.kernels import (global_avg_pool, global_avg_pool_backward, maxpool2d_backward, maxpool2d_forward,
                               maxpool2x2_forward, maxpool2x2_max)
from nanotorch.nn._checks import check_grad, check_input, checked_arguments, is_int, only_default, pair
from nanotorch.nn.module import Module


def pool_output_size(size, k, s, p, ceil_mode):
    """PyTorch's pooling output length along one axis."""
    span = size + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


class MaxPool2d(Module):
    """x: (N, C, H, W) -> (N, C, OH, OW). The arguments are kept as given (an int or a pair), as
    PyTorch keeps them: ``MaxPool2d(2).kernel_size == 2``; ``_pairs()`` reads them as pairs."""
    _arguments = ("kernel_size", "stride", "padding", "dilation", "return_indices")

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.dilation, self.return_indices, self.ceil_mode = padding, dilation, return_indices, ceil_mode
        self._pairs()                           # refuses bad arguments now rather than at the first forward

    def _pairs(self):
        """(kernel_size, stride, padding), each as a pair of ints (h, w)."""
        return checked_arguments(self, self._check_pairs)

    def _check_pairs(self):
        dilation = pair(self, self.dilation, "dilation")
        if min(dilation) < 1:
            raise ValueError(f"MaxPool2d: dilation must be >= 1, got {self.dilation}")
        only_default(self, "dilation", dilation, (1, 1))
        only_default(self, "return_indices", self.return_indices, False)
        stride = self.kernel_size if self.stride is None else self.stride      # (None: PyTorch's default)
        k, s = pair(self, self.kernel_size, "kernel_size"), pair(self, stride, "stride")
        p = pair(self, self.padding, "padding")
        if min(*k, *s) < 1:
            raise ValueError(f"MaxPool2d: kernel_size and stride must be >= 1, got {self.kernel_size}, {self.stride}")
        if any(pad < 0 or pad > kk // 2 for pad, kk in zip(p, k)):
            raise ValueError(f"MaxPool2d: padding must be between 0 and half the kernel size, got {self.padding}")
        return k, s, p

    def output_shape(self, h, w):
        (kh, kw), (sh, sw), (ph, pw) = self._pairs()
        return pool_output_size(h, kh, sh, ph, self.ceil_mode), pool_output_size(w, kw, sw, pw, self.ceil_mode)

    def forward(self, x):
        check_input(self, x, (4,))
        if 0 in x.shape[1:]:          # (a padded window of an empty plane would read no pixel: PyTorch refuses it)
            raise ValueError(f"MaxPool2d expects an input with non-zero channels, height and width (only the batch "
                             f"may be empty), got shape {x.shape}")
        h, w = x.shape[2:]
        kernel, stride, padding = self._pairs()
        oh, ow = self.output_shape(h, w)
        if oh < 1 or ow < 1:
            raise ValueError(f"MaxPool2d: input {h}x{w} is smaller than the kernel {kernel} (padding {padding})")
        two_by_two = kernel == stride == (2, 2) and padding == (0, 0)
        if two_by_two and not is_grad_enabled():               # nothing to keep: the max alone
            self.save_for_backward()
            return maxpool2x2_max(x, oh, ow, parallel(x.size))
        if two_by_two:                                         # the common case, vectorised
            out, arg = maxpool2x2_forward(x, oh, ow, parallel(x.size))   # arg: which pixel of each window
        else:
            out, arg = maxpool2d_forward(x, *kernel, *stride, *padding, oh, ow)
        self.save_for_backward(arg, h, w, two_by_two)
        return out

    def backward(self, dout):
        arg, h, w, two_by_two = self.saved_for_backward()
        check_grad(self, dout, arg.shape)
        n, c = dout.shape[:2]
        return maxpool2d_backward(np.ascontiguousarray(dout), arg, h, w, parallel(n * c * h * w), two_by_two)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AdaptiveAvgPool2d(Module):
    """x: (N, C, H, W) -> (N, C, OH, OW); output_size 1 is global average pooling. output_size is
    kept as given (an int, or a pair of ints or None), as PyTorch keeps it; ``_output_hw()`` reads it
    as a pair, and ``_output_size(h, w)`` gives (OH, OW) for an input of H x W (None: that side's size)."""
    _arguments = ("output_size",)

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size
        self._output_hw()                       # refuses a bad size now rather than at the first forward

    def _output_hw(self):
        """output_size as a pair (OH, OW), each an int or None."""
        return checked_arguments(self, self._check_output_size)

    def _check_output_size(self):
        size = self.output_size
        sizes = size if isinstance(size, (tuple, list)) else (size, size)
        if len(sizes) != 2 or not all(s is None or is_int(s) for s in sizes) or size is None:
            bools = " (a bool is not taken for an int)" if any(isinstance(s, (bool, np.bool_)) for s in sizes) else ""
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be an int, or a pair of ints or None (None keeps "
                             f"the input's size), got {size!r}{bools}")
        if any(s is not None and s < 0 for s in sizes):   # any size >= 0 works, also larger than the input
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be >= 0, got {size}")
        return tuple(None if s is None else int(s) for s in sizes)

    def _output_size(self, h, w):
        oh, ow = self._output_hw()
        return h if oh is None else oh, w if ow is None else ow

    def _windows(self, size, out):
        return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]

    def forward(self, x):
        check_input(self, x, (4,))
        n, c, h, w = x.shape
        if h < 1 or w < 1:
            raise ValueError(f"AdaptiveAvgPool2d: expected an input of at least 1x1 pixels, got shape {x.shape}")
        oh, ow = self._output_size(h, w)
        if (oh, ow) == (1, 1):
            out = global_avg_pool(x)                                    # one compiled loop (kernels/pooling.py)
        else:
            out = np.empty((n, c, oh, ow), dtype=x.dtype)
            for i, (r0, r1) in enumerate(self._windows(h, oh)):
                for j, (c0, c1) in enumerate(self._windows(w, ow)):
                    out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
        self.save_for_backward(x.shape, (oh, ow))
        return out

    def backward(self, dout):
        (n, c, h, w), (oh, ow) = self.saved_for_backward()
        check_grad(self, dout, (n, c, oh, ow))
        if (oh, ow) == (1, 1):
            return global_avg_pool_backward(dout, h, w)                # every pixel gets an equal share
        dx = np.zeros((n, c, h, w), dtype=dout.dtype)
        for i, (r0, r1) in enumerate(self._windows(h, oh)):
            for j, (c0, c1) in enumerate(self._windows(w, ow)):
                dx[:, :, r0:r1, c0:c1] += dout[:, :, i:i + 1, j:j + 1] / ((r1 - r0) * (c1 - c0))
        return dx

    def extra_repr(self):
        return f"output_size={self.output_size}"
