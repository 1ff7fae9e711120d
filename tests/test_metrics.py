"""Task metrics on hand-made tensors whose answers are worked out by hand here, their exact merging
across batches and clients, and Δm% (Maninis et al. 2019)."""

from __future__ import annotations

import math

import pytest
import torch

from mas_flower import metrics as metrics_module
from mas_flower.metrics import TaskMetrics, batch_metric_sums, delta_m, depth_metres, metric_names, sum_records


def _one_hot_logits(classes: list[list[int]], channels: int = 18) -> torch.Tensor:
    ids = torch.tensor(classes)
    return torch.nn.functional.one_hot(ids, channels).permute(2, 0, 1)[None].float() * 10


def test_segmentation_miou_and_pixel_accuracy_ignore_class_0() -> None:
    target = torch.tensor([[[1, 1, 2], [0, 2, 3]]])
    pred = _one_hot_logits([[1, 2, 2], [5, 0, 3]])  # (1, 18, 2, 3); the unlabelled pixel predicts 5
    m = TaskMetrics("s")
    m.update({"s": pred}, {"s": target})
    # 5 labelled pixels, 3 right. Class 1: TP 1, predicted 1, true 2 -> IoU 1/2; class 2: TP 1,
    # predicted 2, true 2 -> 1/3; class 3: 1/1. Class 5 only on the ignored pixel: left out.
    assert m.compute()["s"] == pytest.approx({"miou": (1 / 2 + 1 / 3 + 1) / 3, "pixel_acc": 3 / 5})
    assert metric_names("s") == ("miou", "pixel_acc")


def test_depth_in_metres_on_valid_pixels() -> None:
    def encoded(metres: float) -> float:  # by hand (docs/design.md): raw = 512 m, target = (raw − 1500)/1000
        return (512 * metres - 1500) / 1000

    target = torch.tensor([[[[encoded(2.0), encoded(4.0), encoded(9.0), encoded(0.0)]]]])
    pred = torch.tensor([[[[encoded(3.0), encoded(3.0), encoded(1.0), encoded(5.0)]]]])
    mask = torch.tensor([[[[True, True, False, True]]]])  # the 9 m pixel is masked; the 0 m one has no depth
    m = TaskMetrics("d")
    m.update({"d": pred}, {"d": target, "mask": mask})
    # |3−2|/2 = 0.5 and |3−4|/4 = 0.25 -> abs_rel 0.375; errors 1 m and 1 m -> rmse 1 m.
    assert m.compute()["d"] == pytest.approx({"abs_rel": 0.375, "rmse_m": 1.0})
    assert depth_metres(torch.tensor(encoded(2.5))).item() == pytest.approx(2.5)


def test_normal_angles_on_valid_pixels() -> None:
    t10 = math.tan(math.radians(10))
    target = torch.tensor([[1, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float32)
    pred = torch.tensor([[1, 1, 0], [0, 0, 2], [0, 1, t10], [-1, 0, 0], [1, 0, 0]], dtype=torch.float32)
    as_image = lambda v: v.T.reshape(1, 3, 1, 5)  # noqa: E731
    mask = torch.tensor([[[[True, True, True, False, True]]]])  # the 180° pixel is masked; the last has no normal
    m = TaskMetrics("n")
    m.update({"n": as_image(pred)}, {"n": as_image(target), "mask": mask})
    # angles 45°, 0°, 10° on the three scored pixels; two of them within 11.25°.
    assert m.compute()["n"] == pytest.approx({"mean_angle_deg": 55 / 3, "within_11_25": 2 / 3})


def _normals(target: list[tuple[float, float, float]], pred: list[tuple[float, float, float]],
             dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """`within_11_25` and `mean_angle_deg` of pixels in a row, all valid."""
    as_image = lambda v: torch.tensor(v, dtype=dtype).T.reshape(1, 3, 1, len(v))  # noqa: E731
    m = TaskMetrics("n")
    m.update({"n": as_image(pred)}, {"n": as_image(target), "mask": torch.ones(1, 1, 1, len(pred), dtype=torch.bool)})
    return m.compute()["n"]


def test_normal_threshold_is_inclusive_and_at_11_25_degrees(monkeypatch: pytest.MonkeyPatch) -> None:
    # Either side of 11.25°: float32 (1, tan 11.25°, 0) scores 11.2499999915°, the next float32 up 11.2500008°.
    tan = float(torch.tensor(math.tan(math.radians(11.25)), dtype=torch.float32))
    above = float(torch.nextafter(torch.tensor(tan, dtype=torch.float32), torch.tensor(1.0)))
    x = (1.0, 0.0, 0.0)
    assert _normals([x, x], [(1.0, tan, 0.0), (1.0, above, 0.0)], torch.float32)["within_11_25"] == 1 / 2
    # No normal lands on 11.25° exactly through acos (the nearest cosines give 11.249999999999973 and
    # 11.250000000000007), so "at the threshold counts" is checked where the arithmetic is exact: 90°.
    monkeypatch.setattr(metrics_module, "ANGLE_THRESHOLD_DEG", 90.0)
    # 90°, 90°, 180°, 45°: three within 90° (both exactly at it); mean (90 + 90 + 180 + 45) / 4 = 101.25
    got = _normals([x] * 4, [(0.0, 1.0, 0.0), (0.0, 0.0, -2.0), (-1.0, 0.0, 0.0), (1.0, 1.0, 0.0)])
    assert got == pytest.approx({"mean_angle_deg": 101.25, "within_11_25": 3 / 4})


def test_l1_on_valid_pixels_for_the_other_tasks() -> None:
    zeros = lambda c: torch.zeros(1, c, 2, 2)  # noqa: E731
    mask = torch.tensor([[[[True, False], [True, True]]]])
    batch = {
        "k": torch.tensor([[[[1.0, -2.0], [3.0, 0.0]]]]),  # not masked: (1 + 2 + 3 + 0) / 4
        "e": torch.tensor([[[[1.0, 100.0], [2.0, 0.0]]]]),  # masked: (1 + 2 + 0) / 3
        "c": torch.tensor([[[[1.0, 50.0], [1.0, 1.0]], [[3.0, 50.0], [3.0, 3.0]]]]),  # masked, 2 channels: 12 / 6
        "mask": mask,
    }
    m = TaskMetrics("kec")
    m.update({"k": zeros(1), "e": zeros(1), "c": zeros(2)}, batch)
    assert {c: v["l1"] for c, v in m.compute().items()} == pytest.approx({"k": 1.5, "e": 1.0, "c": 2.0})


def _random_batch(gen: torch.Generator, b: int, size: int = 6) -> tuple[dict, dict]:
    outputs = {"s": torch.randn(b, 18, size, size, generator=gen), "d": torch.randn(b, 1, size, size, generator=gen),
               "n": torch.randn(b, 3, size, size, generator=gen), "r": torch.randn(b, 1, size, size, generator=gen)}
    batch = {"s": torch.randint(0, 18, (b, size, size), generator=gen),
             "d": torch.rand(b, 1, size, size, generator=gen) * 4 - 1,
             "n": torch.rand(b, 3, size, size, generator=gen) * 2 - 1,
             "r": torch.randn(b, 1, size, size, generator=gen),
             "mask": torch.rand(b, 1, size, size, generator=gen) > 0.3}
    return outputs, batch


def test_sums_merge_exactly_across_batches_and_clients() -> None:
    gen = torch.Generator().manual_seed(0)
    outputs, batch = _random_batch(gen, 5)
    whole = TaskMetrics("sdnr")
    whole.update(outputs, batch)
    # two "clients" with uneven batches, sent through the flat record form a MetricRecord carries
    clients = []
    for part in (slice(0, 1), slice(1, 3), slice(3, 5)):
        m = TaskMetrics("sdnr")
        m.update({k: v[part] for k, v in outputs.items()}, {k: v[part] for k, v in batch.items()})
        clients.append(m)
    clients[0].merge(clients[1])
    server = sum_records({**m.to_record(), "num-examples": 3} for m in (clients[0], clients[2]))
    assert server.tasks == "sdnr"
    for letter, metrics in whole.compute().items():
        assert server.compute()[letter] == pytest.approx(metrics, rel=1e-12)
    # networks serving different tasks (MAS groups) merge into one task set's metrics
    groups = TaskMetrics("sd").merge(TaskMetrics("nr"))
    assert groups.tasks == "sdnr"


def test_bad_inputs_name_the_task() -> None:
    outputs = {"d": torch.zeros(1, 1, 2, 2)}
    with pytest.raises(KeyError, match="'d'.*no 'mask'"):
        batch_metric_sums(outputs, {"d": torch.zeros(1, 1, 2, 2)}, "d")
    with pytest.raises(ValueError, match=r"task d .*\(1, 1, 3, 3\)"):
        batch_metric_sums(outputs, {"d": torch.zeros(1, 1, 3, 3), "mask": torch.ones(1, 1, 3, 3, dtype=bool)}, "d")
    with pytest.raises(KeyError, match="no prediction for task 'k'"):
        batch_metric_sums(outputs, {"k": torch.zeros(1, 1, 2, 2)}, "k")
    with pytest.raises(ValueError, match="msum.k.count: 2 values"):
        TaskMetrics.from_record({"msum.k.abs_err": [1.0], "msum.k.count": [1.0, 2.0]})


def test_delta_m_signs_by_direction() -> None:
    baseline = {"s": {"miou": 0.5, "pixel_acc": 0.8}, "d": {"abs_rel": 0.2, "rmse_m": 1.0}}
    method = {"s": {"miou": 0.55, "pixel_acc": 0.72}, "d": {"abs_rel": 0.15, "rmse_m": 1.1}}
    # s: +10 % miou, −10 % pixel acc -> 0; d: abs_rel 25 % lower (better, +0.25), rmse 10 % higher
    # (worse, −0.1) -> 0.075; mean over the two tasks -> 3.75 %.
    assert delta_m(method, baseline) == pytest.approx(3.75)
    assert delta_m(baseline, baseline) == 0.0
    # on losses (lower is better): s doubles (−100 %), k halves (+50 %) -> −25 %
    assert delta_m({"s": {"loss": 2.0}, "k": {"loss": 0.5}}, {"s": {"loss": 1.0}, "k": {"loss": 1.0}}) == -25.0
    # tasks with 2, 1 and 1 metrics: s +10 % and +30 % -> +20 %; d abs_rel 25 % lower -> +25 %; k l1 20 %
    # higher -> −20 %. Mean over tasks (20 + 25 − 20) / 3 = 8.33 % (over metrics it would be 45 / 4 = 11.25 %)
    baseline = {"s": {"miou": 0.5, "pixel_acc": 0.5}, "d": {"abs_rel": 0.2}, "k": {"l1": 1.0}}
    method = {"s": {"miou": 0.55, "pixel_acc": 0.65}, "d": {"abs_rel": 0.15}, "k": {"l1": 1.2}}
    assert delta_m(method, baseline) == pytest.approx(25 / 3)
    with pytest.raises(ValueError, match="no task metric shared"):
        delta_m({"s": {"miou": 1.0}}, {"d": {"abs_rel": 1.0}})
    with pytest.raises(ValueError, match="baseline k.loss = 0.0"):
        delta_m({"k": {"loss": 1.0}}, {"k": {"loss": 0.0}})


def test_real_loader_batches_and_network_outputs(tiny_federation, one_thread) -> None:
    """Batches from the real loader (synthetic PNGs, all nine tasks): a prediction equal to the target
    scores perfectly, and a tiny network's outputs give finite metrics that two clients' records
    merge into exactly the metrics of their pooled batches."""
    from mas_flower.data import open_building
    from mas_flower.models import build_model
    from mas_flower.tasks import ALL_LETTERS

    net = build_model("tiny", ALL_LETTERS, image_size=32, seed=0).eval()
    perfect, pooled, server = TaskMetrics(ALL_LETTERS), TaskMetrics(ALL_LETTERS), TaskMetrics("")
    for building in ("allensville", "beechwood"):
        client = TaskMetrics(ALL_LETTERS)
        for batch in open_building(tiny_federation, building, ALL_LETTERS, 32).split("test").batches(3):
            exact = {c: batch[c].float() for c in ALL_LETTERS if c != "s"}
            exact["s"] = torch.nn.functional.one_hot(batch["s"], 18).permute(0, 3, 1, 2).float()
            perfect.update(exact, batch)
            with torch.no_grad():
                outputs = net(batch["rgb"])
            client.update(outputs, batch)
            pooled.update(outputs, batch)
        server.merge(TaskMetrics.from_record(client.to_record()))
    scores = perfect.compute()
    assert scores["s"] == {"miou": 1.0, "pixel_acc": 1.0}
    assert scores["d"] == {"abs_rel": 0.0, "rmse_m": 0.0}
    assert scores["n"]["mean_angle_deg"] == pytest.approx(0.0, abs=1e-4) and scores["n"]["within_11_25"] == 1.0
    assert all(scores[c]["l1"] == 0.0 for c in "kterca")
    merged, direct = server.compute(), pooled.compute()
    assert server.tasks == ALL_LETTERS
    for c in ALL_LETTERS:
        assert all(math.isfinite(v) for v in direct[c].values()), (c, direct[c])
        assert merged[c] == pytest.approx(direct[c], rel=1e-12)
