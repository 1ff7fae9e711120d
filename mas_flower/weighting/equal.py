"""Equal weighting: the total loss is the plain sum of the task losses.

See docs/design.md, section "Taskonomy's encodings".
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mas_flower.weighting.base import Weighting, register_weighting


@register_weighting("equal")
class Equal(Weighting):
    def backward(self, losses: Mapping[str, Tensor], net: nn.Module, rep: Tensor | None = None) -> Tensor:
        total = torch.stack(self._ordered(losses)).sum()
        total.backward()
        return total.detach()
