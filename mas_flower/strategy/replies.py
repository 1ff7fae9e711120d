"""Client replies: one federation's view of a node's reply, the checks that keep a broken, non-finite or
impossible reply from being aggregated, and what the accepted replies say (losses, affinity, floors).

A node answers once for every federation its message carried (`mas_flower.strategy.protocol`); `screen` cuts out
one federation's part, shaped as a Flower strategy expects a reply, and says why it must not be used.
Each check returns the reason a reply is rejected, or None when it is fine, so the round can log
exactly which node sent what.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict

from mas_flower.splitting.stability import AffinityReport
from mas_flower.strategy import protocol as P
from mas_flower.strategy import wire

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


def screen(reply: Message | None, federation: str, reject: Callable[[Message], str | None], *,
           sent: ArrayRecord | None = None) -> tuple[Message | None, str | None]:
    """A node's reply cut to one federation (`view`) and why it must not be aggregated (None: it may).
    Used alike for training (`sent`: the network sent, to unpack the reply by) and evaluation."""
    if reply is None:
        return None, "no reply in time"
    if reply.has_error():
        return None, f"client error: {reply.error.reason}"
    try:
        cut = view(reply, federation, sent=sent)
    except wire.LayoutMismatch as err:
        return None, str(err)
    return cut, reject(cut)


def view(reply: Message, federation: str, *, sent: ArrayRecord | None = None) -> Message:
    """One federation's part of a node's reply, shaped as a Flower strategy expects a reply:
    one plain ArrayRecord (train replies: unpacked by the layout of `sent`) and one MetricRecord,
    under our standard keys."""
    content = RecordDict()
    if sent is not None and P.record_key(P.ARRAYS, federation) in reply.content.array_records:
        content[P.ARRAYS] = wire.unpacked(reply.content[P.record_key(P.ARRAYS, federation)], sent,
                                          what=f"federation {federation!r}")
    if P.record_key(P.METRICS, federation) in reply.content.metric_records:
        content[P.METRICS] = reply.content[P.record_key(P.METRICS, federation)]
    return Message(content=content, metadata=copy.copy(reply.metadata))


def task_losses(metrics: Any, tasks: str) -> dict[str, float]:
    """Task letter -> loss, from a (reply's or aggregated) MetricRecord."""
    return {t: float(metrics[P.loss_key(t)]) for t in tasks}


def constant_losses(replies: list[Message], tasks: str) -> dict[str, float] | None:
    """Example-weighted mean loss of the best constant per task (as the losses are weighted by
    default), or None unless every reply reported it for every task."""
    total, sums = 0, dict.fromkeys(tasks, 0.0)
    for m in replies:
        metrics = m.content[P.METRICS]
        if any(P.constant_loss_key(t) not in metrics for t in tasks):
            return None
        n = int(metrics[P.NUM_EXAMPLES])
        total += n
        for t in tasks:
            sums[t] += n * float(metrics[P.constant_loss_key(t)])
    return {t: v / total for t, v in sums.items()} if total > 0 else None


def affinity_mean(replies: list[Message], n: int) -> np.ndarray | None:
    """Lookahead-count-weighted mean of the clients' affinity matrices (docs/design.md, section "Lookahead
    affinity"): Z = Σ_c n_c Z_c / Σ_c n_c, with n_c the number of lookahead batches of client c."""
    total, count = np.zeros((n, n)), 0
    for report in affinity_reports(replies, n):
        total += report.count * report.mean
        count += report.count
    return total / count if count else None


def affinity_reports(replies: list[Message], n: int) -> list[AffinityReport]:
    """Each client's lookahead report of a round (count, mean n × n matrix, sum of squares if sent)."""
    reports = []
    for m in replies:
        metrics = m.content[P.METRICS]
        if P.AFFINITY in metrics and int(metrics[P.AFFINITY_COUNT]) > 0:
            squares = metrics.get(P.AFFINITY_SQUARES)
            reports.append(AffinityReport(
                int(metrics[P.AFFINITY_COUNT]), np.asarray(metrics[P.AFFINITY], dtype=float).reshape(n, n),
                None if squares is None else np.asarray(squares, dtype=float).reshape(n, n)))
    return reports

