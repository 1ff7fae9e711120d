"""Per-task losses, chosen by `Task.loss`, and the total loss (their sum): docs/design.md, section
"Taskonomy's encodings".

Everything is computed in float32 whatever the prediction's dtype (bf16 autocast), as the reference
does. A batch is a dict: the target of task `c` is `batch[c]` (long class ids (B, H, W) for
segmentation, float (B, C, H, W) otherwise) and masked tasks read the valid-pixel mask
`batch["mask"]` (bool (B, 1, H, W)); other keys (the images) are ignored here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch convention)
from torch import Tensor

from mas_flower.tasks import TASKS, Task, parse_tasks

#: Segmentation class id that marks unlabelled pixels.
IGNORE_INDEX = 0
MASK_KEY = "mask"


def cross_entropy(pred: Tensor, target: Tensor) -> Tensor:
    """Mean cross entropy over labelled pixels (class id != 0).

    A batch with no labelled pixel gives 0 (with a zero gradient), not the NaN of
    `F.cross_entropy` (0/0): such batches happen on small crops and must not poison training.
    """
    if target.ndim == pred.ndim and target.shape[1] == 1:
        target = target[:, 0]
    target = target.long()
    labelled = (target != IGNORE_INDEX).sum()
    total = F.cross_entropy(pred.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / labelled.clamp(min=1)


def l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over every pixel and channel."""
    return F.l1_loss(pred.float(), target.float())


def _masked_abs(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    return (pred.float() - target.float()).abs() * mask.to(torch.float32)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Sum of |pred - target| over valid pixels, divided by ALL pixels x channels (masked or not).

    The reference divides by every pixel, so an image with few valid pixels weighs less and the
    loss scale is the one the paper's tables report; dividing by the valid count would change the
    numbers we compare with. It also needs no guard for an all-masked batch.
    """
    return _masked_abs(pred, target, mask).mean()


def shift_masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """The reference's "rotate loss": masked L1 that tolerates a one-pixel misalignment.

    Target and mask lose one pixel at every border; the prediction is compared at the 9 offsets
    (-1, 0, +1) in y and x; each sample's masked L1 (divided by all pixels of the crop, as in
    `masked_l1`) is minimised over the 9 offsets; the minima are averaged over the batch.
    """
    h, w = target.shape[-2:]
    if h < 3 or w < 3:
        raise ValueError(f"shift_masked_l1 needs images of at least 3x3 pixels, got {h}x{w}")
    t = target[..., 1:-1, 1:-1]
    m = mask[..., 1:-1, 1:-1]
    per_shift = [
        _masked_abs(pred[..., 1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx], t, m).mean(dim=(1, 2, 3))
        for dy in (-1, 0, 1) for dx in (-1, 0, 1)
    ]
    return torch.stack(per_shift).amin(dim=0).mean()


def _check_shapes(task: Task, pred: Tensor, target: Tensor, mask: Tensor | None) -> None:
    b, c, h, w = pred.shape if pred.ndim == 4 else (None,) * 4
    if pred.ndim != 4 or c != task.out_channels:
        raise ValueError(f"task {task.letter} ({task.domain}): prediction must be "
                         f"(B, {task.out_channels}, H, W), got {tuple(pred.shape)}")
    want = (b, h, w) if task.is_classification else (b, c, h, w)
    got = tuple(target.shape)
    if task.is_classification and target.ndim == 4 and target.shape[1] == 1:
        got = (got[0], *got[2:])
    if got != want:
        raise ValueError(f"task {task.letter} ({task.domain}): target shape {tuple(target.shape)} does not "
                         f"match prediction {tuple(pred.shape)} (want {want})")
    if mask is not None and tuple(mask.shape) != (b, 1, h, w):
        raise ValueError(f"task {task.letter} ({task.domain}): mask must be (B, 1, H, W) = "
                         f"({b}, 1, {h}, {w}), got {tuple(mask.shape)}")


def task_loss(task: Task | str, pred: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
    """The loss of one task's prediction against `batch[task.letter]` (and `batch["mask"]` if masked)."""
    task = TASKS[task] if isinstance(task, str) else task
    if task.letter not in batch:
        raise KeyError(f"batch has no target for task {task.letter!r} ({task.domain}); keys: {sorted(batch)}")
    target = batch[task.letter]
    mask = None
    if task.masked:
        if MASK_KEY not in batch:
            raise KeyError(f"task {task.letter!r} ({task.domain}) uses a masked loss but the batch has no "
                           f"{MASK_KEY!r}; keys: {sorted(batch)}")
        mask = batch[MASK_KEY]
    _check_shapes(task, pred, target, mask)
    if task.loss == "cross_entropy":
        return cross_entropy(pred, target)
    if task.loss == "l1":
        return l1(pred, target)
    if task.loss == "masked_l1":
        return masked_l1(pred, target, mask)
    if task.loss == "shift_masked_l1":
        return shift_masked_l1(pred, target, mask)
    raise ValueError(f"task {task.letter!r}: unknown loss kind {task.loss!r}")


def task_losses(outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor], tasks: str) -> dict[str, Tensor]:
    """Loss per task letter, in the order of `tasks`."""
    missing = [c for c in tasks if c not in outputs]
    if missing:
        raise KeyError(f"network outputs have no prediction for task(s) {''.join(missing)!r}; "
                       f"outputs: {''.join(outputs)!r}")
    return {t.letter: task_loss(t, outputs[t.letter], batch) for t in parse_tasks(tasks)}


def total_loss(losses: Mapping[str, Tensor]) -> Tensor:
    """The SUM of the task losses (not the mean): the training objective and the reported total."""
    if not losses:
        raise ValueError("total_loss of no task losses")
    return torch.stack([v.float() for v in losses.values()]).sum()
