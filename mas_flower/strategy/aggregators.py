"""Flower's own strategies by name (`server-strategy`), with their hyperparameters from the run config.

Every federation of a run gets its own instance, so a server optimiser (FedAdam's moments, FedAvgM's
momentum) keeps its state per network. Each Flower keyword is read from `Settings` by a function, so a
renamed setting fails where it is read, not as a string. `server-lr` left at 0 takes the measured
default of `MEASURED_SERVER_LR` where Flower's own default blows our networks up, else the strategy's
Flower default; the other hyperparameters default to Flower's values in the app's config.
Flower is imported only when a strategy is built, so settings can be checked without it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from mas_flower.strategy import protocol as P

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

    from mas_flower.settings import Settings

#: Reads one hyperparameter from the run's settings; None means "the strategy's default"
#: (`MEASURED_SERVER_LR`, else the Flower class's own default for that keyword).
Hyperparameter = Callable[["Settings"], Any]


def _server_lr(s: Settings) -> float | None:
    """`server-lr`, or None when left at 0 (0 is the run config's "the strategy's default")."""
    return s.server_lr or None


class ServerStrategy(NamedTuple):
    """A class of `flwr.serverapp.strategy` and how each of its keywords is read from the settings."""

    flower_class: str
    hyperparameters: dict[str, Hyperparameter]


_ADAPTIVE: dict[str, Hyperparameter] = {"eta": _server_lr, "eta_l": lambda s: s.lr, "beta_1": lambda s: s.beta_1,
                                        "beta_2": lambda s: s.beta_2, "tau": lambda s: s.tau}

#: `server-strategy` name -> its Flower class and {Flower keyword: read from Settings}.
SERVER_STRATEGIES: dict[str, ServerStrategy] = {
    "fedavg": ServerStrategy("FedAvg", {}),
    "fedprox": ServerStrategy("FedProx", {"proximal_mu": lambda s: s.fedprox_mu}),
    "fedadam": ServerStrategy("FedAdam", _ADAPTIVE),
    "fedyogi": ServerStrategy("FedYogi", _ADAPTIVE),
    "fedadagrad": ServerStrategy("FedAdagrad", {"eta": _server_lr, "eta_l": lambda s: s.lr, "tau": lambda s: s.tau}),
    "fedavgm": ServerStrategy("FedAvgM", {"server_learning_rate": _server_lr,
                                         "server_momentum": lambda s: s.server_momentum}),
    "fedmedian": ServerStrategy("FedMedian", {}),
    "fedtrimmedavg": ServerStrategy("FedTrimmedAvg", {"beta": lambda s: s.trim_beta}),
}

#: `server-lr=0` for these strategies: this eta, not Flower's 0.1, which at `./run.sh`'s default workload
#: (MAS-2 on sdnkt, 6 nodes, seed 0) sends the first validation loss to 811 (FedAdam) and 865,506
#: (FedAdagrad) against FedAvg's 7.6. At 0.01 the total test loss is 4.91 (FedAdam) and 4.64 (FedAdagrad),
#: FedAvg 4.48. Measured with `mas-flower run --nodes 6 -- --run-config "server-strategy='fedadam'"`;
#: docs/strategies.md gives the table. FedYogi's own default is already 0.01 (4.73).
MEASURED_SERVER_LR: dict[str, float] = {"fedadam": 0.01, "fedadagrad": 0.01}

StrategyFactory = Callable[[], "Strategy"]


def check_server_strategy(name: str, where: str = "") -> None:
    """ValueError unless `name` is a key of `SERVER_STRATEGIES` (the one check of a strategy's name);
    `where` (e.g. " (after '@' in 'mas-2@krum')") says where the name was written, for the message."""
    if name not in SERVER_STRATEGIES:
        raise ValueError(f"server-strategy={name!r}{where} is not one of {', '.join(SERVER_STRATEGIES)}")


def _flower_class(name: str) -> type:
    import flwr.serverapp.strategy as flower

    return getattr(flower, SERVER_STRATEGIES[name].flower_class)


def server_hyperparameters(settings: Settings) -> dict[str, Any]:
    """The keyword arguments that `server_strategy` gives Flower's class (recorded in results.json)."""
    name = settings.server_strategy
    check_server_strategy(name)
    defaults = inspect.signature(_flower_class(name).__init__).parameters
    out: dict[str, Any] = {}
    for keyword, read in SERVER_STRATEGIES[name].hyperparameters.items():
        value = read(settings)
        out[keyword] = MEASURED_SERVER_LR.get(name, defaults[keyword].default) if value is None else value
    return out


def server_strategy(settings: Settings) -> Strategy:
    """A fresh Flower strategy named by `server-strategy`, reading and writing our message keys.

    It samples nothing itself: the federation's driver hands it only the round's sampled nodes,
    and fraction 1.0 with minimum 1 makes it take all of them.
    """
    cls = _flower_class(settings.server_strategy)
    return cls(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1,
               min_available_nodes=1, weighted_by_key=P.NUM_EXAMPLES, arrayrecord_key=P.ARRAYS,
               configrecord_key=P.CONFIG, **server_hyperparameters(settings))


def strategy_factory(aggregator: str | StrategyFactory, settings: Settings) -> StrategyFactory:
    """A callable making one fresh strategy per federation: from a `server-strategy` name (with the
    run's hyperparameters) or a user's own callable (e.g. `lambda: FedAdam(eta=0.01)`)."""
    if callable(aggregator):
        return aggregator
    check_server_strategy(aggregator)
    named = dataclasses.replace(settings, server_strategy=aggregator)
    return lambda: server_strategy(named)
