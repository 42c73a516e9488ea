"""ConvBNGELU: Conv2d -> BatchNorm2d -> GELU with BatchNorm and GELU fused into one compiled pass.

It *is* ``Sequential(Conv2d, BatchNorm2d, GELU)`` — same children, parameters, state_dict keys
(``0.weight``, ``1.running_mean``, ...) and numbers up to float rounding (the fused pass sums the
batch statistics in float64; tests/test_fused.py checks it against the
three layers run one by one) — but it does not materialise BatchNorm's output or GELU's input:

    forward:   z = conv.forward_channels_first(x);  a, xhat, d, inv_std = bn_gelu_forward(z, running stats, ...)
               (u = gamma * xhat + beta is BatchNorm's output, a = GELU(u), and d = GELU'(u) is kept for the backward)
               (the batch's mean and var computed, and the running statistics updated, in the same call)
    backward:  dz = bn_gelu_backward(da, xhat, d, inv_std, ...)  (adding dgamma, dbeta into the grads);
               dx = conv's backward of dz
               (for the direct 3x3 kernel with no bias, dz comes out already in its zero-bordered planes)

z and dz stay in the (C, N, H*W) layout of the convolution's matrix product; the fused loops read
and write across the two layouts, so the block never copies a transpose.

The maths is BatchNorm2d's and GELU's (nanotorch/nn/batchnorm.py, activation.py); the fused
loops are in nanotorch/kernels/batchnorm_gelu.py. They compute exact GELU after an affine BatchNorm
in the block's own mode; if the children no longer fit that (``block[2].approximate = 'tanh'``,
an affine=False BatchNorm put in, ``block[1].eval()`` alone) or a child has a hook (nn/hooks.py),
the block runs them one by one, as the Sequential it is (and a child refuses what nanotorch does
not implement: ``block[1].track_running_stats = False``).

In evaluation under no_grad, a block whose convolution is a 3x3 "same" one with at least 8 input
channels also takes a MaxPool2d(2) that follows it in a Sequential into the same pass
(``forward_with_next``) where a Winograd kernel fits (``winograd_pooled_kind``): on the planes
where Conv2d itself runs Winograd (even sides, the direct kernel's width), conv3x3_winograd_pooled
in nanotorch/kernels/winograd.py; on narrower planes, odd sides included, and batches of at least
half a vector of images, conv3x3_winograd_pooled_small in winograd_small.py.
"""
import numpy as np

from nanotorch.grad_mode import is_grad_enabled
from nanotorch.kernels.batchnorm_gelu import bn_gelu_backward, bn_gelu_forward, bn_gelu_inference
from nanotorch.kernels.winograd import all_finite, conv3x3_winograd_bn_gelu, conv3x3_winograd_pooled, winograd_weights
from nanotorch.kernels.simd import VECTOR_BYTES
from nanotorch.kernels.winograd_small import conv3x3_winograd_pooled_small
from nanotorch.nn._checks import check_grad
from nanotorch.nn.activation import GELU
from nanotorch.nn.batchnorm import BatchNorm2d
from nanotorch.nn.conv import Conv2d
from nanotorch.nn.container import Sequential
from nanotorch.nn.module import NotRun
from nanotorch.nn.pooling import MaxPool2d
from nanotorch.threads import parallel, threads_for


_FUSED = NotRun("the last forward ran its ConvBNGELU fused, which computes this layer's output without running "
                "it, so it has nothing from that pass to back up. Call the block's backward; or, to run and watch "
                "the children one by one, register a hook on the child (nanotorch/nn/hooks.py) before the forward")


def winograd_pooled_kind(conv, x_shape):
    """Which pooled Winograd pass a block with this Conv2d takes for an input of this shape, under
    no_grad, with a MaxPool2d(2) after it: "planes" where the conv itself runs Winograd (even sides,
    kernels/winograd.py), "images" for 3x3 "same" convolutions with as many input channels on
    planes narrower than the direct kernel's (odd sides included, kernels/winograd_small.py) and a
    batch of at least half a vector of images (its groups compute a whole vector of images: one
    image on its own took twice the separate layers' time, eight of 16 float32 lanes 0.86 of it);
    None for the others."""
    if conv.uses_winograd(x_shape):               # (even sides: 2x2 windows tile them, whatever ceil_mode)
        return "planes"
    if (not is_grad_enabled() and conv.geometry() == ((3, 3), (1, 1), (1, 1))
            and x_shape[1] >= conv.winograd_min_channels and not conv.uses_direct_kernel(x_shape)
            and 2 * x_shape[0] * conv.weight.data.itemsize >= VECTOR_BYTES):
        return "images"
    return None


class ConvBNGELU(Sequential):
    """x: (N, C_in, H, W) -> (N, C_out, OH, OW). Arguments as Conv2d's; the conv has no bias by
    default, since BatchNorm subtracts the channel mean right after it."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=False):
        super().__init__(Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias),
                         BatchNorm2d(out_channels), GELU())

    def uses_fused_kernels(self):
        """Whether the fused kernels compute what the children would: a Conv2d, then an affine BatchNorm2d
        of its channels, of its dtype, in the block's mode, then exact GELU (a subclass may compute something else);
        and no child has a hook, which would need the child's own forward or backward to run (hooks.py)."""
        if len(self._modules) != 3:               # (runs every forward, so it reads _modules directly)
            return False
        conv, bn, act = self._modules.values()
        return (type(conv) is Conv2d and type(bn) is BatchNorm2d and type(act) is GELU
                and act.approximate == "none" and bn.training == self.training
                and bn.weight is not None and bn.bias is not None and bn.num_features == conv.out_channels
                and bn.weight.data.dtype == conv.weight.data.dtype and bn.keeps_running_stats()
                and not (conv._hooked or bn._hooked or act._hooked))

    def forward(self, x):
        if not self.uses_fused_kernels():
            self.save_for_backward(None)          # the children keep their own caches
            return super().forward(x)
        conv, bn, act = self
        oh, ow = conv._check(x)
        n, c = x.shape[0], conv.out_channels
        if self.training and n * oh * ow < 2:
            if n * oh * ow == 0:                  # an empty batch: the children's way (BatchNorm2d counts it)
                self.save_for_backward(None)
                return super().forward(x)
            raise ValueError(f"ConvBNGELU: expected more than 1 value per channel when training, got input {x.shape}")
        eps = bn.checked_eps()
        par = parallel(n * c * oh * ow)                           # spread over threads? (nanotorch/threads.py)
        gamma, beta = bn.weight.data, bn.bias.data
        bn.__dict__["cache"] = act.__dict__["cache"] = _FUSED     # (their caches would be an older pass's)
        if not self.training and not is_grad_enabled():
            self.save_for_backward()                  # keeps nothing (no_grad): a backward now is an error
            return self._inference(x, gamma, beta, eps, par).reshape(n, c, oh, ow)
        z = conv.forward_channels_first(x)                                       # (C, N, L)
        momentum = bn._count_batch() if self.training else 0.0    # the kernel updates the running statistics
        a, xhat, d, inv_std = bn_gelu_forward(z, bn.running_mean, bn.running_var, gamma, beta, self.training,
                                              momentum, eps, par)
        self.save_for_backward(xhat, d, inv_std, self.training, (n, c, oh, ow))
        return a.reshape(n, c, oh, ow)

    def _inference(self, x, gamma, beta, eps, par):
        """Evaluation under no_grad, keeping nothing: BatchNorm folds into a = GELU(scale * z + shift),
        and GELU without its derivative has a cheaper formula (kernels/gelu.py: gelu_fast). Where the
        convolution runs Winograd, the whole block is one pass, which never writes z
        (kernels/winograd.py: conv3x3_winograd_bn_gelu; with the direct kernel, such a pass was no
        faster: docs/performance.md)."""
        conv = self[0]
        scale, shift = self._folded(x.dtype, eps)
        if not conv.uses_winograd(x.shape) or conv.weight.data.shape[2:] != (3, 3):
            return bn_gelu_inference(conv.forward_channels_first(x), scale, shift, par)
        conv.save_for_backward()                  # keeps nothing (no_grad)
        scale, shift = self._with_bias(scale, shift, x.dtype)
        return conv3x3_winograd_bn_gelu(np.ascontiguousarray(x), winograd_weights(conv.weight.data), conv.out_channels,
                                        scale, shift, threads_for(conv._spread_size(x.shape)))

    def _folded(self, dtype, eps):
        """Evaluation's BatchNorm as one multiply-add a channel, u = scale * z + shift."""
        _, bn, _ = self
        scale = bn.weight.data * (1.0 / np.sqrt(bn.running_var + dtype.type(eps)))   # as BatchNorm2d
        return scale, bn.bias.data - bn.running_mean * scale

    def _with_bias(self, scale, shift, dtype):
        """For a kernel that computes the convolution without its bias: the folded scale and shift
        with a conv bias folded in too, GELU(scale * (z + bias) + shift), of the input's dtype."""
        if self[0].bias is not None:
            shift = shift + scale * self[0].bias.data
        return scale.astype(dtype, copy=False), shift.astype(dtype, copy=False)

    def forward_with_next(self, x, layer):
        """Evaluation under no_grad, with a MaxPool2d(2) after the block: the block and the pooling
        in one pass where the convolution is a 3x3 "same" one with at least winograd_min_channels
        inputs: Winograd with a plane's tiles in the vector lanes where Conv2d itself runs Winograd
        (kernels/winograd.py: conv3x3_winograd_pooled), with the images in the lanes on planes
        narrower than the direct kernel's (kernels/winograd_small.py, which also pools an odd
        side's last row with ceil_mode). Both compute two GELUs a window rather than four and
        never write the block's full-size output. None otherwise (winograd_pooled_kind), and the
        two run as they are: so also for an input, weight or BatchNorm statistic with a NaN or an
        Inf (the pass is for finite values). The numbers are the two layers' up to rounding.
        (Sequential calls this: Module.forward_with_next.)"""
        if (type(layer) is not MaxPool2d or type(self).forward is not ConvBNGELU.forward or self.training
                or is_grad_enabled() or self._hooked or layer._hooked or not self.uses_fused_kernels()):
            return None
        conv, bn, act = self
        oh, ow = conv._check(x)                   # (the error the block itself would raise for a bad x)
        if layer._pairs() != ((2, 2), (2, 2), (0, 0)) or conv.weight.data.shape[2:] != (3, 3):
            return None
        pooled_h, pooled_w = layer.output_shape(oh, ow)
        kind = winograd_pooled_kind(conv, x.shape)
        if kind is None or min(pooled_h, pooled_w) < 1:          # (an empty pooling: the layer's own error)
            return None
        x = np.ascontiguousarray(x)
        scale, shift = self._with_bias(*self._folded(x.dtype, bn.checked_eps()), x.dtype)
        u = winograd_weights(conv.weight.data)
        # a NaN must win its windows, as in the pooling layer (and an Inf weight or statistic makes NaNs)
        if not (all_finite(x) and all_finite(u) and all_finite(scale) and all_finite(shift)):
            return None
        bn.__dict__["cache"] = act.__dict__["cache"] = _FUSED
        for m in (conv, self, layer):             # keeps nothing (no_grad): a backward now is an error
            m.save_for_backward()
        n, c, threads = x.shape[0], conv.out_channels, threads_for(conv._spread_size(x.shape))
        if kind == "planes":
            a = conv3x3_winograd_pooled(x, u, c, scale, shift, threads)
        else:
            a = conv3x3_winograd_pooled_small(x, u, c, scale, shift, pooled_h, pooled_w, threads)
        return a.reshape(n, c, pooled_h, pooled_w)

    def backward(self, da):
        if self.saved_for_backward()[0] is None:  # the forward ran the children one by one
            return super().backward(da)
        conv, bn, _ = self
        xhat, d, inv_std, training, shape = self.saved_for_backward()
        check_grad(self, da, shape, conv.weight.data.dtype)
        n, c, h, w = shape
        padded = conv.saved_for_backward()[2] and conv.bias is None   # the direct kernel's backward reads dz padded
        dz = bn_gelu_backward(np.ascontiguousarray(da).reshape(n, c, h * w), xhat, d, inv_std,
                              bn.weight.data, training,
                              bn.weight.grad_to_accumulate(), bn.bias.grad_to_accumulate(), parallel(da.size),
                              w if padded else 0)
        return conv.backward_channels_first(dz, padded)
