"""Task metrics beside the losses, as mergeable sums, and Δm% against one-by-one (docs/metrics.md).

Every metric is accumulated as **sums and counts** over batches, never as a mean of batch means, so
that clients can report their sums (a Flower `MetricRecord` holds numbers and lists of numbers) and
the server can add them up: the metric over the union of the clients' data is then exact, whatever
the batch sizes. `TaskMetrics` holds the sums of one network's tasks; `update(outputs, batch)` adds
a batch, `merge` adds another accumulator, `to_record` / `from_record` give the flat Flower form,
and `compute()` turns the sums into metrics.

Metrics per task (all on the network's raw outputs, at the label resolution; no shift tolerance):

- s (segmentation): `miou` and `pixel_acc` over classes 1–17; pixels labelled 0 are ignored. The
  prediction is the argmax over all 18 channels, so a labelled pixel predicted as 0 counts as wrong.
  Per class c: TP_c, P_c (labelled pixels predicted c), G_c (pixels labelled c).
  IoU_c = TP_c / (P_c + G_c − TP_c); `miou` is the mean over the classes with a non-empty union
  (classes absent from both prediction and labels are left out, the usual nanmean convention);
  `pixel_acc` = Σ TP_c / Σ G_c. Both are fractions in [0, 1].
- d (depth): `abs_rel` = mean |p − g| / g and `rmse_m` = sqrt(mean (p − g)²), in metres, over valid
  pixels with g > 0. Targets and predictions are de-normalised with the inverse of the decoding in
  docs/design.md, section "Taskonomy's encodings": target = (raw − 1500) / 1000 with raw in 1/512 m, so
  metres = (x · 1000 + 1500) / 512 (`depth_metres`). Predictions are not clamped.
- n (surface normals): the angle in degrees between the predicted and the true vector (both
  normalised to unit length; the decoded target is in [−1, 1]³) over valid pixels whose true vector
  is non-zero: `mean_angle_deg` and `within_11_25`, the fraction of those pixels within 11.25°.
- every other task: `l1`, the mean |p − t| over valid pixels × channels in the decoded target units
  (valid = the mask for the masked tasks, every pixel otherwise). Unlike the masked losses, this
  divides by the valid count, so it does not depend on how much of an image is valid.

"Valid pixels" are `batch["mask"]` (bool (B, 1, H, W), as the loader builds it) for tasks that
`Task.masked` says are masked; d and n are masked tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch convention)
from torch import Tensor

from mas_flower.losses import IGNORE_INDEX, MASK_KEY
from mas_flower.tasks import DEPTH_UNITS_PER_METRE, TASKS, Task, parse_tasks

#: Prefix of every key of `TaskMetrics.to_record()` (so a record can also hold other entries).
RECORD_PREFIX = "msum"
#: Normal-angle threshold of `within_11_25`, in degrees.
ANGLE_THRESHOLD_DEG = 11.25
#: Metrics where a higher value is better; every other metric (and every loss) is lower-is-better.
HIGHER_IS_BETTER = frozenset({"miou", "pixel_acc", "within_11_25"})

Sums = dict[str, Tensor]


def depth_metres(x: Tensor) -> Tensor:
    """Decoded depth ((raw − 1500) / 1000, raw in 1/512 m: docs/design.md, section "Taskonomy's encodings")
    back to metres."""
    task = TASKS["d"]
    raw = (x.double() * task.std[0] + task.offset[0]) * task.scale  # the inverse of Task.decode
    return raw / DEPTH_UNITS_PER_METRE


def _valid(task: Task, batch: Mapping[str, Tensor], shape: torch.Size) -> Tensor:
    """Bool (B, H, W): the mask for masked tasks, every pixel otherwise."""
    if not task.masked:
        return torch.ones((shape[0], *shape[-2:]), dtype=torch.bool, device=batch[task.letter].device)
    if MASK_KEY not in batch:
        raise KeyError(f"task {task.letter!r} ({task.domain}) is scored on valid pixels but the batch has no "
                       f"{MASK_KEY!r}; keys: {sorted(batch)}")
    mask = batch[MASK_KEY]
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != shape[0] or mask.shape[-2:] != shape[-2:]:
        raise ValueError(f"task {task.letter!r}: mask must be (B, 1, H, W) = ({shape[0]}, 1, {shape[-2]}, "
                         f"{shape[-1]}), got {tuple(mask.shape)}")
    return mask[:, 0].bool()


def _check_pred(task: Task, pred: Tensor, target: Tensor) -> None:
    want = (target.shape[0], task.out_channels, *target.shape[-2:])
    if pred.ndim != 4 or tuple(pred.shape) != want:
        raise ValueError(f"task {task.letter} ({task.domain}): prediction {tuple(pred.shape)} does not match "
                         f"its target {tuple(target.shape)} (want {want})")


def _segmentation_sums(task: Task, pred: Tensor, batch: Mapping[str, Tensor]) -> Sums:
    target = batch[task.letter]
    if target.ndim == 4 and target.shape[1] == 1:
        target = target[:, 0]
    _check_pred(task, pred, target)
    classes = task.out_channels
    labelled = target != IGNORE_INDEX
    g = target[labelled].long()
    p = pred.argmax(dim=1)[labelled]
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= classes):
        raise ValueError(f"task s: class ids must be in 0..{classes - 1}, got {int(g.min())}..{int(g.max())}")

    def counts(ids: Tensor) -> Tensor:  # per class 1..17
        return torch.bincount(ids, minlength=classes)[1:].double()

    return {"tp": counts(g[p == g]), "pred": counts(p), "true": counts(g)}


def _scalar(a: np.ndarray) -> float:
    """A one-element sum as a float."""
    return float(np.asarray(a).sum())


def _segmentation_metrics(s: Mapping[str, np.ndarray]) -> dict[str, float]:
    union = s["pred"] + s["true"] - s["tp"]
    present = union > 0
    labelled = s["true"].sum()
    return {"miou": float((s["tp"][present] / union[present]).mean()) if present.any() else math.nan,
            "pixel_acc": float(s["tp"].sum() / labelled) if labelled > 0 else math.nan}


def _depth_sums(task: Task, pred: Tensor, batch: Mapping[str, Tensor]) -> Sums:
    target = batch[task.letter]
    _check_pred(task, pred, target)
    g, p = depth_metres(target[:, 0]), depth_metres(pred[:, 0].float())
    valid = _valid(task, batch, target.shape) & (g > 0)
    g, p = g[valid], p[valid]
    return {"abs_rel": ((p - g).abs() / g).sum(), "sq_err_m2": ((p - g) ** 2).sum(),
            "count": valid.sum().double()}


def _depth_metrics(s: Mapping[str, np.ndarray]) -> dict[str, float]:
    n = _scalar(s["count"])
    if n == 0:
        return {"abs_rel": math.nan, "rmse_m": math.nan}
    return {"abs_rel": _scalar(s["abs_rel"]) / n, "rmse_m": math.sqrt(_scalar(s["sq_err_m2"]) / n)}


def _normal_sums(task: Task, pred: Tensor, batch: Mapping[str, Tensor]) -> Sums:
    target = batch[task.letter]
    _check_pred(task, pred, target)
    t, p = target.double(), pred.double()
    valid = _valid(task, batch, target.shape) & (t.norm(dim=1) > 0)
    cos = (F.normalize(p, dim=1) * F.normalize(t, dim=1)).sum(dim=1).clamp(-1.0, 1.0)
    angle = torch.rad2deg(torch.acos(cos))[valid]
    return {"angle_deg": angle.sum(), "within": (angle <= ANGLE_THRESHOLD_DEG).sum().double(),
            "count": valid.sum().double()}


def _normal_metrics(s: Mapping[str, np.ndarray]) -> dict[str, float]:
    n = _scalar(s["count"])
    if n == 0:
        return {"mean_angle_deg": math.nan, "within_11_25": math.nan}
    return {"mean_angle_deg": _scalar(s["angle_deg"]) / n, "within_11_25": _scalar(s["within"]) / n}


def _l1_sums(task: Task, pred: Tensor, batch: Mapping[str, Tensor]) -> Sums:
    target = batch[task.letter]
    _check_pred(task, pred, target)
    valid = _valid(task, batch, target.shape)[:, None].expand_as(target)
    err = (pred.double() - target.double()).abs()[valid]
    return {"abs_err": err.sum(), "count": valid.sum().double()}


def _l1_metrics(s: Mapping[str, np.ndarray]) -> dict[str, float]:
    n = _scalar(s["count"])
    return {"l1": _scalar(s["abs_err"]) / n if n else math.nan}


@dataclass(frozen=True)
class _Kind:
    sums: Callable[[Task, Tensor, Mapping[str, Tensor]], Sums]
    metrics: Callable[[Mapping[str, np.ndarray]], dict[str, float]]
    #: Sum name -> length (1 for a scalar).
    shape: Callable[[Task], dict[str, int]]


_KINDS = {
    "s": _Kind(_segmentation_sums, _segmentation_metrics,
               lambda t: dict.fromkeys(("tp", "pred", "true"), t.out_channels - 1)),
    "d": _Kind(_depth_sums, _depth_metrics, lambda t: dict.fromkeys(("abs_rel", "sq_err_m2", "count"), 1)),
    "n": _Kind(_normal_sums, _normal_metrics, lambda t: dict.fromkeys(("angle_deg", "within", "count"), 1)),
}
_L1 = _Kind(_l1_sums, _l1_metrics, lambda t: dict.fromkeys(("abs_err", "count"), 1))


def _kind(letter: str) -> _Kind:
    return _KINDS.get(letter, _L1)


def metric_names(letter: str) -> tuple[str, ...]:
    """The metrics `TaskMetrics.compute` reports for a task letter, e.g. ("miou", "pixel_acc") for s."""
    task = TASKS[letter]
    empty = {k: np.zeros(n) for k, n in _kind(letter).shape(task).items()}
    return tuple(_kind(letter).metrics(empty))


@torch.no_grad()
def batch_metric_sums(outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor], tasks: str) -> dict[str, Sums]:
    """One batch's metric sums per task letter: {letter: {sum name: float64 tensor}}, on the outputs' device.

    `outputs[c]` is the network's prediction (B, C, H, W) for task c (any float dtype); `batch[c]` its
    target and `batch["mask"]` the valid pixels, as `mas_flower.losses` reads them. Raises KeyError
    for a missing prediction, target or mask and ValueError for mismatched shapes.
    """
    result = {}
    for task in parse_tasks(tasks):
        if task.letter not in outputs:
            raise KeyError(f"network outputs have no prediction for task {task.letter!r}; outputs: "
                           f"{''.join(outputs)!r}")
        if task.letter not in batch:
            raise KeyError(f"batch has no target for task {task.letter!r} ({task.domain}); keys: {sorted(batch)}")
        sums = _kind(task.letter).sums(task, outputs[task.letter], batch)
        result[task.letter] = {k: v.double().reshape(-1) for k, v in sums.items()}
    return result


class TaskMetrics:
    """Running metric sums of the tasks `tasks` (one network's, or a whole task set's after merging;
    `TaskMetrics("")` is an empty accumulator to merge others into).

    `update(outputs, batch)` adds one batch (call it inside `evaluate`'s loop on the same outputs
    the losses use); `merge` adds the sums of another accumulator (another client, or another
    network that serves other tasks); `compute()` gives {letter: {metric: value}}. Sums stay float64
    tensors on the device of the outputs until read, so updating never synchronises with a GPU.
    """

    def __init__(self, tasks: str) -> None:
        self.tasks = "".join(t.letter for t in parse_tasks(tasks)) if tasks else ""
        self._sums: dict[str, dict[str, Tensor]] = {
            c: {k: torch.zeros(n, dtype=torch.float64) for k, n in _kind(c).shape(TASKS[c]).items()}
            for c in self.tasks}

    def update(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> None:
        for c, sums in batch_metric_sums(outputs, batch, self.tasks).items():
            for k, v in sums.items():
                acc = self._sums[c][k]
                self._sums[c][k] = acc.to(v.device) + v

    def merge(self, other: TaskMetrics) -> TaskMetrics:
        """Add `other`'s sums into this one (tasks this one lacks are added); returns self."""
        for c in other.tasks:
            if c not in self._sums:
                self.tasks += c
                self._sums[c] = {k: v.clone() for k, v in other._sums[c].items()}
                continue
            for k, v in other._sums[c].items():
                self._sums[c][k] = self._sums[c][k].to(v.device) + v
        return self

    def sums(self) -> dict[str, dict[str, np.ndarray]]:
        """The raw sums as float64 arrays (for tests and for inspection)."""
        return {c: {k: v.detach().cpu().numpy() for k, v in s.items()} for c, s in self._sums.items()}

    def compute(self) -> dict[str, dict[str, float]]:
        """{letter: {metric: value}}; NaN where a task had no valid pixel (e.g. an empty split)."""
        return {c: _kind(c).metrics(s) for c, s in self.sums().items()}

    def to_record(self) -> dict[str, list[float]]:
        """Flat form for a Flower MetricRecord: `msum.<letter>.<sum name>` -> list of floats."""
        return {f"{RECORD_PREFIX}.{c}.{k}": v.tolist() for c, s in self.sums().items() for k, v in s.items()}

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> TaskMetrics:
        """Rebuild from `to_record`'s entries (other keys are ignored); wrong lengths raise ValueError."""
        found: dict[str, dict[str, list[float]]] = {}
        for key, value in record.items():
            prefix, _, rest = key.partition(".")
            if prefix != RECORD_PREFIX:
                continue
            letter, _, name = rest.partition(".")
            found.setdefault(letter, {})[name] = list(value) if isinstance(value, (list, tuple)) else [value]
        out = cls("".join(found))
        for c, sums in found.items():
            want = _kind(c).shape(TASKS[c])
            if set(sums) != set(want):
                raise ValueError(f"metric record for task {c!r} has sums {sorted(sums)}, expected {sorted(want)}")
            for k, n in want.items():
                if len(sums[k]) != n:
                    raise ValueError(f"metric record {RECORD_PREFIX}.{c}.{k}: {len(sums[k])} values, expected {n}")
                out._sums[c][k] = torch.tensor(sums[k], dtype=torch.float64)
        return out


def sum_records(records: Iterable[Mapping[str, object]]) -> TaskMetrics:
    """The sum of several clients' `to_record()` dicts (e.g. the MetricRecords of one round's replies;
    other keys are ignored). Note that Flower's default metric aggregation takes an example-weighted
    *mean* per key, which is wrong for these sums: aggregate with this instead."""
    total = TaskMetrics("")
    for record in records:
        total.merge(TaskMetrics.from_record(record))
    return total


# Δm% ----------------------------------------------------------------------------------------------

def delta_m(method: Mapping[str, Mapping[str, float]], baseline: Mapping[str, Mapping[str, float]]) -> float:
    """Δm% of `method` against `baseline` (one-by-one), Maninis et al., "Attentive Single-Tasking of
    Multiple Tasks", CVPR 2019 (the multi-task performance measure of its experiments; the same
    form is used by Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey",
    TPAMI 2021):

        Δm = 100 / T · Σ_t (−1)^{l_t} (M_m,t − M_b,t) / M_b,t,   l_t = 1 if lower is better for M_t, else 0.

    So a positive Δm% means better than the baseline. Inputs are {task letter: {metric: value}}
    (e.g. `TaskMetrics.compute()`, or {letter: {"loss": test loss}}). A task with several metrics
    (s: miou and pixel_acc) contributes the mean of its metrics' signed relative changes, so every
    task weighs the same, as "the mean over tasks" says. Metrics in `HIGHER_IS_BETTER` are
    higher-is-better; every other name (losses, errors, angles) lower-is-better.

    Uses the tasks and metrics both have; raises ValueError if none is shared, or if a baseline value
    is 0 or not finite (no relative change exists).
    """
    per_task = []
    for letter in baseline:
        if letter not in method:
            continue
        shared = [m for m in baseline[letter] if m in method[letter]]
        changes = []
        for m in shared:
            base, value = float(baseline[letter][m]), float(method[letter][m])
            if base == 0 or not math.isfinite(base):
                raise ValueError(f"Δm%: baseline {letter}.{m} = {base}; a relative change needs a finite, "
                                 "non-zero baseline")
            sign = 1.0 if m in HIGHER_IS_BETTER else -1.0
            changes.append(sign * (value - base) / base)
        if changes:
            per_task.append(sum(changes) / len(changes))
    if not per_task:
        raise ValueError(f"Δm%: no task metric shared by the method ({sorted(method)}) and the baseline "
                         f"({sorted(baseline)})")
    return 100.0 * sum(per_task) / len(per_task)
