"""The message contract between the ServerApp and the ClientApp (keys of records and configs).

One place for the names both sides use, so the two apps cannot drift apart. It lives in the library
because the library's strategies (`mas_flower.strategy`) build and read these messages.

A train or evaluate message carries every federation of the round that the node takes part in:
`arrays.<federation>` (ArrayRecord) and `config.<federation>` (ConfigRecord) per federation, plus
one `config` record shared by all of them. The reply carries `arrays.<federation>` (train only) and
`metrics.<federation>` per federation, plus one `metrics` record about the node's whole message
(its energy when it meters itself).
"""

from __future__ import annotations

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
#: Evaluate config key: when true, the reply also carries the task metrics' sums
#: (`mas_flower.metrics.TaskMetrics.to_record`, keys `msum.<letter>.<sum>`).
TASK_METRICS = "task-metrics"
BUILDING = "building"
#: Flower's own FedProx puts its μ under this config key; our ClientApp honours it.
PROXIMAL_MU = "proximal-mu"
HOST = "host"
ENERGY_KWH = "energy-kwh"
CO2_G = "co2-g"
ENERGY_ESTIMATED = "energy-estimated"


#: Info-query config key: when true, the node also reports a `mas_flower.constant.LabelHistogram` of
#: its training labels (keys `lhist.<letter>...`), from which the server finds the best constants.
LABEL_HISTOGRAM = "label-histogram"


def constant_key(letter: str) -> str:
    """Evaluate config key of a task's best constant prediction (list of floats, one per output channel)."""
    return f"constant-{letter}"


def constant_loss_key(letter: str) -> str:
    """Metric key of the constant prediction's loss in evaluate replies (same data, same batches)."""
    return f"constant-loss-{letter}"


def loss_key(letter: str) -> str:
    """Metric key of a task's loss in train and evaluate replies."""
    return f"loss-{letter}"


def record_key(kind: str, federation: str) -> str:
    """Key of one federation's record in a message: `record_key(ARRAYS, "sd") == "arrays.sd"`."""
    return f"{kind}.{federation}"


def federations_in(content_keys: object, kind: str) -> list[str]:
    """Federation names of the `<kind>.<federation>` records among `content_keys`, in their order."""
    prefix = f"{kind}."
    return [str(k)[len(prefix):] for k in content_keys if str(k).startswith(prefix)]
