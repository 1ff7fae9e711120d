"""Run folders and results.json: where a run's outputs go and the keys users rely on (design.md §8).

Nothing that looks finished is written until the run is: results.json is written last and
atomically, so a crashed run leaves a folder without it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mas_flower.files import write_text_atomic
from mas_flower.settings import Settings, home

RESULTS_FILE = "results.json"


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically, so readers never see half a file."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=_jsonable) + "\n")


def save_torch(path: Path, payload: Any) -> None:
    """`torch.save` atomically (temp file, then rename): a kill mid-write leaves the old file intact."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def new_run_dir(settings: Settings) -> Path:
    """A fresh folder `<output-dir>/<run name>/`; never reuses one that exists."""
    root = Path(settings.output_dir) if settings.output_dir else home() / "outputs"
    from mas_flower.methods import method_class

    splits = f"-x{settings.splits}" if method_class(settings.method).takes_splits else ""
    name = settings.run_name or (
        f"{settings.method}{splits}-{settings.task_set}-seed{settings.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    return fresh_dir(root / name)


def fresh_dir(path: Path) -> Path:
    """Make `path`, or `path-2`, `path-3`, ... if taken: atomically, so two processes never share one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, k = path, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            k += 1
            candidate = path.with_name(f"{path.name}-{k}")


def affinity_payload(task_set: str, matrix: np.ndarray | None) -> dict[str, Any] | None:
    """The `{"tasks": ..., "matrix": ...}` form that `mas-flower split` reads (matrix[i][j] = Z[i→j])."""
    if matrix is None:
        return None
    return {"tasks": task_set, "matrix": np.asarray(matrix, dtype=float).tolist()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
