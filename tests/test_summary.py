"""summary.csv (a std for every mean, Δm% against one-by-one), runs.csv, the co-grouping matrix and
the report's shared affinity scale, from hand-written results.json files (no simulation)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mas_flower.results import RESULTS_FILE
from mas_flower.strategy.outputs import summary as run_summary
from mas_flower.tools.bench import run_line
from mas_flower.tools.report import affinity_scale, cogrouping, make_report, pair_gain_scale, provenance, task_order
from mas_flower.tools.summary import load_runs, oracle_partition_delta_m, summarise, timing, write_summary

CONFIG = {"model": "tiny", "image-size": 32, "num-rounds": 4, "merge-rounds": 3, "clients-per-round": 2,
          "local-epochs": 1, "batch-size": 4, "lr": 0.1, "affinity-rounds": 2, "affinity-every": 1}
#: one-by-one's test loss and metrics per seed: the baseline of Δm%
BASE_LOSS = {0: {"s": 1.0, "d": 1.0, "k": 0.5}, 1: {"s": 3.0, "d": 1.0, "k": 0.5}}
BASE_METRICS = {0: {"s": {"miou": 0.4, "pixel_acc": 0.8}, "d": {"abs_rel": 0.2, "rmse_m": 1.0}, "k": {"l1": 0.5}},
                1: {"s": {"miou": 0.6, "pixel_acc": 0.8}, "d": {"abs_rel": 0.2, "rmse_m": 1.0}, "k": {"l1": 0.5}}}
MAS_LOSS = {0: {"s": 1.0, "d": 1.5, "k": 0.5}, 1: {"s": 2.0, "d": 0.5, "k": 0.5}}
MAS_METRICS = {0: {"s": {"miou": 0.55, "pixel_acc": 0.88}, "d": {"abs_rel": 0.25, "rmse_m": 1.0}, "k": {"l1": 0.5}},
               1: {"s": {"miou": 0.5, "pixel_acc": 0.8}, "d": {"abs_rel": 0.1, "rmse_m": 0.9}, "k": {"l1": 0.5}}}
MAS_GROUPS = {0: ["sd", "k"], 1: ["s", "dk"], 2: ["sd", "k"]}


def _write_run(suite: Path, name: str, **results: object) -> None:
    run = suite / "runs" / name
    run.mkdir(parents=True)
    loss = results["test_loss"]
    (run / RESULTS_FILE).write_text(json.dumps({
        "task_set": "sdk", "splits": None, "total_test_loss": sum(loss.values()), "client_train_seconds": 7200.0,
        "wall_seconds": 3600.0, "energy_kwh": 0.1, "co2_g": 20.0, "energy_estimated": False, "affinity": None,
        "history": [{"round": 1, "phase": "train", "federations": {"all": {"val_loss": loss}}}],
        "config": {**CONFIG, "splits": 2}, **results}))


def _affinity(seed: int, scale: float) -> dict:
    rng = np.random.default_rng(seed)
    return {"tasks": "sdk", "matrix": (rng.uniform(-1, 1, (3, 3)) * scale).tolist()}


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    root = tmp_path / "quick-sdk"
    for seed in (0, 1):
        _write_run(root, f"one-by-one-sdk-seed{seed}", method="one-by-one", seed=seed, test_loss=BASE_LOSS[seed],
                   test_metrics=BASE_METRICS[seed], train_tflops=3.0 + seed, eval_tflops=0.5)
        _write_run(root, f"fedavg-sdk-seed{seed}", method="fedavg", seed=seed, test_loss=BASE_LOSS[seed])  # older run
    for seed in (0, 1, 2):
        loss, metrics = MAS_LOSS.get(seed, MAS_LOSS[0]), MAS_METRICS.get(seed, MAS_METRICS[0])
        affinity = _affinity(seed, 0.5 + seed)
        history = [{"round": r, "phase": "merge", "federations": {"all": {"val_loss": loss,
                                                                          "affinity": affinity["matrix"]}}}
                   for r in (1, 2)]
        _write_run(root, f"mas-x2-sdk-seed{seed}", method="mas", seed=seed, test_loss=loss, test_metrics=metrics,
                   splits=MAS_GROUPS[seed], affinity=affinity, history=history, train_tflops=1.5, eval_tflops=0.2)
    return root


def test_summary_has_a_std_for_every_mean_and_delta_m_against_one_by_one(suite: Path) -> None:
    runs = [r for r in load_runs([suite]) if not (r.label == "mas-2" and r.seed == 2)]  # 2 seeds each
    rows = {row.method: row for row in summarise(runs)}
    # Δm% on the losses, by hand: one-by-one's mean is s 2.0, d 1.0, k 0.5. MAS seed 0: s +50 %,
    # d −50 %, k 0 -> 0 %; seed 1: s 0, d +50 %, k 0 -> 16.67 %.
    assert rows["mas-2"].delta_m_loss == pytest.approx((50 / 6, 50 / 6))
    # on the metrics (baseline miou 0.5, pixel_acc 0.8, abs_rel 0.2, rmse 1.0, l1 0.5). Seed 0:
    # s (+10 % + 10 %)/2 = 0.1, d (−25 % + 0)/2 = −0.125, k 0 -> −0.8333 %; seed 1: s 0,
    # d (+50 % + 10 %)/2 = 0.3, k 0 -> 10 %.
    seed0, seed1 = 100 * (0.1 - 0.125) / 3, 100 * 0.3 / 3
    assert rows["mas-2"].delta_m == pytest.approx(((seed0 + seed1) / 2, abs(seed1 - seed0) / 2))
    # the baseline against its own mean: 0 on average (seed 0: s +50 % -> +16.67 %; seed 1: −16.67 %)
    assert rows["one-by-one"].delta_m_loss == pytest.approx((0.0, 50 / 3), abs=1e-9)
    assert rows["fedavg"].delta_m is None and rows["fedavg"].delta_m_loss == pytest.approx((0.0, 50 / 3))
    assert rows["mas-2"].metrics["s"]["miou"] == pytest.approx((0.525, 0.025))
    assert rows["mas-2"].extra == {"train_tflops": (1.5, 0.0), "eval_tflops": (0.2, 0.0)}

    csv_path, md_path = write_summary(suite, runs)
    table = {r["method"]: r for r in csv.DictReader(csv_path.open())}
    columns = list(next(iter(table.values())))
    means = [c for c in columns if c.endswith("_mean")]
    assert means and all(c.removesuffix("_mean") + "_std" in columns for c in means)
    others = ["method", "task_set", "runs", "server_strategy", "server_hyperparameters", "low_skill_runs",
              "diverged_runs"]
    assert len(means) + len([c for c in columns if c.endswith("_std")]) + len(others) == len(columns)
    assert [c for c in columns if not c.endswith(("_mean", "_std"))] == others
    for name in ("delta_m_pct", "delta_m_loss_pct", "train_tflops", "eval_tflops", "s_miou", "d_rmse_m", "k_l1",
                 "test_loss_d", "client_hours", "energy_kwh"):
        assert f"{name}_mean" in columns, name
    one = table["one-by-one"]
    assert float(one["train_tflops_mean"]) == 3.5 and float(one["train_tflops_std"]) == 0.5
    assert float(table["mas-2"]["delta_m_loss_pct_mean"]) == pytest.approx(50 / 6, rel=1e-5)
    assert table["fedavg"]["delta_m_pct_mean"] == "" and table["fedavg"]["s_miou_mean"] == ""
    md = md_path.read_text()
    assert "Δm% metrics" in md and "### Task metrics on `sdk`" in md and "Maninis" in md


def test_runs_csv_has_one_row_per_run_and_task(suite: Path) -> None:
    runs = load_runs([suite])
    write_summary(suite, runs)
    rows = list(csv.DictReader((suite / "runs.csv").open()))
    assert len(rows) == len(runs) * 3 == 21
    assert len({(r["run"], r["task"]) for r in rows}) == 21
    mas1 = {r["task"]: r for r in rows if r["run"] == "mas-x2-sdk-seed1"}
    assert [mas1[t]["group"] for t in "sdk"] == ["s", "dk", "dk"]
    assert float(mas1["d"]["test_loss"]) == 0.5 and float(mas1["d"]["abs_rel"]) == 0.1 and mas1["d"]["miou"] == ""
    assert float(mas1["s"]["miou"]) == 0.5 and float(mas1["k"]["total_test_loss"]) == 3.0
    fedavg = [r for r in rows if r["method"] == "fedavg"]
    assert all(r["group"] == "" and r["l1"] == "" and r["train_tflops"] == "" for r in fedavg)


def test_cogrouping_frequencies_and_shared_affinity_scale(suite: Path, tmp_path: Path) -> None:
    runs = load_runs([suite])
    groups: dict = {}
    for run in runs:
        groups.setdefault((run.task_set, run.label), []).append(run)
    freq, n = cogrouping(groups)[("sdk", "mas-2")]
    # seeds: sd,k / s,dk / sd,k -> s-d together in 2 of 3, d-k in 1 of 3, s-k never
    assert n == 3 and list(cogrouping(groups)) == [("sdk", "mas-2")]
    assert freq == pytest.approx(np.array([[1, 2 / 3, 0], [2 / 3, 1, 1 / 3], [0, 1 / 3, 1]]))
    largest = max(np.abs(np.array(_affinity(s, 0.5 + s)["matrix"]))[~np.eye(3, dtype=bool)].max() for s in (0, 1, 2))
    assert affinity_scale(runs) == pytest.approx(largest)
    assert task_order("kds") == "sdk"
    note = provenance(runs)
    assert note.startswith("suite quick-sdk · tiny, 32 px, R=4, R0=3, K=2, E=1, batch 4") and "seeds 0,1,2" in note

    written = make_report([suite], tmp_path / "figures")
    names = sorted(p.name for p in written)
    assert names == ["affinity-matrix-sdk-mas-2.png", "affinity-rounds-sdk-mas-2.png", "cogrouping-sdk.png",
                     "loss-vs-energy.png", "validation-loss.png"]
    for path in written:
        with Image.open(path) as image:
            image.load()
            assert image.size[0] >= 400 and image.size[1] >= 250
    table = list(csv.DictReader((tmp_path / "figures" / "cogrouping.csv").open()))
    assert [(r["task_i"], r["task_j"], r["together"], r["runs"]) for r in table] == [
        ("s", "d", "2", "3"), ("s", "k", "0", "3"), ("d", "k", "1", "3")]
    assert (tmp_path / "figures" / "runs.csv").is_file()


def test_timing_leaves_out_the_warm_up_round_and_counts_set_up_in_the_share() -> None:
    results = {"client_train_seconds": 10.0, "client_setup_seconds": 2.0,
               "history": [{"round": 1, "client_train_seconds": 4.0}, {"round": 2, "client_train_seconds": 6.0}]}
    # steady 10 - 4 = 6 s of 10 + 2 = 12 s
    assert timing(results) == {"warmup_client_seconds": 4.0, "steady_client_seconds": 6.0, "compute_share": 0.5}
    assert timing({**results, "history": [{"round": 1}]}) == {}  # an older run: no per-round client seconds


def test_oracle_rank_in_the_summary_and_the_bench_line(tmp_path: Path) -> None:
    partitions = [{"groups": ["s", "dk"], "total_test_loss": 2.5}, {"groups": ["sd", "k"], "total_test_loss": 3.0},
                  {"groups": ["sk", "d"], "total_test_loss": 3.5}]
    details = {"oracle_partitions": partitions, "oracle_mas_partition": ["sd", "k"], "oracle_mas_rank": 2,
               "oracle_mas_total_test_loss": 3.0, "oracle_partition_count": 3}
    _write_run(tmp_path, "oracle-x2-sdk-seed0", method="oracle", seed=0, test_loss={"s": 1.0, "d": 1.5, "k": 0.5},
               splits=["sd", "k"], details=details, oracle_mas_rank=2, client_setup_seconds=800.0,
               history=[{"round": 1, "seconds": 9.0, "client_train_seconds": 1200.0},
                        {"round": 2, "seconds": 2.0, "client_train_seconds": 6000.0}])
    runs = load_runs([tmp_path])
    md = write_summary(tmp_path, runs)[1].read_text()
    text = "MAS's choice sd,k ranks 2 of 3 (total test loss 3; best s,dk 2.5)"
    assert f"| Oracle-2 | 0 | {text} |" in md
    row = summarise(runs)[0]  # 7200 client s, 1200 of them in round 1, 800 s set-up: 6000 / 8000
    assert row.extra["compute_share"] == (0.75, 0.0) and row.extra["oracle_mas_rank"] == (2.0, 0.0)
    line = run_line(runs[0].results, launch_seconds=3630.0)
    assert "compute share 75%" in line and "30 s outside the ServerApp" in line and text in line
    assert "first round +7.0 s over the median round" in line


# Skill, split stability, the oracle's Spearman and per-partition Δm%, pair gains ----------------------

#: MAS's test skill per seed: seed 0 has d below LOW_SKILL (0.1)
MAS_SKILL = {0: {"s": 0.6, "d": 0.05, "k": 0.3}, 1: {"s": 0.8, "d": 0.25, "k": 0.35}}
#: Oracle partitions of seed 0, best first, with their per-task test losses (one-by-one's mean: s 2, d 1, k 0.5)
PARTITIONS = [
    {"groups": ["s", "dk"], "total_test_loss": 3.0, "score": 0.25, "test_loss": {"s": 1.0, "d": 1.5, "k": 0.5}},
    {"groups": ["sd", "k"], "total_test_loss": 3.05, "score": -0.5, "test_loss": {"s": 2.0, "d": 0.8, "k": 0.25}},
    {"groups": ["sk", "d"], "total_test_loss": 4.5, "score": 0.125, "test_loss": {"s": 3.0, "d": 1.0, "k": 0.5}}]
#: HOA's pair gains per seed: row i helps column j, asymmetric, None on the diagonal
GAINS = {0: [[None, 0.05, -0.02], [0.3, None, 0.04], [-0.01, 0.08, None]],
         1: [[None, -0.4, 0.02], [0.01, None, 0.03], [0.02, 0.05, None]]}


@pytest.fixture
def evidence(tmp_path: Path) -> Path:
    root = tmp_path / "evidence"
    for seed in (0, 1):
        _write_run(root, f"one-by-one-sdk-seed{seed}", method="one-by-one", seed=seed, test_loss=BASE_LOSS[seed],
                   test_skill={"s": 0.5, "d": 0.5, "k": 0.5})
        _write_run(root, f"fedavg-sdk-seed{seed}", method="fedavg", seed=seed, test_loss=BASE_LOSS[seed])  # no skill
        _write_run(root, f"mas-x2-sdk-seed{seed}", method="mas", seed=seed, test_loss=MAS_LOSS[seed],
                   splits=MAS_GROUPS[seed], test_skill=MAS_SKILL[seed], split_stability=(0.9, 0.6)[seed])
        rho = (-0.5, 0.25)[seed]
        details = {"oracle_partitions": PARTITIONS if seed == 0 else [{k: p[k] for k in ("groups", "total_test_loss")}
                                                                     for p in PARTITIONS],
                   "oracle_mas_partition": ["sd", "k"], "oracle_mas_rank": 2, "oracle_mas_total_test_loss": 3.05,
                   "oracle_partition_count": 3, "oracle_score_spearman": rho}
        _write_run(root, f"oracle-x2-sdk-seed{seed}", method="oracle", seed=seed, test_loss=MAS_LOSS[seed],
                   splits=["sd", "k"], details=details, oracle_mas_rank=2, oracle_score_spearman=rho)
        _write_run(root, f"hoa-x2-sdk-seed{seed}", method="hoa", seed=seed, test_loss=MAS_LOSS[seed],
                   splits=["sd", "k"],
                   details={"pair_gain_val": GAINS[seed], "pair_gain_val_median_abs": (0.04, 0.02)[seed]})
    return root


def test_skill_columns_and_the_low_skill_flag(evidence: Path) -> None:
    runs = load_runs([evidence])
    rows = {row.method: row for row in summarise(runs)}
    mas = rows["mas-2"]
    # s 0.6/0.8, d 0.05/0.25, k 0.3/0.35; each seed's lowest: 0.05 and 0.25
    assert mas.skill["s"] == pytest.approx((0.7, 0.1)) and mas.skill["d"] == pytest.approx((0.15, 0.1))
    assert mas.skill["k"] == pytest.approx((0.325, 0.025)) and mas.min_skill == pytest.approx((0.15, 0.1))
    assert mas.low_skill_runs == 1 and rows["one-by-one"].low_skill_runs == 0
    fedavg = rows["fedavg"]  # older runs: no skill recorded, nothing flagged
    assert fedavg.skill == {} and fedavg.min_skill is None and fedavg.low_skill_runs is None

    csv_path, md_path = write_summary(evidence, runs)
    table = {r["method"]: r for r in csv.DictReader(csv_path.open())}
    assert float(table["mas-2"]["test_skill_d_mean"]) == pytest.approx(0.15)
    assert float(table["mas-2"]["test_skill_d_std"]) == pytest.approx(0.1)
    assert float(table["mas-2"]["test_skill_min_mean"]) == pytest.approx(0.15)
    assert float(table["one-by-one"]["test_skill_min_std"]) == 0.0
    assert table["mas-2"]["low_skill_runs"] == "1" and table["one-by-one"]["low_skill_runs"] == "0"
    assert table["fedavg"]["low_skill_runs"] == "" and table["fedavg"]["test_skill_s_mean"] == ""
    md = md_path.read_text()
    assert "| MAS-2 | 0.700 ± 0.100 | 0.150 ± 0.100 | 0.325 ± 0.025 | 0.150 ± 0.100 **low skill** (1 of 2 runs) |" in md
    assert "Low skill (< 0.1): `mas-x2-sdk-seed0` d 0.050" in md
    mas_row = next(line for line in md.splitlines() if line.startswith("| MAS-2 | 2 |"))
    assert "0.150 ± 0.100 **low skill** (1 of 2 runs)" in mas_row  # and in the main table
    runs_csv = {(r["run"], r["task"]): r for r in csv.DictReader((evidence / "runs.csv").open())}
    assert float(runs_csv[("mas-x2-sdk-seed1", "k")]["test_skill"]) == 0.35
    assert runs_csv[("fedavg-sdk-seed0", "s")]["test_skill"] == ""


def test_split_stability_spearman_and_median_gain_columns(evidence: Path) -> None:
    runs = load_runs([evidence])
    rows = {row.method: row for row in summarise(runs)}
    assert rows["mas-2"].extra["split_stability"] == pytest.approx((0.75, 0.15))
    assert rows["oracle-2"].extra["oracle_score_spearman"] == pytest.approx((-0.125, 0.375))
    assert rows["hoa-2"].extra["pair_gain_val_median_abs"] == pytest.approx((0.03, 0.01))  # from `details`
    assert "split_stability" not in rows["hoa-2"].extra and "pair_gain_val_median_abs" not in rows["mas-2"].extra

    csv_path, md_path = write_summary(evidence, runs)
    table = {r["method"]: r for r in csv.DictReader(csv_path.open())}
    assert float(table["mas-2"]["split_stability_mean"]) == pytest.approx(0.75)
    assert float(table["mas-2"]["split_stability_std"]) == pytest.approx(0.15)
    assert float(table["oracle-2"]["oracle_score_spearman_std"]) == pytest.approx(0.375)
    assert float(table["hoa-2"]["pair_gain_val_median_abs_mean"]) == pytest.approx(0.03)
    assert table["fedavg"]["split_stability_mean"] == ""
    runs_csv = {(r["run"], r["task"]): r for r in csv.DictReader((evidence / "runs.csv").open())}
    assert float(runs_csv[("hoa-x2-sdk-seed1", "s")]["pair_gain_val_median_abs"]) == 0.02
    md = md_path.read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Method | Runs |"))
    assert "| Min skill | Split stability | ρ(score, loss) | Median \\|g\\| |" in header
    assert "0.750 ± 0.150" in next(line for line in md.splitlines() if line.startswith("| MAS-2 | 2 |"))
    assert "-0.125 ± 0.375" in next(line for line in md.splitlines() if line.startswith("| Oracle-2 | 2 |"))
    assert "0.0300 ± 0.0100" in next(line for line in md.splitlines() if line.startswith("| HOA-2 | 2 |"))


def test_oracle_partitions_with_delta_m_against_one_by_one(evidence: Path) -> None:
    runs = load_runs([evidence])
    md = write_summary(evidence, runs)[1].read_text()
    assert ("| Oracle-2 | 0 | MAS's choice sd,k ranks 2 of 3 (total test loss 3.05; best s,dk 3); "
            "ρ(score, loss) -0.50 |") in md
    # one-by-one's mean losses: s 2, d 1, k 0.5. s,dk: s +50 %, d −50 %, k 0 -> 0; sd,k: s 0, d +20 %,
    # k +50 % -> +23.33; sk,d: s −50 % -> −16.67. Seed 1's partitions record no per-task losses: no rows.
    assert "| Oracle-2 | 0 | `s,dk` | 0.25 | 3 | +0.00 |" in md
    assert "| Oracle-2 | 0 | `sd,k` (MAS) | -0.5 | 3.05 | +23.33 |" in md
    assert "| Oracle-2 | 0 | `sk,d` | 0.125 | 4.5 | -16.67 |" in md
    assert "| Oracle-2 | 1 | `s" not in md
    oracle = next(r for r in runs if r.label == "oracle-2" and r.seed == 0)
    assert oracle_partition_delta_m(oracle.results, None) == [None, None, None]  # no baseline


def test_the_runs_closing_summary_names_the_split_evidence(tmp_path: Path) -> None:
    base = {"method": "hoa", "task_set": "sdk", "splits": ["sd", "k"], "affinity": None,
            "test_loss": {"s": 1.0, "d": 2.0, "k": 0.5}, "total_test_loss": 3.5, "wall_seconds": 10.0,
            "client_train_seconds": 5.0, "energy_estimated": True, "energy_kwh": 0.0, "co2_g": 0.0,
            "energy_method": "estimate"}
    hoa = run_summary({**base, "details": {"pair_gain_val": GAINS[0], "pair_gain_val_median_abs": 0.04}}, tmp_path)
    assert "pair gain g[i->j] on val (row i helps column j), median |g| 0.0400:" in hoa
    assert "    d    0.3000        -   0.0400" in hoa.splitlines()
    assert "split stability" not in hoa and "Spearman" not in hoa
    mas = run_summary({**base, "method": "mas", "split_stability": 0.875}, tmp_path)
    assert "split stability: 0.875 (share of client bootstrap resamples giving the same split)" in mas
    assert "pair gain" not in mas
    oracle = run_summary({**base, "method": "oracle", "oracle_score_spearman": -0.6}, tmp_path)
    assert "oracle: Spearman rho(partition score, total test loss) = -0.600" in oracle


def test_report_draws_pair_gains_and_skill_curves(evidence: Path, tmp_path: Path) -> None:
    skill = [{"round": r, "federations": {"all": {"val_loss": MAS_LOSS[0], "val_skill": {"s": 0.1 * r, "d": 0.2,
                                                                                        "k": -0.1}}}} for r in (1, 2)]
    _write_run(evidence, "mas-x2-sdk-seed2", method="mas", seed=2, test_loss=MAS_LOSS[0], splits=MAS_GROUPS[2],
               history=skill)
    assert pair_gain_scale(load_runs([evidence])) == pytest.approx(0.4)  # GAINS[1][0][1]: shared by both seeds
    written = make_report([evidence], tmp_path / "figures")
    names = sorted(p.name for p in written)
    assert names == ["cogrouping-sdk.png", "loss-vs-energy.png", "pair-gain-sdk-hoa-2.png", "validation-loss.png",
                     "validation-skill-sdk.png"]
    for path in written:
        with Image.open(path) as image:
            image.load()
            assert image.size[0] >= 400 and image.size[1] >= 250
