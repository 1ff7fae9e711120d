"""What a run shares across its stages: its nodes, its seeded sampler, its books, where it is.

All of it is checkpointed after every round (`MethodStrategy`), so a killed run resumes exactly.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from mas_flower.constant import LabelHistogram, best_constants
from mas_flower.methods.base import Stage, State
from mas_flower.settings import Settings
from mas_flower.strategy import membership
from mas_flower.strategy.accounting import Accounts
from mas_flower.strategy.nodes import wait_for_nodes


class RoundFailed(RuntimeError):
    """Too few valid replies after every retry: the run stops, its checkpoint stays."""


#: Buildings the start-up line names; the rest are counted (every name is in results.json's `nodes`).
NAMED_BUILDINGS = 8


def federation_line(buildings: Iterable[str], remote: int, named: int = NAMED_BUILDINGS) -> str:
    """The discovery log line: how many nodes, the first `named` buildings by name (sorted) and how
    many more, how many on other machines. Its length does not grow with the federation's size
    (beyond the names' own lengths): 'federation: 1000 nodes: a, b, ... and 992 more (0 on other machines)'."""
    names = sorted(buildings)
    more = f", ... and {len(names) - named} more" if len(names) > named else ""
    return f"federation: {len(names)} nodes: {', '.join(names[:named])}{more} ({remote} on other machines)"


def stable_seed(*parts: object) -> int:
    """A seed from names and numbers that is the same in every process and run (unlike hash())."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def validation_priority(seed: int, building: str) -> float:
    """A building's place in the validation draw (`NodeRoster.validators`), uniform in [0, 1): the same
    in every process and run for one seed and building, independent between buildings."""
    return float(np.random.default_rng(stable_seed(seed, "validation", building)).random())


@dataclass
class Ledger:
    """What the run has measured so far, for results.json (checkpointed with everything else)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    client_train_seconds: float = 0.0
    wall_seconds: float = 0.0
    #: Energy of remote nodes (on other machines than the server), summed from their replies.
    remote_energy_kwh: float = 0.0
    remote_co2_g: float = 0.0
    remote_estimated: bool = False
    #: Energy reports of the server's own meter, one per session of the run (a resume starts one).
    local_energy: list[dict[str, Any]] = field(default_factory=list)
    #: Precisions the clients trained in ("bf16", "fp32"), as they reported them.
    precisions: set[str] = field(default_factory=set)
    #: Sessions of the run: 1, plus one per resume (the server's meter restarts with each).
    sessions: int = 0
    #: FLOPs, bytes and client set-up seconds so far (`mas_flower.strategy.accounting`).
    accounts: Accounts = field(default_factory=Accounts)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling (a checkpoint): books added since the checkpoint was written start empty."""
        self.__dict__.update({"accounts": Accounts(), "sessions": 0, "precisions": set(), **state})


@dataclass
class Progress:
    """Where the run is: enough, with the ledger, to continue it exactly after a crash."""

    stage: Stage
    states: dict[str, State]
    next_round: int = 0  # index within the stage
    affinity_rounds: dict[str, list[np.ndarray]] = field(default_factory=dict)
    #: Every federation's Flower strategy, with its state (server-optimiser moments, momentum).
    strategies: dict[str, Any] = field(default_factory=dict)
    #: Per federation and affinity round, every client's report (`mas_flower.splitting.stability`).
    affinity_reports: dict[str, list[Any]] = field(default_factory=dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling (a checkpoint): fields added since the checkpoint was written start empty."""
        self.__dict__.update({"affinity_reports": {}, **state})


class NodeRoster:
    """The run's nodes (node id -> building) and its seeded sampler of K distinct nodes per round."""

    def __init__(self, settings: Settings, rng_state: dict | None = None) -> None:
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)
        if rng_state is not None:
            self.rng.bit_generator.state = rng_state
        self.nodes: dict[int, str] = {}
        self.remote: set[int] = set()  # nodes on other machines: they meter their own training
        # Membership (`membership.py`): buildings holding test data, failures in a row per building,
        # lost buildings (building -> when), new ids claiming a served building (id -> their info),
        # ids never to use again (unavailable, replaced, lost).
        self.test_buildings: set[str] = set()
        self.failures: dict[str, int] = {}
        self.lost: dict[str, dict[str, int]] = {}
        self.standby: dict[int, dict[str, Any]] = {}
        self.gone: set[int] = set()
        # The best constant prediction per task, from the training labels of the nodes found at
        # discovery (`mas_flower.constant`): sent with every evaluation, the floor of the skill.
        self.constants: dict[str, list[float]] = {}
        #: The buildings that validate (`validation-nodes`), sorted; drawn at the first validation, kept for
        #: the run (checkpointed), changed only to replace buildings that left or to grow towards the count.
        self.validation_sample: list[str] | None = None

    def data_config(self) -> dict[str, Any]:
        s = self.settings
        return {"data-root": s.data_root, "all-tasks": s.task_set, "image-size": s.image_size, "model": s.model}

    def discover(self, grid: Grid) -> dict[int, str]:
        """Ask every node which building it holds; map node ids (random per run) to buildings.

        Raises ValueError when fewer than `clients-per-round` nodes connect or answer within
        `node-timeout` or when two nodes claim one building (naming both ids), RuntimeError when a
        node cannot load its data.
        """
        s = self.settings
        need = s.clients_per_round
        ids = wait_for_nodes(grid, need, s.node_timeout)
        # The first message also waits for the engine or the nodes to start up: the longer timeout.
        infos, errors = membership.query_info(self, grid, ids, max(s.node_timeout, s.reply_timeout), labels=True)
        if errors:
            raise RuntimeError("nodes could not load their data: "
                               + "; ".join(f"node {nid}: {why}" for nid, why in sorted(errors.items())))
        duplicates = membership.duplicate_claims({nid: info["building"] for nid, info in infos.items()})
        if duplicates:
            raise ValueError("two nodes claim the same building (each building's data must be on one node): "
                             + "; ".join(duplicates))
        membership.admit(self, infos)
        labels = LabelHistogram("")
        for info in infos.values():
            labels.merge(info["labels"])
        self.constants = best_constants(labels)
        if len(self.nodes) < need:
            raise ValueError(f"clients-per-round={need} but only {len(self.nodes)} nodes answered")
        log(INFO, "%s", federation_line(self.nodes.values(), len(self.remote)))
        return self.nodes

    def ordered(self) -> list[int]:
        """Node ids ordered by building name: the order replies are aggregated in."""
        return sorted(self.nodes, key=lambda nid: (self.nodes[nid], nid))

    def sample(self) -> list[int]:
        """K = clients-per-round distinct nodes, drawn without replacement from the seeded generator."""
        ordered = self.ordered()
        if len(ordered) < self.settings.clients_per_round:
            lost = "; ".join(f"{b} (lost in round {v['round']})" for b, v in sorted(self.lost.items()))
            left = ", ".join(sorted(self.nodes.values()))
            raise RoundFailed(f"clients-per-round={self.settings.clients_per_round} but only {len(ordered)} nodes "
                              f"are left ({left})" + (f"; lost: {lost}" if lost else ""))
        picks = self.rng.choice(len(ordered), size=self.settings.clients_per_round, replace=False)
        return [ordered[i] for i in sorted(picks)]

    def validators(self) -> tuple[list[int], dict[str, list[str]]]:
        """The node ids that validate now, in `ordered()` order, and how the sample changed.

        `validation-nodes` = 0: every node, no sample kept. V >= 1: the nodes of `validation_sample`, a
        set of min(V, nodes) buildings kept for the run: members whose building has no node any more (lost,
        gone) are replaced, and a sample short of V (fewer nodes at its draw) grows as nodes join, by
        `validation_priority` (seeded by `seed`), lowest first; a member is never displaced otherwise, so
        the validation curve stays over the same buildings. Returns (ids, {"out": buildings that left the
        sample, "in": buildings drawn into it}), the dict empty at the first draw and when nothing changed.
        Costs O(V + N) per call (a sort of the candidates only when the sample changes)."""
        ordered, count = self.ordered(), self.settings.validation_nodes
        if count == 0:
            return ordered, {}
        served = set(self.nodes.values())
        before = self.validation_sample
        kept = [b for b in before or () if b in served]
        drawn: list[str] = []
        if len(kept) < min(count, len(served)):
            candidates = sorted(served.difference(kept), key=lambda b: (validation_priority(self.settings.seed, b), b))
            drawn = candidates[:min(count, len(served)) - len(kept)]
        self.validation_sample = sorted([*kept, *drawn])
        chosen = set(self.validation_sample)
        change: dict[str, list[str]] = {}
        if before is not None and (drawn or len(kept) < len(before)):
            change = {"out": sorted(set(before) - chosen), "in": sorted(drawn)}
        return [nid for nid in ordered if self.nodes[nid] in chosen], change


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
