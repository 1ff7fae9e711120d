"""What `mas-flower report`'s figures say about their data, on hand-made run folders: the loss-versus-energy
figure says whether the energy was measured or estimated, and the validation-loss figure marks where MAS
and the oracle split (at the merge stage's last round), against the rounds actually validated."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from mas_flower.tools.report import loss_vs_energy_figure, make_report, provenance, split_round, validation_loss_figure
from mas_flower.tools.summary import Run, load_runs, summarise
from tests.test_run_names import _results, _run_folder

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def _on_task_set(results: dict, tasks: str) -> dict:
    """`results` (test_run_names' two-task `sd` run) moved onto the task set `tasks`, losses spread evenly."""
    total = results["total_test_loss"]
    results.update(task_set=tasks, test_loss={t: total / len(tasks) for t in tasks})
    for entry in results["history"]:
        entry["federations"] = {"all": {"val_loss": {t: 1.0 for t in tasks}}}
    return results


def _energy_run(parent: Path, name: str, seed: int, estimated: bool | None, tasks: str = "sd",
                method: str = "fedavg") -> Path:
    results = _on_task_set(_results(method, seed, 10, 0.2, 2.0 + seed), tasks)
    if estimated is not None:
        results["energy_estimated"] = estimated
    return _run_folder(parent, name, results)


def _history(phases: list[str], totals: dict[int, float], tasks: str = "sd") -> list[dict]:
    """One entry per round 1..len(phases) in its phase; the rounds in `totals` validated, the total
    split over the tasks as 1/3 to the first task and 2/3 to the rest (one network per task)."""
    out = []
    for rnd, phase in enumerate(phases, start=1):
        feds = {t: {} for t in tasks}
        if rnd in totals:
            shares = [totals[rnd] / 3] + [2 * totals[rnd] / 3 / (len(tasks) - 1)] * (len(tasks) - 1)
            feds = {t: {"val_loss": {t: v}} for t, v in zip(tasks, shares, strict=True)}
        out.append({"round": rnd, "phase": phase, "federations": feds})
    return out


def _split_run(parent: Path, method: str, seed: int, phases: list[str], totals: dict[int, float]) -> Path:
    results = _results(method, seed, len(phases), 0.2, 2.0)
    results["config"]["merge-rounds"] = phases.count("merge")
    results["history"] = _history(phases, totals)
    return _run_folder(parent, f"{method}-sd-seed{seed}", results)


def _axis_texts(fig) -> list[tuple[str, str]]:
    return [(ax.get_title(), ax.get_xlabel()) for ax in fig.axes if ax.get_visible()]


def test_energy_axis_and_title_say_estimated_or_measured_per_task_set(tmp_path: Path) -> None:
    runs_dir = tmp_path / "suite" / "runs"
    _energy_run(runs_dir, "fedavg-sd-seed0", 0, estimated=True)  # carbontracker's constant-power fallback
    _energy_run(runs_dir, "fedavg-sd-seed1", 1, estimated=False)
    _energy_run(runs_dir, "mas-x2-sd-seed0", 0, estimated=False, method="mas")
    _energy_run(runs_dir, "fedavg-dk-seed0", 0, estimated=False, tasks="dk")
    _energy_run(runs_dir, "fedavg-dk-seed1", 1, estimated=False, tasks="dk")
    runs = load_runs([tmp_path / "suite"])
    fig = loss_vs_energy_figure(summarise(runs), runs, {"fedavg": "C0", "mas-2": "C1"}, provenance(runs))
    try:
        # dk (first: its folders sort first): both measured, so its panel says so; sd: one of three estimated
        assert _axis_texts(fig) == [
            ("Total test loss vs energy (measured) on `dk`", "energy (kWh, measured; mean ± std over seeds)"),
            ("Total test loss vs energy (ESTIMATED in 1 of 3 runs) on `sd`",
             "energy (kWh, ESTIMATED in 1 of 3 runs; mean ± std over seeds)"),
        ]
    finally:
        plt.close(fig)


def test_energy_without_a_record_of_how_is_not_called_measured(tmp_path: Path) -> None:
    # results.json from before `energy_estimated` existed: neither "measured" nor "ESTIMATED"
    runs = [Run(p, json.loads((p / "results.json").read_text())) for p in (
        _energy_run(tmp_path, "fedavg-sd-seed0", 0, estimated=None),
        _energy_run(tmp_path, "fedavg-sd-seed1", 1, estimated=False))]
    fig = loss_vs_energy_figure(summarise(runs), runs, {"fedavg": "C0"}, "")
    try:
        assert _axis_texts(fig)[0][1] == "energy (kWh, measured or estimated: not recorded; mean ± std over seeds)"
    finally:
        plt.close(fig)


def test_the_validation_curve_marks_where_mas_and_the_oracle_split(tmp_path: Path) -> None:
    runs_dir = tmp_path / "suite" / "runs"
    mas = ["merge"] * 3 + ["split"] * 3  # R=6, R0=3; validated every 2nd round and in each stage's last
    _split_run(runs_dir, "mas", 0, mas, {2: 8.0, 3: 7.0, 5: 6.0, 6: 3.0})
    _split_run(runs_dir, "mas", 1, mas, {2: 10.0, 3: 9.0, 5: 4.0, 6: 3.0})
    _split_run(runs_dir, "oracle", 0, ["merge"] * 2 + ["split"] * 4, {r: 5.0 for r in range(1, 7)})  # R0=2
    # phases change, but the groups retrain from scratch or there are none: no split line
    _split_run(runs_dir, "hoa", 0, ["pairs"] * 3 + ["groups"] * 3, {r: 5.0 for r in range(1, 7)})
    _split_run(runs_dir, "tag", 0, ["all-in-one"] * 4 + ["groups"] * 2, {r: 5.0 for r in range(1, 7)})
    _split_run(runs_dir, "fedavg", 0, ["all-in-one"] * 6, {r: 5.0 for r in range(1, 7)})
    runs = load_runs([tmp_path / "suite"])
    groups: dict = {}
    for run in runs:
        groups.setdefault((run.task_set, run.label), []).append(run)
    order = ["fedavg", "hoa-2", "tag-2", "mas-2", "oracle-2"]
    fig = validation_loss_figure(groups, order, {label: f"C{k}" for k, label in enumerate(order)}, "")
    try:
        (ax,) = [a for a in fig.axes if a.get_visible()]
        dashed = {line.get_label(): list(line.get_xdata()) for line in ax.get_lines() if line.get_linestyle() == "--"}
        assert dashed == {"MAS-2 splits (R0=3)": [3, 3], "Oracle-2 splits (R0=2)": [2, 2]}
        assert {line.get_color() for line in ax.get_lines() if line.get_label().startswith("MAS-2")} == {"C3"}
        (curve,) = [line for line in ax.get_lines() if line.get_label() == "MAS-2 (n=2)"]
        # plotted at the rounds validated (not at 1, 2, 3, 4), mean of the two seeds
        np.testing.assert_array_equal(curve.get_xdata(), [2, 3, 5, 6])
        np.testing.assert_allclose(curve.get_ydata(), [9.0, 8.0, 5.0, 3.0])
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "MAS-2 splits (R0=3)" in legend and "Oracle-2 splits (R0=2)" in legend
    finally:
        plt.close(fig)
    written = make_report([tmp_path / "suite"], tmp_path / "figures")  # the same figure, saved
    (path,) = [p for p in written if p.name == "validation-loss.png"]
    with Image.open(path) as image:
        assert image.text["Title"] == provenance(runs)


def test_split_round_is_the_last_round_before_the_split_stage() -> None:
    def run(phases: list[str], first: int = 1) -> Run:
        history = [{"round": r, "phase": p} for r, p in enumerate(phases, start=first)]
        return Run(Path("/runs/x"), {"history": history})

    assert split_round(run(["merge"] * 14 + ["split"] * 6)) == 14
    assert split_round(run(["merge"] * 2 + ["split"], first=5)) == 6  # a resumed history's own round numbers
    assert split_round(run(["merge"] * 5)) is None  # unfinished, still merging
    assert split_round(run(["pairs", "groups"])) is None  # HOA
    assert split_round(Run(Path("/runs/y"), {})) is None
