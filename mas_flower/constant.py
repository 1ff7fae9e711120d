"""The best constant predictor of every task, its loss, and skill = 1 − loss / constant loss.

A network that ends barely better than predicting one constant everywhere has learnt nothing that
tasks could share, so every comparison of methods built on it measures noise. Skill says how far a
network is from that floor, per task, on the task's own loss and mask (`mas_flower.losses`):

- L1 losses (plain, masked, shift-tolerant): the best constant under L1 is the median, per channel,
  of the training labels over the pixels the loss counts (valid pixels for masked tasks). For the
  shift-tolerant loss a constant prediction gives the same value at every shift, so the median is
  still the best constant up to the one-pixel border it crops.
- Cross entropy (segmentation): the best constant logits are the log class frequencies of the
  training labels over labelled pixels (class 0 is ignored and gets a logit of `ABSENT_LOGIT`).
  Frequencies are Laplace-smoothed (one pseudo-count per class), so that a class absent from the
  training labels but present in the test gives a finite loss.

No raw data leaves a node: each client sums a `LabelHistogram` of its training labels (class counts;
per-channel counts of the decoded values on a grid of `GRID` target units); the server adds them up
(`best_constants`), sends the constants with every evaluation, and clients report the constant's
loss on the same data and batches as the network's (`constant_losses`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from mas_flower.losses import IGNORE_INDEX, MASK_KEY, task_loss
from mas_flower.tasks import TASKS, Task, parse_tasks

if TYPE_CHECKING:
    from mas_flower.training import SplitData

#: Width of the histogram bins of regression labels, in decoded target units (medians are exact to
#: half of it; every loss we report is at least two orders of magnitude above it).
GRID = 1e-3
#: Logit of the ignored class 0 in the constant segmentation prediction (probability ~0).
ABSENT_LOGIT = -30.0
#: Record key prefix of a histogram (`LabelHistogram.to_record`).
RECORD_PREFIX = "lhist"
#: A network whose final test skill on a task is below this is warned about (docs/results.md, section
#: "Did the networks learn?").
LOW_SKILL = 0.1


class LabelHistogram:
    """Label counts of tasks `tasks`, mergeable across batches and clients.

    Segmentation: counts per class id 0..C−1 over labelled pixels (class 0 always 0). Other tasks:
    per channel, a sparse histogram {grid index: count} of the decoded target (grid index =
    round(value / GRID)) over the pixels the task's loss counts.
    """

    def __init__(self, tasks: str) -> None:
        self.tasks = "".join(t.letter for t in parse_tasks(tasks)) if tasks else ""
        self.classes: dict[str, np.ndarray] = {}
        self.bins: dict[str, list[dict[int, int]]] = {}
        for task in parse_tasks(self.tasks) if self.tasks else []:
            self._add_task(task)

    def _add_task(self, task: Task) -> None:
        if task.is_classification:
            self.classes[task.letter] = np.zeros(task.out_channels, dtype=np.int64)
        else:
            self.bins[task.letter] = [{} for _ in range(task.out_channels)]

    def update(self, batch: Mapping[str, Tensor]) -> None:
        """Add one batch's labels (a batch as `mas_flower.losses` reads it: targets and `mask`)."""
        for task in parse_tasks(self.tasks) if self.tasks else []:
            target = batch[task.letter]
            if task.is_classification:
                ids = target.reshape(-1).long()
                ids = ids[ids != IGNORE_INDEX].cpu()
                self.classes[task.letter] += torch.bincount(ids, minlength=task.out_channels).numpy()[
                    :task.out_channels]
                continue
            valid = batch[MASK_KEY][:, 0].bool() if task.masked else None
            for c, counts in enumerate(self.bins[task.letter]):
                values = target[:, c]
                values = values[valid] if valid is not None else values.reshape(-1)
                index, n = torch.unique(torch.round(values.double() / GRID).long().cpu(), return_counts=True)
                for i, k in zip(index.tolist(), n.tolist(), strict=True):
                    counts[i] = counts.get(i, 0) + k

    def merge(self, other: LabelHistogram) -> LabelHistogram:
        """Add `other`'s counts into this histogram (tasks this one lacks are added); returns self."""
        for letter in other.tasks:
            if letter not in self.tasks:
                self.tasks += letter
                self._add_task(TASKS[letter])
        for letter, counts in other.classes.items():
            self.classes[letter] = self.classes[letter] + counts
        for letter, channels in other.bins.items():
            for mine, theirs in zip(self.bins[letter], channels, strict=True):
                for i, k in theirs.items():
                    mine[i] = mine.get(i, 0) + k
        return self

    def to_record(self) -> dict[str, list[int]]:
        """Flat form for a Flower ConfigRecord or MetricRecord: `lhist.<letter>.classes` (counts) and
        `lhist.<letter>.<channel>.index` / `.count` (sparse bins), lists of ints."""
        out: dict[str, list[int]] = {}
        for letter, counts in self.classes.items():
            out[f"{RECORD_PREFIX}.{letter}.classes"] = [int(k) for k in counts]
        for letter, channels in self.bins.items():
            for c, bins in enumerate(channels):
                keys = sorted(bins)
                out[f"{RECORD_PREFIX}.{letter}.{c}.index"] = keys
                out[f"{RECORD_PREFIX}.{letter}.{c}.count"] = [bins[i] for i in keys]
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> LabelHistogram:
        """Rebuild from `to_record`'s entries (other keys are ignored). Raises ValueError naming the key
        of a malformed entry (wrong class count, index and count lists of different lengths)."""
        letters = {str(k).split(".")[1] for k in record if str(k).startswith(RECORD_PREFIX + ".")}
        out = cls("".join(c for c in TASKS if c in letters))
        for letter in out.classes:
            key = f"{RECORD_PREFIX}.{letter}.classes"
            counts = list(record.get(key, []))  # type: ignore[call-overload]
            if len(counts) != len(out.classes[letter]):
                raise ValueError(f"label histogram {key}: {len(counts)} counts, expected {len(out.classes[letter])}")
            out.classes[letter] = np.asarray(counts, dtype=np.int64)
        for letter, channels in out.bins.items():
            for c, bins in enumerate(channels):
                key = f"{RECORD_PREFIX}.{letter}.{c}"
                index = list(record.get(f"{key}.index", []))  # type: ignore[call-overload]
                count = list(record.get(f"{key}.count", []))  # type: ignore[call-overload]
                if len(index) != len(count):
                    raise ValueError(f"label histogram {key}: {len(index)} bins but {len(count)} counts")
                bins.update({int(i): int(k) for i, k in zip(index, count, strict=True)})
        return out


def weighted_median(bins: Mapping[int, int]) -> float:
    """The lower median of a sparse histogram {grid index: count}, in target units (index × GRID).

    Any value between the lower and the upper median minimises the summed absolute error; the lower
    one is taken. Raises ValueError for an empty histogram.
    """
    total = sum(bins.values())
    if total <= 0:
        raise ValueError("median of an empty label histogram")
    seen = 0
    for index in sorted(bins):
        seen += bins[index]
        if 2 * seen >= total:
            return index * GRID
    raise AssertionError("unreachable")


def log_frequencies(counts: np.ndarray) -> list[float]:
    """Constant segmentation logits: log of the Laplace-smoothed frequencies of classes 1..C−1
    ((count + 1) / (labelled + C − 1)), `ABSENT_LOGIT` for the ignored class 0."""
    counts = np.asarray(counts, dtype=np.float64)
    kept = counts[1:] + 1.0
    return [ABSENT_LOGIT, *np.log(kept / kept.sum()).tolist()]


def best_constants(hist: LabelHistogram) -> dict[str, list[float]]:
    """Task letter -> the best constant prediction per output channel (logits for segmentation).

    A regression channel without any counted pixel gets 0 (the decoded mean of Taskonomy's
    normalisation), so that a run never fails for lack of a floor; its skill is then just lower.
    """
    out = {letter: log_frequencies(counts) for letter, counts in hist.classes.items()}
    for letter, channels in hist.bins.items():
        out[letter] = [weighted_median(b) if b else 0.0 for b in channels]
    return {c: out[c] for c in hist.tasks}


def constant_prediction(task: Task, constant: Iterable[float], like: Tensor) -> Tensor:
    """The constant prediction (B, C, H, W) shaped as the target `like` ((B, H, W) ids for
    segmentation, (B, C, H, W) otherwise). Raises ValueError for a wrong number of channels."""
    values = torch.as_tensor(list(constant), dtype=torch.float32, device=like.device)
    if values.numel() != task.out_channels:
        raise ValueError(f"task {task.letter} ({task.domain}): constant has {values.numel()} values, "
                         f"expected {task.out_channels}")
    b, h, w = like.shape[0], like.shape[-2], like.shape[-1]
    return values.view(1, -1, 1, 1).expand(b, -1, h, w)


def constant_losses(constants: Mapping[str, Iterable[float]], batch: Mapping[str, Tensor], tasks: str
                    ) -> dict[str, Tensor]:
    """The loss of the constant prediction of each task in `tasks` on one batch (the task's own loss)."""
    out = {}
    for task in parse_tasks(tasks):
        if task.letter not in constants:
            raise KeyError(f"no constant prediction for task {task.letter!r}; have {sorted(constants)}")
        pred = constant_prediction(task, constants[task.letter], batch[task.letter])
        out[task.letter] = task_loss(task, pred, batch)
    return out


def skill(loss: float, constant_loss: float) -> float:
    """1 − loss / constant loss: 1 is a perfect network, 0 no better than the constant, < 0 worse.
    NaN when the constant's loss is not positive (a task whose labels are one constant)."""
    if not constant_loss > 0 or not math.isfinite(constant_loss):
        return math.nan
    return 1.0 - loss / constant_loss


def skills(losses: Mapping[str, float], constant: Mapping[str, float]) -> dict[str, float]:
    """`skill` for every task present in both."""
    return {c: skill(float(v), float(constant[c])) for c, v in losses.items() if c in constant}


def histogram_of(data: SplitData, tasks: str, batch_size: int = 64) -> LabelHistogram:
    """The label histogram of a whole split (no augmentation: the labels as stored)."""
    hist = LabelHistogram(tasks)
    for batch in data.device_batches("cpu", batch_size, shuffle=False, augment=False):
        hist.update(batch)
    return hist


def evaluate_constants(data: SplitData, constants: Mapping[str, Iterable[float]], tasks: str,
                       batch_size: int = 64) -> dict[str, float]:
    """Example-weighted mean loss per task of the constant predictions over `data`, batched as
    `mas_flower.training.evaluate` batches it, so the two means weigh the same samples alike."""
    sums = dict.fromkeys(tasks, 0.0)
    seen = 0
    for batch in data.device_batches("cpu", batch_size, shuffle=False, augment=False):
        size = batch["rgb"].shape[0]
        for c, v in constant_losses(constants, batch, tasks).items():
            sums[c] += float(v) * size
        seen += size
    if seen == 0:
        raise ValueError("evaluate_constants: the split is empty")
    return {c: v / seen for c, v in sums.items()}
