"""The run's books: what it has measured so far (`Ledger`) and the record of one round (`RoundRecord`).

The ledger is checkpointed after every round with everything else (`MethodStrategy.checkpoint`), so a
resumed run keeps its history, time and energy. A round's record is typed while the round runs and
becomes one plain dict of the history (results.json's `history`, metrics.jsonl) when it ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from mas_flower.strategy.accounting import Accounts


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


@dataclass
class NetworkRound:
    """One federation's network in one round: results.json's `history[i].federations[<name>]`.

    Losses are mean losses per example by task letter. The `val_*` fields are set only in rounds that
    validate: `val_nodes` buildings answered of the `val_of` the federation had (`val_estimate` when
    fewer), `val_missing` names those the validation was sent to whose reply was left out (none in a
    healthy round), `val_skill` is 1 − loss / the best constant's loss (`mas_flower.constant`).
    A field left None is absent from the history entry.
    """

    train_loss: dict[str, float]
    train_buildings: list[str]
    #: The round's lookahead affinity (n × n, row-major lists) in affinity rounds.
    affinity: list[list[float]] | None = None
    val_loss: dict[str, float] | None = None
    val_nodes: int | None = None
    val_of: int | None = None
    val_estimate: bool | None = None
    val_missing: list[str] | None = None
    val_skill: dict[str, float] | None = None
    val_metrics: dict[str, dict[str, float]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass
class RoundRecord:
    """The round in progress (`ParallelFederations`): one attempt's sampled buildings and failures,
    then each federation's network, then what `entry` adds when the round ends."""

    #: Buildings of the nodes sampled for training, in aggregation order.
    sampled: list[str]
    #: "<building> (<federation>): <why>" for every training reply left out.
    failed: list[str] = field(default_factory=list)
    #: Federation -> accepted replies, for federations short of `min-replies` (the attempt is retried).
    short: dict[str, int] = field(default_factory=dict)
    client_train_seconds: float = 0.0
    federations: dict[str, NetworkRound] = field(default_factory=dict)
    #: How the validation sample changed this round ({"out": [...], "in": [...]}), if it did.
    val_sample_changed: dict[str, list[str]] | None = None

    def entry(self, *, server_round: int, phase: str, lr: float, seconds: float,
              costs: dict[str, float]) -> dict[str, Any]:
        """The history entry: keys `sampled`, `failed`, `client_train_seconds`, `federations`,
        `val_sample_changed` (only if it changed), `round`, `phase`, `lr`, `seconds` and the round's
        `costs` (`Accounts.since`: TFLOPs and MB)."""
        out: dict[str, Any] = {"sampled": self.sampled, "failed": self.failed,
                               "client_train_seconds": self.client_train_seconds,
                               "federations": {name: net.as_dict() for name, net in self.federations.items()}}
        if self.val_sample_changed:
            out["val_sample_changed"] = self.val_sample_changed
        return {**out, "round": server_round, "phase": phase, "lr": lr, "seconds": seconds, **costs}
