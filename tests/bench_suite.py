"""A tiny real suite (fedavg and mas-2 on 'sdk', 2 rounds, 3 nodes, 32 px synthetic data), run through
Flower once per test session and shared by test_bench and test_report."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from mas_flower.tools.bench import run_suite
from tests.flower_processes import pids_with_arg

TINY_RUNS = ("fedavg-sdk-seed0", "mas-x2-sdk-seed0")


def write_suite(path: Path, **changes: object) -> Path:
    """A valid tiny suite file, with top-level keys replaced (a value of None removes the key)."""
    suite: dict[str, object] = {
        "task_sets": ["sdk"],
        "methods": ["fedavg", "mas-2"],
        "seeds": [0],
        "data": {"synthetic": {"buildings": 3, "views": 8, "size": 32, "seed": 0}},
        "output": str(path.parent / "out"),
        "run_config": {"num-rounds": 2, "merge-rounds": 1, "affinity-rounds": 1, "clients-per-round": 2,
                       "batch-size": 4, "image-size": 32},
        "nodes": 3,
    }
    for key, value in changes.items():
        if value is None:
            suite.pop(key, None)
        else:
            suite[key] = value
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def tiny_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of the tiny suite, run on first use (the `private_homes` fixture must be active)."""
    base = tmp_path_factory.getbasetemp() / "tiny-bench"
    out = base / "out"
    if not (out / "summary.csv").is_file():
        base.mkdir(exist_ok=True)
        suite = write_suite(base / "suite.yaml")
        assert os.environ["MAS_FLOWER_HOME"].startswith(str(tmp_path_factory.getbasetemp()))
        code = run_suite(suite)
        assert code == 0, (out / "bench-status.json").read_text()
        assert not pids_with_arg(str(out / ".flwr" / "local-superlink")), "bench left its SuperLink running"
    return out
