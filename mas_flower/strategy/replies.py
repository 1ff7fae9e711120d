"""Checks on client replies: a reply that is broken, non-finite or impossible is never aggregated.

Each check returns the reason a reply is rejected, or None when it is fine, so the round can log
exactly which node sent what.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Message

from mas_flower import protocol as P

#: In every reason given for a non-finite number (`non_finite`).
NON_FINITE = "NaN or Inf"


def non_finite(reason: str | None) -> bool:
    """Whether a rejection reason is a non-finite number (an array, a loss, the affinity)."""
    return reason is not None and NON_FINITE in reason


def reject_train_reply(msg: Message, sent: ArrayRecord, tasks: str, lr: float) -> str | None:
    """Why a train reply (one federation's view of it) must not be aggregated (None if it may)."""
    if msg.has_error():
        return f"client error: {msg.error.reason}"
    content = msg.content
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return "expected exactly one ArrayRecord and one MetricRecord"
    arrays = next(iter(content.array_records.values()))
    if set(arrays) != set(sent):
        missing, extra = sorted(set(sent) - set(arrays)), sorted(set(arrays) - set(sent))
        return f"array keys differ from the sent network (missing {missing[:3]}, unexpected {extra[:3]})"
    for key, array in arrays.items():
        value = array.numpy()
        if tuple(value.shape) != tuple(sent[key].shape):
            return f"array {key!r} has shape {tuple(value.shape)}, sent {tuple(sent[key].shape)}"
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return f"array {key!r} holds {NON_FINITE}"
    metrics = next(iter(content.metric_records.values()))
    problem = _check_counts_and_losses(metrics, tasks)
    if problem:
        return problem
    if P.AFFINITY in metrics:
        z = np.asarray(metrics[P.AFFINITY], dtype=float)
        n = len(tasks)
        if z.size != n * n:
            return f"affinity has {z.size} values, expected {n}x{n}"
        if not np.isfinite(z).all():
            return f"affinity holds {NON_FINITE}"
        # Z[i, j] = (1 − L'/L)/η with losses ≥ 0 cannot exceed 1/η.
        if z.max() > (1.0 / lr) * (1 + 1e-6):
            return f"affinity {z.max():.4g} exceeds 1/lr = {1 / lr:.4g}, which is impossible"
        if int(metrics.get(P.AFFINITY_COUNT, 0)) < 1:
            return "affinity sent with a count below 1"
    return None


def reject_evaluate_reply(msg: Message, tasks: str) -> str | None:
    if msg.has_error():
        return f"client error: {msg.error.reason}"
    if len(msg.content.metric_records) != 1:
        return "expected exactly one MetricRecord"
    return _check_counts_and_losses(next(iter(msg.content.metric_records.values())), tasks)


def _check_counts_and_losses(metrics, tasks: str) -> str | None:
    examples = metrics.get(P.NUM_EXAMPLES)
    if not isinstance(examples, (int, float)) or not np.isfinite(examples) or examples <= 0:
        return f"{P.NUM_EXAMPLES}={examples!r} is not a positive number"
    for t in tasks:
        value = metrics.get(P.loss_key(t))
        if isinstance(value, (int, float)) and not np.isfinite(value):
            return f"loss of task {t!r} is {value!r} ({NON_FINITE})"
        if not isinstance(value, (int, float)) or value < 0:
            return f"loss of task {t!r} is {value!r}"
    return None
