"""Local training and evaluation: determinism, FedProx, GradNorm, evaluation, real files."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mas_flower.data.random_split import RandomSplit
from mas_flower.losses import task_losses
from mas_flower.models import build_model
from mas_flower.training import TrainConfig, evaluate, pick_device, train_local
from mas_flower.weighting import get_weighting

TASKS = "sdnkt"
SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(tasks: str = TASKS) -> torch.nn.Module:
    return build_model("tiny", tasks, image_size=SIZE)


def _params(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def _trained(seed: int, data, **kw) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    net = _net()
    train_local(net, data, TrainConfig(lr=0.05, epochs=2, batch_size=4, seed=seed, **kw))
    return net.state_dict()


def test_same_seed_same_weights_different_seed_different():
    data = RandomSplit(TASKS, n=10, size=SIZE)
    a, b, c = _trained(0, data), _trained(0, data), _trained(1, data)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_train_local_equals_a_hand_written_loop(mu):
    """SGD(momentum, wd) on the sum of task losses + μ/2·‖w − w_received‖² over parameters only."""
    data = RandomSplit(TASKS, n=10, size=SIZE)
    cfg = TrainConfig(lr=0.05, epochs=2, batch_size=4, prox_mu=mu, seed=7)
    net = _net()
    ref = copy.deepcopy(net).train()
    result = train_local(net, data, cfg)

    received = [p.detach().clone() for p in ref.parameters()]
    opt = torch.optim.SGD(ref.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(7)
    sums, seen = dict.fromkeys(TASKS, 0.0), 0
    for _ in range(cfg.epochs):
        for batch in data.batches(4, shuffle=True, augment=True, generator=gen):
            losses = task_losses(ref(batch["rgb"]), batch, TASKS)
            prox = sum(((p - r) ** 2).sum() for p, r in zip(ref.parameters(), received, strict=True))
            opt.zero_grad()
            (sum(losses.values()) + mu / 2 * prox).backward()
            opt.step()
            for c in TASKS:
                sums[c] += losses[c].item() * len(batch["rgb"])
            seen += len(batch["rgb"])
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert result.num_examples == 10 and result.steps == 6
    for c in TASKS:
        assert result.losses[c] == pytest.approx(sums[c] / seen, rel=1e-5)


def test_fedprox_pulls_towards_received_weights_not_buffers():
    data = RandomSplit(TASKS, n=12, size=SIZE)
    drift, bn_drift = {}, {}
    for mu in (0.0, 20.0):
        torch.manual_seed(0)
        net = _net()
        start = copy.deepcopy(net.state_dict())
        train_local(net, data, TrainConfig(lr=0.02, epochs=3, batch_size=4, prox_mu=mu))
        end = net.state_dict()
        names = dict(net.named_parameters())
        drift[mu] = sum(float((end[k] - start[k]).norm()) for k in names)
        bn_drift[mu] = sum(float((end[k] - start[k]).norm()) for k in end if k.endswith("running_var"))
    assert drift[20.0] < 0.7 * drift[0.0]
    # Running statistics keep following the data: the proximal term does not touch buffers.
    assert bn_drift[20.0] > 0.5 * bn_drift[0.0] > 0


def test_gradnorm_weights_stay_positive_and_sum_to_n():
    data = RandomSplit(TASKS, n=12, size=SIZE)
    weighting = get_weighting("gradnorm", TASKS, alpha=1.5)
    result = train_local(_net(), data, TrainConfig(lr=0.05, epochs=3, batch_size=4, weighting="gradnorm"),
                         weighting=weighting)
    w = np.array([result.task_weights[c] for c in TASKS])
    assert np.all(w > 0)
    assert w.sum() == pytest.approx(len(TASKS), rel=1e-5)
    assert np.ptp(w) > 1e-3  # the weights actually moved
    assert weighting.weights == result.task_weights
    # A later round continues from the learnt weights when the same object is passed again.
    again = train_local(_net(), data, TrainConfig(lr=0.05, batch_size=4, weighting="gradnorm"),
                        weighting=weighting)
    assert sum(again.task_weights.values()) == pytest.approx(len(TASKS), rel=1e-5)


def test_gradnorm_rejects_bad_options():
    with pytest.raises(ValueError, match="alpha"):
        get_weighting("gradnorm", TASKS, alpha=-1)
    with pytest.raises(ValueError, match="unknown weighting 'bogus'"):
        get_weighting("bogus", TASKS)


def test_evaluate_equals_a_hand_loop_and_leaves_the_network_alone():
    data = RandomSplit(TASKS, n=10, size=SIZE, seed=3)
    torch.manual_seed(0)
    net = _net()
    train_local(net, data, TrainConfig(lr=0.05, batch_size=4))  # non-trivial BN running statistics
    net.train()
    state = copy.deepcopy(net.state_dict())
    losses, n = evaluate(net, data, batch_size=4)
    assert n == 10 and net.training
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    ref = copy.deepcopy(net).eval()
    sums = dict.fromkeys(TASKS, 0.0)
    with torch.no_grad():
        for batch in data.batches(4):
            for c, v in task_losses(ref(batch["rgb"]), batch, TASKS).items():
                sums[c] += v.item() * len(batch["rgb"])
    for c in TASKS:
        assert losses[c] == pytest.approx(sums[c] / 10, rel=1e-6)


def test_bad_config_and_devices_are_rejected():
    data = RandomSplit("kt", n=4, size=SIZE)
    with pytest.raises(ValueError, match="lr=0"):
        train_local(_net("kt"), data, TrainConfig(lr=0))
    with pytest.raises(ValueError, match="affinity_mode='second'"):
        train_local(_net("kt"), data, TrainConfig(lr=0.1, affinity_mode="second"))
    with pytest.raises(ValueError, match="weighting='uw'"):
        train_local(_net("kt"), data, TrainConfig(lr=0.1, weighting="uw"))
    with pytest.raises(ValueError, match="empty"):
        train_local(_net("kt"), RandomSplit("kt", n=0, size=SIZE), TrainConfig(lr=0.1))
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")


def test_thread_setting_is_restored():
    before = torch.get_num_threads()
    train_local(_net("kt"), RandomSplit("kt", n=4, size=SIZE), TrainConfig(lr=0.1, batch_size=4,
                                                                            num_threads=before + 1))
    assert torch.get_num_threads() == before


def test_training_on_real_files(tmp_path):
    """The file loader's split feeds train_local/evaluate (PNG files in Taskonomy's encodings)."""
    from mas_flower.data import open_building
    from tests.taskonomy_pngs import make_dataset

    root = make_dataset(tmp_path / "data", {"b1": [(p, v) for p in range(10) for v in range(2)]}, size=SIZE)
    data = open_building(root, "b1", TASKS, SIZE)
    train = data.split("train")
    torch.manual_seed(0)
    net = _net()
    before = _params(net)
    result = train_local(net, train, TrainConfig(lr=0.05, batch_size=4, affinity_every=2))
    assert result.num_examples == len(train) > 0
    assert set(result.losses) == set(TASKS) and all(np.isfinite(list(result.losses.values())))
    assert result.affinity is not None and np.all(np.isfinite(result.affinity))
    assert any(not torch.equal(before[k], v) for k, v in net.named_parameters())
    losses, n = evaluate(net, data.split("val"), batch_size=4)
    assert n == len(data.split("val")) and all(np.isfinite(list(losses.values())))


def test_gradnorm_state_carries_over_between_calls() -> None:
    """A client keeps GradNorm's learnt weights, L(0) and Adam moments from one round to the next."""

    torch.manual_seed(0)
    net = build_model("tiny", "sdk", image_size=32)
    data = RandomSplit("sdk", n=8, size=32)
    cfg = TrainConfig(lr=0.05, batch_size=4, weighting="gradnorm", seed=1)
    first = get_weighting("gradnorm", "sdk", alpha=1.5)
    train_local(net, data, cfg, weighting=first)
    state = first.state_dict()
    assert set(state) >= {"w", "initial", "adam.exp_avg", "adam.exp_avg_sq"}
    assert state["w"].sum().item() == pytest.approx(3.0, rel=1e-5)
    resumed = get_weighting("gradnorm", "sdk", alpha=1.5)
    resumed.load_state_dict(state)
    assert resumed.weights == pytest.approx(first.weights)
    assert torch.equal(resumed.state_dict()["initial"], state["initial"])
    with pytest.raises(ValueError, match="state for 3 tasks, this network has 2"):
        get_weighting("gradnorm", "sd").load_state_dict(state)


def test_evaluate_collects_task_metrics_from_the_same_outputs():
    from mas_flower.metrics import TaskMetrics, metric_names

    data = RandomSplit("sdnk", n=6, size=32)
    net = build_model("tiny", "sdnk", image_size=32)
    metrics = TaskMetrics("sdnk")
    losses, n = evaluate(net, data, batch_size=4, metrics=metrics)
    values = metrics.compute()
    assert n == 6 and set(values) == set("sdnk")
    for c in "sdnk":
        assert set(values[c]) == set(metric_names(c)) and all(np.isfinite(v) for v in values[c].values())
    # the same network and data give the same metrics batch by batch or all at once
    whole = TaskMetrics("sdnk")
    evaluate(net, data, batch_size=6, metrics=whole)
    for c in "sdnk":
        for k, v in whole.compute()[c].items():
            assert v == pytest.approx(values[c][k], rel=1e-6)


def test_training_seconds_exclude_one_time_setup():
    data = RandomSplit("kt", n=8, size=32)
    result = train_local(build_model("tiny", "kt", image_size=32), data, TrainConfig(lr=0.1, batch_size=4))
    assert result.setup_seconds > 0 and result.seconds > 0
    assert result.affinity_samples == 0
    measured = train_local(build_model("tiny", "kt", image_size=32), data,
                           TrainConfig(lr=0.1, batch_size=4, epochs=2, affinity_every=2))
    assert measured.affinity_count == 2 and measured.affinity_samples == 8  # batches 0 and 2, 4 samples each
