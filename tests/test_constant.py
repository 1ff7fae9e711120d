"""The best constant predictor, its loss and skill (mas_flower.constant), by hand on small asymmetric tensors.

Every number below is computed by hand in the comment next to it: unequal counts, channels whose medians
differ, several batches and clients merged, and masked pixels holding extreme values that would move the
answer if the mask were ignored.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mas_flower.constant import (
    ABSENT_LOGIT,
    GRID,
    LabelHistogram,
    best_constants,
    constant_losses,
    constant_prediction,
    evaluate_constants,
    histogram_of,
    log_frequencies,
    skill,
    skills,
)
from mas_flower.constant import weighted_median as wmedian
from mas_flower.tasks import TASKS

T, F = True, False


def _mask(rows: list) -> torch.Tensor:
    """Bool (B, 1, H, W) from nested (B, H, W) lists."""
    return torch.tensor(rows, dtype=torch.bool)[:, None]


def _client_a_batch() -> dict[str, torch.Tensor]:
    """Tasks s and n, B=2, 2x2 pixels; 4 of the 8 pixels masked out (they hold ±100 / 0.9)."""
    mask = _mask([[[T, T], [F, T]],
                  [[T, F], [F, F]]])
    normals = torch.tensor([
        [[[0.5, 0.5], [100.0, -0.25]],      # sample 0, channel 0 (valid: 0.5, 0.5, -0.25)
         [[-0.5, 0.125], [-100.0, 0.125]],  # channel 1 (valid: -0.5, 0.125, 0.125)
         [[0.75, 0.001], [0.9, 0.002]]],    # channel 2 (valid: 0.75, 0.001, 0.002)
        [[[0.25, 100.0], [100.0, 100.0]],   # sample 1, only (0, 0) valid: 0.25
         [[0.125, -100.0], [-100.0, -100.0]],  # 0.125
         [[0.75, 0.9], [0.9, 0.9]]],        # 0.75
    ])
    seg = torch.tensor([[[1, 3], [0, 3]],
                        [[3, 17], [0, 1]]])  # class 0 twice (ignored)
    return {"rgb": torch.zeros(2, 3, 2, 2), "mask": mask, "s": seg, "n": normals}


def _client_b_batch() -> dict[str, torch.Tensor]:
    """Tasks n, k, s, B=1, 1x3 pixels; the last pixel masked (n holds 7 there; k is unmasked)."""
    return {
        "rgb": torch.zeros(1, 3, 1, 3),
        "mask": _mask([[[T, T, F]]]),
        "n": torch.tensor([[[[0.5, 0.5, 7.0]], [[-0.5, -0.5, 7.0]], [[0.002, 0.003, 7.0]]]]),
        "k": torch.tensor([[[[0.3, -0.1, 0.3]]]]),
        "s": torch.tensor([[[3, 0, 2]]]),
    }


# --- LabelHistogram ---------------------------------------------------------------------------------


def test_update_counts_classes_without_zero_and_valid_pixels_per_channel():
    hist = LabelHistogram("sn")
    hist.update(_client_a_batch())
    # s: ids 1,3,0,3 | 3,17,0,1 -> class 1: 2, class 3: 3, class 17: 1; the two 0s are not counted
    want = np.zeros(18, dtype=np.int64)
    want[1], want[3], want[17] = 2, 3, 1
    assert hist.classes["s"].tolist() == want.tolist()
    # n over the 4 valid pixels, index = round(value / 1e-3); the ±100 / 0.9 of masked pixels never appear
    assert hist.bins["n"] == [
        {500: 2, -250: 1, 250: 1},  # 0.5, 0.5, -0.25 | 0.25
        {-500: 1, 125: 3},          # -0.5, 0.125, 0.125 | 0.125
        {750: 2, 1: 1, 2: 1},       # 0.75, 0.001, 0.002 | 0.75
    ]
    # lower medians (4 values each): ch0 -0.25,0.25,[0.5],0.5 -> 2nd = 0.25; ch1 -0.5,[0.125] -> 0.125;
    # ch2 0.001,[0.002],0.75,0.75 -> 0.002. Counting the masked pixels would give 0.5, -100, 0.75 instead.
    assert best_constants(hist)["n"] == pytest.approx([0.25, 0.125, 0.002], abs=1e-12)


def test_update_twice_adds_and_unmasked_task_counts_every_pixel():
    hist = LabelHistogram("k")
    batch = _client_b_batch()
    hist.update(batch)
    hist.update(batch)
    # k is unmasked: all 3 pixels, twice: 0.3 x4, -0.1 x2 (the mask's False on the 3rd pixel is ignored)
    assert hist.bins["k"] == [{300: 4, -100: 2}]


def test_merge_of_two_clients_adds_counts_and_tasks():
    a = LabelHistogram("sn")
    a.update(_client_a_batch())
    b = LabelHistogram("nks")
    b.update(_client_b_batch())
    merged = a.merge(b)
    assert merged is a
    assert merged.tasks == "snk"  # a's order, then b's missing task k
    # s: a (1: 2, 3: 3, 17: 1) + b (3: 1, 2: 1; its 0 ignored)
    want = np.zeros(18, dtype=np.int64)
    want[1], want[2], want[3], want[17] = 2, 1, 4, 1
    assert merged.classes["s"].tolist() == want.tolist()
    # n: a's bins + b's two valid pixels (the 7s are masked)
    assert merged.bins["n"] == [
        {500: 4, -250: 1, 250: 1},
        {-500: 3, 125: 3},
        {750: 2, 1: 1, 2: 2, 3: 1},
    ]
    assert merged.bins["k"] == [{300: 2, -100: 1}]
    # medians of 6 values: ch0 -0.25,0.25,[0.5]... -> 3rd = 0.5; ch1 -0.5 x3 -> 3rd = -0.5;
    # ch2 0.001,0.002,[0.002],0.003,0.75,0.75 -> 0.002; k -0.1,[0.3],0.3 -> 0.3
    consts = best_constants(merged)
    assert list(consts) == ["s", "n", "k"]
    assert consts["n"] == pytest.approx([0.5, -0.5, 0.002], abs=1e-12)
    assert consts["k"] == pytest.approx([0.3], abs=1e-12)
    # b was not changed by the merge
    assert b.bins["n"][0] == {500: 2}


def test_record_round_trip_is_exact():
    a = LabelHistogram("sn")
    a.update(_client_a_batch())
    a.merge(LabelHistogram("nks")).merge(_updated("nks", _client_b_batch()))
    record = a.to_record()
    assert record["lhist.n.0.index"] == [-250, 250, 500]  # sorted indices, counts aligned with them
    assert record["lhist.n.0.count"] == [1, 1, 4]
    # n ch2 gets index 3 from the second client after 750 from the first: the record still sorts them
    assert record["lhist.n.2.index"] == [1, 2, 3, 750]
    assert record["lhist.n.2.count"] == [1, 2, 1, 2]
    assert record["lhist.k.0.index"] == [-100, 300]
    assert record["lhist.k.0.count"] == [1, 2]
    assert len(record["lhist.s.classes"]) == 18
    back = LabelHistogram.from_record({**record, "other.key": [1, 2, 3]})  # foreign keys are ignored
    assert back.to_record() == record
    assert back.bins == a.bins
    assert {c: v.tolist() for c, v in back.classes.items()} == {c: v.tolist() for c, v in a.classes.items()}
    assert set(back.tasks) == set("snk")


def _updated(tasks: str, batch: dict[str, torch.Tensor]) -> LabelHistogram:
    hist = LabelHistogram(tasks)
    hist.update(batch)
    return hist


def test_from_record_rejects_malformed_entries_naming_the_key():
    record = _updated("sn", _client_a_batch()).to_record()
    bad_bins = {**record, "lhist.n.1.index": [-500, 125], "lhist.n.1.count": [1]}
    with pytest.raises(ValueError, match=r"lhist\.n\.1"):
        LabelHistogram.from_record(bad_bins)
    bad_classes = {**record, "lhist.s.classes": record["lhist.s.classes"][:17]}
    with pytest.raises(ValueError, match=r"lhist\.s\.classes.*17"):
        LabelHistogram.from_record(bad_classes)


# --- weighted_median ----------------------------------------------------------------------------------


def test_weighted_median_odd_total():
    # 0.25 x1, 0.5 x1, 2.0 x3: sorted 0.25, 0.5, [2.0], 2.0, 2.0 -> 2.0 (the mean is 6.75 / 5 = 1.35)
    assert wmedian({250: 1, 500: 1, 2000: 3}) == pytest.approx(2.0, abs=1e-12)


def test_weighted_median_even_total_takes_the_lower():
    # 0.1, [0.3] | 0.7, 0.9: lower median 0.3 (upper 0.7, mean 0.5); given out of order
    assert wmedian({900: 1, 100: 1, 700: 1, 300: 1}) == pytest.approx(0.3, abs=1e-12)


def test_weighted_median_unequal_weights():
    # -1.0 x3, 0.0 x1, 5.0 x2 (total 6): cumulative 3 -> 2*3 >= 6 -> -1.0 (upper median 0.0, mean 7/6)
    assert wmedian({5000: 2, -1000: 3, 0: 1}) == pytest.approx(-1.0, abs=1e-12)


def test_weighted_median_single_bin_and_empty():
    assert wmedian({42: 7}) == pytest.approx(42 * GRID, abs=1e-15)  # 0.042
    with pytest.raises(ValueError, match="empty"):
        wmedian({})
    with pytest.raises(ValueError, match="empty"):
        wmedian({5: 0})


# --- log_frequencies ----------------------------------------------------------------------------------


def test_log_frequencies_laplace_smoothing_by_hand():
    # counts [9 (class 0, ignored), 5, 0, 2] -> (count + 1): 6, 1, 3; sum 10 -> 0.6, 0.1, 0.3
    logits = log_frequencies(np.array([9, 5, 0, 2]))
    assert logits[0] == ABSENT_LOGIT
    assert logits[1:] == pytest.approx([math.log(0.6), math.log(0.1), math.log(0.3)], rel=1e-12)


def test_log_frequencies_of_18_classes_softmax_to_the_smoothed_frequencies():
    counts = np.zeros(18, dtype=np.int64)
    counts[1], counts[3] = 7, 2
    logits = log_frequencies(counts)
    # classes 1..17: class 1 -> 8, class 3 -> 3, the 15 absent ones -> 1 each; total 8 + 3 + 15 = 26
    freq = [1 / 26] * 17
    freq[0], freq[2] = 8 / 26, 3 / 26
    assert len(logits) == 18
    assert logits[0] == ABSENT_LOGIT
    assert logits[1:] == pytest.approx([math.log(p) for p in freq], rel=1e-12)
    probs = torch.softmax(torch.tensor(logits, dtype=torch.float64), dim=0)
    assert probs[0].item() < 1e-12
    assert probs[1:].tolist() == pytest.approx(freq, abs=1e-12)


# --- best_constants -------------------------------------------------------------------------------------


def _c_client_a() -> dict[str, torch.Tensor]:
    """Task c, B=1, 2x2; pixel (1, 1) masked out holding 5 / -5."""
    return {"rgb": torch.zeros(1, 3, 2, 2), "mask": _mask([[[T, T], [T, F]]]),
            "c": torch.tensor([[[[0.1, 0.2], [0.2, 5.0]],
                                [[-0.3, -0.1], [-0.3, -5.0]]]])}


def _c_client_b() -> dict[str, torch.Tensor]:
    """Tasks s and c, B=2, 1x2; sample 1's second pixel masked (c holds 5 / 5 there)."""
    return {"rgb": torch.zeros(2, 3, 1, 2), "mask": _mask([[[T, T]], [[T, F]]]),
            "c": torch.tensor([[[[0.4, 0.4]], [[-0.2, 0.6]]],
                               [[[0.4, 5.0]], [[0.6, 5.0]]]]),
            "s": torch.tensor([[[1, 1]], [[4, 0]]])}


def test_best_constants_of_merged_clients_per_channel_and_seg_logits():
    hist = _updated("c", _c_client_a()).merge(_updated("sc", _c_client_b()))
    consts = best_constants(hist)
    assert list(consts) == ["c", "s"]  # the order of hist.tasks
    # c ch0 valid: a 0.1, 0.2, 0.2 | b 0.4, 0.4, 0.4 -> sorted 0.1, 0.2, [0.2] | 0.4 x3 -> 0.2
    #   (counting the two masked 5s: 0.1, 0.2, 0.2, [0.4], 0.4, 0.4, 5, 5 -> 0.4)
    # c ch1 valid: a -0.3, -0.1, -0.3 | b -0.2, 0.6, 0.6 -> -0.3, -0.3, [-0.2], -0.1, 0.6, 0.6 -> -0.2
    #   (client a alone would give -0.3; the upper median would be -0.1)
    assert consts["c"] == pytest.approx([0.2, -0.2], abs=1e-12)
    # s: class 1 x2, class 4 x1 -> smoothed 3, 2 and 1 for the 15 others; total 20
    want = [ABSENT_LOGIT] + [math.log(1 / 20)] * 17
    want[1], want[4] = math.log(3 / 20), math.log(2 / 20)
    assert consts["s"] == pytest.approx(want, rel=1e-12)
    assert list(best_constants(_updated("sc", _c_client_b()))) == ["s", "c"]


def test_best_constants_of_a_channel_without_counted_pixels_is_zero():
    batch = {"rgb": torch.zeros(1, 3, 1, 2), "mask": _mask([[[F, F]]]), "e": torch.tensor([[[[3.0, 4.0]]]])}
    hist = _updated("e", batch)
    assert hist.bins["e"] == [{}]
    assert best_constants(hist) == {"e": [0.0]}


# --- constant_prediction / constant_losses ----------------------------------------------------------


def test_constant_prediction_shapes_and_channel_order():
    pred = constant_prediction(TASKS["n"], [0.1, -0.2, 0.3], torch.zeros(2, 3, 4, 5))
    assert pred.shape == (2, 3, 4, 5)
    assert pred[:, 0].unique().tolist() == pytest.approx([0.1])
    assert pred[:, 1].unique().tolist() == pytest.approx([-0.2])
    assert pred[:, 2].unique().tolist() == pytest.approx([0.3])
    seg = constant_prediction(TASKS["s"], [float(i) for i in range(18)], torch.zeros(2, 4, 5, dtype=torch.long))
    assert seg.shape == (2, 18, 4, 5)
    assert seg[1, 17, 3, 4].item() == 17.0


def test_constant_prediction_rejects_wrong_channel_count_naming_the_task():
    with pytest.raises(ValueError, match=r"task n .*2 values, expected 3"):
        constant_prediction(TASKS["n"], [0.1, 0.2], torch.zeros(1, 3, 3, 3))
    with pytest.raises(ValueError, match=r"task c .*1 values, expected 2"):
        constant_prediction(TASKS["c"], [0.1], torch.zeros(1, 2, 3, 3))


def test_constant_losses_requires_every_task_constant():
    batch = {"k": torch.zeros(1, 1, 2, 2), "t": torch.zeros(1, 1, 2, 2)}
    with pytest.raises(KeyError, match="'t'"):
        constant_losses({"k": [0.0]}, batch, "kt")


def test_constant_loss_of_l1_task_by_hand():
    batch = {"k": torch.tensor([[[[0.0, 1.0, 4.0]]], [[[2.0, 2.0, 10.0]]]])}
    # c = 2: |2-0| + |2-1| + |2-4| + 0 + 0 + |2-10| = 2 + 1 + 2 + 8 = 13 over 6 pixels
    loss = constant_losses({"k": [2.0]}, batch, "k")["k"]
    assert loss.item() == pytest.approx(13 / 6, rel=1e-6)


def test_constant_loss_of_masked_l1_divides_by_all_pixels():
    batch = {"mask": _mask([[[T, T], [T, F]]]), "e": torch.tensor([[[[1.0, 3.0], [5.0, 100.0]]]])}
    # c = 2 on valid pixels: 1 + 1 + 3 = 5, over ALL 4 pixels -> 1.25 (not 5/3; not (5 + 98)/4)
    assert constant_losses({"e": [2.0]}, batch, "e")["e"].item() == pytest.approx(1.25, rel=1e-6)
    two = {"mask": _mask([[[T, T, F]]]), "c": torch.tensor([[[[0.0, 1.0, 9.0]], [[5.0, 5.0, -9.0]]]])}
    # c = (1, 4): ch0 |1-0| + |1-1| = 1, ch1 |4-5| + |4-5| = 2 -> 3 over 3 pixels x 2 channels = 0.5
    # (swapped (4, 1): 4 + 3 + 4 + 4 = 15 / 6 = 2.5)
    assert constant_losses({"c": [1.0, 4.0]}, two, "c")["c"].item() == pytest.approx(0.5, rel=1e-6)


def test_constant_loss_of_shift_masked_l1_crops_the_border():
    depth = torch.full((2, 1, 4, 4), 50.0)  # border pixels: 50, valid, cropped away by the loss
    depth[0, 0, 1:3, 1:3] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    depth[1, 0, 1:3, 1:3] = torch.tensor([[0.0, 0.0], [6.0, 2.0]])
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 2, 2] = False  # sample 0's interior 4.0
    batch = {"mask": mask, "d": depth}
    # c = 2, interior 2x2: sample 0: 1 + 0 + 1 (+ 4.0 masked) = 2 / 4 = 0.5; sample 1: 2 + 2 + 4 + 0 = 8 / 4 = 2;
    # mean over the batch (0.5 + 2) / 2 = 1.25 (every shift of a constant gives the same value)
    assert constant_losses({"d": [2.0]}, batch, "d")["d"].item() == pytest.approx(1.25, rel=1e-6)


def test_constant_loss_of_segmentation_is_minus_mean_log_frequency():
    counts = np.zeros(18, dtype=np.int64)
    counts[1], counts[3] = 7, 2  # smoothed: p1 = 8/26, p3 = 3/26, others 1/26
    batch = {"s": torch.tensor([[[1, 1, 3], [0, 5, 0]]])}
    # 4 labelled pixels: -(2 log(8/26) + log(3/26) + log(1/26)) / 4 = 7.774891 / 4 = 1.943723
    want = -(2 * math.log(8 / 26) + math.log(3 / 26) + math.log(1 / 26)) / 4
    assert want == pytest.approx(1.943723, abs=1e-6)
    loss = constant_losses({"s": log_frequencies(counts)}, batch, "s")["s"]
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_the_median_minimises_the_l1_losses():
    batch = {
        "rgb": torch.zeros(2, 3, 1, 3),
        "mask": _mask([[[T, T, F]], [[T, F, F]]]),
        # c valid ch0: 0.1, 0.2 | 0.7 -> 0.2; counting the three masked 3.0s: 0.1, 0.2, [0.7], 3, 3, 3 -> 0.7
        #   (where moving down lowers the valid-pixel loss); ch1 valid: -0.4, -0.4 | 0.5 -> -0.4 (masked -3s: -3)
        "c": torch.tensor([[[[0.1, 0.2, 3.0]], [[-0.4, -0.4, -3.0]]],
                           [[[0.7, 3.0, 3.0]], [[0.5, -3.0, -3.0]]]]),
        # k (unmasked) 0, 1, 4 | 10, -2, 1 -> -2, 0, [1], 1, 4, 10 -> 1 (mean 14 / 6)
        "k": torch.tensor([[[[0.0, 1.0, 4.0]]], [[[10.0, -2.0, 1.0]]]]),
    }
    consts = best_constants(_updated("ck", batch))
    assert consts == {"c": pytest.approx([0.2, -0.4], abs=1e-12), "k": pytest.approx([1.0], abs=1e-12)}
    base = constant_losses(consts, batch, "ck")
    # c: ch0 0.1 + 0 + 0.5 = 0.6, ch1 0 + 0 + 0.9 = 0.9 -> 1.5 / (6 pixels x 2 channels) = 0.125
    assert base["c"].item() == pytest.approx(0.125, rel=1e-5)
    # k: 1 + 0 + 3 + 9 + 3 + 0 = 16 / 6
    assert base["k"].item() == pytest.approx(16 / 6, rel=1e-5)
    for letter, values in consts.items():
        for ch in range(len(values)):
            for delta in (-0.01, 0.01):
                moved = {**consts, letter: [v + (delta if i == ch else 0.0) for i, v in enumerate(values)]}
                loss = constant_losses(moved, batch, letter)[letter].item()
                assert loss >= base[letter].item() - 1e-6, (letter, ch, delta)


# --- evaluate_constants / histogram_of -------------------------------------------------------------


class _TwoBatches:
    """A split of 4 samples that `device_batches` yields as batches of 3 and 1."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches
        self.calls: list[tuple] = []

    def __len__(self) -> int:
        return sum(b["rgb"].shape[0] for b in self.batches)

    def device_batches(self, device, batch_size, shuffle=False, augment=False):
        self.calls.append((str(device), batch_size, shuffle, augment))
        yield from self.batches


def _two_batches() -> _TwoBatches:
    big = {"rgb": torch.zeros(3, 3, 1, 2), "mask": torch.ones(3, 1, 1, 2, dtype=torch.bool),
           "k": torch.ones(3, 1, 1, 2), "e": torch.full((3, 1, 1, 2), 3.0)}
    small = {"rgb": torch.zeros(1, 3, 1, 2), "mask": _mask([[[T, F]]]),
             "k": torch.full((1, 1, 1, 2), 5.0), "e": torch.tensor([[[[1.0, 9.0]]]])}
    return _TwoBatches([big, small])


def test_evaluate_constants_weights_batches_by_size():
    data = _two_batches()
    out = evaluate_constants(data, {"k": [0.0], "e": [1.0]}, "ke", batch_size=3)
    assert data.calls == [("cpu", 3, False, False)]
    # k, c = 0: batch of 3 -> mean |0 - 1| = 1; batch of 1 -> 5. By examples (3*1 + 1*5) / 4 = 2
    #   (the mean of batch means would be 3)
    # e, c = 1: batch of 3 -> |1 - 3| = 2; batch of 1 -> |1 - 1| (9 masked) / 2 pixels = 0 -> (3*2 + 0) / 4 = 1.5
    #   (the mean of batch means would be 1)
    assert out == {"k": pytest.approx(2.0, rel=1e-6), "e": pytest.approx(1.5, rel=1e-6)}
    assert out["k"] != pytest.approx((1.0 + 5.0) / 2)


def test_evaluate_constants_of_an_empty_split_raises():
    with pytest.raises(ValueError, match="empty"):
        evaluate_constants(_TwoBatches([]), {"k": [0.0]}, "k")


def test_histogram_of_counts_every_batch():
    data = _two_batches()
    hist = histogram_of(data, "ke", batch_size=3)
    assert data.calls == [("cpu", 3, False, False)]
    # k: 1.0 x6 | 5.0 x2; e: 3.0 x6 | 1.0 (9.0 masked)
    assert hist.bins == {"k": [{1000: 6, 5000: 2}], "e": [{3000: 6, 1000: 1}]}


# --- skill / skills ---------------------------------------------------------------------------------


def test_skill_by_hand():
    assert skill(0.3, 1.2) == pytest.approx(0.75)  # 1 - 0.3 / 1.2 = 1 - 0.25
    assert skill(1.5, 1.0) == pytest.approx(-0.5)  # worse than the constant: 1 - 1.5
    assert skill(0.0, 2.0) == 1.0
    for bad in (0.0, -1.0, math.inf, math.nan):
        assert math.isnan(skill(0.2, bad))


def test_skills_only_for_shared_tasks():
    out = skills({"s": 0.5, "d": 0.1, "k": 2.0}, {"s": 2.0, "d": 0.5, "t": 1.0})
    # s: 1 - 0.5 / 2 = 0.75; d: 1 - 0.1 / 0.5 = 0.8; k has no constant, t no loss
    assert out == {"s": pytest.approx(0.75), "d": pytest.approx(0.8)}
