"""`tiny` with its shared representation at stride 4: for per-pixel texture tasks at 32 px.

Encoder: tiny's stages (strided 3x3 conv-BN-ReLU 3->16->32 with a residual block at S/4, then 32->64
with a residual block at S/8); the representation is the S/4 features (32 channels) concatenated with
the S/8 features lifted back to S/4 by a x2 transposed conv-BN-ReLU (32 channels): 64 x S/4 x S/4, the
fine texture of stride 4 next to the context of stride 8 (a skip inside the encoder). The decoders
still read only that representation (MAS cuts sub-networks by parameter name; the affinity uses
`encode`/`decode`). Decoders: tiny's layout one level shorter: a 1x1 reduction to 16 and a 3x3 conv
at S/4, one x2 transposed conv to half resolution, a 4-channel skip branch from the representation
bilinearly upsampled and concatenated before the last 3x3 conv, and a bilinear x2 upsampling of the
prediction. The total stride stays 8: image sizes must be multiples of 8.

Why: keypoints and edge texture are per-pixel functions of the image's fine texture, which tiny's
64 x S/8 representation loses. Measured with benchmarks/bench_learning.py at the quick settings
(conf/quick-sdnkt.yaml's data, run seeds 0-2), the all-in-one test skill of k/t went from
0.16-0.18/0.19-0.25 (tiny) to 0.21-0.26/0.34-0.39, at 1.03x tiny's FLOPs per sample. A decoder going
to full resolution from S/8 did not help them; adding (instead of concatenating) the lifted S/8
features cost normals more. lr 0.3 collapsed keypoints in one run; 0.15 and 0.2 did not.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mas_flower.models.layers import init_weights
from mas_flower.models.multitask import MultiTaskNet, assemble
from mas_flower.models.registry import register_model
from mas_flower.models.tiny import REP_CHANNELS as TINY_REP_CHANNELS
from mas_flower.models.tiny import ResidualBlock, TinyDecoder, _cbr

STRIDE = 8
FINE_CHANNELS = 32
COARSE_CHANNELS = 32
REP_CHANNELS = FINE_CHANNELS + COARSE_CHANNELS
assert REP_CHANNELS == TINY_REP_CHANNELS  # tiny's decoders read it


class TinyFineEncoder(nn.Module):
    """Images (B, 3, S, S) to (B, 64, S/4, S/4): tiny's S/4 features, then its S/8 features lifted to S/4."""

    def __init__(self) -> None:
        super().__init__()
        self.fine = nn.Sequential(*_cbr(3, 16, stride=2), *_cbr(16, FINE_CHANNELS, stride=2),
                                  ResidualBlock(FINE_CHANNELS))
        self.coarse = nn.Sequential(*_cbr(FINE_CHANNELS, 64, stride=2), ResidualBlock(64))
        self.lift = nn.Sequential(nn.ConvTranspose2d(64, COARSE_CHANNELS, 2, 2), nn.BatchNorm2d(COARSE_CHANNELS),
                                  nn.ReLU(inplace=True))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        fine = self.fine(x)
        return torch.cat([fine, self.lift(self.coarse(fine))], dim=1)


@register_model("tiny-fine", stride=STRIDE)
def tiny_fine(tasks: str, *, seed: int | None = None) -> MultiTaskNet:
    """`tiny` with a 64-channel representation at stride 4 (S/4 texture + S/8 context): for 32 px texture tasks."""
    return assemble("tiny-fine", tasks, stride=STRIDE, encoder=TinyFineEncoder,
                    decoder=lambda t: TinyDecoder(t.out_channels, rep_stride=4), seed=seed)
