"""Conv2d by im2col + one matrix product per image.

Forward (x: (N, C, H, W), weight W: (OC, C, KH, KW), bias b: (OC,)):

    cols = im2col(x)                       (N, C*KH*KW, OH*OW)
    out[n] = W2 @ cols[n] + b              W2 = W.reshape(OC, C*KH*KW); out: (N, OC, OH, OW)
    OH = (H + 2p - KH) // s + 1            (likewise OW)

Backward, from dout (N, OC, OH, OW) viewed as D[n]: (OC, OH*OW):

    dW2  = sum_n D[n] @ cols[n]^T          each weight meets every column it multiplied
    db   = sum over n, y, x of dout        the bias is added to every output pixel
    dcols[n] = W2^T @ D[n]                 the product rule for the matrix product
    dx   = col2im(dcols)                   im2col copied pixels; the adjoint of a copy is a sum
"""
import numpy as np

from nanotorch.kernels import col2im, im2col
from nanotorch.nn._checks import check_grad, check_input, pair
from nanotorch.nn.init import default_weight_and_bias
from nanotorch.nn.module import Module, Parameter


class Conv2d(Module):
    """2-D convolution (cross-correlation, as PyTorch); no groups, no dilation. x: (N, C, H, W) -> (N, OC, OH, OW)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(self, kernel_size, "kernel_size")
        self.stride, self.padding = pair(self, stride, "stride"), pair(self, padding, "padding")
        if min(self.in_channels, self.out_channels, *self.kernel_size, *self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"Conv2d: channels, kernel_size and stride must be >= 1 and padding >= 0, got "
                             f"in={in_channels} out={out_channels} k={kernel_size} s={stride} p={padding}")
        kh, kw = self.kernel_size
        w, b = default_weight_and_bias((out_channels, in_channels, kh, kw), in_channels * kh * kw, bias)
        self.weight = Parameter(w)
        self.bias = Parameter(b) if bias else None
        self.cache = None

    def output_shape(self, h, w):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def forward(self, x):
        check_input(self, x, (4,), self.in_channels)
        n, c, h, w = x.shape
        kh, kw = self.kernel_size
        oh, ow = self.output_shape(h, w)
        if oh < 1 or ow < 1:
            raise ValueError(f"Conv2d: input {h}x{w} with padding {self.padding} is smaller than the "
                             f"kernel {kh}x{kw}")
        cols = im2col(x, kh, kw, *self.stride, *self.padding, oh, ow)
        w2 = self.weight.data.reshape(self.out_channels, -1).astype(x.dtype, copy=False)
        out = np.matmul(w2, cols)                                   # (N, OC, OH*OW)
        if self.bias is not None:
            out += self.bias.data.astype(x.dtype, copy=False)[:, None]
        self.cache = (cols, x.shape)
        return out.reshape(n, self.out_channels, oh, ow)

    def backward(self, dout):
        cols, (n, c, h, w) = self._require_cache(self.cache)
        kh, kw = self.kernel_size
        oh, ow = self.output_shape(h, w)
        check_grad(self, dout, (n, self.out_channels, oh, ow))
        d = dout.reshape(n, self.out_channels, oh * ow)
        dw2 = np.matmul(d, cols.transpose(0, 2, 1)).sum(axis=0)    # (OC, C*KH*KW)
        self.weight.accumulate_grad(dw2.reshape(self.weight.shape))
        if self.bias is not None:
            self.bias.accumulate_grad(d.sum(axis=(0, 2)))
        w2 = self.weight.data.reshape(self.out_channels, -1).astype(dout.dtype, copy=False)
        dcols = np.matmul(w2.T, d)                                  # (N, C*KH*KW, OH*OW)
        return col2im(dcols, c, h, w, kh, kw, *self.stride, *self.padding, oh, ow)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")
