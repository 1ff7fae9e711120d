"""Building blocks shared by the architectures (kept here so each model module stays short)."""

from __future__ import annotations

import math

from torch import nn


class SeparableConv2d(nn.Module):
    """Depthwise k x k convolution followed by a pointwise 1 x 1 one (Xception's basic unit)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 bias: bool = False) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_ch, in_ch, kernel_size, stride, kernel_size // 2, groups=in_ch,
                                   bias=False)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=bias)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


def init_weights(module: nn.Module) -> None:
    """He-normal (fan-out) convolutions and unit/zero batch norms, as the reference Xception does.

    The reference draws every `Conv2d` weight from N(0, 2 / (k*k*out_channels)), which is PyTorch's
    kaiming_normal_ in fan-out mode; transposed convolutions keep PyTorch's default init.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
