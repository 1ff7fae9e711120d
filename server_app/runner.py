"""Runs a method's stages on a federation: sampling, local training, FedAvg, affinity, validation, test.

Every stage trains all of its federations in the same rounds on the same sampled clients. The
aggregation itself is Flower's (`FedAvg.aggregate_train` / `aggregate_evaluate`); this module only
decides what to send where, rejects replies that must not be aggregated, retries rounds that got
too few, keeps the books and checkpoints after every round.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from client_app import protocol as P
from mas_flower.energy import EnergyMeter, host_id
from mas_flower.methods import Method, Stage, StageOutcome
from mas_flower.methods.base import FederationSpec, State
from mas_flower.models import build_model
from mas_flower.settings import Settings
from server_app.checkpoint import CHECKPOINT_FILE, save_checkpoint
from server_app.exchange import exchange
from server_app.nodes import wait_for_nodes
from server_app.replies import reject_evaluate_reply, reject_train_reply


class RoundFailed(RuntimeError):
    """Too few valid replies after every retry: the run stops, its checkpoint stays."""


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


@dataclass
class Progress:
    """Where the run is: enough, with the ledger, to continue it exactly after a crash."""

    stage: Stage
    states: dict[str, State]
    next_round: int = 0  # index within the stage
    affinity_rounds: dict[str, list[np.ndarray]] = field(default_factory=dict)


def stable_seed(*parts: object) -> int:
    """A seed from names and numbers that is the same in every process and run (unlike hash())."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


class FederatedRunner:
    def __init__(self, grid: Grid, settings: Settings, method: Method, run_dir: Path | None = None,
                 checkpoint: dict[str, Any] | None = None) -> None:
        self.grid, self.settings, self.method, self.run_dir = grid, settings, method, run_dir
        self.strategy = FedAvg(weighted_by_key=P.NUM_EXAMPLES, arrayrecord_key=P.ARRAYS,
                               configrecord_key=P.CONFIG)
        self.rng = np.random.default_rng(settings.seed)
        self.ledger = Ledger()
        self.outcomes: list[StageOutcome] = []
        self.progress: Progress | None = None
        if checkpoint is not None:
            self.method = checkpoint["method"]
            self.ledger, self.outcomes, self.progress = checkpoint["ledger"], checkpoint["outcomes"], \
                checkpoint["progress"]
            self.rng.bit_generator.state = checkpoint["rng"]
        self.nodes: dict[int, str] = {}  # node id -> building
        self.remote: set[int] = set()  # nodes on other machines: they meter their own training
        self.session_started = time.monotonic()
        self.wall_before = self.ledger.wall_seconds
        self.rounds_this_session = 0

    # Nodes ---------------------------------------------------------------------------------------

    def data_config(self) -> dict[str, Any]:
        s = self.settings
        return {"data-root": s.data_root, "all-tasks": s.task_set, "image-size": s.image_size, "model": s.model}

    def discover(self) -> dict[int, str]:
        """Ask every node which building it holds; map node ids (random per run) to buildings."""
        need = self.settings.clients_per_round
        ids = wait_for_nodes(self.grid, need, self.settings.node_timeout)
        query = RecordDict({P.CONFIG: ConfigRecord(self.data_config())})
        tagged = [(nid, Message(content=query, dst_node_id=nid, message_type=f"{MessageType.QUERY}.{P.INFO_QUERY}"))
                  for nid in ids]
        # The first message also waits for the engine or the nodes to start up: the longer timeout.
        replies = exchange(self.grid, tagged, timeout=max(self.settings.node_timeout, self.settings.reply_timeout))
        failures = [f"node {nid}: {r.error.reason}" for nid, r in replies.items() if r.has_error()]
        if failures:
            raise RuntimeError("nodes could not load their data: " + "; ".join(failures))
        here = host_id()
        for nid, reply in replies.items():
            info = reply.content[P.CONFIG]
            self.nodes[nid] = str(info[P.BUILDING])
            if str(info.get(P.HOST, here)) != here:
                self.remote.add(nid)
        if len(self.nodes) < need:
            raise ValueError(f"clients-per-round={need} but only {len(self.nodes)} nodes answered")
        log(INFO, "federation: %d nodes: %s (%d on other machines)", len(self.nodes),
            ", ".join(sorted(self.nodes.values())), len(self.remote))
        return self.nodes

    def sample(self) -> list[int]:
        """K clients for a round, from a seeded generator over nodes ordered by building name."""
        ordered = sorted(self.nodes, key=lambda nid: (self.nodes[nid], nid))
        picks = self.rng.choice(len(ordered), size=self.settings.clients_per_round, replace=False)
        return [ordered[i] for i in sorted(picks)]

    def timeout(self) -> float | None:
        return self.settings.reply_timeout if self.settings.reply_timeout > 0 else None

    # Networks ------------------------------------------------------------------------------------

    def fresh_state(self, federation: FederationSpec) -> State:
        """A network from scratch. Every network of a run starts from the same seeded encoder and the
        same decoder per task, so methods differ in how they train, not in their luck at init."""
        net = build_model(self.settings.model, federation.tasks, image_size=self.settings.image_size,
                          seed=stable_seed(self.settings.seed, "init"))
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
            "measure-energy": node in self.remote, "energy-country": s.energy_country,
            "energy-intensity": s.energy_intensity, "precision": s.precision,
        })

    def train_round(self, stage: Stage, rnd: int, states: dict[str, State]) -> dict[str, Any]:
        """One round for every federation of the stage; retried while too few replies are valid."""
        s = self.settings
        lr = s.lr_at(rnd, stage.schedule_total)
        for attempt in range(s.round_retries + 1):
            sampled = self.sample()
            tagged = []
            for fed in stage.federations:
                arrays = ArrayRecord(states[fed.name])
                for nid in sampled:
                    content = RecordDict({P.ARRAYS: arrays, P.CONFIG: self.train_config(fed, stage, rnd, nid)})
                    tagged.append(((fed.name, nid), Message(content=content, dst_node_id=nid,
                                                            message_type=MessageType.TRAIN)))
            replies = exchange(self.grid, tagged, timeout=self.timeout())
            accepted: dict[str, list[Message]] = {}
            failed: list[str] = []
            for fed in stage.federations:
                accepted[fed.name] = []
                for nid in sampled:
                    reply = replies.get((fed.name, nid))
                    reason = "no reply in time" if reply is None else \
                        reject_train_reply(reply, states[fed.name], fed.tasks, lr)
                    if reason is None:
                        accepted[fed.name].append(reply)
                    else:
                        failed.append(f"{self.nodes[nid]} ({fed.name}): {reason}")
            if failed:
                log(WARNING, "round %d: rejected or missing replies: %s", rnd + 1, "; ".join(failed))
            short = {f: len(a) for f, a in accepted.items() if len(a) < s.min_replies}
            if not short:
                return self._aggregate(stage, rnd, states, sampled, accepted, failed)
            log(WARNING, "round %d attempt %d/%d: too few valid replies %s (min-replies=%d)", rnd + 1, attempt + 1,
                s.round_retries + 1, short, s.min_replies)
        saved = self.run_dir is not None and (self.run_dir / CHECKPOINT_FILE).is_file()
        resume = f", its checkpoint is in {self.run_dir} (resume='{self.run_dir}')" if saved else \
            " before any checkpoint was written (nothing to resume: start it again)"
        raise RoundFailed(f"round {rnd + 1}: fewer than min-replies={s.min_replies} valid replies after "
                          f"{s.round_retries + 1} attempts ({'; '.join(failed)}); the run stops here{resume}")

    def _aggregate(self, stage: Stage, rnd: int, states: dict[str, State], sampled: list[int],
                   accepted: dict[str, list[Message]], failed: list[str]) -> dict[str, Any]:
        record: dict[str, Any] = {"sampled": [self.nodes[n] for n in sampled], "federations": {}, "failed": failed}
        for fed in stage.federations:
            ok = accepted[fed.name]
            arrays, metrics = self.strategy.aggregate_train(rnd + 1, ok)
            states[fed.name] = _like(arrays.to_torch_state_dict(), states[fed.name])
            for m in ok:
                reply = m.content[P.METRICS]
                self.ledger.client_train_seconds += float(reply[P.TRAIN_SECONDS])
                self.ledger.remote_energy_kwh += float(reply.get(P.ENERGY_KWH, 0.0))
                self.ledger.remote_co2_g += float(reply.get(P.CO2_G, 0.0))
                self.ledger.remote_estimated |= bool(reply.get(P.ENERGY_ESTIMATED, 0))
                self.ledger.precisions.add("bf16" if int(reply.get(P.BF16, 0)) else "fp32")
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
                                   "batch-size": self.settings.eval_batch_size,
                                   "precision": self.settings.precision})
            arrays = ArrayRecord(states[fed.name])
            for nid in self.nodes:
                tagged.append(((fed.name, nid), Message(content=RecordDict({P.ARRAYS: arrays, P.CONFIG: config}),
                                                        dst_node_id=nid, message_type=MessageType.EVALUATE)))
        replies = exchange(self.grid, tagged, timeout=self.timeout())
        out = {}
        for fed in stage.federations:
            good = []
            for nid in self.nodes:
                reply = replies.get((fed.name, nid))
                reason = "no reply in time" if reply is None else reject_evaluate_reply(reply, fed.tasks)
                if reason is None:
                    good.append(reply)
                else:
                    log(WARNING, "%s of %s on %s rejected: %s", split, fed.name, self.nodes[nid], reason)
            if not good:
                raise RoundFailed(f"no node evaluated federation {fed.name!r} on {split}")
            out[fed.name] = _losses(self.strategy.aggregate_evaluate(0, good), fed.tasks)
        return out

    def run_stage(self, progress: Progress) -> StageOutcome:
        stage, states = progress.stage, progress.states
        for i in range(progress.next_round, stage.rounds):
            rnd = stage.schedule_start + i
            t0 = time.monotonic()
            record = self.train_round(stage, rnd, states)
            val = self.evaluate(stage, states, "val")
            for name, entry in record["federations"].items():
                entry["val_loss"] = val[name]
                if "affinity" in entry:
                    progress.affinity_rounds.setdefault(name, []).append(np.asarray(entry["affinity"]))
            record.update(round=rnd + 1, phase=stage.phase, lr=self.settings.lr_at(rnd, stage.schedule_total),
                          seconds=time.monotonic() - t0)
            self.ledger.history.append(record)
            progress.next_round = i + 1
            self.rounds_this_session += 1
            self.checkpoint()
            self.log_round(stage, rnd, record)
        outcome = StageOutcome(stage, states, affinity_rounds=progress.affinity_rounds)
        outcome.affinity = {k: np.mean(v, axis=0) for k, v in progress.affinity_rounds.items()}
        outcome.val_losses = ({k: e["val_loss"] for k, e in self.ledger.history[-1]["federations"].items()}
                              if stage.rounds and self.ledger.history else self.evaluate(stage, states, "val"))
        return outcome

    def start(self, stage: Stage) -> Progress:
        states = {f.name: f.init if f.init is not None else self.fresh_state(f) for f in stage.federations}
        log(INFO, "stage %r: %d round(s), federations %s", stage.phase, stage.rounds,
            ", ".join(f"{f.name}({f.tasks})" for f in stage.federations))
        return Progress(stage, states)

    def _count_wall_time(self) -> None:
        """Wall time of the run so far: earlier sessions (before a resume) plus this one."""
        self.ledger.wall_seconds = self.wall_before + time.monotonic() - self.session_started

    def checkpoint(self) -> None:
        assert self.run_dir is not None, "the run folder is made before the first round"
        self._count_wall_time()
        save_checkpoint(self.run_dir, {
            "config": self.settings.to_run_config(), "method": self.method, "ledger": self.ledger,
            "outcomes": self.outcomes, "progress": self.progress, "rng": self.rng.bit_generator.state,
        })

    def log_round(self, stage: Stage, rnd: int, record: dict[str, Any]) -> None:
        elapsed = time.monotonic() - self.session_started
        left = stage.rounds - (rnd + 1 - stage.schedule_start)
        remaining = elapsed / max(self.rounds_this_session, 1) * max(left, 0)
        val = "  ".join(f"{name}: {sum(e['val_loss'].values()):.4f}" for name, e in record["federations"].items())
        log(INFO, "[%s] round %d/%d  clients %s  val loss %s  elapsed %.0fs  stage left ~%.0fs",
            stage.phase, rnd + 1, stage.schedule_total, ",".join(record["sampled"]), val, elapsed, remaining)

    def run(self, meter: EnergyMeter) -> tuple[StageOutcome, dict[str, float]]:
        """All stages of the method (from the checkpoint, if resuming); returns the final stage and
        every task's test loss.

        `meter` measures this machine while the run goes on, but only when some nodes share it (as in
        simulation): then the machine is counted once, not once per client. Nodes on other machines
        meter their own training and report it.
        Call `discover()` first.
        """
        if not self.nodes:
            raise RuntimeError("discover() the nodes before running")
        if len(self.remote) < len(self.nodes):
            meter.start()
        try:
            return self._run_stages()
        finally:
            if meter.running:
                self.ledger.local_energy.append(meter.stop().as_dict())

    def _run_stages(self) -> tuple[StageOutcome, dict[str, float]]:
        if self.progress is None:
            self.progress = self.start(self.method.first_stage())
        else:
            log(INFO, "resuming stage %r at round %d of %d", self.progress.stage.phase,
                self.progress.next_round + 1, self.progress.stage.rounds)
        while True:
            outcome = self.run_stage(self.progress)
            self.outcomes.append(outcome)
            stage = self.method.next_stage(outcome)
            if stage is None:
                break
            self.progress = self.start(stage)
            self.checkpoint()
        serving = self.method.serving(outcome)
        test = self.evaluate(outcome.stage, outcome.states, "test")
        self._count_wall_time()
        return outcome, {letter: test[name][letter] for letter, name in serving.items()}


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
