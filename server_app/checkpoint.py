"""The server's whole state after every round, written atomically, so a killed run can resume."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> None:
    path = run_dir / CHECKPOINT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


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
