"""MAS as Flower strategies: public `flwr.serverapp.strategy.Strategy` subclasses.

- `ParallelFederations`: several federations (one network per task group) trained in the same
  rounds on the same sampled nodes, each aggregated by its own instance of any Flower strategy.
- `MethodStrategy`: one of our methods (`mas_flower.methods`) run stage by stage on them.
- `server_strategy(settings)`: the Flower strategy named by the `server-strategy` run-config key.
- `write_outputs(strategy, run_dir)`: a finished run's folder (results.json, weights, affinity).

Imported lazily, so that `mas_flower.settings` can check strategy names without importing Flower.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ParallelFederations": "mas_flower.strategy.parallel",
    "MethodStrategy": "mas_flower.strategy.method",
    "RoundFailed": "mas_flower.strategy.roster",
    "CoverageError": "mas_flower.strategy.roster",
    "DivergedError": "mas_flower.strategy.divergence",
    "server_strategy": "mas_flower.strategy.aggregators",
    "SERVER_STRATEGIES": "mas_flower.strategy.aggregators",
    "load_checkpoint": "mas_flower.strategy.checkpoint",
    "write_outputs": "mas_flower.strategy.outputs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
