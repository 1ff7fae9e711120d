"""`tiny-fine`: registered by name, outputs at input size per task, encoder/decoder parameter names,
a stride-4 representation that the decoders alone read, and a deterministic seeded build."""

from __future__ import annotations

import pytest
import torch

from mas_flower.flops import network_flops
from mas_flower.models import build_model, list_models, load_subnetwork, subnetwork_state
from mas_flower.models.registry import get_spec
from mas_flower.tasks import TASKS


def test_registered_by_name() -> None:
    assert "tiny-fine" in list_models()
    spec = get_spec("tiny-fine")
    assert spec.stride == 8 and "stride 4" in spec.description
    net = build_model("tiny-fine", "sd", image_size=32)
    assert net.model_name == "tiny-fine" and net.stride == 8
    with pytest.raises(ValueError, match=r"image size 36 does not fit model 'tiny-fine'.*stride 8"):
        build_model("tiny-fine", "sd", image_size=36)


@pytest.mark.parametrize("size", [32, 64])
def test_output_shapes_per_task(size: int) -> None:
    tasks = "sdnkt"
    net = build_model("tiny-fine", tasks, image_size=size, seed=0).eval()
    with torch.no_grad():
        rep = net.encode(torch.rand(2, 3, size, size))
        out = net.decode(rep)
    assert rep.shape == (2, 64, size // 4, size // 4)
    assert list(out) == list(tasks)
    for c, y in out.items():
        assert y.shape == (2, TASKS[c].out_channels, size, size), (c, y.shape)
        assert torch.isfinite(y).all()


def test_parameters_are_encoder_or_decoder_letter() -> None:
    net = build_model("tiny-fine", "sdk", image_size=32, seed=0)
    for key in net.state_dict():
        head = key.split(".")[:2]
        assert head[0] == "encoder" or (head[0] == "decoders" and head[1] in "sdk"), key
    # A "k" network cut by name from the full one gives the same output as the full network's k.
    full = net.eval()
    k = build_model("tiny-fine", "k", image_size=32, seed=1).eval()
    load_subnetwork(k, full.state_dict())
    assert set(k.state_dict()) == set(subnetwork_state(full.state_dict(), "k"))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(k(x)["k"], full(x)["k"])


def test_seeded_build_is_deterministic_and_per_part() -> None:
    rng_before = torch.get_rng_state()
    a = build_model("tiny-fine", "sdnkt", image_size=32, seed=3).state_dict()
    b = build_model("tiny-fine", "sdnkt", image_size=32, seed=3).state_dict()
    assert torch.equal(rng_before, torch.get_rng_state()), "seeded build must not move the global RNG"
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    dk = build_model("tiny-fine", "dk", image_size=32, seed=3).state_dict()
    assert all(torch.equal(dk[k], a[k]) for k in dk)
    c = build_model("tiny-fine", "sdnkt", image_size=32, seed=4).state_dict()
    assert not torch.equal(a["encoder.fine.0.weight"], c["encoder.fine.0.weight"])


def test_flops_within_tiny_budget() -> None:
    """Chosen to cost about what `tiny` costs per sample (within 1.5x of it)."""
    for tasks in ("sdnkt", "k"):
        fine, tiny = network_flops("tiny-fine", tasks, 32), network_flops("tiny", tasks, 32)
        assert fine.train <= 1.1 * tiny.train, (tasks, fine.train, tiny.train)
