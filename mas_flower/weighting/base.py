"""The shared interface of loss-weighting methods and the name registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from mas_flower.registry import Registry


class Weighting(ABC):
    """Turns per-task losses into parameter gradients for one training step."""

    name: str = ""

    def __init__(self, tasks: str) -> None:
        self.tasks = tasks

    @abstractmethod
    def backward(self, losses: Mapping[str, Tensor], net: nn.Module, rep: Tensor | None = None) -> Tensor:
        """Back-propagate the weighted loss into `net`'s `.grad`; return the weighted loss, detached.

        `rep` is the shared representation of this step's forward pass, for methods that need it.
        """

    def step(self) -> None:
        """Called once after the optimiser step (learnable weights update here)."""
        return None

    def state_dict(self) -> dict[str, Tensor]:
        """What the method has learned, as named tensors, to carry it from one round to the next
        (a client keeps it between the rounds it is sampled in)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if state:
            raise ValueError(f"{self.name}: has no state, got {sorted(state)}")

    def _ordered(self, losses: Mapping[str, Tensor]) -> list[Tensor]:
        missing = [c for c in self.tasks if c not in losses]
        if missing:
            raise KeyError(f"{self.name}: no loss for task(s) {''.join(missing)!r} (got {''.join(losses)!r})")
        return [losses[c] for c in self.tasks]

    @property
    def weights(self) -> dict[str, float]:
        """Current task weights (1 for every task unless the method learns them)."""
        return dict.fromkeys(self.tasks, 1.0)


WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting")
#: Class decorator: make a weighting available as `get_weighting("<name>")`.
register_weighting = WEIGHTINGS.register


def list_weightings() -> list[str]:
    return WEIGHTINGS.names()


def get_weighting(name: str, tasks: str, **kwargs: Any) -> Weighting:
    """A fresh weighting `name` for the task string `tasks`; options go to its constructor."""
    return WEIGHTINGS.get(name)(tasks, **kwargs)
