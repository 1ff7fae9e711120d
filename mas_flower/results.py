"""Run folders and results.json: where a run's outputs go and the keys users rely on (docs/results.md).

Nothing that looks finished is written until the run is: results.json is written last and
atomically, so a crashed run leaves a folder without it.
"""

from __future__ import annotations

import json
import os
import re
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


def new_run_dir(settings: Settings, server_strategy: str | None = None) -> Path:
    """A fresh folder `<output-dir>/<run name>/` (`run_name`); never reuses one that exists (`fresh_dir`).

    `server_strategy` names the Flower strategy aggregating the run when the caller passes its own
    (default: `settings.server_strategy`). `output-dir` defaults to `$MAS_FLOWER_HOME/outputs`.
    """
    root = Path(settings.output_dir) if settings.output_dir else home() / "outputs"
    return fresh_dir(root / run_name(settings, server_strategy))


def run_name(settings: Settings, server_strategy: str | None = None, when: float | None = None) -> str:
    """The run folder's name: the user's `run-name` as given, else `<method>[-x<splits>][@<server strategy>]-
    <task set>-seed<seed>-<YYYYmmdd-HHMMSS>`, e.g. `mas-x2@fedadam-sdnkt-seed0-20250101-120000`.

    `-x<splits>` only for methods that take `splits`; `@<server strategy>` (lower case) only when it is
    not FedAvg, the default; `when` is the time in seconds since the epoch (default: now, local time).
    """
    if settings.run_name:
        return settings.run_name
    from mas_flower.methods import method_class

    splits = f"-x{settings.splits}" if method_class(settings.method).takes_splits else ""
    server = (server_strategy or settings.server_strategy).lower()
    via = "" if server == "fedavg" else f"@{_folder_safe(server)}"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    return f"{settings.method}{splits}{via}-{settings.task_set}-seed{settings.seed}-{stamp}"


def _folder_safe(text: str) -> str:
    """`text` with anything but letters, digits, `_`, `.` and `-` replaced by `_` (a plain folder name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


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
