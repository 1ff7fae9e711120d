"""Multi-task networks: sizes, shapes, cutting/merging sub-networks by name, gradient scaling, registry."""

from __future__ import annotations

import pytest
import torch

from mas_flower.losses import task_losses, total_loss
from mas_flower.models import (
    MultiTaskNet,
    build_model,
    count_parameters,
    list_models,
    load_subnetwork,
    merge_subnetwork_state,
    subnetwork_state,
)
from mas_flower.tasks import TASKS, needs_mask, parse_tasks


def _batch(tasks: str, b: int, s: int, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"rgb": torch.rand(b, 3, s, s, generator=g, dtype=dtype)}
    for t in parse_tasks(tasks):
        if t.is_classification:
            out[t.letter] = torch.randint(0, t.out_channels, (b, s, s), generator=g)
        else:
            out[t.letter] = torch.randn(b, t.out_channels, s, s, generator=g, dtype=dtype)
    if needs_mask(tasks):
        out["mask"] = torch.rand(b, 1, s, s, generator=g) > 0.3
    return out


def _warm_bn(net: MultiTaskNet, s: int) -> None:
    """A few train-mode passes so BN running statistics differ from their initial values."""
    net.train()
    with torch.no_grad():
        for i in range(2):
            net(torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(i)))


def test_registry_lists_all_models():
    assert {"xception", "resnet18", "tiny"} <= set(list_models())


def test_unknown_model_names_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'xceptoin'.*resnet18.*tiny.*xception"):
        build_model("xceptoin", "sdnkt")


@pytest.mark.parametrize(("name", "size"), [("xception", 65), ("xception", 8), ("xception", 0), ("tiny", 60),
                                            ("resnet18", 72), ("xception", "64")])
def test_bad_image_size_is_rejected(name, size):
    with pytest.raises(ValueError, match=rf"image size .* model '{name}'.*multiple of .*stride"):
        build_model(name, "sd", image_size=size)


def test_forward_rejects_input_off_the_stride():
    net = build_model("tiny", "d", image_size=64)
    with pytest.raises(ValueError, match="not a multiple of the model's total stride 8"):
        net(torch.rand(1, 3, 36, 36))


def test_bad_task_letters_are_rejected():
    with pytest.raises(ValueError, match="unknown task letter"):
        build_model("tiny", "dz", image_size=64)


def test_xception_reference_parameter_counts():
    net = build_model("xception", "sdnkterca", image_size=256)
    enc = count_parameters(net.encoder)
    assert abs(enc - 4.09e6) / 4.09e6 < 0.02, enc
    for letter, dec in net.decoders.items():
        n = count_parameters(dec)
        assert abs(n - 0.116e6) / 0.116e6 < 0.02, (letter, n)


def test_xception_representation_is_256x16x16_at_256():
    net = build_model("xception", "d", image_size=256).eval()
    with torch.no_grad():
        rep = net.encode(torch.rand(1, 3, 256, 256))
    assert rep.shape == (1, 256, 16, 16)


@pytest.mark.parametrize(("name", "size", "tasks"), [
    ("xception", 16, "sdnkterca"), ("xception", 64, "sdc"), ("resnet18", 32, "sdnkterca"),
    ("tiny", 64, "sdnkterca"), ("tiny", 256, "sdc"), ("tiny", 8, "sdc"),
])
def test_output_shapes_per_task(name, size, tasks):
    net = build_model(name, tasks, image_size=size, seed=0).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, size, size))
    assert list(out) == list(tasks)
    for c, y in out.items():
        assert y.shape == (2, TASKS[c].out_channels, size, size), (c, y.shape)
        assert torch.isfinite(y).all()


def test_non_square_input():
    net = build_model("xception", "sn", image_size=64).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 32, 48))
    assert out["s"].shape == (1, 18, 32, 48) and out["n"].shape == (1, 3, 32, 48)


@pytest.mark.parametrize("name", ["xception", "resnet18", "tiny"])
def test_parameter_names_are_encoder_or_decoder_letter(name):
    net = build_model(name, "sdk", image_size=64)
    for key in net.state_dict():
        head = key.split(".")[:2]
        assert head[0] == "encoder" or (head[0] == "decoders" and head[1] in "sdk"), key


def test_seed_reproducible_and_per_part():
    a = build_model("tiny", "sdnkt", image_size=64, seed=3).state_dict()
    rng_before = torch.get_rng_state()
    b = build_model("tiny", "sdnkt", image_size=64, seed=3).state_dict()
    assert torch.equal(rng_before, torch.get_rng_state()), "seeded build must not move the global RNG"
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A "dk" network with the same seed starts from the same encoder and d/k decoders.
    dk = build_model("tiny", "dk", image_size=64, seed=3).state_dict()
    assert all(torch.equal(dk[k], a[k]) for k in dk)
    c = build_model("tiny", "sdnkt", image_size=64, seed=4).state_dict()
    assert not torch.equal(a["encoder.stages.0.weight"], c["encoder.stages.0.weight"])


@pytest.mark.parametrize("name", ["xception", "tiny"])
def test_subnetwork_cut_by_letter_matches_full_network(name):
    size = 32
    full = build_model(name, "sdnkt", image_size=size, seed=0)
    _warm_bn(full, size)
    state = full.state_dict()
    sub = build_model(name, "dk", image_size=size, seed=1)  # different init: everything must be loaded
    load_subnetwork(sub, state)
    sub_state = sub.state_dict()
    assert set(sub_state) == set(subnetwork_state(state, "dk"))
    for key, value in sub_state.items():
        assert key.startswith(("encoder.", "decoders.d.", "decoders.k.")), key
        assert torch.equal(value, state[key]), key
    full.eval()
    sub.eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        y_full, y_sub = full(x), sub(x)
    assert list(y_sub) == ["d", "k"]
    for c in "dk":
        torch.testing.assert_close(y_sub[c], y_full[c], rtol=0, atol=0)


def test_subnetwork_state_errors_name_missing_letters():
    state = build_model("tiny", "sd", image_size=64).state_dict()
    with pytest.raises(ValueError, match=r"no decoder for task\(s\) 'k'.*'sd'"):
        subnetwork_state(state, "dk")
    partial = subnetwork_state(state, "dk", strict=False)
    assert not any(k.startswith("decoders.k.") for k in partial)
    assert any(k.startswith("decoders.d.") for k in partial)


def test_load_subnetwork_non_strict_keeps_absent_decoders():
    full = build_model("tiny", "sd", image_size=64, seed=0)
    sub = build_model("tiny", "dk", image_size=64, seed=5)
    k_before = {k: v.clone() for k, v in sub.state_dict().items() if k.startswith("decoders.k.")}
    with pytest.raises(ValueError):
        load_subnetwork(sub, full.state_dict())
    load_subnetwork(sub, full.state_dict(), strict=False)
    after = sub.state_dict()
    assert all(torch.equal(after[k], v) for k, v in k_before.items())
    assert torch.equal(after["decoders.d.out.weight"], full.state_dict()["decoders.d.out.weight"])


def test_merge_subnetwork_back_and_reverse():
    full = build_model("tiny", "sdnkt", image_size=32, seed=0)
    sub = build_model("tiny", "dk", image_size=32, seed=0)
    load_subnetwork(sub, full.state_dict())
    # Train the sub-network one step so its weights and BN buffers move away from the full network's.
    opt = torch.optim.SGD(sub.parameters(), lr=0.5)
    batch = _batch("dk", 2, 32)
    total_loss(task_losses(sub(batch["rgb"]), batch, "dk")).backward()
    opt.step()
    before = {k: v.clone() for k, v in full.state_dict().items()}
    sub_state = sub.state_dict()
    merged = merge_subnetwork_state(full.state_dict(), sub_state)
    assert set(merged) == set(before)
    changed = 0
    for key, value in merged.items():
        if key.startswith(("encoder.", "decoders.d.", "decoders.k.")):
            assert torch.equal(value, sub_state[key]), key
            changed += not torch.equal(value, before[key])
        else:
            assert torch.equal(value, before[key]), key
    assert changed > 0
    full.load_state_dict(merged)
    # Reverse: the (merged) full state written into a fresh "dk" state gives the trained sub-network.
    fresh = build_model("tiny", "dk", image_size=32, seed=7).state_dict()
    back = merge_subnetwork_state(fresh, full.state_dict(), letters="dk")
    assert set(back) == set(fresh)
    assert all(torch.equal(back[k], sub_state[k]) for k in back)


def test_merge_rejects_mismatched_states():
    full = build_model("tiny", "sd", image_size=64).state_dict()
    with pytest.raises(KeyError, match=r"no decoder for task\(s\) 'k'"):
        merge_subnetwork_state(full, build_model("tiny", "dk", image_size=64).state_dict())
    with pytest.raises(KeyError, match="keys differ"):
        merge_subnetwork_state(full, build_model("xception", "d", image_size=64).state_dict())


def test_decode_of_encode_equals_forward():
    net = build_model("tiny", "sdn", image_size=32, seed=0).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a = net(x)
        b = net.decode(net.encode(x))
        c = net.decode(net.encode(x), "n")
    for k in "sdn":
        assert torch.equal(a[k], b[k])
    assert list(c) == ["n"] and torch.equal(c["n"], a["n"])
    with pytest.raises(KeyError, match="'k' not in this network"):
        net.decode(net.encode(x), "k")


def _encoder_grads(net: MultiTaskNet) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in net.encoder.parameters()]


def test_encoder_gradient_is_scaled_by_one_over_sqrt_tasks():
    tasks = "sdnk"  # 4 tasks: scale 1/2
    torch.manual_seed(0)
    net = build_model("tiny", tasks, image_size=16, seed=0).double().train()
    assert net.grad_scale == 0.5
    batch = _batch(tasks, 2, 16, dtype=torch.float64)
    x = batch["rgb"]

    net.zero_grad()
    total_loss(task_losses(net(x), batch, tasks)).backward()
    scaled = _encoder_grads(net)

    # Without the scaling: each task's loss through its decoder called directly on the representation.
    unscaled = [torch.zeros_like(g) for g in scaled]
    for c in tasks:
        net.zero_grad()
        pred = net.decoders[c](net.encode(x))
        task_losses({c: pred}, batch, c)[c].backward()
        unscaled = [u + g for u, g in zip(unscaled, _encoder_grads(net), strict=True)]
    assert any(u.abs().sum() > 0 for u in unscaled)
    for s, u in zip(scaled, unscaled, strict=True):
        torch.testing.assert_close(s, 0.5 * u, rtol=1e-9, atol=1e-12)

    # Decoding one letter at a time still scales by the network's task count: the parts sum to the whole.
    parts = [torch.zeros_like(g) for g in scaled]
    for c in tasks:
        net.zero_grad()
        task_losses(net.decode(net.encode(x), c), batch, c)[c].backward()
        parts = [p + g for p, g in zip(parts, _encoder_grads(net), strict=True)]
    for s, p in zip(scaled, parts, strict=True):
        torch.testing.assert_close(s, p, rtol=1e-9, atol=1e-12)


def test_decoder_gradients_are_not_scaled():
    net = build_model("tiny", "dk", image_size=16, seed=0).double()
    batch = _batch("dk", 2, 16, dtype=torch.float64)
    net.zero_grad()
    task_losses(net(batch["rgb"]), batch, "dk")["d"].backward()
    scaled = net.decoders["d"].out.weight.grad.clone()
    net.zero_grad()
    task_losses({"d": net.decoders["d"](net.encode(batch["rgb"]))}, batch, "d")["d"].backward()
    torch.testing.assert_close(scaled, net.decoders["d"].out.weight.grad, rtol=1e-12, atol=0)
