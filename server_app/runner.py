"""Runs a method's stages on a federation: sampling, local training, FedAvg, affinity, validation, test.

Every stage trains all of its federations in the same rounds on the same sampled clients. The
aggregation itself is Flower's (`FedAvg.aggregate_train` / `aggregate_evaluate`); this module only
decides what to send where and keeps the books.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from logging import INFO
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from client_app import protocol as P
from mas_flower.methods import Method, Stage, StageOutcome
from mas_flower.methods.base import FederationSpec, State
from mas_flower.models import build_model
from mas_flower.settings import Settings
from server_app.exchange import exchange

NODE_WAIT_SECONDS = 300.0


@dataclass
class Ledger:
    """What the run has measured so far, for results.json."""

    history: list[dict[str, Any]] = field(default_factory=list)
    client_train_seconds: float = 0.0
    affinity_per_round: list[dict[str, Any]] = field(default_factory=list)


def stable_seed(*parts: object) -> int:
    """A seed from names and numbers that is the same in every process and run (unlike hash())."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


class FederatedRunner:
    def __init__(self, grid: Grid, settings: Settings, method: Method) -> None:
        self.grid, self.settings, self.method = grid, settings, method
        self.strategy = FedAvg(weighted_by_key=P.NUM_EXAMPLES, arrayrecord_key=P.ARRAYS,
                               configrecord_key=P.CONFIG)
        self.rng = np.random.default_rng(settings.seed)
        self.ledger = Ledger()
        self.nodes: dict[int, str] = {}  # node id -> building
        self.started = time.monotonic()
        self.rounds_done = 0
        self.rounds_planned = 0
        self.outcomes: list[StageOutcome] = []

    # Nodes ---------------------------------------------------------------------------------------

    def data_config(self) -> dict[str, Any]:
        s = self.settings
        return {"data-root": s.data_root, "all-tasks": s.task_set, "image-size": s.image_size, "model": s.model}

    def discover(self) -> dict[int, str]:
        """Ask every node which building it holds; map node ids (random per run) to buildings."""
        need = self.settings.clients_per_round
        deadline = time.monotonic() + NODE_WAIT_SECONDS
        while len(ids := sorted(self.grid.get_node_ids())) < need and time.monotonic() < deadline:
            log(INFO, "waiting for nodes: %d connected, %d needed", len(ids), need)
            time.sleep(1.0)
        if len(ids) < need:
            raise ValueError(f"clients-per-round={need} but only {len(ids)} nodes are connected")
        query = RecordDict({P.CONFIG: ConfigRecord(self.data_config())})
        tagged = [(nid, Message(content=query, dst_node_id=nid, message_type=f"{MessageType.QUERY}.{P.INFO_QUERY}"))
                  for nid in ids]
        replies = exchange(self.grid, tagged)
        for nid, reply in replies.items():
            if reply.has_error():
                raise RuntimeError(f"node {nid} could not load its data: {reply.error.reason}")
            self.nodes[nid] = str(reply.content[P.CONFIG][P.BUILDING])
        if len(self.nodes) < need:
            raise ValueError(f"clients-per-round={need} but only {len(self.nodes)} nodes answered")
        log(INFO, "federation: %d nodes: %s", len(self.nodes), ", ".join(sorted(self.nodes.values())))
        return self.nodes

    def sample(self) -> list[int]:
        """K clients for a round, from a seeded generator over nodes ordered by building name."""
        ordered = sorted(self.nodes, key=lambda nid: (self.nodes[nid], nid))
        picks = self.rng.choice(len(ordered), size=self.settings.clients_per_round, replace=False)
        return [ordered[i] for i in sorted(picks)]

    # Networks ------------------------------------------------------------------------------------

    def fresh_state(self, federation: FederationSpec) -> State:
        torch.manual_seed(stable_seed(self.settings.seed, "init", federation.name))
        net = build_model(self.settings.model, federation.tasks, image_size=self.settings.image_size)
        return {k: v.detach().clone() for k, v in net.state_dict().items()}

    # Rounds --------------------------------------------------------------------------------------

    def train_config(self, fed: FederationSpec, stage: Stage, rnd: int, node: int) -> ConfigRecord:
        s = self.settings
        measure = fed.measure_affinity and rnd - stage.schedule_start < stage.affinity_rounds
        return ConfigRecord({
            **self.data_config(), "tasks": fed.tasks, "federation": fed.name, "server-round": rnd + 1,
            "lr": s.lr_at(rnd, stage.schedule_total), "local-epochs": s.local_epochs,
            "batch-size": s.batch_size, "prox-mu": fed.prox_mu, "weighting": fed.weighting,
            "gradnorm-alpha": s.gradnorm_alpha, "affinity-every": s.affinity_every if measure else 0,
            "affinity-mode": s.affinity_mode, "affinity-first-epoch-only": s.affinity_first_epoch_only,
            "seed": stable_seed(s.seed, "train", fed.name, rnd, self.nodes[node]),
        })

    def train_round(self, stage: Stage, rnd: int, states: dict[str, State]) -> dict[str, Any]:
        sampled = self.sample()
        tagged = []
        for fed in stage.federations:
            arrays = ArrayRecord(states[fed.name])
            for nid in sampled:
                content = RecordDict({P.ARRAYS: arrays, P.CONFIG: self.train_config(fed, stage, rnd, nid)})
                tagged.append(((fed.name, nid), Message(content=content, dst_node_id=nid,
                                                        message_type=MessageType.TRAIN)))
        replies = exchange(self.grid, tagged)
        record: dict[str, Any] = {"sampled": [self.nodes[n] for n in sampled], "federations": {}}
        for fed in stage.federations:
            got = [replies[(fed.name, n)] for n in sampled if (fed.name, n) in replies]
            ok = [m for m in got if not m.has_error()]
            if not ok:
                reasons = "; ".join(m.error.reason for m in got if m.has_error()) or "no replies"
                raise RuntimeError(f"round {rnd + 1}: no client trained federation {fed.name!r}: {reasons}")
            arrays, metrics = self.strategy.aggregate_train(rnd + 1, got)
            states[fed.name] = _like(arrays.to_torch_state_dict(), states[fed.name])
            self.ledger.client_train_seconds += sum(float(m.content[P.METRICS][P.TRAIN_SECONDS]) for m in ok)
            entry: dict[str, Any] = {"train_loss": _losses(metrics, fed.tasks)}
            matrix = _affinity(ok, len(fed.tasks))
            if matrix is not None:
                entry["affinity"] = matrix.tolist()
            record["federations"][fed.name] = entry
        return record

    def evaluate(self, stage: Stage, states: dict[str, State], split: str) -> dict[str, dict[str, float]]:
        """Per-task losses of every federation on `split` of every node, weighted by examples."""
        tagged = []
        for fed in stage.federations:
            config = ConfigRecord({**self.data_config(), "tasks": fed.tasks, "split": split,
                                   "batch-size": self.settings.eval_batch_size})
            arrays = ArrayRecord(states[fed.name])
            for nid in self.nodes:
                tagged.append(((fed.name, nid), Message(content=RecordDict({P.ARRAYS: arrays, P.CONFIG: config}),
                                                        dst_node_id=nid, message_type=MessageType.EVALUATE)))
        replies = exchange(self.grid, tagged)
        out = {}
        for fed in stage.federations:
            got = [replies[(fed.name, n)] for n in self.nodes if (fed.name, n) in replies]
            metrics = self.strategy.aggregate_evaluate(0, got)
            if metrics is None:
                raise RuntimeError(f"no node evaluated federation {fed.name!r} on {split}")
            out[fed.name] = _losses(metrics, fed.tasks)
        return out

    def run_stage(self, stage: Stage) -> StageOutcome:
        states = {f.name: f.init if f.init is not None else self.fresh_state(f) for f in stage.federations}
        outcome = StageOutcome(stage, states)
        affinity_rounds: dict[str, list[np.ndarray]] = {}
        for i in range(stage.rounds):
            rnd = stage.schedule_start + i
            t0 = time.monotonic()
            record = self.train_round(stage, rnd, states)
            val = self.evaluate(stage, states, "val")
            for name, entry in record["federations"].items():
                entry["val_loss"] = val[name]
                if "affinity" in entry:
                    affinity_rounds.setdefault(name, []).append(np.asarray(entry["affinity"]))
            self.rounds_done += 1
            record.update(round=rnd + 1, phase=stage.phase, lr=self.settings.lr_at(rnd, stage.schedule_total),
                          seconds=time.monotonic() - t0)
            self.ledger.history.append(record)
            self.log_round(stage, rnd, record)
        outcome.affinity_rounds = affinity_rounds
        outcome.affinity = {k: np.mean(v, axis=0) for k, v in affinity_rounds.items()}
        outcome.val_losses = (self.evaluate(stage, states, "val") if stage.rounds == 0
                              else {k: e["val_loss"] for k, e in self.ledger.history[-1]["federations"].items()})
        return outcome

    def log_round(self, stage: Stage, rnd: int, record: dict[str, Any]) -> None:
        elapsed = time.monotonic() - self.started
        remaining = elapsed / self.rounds_done * max(self.rounds_planned - self.rounds_done, 0)
        val = "  ".join(f"{name}: {sum(e['val_loss'].values()):.4f}" for name, e in record["federations"].items())
        log(INFO, "[%s] round %d/%d  clients %s  val loss %s  elapsed %.0fs  remaining ~%.0fs",
            stage.phase, rnd + 1, stage.schedule_total, ",".join(record["sampled"]), val, elapsed, remaining)

    def run(self) -> tuple[StageOutcome, dict[str, float]]:
        """All stages of the method; returns the final stage and every task's test loss."""
        self.discover()
        stage: Stage | None = self.method.first_stage()
        outcome = None
        while stage is not None:
            self.rounds_planned = self.rounds_done + stage.rounds + _later_rounds(self.method, stage)
            log(INFO, "stage %r: %d round(s), federations %s", stage.phase, stage.rounds,
                ", ".join(f"{f.name}({f.tasks})" for f in stage.federations))
            outcome = self.run_stage(stage)
            self.outcomes.append(outcome)
            stage = self.method.next_stage(outcome)
        assert outcome is not None
        serving = self.method.serving(outcome)
        test = self.evaluate(outcome.stage, outcome.states, "test")
        return outcome, {letter: test[name][letter] for letter, name in serving.items()}


def _later_rounds(method: Method, stage: Stage) -> int:
    """Rounds still to come after `stage` when the method runs to R (for the time estimate)."""
    return max(stage.schedule_total - stage.schedule_start - stage.rounds, 0) if stage.phase == "merge" else 0


def _losses(metrics: Any, tasks: str) -> dict[str, float]:
    return {t: float(metrics[P.loss_key(t)]) for t in tasks}


def _affinity(replies: list[Message], n: int) -> np.ndarray | None:
    """Count-weighted mean of the clients' affinity matrices (design.md §4)."""
    total, count = np.zeros((n, n)), 0
    for m in replies:
        metrics = m.content[P.METRICS]
        if P.AFFINITY in metrics and int(metrics[P.AFFINITY_COUNT]) > 0:
            c = int(metrics[P.AFFINITY_COUNT])
            total += c * np.asarray(metrics[P.AFFINITY], dtype=float).reshape(n, n)
            count += c
    return total / count if count else None


def _like(new: State, old: State) -> State:
    """Aggregated arrays come back as float; give every entry its previous dtype (BN counters are ints)."""
    return {k: v.to(old[k].dtype) if k in old else v for k, v in new.items()}
