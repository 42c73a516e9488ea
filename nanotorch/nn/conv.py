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

Read the plain versions first: ``im2col_reference`` and ``col2im_reference`` at the end of
nanotorch/kernels/im2col.py (NumPy slicing, one slice per kernel offset), and
``conv3x3_same_reference`` in nanotorch/kernels/conv3x3.py for the direct kernel below. The
compiled kernels compute the same numbers; the tests check that they do.

For a 3x3 convolution with stride 1 and padding 1 (on planes at least 14 wide), the same four
results come from a direct convolution with no columns (nanotorch/kernels/conv3x3.py):
Z as nine shifted multiply-adds of the padded input, dx as the same convolution of D with W
transposed and flipped, dW as nine shifted dot products. Which one runs changes only the speed
(and, with an Inf or NaN on an image edge, how many gradient entries are NaN: see the kernel).
After ``nanotorch.set_num_threads(2)`` the direct kernels of large enough layers split their
work over two threads, with the same results, bit for bit (nanotorch/threads.py).

``input_requires_grad = False`` skips dx (the backward returns None), as PyTorch does for an
input that does not require grad: the first layer of a network, whose input is the data, has no
use for it (mnist.train sets it).

``forward_channels_first`` / ``backward_channels_first`` are the same steps with Z and D left in
their (OC, N, OH*OW) layout, for a fused layer that reads and writes that layout directly
(nanotorch/nn/fused.py).
"""
import numpy as np

from nanotorch.kernels import col2im, conv3x3_same, conv3x3_same_grad_weight, im2col, pad_planes
from nanotorch.nn._checks import check_device_and_dtype, check_grad, check_input, check_int, only_default, pair
from nanotorch.nn.init import default_weight_and_bias
from nanotorch.nn.module import Module, Parameter
from nanotorch.threads import parallel


class Conv2d(Module):
    """2-D convolution (cross-correlation, as PyTorch); no groups, no dilation. x: (N, C, H, W) -> (N, OC, OH, OW)."""

    # 3x3 convolutions with stride 1 and padding 1 on planes at least this wide run the direct kernel
    # (nanotorch/kernels/conv3x3.py) instead of im2col + GEMM; narrower rows do not vectorise.
    direct_min_width = 14

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        only_default(self, "dilation", pair(self, dilation, "dilation"), (1, 1))    # (PyTorch's argument order)
        only_default(self, "groups", groups, 1)
        only_default(self, "padding_mode", padding_mode, "zeros")
        dtype = check_device_and_dtype(self, device, dtype)
        self.in_channels = check_int(self, in_channels, "in_channels")
        self.out_channels = check_int(self, out_channels, "out_channels")
        self.kernel_size = pair(self, kernel_size, "kernel_size")
        self.stride = pair(self, stride, "stride")
        self.padding = self._padding_pair(padding) if isinstance(padding, str) else pair(self, padding, "padding")
        # (PyTorch keeps 'same' / 'valid' as given and prints it; here padding is the pair the kernels read)
        self._padding_name = (padding, self.padding) if isinstance(padding, str) else None
        if min(self.in_channels, self.out_channels, *self.kernel_size, *self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"Conv2d: channels, kernel_size and stride must be >= 1 and padding >= 0, got "
                             f"in={in_channels} out={out_channels} k={kernel_size} s={stride} p={padding}")
        kh, kw = self.kernel_size
        w, b = default_weight_and_bias((out_channels, in_channels, kh, kw), in_channels * kh * kw, bias)
        self.weight = Parameter(w)
        self.bias = Parameter(b) if bias else None
        self.input_requires_grad = True          # False: the backward adds dW (and db) and returns None
        if dtype is not None:
            self.to(dtype)

    def _padding_pair(self, padding):
        """PyTorch's padding='valid' (none) and 'same' (the output as large as the input: stride 1,
        k // 2 on each side of an odd kernel; an even one would need uneven padding, not implemented)."""
        if padding == "valid":
            return 0, 0
        if padding != "same":
            raise ValueError(f"Conv2d: padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
        if self.stride != (1, 1):
            raise ValueError(f"Conv2d: padding='same' is not supported for strided convolutions, as in PyTorch "
                             f"(got stride={self.stride})")
        if self.kernel_size[0] % 2 == 0 or self.kernel_size[1] % 2 == 0:
            raise NotImplementedError(f"Conv2d: padding='same' with an even kernel_size {self.kernel_size} pads "
                                      "unevenly, which is not implemented in nanotorch")
        return self.kernel_size[0] // 2, self.kernel_size[1] // 2

    def output_shape(self, h, w):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def _check(self, x):
        """Validate an input; returns the output's (OH, OW)."""
        check_input(self, x, (4,), self.in_channels, dtype=self.weight.data.dtype)
        oh, ow = self.output_shape(*x.shape[2:])
        if oh < 1 or ow < 1:
            raise ValueError(f"Conv2d: input {x.shape[2]}x{x.shape[3]} with padding {self.padding} is smaller "
                             f"than the kernel {self.kernel_size[0]}x{self.kernel_size[1]}")
        return oh, ow

    def forward(self, x):
        oh, ow = self._check(x)
        z = self.forward_channels_first(x)                          # (OC, N, OH*OW)
        return np.ascontiguousarray(z.transpose(1, 0, 2)).reshape(x.shape[0], self.out_channels, oh, ow)

    def backward(self, dout):
        """dout: (N, OC, OH, OW) -> dx: (N, C, H, W) (None if not input_requires_grad); adds dW, db."""
        _, (n, _, h, w), direct = self.saved_for_backward()
        check_grad(self, dout, (n, self.out_channels, *self.output_shape(h, w)), self.weight.data.dtype)
        dz = dout.reshape(n, self.out_channels, dout.shape[2] * dout.shape[3]).transpose(1, 0, 2)  # (OC, N, OH*OW): a view
        return self.backward_channels_first(dz)

    def uses_direct_kernel(self, x_shape):
        """Whether an input of this shape goes through the direct 3x3 kernel rather than im2col + GEMM."""
        return (self.kernel_size == (3, 3) and self.stride == (1, 1) and self.padding == (1, 1)
                and x_shape[3] >= self.direct_min_width)

    def forward_channels_first(self, x):
        """x: (N, C, H, W) -> Z: (OC, N, OH*OW), keeping the columns (or the padded input) for the backward."""
        n, c, h, w = x.shape
        weight = self.weight.data
        direct = self.uses_direct_kernel(x.shape)
        if direct:
            par = parallel(min(x.size, n * self.out_channels * h * w))   # spread over threads? (nanotorch/threads.py)
            inputs = pad_planes(x, par)                             # (N, C, (H+2)*(W+2) + 2)
            z = conv3x3_same(inputs, weight, h, w, True, par)       # (OC, N, H*W)
        else:
            oh, ow = self.output_shape(h, w)
            inputs = im2col(x, *self.kernel_size, *self.stride, *self.padding, oh, ow,   # (C*KH*KW, N*OH*OW)
                            parallel(x.size * 9))                    # by the size of the 3x3 path's columns
            z = (weight.reshape(self.out_channels, -1) @ inputs).reshape(self.out_channels, n, oh * ow)
        if self.bias is not None:
            z += self.bias.data[:, None, None]
        self.save_for_backward(inputs, x.shape, direct)
        return z

    def backward_channels_first(self, dz, padded=False):
        """dz: (OC, N, OH*OW) -> dx: (N, C, H, W); adds dW (and db) into the parameters' .grad.
        ``padded``: dz is already the direct kernel's padded planes, (N, OC, P) from pad_planes (no bias)."""
        inputs, (n, c, h, w), direct = self.saved_for_backward()
        if padded and (not direct or self.bias is not None):
            raise ValueError("Conv2d: a padded gradient needs the direct kernel and no bias")
        if self.bias is not None:
            self.bias.accumulate_grad(dz.reshape(self.out_channels, -1).sum(axis=1))
        if direct:
            par = parallel(min(n * self.out_channels * h * w, n * c * h * w))
            dzp = dz if padded else pad_planes(dz.reshape(self.out_channels, n, h, w), par, channels_first=True)
            self.weight.accumulate_grad(conv3x3_same_grad_weight(inputs, dzp, h, w, par))
            if not self.input_requires_grad:
                return None
            # the weight used transposed and flipped
            return conv3x3_same(dzp, self.weight.data, h, w, False, par, True).reshape(n, c, h, w)
        d = dz.reshape(self.out_channels, -1)
        # dW2 = D @ cols^T, computed as (cols @ D^T)^T with D^T copied contiguous: the same numbers,
        # in the orientation and layout that OpenBLAS runs fastest for these shapes.
        self.weight.accumulate_grad((inputs @ np.ascontiguousarray(d.T)).T.reshape(self.weight.shape))
        if not self.input_requires_grad:
            return None
        w2 = self.weight.data.reshape(self.out_channels, -1)
        oh, ow = self.output_shape(h, w)
        return col2im(w2.T @ d, n, c, h, w, *self.kernel_size, *self.stride, *self.padding, oh, ow,
                      overwrite_cols=True)                 # dcols is a temporary

    def extra_repr(self):
        """As PyTorch's: padding only if not zero (by its name if given by name), bias only if there is none."""
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self._padding_name is not None and self._padding_name[1] is self.padding:    # (not reassigned since)
            s += f", padding={self._padding_name[0]}"
        elif self.padding != (0, 0):
            s += f", padding={self.padding}"
        return s + (", bias=False" if self.bias is None else "")
