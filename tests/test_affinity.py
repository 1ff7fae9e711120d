"""Lookahead affinity: held against a slow direct computation, exact restore, no effect on training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mas_flower.affinity import AffinityAccumulator, batch_affinity, is_lookahead_batch
from mas_flower.data.random_split import RandomSplit
from mas_flower.losses import task_losses
from mas_flower.models import build_model
from mas_flower.training import TrainConfig, train_local

TASKS = "sdnkt"
SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(tasks: str = TASKS, seed: int = 0) -> torch.nn.Module:
    net = build_model("tiny", tasks, image_size=SIZE)
    torch.manual_seed(seed)
    net.load_state_dict(build_model("tiny", tasks, image_size=SIZE).state_dict())  # seed-independent init
    return net.train()


def _batch(tasks: str = TASKS, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    return next(RandomSplit(tasks, n=n, size=SIZE, seed=seed).batches(n))


def _direct_affinity(net, batch, lr: float, wd: float, loss_fn=task_losses) -> np.ndarray:
    """docs/design.md, section "Lookahead affinity", literally: copy the model, one SGD step of the encoder on L_i,
    measure every L_j."""
    tasks = net.tasks
    n = len(tasks)
    z = np.zeros((n, n))
    for i, ci in enumerate(tasks):
        model = copy.deepcopy(net).train()
        opt = torch.optim.SGD(model.encoder.parameters(), lr=lr, weight_decay=wd)
        before = loss_fn(model(batch["rgb"]), batch, tasks)
        before[ci].backward()
        opt.step()
        with torch.no_grad():
            after = loss_fn(model(batch["rgb"]), batch, tasks)
        for j, cj in enumerate(tasks):
            z[i, j] = (1 - after[cj].item() / before[cj].item()) / lr
    return z


@pytest.mark.parametrize("tasks", ["sdnkt", "kt"])
def test_exact_matches_direct_computation(tasks):
    net, batch = _net(tasks), _batch(tasks)
    z = batch_affinity(net, batch, lr=0.1, weight_decay=1e-4)
    direct = _direct_affinity(net, batch, lr=0.1, wd=1e-4)
    assert np.abs(direct).max() > 1e-3  # a real signal, not all zeros
    np.testing.assert_allclose(z, direct, rtol=0, atol=1e-5)


def _state(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("mode", ["exact", "first_order"])
def test_lookahead_leaves_weights_buffers_and_rng_bit_identical(mode):
    net, batch = _net(), _batch()
    before = _state(net)
    assert any("num_batches_tracked" in k for k in before)
    rng = torch.get_rng_state()
    batch_affinity(net, batch, lr=0.1, weight_decay=1e-4, mode=mode)
    after = net.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("mode", ["exact", "first_order"])
def test_measuring_affinity_does_not_change_training(mode):
    data = RandomSplit(TASKS, n=10, size=SIZE)
    results, states = [], []
    for every in (0, 2):
        net = _net()
        cfg = TrainConfig(lr=0.05, epochs=2, batch_size=4, affinity_every=every, affinity_mode=mode)
        results.append(train_local(net, data, cfg))
        states.append(net.state_dict())
    for k, v in states[0].items():
        assert torch.equal(v, states[1][k]), k
    assert results[0].affinity is None and results[0].affinity_count == 0
    # 3 batches per epoch (4 + 4 + 2), numbered 0..5 across the 2 epochs: 0, 2, 4 measure.
    assert results[1].affinity_count == 3
    assert results[1].affinity.shape == (5, 5) and np.all(np.isfinite(results[1].affinity))
    assert results[0].losses == results[1].losses


def test_training_affinity_is_the_first_batch_lookahead_at_the_received_weights():
    """With one lookahead batch, train_local reports exactly batch_affinity of that batch before the step."""
    data = RandomSplit(TASKS, n=8, size=SIZE)
    cfg = TrainConfig(lr=0.1, epochs=1, batch_size=4, affinity_every=100, seed=3)
    net = _net()
    first = next(data.batches(4, shuffle=True, augment=True, generator=torch.Generator().manual_seed(3)))
    expected = batch_affinity(copy.deepcopy(net), first, lr=0.1, weight_decay=cfg.weight_decay)
    result = train_local(net, data, cfg)
    assert result.affinity_count == 1
    np.testing.assert_allclose(result.affinity, expected, rtol=0, atol=1e-6)


def test_batched_and_looped_encoder_gradients_agree():
    from mas_flower.affinity import encoder_params, task_encoder_gradients

    net, batch = _net(), _batch()
    rep = net.encode(batch["rgb"])
    losses = task_losses(net.decode(rep), batch, TASKS)
    params = encoder_params(net)
    looped = task_encoder_gradients(rep, losses, TASKS, params)
    batched = task_encoder_gradients(rep, losses, TASKS, params, batched=True)
    direct = torch.autograd.grad(losses["d"], params, retain_graph=True)
    for i in range(len(TASKS)):
        for a, b in zip(looped[i], batched[i], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(looped[1], direct, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_first_epoch_only_and_schedule():
    picked = [b for b in range(12) if is_lookahead_batch(b, b // 4, 5)]
    assert picked == [0, 5, 10]
    assert [b for b in range(12) if is_lookahead_batch(b, b // 4, 5, first_epoch_only=True)] == [0]
    assert not any(is_lookahead_batch(b, 0, 0) for b in range(5))
    data = RandomSplit(TASKS, n=8, size=SIZE)
    cfg = TrainConfig(lr=0.05, epochs=3, batch_size=4, affinity_every=1, affinity_first_epoch_only=True)
    assert train_local(_net(), data, cfg).affinity_count == 2


def _mse_losses(outputs, batch, tasks):
    """A smooth float64 loss (the real ones are float32 and partly non-smooth) to check the Taylor limit."""
    return {c: ((outputs[c].double() - batch[c].double()) ** 2).mean() for c in tasks}


def test_first_order_is_the_small_step_limit_of_exact():
    tasks = "dnkt"
    net = _net(tasks).double()
    batch = {k: v.double() if v.is_floating_point() else v for k, v in _batch(tasks).items()}
    first = batch_affinity(net, batch, lr=1e-3, weight_decay=1e-4, mode="first_order", loss_fn=_mse_losses)
    errors = []
    for lr in (1e-3, 1e-5, 1e-7):
        exact = batch_affinity(net, batch, lr=lr, weight_decay=1e-4, loss_fn=_mse_losses)
        errors.append(np.abs(exact - first).max())
    assert errors[2] < 1e-3 * np.abs(first).max()
    # The gap shrinks with the step (O(η), noisier than that where tiny steps cross ReLU kinks).
    assert errors[0] > 10 * errors[1] > 100 * errors[2]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_first_order_agrees_with_exact_in_sign_and_rank():
    net, batch = _net(), _batch(n=8)
    exact = batch_affinity(net, batch, lr=1e-3, weight_decay=1e-4)
    first = batch_affinity(net, batch, lr=1e-3, weight_decay=1e-4, mode="first_order")
    off = ~np.eye(len(TASKS), dtype=bool)
    assert np.mean(np.sign(exact[off]) == np.sign(first[off])) >= 0.8
    assert _spearman(exact[off], first[off]) > 0.8


def test_accumulator_skips_non_finite():
    acc = AffinityAccumulator("kt")
    assert acc.mean() is None
    acc.add(np.ones((2, 2)))
    with pytest.warns(UserWarning):
        acc.add(np.full((2, 2), np.nan))
    acc.add(3 * np.ones((2, 2)))
    assert acc.count == 2 and acc.skipped == 1
    np.testing.assert_array_equal(acc.mean(), 2 * np.ones((2, 2)))
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.ones((3, 3)))


def _direct_first_order(net, batch, wd: float) -> np.ndarray:
    """Z[i,j] = ⟨∇L_i + λθ, ∇L_j⟩ / L_j with true derivatives, one task at a time (no shared graph)."""
    tasks = net.tasks
    params = [p for p in net.encoder.parameters() if p.requires_grad]
    model_grads, losses = [], []
    for c in tasks:
        model = copy.deepcopy(net)
        loss = task_losses(model(batch["rgb"]), batch, tasks)[c]
        grads = torch.autograd.grad(loss, [p for p in model.encoder.parameters() if p.requires_grad],
                                    allow_unused=True)
        model_grads.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)])
        losses.append(loss.item())
    # `.grad` carries the 1/√n scaling of the representation's gradient: undo it for ∇L_j.
    scale = float(net.grad_scale)
    n = len(tasks)
    z = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            dot = sum(float(((gi + wd * p.detach()) * (gj / scale)).double().sum())
                      for gi, gj, p in zip(model_grads[i], model_grads[j], params, strict=True))
            z[i, j] = dot / losses[j]
    return z


@pytest.mark.parametrize("mode", ["exact", "first_order"])
def test_weight_decay_term_of_the_virtual_step(mode):
    """θ − η(∇L_i + λθ), not θ − η∇L_i: with a large λ the decay term moves Z well beyond tolerance.

    First order runs in eval mode: with batch statistics, convolutions before batch norm are
    scale-invariant, so ⟨θ, ∇L_j⟩ ≈ 0 and the decay term would vanish from Z whether present or not.
    """
    net, batch = _net(), _batch()
    if mode == "first_order":
        net.eval()
    wd = 0.5
    z = batch_affinity(net, batch, lr=0.1 if mode == "exact" else 1e-3, weight_decay=wd, mode=mode)
    without = batch_affinity(net, batch, lr=0.1 if mode == "exact" else 1e-3, weight_decay=0.0, mode=mode)
    direct = _direct_affinity(net, batch, lr=0.1, wd=wd) if mode == "exact" else _direct_first_order(net, batch, wd)
    gap = np.abs(z - without).max()
    assert gap > 1e-2  # λ matters here, so dropping it cannot hide in the tolerance
    np.testing.assert_allclose(z, direct, rtol=1e-4, atol=1e-4 * gap)
