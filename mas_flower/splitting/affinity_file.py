"""Reading an affinity file and answering `mas-flower split` (docs/design.md, section "Interfaces users rely on").

The file is `{"tasks": "sdnkt", "matrix": [[...]]}` with matrix[i][j] = Z[i -> j]; tasks are single
characters in a string or a list of names. Every problem is reported naming the file and the key.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from mas_flower.splitting.mas import mas_split
from mas_flower.splitting.tag import tag_split

METHODS = ("mas", "tag")


def parse_affinity(data: object, source: str = "affinity") -> tuple[str | list[str], np.ndarray]:
    """Validate `{"tasks": ..., "matrix": ...}`; returns the task labels and the matrix."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object with keys 'tasks' and 'matrix', got {type(data).__name__}")
    for key in ("tasks", "matrix"):
        if key not in data:
            raise ValueError(f"{source}: missing key {key!r}")
    tasks = data["tasks"]
    if isinstance(tasks, list):
        if not all(isinstance(t, str) and t for t in tasks):
            raise ValueError(f"{source}: 'tasks' must be a string of letters or a list of non-empty names")
        labels = list(tasks)
    elif isinstance(tasks, str):
        labels = list(tasks)
    else:
        raise ValueError(f"{source}: 'tasks' must be a string of letters or a list of names, got {tasks!r}")
    if not labels:
        raise ValueError(f"{source}: 'tasks' is empty")
    dup = sorted({t for t in labels if labels.count(t) > 1})
    if dup:
        raise ValueError(f"{source}: 'tasks' has duplicate labels {dup}")
    matrix = data["matrix"]
    n = len(labels)
    if not isinstance(matrix, list) or not all(isinstance(row, list) for row in matrix):
        raise ValueError(f"{source}: 'matrix' must be a list of rows (lists of numbers)")
    widths = {len(row) for row in matrix}
    if len(matrix) != n or widths != {n}:
        shape = f"{len(matrix)} rows of lengths {sorted(widths)}"
        raise ValueError(f"{source}: 'matrix' must be {n}x{n} for the {n} tasks {tasks!r}, got {shape}")
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{source}: 'matrix'[{i}][{j}] is not a number: {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"{source}: 'matrix'[{i}][{j}] is not finite: {v!r}")
    return (tasks if isinstance(tasks, str) else labels), np.array(matrix, dtype=float)


def load_affinity(path: Path) -> tuple[str | list[str], np.ndarray]:
    """Read and validate an affinity file (FileNotFoundError if absent, ValueError if malformed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    return parse_affinity(data, str(path))


def split_from_file(path: Path, splits: int, method: str = "mas", time_limit: float = 10.0) -> dict:
    """Answer for `mas-flower split`: {"splits": ["sdn", "kt"], "score": ..., "optimal": ...,
    "method": ...}; groups are lists of names when the tasks are a list of names."""
    if method not in METHODS:
        raise ValueError(f"unknown split method {method!r}; choose from {', '.join(METHODS)}")
    tasks, matrix = load_affinity(path)
    n = len(tasks)
    if not 1 <= splits <= n:
        raise ValueError(f"{path}: --splits must be between 1 and the number of tasks ({n}), got {splits}")
    if method == "tag" and n < 2:
        raise ValueError(f"{path}: TAG needs at least 2 tasks")
    search = mas_split if method == "mas" else tag_split
    result = search(matrix, splits, time_limit=time_limit)
    out = {"splits": result.labels(tasks), "score": result.score, "optimal": result.optimal, "method": method}
    if result.upper_bound is not None:
        out["upper_bound"] = result.upper_bound
    return out
