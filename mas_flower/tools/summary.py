"""Suite summaries rebuilt from run folders alone: summary.csv and a summary.md laid out like the
paper's supplementary Tables 3-5 (and Table 1 for the splits found per seed), and runs.csv.

- `summary.csv`: one row per (task set, method); every figure as `<name>_mean` and `<name>_std`
  over seeds (population std): total test loss, hours, energy, CO2, the optional compute and
  communication figures a run records (`OPTIONAL_SCALARS`), Δm% against one-by-one (on the task
  metrics, `delta_m_pct`, and on the test losses, `delta_m_loss_pct`), each task's test loss
  (`test_loss_<t>`) and each task metric (`<t>_<metric>`, e.g. `s_miou`); each task's test skill
  (`test_skill_<t>`: 1 − test loss / the best constant predictor's, 0 = no better than a constant),
  each run's lowest (`test_skill_min`) and how many runs have a task below `LOW_SKILL`
  (`low_skill_runs`); MAS's `split_stability`, the oracle's `oracle_score_spearman` and the median
  |pair gain| of HOA and pairs runs (`pair_gain_val_median_abs`, `pair_gain_test_median_abs`);
  `diverged_runs`: how many runs name a network in results.json's `diverged` (its validation loss
  exploded: `mas_flower.strategy.divergence`). Their numbers stay in the means, and summary.md marks
  the row and names the run, so that no divergence is averaged in silently.
- `runs.csv`: tidy, one row per run × task (the task's test loss, skill and metrics, the run's
  totals, and the networks that diverged in it), for analysis in pandas or R.

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

from mas_flower.constant import LOW_SKILL
from mas_flower.methods import list_methods, method_class
from mas_flower.methods.label import MethodLabel
from mas_flower.metrics import delta_m
from mas_flower.results import RESULTS_FILE

#: The method Δm% compares against.
BASELINE = "one-by-one"
#: Per-run numbers summarised when runs record them (compute and communication, and the evidence
#: behind a split), at the top of results.json or in its `details`, and the timing
#: figures derived from them (`timing`).
OPTIONAL_SCALARS = ("train_tflops", "affinity_tflops", "eval_tflops", "comm_mb_down", "comm_mb_up", "comm_mb",
                    "client_setup_seconds", "warmup_client_seconds", "steady_client_seconds", "compute_share",
                    "oracle_mas_rank", "split_stability", "oracle_score_spearman", "pair_gain_val_median_abs",
                    "pair_gain_test_median_abs")
#: The `OPTIONAL_SCALARS` that weigh a split's evidence, explained in summary.md.
EVIDENCE = ("split_stability", "oracle_score_spearman", "pair_gain_val_median_abs", "pair_gain_test_median_abs")


def timing(results: dict[str, Any]) -> dict[str, float]:
    """The run's client time without its warm-up, and the share of the clients' time that is compute.

    - `warmup_client_seconds`: the training-loop seconds of the run's first round (`history[0]`),
      which pay a fresh process's first-use costs (lazy imports, allocator, caches);
    - `steady_client_seconds` = `client_train_seconds` − `warmup_client_seconds`;
    - `compute_share` = `steady_client_seconds` / (`client_train_seconds` + `client_setup_seconds`),
      in [0, 1]: the part of all client seconds (training loops and their one-time set-up) spent in
      training loops after the warm-up round, i.e. in per-sample compute.

    Returns {} for a run whose history has no per-round `client_train_seconds` (older runs).
    """
    history = results.get("history") or []
    warmup = history[0].get("client_train_seconds") if history else None
    if warmup is None:
        return {}
    train = float(results["client_train_seconds"])
    everything = train + float(results.get("client_setup_seconds") or 0.0)
    steady = train - float(warmup)
    return {"warmup_client_seconds": float(warmup), "steady_client_seconds": steady,
            "compute_share": steady / everything if everything > 0 else 0.0}


def run_scalars(results: dict[str, Any]) -> dict[str, Any]:
    """results.json's `OPTIONAL_SCALARS` (top level, else `details`; None where the run has none),
    with the `timing` figures."""
    details = results.get("details") or {}
    return {**{k: results[k] if k in results else details.get(k) for k in OPTIONAL_SCALARS}, **timing(results)}


def low_skill(results: dict[str, Any]) -> dict[str, float]:
    """The run's tasks whose test skill is below `LOW_SKILL` (its networks barely beat a constant)."""
    return {t: float(v) for t, v in (results.get("test_skill") or {}).items() if v is not None and v < LOW_SKILL}


def diverged(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """results.json's `diverged` (network -> round, loss, first_loss); {} for runs that record none."""
    return results.get("diverged") or {}


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
        takes_splits = method in list_methods() and method_class(method).takes_splits
        server = self.results.get("server_strategy", "fedavg")
        return MethodLabel(method, self.results["config"]["splits"] if takes_splits else None,
                           None if server == "fedavg" else server).label

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
    #: `OPTIONAL_SCALARS` that every run of the row records.
    extra: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Task letter -> metric -> (mean, std), from results.json's `test_metrics` (when every run has them).
    metrics: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    #: Δm% against one-by-one on the task metrics and on the test losses (None without a baseline).
    delta_m: tuple[float, float] | None = None
    delta_m_loss: tuple[float, float] | None = None
    #: The Flower strategy that aggregated the networks and its hyperparameters (of the first seed).
    server_strategy: str = "fedavg"
    server_hyperparameters: dict[str, Any] = field(default_factory=dict)
    #: Task letter -> test skill (mean, std), for the tasks every run records a skill of.
    skill: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Each run's lowest task skill (mean, std), when every run has every task's skill.
    min_skill: tuple[float, float] | None = None
    #: Runs with a task skill below `LOW_SKILL` (None when no run records skills).
    low_skill_runs: int | None = None
    #: Runs in which a network diverged (results.json's `diverged`).
    diverged_runs: int = 0


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
    read = MethodLabel.read(label)
    return (method_class(read.method).paper_order if read.method in list_methods() else 1000, read.splits or 0)


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
        baseline = groups.get((ts, BASELINE), [])
        metrics = _metric_stats(res, ts)
        scalars = [run_scalars(r) for r in res]
        rows.append(Row(
            method=label, task_set=ts, runs=len(group),
            total=_stats(r["total_test_loss"] for r in res),
            client_hours=_stats(r["client_train_seconds"] / 3600 for r in res),
            wall_hours=_stats(r["wall_seconds"] / 3600 for r in res),
            energy_kwh=_stats(r["energy_kwh"] for r in res),
            co2_g=_stats(r["co2_g"] for r in res),
            tasks={t: _stats(r["test_loss"][t] for r in res) for t in ts},
            splits={r.seed: r.results.get("splits") for r in group},
            extra={k: _stats(sc[k] for sc in scalars) for k in OPTIONAL_SCALARS
                   if all(sc.get(k) is not None for sc in scalars)},
            metrics=metrics,
            delta_m=_delta_m_stats(res, baseline, ts, _run_metrics) if metrics else None,
            delta_m_loss=_delta_m_stats(res, baseline, ts, _run_losses),
            server_strategy=res[0].get("server_strategy", "fedavg"),
            server_hyperparameters=res[0].get("server_hyperparameters", {}),
            diverged_runs=sum(bool(diverged(r)) for r in res),
            **_skill_stats(res, ts),
        ))
    return rows


def _skill_stats(res: list[dict[str, Any]], tasks: str) -> dict[str, Any]:
    """Row's `skill`, `min_skill` and `low_skill_runs` from the runs' `test_skill`."""
    found = [r.get("test_skill") or {} for r in res]
    skill = {t: _stats(f[t] for f in found) for t in tasks if all(f.get(t) is not None for f in found)}
    complete = len(skill) == len(tasks)
    return {"skill": skill, "min_skill": _stats(min(f[t] for t in tasks) for f in found) if complete else None,
            "low_skill_runs": sum(bool(low_skill(r)) for r in res) if any(found) else None}


def _run_metrics(results: dict[str, Any], tasks: str) -> dict[str, dict[str, float]] | None:
    found = results.get("test_metrics") or {}
    return {t: dict(found[t]) for t in tasks} if all(t in found for t in tasks) else None


def _run_losses(results: dict[str, Any], tasks: str) -> dict[str, dict[str, float]]:
    return {t: {"loss": float(results["test_loss"][t])} for t in tasks}


def _metric_stats(res: list[dict[str, Any]], tasks: str) -> dict[str, dict[str, tuple[float, float]]]:
    per_run = [_run_metrics(r, tasks) for r in res]
    if not per_run or any(m is None for m in per_run):
        return {}
    return {t: {name: _stats(m[t][name] for m in per_run) for name in per_run[0][t]} for t in tasks}


def _baseline(baseline: list[Run], tasks: str, values) -> dict[str, dict[str, float]] | None:
    """The mean of one-by-one's runs' `values` per task and metric; None without runs or values."""
    base_runs = [values(b.results, tasks) for b in baseline]
    if not base_runs or any(b is None for b in base_runs):
        return None
    return {t: {name: float(np.mean([b[t][name] for b in base_runs])) for name in base_runs[0][t]} for t in tasks}


def _delta_m_stats(res: list[dict[str, Any]], baseline: list[Run], tasks: str, values) -> tuple[float, float] | None:
    """Δm% (`mas_flower.metrics.delta_m`) of each run against the mean of one-by-one's runs on the
    same task set, then mean ± std over the runs; None without a baseline or its values."""
    base = _baseline(baseline, tasks, values)
    runs = [values(r, tasks) for r in res]
    if base is None or any(r is None for r in runs):
        return None
    try:
        return _stats(delta_m(r, base) for r in runs)
    except ValueError:  # a zero baseline: no relative change
        return None


def write_summary(out_dir: Path, runs: list[Run], method_order: list[str] | None = None) -> tuple[Path, Path]:
    """Write `summary.csv`, `summary.md` and `runs.csv` into `out_dir`; return the first two paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarise(runs, method_order)
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    letters = list(dict.fromkeys(t for row in rows for t in row.tasks))
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        columns = _summary_columns(rows, letters)
        writer.writerow(["method", "task_set", "runs", *(f"{name}_{part}" for name, _ in columns
                                                         for part in ("mean", "std")),
                         "server_strategy", "server_hyperparameters", "low_skill_runs", "diverged_runs"])
        for row in rows:
            cells = []
            for _, get in columns:
                stat = get(row)
                cells += ["", ""] if stat is None else [_g(stat[0]), _g(stat[1])]
            writer.writerow([row.method, row.task_set, row.runs, *cells, row.server_strategy,
                             json.dumps(row.server_hyperparameters, sort_keys=True),
                             "" if row.low_skill_runs is None else row.low_skill_runs, row.diverged_runs])
    write_runs_csv(out_dir / "runs.csv", runs)
    md_path.write_text(markdown(rows, runs))
    return csv_path, md_path


def _summary_columns(rows: list[Row], letters: list[str]) -> list[tuple[str, Any]]:
    """(column name, row -> (mean, std) or None) for every figure some row has."""
    columns: list[tuple[str, Any]] = [
        ("total_loss", lambda r: r.total), ("client_hours", lambda r: r.client_hours),
        ("wall_hours", lambda r: r.wall_hours), ("energy_kwh", lambda r: r.energy_kwh), ("co2_g", lambda r: r.co2_g)]
    columns += [(k, lambda r, k=k: r.extra.get(k)) for k in OPTIONAL_SCALARS if any(k in r.extra for r in rows)]
    if any(r.delta_m is not None for r in rows):
        columns.append(("delta_m_pct", lambda r: r.delta_m))
    if any(r.delta_m_loss is not None for r in rows):
        columns.append(("delta_m_loss_pct", lambda r: r.delta_m_loss))
    columns += [(f"test_loss_{t}", lambda r, t=t: r.tasks.get(t)) for t in letters]
    columns += [(f"test_skill_{t}", lambda r, t=t: r.skill.get(t)) for t in letters if any(t in r.skill for r in rows)]
    if any(r.min_skill is not None for r in rows):
        columns.append(("test_skill_min", lambda r: r.min_skill))
    names = list(dict.fromkeys((t, m) for r in rows for t, ms in r.metrics.items() for m in ms))
    columns += [(f"{t}_{m}", lambda r, t=t, m=m: r.metrics.get(t, {}).get(m)) for t, m in names]
    return columns


#: runs.csv's per-run columns (results.json keys), after run, method, task_set, seed, task, group.
RUN_COLUMNS = ("total_test_loss", "client_train_seconds", "wall_seconds", "energy_kwh", "co2_g", *OPTIONAL_SCALARS)


def write_runs_csv(path: Path, runs: list[Run]) -> Path:
    """Tidy table, one row per run × task: run folder, method label, task set, seed, task, the groups
    that held the task (space-separated; empty for methods that do not split), its test loss and test
    skill, each task metric (empty where the task has no such metric), and the run's totals (`RUN_COLUMNS`)."""
    metric_names = list(dict.fromkeys(m for run in runs for ms in (run.results.get("test_metrics") or {}).values()
                                      for m in ms))
    ordered = sorted(runs, key=lambda r: (r.task_set, method_sort_key(r.label), r.label, r.seed, r.path.name))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "method", "task_set", "seed", "task", "group", "test_loss", "test_skill",
                         *metric_names, *RUN_COLUMNS, "diverged"])
        for run in ordered:
            res, found = run.results, run.results.get("test_metrics") or {}
            scalars = run_scalars(res)
            groups = res.get("splits") or []
            for t in run.task_set:
                writer.writerow([
                    run.path.name, run.label, run.task_set, run.seed, t, " ".join(g for g in groups if t in g),
                    _g(res["test_loss"][t]), _cell((res.get("test_skill") or {}).get(t)),
                    *(_cell(found.get(t, {}).get(m)) for m in metric_names),
                    *(_cell(scalars.get(k, res.get(k))) for k in RUN_COLUMNS), " ".join(diverged(res))])
    return path


def _cell(value: Any) -> str:
    return "" if value is None else _g(float(value))


def markdown(rows: list[Row], runs: list[Run]) -> str:
    lines = ["# Benchmark summary", "",
             f"{len(runs)} finished runs. Test loss per task (lower is better) and their total, as mean ± std "
             "over seeds (population std). Time: client training hours, summed over clients and rounds (the "
             "paper's GPU hours); wall: the ServerApp's wall-clock hours. Energy and CO2eq as results.json "
             "records them. Client s (no warm-up): client training-loop seconds without the run's first round; "
             "compute share: those seconds over all client seconds, set-up and first round included "
             "(`mas_flower.tools.summary.timing`)."]
    estimated = [r for r in runs if r.results.get("energy_estimated")]
    if estimated:
        lines.append(f"Energy is an **estimate**, not a measurement, in {len(estimated)} of {len(runs)} runs "
                     f"(e.g. {estimated[0].path.name}: {estimated[0].results.get('energy_method')}).")
    if any(row.delta_m_loss is not None or row.delta_m is not None for row in rows):
        lines.append("Δm% (Maninis et al., CVPR 2019): the mean over tasks of each task's signed relative change "
                     f"against {BASELINE} (mean of its seeds), positive = better; on the task metrics and on the "
                     "test losses; mean ± std over seeds.")
    if any(row.low_skill_runs is not None or set(EVIDENCE) & set(row.extra) for row in rows):
        lines.append("Skill: 1 − test loss / the test loss of the best constant predictor (0 = no better than a "
                     f"constant, higher is better); **low skill**: runs with a task below {LOW_SKILL}, whose networks "
                     "barely learned: read no comparison from them. Split stability: the share of client bootstrap "
                     "resamples giving MAS the same split; ρ(score, loss): the oracle's Spearman correlation of each "
                     "partition's affinity score with its total test loss (−1: the score ranks as the loss does); "
                     "median |g|: the median relative pair gain |(L_j alone − L_j with i) / L_j alone|.")
    if any(row.diverged_runs for row in rows):
        lines.append("**Diverged**: runs in which a network's total validation loss rose above 3 x its first "
                     "validated value (results.json's `diverged`); their numbers are in the means, read no comparison "
                     "from them.")
    for ts in dict.fromkeys(row.task_set for row in rows):
        part = [row for row in rows if row.task_set == ts]
        optional = [head for head in _optional_cells(part[0]) if any(_optional_cells(row)[head] for row in part)]
        lines += ["", f"## Task set `{ts}`", "",
                  "| Method | Runs | Total Loss | " + "".join(f"{head} | " for head in optional)
                  + "Time (h) | Wall (h) | Energy (kWh) | CO2eq (g) | " + " | ".join(ts) + " |",
                  "|---|---:|---:|" + "---:|" * (len(optional) + 4 + len(ts))]
        for row in part:
            total = _pm(row.total) + (f" **diverged** ({row.diverged_runs} of {row.runs} runs)"
                                      if row.diverged_runs else "")
            cells = [display_name(row.method), str(row.runs), total,
                     *(_optional_cells(row)[head] for head in optional),
                     _pm(row.client_hours), _pm(row.wall_hours), _pm(row.energy_kwh), _pm(row.co2_g),
                     *(_pm(row.tasks[t]) for t in ts)]
            lines.append("| " + " | ".join(cells) + " |")
        if any(_all_in_one(row.method) for row in part):
            lines += ["", r"\* All-in-one methods"]
        lines += _diverged_lines([run for run in runs if run.task_set == ts])
        names = list(dict.fromkeys((t, m) for row in part for t, ms in row.metrics.items() for m in ms))
        if names:
            lines += ["", f"### Task metrics on `{ts}` (test set)", "",
                      "| Method | " + " | ".join(f"{t} {m}" for t, m in names) + " |", "|---|" + "---:|" * len(names)]
            for row in part:
                cells = [_pm(row.metrics[t][m]) if m in row.metrics.get(t, {}) else "" for t, m in names]
                lines.append(f"| {display_name(row.method)} | " + " | ".join(cells) + " |")
        lines += _skill_lines(ts, part, [run for run in runs if run.task_set == ts])
        split_rows = [row for row in part if any(s for s in row.splits.values())]
        if split_rows:
            seeds = sorted({s for row in split_rows for s in row.splits})
            lines += ["", f"### Splits per seed on `{ts}` (each split separated by a comma)", "",
                      "| Method | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
            for row in split_rows:
                cells = [",".join(row.splits[s] or []) if s in row.splits else "" for s in seeds]
                cells = [f"`{c}`" if c else "" for c in cells]
                lines.append(f"| {display_name(row.method)} | " + " | ".join(cells) + " |")
        lines += _oracle_lines(ts, [run for run in runs if run.task_set == ts])
    return "\n".join(lines) + "\n"


def _optional_cells(row: Row) -> dict[str, str]:
    """The main table's optional columns: heading -> the row's cell ("" where the row lacks the figure)."""
    extra = row.extra.get
    cells = {"Δm% metrics": row.delta_m, "Δm% loss": row.delta_m_loss, "Train TFLOPs": extra("train_tflops"),
             "Comm (MB)": extra("comm_mb"), "Client s (no warm-up)": extra("steady_client_seconds"),
             "Compute share": extra("compute_share"), "Min skill": row.min_skill,
             "Split stability": extra("split_stability"), "ρ(score, loss)": extra("oracle_score_spearman"),
             "Median \\|g\\|": extra("pair_gain_val_median_abs")}
    out = {head: "" if stat is None else _pm(stat) for head, stat in cells.items()}
    if row.low_skill_runs:
        out["Min skill"] = f"{out['Min skill']} **low skill** ({row.low_skill_runs} of {row.runs} runs)".strip()
    return out


def _diverged_lines(runs: list[Run]) -> list[str]:
    """`Diverged: `<run>` <network> (round r: validation loss x > 3 x its first y); ...`, or []."""
    found = sorted((run.path.name, diverged(run.results)) for run in runs if diverged(run.results))
    if not found:
        return []
    return ["", "Diverged: " + "; ".join(f"`{name}` " + ", ".join(
        f"{net} (round {d['round']}: validation loss {d['loss']:.4g} > 3 x its first {d['first_loss']:.4g})"
        for net, d in nets.items()) for name, nets in found)]


def _skill_lines(ts: str, part: list[Row], runs: list[Run]) -> list[str]:
    """Each task's test skill per method, and the runs with a task below `LOW_SKILL`."""
    names = [t for t in ts if any(t in row.skill for row in part)]
    if not names:
        return []
    lines = ["", f"### Test skill on `{ts}` (1 − test loss / the best constant's; 0 = no better than a constant)",
             "", "| Method | " + " | ".join(names) + " | Min |", "|---|" + "---:|" * (len(names) + 1)]
    for row in part:
        cells = [_pm(row.skill[t]) if t in row.skill else "" for t in names] + [_optional_cells(row)["Min skill"]]
        lines.append(f"| {display_name(row.method)} | " + " | ".join(cells) + " |")
    low = sorted((run.path.name, found) for run in runs if (found := low_skill(run.results)))
    if low:
        lines += ["", f"Low skill (< {LOW_SKILL}): " + "; ".join(
            f"`{name}` " + ", ".join(f"{t} {v:.3f}" for t, v in found.items()) for name, found in low)]
    return lines


def oracle_rank_text(results: dict[str, Any]) -> str | None:
    """`MAS's choice sd,nkt ranks 3 of 15 (total test loss 5.12; best s,dnkt 5.01); ρ(score, loss) -0.62`
    for an oracle run (ρ where recorded), None for other runs (`mas_flower.methods.oracle` writes the details)."""
    d = results.get("details") or {}
    if "oracle_mas_rank" not in d:
        return None
    best = d["oracle_partitions"][0]
    text = (f"MAS's choice {','.join(d['oracle_mas_partition'])} ranks {d['oracle_mas_rank']} of "
            f"{d['oracle_partition_count']} (total test loss {d['oracle_mas_total_test_loss']:.4g}; best "
            f"{','.join(best['groups'])} {best['total_test_loss']:.4g})")
    rho = d.get("oracle_score_spearman")
    return text if rho is None else f"{text}; ρ(score, loss) {rho:.2f}"


def oracle_partition_delta_m(results: dict[str, Any], base: dict[str, dict[str, float]] | None) -> list[float | None]:
    """Δm% (loss) of each of an oracle run's partitions (`details.oracle_partitions`, in their order)
    against one-by-one's mean test losses `base`; None where a partition has no `test_loss` or no base."""
    out: list[float | None] = []
    for part in (results.get("details") or {}).get("oracle_partitions", []):
        losses = part.get("test_loss")
        try:
            out.append(None if base is None or not losses else delta_m({t: {"loss": v} for t, v in losses.items()},
                                                                         base))
        except ValueError:  # a zero baseline: no relative change
            out.append(None)
    return out


def _oracle_lines(ts: str, runs: list[Run]) -> list[str]:
    """The oracle's rank of MAS's choice per run, then every partition with its score and Δm% (loss)."""
    found = sorted(((run, text) for run in runs if (text := oracle_rank_text(run.results))),
                   key=lambda rt: (rt[0].label, rt[0].seed))
    if not found:
        return []
    lines = ["", f"### Oracle on `{ts}`: where MAS's choice ranks among all partitions (1 = best test loss)", "",
             "| Method | Seed | Rank of MAS's choice |", "|---|---:|---|"]
    lines += [f"| {display_name(run.label)} | {run.seed} | {text} |" for run, text in found]
    base = _baseline([run for run in runs if run.label == BASELINE], ts, _run_losses)
    table = [line for run, _ in found for line in _partition_lines(run, base)]
    if not table:
        return lines
    return lines + ["", f"### Oracle on `{ts}`: every partition, best first (score: the affinity score MAS "
                    f"maximises; Δm% loss against {BASELINE}'s mean test losses, positive = better)", "",
                    "| Method | Seed | Partition | Score | Total test loss | Δm% loss |",
                    "|---|---:|---|---:|---:|---:|", *table]


def _partition_lines(run: Run, base: dict[str, dict[str, float]] | None) -> list[str]:
    """An oracle run's partitions that record their per-task test losses, as rows of the partition table."""
    details = run.results["details"]
    lines = []
    for part, dm in zip(details["oracle_partitions"], oracle_partition_delta_m(run.results, base), strict=True):
        if "test_loss" not in part:
            continue
        mas = " (MAS)" if part["groups"] == details.get("oracle_mas_partition") else ""
        lines.append(f"| {display_name(run.label)} | {run.seed} | `{','.join(part['groups'])}`{mas} | "
                     f"{_cell(part.get('score'))} | {_g(part['total_test_loss'])} | "
                     f"{'' if dm is None else f'{dm:+.2f}'} |")
    return lines


def display_name(label: str, markdown: bool = True) -> str:
    """`fedavg` -> `FedAvg*`, `mas-2` -> `MAS-2`, as the paper's tables write them (`*` escaped for markdown)."""
    read = MethodLabel.read(label)
    shown = method_class(read.method).display_name if read.method in list_methods() else read.method
    name = shown + (f"-{read.splits}" if read.splits is not None else "")
    name += ("\\*" if markdown else "*") if _all_in_one(label) else ""
    return f"{name} over {read.server_strategy}" if read.server_strategy else name


def _all_in_one(label: str) -> bool:
    method = MethodLabel.read(label).method
    return method in list_methods() and method_class(method).all_in_one


def _stats(values: Iterable[float]) -> tuple[float, float]:
    arr = np.asarray(list(values), dtype=float)
    return float(arr.mean()), float(arr.std())


def _g(value: float) -> str:
    return f"{value:.6g}"


def _pm(stat: tuple[float, float]) -> str:
    """mean ± std with three significant digits of the mean, std to the same decimals (`nan` for
    an undefined mean, e.g. a Spearman ρ of constant scores)."""
    mean, std = stat
    if not (math.isfinite(mean) and math.isfinite(std)):
        return f"{mean:.3g} ± {std:.3g}"
    size = max(abs(mean), abs(std))
    decimals = 3 if size == 0 else min(max(2 - math.floor(math.log10(size)), 0), 8)
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"
