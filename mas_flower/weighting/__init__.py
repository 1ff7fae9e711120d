"""Loss-weighting methods by name (LibMTL-style: one small file per method; adding one is adding a file).

The trainer calls, once per step, `weighting.backward(losses, net)` (which leaves the network's
gradients in `.grad` and returns the weighted loss, detached) and, after the optimiser step,
`weighting.step()`. Methods that keep learnable state (GradNorm) update it there.
"""

from __future__ import annotations

from mas_flower.registry import import_submodules
from mas_flower.weighting.base import Weighting, get_weighting, list_weightings

import_submodules(__name__, __path__)

__all__ = ["Weighting", "get_weighting", "list_weightings"]
