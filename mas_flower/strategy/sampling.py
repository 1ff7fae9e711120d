"""A federation's Flower strategy must take exactly the nodes it is handed, wrapped or not.

`ParallelFederations` samples the round's K nodes itself and shows each federation's strategy only
those (`NodesView`). A strategy that wants more (Flower's FedAvg() defaults to 2 nodes) would wait
in Flower's `sample_nodes` for ever ("Waiting for nodes to connect"). Two checks refuse it with the
same message:

- `check_sampling`, before any round: `fraction_train`, `min_train_nodes`, `min_available_nodes`
  (and a DP wrapper's `num_sampled_clients`) of the strategy and of every strategy it wraps
  (`.strategy`, at any depth: Flower's DP wrappers keep the real one there);
- `configured`, every round: the strategy configures against a `WatchedNodes` view, which stops it
  (`StillWaiting`) when it still polls for nodes `PATIENCE` seconds after its first look, and the
  training messages must be exactly one per sampled node. This catches wrappers that keep their
  strategy elsewhere than in `.strategy`. It runs in the caller's thread: nothing is left running.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from mas_flower.strategy.divergence import strategy_chain, strategy_name

#: Seconds a strategy may keep asking for nodes before it counts as waiting for more than it has
#: (Flower's `sample_nodes` asks once a second).
PATIENCE = 3.0


class NodesView(Grid):
    """A Grid that shows a Flower strategy only the nodes chosen for this round (all else delegated)."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid, self._node_ids = grid, list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    # Grid's abstract methods, delegated.
    def set_run(self, run_id: int) -> None:
        self._grid.set_run(run_id)

    @property
    def run(self):  # type: ignore[override]
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def push_messages(self, messages):  # type: ignore[override]
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids):  # type: ignore[override]
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[override]
        return self._grid.send_and_receive(messages, timeout=timeout)


class StillWaiting(Exception):
    """Raised inside a strategy's `configure_*` by `WatchedNodes` to end its wait for nodes."""


class WatchedNodes(NodesView):
    """A `NodesView` that raises StillWaiting when asked for the node ids `patience` seconds or more
    after it was first asked: a strategy polling that long is waiting for nodes that never come."""

    def __init__(self, grid: Grid, node_ids: list[int], patience: float = PATIENCE) -> None:
        super().__init__(grid, node_ids)
        self._patience, self._first_look = patience, None

    def get_node_ids(self) -> list[int]:
        now = time.monotonic()
        if self._first_look is None:
            self._first_look = now
        elif now - self._first_look >= self._patience:
            raise StillWaiting(f"still polling for nodes after {now - self._first_look:.1f} s")
        return super().get_node_ids()


def train_message(federation: str, strategy: Any, k: int, detail: str) -> str:
    """The one message for a strategy that does not take exactly the round's K sampled nodes."""
    return (f"federation {federation!r}: its {strategy_name(strategy)} {detail}, but a round gives it exactly "
            f"clients-per-round={k} sampled nodes: use fraction_train=1.0 and min_train_nodes, "
            f"min_available_nodes <= {k}")


def check_sampling(strategies: dict[str, Any], k: int) -> None:
    """ValueError (`train_message`) when a federation's strategy, or one it wraps, would sample fewer
    than all K nodes or wait for more; or when a DP wrapper scales its noise for another number of
    sampled clients than K."""
    for name, strategy in strategies.items():
        chain = strategy_chain(strategy)
        fraction = next((f for s in chain if (f := getattr(s, "fraction_train", 1.0)) != 1.0), 1.0)
        least = max(max(getattr(s, "min_train_nodes", 1), getattr(s, "min_available_nodes", 1)) for s in chain)
        if fraction != 1.0 or least > k:
            raise ValueError(train_message(name, strategy, k, f"has fraction_train={fraction} and needs {least} nodes"))
        for s in chain:
            sampled = getattr(s, "num_sampled_clients", k)
            if sampled != k:
                raise ValueError(f"federation {name!r}: its {strategy_name(strategy)} has num_sampled_clients="
                                 f"{sampled} (its noise is scaled for that many clients), but a round gives it "
                                 f"exactly clients-per-round={k} sampled nodes: use num_sampled_clients={k}")


def configured(strategy: Any, federation: str, nodes: list[int], grid: Grid,
               configure: Callable[[Grid], Iterable[Message]], *, train: bool) -> list[Message]:
    """`configure(view)` (a strategy's `configure_train` or `configure_evaluate` over `WatchedNodes(grid,
    nodes)`) as a list; ValueError when the strategy waits for more nodes than `nodes`, or (`train`)
    when it does not configure exactly one message per node of `nodes`."""
    try:
        messages = list(configure(WatchedNodes(grid, nodes)))
    except StillWaiting as err:
        if train:
            raise ValueError(train_message(federation, strategy, len(nodes), f"waited for more nodes ({err})")
                             ) from None
        raise ValueError(f"federation {federation!r}: its {strategy_name(strategy)} waited for more nodes ({err}), "
                         f"but an evaluation gives it exactly the {len(nodes)} nodes that evaluate (every node for the "
                         f"test, the validation-nodes sample for validation): use "
                         f"fraction_evaluate=1.0 and min_evaluate_nodes, min_available_nodes <= {len(nodes)}") from None
    targets = sorted(m.metadata.dst_node_id for m in messages)
    if train and targets != sorted(nodes):
        raise ValueError(train_message(federation, strategy, len(nodes),
                                       f"configured {len(messages)} training message(s) (to nodes {targets}) for the "
                                       f"round's {len(nodes)} sampled nodes {sorted(nodes)}"))
    return messages
