"""Every strategy command of docs/strategies.md, section "The run-config way", works as written: each is
run (shortened to a few rounds on a small federation) in Flower's simulation engine, and its losses stay
finite, nothing is flagged as diverged, and the last validation loss is below the first."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from tests.test_app_simulation import run_app

REPO = Path(__file__).resolve().parents[1]
SHORT = {"num-rounds": 4, "merge-rounds": 2, "affinity-rounds": 1, "clients-per-round": 3, "batch-size": 4,
         "local-epochs": 1, "image-size": 32, "model": "tiny"}


def readme_commands() -> list[str]:
    """The run-config strings of the `./run.sh --run-config "..."` lines of docs/strategies.md, section
    "The run-config way"."""
    page = (REPO / "docs" / "strategies.md").read_text()
    section = page.split("\n## The run-config way\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r'^\s+\./run\.sh --run-config "([^"]+)"', section, re.M)


def test_the_readme_shows_strategy_commands() -> None:
    commands = readme_commands()
    assert len(commands) >= 3 and all("server-strategy=" in c for c in commands)


def total(entry: dict) -> float:
    return sum(sum(f["val_loss"].values()) for f in entry["federations"].values() if "val_loss" in f)


@pytest.mark.parametrize("command", readme_commands())
def test_each_readme_strategy_command_learns(command: str, private_homes, tiny_federation: Path,
                                             tmp_path: Path) -> None:
    config = parse_config_args([command])
    run_app({**config, **SHORT, "data-root": str(tiny_federation), "output-dir": str(tmp_path), "run-name": "r"},
            num_supernodes=4)
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["server_strategy"] == config["server-strategy"]
    losses = [total(h) for h in results["history"] if any("val_loss" in f for f in h["federations"].values())]
    assert all(math.isfinite(x) for x in losses) and math.isfinite(results["total_test_loss"])
    assert results["diverged"] == {}
    assert losses[-1] < losses[0], losses
