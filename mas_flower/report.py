"""`mas-flower report RUN_OR_SUITE_DIR...`: PNG figures from run folders (results.json only).

- `validation-loss.png`: total validation loss (sum over tasks) per round, per method, mean ± std
  over seeds (the supplementary's Figure 3). A round's total takes, per task, the lowest validation
  loss of the networks training it that round (HOA's first stage trains each task in several).
  Rounds are counted over all stages, so methods that retrain from scratch (HOA, TAG) run longer.
- `affinity-rounds-<task set>-<method>.png`: A[i→j] per affinity round, one panel per task j, a line
  per other task i, mean over seeds (Figure 4).
- `affinity-matrix-<task set>-<method>.png`: the final affinity matrix per seed, tasks reordered by
  the chosen groups, each group outlined (dashed where overlapping groups cannot be contiguous).
- `loss-vs-energy.png`: total test loss against energy per method, error bars = std over seeds.

summary.csv and summary.md (`mas_flower.summary`) are written beside the figures.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mas_flower.summary import Run, display_name, load_runs, summarise, write_summary
from mas_flower.tasks import TASKS

Curves = dict[tuple[str, str], list[Run]]


def make_report(paths: list[Path], out: Path | None = None) -> list[Path]:
    """Write the figures for the runs in `paths` (run or suite folders) into `out`; return the PNGs.

    `out` defaults to `<first path>/figures`.
    """
    if not paths:
        raise ValueError("report: give at least one run folder or suite folder")
    runs = load_runs(paths)
    out = Path(out) if out is not None else Path(paths[0]) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    rows = summarise(runs)
    order = list(dict.fromkeys(row.method for row in rows))
    groups: Curves = {}
    for run in runs:
        groups.setdefault((run.task_set, run.label), []).append(run)
    colours = _colours(order)
    written = [_validation_loss(groups, order, colours, out / "validation-loss.png")]
    for (ts, label), members in sorted(groups.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]))):
        members = sorted(members, key=lambda r: r.seed)
        name = _safe(f"{ts}-{label}")
        if any(_round_affinities(r) for r in members):
            written.append(_affinity_rounds(members, ts, label, out / f"affinity-rounds-{name}.png"))
        if any(r.results.get("affinity") for r in members):
            written.append(_affinity_matrices(members, ts, label, out / f"affinity-matrix-{name}.png"))
    written.append(_loss_vs_energy(rows, colours, out / "loss-vs-energy.png"))
    write_summary(out, runs)
    return written


# Figures -----------------------------------------------------------------------------------------

def _validation_loss(groups: Curves, order: list[str], colours: dict[str, str], path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    task_sets = list(dict.fromkeys(ts for ts, _ in groups))
    fig, axes = _grid(len(task_sets), width=6.0, height=4.2)
    for ax, ts in zip(axes, task_sets, strict=False):
        for label in order:
            curves = [c for r in groups.get((ts, label), []) if len(c := _val_totals(r))]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            values = np.array([c[:length] for c in curves])
            x = np.arange(1, length + 1)
            mean, std = values.mean(axis=0), values.std(axis=0)
            ax.plot(x, mean, color=colours[label], label=f"{display_name(label, False)} (n={len(curves)})")
            if len(curves) > 1:
                ax.fill_between(x, mean - std, mean + std, color=colours[label], alpha=0.15, linewidth=0)
        ax.set(title=f"Validation loss over training on `{ts}`", xlabel="round (all stages of the method)",
               ylabel="total validation loss (sum over tasks)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _affinity_rounds(runs: list[Run], ts: str, label: str, path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    per_round: dict[int, list[np.ndarray]] = {}
    for run in runs:
        for rnd, matrix in _round_affinities(run):
            per_round.setdefault(rnd, []).append(matrix)
    rounds = sorted(per_round)
    mean = np.array([np.mean(per_round[r], axis=0) for r in rounds])  # (rounds, n, n)
    n = len(ts)
    fig, axes = _grid(n, width=3.6, height=2.9)
    cmap = plt.get_cmap("tab10")
    for j, ax in enumerate(axes[:n]):
        for i in range(n):
            if i != j:
                ax.plot(rounds, mean[:, i, j], marker="o", markersize=3, color=cmap(i % 10),
                        label=f"{ts[i]} ({TASKS[ts[i]].domain})")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set(title=f"A[i → {ts[j]}] ({TASKS[ts[j]].domain})", xlabel="round", ylabel="affinity")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=cmap(i % 10), marker="o", label=f"i = {t} ({TASKS[t].domain})")
               for i, t in enumerate(ts)]
    fig.legend(handles=handles, loc="lower center", ncol=min(n, 5), fontsize=8, frameon=False)
    seeds = ",".join(str(r.seed) for r in runs)
    fig.suptitle(f"{display_name(label, False)} on `{ts}`: affinity of each task i to task j per "
                 f"affinity round (mean over seeds {seeds})", fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return _save(fig, plt, path, tight=False)


def _affinity_matrices(runs: list[Run], ts: str, label: str, path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    runs = [r for r in runs if r.results.get("affinity")]
    fig, axes = plt.subplots(1, len(runs), figsize=(max(4.6 * len(runs), 6.5), 4.6), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        tasks = run.results["affinity"]["tasks"]
        matrix = np.asarray(run.results["affinity"]["matrix"], dtype=float)
        groups = list(run.results.get("splits") or [])
        order = list(dict.fromkeys([t for g in groups for t in g] + list(tasks)))
        idx = [tasks.index(t) for t in order]
        m = matrix[np.ix_(idx, idx)]
        off = np.ma.masked_array(m, mask=np.eye(len(order), dtype=bool))
        scale = float(np.abs(off).max()) or 1.0
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#dddddd")
        image = ax.imshow(off, cmap=cmap, vmin=-scale, vmax=scale)
        for a in range(len(order)):
            for b in range(len(order)):
                ax.text(b, a, f"{m[a, b]:.2g}", ha="center", va="center", fontsize=7,
                        color="black" if a == b or abs(m[a, b]) < 0.6 * scale else "white")
        for k, group in enumerate(groups):
            pos = sorted(order.index(t) for t in group)
            contiguous = pos[-1] - pos[0] + 1 == len(pos)
            ax.add_patch(Rectangle((pos[0] - 0.5, pos[0] - 0.5), pos[-1] - pos[0] + 1, pos[-1] - pos[0] + 1,
                                   fill=False, linewidth=2.2, edgecolor=f"C{k % 10}",
                                   linestyle="-" if contiguous else "--"))
        ax.set_xticks(range(len(order)), order)
        ax.set_yticks(range(len(order)), order)
        ax.set(xlabel="j (task helped)", ylabel="i (task stepped)",
               title=f"seed {run.seed}: groups {','.join(groups) or '-'}")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="A[i → j] (diagonal grey)")
    fig.suptitle(f"{display_name(label, False)} on `{ts}`: final affinity matrix, chosen groups outlined", fontsize=11)
    return _save(fig, plt, path)


def _loss_vs_energy(rows: list, colours: dict[str, str], path: Path) -> Path:
    import matplotlib.pyplot as plt

    task_sets = list(dict.fromkeys(row.task_set for row in rows))
    fig, axes = _grid(len(task_sets), width=6.0, height=4.5)
    for ax, ts in zip(axes, task_sets, strict=False):
        part = [row for row in rows if row.task_set == ts]
        for row in part:
            name = display_name(row.method, False)
            ax.errorbar(row.energy_kwh[0], row.total[0], xerr=row.energy_kwh[1], yerr=row.total[1], fmt="o",
                        color=colours[row.method], capsize=3, label=f"{name} (n={row.runs})")
            ax.annotate(name, (row.energy_kwh[0], row.total[0]), textcoords="offset points", xytext=(5, 5),
                        fontsize=8)
        energies = [row.energy_kwh[0] for row in part if row.energy_kwh[0] > 0]
        if energies and max(energies) / min(energies) > 20:
            ax.set_xscale("log")
        ax.set(title=f"Total test loss vs energy on `{ts}`", xlabel="energy (kWh, mean ± std over seeds)",
               ylabel="total test loss (sum over tasks)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, plt, path)


# Helpers -----------------------------------------------------------------------------------------

def _val_totals(run: Run) -> list[float]:
    """Per history entry: the sum over tasks of the lowest validation loss any network has for the task."""
    tasks, totals = run.task_set, []
    for entry in run.results.get("history", []):
        best: dict[str, float] = {}
        for fed in entry.get("federations", {}).values():
            for t, v in (fed.get("val_loss") or {}).items():
                best[t] = min(best.get(t, np.inf), float(v))
        if all(t in best for t in tasks):
            totals.append(sum(best[t] for t in tasks))
    return totals


def _round_affinities(run: Run) -> list[tuple[int, np.ndarray]]:
    """(round, matrix) for each round in which a network over the whole task set measured affinity."""
    n, found = len(run.task_set), []
    for entry in run.results.get("history", []):
        for fed in entry.get("federations", {}).values():
            matrix = np.asarray(fed.get("affinity") or [], dtype=float)
            if matrix.shape == (n, n):
                found.append((int(entry["round"]), matrix))
                break
    return found


def _grid(panels: int, width: float, height: float):
    import matplotlib.pyplot as plt

    cols = min(panels, 3)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat


def _colours(labels: list[str]) -> dict[str, str]:
    return {label: f"C{k % 10}" for k, label in enumerate(labels)}


def _save(fig, plt, path: Path, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)
