"""`mas-flower report RUN_OR_SUITE_DIR...`: PNG figures from run folders (results.json), and from
unfinished runs (no results.json yet: their `config.json` and live `metrics.jsonl`, which give the
validation-loss and affinity-rounds figures only).

- `validation-loss.png`: total validation loss (sum over tasks) per round, per method, mean ± std
  over seeds (the supplementary's Figure 3). A round's total takes, per task, the lowest validation
  loss of the networks training it that round (HOA's first stage trains each task in several).
  Rounds are counted over all stages, so methods that retrain from scratch (HOA, TAG) run longer.
  A dashed line marks where MAS and the oracle split (`split_round`: the merge stage's last round, R0).
- `affinity-rounds-<task set>-<method>.png`: A[i→j] per affinity round, one panel per task j, a line
  per other task i, mean over seeds (Figure 4).
- `affinity-matrix-<task set>-<method>.png`: the final affinity matrix per seed. Every heatmap of a
  report shares one colour scale (± the largest off-diagonal |A| of all of them) and one task order
  (the paper's, `sdnkterca`), so heatmaps of different methods and seeds compare cell by cell; the
  cells of each chosen group are outlined in the group's colour.
- `pair-gain-<task set>-<method>.png`: HOA's and pairs' relative pair gain on the validation split,
  g[i→j] = (L_j alone − L_j with i) / L_j alone (`details.pair_gain_val`), per seed, with its median
  |g| in each panel's title; one symmetric colour scale (± the largest |g| of the report), diverging
  around 0, the paper's task order.
- `validation-skill-<task set>.png`: each task's validation skill (1 − loss / the best constant's
  loss) per round, per method, mean ± std over seeds, from the networks that reach the task's
  highest skill that round (as the validation-loss curve takes each task's lowest loss).
- `cogrouping-<task set>.png` and `cogrouping.csv`: per splitting method, how often each pair of
  tasks shared a group across seeds (the split stability the supplementary's Table 2 discusses).
- `loss-vs-energy.png`: total test loss against energy per method, error bars = std over seeds; its
  axis and panel titles say whether the energy was measured or (results.json `energy_estimated`) estimated.

Every figure's title names where the runs it shows come from and their settings (`provenance`): the
suite (the folder holding `runs/`), or each run folder outside a suite by its own settings. The title
is also the PNG's `Title` metadata.
summary.csv, summary.md and runs.csv (`mas_flower.tools.summary`) are written beside the figures.
"""

from __future__ import annotations

import csv
import json
import re
import textwrap
from pathlib import Path

import numpy as np

from mas_flower.constant import LOW_SKILL
from mas_flower.live import LIVE_FILE, read_live
from mas_flower.tasks import ALL_LETTERS, TASKS
from mas_flower.tools.summary import Run, display_name, find_run_dirs, load_runs, summarise, write_summary

Curves = dict[tuple[str, str], list[Run]]


def make_report(paths: list[Path], out: Path | None = None) -> list[Path]:
    """Write the figures for the runs in `paths` (run or suite folders) into `out`; return the PNGs.

    `out` defaults to `<first path>/figures`. An unfinished run folder (`unfinished_run`) adds its
    rounds so far to the per-round figures; the summary and the test-time figures need finished runs.
    """
    if not paths:
        raise ValueError("report: give at least one run folder or suite folder")
    live = [run for p in paths if not find_run_dirs(Path(p)) and (run := unfinished_run(Path(p))) is not None]
    runs = load_runs([p for p in paths if find_run_dirs(Path(p)) or unfinished_run(Path(p)) is None])
    out = Path(out) if out is not None else Path(paths[0]) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    rows = summarise(runs) if runs else []
    order = list(dict.fromkeys([row.method for row in rows] + [run.label for run in live]))
    groups: Curves = {}
    for run in runs + live:
        groups.setdefault((run.task_set, run.label), []).append(run)
    colours = _colours(order)
    note = provenance(runs + live)
    written = [_validation_loss(groups, order, colours, out / "validation-loss.png", note)]
    for ts in dict.fromkeys(ts for ts, _ in groups):
        if any(_val_skills(r) for (t, _), members in groups.items() if t == ts for r in members):
            written.append(_validation_skill(groups, ts, order, colours, out / f"validation-skill-{_safe(ts)}.png",
                                             provenance(_of_task_set(groups, ts))))
    scale, gain_scale = affinity_scale(runs), pair_gain_scale(runs)
    for (ts, label), members in sorted(groups.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]))):
        members = sorted(members, key=lambda r: r.seed)
        name, own = _safe(f"{ts}-{label}"), provenance(members)  # titled by these runs' own settings
        if any(_round_affinities(r) for r in members):
            written.append(_affinity_rounds(members, ts, label, out / f"affinity-rounds-{name}.png", own))
        if any(r.results.get("affinity") for r in members):
            written.append(_affinity_matrices(members, ts, label, out / f"affinity-matrix-{name}.png", scale, own))
        if any(_pair_gain(r) is not None for r in members):
            written.append(_pair_gain_matrices(members, ts, label, out / f"pair-gain-{name}.png", gain_scale, own))
    frequencies = cogrouping(groups)
    if frequencies:
        write_cogrouping_csv(out / "cogrouping.csv", frequencies)
        for ts in dict.fromkeys(ts for ts, _ in frequencies):
            part = {label: f for (t, label), f in frequencies.items() if t == ts}
            written.append(_cogrouping_figure(ts, part, out / f"cogrouping-{_safe(ts)}.png",
                                              provenance(_of_task_set(groups, ts))))
    if runs:
        written.append(_loss_vs_energy(rows, runs, colours, out / "loss-vs-energy.png", note))
        write_summary(out, runs)
    return written


def _of_task_set(groups: Curves, ts: str) -> list[Run]:
    """The runs of `groups` on task set `ts`."""
    return [r for (t, _), members in groups.items() if t == ts for r in members]


def unfinished_run(path: Path) -> Run | None:
    """A run still in progress (or killed) as a `Run` whose results hold only its identity, config and
    `history` (the rounds of its `metrics.jsonl`); None unless `path` has config.json and that file."""
    config_path = path / "config.json"
    if not (config_path.is_file() and (path / LIVE_FILE).is_file()):
        return None
    config = json.loads(config_path.read_text())
    return Run(path, {"method": config["method"], "task_set": config["task-set"], "seed": config["seed"],
                      "server_strategy": config.get("server-strategy", "fedavg"), "config": config,
                      "history": read_live(path), "unfinished": True})


# What the figures show: provenance, shared scales, co-grouping ---------------------------------

#: Run-config keys named in every figure's title, with how they are shown.
SETTINGS_SHOWN = (("model", "{}"), ("image-size", "{} px"), ("num-rounds", "R={}"), ("merge-rounds", "R0={}"),
                  ("clients-per-round", "K={}"), ("local-epochs", "E={}"), ("batch-size", "batch {}"), ("lr", "lr {}"),
                  ("affinity-rounds", "affinity rounds {}"), ("affinity-every", "ρ={}"))


def provenance(runs: list[Run]) -> str:
    """Where `runs` come from and their settings, for a figure's title.

    Runs of a suite (a folder holding `runs/`) give 'suite S · settings · seeds 0,1' per suite,
    several values of a key joined by '/'. A run folder outside a suite is titled by its own
    settings: 'run R · settings · seed 0'; loose runs whose settings read alike share one part
    ('runs R1, R2 · settings · seeds 0,1'). Parts are joined by ' | '. Settings are the run-config
    values of `SETTINGS_SHOWN`.
    """
    parts: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        in_suite = run.path.parent.name == "runs"
        key = ("suite", run.path.parent.parent.name) if in_suite else ("runs", _settings_text([run]))
        parts.setdefault(key, []).append(run)
    texts = []
    for (kind, name), members in parts.items():
        seeds = sorted({r.seed for r in members})
        if kind == "suite":
            head, seed_word = f"suite {name}", "seeds"
        else:
            folders = list(dict.fromkeys(r.path.name for r in members))
            head = f"run{'s' if len(folders) > 1 else ''} {', '.join(folders)}"
            seed_word = "seeds" if len(seeds) > 1 else "seed"
        seed_text = f"{seed_word} {','.join(str(s) for s in seeds)}"
        texts.append(" · ".join(t for t in (head, _settings_text(members), seed_text) if t))
    return " | ".join(texts)


def _settings_text(runs: list[Run]) -> str:
    """'tiny, 32 px, R=20, ...': each `SETTINGS_SHOWN` key the runs' configs have, several values joined by '/'."""
    parts = []
    for key, fmt in SETTINGS_SHOWN:
        values = list(dict.fromkeys(str(r.results.get("config", {}).get(key)) for r in runs
                                    if r.results.get("config", {}).get(key) is not None))
        if values:
            parts.append(fmt.format("/".join(values)))
    return ", ".join(parts)


def affinity_scale(runs: list[Run]) -> float:
    """The shared colour scale of every affinity heatmap: the largest finite off-diagonal |A[i→j]|."""
    largest = 0.0
    for run in runs:
        affinity = run.results.get("affinity")
        if affinity:
            m = np.asarray(affinity["matrix"], dtype=float)
            off = np.abs(m[~np.eye(len(m), dtype=bool)])
            off = off[np.isfinite(off)]
            largest = max(largest, float(off.max()) if off.size else 0.0)
    return largest or 1.0


def pair_gain_scale(runs: list[Run]) -> float:
    """The shared colour scale of every pair-gain heatmap: the largest finite |g[i→j]| (1 without any)."""
    values = [np.abs(m[np.isfinite(m)]) for r in runs if (m := _pair_gain(r)) is not None]
    return max((float(v.max()) for v in values if v.size), default=0.0) or 1.0


def task_order(tasks: str) -> str:
    """The fixed task order of every figure: the paper's (`ALL_LETTERS`), whatever the task string's order."""
    return "".join(sorted(tasks, key=ALL_LETTERS.index))


def cogrouping(groups: Curves) -> dict[tuple[str, str], tuple[np.ndarray, int]]:
    """For each (task set, method) whose runs record groups: F[i, j] = the fraction of its runs (seeds) in
    which tasks i and j were in one group (any group, for overlapping TAG groups), tasks in `task_order`;
    F[i, i] = 1. Returns {(task set, label): (F, number of runs)}."""
    out = {}
    for (ts, label), members in groups.items():
        splits = [r.results["splits"] for r in members if r.results.get("splits")]
        if not splits:
            continue
        order = task_order(ts)
        together = np.zeros((len(order), len(order)))
        for groups_of_run in splits:
            for i, a in enumerate(order):
                for j, b in enumerate(order):
                    together[i, j] += any(a in g and b in g for g in groups_of_run) or i == j
        out[(ts, label)] = (together / len(splits), len(splits))
    return out


def write_cogrouping_csv(path: Path, frequencies: dict[tuple[str, str], tuple[np.ndarray, int]]) -> Path:
    """One row per (task set, method, task pair i < j): runs together, runs, frequency."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task_set", "method", "task_i", "task_j", "together", "runs", "frequency"])
        for (ts, label), (freq, n) in frequencies.items():
            order = task_order(ts)
            for i in range(len(order)):
                for j in range(i + 1, len(order)):
                    writer.writerow([ts, label, order[i], order[j], round(freq[i, j] * n), n, f"{freq[i, j]:.6g}"])
    return path


# Figures -----------------------------------------------------------------------------------------

def _validation_loss(groups: Curves, order: list[str], colours: dict[str, str], path: Path, note: str) -> Path:
    import matplotlib.pyplot as plt

    return _save(validation_loss_figure(groups, order, colours, note), plt, path)


def validation_loss_figure(groups: Curves, order: list[str], colours: dict[str, str], note: str):
    """The validation-loss figure (a matplotlib Figure, one panel per task set): per method the mean ± std
    over seeds of `_val_points` against the round, and a dashed line at each `split_round` of its runs."""
    from matplotlib.ticker import MaxNLocator

    task_sets = list(dict.fromkeys(ts for ts, _ in groups))
    fig, axes = _grid(len(task_sets), width=6.0, height=4.2)
    for ax, ts in zip(axes, task_sets, strict=False):
        for label in order:
            members = groups.get((ts, label), [])
            curves = [c for r in members if len(c := _val_points(r))]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            values = np.array([[total for _, total in c[:length]] for c in curves])
            x = np.array([rnd for rnd, _ in min(curves, key=len)])
            mean, std = values.mean(axis=0), values.std(axis=0)
            ax.plot(x, mean, color=colours[label], label=f"{display_name(label, False)} (n={len(curves)})")
            if len(curves) > 1:
                ax.fill_between(x, mean - std, mean + std, color=colours[label], alpha=0.15, linewidth=0)
            for r0 in sorted({r0 for r in members if (r0 := split_round(r)) is not None}):
                ax.axvline(r0, color=colours[label], linestyle="--", linewidth=1.0,
                           label=f"{display_name(label, False)} splits (R0={r0})")
        ax.set(title=f"Validation loss over training on `{ts}`", xlabel="round (all stages of the method)",
               ylabel="total validation loss (sum over tasks)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _suptitle(fig, "", note, fontsize=9)
    return fig


def _affinity_rounds(runs: list[Run], ts: str, label: str, path: Path, note: str) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    per_round: dict[int, list[np.ndarray]] = {}
    for run in runs:
        for rnd, matrix in _round_affinities(run):
            per_round.setdefault(rnd, []).append(matrix)
    rounds = sorted(per_round)
    order = task_order(ts)
    idx = [ts.index(t) for t in order]
    mean = np.array([np.mean(per_round[r], axis=0)[np.ix_(idx, idx)] for r in rounds])  # (rounds, n, n)
    n = len(order)
    fig, axes = _grid(n, width=3.6, height=2.9)
    cmap = plt.get_cmap("tab10")
    for j, ax in enumerate(axes[:n]):
        for i in range(n):
            if i != j:
                ax.plot(rounds, mean[:, i, j], marker="o", markersize=3, color=cmap(i % 10),
                        label=f"{order[i]} ({TASKS[order[i]].domain})")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set(title=f"A[i → {order[j]}] ({TASKS[order[j]].domain})", xlabel="round", ylabel="affinity")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=cmap(i % 10), marker="o", label=f"i = {t} ({TASKS[t].domain})")
               for i, t in enumerate(order)]
    fig.legend(handles=handles, loc="lower center", ncol=min(n, 5), fontsize=8, frameon=False)
    seeds = ",".join(str(r.seed) for r in runs)
    _suptitle(fig, f"{display_name(label, False)} on `{ts}`: affinity of each task i to task j per "
              f"affinity round (mean over seeds {seeds})", note, fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return _save(fig, plt, path, tight=False)


def _affinity_matrices(runs: list[Run], ts: str, label: str, path: Path, scale: float, note: str) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    runs = [r for r in runs if r.results.get("affinity")]
    fig, axes = plt.subplots(1, len(runs), figsize=(max(4.6 * len(runs), 6.5), 4.9), squeeze=False)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#dddddd")
    for ax, run in zip(axes[0], runs, strict=True):
        tasks = run.results["affinity"]["tasks"]
        matrix = np.asarray(run.results["affinity"]["matrix"], dtype=float)
        groups = list(run.results.get("splits") or [])
        order = task_order(tasks)
        idx = [tasks.index(t) for t in order]
        m = matrix[np.ix_(idx, idx)]
        off = np.ma.masked_array(m, mask=np.eye(len(order), dtype=bool) | ~np.isfinite(m))
        image = ax.imshow(off, cmap=cmap, vmin=-scale, vmax=scale)
        for a in range(len(order)):
            for b in range(len(order)):
                ax.text(b, a, f"{m[a, b]:.2g}", ha="center", va="center", fontsize=7,
                        color="black" if a == b or abs(m[a, b]) < 0.6 * scale else "white")
        for k, group in enumerate(groups):  # outline the cells of each group, inset so overlaps show
            inset = 0.06 + 0.08 * (k % 3)
            for a in (order.index(t) for t in group if t in order):
                for b in (order.index(t) for t in group if t in order):
                    if a != b:
                        ax.add_patch(Rectangle((b - 0.5 + inset, a - 0.5 + inset), 1 - 2 * inset, 1 - 2 * inset,
                                               fill=False, linewidth=1.8, edgecolor=f"C{k % 10}"))
        ax.set_xticks(range(len(order)), list(order))
        ax.set_yticks(range(len(order)), list(order))
        ax.set(xlabel="j (task helped)", ylabel="i (task stepped)",
               title=f"seed {run.seed}: groups {','.join(groups) or '-'}")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="A[i → j] (diagonal grey)")
    _suptitle(fig, f"{display_name(label, False)} on `{ts}`: final affinity matrix, cells of each chosen group "
              f"outlined (shared scale ±{scale:.2g})", note, fontsize=10)
    return _save(fig, plt, path)


def _pair_gain_matrices(runs: list[Run], ts: str, label: str, path: Path, scale: float, note: str) -> Path:
    import matplotlib.pyplot as plt

    runs = [r for r in runs if _pair_gain(r) is not None]
    order = task_order(ts)
    idx = [ts.index(t) for t in order]
    fig, axes = plt.subplots(1, len(runs), figsize=(max(4.6 * len(runs), 6.5), 4.9), squeeze=False)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#dddddd")
    for ax, run in zip(axes[0], runs, strict=True):
        g = _pair_gain(run)[np.ix_(idx, idx)]
        image = ax.imshow(np.ma.masked_invalid(g), cmap=cmap, vmin=-scale, vmax=scale)
        for a in range(len(order)):
            for b in range(len(order)):
                if np.isfinite(g[a, b]):
                    ax.text(b, a, f"{g[a, b]:.2g}", ha="center", va="center", fontsize=7,
                            color="black" if abs(g[a, b]) < 0.6 * scale else "white")
        ax.set_xticks(range(len(order)), list(order))
        ax.set_yticks(range(len(order)), list(order))
        median = run.results["details"].get("pair_gain_val_median_abs")
        ax.set(xlabel="j (task helped)", ylabel="i (partner task)",
               title=f"seed {run.seed}: median |g| " + ("-" if median is None else f"{median:.3g}"))
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="g[i → j] (diagonal grey)")
    _suptitle(fig, f"{display_name(label, False)} on `{ts}`: pair gain g[i → j] = (L_j alone − L_j with i) / "
              f"L_j alone, validation losses (shared scale ±{scale:.2g})", note, fontsize=10)
    return _save(fig, plt, path)


def _validation_skill(groups: Curves, ts: str, order: list[str], colours: dict[str, str], path: Path,
                      note: str) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tasks = task_order(ts)
    fig, axes = _grid(len(tasks), width=4.2, height=3.2)
    for ax, t in zip(axes, tasks, strict=False):
        for label in order:
            curves = [[s[t] for s in c] for r in groups.get((ts, label), []) if (c := _val_skills(r))]
            if curves:
                length = min(len(c) for c in curves)
                values = np.array([c[:length] for c in curves])
                x, mean, std = np.arange(1, length + 1), values.mean(axis=0), values.std(axis=0)
                ax.plot(x, mean, color=colours[label], label=f"{display_name(label, False)} (n={len(curves)})")
                ax.fill_between(x, mean - std, mean + std, color=colours[label], alpha=0.15, linewidth=0)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.axhline(LOW_SKILL, color="grey", linewidth=0.8, linestyle="--")
        ax.set(title=f"{t} ({TASKS[t].domain})", xlabel="round (all stages)", ylabel="validation skill")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    _suptitle(fig, f"Validation skill per task on `{ts}` (1 − loss / best constant's loss; 0 = no better than a "
              f"constant, dashed: {LOW_SKILL}), mean ± std over seeds", note, fontsize=10)
    return _save(fig, plt, path)


def _cogrouping_figure(ts: str, frequencies: dict[str, tuple[np.ndarray, int]], path: Path, note: str) -> Path:
    import matplotlib.pyplot as plt

    order = task_order(ts)
    fig, axes = plt.subplots(1, len(frequencies), figsize=(max(4.4 * len(frequencies), 6.5), 4.6), squeeze=False)
    for ax, (label, (freq, n)) in zip(axes[0], frequencies.items(), strict=True):
        shown = np.ma.masked_array(freq, mask=np.eye(len(order), dtype=bool))
        image = ax.imshow(shown, cmap=plt.get_cmap("Greens").with_extremes(bad="#dddddd"), vmin=0.0, vmax=1.0)
        for a in range(len(order)):
            for b in range(len(order)):
                if a != b:
                    ax.text(b, a, f"{freq[a, b]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if freq[a, b] > 0.6 else "black")
        ax.set_xticks(range(len(order)), list(order))
        ax.set_yticks(range(len(order)), list(order))
        ax.set(title=f"{display_name(label, False)} ({n} runs)")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of runs in one group")
    _suptitle(fig, f"How often two tasks of `{ts}` shared a group across seeds", note, fontsize=10)
    return _save(fig, plt, path)


def _loss_vs_energy(rows: list, runs: list[Run], colours: dict[str, str], path: Path, note: str) -> Path:
    import matplotlib.pyplot as plt

    return _save(loss_vs_energy_figure(rows, runs, colours, note), plt, path)


def loss_vs_energy_figure(rows: list, runs: list[Run], colours: dict[str, str], note: str):
    """The loss-versus-energy figure (a matplotlib Figure, one panel per task set of `rows`, the `summarise`
    rows of the finished `runs`); each panel's axis label and title carry its runs' `energy_basis`."""
    task_sets = list(dict.fromkeys(row.task_set for row in rows))
    fig, axes = _grid(len(task_sets), width=6.0, height=4.5)
    for ax, ts in zip(axes, task_sets, strict=False):
        part = [row for row in rows if row.task_set == ts]
        basis = energy_basis([r for r in runs if r.task_set == ts])
        for row in part:
            name = display_name(row.method, False)
            ax.errorbar(row.energy_kwh[0], row.total[0], xerr=row.energy_kwh[1], yerr=row.total[1], fmt="o",
                        color=colours[row.method], capsize=3, label=f"{name} (n={row.runs})")
            ax.annotate(name, (row.energy_kwh[0], row.total[0]), textcoords="offset points", xytext=(5, 5),
                        fontsize=8)
        energies = [row.energy_kwh[0] for row in part if row.energy_kwh[0] > 0]
        if energies and max(energies) / min(energies) > 20:
            ax.set_xscale("log")
        ax.set(title=f"Total test loss vs energy ({basis}) on `{ts}`",
               xlabel=f"energy (kWh, {basis}; mean ± std over seeds)", ylabel="total test loss (sum over tasks)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _suptitle(fig, "", note, fontsize=9)
    return fig


def energy_basis(runs: list[Run]) -> str:
    """How the energy of `runs` was obtained, from results.json's `energy_estimated`: 'ESTIMATED in k of n
    runs' when any run's is an estimate (e.g. carbontracker's constant power without RAPL), 'measured' when
    every run says it was measured, else 'measured or estimated: not recorded'."""
    estimated = sum(bool(r.results.get("energy_estimated")) for r in runs)
    if estimated:
        return f"ESTIMATED in {estimated} of {len(runs)} runs"
    if all(r.results.get("energy_estimated") is False for r in runs):
        return "measured"
    return "measured or estimated: not recorded"


# Helpers -----------------------------------------------------------------------------------------

def _val_totals(run: Run) -> list[float]:
    """Per history entry: the sum over tasks of the lowest validation loss any network has for the task."""
    return [total for _, total in _val_points(run)]


def _val_points(run: Run) -> list[tuple[int, float]]:
    """(round, `_val_totals` total) per history entry in which every task was validated (with
    `eval-every` > 1 not every round is); the round is the entry's `round` (counted over all stages),
    else its position from 1."""
    tasks, points = run.task_set, []
    for index, entry in enumerate(run.results.get("history", []), start=1):
        best: dict[str, float] = {}
        for fed in entry.get("federations", {}).values():
            for t, v in (fed.get("val_loss") or {}).items():
                best[t] = min(best.get(t, np.inf), float(v))
        if all(t in best for t in tasks):
            points.append((int(entry.get("round", index)), sum(best[t] for t in tasks)))
    return points


#: The phase of the stage that continues a merged network's training in groups (MAS, the oracle).
SPLIT_PHASE = "split"


def split_round(run: Run) -> int | None:
    """The round after which `run` split: the last round before its first `SPLIT_PHASE` history entry,
    i.e. the merge stage's last round (`merge-rounds`, R0). None when it has no such entry: methods
    without a merge stage (FedAvg, one-by-one, pairs) and those whose groups retrain from scratch
    (HOA, TAG: phase 'groups'), or an unfinished run still merging."""
    previous = None
    for entry in run.results.get("history", []):
        if entry.get("phase") == SPLIT_PHASE:
            return previous
        previous = int(entry["round"]) if "round" in entry else None
    return None


def _val_skills(run: Run) -> list[dict[str, float]]:
    """Per history entry in which every task has one: each task's highest validation skill of any network."""
    tasks, found = run.task_set, []
    for entry in run.results.get("history", []):
        best: dict[str, float] = {}
        for fed in entry.get("federations", {}).values():
            for t, v in (fed.get("val_skill") or {}).items():
                best[t] = max(best.get(t, -np.inf), float(v))
        if all(t in best for t in tasks):
            found.append(best)
    return found


def _pair_gain(run: Run) -> np.ndarray | None:
    """`details.pair_gain_val` as floats in the task set's order (NaN on the diagonal), or None."""
    g = (run.results.get("details") or {}).get("pair_gain_val")
    return None if g is None else np.array([[np.nan if v is None else v for v in row] for row in g], dtype=float)


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


def _suptitle(fig, title: str, note: str, fontsize: float) -> None:
    """The figure's title, then the provenance `note`, each wrapped to the figure's width."""
    width = max(int(fig.get_figwidth() * 120 / fontsize), 40)
    lines = [textwrap.fill(t, width, break_long_words=False, break_on_hyphens=False) for t in (title, note) if t]
    fig.suptitle("\n".join(lines), fontsize=fontsize)


def _colours(labels: list[str]) -> dict[str, str]:
    return {label: f"C{k % 10}" for k, label in enumerate(labels)}


def _save(fig, plt, path: Path, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    title = " ".join(fig.get_suptitle().split())  # unwrapped: _suptitle breaks lines at spaces only
    fig.savefig(path, dpi=110, metadata={"Title": title} if title else None)
    plt.close(fig)
    return path


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)
