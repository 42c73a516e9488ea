"""Conv2d by im2col + one matrix product for the whole batch.

Forward (x: (N, C, H, W), weight W: (OC, C, KH, KW), bias b: (OC,)):

    cols = im2col(x)                       (C*KH*KW, N*OH*OW): one column per output pixel
    Z    = W2 @ cols + b                   W2 = W.reshape(OC, C*KH*KW); Z: (OC, N*OH*OW)
    out  = Z.reshape(OC, N, OH, OW) with its first two axes swapped: (N, OC, OH, OW)
                                           OH = (H + 2p - KH) // s + 1  (likewise OW)

Backward, from dout (N, OC, OH, OW) laid out as D: (OC, N*OH*OW) like Z:

    dW2   = D @ cols^T                     each weight meets every column it multiplied
    dW    = dW2.reshape(OC, C, KH, KW)
    db    = D summed over its columns      the bias is added to every output pixel
    dcols = W2^T @ D                       Z is linear in cols: the gradient flows back through W2^T
    dx    = col2im(dcols)                  im2col copied pixels; the adjoint of a copy is a sum

The products are nanotorch/kernels/gemm.py's ``product``: its own ``matmul`` on products of the
size of the MNIST model's 7x7 and 4x4 layers, where a BLAS is slower, and NumPy's ``@`` on the
others (the same sums, rounded in another order).

Read the plain versions first: ``im2col_reference`` and ``col2im_reference`` at the end of
nanotorch/kernels/im2col.py (NumPy slicing, one slice per kernel offset), and
``conv3x3_same_reference`` in nanotorch/kernels/conv3x3.py for the direct kernel below. The
compiled kernels compute the same numbers; the tests check that they do.

For a 3x3 convolution with stride 1 and padding 1 (on planes at least 14 wide), Z, dx and dW
come from a direct convolution with no columns instead (db is the same sum over D either way;
nanotorch/kernels/conv3x3.py):
Z as nine shifted multiply-adds of the padded input, dx as the same convolution of D with W
transposed and flipped, dW as nine shifted dot products. Which one runs changes only the speed
(and, with an Inf or NaN on an image edge, how many gradient entries are NaN: see the kernel).
Where nothing needs a backward (under ``nanotorch.no_grad()``), such a convolution with at least
8 input channels on planes with even sides runs Winograd F(2x2, 3x3) instead: the same output with
2.25x fewer multiplications, and different rounding (nanotorch/kernels/winograd.py), as PyTorch's
backends also pick their algorithm by shape. After ``nanotorch.set_num_threads(2)`` the direct
kernels of large enough layers split their work over two threads, with the same results, bit for
bit (nanotorch/threads.py).

``input_requires_grad = False`` skips dx (the backward returns None), as PyTorch does for an
input that does not require grad: the first layer of a network, whose input is the data, has no
use for it (mnist.train sets it).

``forward_channels_first`` / ``backward_channels_first`` are the same steps with Z and D left in
their (OC, N, OH*OW) layout, for a fused layer that reads and writes that layout directly
(nanotorch/nn/fused.py).
"""
import numpy as np

from nanotorch.grad_mode import is_grad_enabled
from nanotorch.kernels import (col2im, conv3x3_same, conv3x3_same_grad_weight, conv3x3_winograd, im2col, pad_planes,
                               winograd_weights)
from nanotorch.kernels.gemm import MULTIPLY_ADDS_PER_VALUE, product
from nanotorch.nn._checks import (check_device_and_dtype, check_grad, check_input, check_int, checked_arguments,
                                  only_default, pair)
from nanotorch.nn.init import default_weight_and_bias
from nanotorch.nn.module import Module, Parameter
from nanotorch.threads import parallel, threads_for


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")     # PyTorch's (nanotorch implements "zeros")


class Conv2d(Module):
    """2-D convolution (cross-correlation, as PyTorch); no groups, no dilation. x: (N, C, H, W) -> (N, OC, OH, OW).

    The arguments are kept as PyTorch keeps them (pairs, and padding='same' or 'valid' by name) and
    read when used: ``geometry()`` gives the kernel size, stride and padding as pairs of ints.
    """
    _arguments = ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")

    # 3x3 convolutions with stride 1 and padding 1 on planes at least this wide run the direct kernel
    # (nanotorch/kernels/conv3x3.py) instead of im2col + GEMM; narrower rows do not vectorise.
    direct_min_width = 14
    # Under no_grad, those with at least this many input channels and even sides run Winograd F(2x2, 3x3)
    # (nanotorch/kernels/winograd.py); with fewer, its transforms cost about what its products save.
    winograd_min_channels = 8

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        dtype = check_device_and_dtype(self, device, dtype)
        self.in_channels = check_int(self, in_channels, "in_channels")
        self.out_channels = check_int(self, out_channels, "out_channels")
        if min(self.in_channels, self.out_channels) < 1:
            raise ValueError(f"Conv2d: in_channels and out_channels must be >= 1, "
                             f"got in={in_channels} out={out_channels}")
        self.kernel_size = pair(self, kernel_size, "kernel_size")
        self.stride = pair(self, stride, "stride")
        self.padding = padding if isinstance(padding, str) else pair(self, padding, "padding")
        self.dilation, self.groups, self.padding_mode = pair(self, dilation, "dilation"), groups, padding_mode
        self.geometry()                          # refuses bad arguments now rather than at the first forward
        kh, kw = self.kernel_size
        w, b = default_weight_and_bias((out_channels, in_channels, kh, kw), in_channels * kh * kw, bias)
        self.weight = Parameter(w)
        self.bias = Parameter(b) if bias else None
        self.input_requires_grad = True          # False: the backward adds dW (and db) and returns None
        if dtype is not None:
            self.to(dtype)

    def geometry(self):
        """(kernel_size, stride, padding), each a pair of ints (h, w), from the arguments as they are now."""
        return checked_arguments(self, self._check_geometry)

    def _check_geometry(self):
        # what PyTorch refuses is a ValueError first; what it takes but nanotorch does not implement, after
        dilation, groups = pair(self, self.dilation, "dilation"), check_int(self, self.groups, "groups")
        if min(dilation) < 1:
            raise ValueError(f"Conv2d: dilation must be >= 1, got {self.dilation}")
        if groups < 1 or self.in_channels % groups or self.out_channels % groups:
            raise ValueError(f"Conv2d: groups must be a positive int that divides in_channels ({self.in_channels}) "
                             f"and out_channels ({self.out_channels}), got {groups}")
        if not isinstance(self.padding_mode, str) or self.padding_mode not in PADDING_MODES:
            raise ValueError(f"Conv2d: padding_mode must be 'zeros', 'reflect', 'replicate' or 'circular', "
                             f"got {self.padding_mode!r}")
        only_default(self, "dilation", dilation, (1, 1))
        only_default(self, "groups", groups, 1)
        only_default(self, "padding_mode", self.padding_mode, "zeros")
        k, s = pair(self, self.kernel_size, "kernel_size"), pair(self, self.stride, "stride")
        if min(*k, *s) < 1:
            raise ValueError(f"Conv2d: kernel_size and stride must be >= 1, got {self.kernel_size}, {self.stride}")
        p = self._padding_pair(k, s) if isinstance(self.padding, str) else pair(self, self.padding, "padding")
        if min(p) < 0:
            raise ValueError(f"Conv2d: padding must be >= 0, got {self.padding}")
        return k, s, p

    def _padding_pair(self, k, s):
        """PyTorch's padding='valid' (none) and 'same' (the output as large as the input: stride 1,
        k // 2 on each side of an odd kernel; an even one would need uneven padding, not implemented)."""
        if self.padding == "valid":
            return 0, 0
        if self.padding != "same":
            raise ValueError(f"Conv2d: padding must be an int, a pair of ints, 'valid' or 'same', "
                             f"got {self.padding!r}")
        if s != (1, 1):
            raise ValueError(f"Conv2d: padding='same' is not supported for strided convolutions, as in PyTorch "
                             f"(got stride={self.stride})")
        if k[0] % 2 == 0 or k[1] % 2 == 0:
            raise NotImplementedError(f"Conv2d: padding='same' with an even kernel_size {self.kernel_size} pads "
                                      "unevenly, which is not implemented in nanotorch")
        return k[0] // 2, k[1] // 2

    def output_shape(self, h, w):
        return _output_shape(h, w, *self.geometry())

    def _check(self, x):
        """Validate an input; returns the output's (OH, OW)."""
        check_input(self, x, (4,), self.in_channels, dtype=self.weight.data.dtype)
        if x.shape[0] > 0 and 0 in x.shape[2:]:        # (its padding alone would convolve to the bias: PyTorch refuses)
            raise ValueError(f"Conv2d expects an input of at least 1x1 pixels (only the batch may be empty), "
                             f"got shape {x.shape}")
        oh, ow = self.output_shape(*x.shape[2:])
        if oh < 1 or ow < 1:
            (kh, kw), _, padding = self.geometry()
            raise ValueError(f"Conv2d: input {x.shape[2]}x{x.shape[3]} with padding {padding} is smaller "
                             f"than the kernel {kh}x{kw}")
        return oh, ow

    def forward(self, x):
        oh, ow = self._check(x)
        z = self.forward_channels_first(x)                          # (OC, N, OH*OW)
        return np.ascontiguousarray(z.transpose(1, 0, 2)).reshape(x.shape[0], self.out_channels, oh, ow)

    def backward(self, dout):
        """dout: (N, OC, OH, OW) -> dx: (N, C, H, W) (None if not input_requires_grad); adds dW, db."""
        _, (n, _, h, w), _, geometry = self.saved_for_backward()
        check_grad(self, dout, (n, self.out_channels, *_output_shape(h, w, *geometry)), self.weight.data.dtype)
        dz = dout.reshape(n, self.out_channels, dout.shape[2] * dout.shape[3]).transpose(1, 0, 2)  # (OC, N, OH*OW): a view
        return self.backward_channels_first(dz)

    def uses_direct_kernel(self, x_shape, geometry=None):
        """Whether an input of this shape goes through the direct 3x3 kernel rather than im2col + GEMM."""
        return (geometry or self.geometry()) == ((3, 3), (1, 1), (1, 1)) and x_shape[3] >= self.direct_min_width

    def uses_winograd(self, x_shape, geometry=None):
        """Whether an input of this shape goes through Winograd F(2x2, 3x3): the direct kernel's
        convolutions, when nothing needs the backward (no_grad), with enough input channels, on
        planes with even sides."""
        return (not is_grad_enabled() and x_shape[1] >= self.winograd_min_channels and x_shape[2] % 2 == 0
                and x_shape[3] % 2 == 0 and self.uses_direct_kernel(x_shape, geometry))

    def _spread_size(self, x_shape):
        """The size by which the direct and Winograd kernels decide whether to spread over threads
        (nanotorch/threads.py: parallel, threads_for): the smaller of the input and the output, so
        that the 1 -> 4 channel layer stays on one thread."""
        n, c, h, w = x_shape
        return n * min(c, self.out_channels) * h * w

    def _spreads_product(self, pixels):
        """Whether im2col's matrix products (out_channels x in_channels*KH*KW x pixels multiply-adds)
        spread over threads (kernels/gemm.py)."""
        return parallel(self.weight.data.size * pixels // MULTIPLY_ADDS_PER_VALUE)

    def forward_channels_first(self, x):
        """x: (N, C, H, W) -> Z: (OC, N, OH*OW), keeping the columns (or the padded input) for the backward."""
        n, c, h, w = x.shape
        weight = self.weight.data
        geometry = self.geometry()
        if weight.shape[2:] != geometry[0]:          # (PyTorch's convolution takes its size from the weight)
            raise ValueError(f"Conv2d: kernel_size {self.kernel_size} does not match the weight's "
                             f"{weight.shape[2:]}")
        direct = self.uses_direct_kernel(x.shape, geometry)
        if direct and self.uses_winograd(x.shape, geometry):
            inputs = None                                           # (no_grad: nothing is kept)
            z = conv3x3_winograd(np.ascontiguousarray(x), winograd_weights(weight), self.out_channels,
                                 threads_for(self._spread_size(x.shape)))
        elif direct:
            par = parallel(self._spread_size(x.shape))              # spread over threads? (nanotorch/threads.py)
            inputs = pad_planes(x, par)                             # (N, C, (H+2)*(W+2) + TAIL)
            z = conv3x3_same(inputs, weight, h, w, True, par)       # (OC, N, H*W)
        else:
            oh, ow = _output_shape(h, w, *geometry)
            inputs = im2col(x, *geometry[0], *geometry[1], *geometry[2], oh, ow,     # (C*KH*KW, N*OH*OW)
                            parallel(x.size * 9))                    # by the size of the 3x3 path's columns
            z = product(weight.reshape(self.out_channels, -1), inputs,
                        self._spreads_product(n * oh * ow)).reshape(self.out_channels, n, oh * ow)
        if self.bias is not None:
            z += self.bias.data[:, None, None]
        self.save_for_backward(inputs, x.shape, direct, geometry)
        return z

    def backward_channels_first(self, dz, padded=False):
        """dz: (OC, N, OH*OW) -> dx: (N, C, H, W); adds dW (and db) into the parameters' .grad.
        ``padded``: dz is already the direct kernel's padded planes, (N, OC, P) from pad_planes (no bias)."""
        inputs, (n, c, h, w), direct, geometry = self.saved_for_backward()
        if padded and (not direct or self.bias is not None):
            raise ValueError("Conv2d: a padded gradient needs the direct kernel and no bias")
        if self.bias is not None:
            self.bias.accumulate_grad(dz.reshape(self.out_channels, -1).sum(axis=1))
        if direct:
            par = parallel(self._spread_size((n, c, h, w)))
            dzp = dz if padded else pad_planes(dz.reshape(self.out_channels, n, h, w), par, channels_first=True)
            self.weight.accumulate_grad(conv3x3_same_grad_weight(inputs, dzp, h, w, par))
            if not self.input_requires_grad:
                return None
            # the weight used transposed and flipped
            return conv3x3_same(dzp, self.weight.data, h, w, False, par, True).reshape(n, c, h, w)
        d = dz.reshape(self.out_channels, -1)
        par = self._spreads_product(d.shape[1])
        # dW2 = D @ cols^T, computed as (cols @ D^T)^T with D^T copied contiguous: the product's
        # columns are then the 24 or 28 output channels rather than the 196 or 64 pixels, whose
        # sums would end in adding up the lanes of each vector (kernels/gemm.py)
        self.weight.accumulate_grad(product(inputs, np.ascontiguousarray(d.T), par).T.reshape(self.weight.shape))
        if not self.input_requires_grad:
            return None
        w2 = self.weight.data.reshape(self.out_channels, -1)
        (kh, kw), (sh, sw), (ph, pw) = geometry
        return col2im(product(w2.T, d, par), n, c, h, w, kh, kw, sh, sw, ph, pw, *_output_shape(h, w, *geometry),
                      overwrite_cols=True)                 # dcols is a temporary

    def extra_repr(self):
        """As PyTorch's: padding only if not zero (or given by name), bias only if there is none."""
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        return s + (", bias=False" if self.bias is None else "")


def _output_shape(h, w, kernel_size, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
