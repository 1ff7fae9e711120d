"""The reference network: Standley et al.'s small Xception for Taskonomy, as the MAS authors used it.

Encoder (about 4.09 M parameters): stem conv 3->24 (stride 2), conv 24->48, Xception blocks
48->96->192->512 (stride 2 each), four 512-channel blocks, separable conv 512->256; a 256 x S/16 x S/16
representation. Decoder (about 0.116 M parameters): separable-conv heads, four x2 transposed-conv
upsamplings 96->64->64->32->32 and a 16-channel skip branch from the representation, bilinearly
upsampled to full resolution and concatenated before the last separable conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch convention)
from torch import Tensor, nn

from mas_flower.models.layers import SeparableConv2d, init_weights
from mas_flower.models.multitask import MultiTaskNet, assemble
from mas_flower.models.registry import register_model
from mas_flower.tasks import Task

STRIDE = 16
REP_CHANNELS = 256


class XceptionBlock(nn.Module):
    """Two ReLU-separable conv-BN units, an optional learned 2x2 stride-2 downsampling, a residual."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, start_with_relu: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if start_with_relu:
            layers.append(nn.ReLU())  # not in place: the input is also the residual
        layers += [SeparableConv2d(in_ch, out_ch, 3), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
                   SeparableConv2d(out_ch, out_ch, 3), nn.BatchNorm2d(out_ch)]
        if stride != 1:
            layers.append(nn.Conv2d(out_ch, out_ch, 2, stride))  # the reference's learned pooling
        self.body = nn.Sequential(*layers)
        self.skip = None
        if in_ch != out_ch or stride != 1:
            self.skip = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + (x if self.skip is None else self.skip(x))


class XceptionEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True),
            nn.Conv2d(24, 48, 3, 1, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(
            XceptionBlock(48, 96, 2, start_with_relu=False),
            XceptionBlock(96, 192, 2),
            XceptionBlock(192, 512, 2),
            *(XceptionBlock(512, 512) for _ in range(4)),
        )
        self.head = nn.Sequential(SeparableConv2d(512, REP_CHANNELS, 3), nn.BatchNorm2d(REP_CHANNELS),
                                  nn.ReLU())
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


def _relu() -> nn.Module:
    return nn.ReLU(inplace=True)


def _up(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(in_ch, out_ch, 2, 2), nn.BatchNorm2d(out_ch)]


def _sep(in_ch: int, out_ch: int, k: int) -> list[nn.Module]:
    return [SeparableConv2d(in_ch, out_ch, k), nn.BatchNorm2d(out_ch)]


class XceptionDecoder(nn.Module):
    """Representation (B, rep_ch, h, w) to (B, out_channels, 16h, 16w)."""

    def __init__(self, out_channels: int, rep_channels: int = REP_CHANNELS, skip_channels: int = 16) -> None:
        super().__init__()
        self.skip = nn.Sequential(*_sep(rep_channels, skip_channels, 3))
        self.body = nn.Sequential(
            *_sep(rep_channels, 96, 3),
            *_up(96, 96), _relu(), *_sep(96, 64, 3), _relu(),
            *_up(64, 64), _relu(), *_sep(64, 64, 5), _relu(),
            *_up(64, 32), _relu(), *_sep(32, 32, 5), _relu(),
            *_up(32, 32),
        )
        self.out = SeparableConv2d(32 + skip_channels, out_channels, 5)
        init_weights(self)

    def forward(self, rep: Tensor) -> Tensor:
        x = self.body(rep)
        # Bilinear upsampling in float32 (as the reference does), whatever the autocast dtype.
        skip = F.interpolate(self.skip(rep).float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(F.relu(torch.cat([x, skip.to(x.dtype)], dim=1)))


@register_model(stride=STRIDE)
def xception(tasks: str, *, seed: int | None = None) -> MultiTaskNet:
    """Reference small Xception (Standley et al.; the MAS paper's model), 4.09 M encoder."""
    return assemble("xception", tasks, stride=STRIDE, encoder=XceptionEncoder,
                    decoder=lambda t: XceptionDecoder(t.out_channels), seed=seed)


def decoder_for(task: Task) -> XceptionDecoder:
    """The Xception decoder for one task (also used on other encoders with a 256 x S/16 representation)."""
    return XceptionDecoder(task.out_channels)
