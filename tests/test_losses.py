"""Task losses against direct hand computations on small tensors (docs/design.md, section "Taskonomy's encodings")."""

from __future__ import annotations

import math

import pytest
import torch

from mas_flower.losses import (
    cross_entropy,
    l1,
    masked_l1,
    shift_masked_l1,
    task_loss,
    task_losses,
    total_loss,
)
from mas_flower.tasks import TASKS


def test_loss_kinds_of_the_task_table():
    kinds = {c: t.loss for c, t in TASKS.items()}
    assert kinds == {"s": "cross_entropy", "d": "shift_masked_l1", "n": "shift_masked_l1", "k": "l1", "t": "l1",
                     "e": "masked_l1", "r": "masked_l1", "c": "masked_l1", "a": "l1"}


def test_cross_entropy_ignores_class_zero():
    logits = torch.tensor([[[[2.0, 0.0]], [[1.0, 3.0]], [[0.5, -1.0]]]])  # (1, 3 classes, 1, 2)
    target = torch.tensor([[[2, 0]]])  # second pixel unlabelled
    # Only pixel 0 counts: -log softmax([2, 1, 0.5])[2].
    expected = -(0.5 - math.log(math.exp(2.0) + math.exp(1.0) + math.exp(0.5)))
    assert cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # Changing the logits of the ignored pixel changes nothing.
    logits2 = logits.clone()
    logits2[..., 1] = torch.tensor([9.0, -9.0, 4.0]).view(1, 3, 1)
    assert cross_entropy(logits2, target).item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_mean_over_labelled_pixels_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 18, 3, 3, generator=g)
    target = torch.randint(0, 18, (2, 3, 3), generator=g)
    target[0, 0, 0] = 0
    target[1, 2, 1] = 0
    logp = torch.log_softmax(logits, dim=1)
    terms = [-logp[b, target[b, y, x], y, x] for b in range(2) for y in range(3) for x in range(3)
             if target[b, y, x] != 0]
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(task_loss(TASKS["s"], logits, {"s": target}), expected)


def test_cross_entropy_with_no_labelled_pixel_is_zero_not_nan():
    logits = torch.randn(2, 18, 4, 4, requires_grad=True)
    loss = task_loss("s", logits, {"s": torch.zeros(2, 4, 4, dtype=torch.long)})
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_l1_is_mean_absolute_error():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[0.0, 2.0], [5.0, 4.5]]]])
    assert l1(pred, target).item() == pytest.approx((1 + 0 + 2 + 0.5) / 4)
    assert task_loss("k", pred, {"k": target}).item() == pytest.approx(0.875)


def test_masked_l1_divides_by_all_pixels_and_channels():
    pred = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[[1.0, 2.0], [3.0, 100.0]], [[-1.0, 0.5], [2.0, 100.0]]]])
    mask = torch.tensor([[[[True, True], [True, False]]]])
    # The huge errors sit on the masked pixel; the sum of the rest is divided by 2 x 2 x 2 = 8, not by 6.
    expected = (1 + 2 + 3 + 1 + 0.5 + 2) / 8
    assert masked_l1(pred, target, mask).item() == pytest.approx(expected)
    assert task_loss("c", pred, {"c": target, "mask": mask}).item() == pytest.approx(expected)


def test_masked_l1_all_masked_is_zero():
    pred = torch.randn(2, 1, 3, 3)
    assert masked_l1(pred, torch.randn(2, 1, 3, 3), torch.zeros(2, 1, 3, 3, dtype=torch.bool)).item() == 0.0


def _shift_loss_by_hand(pred, target, mask):
    b, c, h, w = pred.shape
    per_sample = []
    for i in range(b):
        best = None
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                s = 0.0
                for ch in range(c):
                    for y in range(1, h - 1):
                        for x in range(1, w - 1):
                            if mask[i, 0, y, x]:
                                s += abs(float(pred[i, ch, y + dy, x + dx]) - float(target[i, ch, y, x]))
                v = s / (c * (h - 2) * (w - 2))
                best = v if best is None else min(best, v)
        per_sample.append(best)
    return sum(per_sample) / b


def test_shift_masked_l1_matches_hand_computation():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(3, 2, 5, 6, generator=g)
    target = torch.randn(3, 2, 5, 6, generator=g)
    mask = torch.rand(3, 1, 5, 6, generator=g) > 0.3
    assert shift_masked_l1(pred, target, mask).item() == pytest.approx(_shift_loss_by_hand(pred, target, mask),
                                                                        rel=1e-5)


def test_shift_masked_l1_tolerates_one_pixel_shift_per_sample():
    g = torch.Generator().manual_seed(2)
    target = torch.randn(2, 3, 8, 8, generator=g)
    mask = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    pred = torch.randn(2, 3, 8, 8, generator=g)  # borders stay random: they must not matter
    # Sample 0 predicts the target shifted down-right, sample 1 up-left (different shifts per sample).
    pred[0, :, 1:, 1:] = target[0, :, :-1, :-1]
    pred[1, :, :-1, :-1] = target[1, :, 1:, 1:]
    assert shift_masked_l1(pred, target, mask).item() == pytest.approx(0.0, abs=1e-7)
    assert masked_l1(pred, target, mask).item() > 0.5  # plain masked L1 is far from 0
    # Shifted by two pixels it is not tolerated.
    pred2 = torch.roll(target, shifts=2, dims=3)
    assert shift_masked_l1(pred2, target, mask).item() > 0.3


def test_shift_masked_l1_ignores_masked_pixels_and_divides_by_all_crop_pixels():
    target = torch.zeros(1, 1, 4, 4)
    pred = torch.zeros(1, 1, 4, 4)
    pred[0, 0, 1, 1] = 1000.0  # a huge error on a masked pixel
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1:3, 1:3] = False  # the whole 2x2 crop is masked: nothing counts
    assert shift_masked_l1(pred, target, mask).item() == 0.0
    # One valid crop pixel with error 2 everywhere: 2 / (1 x 2 x 2) whatever the shift.
    mask[0, 0, 1, 1] = True
    pred = torch.full((1, 1, 4, 4), 2.0)
    assert shift_masked_l1(pred, target, mask).item() == pytest.approx(0.5)


def test_task_loss_needs_mask_for_masked_tasks():
    pred = torch.zeros(1, 1, 4, 4)
    with pytest.raises(KeyError, match="'d'.*no 'mask'"):
        task_loss("d", pred, {"d": torch.zeros(1, 1, 4, 4)})


def test_task_loss_checks_shapes():
    with pytest.raises(ValueError, match=r"task n .*prediction must be \(B, 3, H, W\)"):
        task_loss("n", torch.zeros(1, 1, 4, 4), {"n": torch.zeros(1, 1, 4, 4), "mask": torch.ones(1, 1, 4, 4)})
    with pytest.raises(ValueError, match="target shape"):
        task_loss("k", torch.zeros(1, 1, 4, 4), {"k": torch.zeros(1, 1, 4, 5)})
    with pytest.raises(KeyError, match="no target for task 'k'"):
        task_loss("k", torch.zeros(1, 1, 4, 4), {"t": torch.zeros(1, 1, 4, 4)})


def test_task_losses_and_total_is_sum():
    g = torch.Generator().manual_seed(3)
    tasks = "sdk"
    out = {"s": torch.randn(2, 18, 4, 4, generator=g), "d": torch.randn(2, 1, 4, 4, generator=g),
           "k": torch.randn(2, 1, 4, 4, generator=g)}
    batch = {"s": torch.randint(0, 18, (2, 4, 4), generator=g), "d": torch.randn(2, 1, 4, 4, generator=g),
             "k": torch.randn(2, 1, 4, 4, generator=g), "mask": torch.rand(2, 1, 4, 4, generator=g) > 0.5}
    losses = task_losses(out, batch, tasks)
    assert list(losses) == ["s", "d", "k"]
    assert losses["k"].item() == pytest.approx(l1(out["k"], batch["k"]).item())
    assert losses["d"].item() == pytest.approx(shift_masked_l1(out["d"], batch["d"], batch["mask"]).item())
    total = total_loss(losses)
    assert total.item() == pytest.approx(sum(v.item() for v in losses.values()))
    with pytest.raises(KeyError, match="no prediction for task"):
        task_losses({"s": out["s"]}, batch, "sk")


def test_low_precision_predictions_give_float32_losses():
    pred = torch.randn(2, 1, 4, 4).bfloat16()
    loss = task_loss("t", pred, {"t": torch.randn(2, 1, 4, 4)})
    assert loss.dtype == torch.float32
