"""The message contract between the ServerApp and the ClientApp: typed instructions and reply keys.

One place for the names both sides use, so the two apps cannot drift apart. What a node is asked to do
is a dataclass per kind (`InfoQuery`, `TrainInstruction` and `FederationTrain`, `EvaluateInstruction` and
`FederationEvaluate`) that the server writes with `to_record()` and the client reads with
`from_record()`: a field's config key is its name with `-` (or the key given by `key`), so adding a
client-side setting is adding one field. Reply metrics are read and written through the constants below.

A train or evaluate message carries every federation of the round that the node takes part in:
`arrays.<federation>` (ArrayRecord) and `config.<federation>` (ConfigRecord) per federation, plus
one `config` record shared by all of them. The reply carries `arrays.<federation>` (train only) and
`metrics.<federation>` per federation, plus one `metrics` record about the node's whole message
(its energy when it meters itself).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from typing import Any, TypeVar

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
INFO_QUERY = "info"

NUM_EXAMPLES = "num-examples"
TRAIN_SECONDS = "train-seconds"
#: 1 when the client trained under bf16 autocast, 0 in float32.
BF16 = "bf16"
AFFINITY = "affinity"
AFFINITY_COUNT = "affinity-count"
#: Per-entry sum of squares of a client's lookahead matrices (row-major n × n, like AFFINITY).
AFFINITY_SQUARES = "affinity-squares"
#: Samples in the lookahead batches of a local training (FLOP accounting, `mas_flower.flops`).
AFFINITY_SAMPLES = "affinity-samples"
#: One-time costs of a local training before its first batch (not in TRAIN_SECONDS).
SETUP_SECONDS = "setup-seconds"
BUILDING = "building"
#: Flower's own FedProx puts its μ under this config key; our ClientApp honours it.
PROXIMAL_MU = "proximal-mu"
HOST = "host"
ENERGY_KWH = "energy-kwh"
CO2_G = "co2-g"
ENERGY_ESTIMATED = "energy-estimated"


def constant_key(letter: str) -> str:
    """Evaluate config key of a task's best constant prediction (list of floats, one per output channel)."""
    return f"constant-{letter}"


def constant_loss_key(letter: str) -> str:
    """Metric key of the constant prediction's loss in evaluate replies (same data, same batches)."""
    return f"constant-loss-{letter}"


def loss_key(letter: str) -> str:
    """Metric key of a task's loss in train and evaluate replies."""
    return f"loss-{letter}"


def size_key(split: str) -> str:
    """Info-reply key of the number of examples in one of the node's splits (`size-train`)."""
    return f"size-{split}"


def sizes_in(record: Mapping[str, Any]) -> dict[str, int]:
    """Split -> examples, from an info reply's `size-<split>` keys."""
    prefix = size_key("")
    return {k[len(prefix):]: int(v) for k, v in record.items() if k.startswith(prefix)}


def record_key(kind: str, federation: str) -> str:
    """Key of one federation's record in a message: `record_key(ARRAYS, "sd") == "arrays.sd"`."""
    return f"{kind}.{federation}"


def federations_in(content_keys: object, kind: str) -> list[str]:
    """Federation names of the `<kind>.<federation>` records among `content_keys`, in their order."""
    prefix = f"{kind}."
    return [str(k)[len(prefix):] for k in content_keys if str(k).startswith(prefix)]


# Instructions: what a node is asked to do, one dataclass per kind, read and written by both apps --------

_I = TypeVar("_I", bound="Instruction")
_READERS: dict[str, Callable[[Any], Any]] = {"str": str, "int": int, "float": float, "bool": bool}


def key(name: str, default: Any = MISSING) -> Any:
    """A field of an instruction sent under config key `name`, when that is not its own name with `-`."""
    return field(default=default, metadata={"key": name})


def _key_of(f: Field) -> str:
    return f.metadata.get("key", f.name.replace("_", "-"))


def key_of(instruction: type[Instruction], name: str) -> str:
    """The config key of field `name` of an instruction class (e.g. `task-metrics`)."""
    (f,) = (f for f in fields(instruction) if f.name == name)
    return _key_of(f)


@dataclass(frozen=True)
class Instruction:
    """Base of the typed instructions. `to_record()` gives the ConfigRecord entries (field -> its config
    key); `from_record()` reads them back, converting each to its field's type (str, int, float, bool), and
    ignores keys it does not know (a Flower strategy adds its own, e.g. `server-round`). A field with a
    default may be absent. Raises ValueError naming the instruction and the missing key."""

    def to_record(self) -> dict[str, Any]:
        return {_key_of(f): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_record(cls: type[_I], record: Mapping[str, Any]) -> _I:
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = _key_of(f)
            if name in record:
                values[f.name] = _READERS[str(f.type)](record[name])
            elif f.default is MISSING and f.default_factory is MISSING:
                raise ValueError(f"{cls.__name__}: the message lacks config key {name!r}")
        return cls(**values)


@dataclass(frozen=True)
class DataInstruction(Instruction):
    """Where a node finds its building's data and how to read it; part of every message to a node."""

    data_root: str
    all_tasks: str
    image_size: int
    model: str


@dataclass(frozen=True)
class InfoQuery(DataInstruction):
    """The discovery query: which building a node holds and its split sizes; with `label_histogram`,
    also the histogram of its training labels (`mas_flower.constant.LabelHistogram`)."""

    label_histogram: bool = False


@dataclass(frozen=True)
class TrainInstruction(DataInstruction):
    """A train message's shared config: local training for every federation the message carries."""

    server_round: int
    lr: float
    local_epochs: int
    batch_size: int
    gradnorm_alpha: float
    affinity_mode: str
    affinity_first_epoch_only: bool
    precision: str
    #: The node meters its own energy (it is on another machine than the server).
    measure_energy: bool
    energy_country: str
    energy_intensity: float


@dataclass(frozen=True)
class FederationTrain(Instruction):
    """A train message's config for one federation (`config.<federation>`)."""

    federation: str
    tasks: str
    weighting: str
    #: Lookahead every this many batches (0: no affinity this round).
    affinity_every: int
    #: The seed of this node's local training in this federation and round.
    seed: int = 0
    #: FedProx's μ, under Flower's own key (Flower's `FedProx` strategy writes it there too).
    proximal_mu: float = key(PROXIMAL_MU, 0.0)


@dataclass(frozen=True)
class EvaluateInstruction(DataInstruction):
    """An evaluate message's shared config: the split to evaluate (`val`, `test`) and how."""

    split: str
    batch_size: int
    precision: str
    #: Also reply with the task metrics' sums (`mas_flower.metrics.TaskMetrics.to_record`).
    task_metrics: bool = False


@dataclass(frozen=True)
class FederationEvaluate(Instruction):
    """An evaluate message's config for one federation; `constants`: task letter -> the best constant
    prediction (one float per output channel, `mas_flower.constant`), sent as `constant-<letter>`, whose
    loss the node reports beside the network's."""

    federation: str
    tasks: str
    constants: dict[str, list[float]] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        plain = super().to_record()
        del plain["constants"]  # spread as one key per task instead
        return {**plain, **{constant_key(t): list(v) for t, v in self.constants.items()}}

    @classmethod
    def from_record(cls: type[_I], record: Mapping[str, Any]) -> _I:
        plain = super().from_record(record)
        return replace(plain, constants={t: [float(x) for x in record[constant_key(t)]] for t in plain.tasks
                                         if constant_key(t) in record})
