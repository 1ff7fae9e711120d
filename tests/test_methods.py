"""Every method's plan (no Flower), and every baseline end to end in the simulation engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mas_flower.defaults import load_settings
from mas_flower.methods import FederationSpec, StageOutcome, build_method, list_methods
from tests.test_app_simulation import RESULT_KEYS, run_app


def settings(**overrides):
    return load_settings({}, {k.replace("_", "-"): v for k, v in overrides.items()})


def test_every_paper_method_is_registered() -> None:
    assert set(list_methods()) >= {"mas", "fedavg", "fedprox", "gradnorm", "one-by-one", "hoa", "tag"}


def test_all_in_one_baselines_differ_only_in_their_training_options() -> None:
    stages = {m: build_method(settings(method=m)).first_stage() for m in ("fedavg", "fedprox", "gradnorm")}
    for stage in stages.values():
        assert [f.tasks for f in stage.federations] == ["sdnkt"] and stage.rounds == 20
    assert stages["fedprox"].federations[0].prox_mu == pytest.approx(0.004)
    assert stages["fedavg"].federations[0].prox_mu == 0
    assert stages["gradnorm"].federations[0].weighting == "gradnorm"


def test_one_by_one_trains_every_task_alone_for_all_rounds() -> None:
    stage = build_method(settings(method="one-by-one")).first_stage()
    assert [f.tasks for f in stage.federations] == list("sdnkt") and stage.rounds == 20


def test_hoa_estimates_groups_from_single_and_pair_validation_losses() -> None:
    method = build_method(settings(method="hoa", task_set="sdk", splits=2))
    first = method.first_stage()
    assert sorted(f.tasks for f in first.federations) == sorted(["s", "d", "k", "sd", "sk", "dk"])
    # s and d help each other (lower loss together); k is best alone.
    val = {"s": {"s": 1.0}, "d": {"d": 1.0}, "k": {"k": 1.0}, "sd": {"s": 0.5, "d": 0.6},
           "sk": {"s": 1.2, "k": 1.3}, "dk": {"d": 1.1, "k": 1.4}}
    second = method.next_stage(StageOutcome(first, {}, val_losses=val))
    assert sorted(method.splits) == ["k", "sd"]
    assert sorted(f.tasks for f in second.federations) == ["k", "sd"]
    assert all(f.init is None for f in second.federations)  # from scratch
    assert second.rounds == 20 and second.schedule_start == 0
    assert method.details["hoa_estimated_total"] == pytest.approx(0.5 + 0.6 + 1.0)


def test_tag_measures_affinity_all_run_and_picks_overlapping_groups() -> None:
    method = build_method(settings(method="tag", task_set="sdk", splits=2))
    first = method.first_stage()
    assert first.affinity_rounds == first.rounds == 20 and first.federations[0].measure_affinity
    a = np.array([[0, 0.9, -0.5], [0.8, 0, 0.1], [-0.4, 0.2, 0]])
    second = method.next_stage(StageOutcome(first, {}, affinity={"all": a}))
    assert all(len(g) >= 2 for g in method.splits)
    assert set("".join(method.splits)) == set("sdk")
    assert all(f.init is None for f in second.federations)


def test_serving_picks_the_best_validated_group_for_overlapping_tasks() -> None:
    method = build_method(settings(method="tag", task_set="sdk", splits=2))
    stage = method.stage("groups", [FederationSpec(g, g) for g in ("sd", "dk")])
    outcome = StageOutcome(stage, {}, val_losses={"sd": {"s": 1.0, "d": 0.7}, "dk": {"d": 0.5, "k": 2.0}})
    assert method.serving(outcome) == {"s": "sd", "d": "dk", "k": "dk"}


@pytest.mark.parametrize("method", ["fedprox", "gradnorm", "one-by-one", "hoa", "tag"])
def test_baseline_runs_end_to_end(method: str, private_homes, tiny_federation: Path, tmp_path: Path) -> None:
    run_app({"method": method, "task-set": "sdk", "splits": 2, "num-rounds": 2, "clients-per-round": 2,
             "batch-size": 4, "lr": 0.1, "local-epochs": 1, "image-size": 32, "affinity-every": 2,
             "data-root": str(tiny_federation),
             "output-dir": str(tmp_path), "run-name": method}, num_supernodes=3)
    results = json.loads((tmp_path / method / "results.json").read_text())
    assert set(results) >= RESULT_KEYS and results["method"] == method
    assert set(results["test_loss"]) == set("sdk") and np.isfinite(results["total_test_loss"])
    phases = [h["phase"] for h in results["history"]]
    if method in ("hoa", "tag"):
        assert phases == [phases[0]] * 2 + ["groups"] * 2  # measuring stage, then groups from scratch
        assert set("".join(results["splits"])) == set("sdk")
        assert set(results["served_by"].values()) <= set(results["splits"])
    else:
        assert len(phases) == 2 and results["splits"] is None
    if method == "one-by-one":
        assert set(results["history"][0]["federations"]) == {"s", "d", "k"}
        from mas_flower.data import open_building
        from mas_flower.flops import network_flops

        # It costs the single-task networks' sum × the samples trained (1 epoch of each sampled building).
        samples = sum(open_building(tiny_federation, b, "sdk", 32).sizes()["train"]
                      for h in results["history"] for b in h["sampled"])
        per_sample = sum(network_flops("tiny", t, 32).train for t in "sdk")
        assert results["affinity_tflops"] == 0
        assert results["train_tflops"] * 1e12 == pytest.approx(per_sample * samples, rel=1e-9)


@pytest.mark.parametrize(("schedule", "expected"), [
    ("continue", [0.1 * (1 - 2 / 4) ** 0.9, 0.1 * (1 - 3 / 4) ** 0.9]),  # one schedule over R = 4
    ("restart", [0.1, 0.1 * (1 - 1 / 2) ** 0.9]),  # restarted at lr over R − R0 = 2 rounds
])
def test_mas_split_schedule(schedule: str, expected: list[float]) -> None:
    from mas_flower.strategy.parallel import ParallelFederations

    method = build_method(settings(task_set="sdk", num_rounds=4, merge_rounds=2, affinity_rounds=1,
                                   split_schedule=schedule, lr=0.1))
    merge = method.first_stage()
    merged = {"encoder.w": np.zeros(1), **{f"decoders.{t}.w": np.zeros(1) for t in "sdk"}}
    affinity = np.array([[0, 1, -1], [1, 0, -1], [-1, -1, 0]], dtype=float)
    split = method.next_stage(StageOutcome(merge, {"all": merged}, affinity={"all": affinity}))
    driver = ParallelFederations(split, method.settings)
    assert [driver.lr(r) for r in (3, 4)] == pytest.approx(expected)
    assert ParallelFederations(merge, method.settings).lr(1) == pytest.approx(0.1)


def test_oracle_partitions_are_stirling_numbers() -> None:
    from mas_flower.methods.oracle import partitions

    assert list(partitions("sdk", 2)) == [["s", "dk"], ["sd", "k"], ["sk", "d"]]
    for n, k, stirling in [(5, 2, 15), (5, 3, 25), (4, 2, 7), (4, 4, 1)]:
        parts = list(partitions("sdnkt"[:n], k))
        assert len(parts) == stirling and len({tuple(p) for p in parts}) == stirling
        assert all(sorted("".join(p)) == sorted("sdnkt"[:n]) and len(p) == k for p in parts)


def test_oracle_ranks_mas_choice_among_every_partition(private_homes, tiny_federation: Path, tmp_path: Path) -> None:
    run_app({"method": "oracle", "task-set": "sdk", "splits": 2, "num-rounds": 2, "merge-rounds": 1,
             "affinity-rounds": 1, "clients-per-round": 2, "batch-size": 4, "image-size": 32, "affinity-every": 2,
             "data-root": str(tiny_federation), "output-dir": str(tmp_path), "run-name": "oracle"}, num_supernodes=3)
    results = json.loads((tmp_path / "oracle" / "results.json").read_text())
    details = results["details"]
    assert set(results["history"][1]["federations"]) == {"s", "dk", "sd", "k", "sk", "d"}
    ranked = [p["total_test_loss"] for p in details["oracle_partitions"]]
    assert details["oracle_partition_count"] == 3 and ranked == sorted(ranked)
    assert sorted(details["oracle_mas_partition"]) == sorted(results["splits"])
    # MAS's partition serves the tasks, so the run's total is its total; its rank counts the better ones.
    assert details["oracle_mas_total_test_loss"] == pytest.approx(results["total_test_loss"])
    assert details["oracle_mas_rank"] == 1 + sum(t < results["total_test_loss"] - 1e-12 for t in ranked)
    assert results["oracle_mas_rank"] == details["oracle_mas_rank"]  # for the bench summary
