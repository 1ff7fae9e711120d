"""Shared fixtures: a private FLWR_HOME / MAS_FLOWER_HOME per test session, tiny synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids spinning against other processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def private_homes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Flower's and our home folders inside the test's temp space (never the user's)."""
    base = tmp_path_factory.mktemp("homes")
    homes = {"FLWR_HOME": base / "flwr", "MAS_FLOWER_HOME": base / "mas"}
    for key, path in homes.items():
        path.mkdir()
        os.environ[key] = str(path)
    return homes


@pytest.fixture(scope="session")
def tiny_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic federation (5 buildings × 12 views at 32 px), generated once per session."""
    from mas_flower.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate_dataset(root, buildings=5, views=12, size=32, seed=0)
    return root
