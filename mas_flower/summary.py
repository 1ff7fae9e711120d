"""Suite summaries rebuilt from run folders alone: summary.csv and a summary.md laid out like the
paper's supplementary Tables 3-5 (and Table 1 for the splits found per seed).

Only `results.json` files are read, so a summary can be rebuilt at any time (`mas-flower report`,
or after a crash), and a half-finished suite summarises what it has.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mas_flower.methods import list_methods, method_class, parse_label
from mas_flower.results import RESULTS_FILE


@dataclass(frozen=True)
class Run:
    """One finished run: its folder and its results.json."""

    path: Path
    results: dict[str, Any]

    @property
    def label(self) -> str:
        """How suites name the method: `mas-2` (x from the run config: TAG may choose fewer groups), and
        `mas-2@fedadam` over another server strategy than FedAvg."""
        method = self.results["method"]
        label = method_class(method).label(self.results["config"]["splits"]) if method in list_methods() else method
        server = self.results.get("server_strategy", "fedavg")
        return label if server == "fedavg" else f"{label}@{server}"

    @property
    def task_set(self) -> str:
        return str(self.results["task_set"])

    @property
    def seed(self) -> int:
        return int(self.results["seed"])


@dataclass(frozen=True)
class Row:
    """One method on one task set, over its seeds: (mean, std) pairs, population std (numpy's default)."""

    method: str
    task_set: str
    runs: int
    total: tuple[float, float]
    client_hours: tuple[float, float]
    wall_hours: tuple[float, float]
    energy_kwh: tuple[float, float]
    co2_g: tuple[float, float]
    tasks: dict[str, tuple[float, float]]
    splits: dict[int, list[str] | None]
    #: The Flower strategy that aggregated the networks and its hyperparameters (of the first seed).
    server_strategy: str = "fedavg"
    server_hyperparameters: dict[str, Any] = field(default_factory=dict)


def find_run_dirs(path: Path) -> list[Path]:
    """Run folders in `path`: itself if it holds results.json, else `runs/*/` and `*/` that do."""
    path = Path(path)
    if (path / RESULTS_FILE).is_file():
        return [path]
    patterns = (f"runs/*/{RESULTS_FILE}", f"*/{RESULTS_FILE}")
    return sorted({p.parent for pattern in patterns for p in path.glob(pattern)})


def load_runs(paths: Iterable[Path]) -> list[Run]:
    """Runs from run folders and suite folders (each named in an error if it holds none)."""
    runs = []
    for path in paths:
        dirs = find_run_dirs(Path(path))
        if not dirs:
            raise FileNotFoundError(f"{path}: no run folder (a folder with {RESULTS_FILE}) here or in its runs/")
        for d in dirs:
            try:
                runs.append(Run(d, json.loads((d / RESULTS_FILE).read_text())))
            except (json.JSONDecodeError, KeyError) as err:
                raise ValueError(f"{d / RESULTS_FILE}: unreadable results ({err})") from None
    return runs


def method_sort_key(label: str) -> tuple[int, int]:
    """The paper's row order (`Method.paper_order`), then x."""
    base, x = parse_label(label.partition("@")[0])
    return (method_class(base).paper_order if base in list_methods() else 1000, x or 0)


def summarise(runs: list[Run], method_order: list[str] | None = None) -> list[Row]:
    """One row per (task set, method): task sets in order of appearance, methods in `method_order`
    (labels such as `mas-2`; others after them) or else the paper's order."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.task_set, run.label), []).append(run)
    task_sets = list(dict.fromkeys(run.task_set for run in runs))
    order = list(method_order or [])

    def key(item: tuple[str, str]) -> tuple[int, int, tuple[int, int]]:
        ts, label = item
        return task_sets.index(ts), order.index(label) if label in order else len(order), method_sort_key(label)

    rows = []
    for ts, label in sorted(groups, key=key):
        group = sorted(groups[(ts, label)], key=lambda r: r.seed)
        res = [r.results for r in group]
        rows.append(Row(
            method=label, task_set=ts, runs=len(group),
            total=_stats(r["total_test_loss"] for r in res),
            client_hours=_stats(r["client_train_seconds"] / 3600 for r in res),
            wall_hours=_stats(r["wall_seconds"] / 3600 for r in res),
            energy_kwh=_stats(r["energy_kwh"] for r in res),
            co2_g=_stats(r["co2_g"] for r in res),
            tasks={t: _stats(r["test_loss"][t] for r in res) for t in ts},
            splits={r.seed: r.results.get("splits") for r in group},
            server_strategy=res[0].get("server_strategy", "fedavg"),
            server_hyperparameters=res[0].get("server_hyperparameters", {}),
        ))
    return rows


def write_summary(out_dir: Path, runs: list[Run], method_order: list[str] | None = None) -> tuple[Path, Path]:
    """Write `summary.csv` and `summary.md` into `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarise(runs, method_order)
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    letters = list(dict.fromkeys(t for row in rows for t in row.tasks))
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "task_set", "runs", "total_loss_mean", "total_loss_std", "client_hours",
                         "wall_hours", "energy_kwh", "co2_g", *(f"test_loss_{t}" for t in letters),
                         "server_strategy", "server_hyperparameters"])
        for row in rows:
            writer.writerow([row.method, row.task_set, row.runs, _g(row.total[0]), _g(row.total[1]),
                             _g(row.client_hours[0]), _g(row.wall_hours[0]), _g(row.energy_kwh[0]), _g(row.co2_g[0]),
                             *(_g(row.tasks[t][0]) if t in row.tasks else "" for t in letters),
                             row.server_strategy, json.dumps(row.server_hyperparameters, sort_keys=True)])
    md_path.write_text(markdown(rows, runs))
    return csv_path, md_path


def markdown(rows: list[Row], runs: list[Run]) -> str:
    lines = ["# Benchmark summary", "",
             f"{len(runs)} finished runs. Test loss per task (lower is better) and their total, as mean ± std "
             "over seeds (population std). Time: client training hours, summed over clients and rounds (the "
             "paper's GPU hours); wall: the ServerApp's wall-clock hours. Energy and CO2eq as results.json "
             "records them."]
    estimated = [r for r in runs if r.results.get("energy_estimated")]
    if estimated:
        lines.append(f"Energy is an **estimate**, not a measurement, in {len(estimated)} of {len(runs)} runs "
                     f"(e.g. {estimated[0].path.name}: {estimated[0].results.get('energy_method')}).")
    for ts in dict.fromkeys(row.task_set for row in rows):
        part = [row for row in rows if row.task_set == ts]
        lines += ["", f"## Task set `{ts}`", "",
                  "| Method | Runs | Total Loss | Time (h) | Wall (h) | Energy (kWh) | CO2eq (g) | "
                  + " | ".join(ts) + " |",
                  "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(ts)]
        for row in part:
            cells = [display_name(row.method), str(row.runs), _pm(row.total), _pm(row.client_hours),
                     _pm(row.wall_hours), _pm(row.energy_kwh), _pm(row.co2_g), *(_pm(row.tasks[t]) for t in ts)]
            lines.append("| " + " | ".join(cells) + " |")
        if any(_all_in_one(row.method) for row in part):
            lines += ["", r"\* All-in-one methods"]
        split_rows = [row for row in part if any(s for s in row.splits.values())]
        if split_rows:
            seeds = sorted({s for row in split_rows for s in row.splits})
            lines += ["", f"### Splits per seed on `{ts}` (each split separated by a comma)", "",
                      "| Method | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
            for row in split_rows:
                cells = [",".join(row.splits[s] or []) if s in row.splits else "" for s in seeds]
                cells = [f"`{c}`" if c else "" for c in cells]
                lines.append(f"| {display_name(row.method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def display_name(label: str, markdown: bool = True) -> str:
    """`fedavg` -> `FedAvg*`, `mas-2` -> `MAS-2`, as the paper's tables write them (`*` escaped for markdown)."""
    method, _, server = label.partition("@")
    base, x = parse_label(method)
    shown = method_class(base).display_name if base in list_methods() else base
    name = shown + (f"-{x}" if x is not None else "")
    name += ("\\*" if markdown else "*") if _all_in_one(label) else ""
    return f"{name} over {server}" if server else name


def _all_in_one(label: str) -> bool:
    base, _ = parse_label(label.partition("@")[0])
    return base in list_methods() and method_class(base).all_in_one


def _stats(values: Iterable[float]) -> tuple[float, float]:
    arr = np.asarray(list(values), dtype=float)
    return float(arr.mean()), float(arr.std())


def _g(value: float) -> str:
    return f"{value:.6g}"


def _pm(stat: tuple[float, float]) -> str:
    """mean ± std with three significant digits of the mean, std to the same decimals."""
    mean, std = stat
    size = max(abs(mean), abs(std))
    decimals = 3 if size == 0 else min(max(2 - math.floor(math.log10(size)), 0), 8)
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"
