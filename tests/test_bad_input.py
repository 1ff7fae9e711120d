"""Bad input stops a run before any training, with one clear message, and writes nothing finished."""

from __future__ import annotations

from pathlib import Path

import pytest

from mas_flower.tools.launch import launch, own_superlink
from tests.test_app_simulation import run_app

GOOD = {"method": "mas", "task-set": "sdk", "splits": 2, "num-rounds": 2, "merge-rounds": 1, "affinity-rounds": 1,
        "clients-per-round": 2, "batch-size": 4, "image-size": 32, "node-timeout": 3.0}


@pytest.mark.parametrize(("override", "message"), [
    ({"task-set": "sdxq"}, r"unknown task letter\(s\) 'q', 'x'"),
    ({"splits": 4}, r"splits=4 must be between 1 and the 3 tasks"),
    ({"merge-rounds": 3}, r"merge-rounds=3 must be between 1 and num-rounds=2"),
    ({"image-size": 30}, r"image.size.*30"),
    ({"resume": "/nonexistent/run"}, r"resume='/nonexistent/run': no such run folder"),
])
def test_bad_settings_fail_the_preflight(override: dict, message: str, tiny_federation: Path) -> None:
    """What the ServerApp checks before it contacts any node (the flwr-run test below shows such a
    failure ends the run `finished:failed`)."""
    from server_app.app import preflight

    with pytest.raises(ValueError, match=message):
        preflight({}, {**GOOD, "data-root": str(tiny_federation), **override})


@pytest.mark.parametrize(("override", "message"), [
    ({"clients-per-round": 5}, r"clients-per-round=5 but only 3 nodes"),
    ({"data-root": "/nonexistent/taskonomy"}, r"/nonexistent/taskonomy"),
])
def test_bad_input_fails_before_training(override: dict, message: str, private_homes, tiny_federation: Path,
                                         tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = {**GOOD, "data-root": str(tiny_federation), "output-dir": str(out), "run-name": "bad", **override}
    with pytest.raises(Exception, match=message):
        run_app(config, num_supernodes=3)
    assert not list(out.glob("**/results.json")) and not list(out.glob("**/checkpoint.pt"))


def test_missing_building_is_named(private_homes, tiny_federation: Path, tmp_path: Path) -> None:
    """Six simulated nodes over a federation of five buildings: the sixth has no building."""
    config = {**GOOD, "data-root": str(tiny_federation), "output-dir": str(tmp_path), "run-name": "bad"}
    with pytest.raises(Exception, match=r"partition-id=5 but .* has 5 buildings"):
        run_app(config, num_supernodes=6)


def test_bad_input_through_flwr_run_ends_failed(private_homes, tiny_federation: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with own_superlink(tmp_path / "flwr", say=lambda _: None) as env:
        _, status = launch(nodes=2, cpus_per_node=1, gpus_per_node=0, env=env, extra=[
            "--run-config", f"task-set='sdq' data-root='{tiny_federation}' output-dir='{out}'"])
    assert status == "finished:failed"
    assert not out.exists() or not any(out.iterdir())
