"""The message contract between the ServerApp and the ClientApp (keys of records and configs).

One place for the names both sides use, so the two apps cannot drift apart.
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
BUILDING = "building"


def loss_key(letter: str) -> str:
    """Metric key of a task's loss in train and evaluate replies."""
    return f"loss-{letter}"

HOST = "host"
ENERGY_KWH = "energy-kwh"
CO2_G = "co2-g"
ENERGY_ESTIMATED = "energy-estimated"
