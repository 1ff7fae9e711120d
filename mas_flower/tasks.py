"""The task table: the one place that knows how each Taskonomy task is stored, decoded and scored.

The loader, the models, the losses and the synthetic generator all read this module; nothing else
hard-codes a domain name, a bit depth or a normalisation constant (docs/design.md, section "Taskonomy's encodings").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are touched, so the task table (and settings) load without it
    import torch

#: Raw depth values at or above this are "no value" (65535) or too far to trust: masked out.
DEPTH_VALID_BELOW = 8192
#: Depth is stored in 1/512 m.
DEPTH_UNITS_PER_METRE = 512
#: The input image domain and the optional explicit valid-pixel mask domain.
RGB_DOMAIN = "rgb"
MASK_DOMAIN = "mask_valid"
#: The domain whose raw values give the valid-pixel mask when `mask_valid` is absent.
MASK_SOURCE_DOMAIN = "depth_zbuffer"


@dataclass(frozen=True)
class Task:
    """One Taskonomy task: storage on disk, decoding to a training target, and its loss."""

    letter: str
    domain: str
    #: Other folder/file spellings of the domain (Taskonomy's own download uses `segmentsemantic`).
    aliases: tuple[str, ...]
    #: Bit depth and channel count of the stored PNG.
    bits: int
    png_channels: int
    #: Channels the decoder predicts (class count for segmentation).
    out_channels: int
    #: Loss kind: "cross_entropy", "l1", "masked_l1" or "shift_masked_l1" (see mas_flower.losses).
    loss: str
    #: Decoded target = (raw / scale[c] - offset[c]) / std[c] over the kept input channels.
    scale: float
    offset: tuple[float, ...]
    std: tuple[float, ...]
    #: Which stored channels become target channels, or "mean" to average all three (reshading).
    keep: str = "all"
    #: Label resizing: "nearest" for class ids, "bilinear" otherwise.
    resize: str = "bilinear"
    #: Target channel whose sign flips under a horizontal flip (x of surface normals), if any.
    flip_negates: int | None = None

    @property
    def masked(self) -> bool:
        return self.loss in ("masked_l1", "shift_masked_l1")

    @property
    def is_classification(self) -> bool:
        return self.loss == "cross_entropy"

    @property
    def folder_names(self) -> tuple[str, ...]:
        return (self.domain, *self.aliases)

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        """Stored values (N, png_channels, H, W), any dtype, to the training target.

        Segmentation gives long class ids (N, H, W); everything else float (N, out_channels, H, W).
        """
        import torch

        if self.is_classification:
            return raw[:, 0].long()
        if raw.dtype == torch.uint16 and raw.device.type != "cpu":  # few kernels take uint16 off the CPU:
            raw = raw.view(torch.int16).int() & 0xFFFF  # widen exactly via its int16 bits
        x = raw.float()
        if self.keep == "mean":
            x = x.mean(dim=1, keepdim=True)
        elif self.keep != "all":
            x = x[:, [int(c) for c in self.keep]]
        offset = torch.tensor(self.offset, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x / self.scale - offset) / std

    def encode(self, target: torch.Tensor) -> torch.Tensor:
        """Inverse of `decode` for the stored channels it keeps (used by the synthetic generator and tests).

        Returns float raw values (N, kept channels, H, W) before rounding and clipping.
        """
        import torch

        if self.is_classification:
            return target[:, None].float()
        offset = torch.tensor(self.offset, dtype=torch.float64).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float64).view(1, -1, 1, 1)
        return ((target.double() * std + offset) * self.scale).float()


TASKS: dict[str, Task] = {
    t.letter: t
    for t in (
        Task("s", "segment_semantic", ("segmentsemantic",), 8, 1, 18, "cross_entropy",
             1.0, (0.0,), (1.0,), resize="nearest"),
        Task("d", "depth_zbuffer", (), 16, 1, 1, "shift_masked_l1", 1.0, (1500.0,), (1000.0,)),
        Task("n", "normal", (), 8, 3, 3, "shift_masked_l1", 255.0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
             flip_negates=0),
        Task("k", "keypoints2d", (), 16, 1, 1, "l1", 1.0, (50.0,), (100.0,)),
        Task("t", "edge_texture", (), 16, 1, 1, "l1", 1.0, (718.0,), (1070.0,)),
        Task("e", "edge_occlusion", (), 16, 1, 1, "masked_l1", 1.0, (56.0248,), (239.1265,)),
        Task("r", "reshading", (), 8, 3, 1, "masked_l1", 255.0, (0.4962,), (0.2846,), keep="mean"),
        Task("c", "principal_curvature", (), 8, 3, 2, "masked_l1", 255.0, (0.5175, 0.4987),
             (0.1373, 0.0359), keep="01"),
        Task("a", "rgb", (), 8, 3, 3, "l1", 255.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    )
}

#: Every task letter in the paper's order.
ALL_LETTERS = "sdnkterca"
#: Every domain folder a dataset may hold, with the input and mask domains.
ALL_DOMAINS = (RGB_DOMAIN, MASK_DOMAIN, *(t.domain for t in TASKS.values() if t.domain != RGB_DOMAIN))


def parse_tasks(letters: str) -> list[Task]:
    """Task letters (e.g. "sdnkt") to tasks, in the given order; unknown or repeated letters raise."""
    unknown = sorted({c for c in letters if c not in TASKS})
    if unknown:
        raise ValueError(
            f"unknown task letter(s) {', '.join(repr(c) for c in unknown)} in {letters!r}; "
            f"known: {ALL_LETTERS} ({', '.join(f'{t.letter}={t.domain}' for t in TASKS.values())})"
        )
    if not letters:
        raise ValueError("empty task string: give at least one of " + ALL_LETTERS)
    repeated = sorted({c for c in letters if letters.count(c) > 1})
    if repeated:
        raise ValueError(f"task letter(s) {', '.join(repeated)} repeated in {letters!r}")
    return [TASKS[c] for c in letters]


def needs_mask(letters: str) -> bool:
    """Whether any task in the string is scored on valid pixels only."""
    return any(TASKS[c].masked for c in letters)
