"""What a run costs and scores beyond its losses: FLOPs, bytes, client set-up time, task metrics.

- **FLOPs** (machine-independent compute, `mas_flower.flops`): each accepted train reply is charged
  its network's per-sample training FLOPs × the samples it processed (`local-epochs` × its
  examples), plus the lookahead's extra FLOPs over the `affinity-samples` in `affinity-count`
  batches it reports (`NetworkFlops.training`, in the run's `affinity-mode`). The lookahead part is
  also booked apart (`affinity_flops`, within `train_flops`). Each evaluate reply is charged
  forward FLOPs × the samples it evaluated. The per-sample figures are measured once per network
  shape (model, tasks, image size, weighting) on the meta device, and cached in `<home>/cache`.
  A client that trained in bf16 or with TF32 runs the lookahead in its own float32 passes; it is
  charged as in the shared-graph path.
- **Bytes**: Flower's own `count_bytes()` of every ArrayRecord, ConfigRecord and MetricRecord in
  the train and evaluate messages sent to clients (down) and in their replies (up), summed over
  records: array bytes as serialised plus key lengths; 8 bytes per config/metric number, one per
  bool, the length of a string. Message metadata, the protobuf framing, the node-discovery query
  and failed replies are not counted; retried rounds are (their bytes were sent).
- **Task metrics**: clients send `TaskMetrics` sums (`mas_flower.metrics`); the server adds them
  up with `sum_records` (never Flower's weighted mean of each key, which is wrong for sums).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from flwr.app import Message, MetricRecord, RecordDict

from mas_flower.flops import NetworkFlops, network_flops, to_tflops
from mas_flower.methods.base import FederationSpec
from mas_flower.metrics import RECORD_PREFIX, TaskMetrics, sum_records
from mas_flower.settings import Settings, home
from mas_flower.strategy import protocol as P

MB = 1e6


@dataclass
class Accounts:
    """A run's running totals (kept in the `Ledger`, so checkpoints keep them)."""

    train_flops: float = 0.0
    #: The lookahead's share of `train_flops`.
    affinity_flops: float = 0.0
    eval_flops: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    #: One-time costs of the clients' local trainings (network to device, optimiser), not in their seconds.
    client_setup_seconds: float = 0.0

    def totals(self) -> dict[str, float]:
        """results.json's keys: TFLOPs (10¹²) and MB (10⁶ bytes)."""
        return {"train_tflops": to_tflops(self.train_flops), "affinity_tflops": to_tflops(self.affinity_flops),
                "eval_tflops": to_tflops(self.eval_flops), "comm_mb_down": self.bytes_down / MB,
                "comm_mb_up": self.bytes_up / MB, "comm_mb": (self.bytes_down + self.bytes_up) / MB}

    def since(self, before: Accounts) -> dict[str, float]:
        """The same keys for what was spent after the snapshot `before` (one round)."""
        delta = Accounts(**{k: v - getattr(before, k) for k, v in asdict(self).items()})
        return delta.totals()

    def snapshot(self) -> Accounts:
        return Accounts(**asdict(self))


def content_bytes(content: RecordDict) -> int:
    """Bytes of a message's records by Flower's `count_bytes()` (see the module docstring)."""
    return sum(r.count_bytes() for records in (content.array_records, content.config_records,
                                                 content.metric_records) for r in records.values())


def count_exchange(accounts: Accounts, sent: Iterable[Message], replies: Iterable[Message]) -> None:
    """Book the bytes of the messages sent and of the replies received (errors carry no records)."""
    accounts.bytes_down += sum(content_bytes(m.content) for m in sent)
    accounts.bytes_up += sum(content_bytes(r.content) for r in replies if not r.has_error())


def _flops(settings: Settings, fed: FederationSpec) -> NetworkFlops:
    """Per-sample FLOPs of a federation's network, measured once per machine (`<home>/cache`)."""
    return network_flops(settings.model, fed.tasks, settings.image_size, fed.weighting, cache_dir=home() / "cache")


def book_train(accounts: Accounts, settings: Settings, fed: FederationSpec, views: Iterable[Message]) -> None:
    """FLOPs and set-up seconds of a federation's accepted train replies (their METRICS records)."""
    flops = _flops(settings, fed)
    for view in views:
        m = view.content[P.METRICS]
        lookahead = flops.lookahead(int(m.get(P.AFFINITY_SAMPLES, 0)), int(m.get(P.AFFINITY_COUNT, 0)),
                                    settings.affinity_mode)
        accounts.train_flops += flops.train * settings.local_epochs * int(m[P.NUM_EXAMPLES]) + lookahead
        accounts.affinity_flops += lookahead
        accounts.client_setup_seconds += float(m.get(P.SETUP_SECONDS, 0.0))


def book_eval(accounts: Accounts, settings: Settings, fed: FederationSpec, views: Iterable[Message]) -> None:
    """Forward FLOPs of a federation's accepted evaluate replies."""
    flops = _flops(settings, fed)
    accounts.eval_flops += sum(flops.evaluation(int(v.content[P.METRICS][P.NUM_EXAMPLES])) for v in views)


def take_metric_sums(views: list[Message]) -> tuple[list[Message], TaskMetrics | None]:
    """The views without their task-metric sums (for the Flower strategy's aggregation), and the
    sums added up over the views (None when no view carried any)."""
    records, stripped = [], []
    for view in views:
        metrics = view.content[P.METRICS]
        sums = {k: v for k, v in metrics.items() if k.startswith(f"{RECORD_PREFIX}.")}
        if sums:
            records.append(sums)
            content = RecordDict({P.METRICS: MetricRecord({k: v for k, v in metrics.items() if k not in sums})})
            view = Message(content=content, metadata=copy.copy(view.metadata))
        stripped.append(view)
    return stripped, (sum_records(records) if records else None)
