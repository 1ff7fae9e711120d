"""LocalSGD: torch.optim.SGD's arithmetic, bit for bit, without torch.optim's import of torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mas_flower.local_sgd import LocalSGD
from mas_flower.models import build_model


def _step_both(steps: int, momentum: float, weight_decay: float) -> tuple[dict, dict, dict]:
    torch.manual_seed(0)
    ours, ref = build_model("tiny", "sdk", image_size=16), build_model("tiny", "sdk", image_size=16)
    ref.load_state_dict(ours.state_dict())
    initial = {k: v.clone() for k, v in ours.state_dict().items()}
    opt_ours = LocalSGD(ours.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for i in range(steps):
        x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(i))
        # Task 'k' joins only from step 2 on: its decoder has no gradient before (skipped, no decay).
        used = "sd" if i < 2 else "sdk"
        for net, opt in ((ours, opt_ours), (ref, opt_ref)):
            opt.zero_grad()
            out = net.decode(net.encode(x))
            sum(out[c].float().square().mean() for c in used).backward()
            opt.step()
    return ours.state_dict(), ref.state_dict(), initial


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.9, 1e-4), (0.0, 0.0), (0.5, 0.1)])
def test_updates_are_bit_identical_to_torch_sgd(momentum: float, weight_decay: float) -> None:
    state, expected, initial = _step_both(5, momentum, weight_decay)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    moved = {k for k in expected if not torch.equal(expected[k], initial[k])}
    assert any(k.startswith("decoders.k.") for k in moved) and len(moved) > len(expected) // 2


def test_bad_hyperparameters_are_refused() -> None:
    with pytest.raises(ValueError, match="empty parameter list"):
        LocalSGD([], lr=0.1)
    with pytest.raises(ValueError, match="lr=0"):
        LocalSGD([torch.zeros(1, requires_grad=True)], lr=0.0)


def test_local_training_in_a_fresh_process_never_imports_torch_dynamo() -> None:
    """The point of LocalSGD: a fresh ClientApp process (one per deployed message) pays no ~1.8 s import."""
    code = (
        "import sys\n"
        "from mas_flower.data.random_split import RandomSplit\n"
        "from mas_flower.models import build_model\n"
        "from mas_flower.training import TrainConfig, train_local\n"
        "net = build_model('tiny', 'sdk', image_size=16)\n"
        "r = train_local(net, RandomSplit('sdk', n=6, size=16), TrainConfig(lr=0.1, epochs=1, batch_size=3,"
        " affinity_every=1))\n"
        "assert r.steps == 2 and r.affinity_count == 2, r\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", "something in local training imports torch._dynamo again"
