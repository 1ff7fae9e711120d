"""A small multi-task network for CPU federated runs at 64 px (same shape of idea as the reference).

Encoder: strided 3x3 conv-BN-ReLU stages 3->16->32->64 with a residual 3x3 block at the last two,
stride 8, a 64 x S/8 x S/8 representation. Decoders: a 1x1 reduction, two x2 transposed-conv
upsamplings with a 3x3 conv between them (to half resolution), a 4-channel skip branch from the
representation, bilinearly upsampled and concatenated before the last 3x3 conv (the reference
decoder's layout), and a final bilinear x2 upsampling of the prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch convention)
from torch import Tensor, nn

from mas_flower.models.layers import init_weights
from mas_flower.models.multitask import MultiTaskNet, assemble
from mas_flower.models.registry import register_model

STRIDE = 8
REP_CHANNELS = 64


def _cbr(in_ch: int, out_ch: int, k: int = 3, stride: int = 1, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, k, stride, k // 2, bias=False),
                               nn.BatchNorm2d(out_ch)]
    return [*layers, nn.ReLU(inplace=True)] if relu else layers


class ResidualBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_cbr(ch, ch), *_cbr(ch, ch, relu=False))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + x)


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.Sequential(
            *_cbr(3, 16, stride=2),
            *_cbr(16, 32, stride=2), ResidualBlock(32),
            *_cbr(32, REP_CHANNELS, stride=2), ResidualBlock(REP_CHANNELS),
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(x)


def _up(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(in_ch, out_ch, 2, 2), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class TinyDecoder(nn.Module):
    """Representation (B, 64, h, w) at `rep_stride` 8 (or 4: `tiny-fine`) to (B, out_channels, 8h, 8w)
    (or 4h, 4w). At stride 4 the first x2 upsampling is left out; the layers are otherwise the same.

    The decoder works up to half resolution and upsamples its output bilinearly: on a CPU every
    full-resolution feature map (and its batch norm, ReLU and concatenation) costs more than the
    convolutions themselves, and at 64 px the lost detail is a pixel.
    """

    def __init__(self, out_channels: int, skip_channels: int = 4, rep_stride: int = STRIDE) -> None:
        super().__init__()
        if rep_stride not in (4, 8):
            raise ValueError(f"rep_stride={rep_stride}: TinyDecoder reads a representation at stride 4 or 8")
        self.skip = nn.Sequential(nn.Conv2d(REP_CHANNELS, skip_channels, 1, bias=False),
                                  nn.BatchNorm2d(skip_channels))
        reduce = [*_cbr(REP_CHANNELS, 32, k=1), *_up(32, 16)] if rep_stride == 8 else _cbr(REP_CHANNELS, 16, k=1)
        self.body = nn.Sequential(
            *reduce, *_cbr(16, 16),
            nn.ConvTranspose2d(16, 16, 2, 2), nn.BatchNorm2d(16),
        )
        self.out = nn.Conv2d(16 + skip_channels, out_channels, 3, padding=1)
        init_weights(self)

    def forward(self, rep: Tensor) -> Tensor:
        x = self.body(rep)
        skip = F.interpolate(self.skip(rep), size=x.shape[-2:], mode="bilinear", align_corners=False)
        y = self.out(F.relu(torch.cat([x, skip.to(x.dtype)], dim=1)))
        return F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)


@register_model(stride=STRIDE)
def tiny(tasks: str, *, seed: int | None = None) -> MultiTaskNet:
    """Small CPU network (64-channel representation at stride 8) for fast federated runs at 64 px."""
    return assemble("tiny", tasks, stride=STRIDE, encoder=TinyEncoder,
                    decoder=lambda t: TinyDecoder(t.out_channels), seed=seed)
