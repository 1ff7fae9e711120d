"""The server's whole state after every round, written atomically, so a killed run can resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mas_flower.results import save_torch

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> None:
    save_torch(run_dir / CHECKPOINT_FILE, payload)


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CHECKPOINT_FILE
    if not run_dir.is_dir():
        raise ValueError(f"resume={str(run_dir)!r}: no such run folder")
    if not path.is_file():
        raise ValueError(f"resume={str(run_dir)!r}: {path} does not exist (nothing to resume)")
    if (run_dir / "results.json").exists():
        raise ValueError(f"resume={str(run_dir)!r}: this run already finished (results.json exists)")
    # Our own file: it pickles the method's plan (dataclasses, tensors, numpy arrays).
    return torch.load(path, weights_only=False)
