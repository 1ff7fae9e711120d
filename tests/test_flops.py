"""FLOP accounting: a network whose FLOPs are counted by hand, the one-by-one worked check, the
lookahead's derived cost against a direct count on real CPU tensors, and the caches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mas_flower.affinity import encoder_params, lookahead_from_gradients, task_encoder_gradients
from mas_flower.flops import _count, fake_batch, measure, network_flops
from mas_flower.losses import task_losses
from mas_flower.models import MultiTaskNet, build_model


def _pointwise_net() -> MultiTaskNet:
    """Encoder: 1x1 conv 3 -> 4 channels; decoders k and t: 1x1 conv 4 -> 1 (no bias, no batch norm)."""
    decoders = {c: nn.Conv2d(4, 1, 1, bias=False) for c in "kt"}
    return MultiTaskNet("kt", nn.Conv2d(3, 4, 1, bias=False), decoders, model_name="pointwise", stride=1)


def test_hand_counted_network() -> None:
    flops = measure(_pointwise_net(), 8)
    pixels = 8 * 8
    enc, dec = 2 * pixels * 3 * 4, 2 * pixels * 4 * 1  # 2 FLOPs per multiply-add: 1536 and 512 per sample
    assert flops.eval == enc + 2 * dec  # 2560
    # backward: each decoder's input and weight gradients (2 x dec each), the encoder's weight
    # gradient only (the image needs none)
    assert flops.train == (enc + 2 * dec) + 2 * (2 * dec) + enc  # 6144
    # lookahead: per task, the decoder's input gradient and the encoder's weight gradient, then one
    # forward pass of the whole network per task
    assert flops.affinity == 2 * (dec + enc) + 2 * (enc + 2 * dec)  # 9216
    assert flops.lookahead_batch(16) == 16 * 9216
    params = 3 * 4
    assert flops.affinity_first_order == 2 * (dec + enc)
    assert flops.lookahead_batch(16, "first_order") == 16 * 2 * (dec + enc) + 2 * (2 * 2 + 2) * params
    # a local training of 3 epochs over 10 samples, lookahead on batches of 4, 4 and 2 samples
    assert flops.training(30, 10, 3) == 30 * 6144 + 10 * 9216
    assert flops.training(30, 10, 3, "first_order") == 30 * 6144 + 10 * 2 * (dec + enc) + 3 * 2 * 6 * params
    assert flops.evaluation(7) == 7 * 2560
    with pytest.raises(ValueError, match="affinity mode 'second_order'"):
        flops.training(1, 1, 1, "second_order")


def test_one_by_one_costs_the_sum_of_its_single_task_networks() -> None:
    single = {c: network_flops("tiny", c, 32) for c in "sdnkt"}
    multi = network_flops("tiny", "sdnkt", 32)
    one_by_one = sum(f.train for f in single.values())  # five networks trained on the same samples
    assert multi.train < one_by_one
    # the shared encoder is what the multi-task network saves: one encoder instead of five. Its cost
    # two ways: (one-by-one − multi) / 4, and s + d − sd (an encoder with the s and d decoders)
    encoder = single["s"].train + single["d"].train - network_flops("tiny", "sd", 32).train
    assert encoder > 0
    assert (one_by_one - multi.train) / 4 == pytest.approx(encoder, rel=1e-12)
    assert sum(f.eval for f in single.values()) > multi.eval
    assert multi.train == pytest.approx(3 * multi.eval, rel=0.1)  # backward ≈ twice the forward


def test_grouped_convolutions_count_their_weight_gradient_once() -> None:
    x = torch.rand(1, 64, 16, 16, requires_grad=True)
    for groups in (1, 64):
        conv = nn.Conv2d(64, 64, 3, padding=1, groups=groups, bias=False)
        forward = 2 * 16 * 16 * 64 * (64 // groups) * 9
        assert _count(lambda conv=conv: conv(x)) == forward
        assert _count(lambda conv=conv: conv(x).sum().backward()) == 3 * forward


def test_derived_lookahead_cost_matches_a_direct_count_on_real_tensors() -> None:
    size, tasks = 16, "dk"
    net = build_model("tiny", tasks, image_size=size, seed=0)
    net.train()
    gen = torch.Generator().manual_seed(0)
    batch = fake_batch(tasks, size, batch=3, device="cpu")
    batch["rgb"] = torch.rand(batch["rgb"].shape, generator=gen)
    batch["d"], batch["k"] = torch.randn(3, 1, size, size, generator=gen), torch.randn(3, 1, size, size, generator=gen)
    flops = network_flops("tiny", tasks, size)

    def step() -> None:
        rep = net.encode(batch["rgb"])
        task_losses(net.decode(rep), batch, tasks)["d"].backward()

    rep = net.encode(batch["rgb"])
    losses = task_losses(net.decode(rep), batch, tasks)

    def lookahead() -> None:
        grads = task_encoder_gradients(rep, losses, tasks, encoder_params(net))
        lookahead_from_gradients(net, batch, {c: v.detach() for c, v in losses.items()}, grads, lr=0.1,
                                 weight_decay=1e-4)

    assert _count(lookahead) == flops.lookahead_batch(3)
    with torch.no_grad():
        assert _count(lambda: net(batch["rgb"])) == 3 * flops.eval
    assert _count(step) < 3 * flops.train  # only one task's loss back-propagated here


def test_disk_cache_and_bad_input(tmp_path: Path) -> None:
    first = network_flops("tiny", "dk", 16, cache_dir=tmp_path)
    (path,) = tmp_path.glob("flops-tiny-dk-16-equal-torch*.json")
    assert json.loads(path.read_text())["train"] == first.train
    path.write_text(json.dumps({**json.loads(path.read_text()), "train": 1.0}))
    assert network_flops("tiny", "dk", 16, cache_dir=tmp_path).train == 1.0  # read from disk, not measured
    assert network_flops("tiny", "dk", 16, "gradnorm").train > first.train  # GradNorm's per-task gradients
    with pytest.raises(ValueError, match="weighting 'magic'"):
        network_flops("tiny", "dk", 16, "magic")
    with pytest.raises(ValueError, match="image size 12"):
        network_flops("tiny", "dk", 12)
    with pytest.raises(ValueError, match="unknown model"):
        network_flops("nonet", "dk", 16)
