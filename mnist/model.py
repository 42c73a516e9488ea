"""The seed network: seven 3x3 convolutions (1 -> 4 -> 8 -> 12 -> 16 -> 20 -> 24 -> 28 channels), each
followed by BatchNorm and GELU; max pooling 28 -> 14 -> 7 -> 4 -> 2; global average pooling; a head
28 -> 56 -> 10 with dropout 0.15. Under 25,000 parameters.

    input            (N,  1, 28, 28)
    block1..block4   (N, 16, 28, 28)   four convolutions at full resolution
    pool1            (N, 16, 14, 14)
    block5, pool2    (N, 20,  7,  7)
    block6, pool3    (N, 24,  4,  4)   ceil_mode: 7 -> 4 keeps the last row and column
    block7, pool4    (N, 28,  2,  2)
    gap, flatten     (N, 28)
    head             (N, 10)           Linear 28 -> 56, GELU, Dropout, Linear 56 -> 10

The convolutions have no bias: the BatchNorm after each subtracts the channel mean, which would
cancel any bias exactly (its gradient is zero), and BatchNorm's own shift plays its role.

Each block is ``nn.ConvBNGELU``: the three layers Conv2d, BatchNorm2d and GELU, with BatchNorm
and GELU run as one compiled pass (same parameters and keys as running them in turn, and the same
numbers up to rounding).
"""
from nanotorch import nn

CHANNELS = (1, 4, 8, 12, 16, 20, 24, 28)


def ConvBlock(in_channels, out_channels):
    """conv 3x3 (padding 1, no bias) -> BatchNorm2d -> GELU: (N, C_in, H, W) -> (N, C_out, H, W)."""
    return nn.ConvBNGELU(in_channels, out_channels, 3, padding=1)


def build_model(dropout=0.15):
    """The seed network as an nn.Sequential; state_dict keys match the same torch.nn.Sequential."""
    c = CHANNELS
    return nn.Sequential(
        ConvBlock(c[0], c[1]), ConvBlock(c[1], c[2]), ConvBlock(c[2], c[3]), ConvBlock(c[3], c[4]),
        nn.MaxPool2d(2),                                   # 28 -> 14
        ConvBlock(c[4], c[5]), nn.MaxPool2d(2),            # 14 -> 7
        ConvBlock(c[5], c[6]), nn.MaxPool2d(2, ceil_mode=True),   # 7 -> 4
        ConvBlock(c[6], c[7]), nn.MaxPool2d(2),            # 4 -> 2
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),             # (N, 28)
        nn.Linear(c[7], 2 * c[7]), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * c[7], 10),
    )


def count_parameters(model):
    return sum(p.data.size for p in model.parameters())
