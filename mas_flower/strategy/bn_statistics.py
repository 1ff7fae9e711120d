"""BatchNorm running statistics are averaged, whatever the server strategy (`bn-statistics='average'`).

A BatchNorm layer's `running_mean` and `running_var` are not parameters but estimates of the data's
statistics: each client's local training moves them towards its data's values whatever they started
from. Flower's server optimisers (FedAvgM's momentum, FedAdam/FedYogi/FedAdagrad's moments and
normalised steps) treat them as parameters and overshoot: measured on the default workload, FedAvgM
(momentum 0.5 to 0.9), FedYogi and FedAdam drove variances negative within 2–12 rounds, and the
DP wrappers' noise does so at once. Reddi et al. (Adaptive Federated Optimization, ICLR 2021) avoid
the question by using GroupNorm. Here, with `bn-statistics='average'` (default), the strategy's
aggregate keeps its parameters and its statistics are replaced by the example-weighted mean of the
clients' (FedAvg's arithmetic: with FedAvg itself nothing changes); `'strategy'` leaves them to the
strategy, as Flower does (for a DP wrapper, whose noise must cover everything derived from the
clients' data).
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from mas_flower.strategy import protocol as P

#: Name endings of BatchNorm's running statistics in a torch state dict.
STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def is_statistic(key: str) -> bool:
    """Whether `key` (e.g. 'encoder.stages.1.running_var') names a BatchNorm running statistic."""
    return key.rsplit(".", 1)[-1] in STATISTICS


def averaged_statistics(aggregate: ArrayRecord, replies: Sequence[Message]) -> ArrayRecord:
    """`aggregate` with every running statistic replaced by Σ_c n_c x_c / Σ_c n_c over the `replies`
    (each a federation's view: one ArrayRecord under `arrays`, `num-examples` in its metrics), computed
    by Flower's own `aggregate_arrayrecords`, so the statistics are bit for bit those FedAvg gives.
    Other arrays are kept as they are. Raises ValueError when no reply carries examples."""
    keys = [k for k in aggregate if is_statistic(k)]
    if not keys:
        return aggregate
    if not replies or sum(float(m.content[P.METRICS][P.NUM_EXAMPLES]) for m in replies) <= 0:
        raise ValueError("averaging BatchNorm statistics needs replies with examples")
    records = [RecordDict({P.ARRAYS: ArrayRecord({k: m.content[P.ARRAYS][k] for k in keys}),
                           P.METRICS: m.content[P.METRICS]}) for m in replies]
    mean = aggregate_arrayrecords(records, P.NUM_EXAMPLES)
    return ArrayRecord({k: mean.get(k, v) for k, v in aggregate.items()})
