"""MAS end to end in Flower's simulation engine (Ray), on a tiny synthetic federation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

RESULT_KEYS = {"method", "task_set", "splits", "num_rounds", "seed", "test_loss", "total_test_loss",
               "client_train_seconds", "wall_seconds", "energy_kwh", "co2_g", "energy_estimated",
               "affinity", "history"}


def run_app(overrides: dict, num_supernodes: int) -> None:
    from flwr.simulation import run_simulation

    from client_app.app import app as client_app
    from server_app.app import make_server_app

    run_simulation(server_app=make_server_app(overrides), client_app=client_app, num_supernodes=num_supernodes,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "num_gpus": 0}})


@pytest.fixture(scope="module")
def mas_run(private_homes, tiny_federation: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    run_app({"method": "mas", "task-set": "sdnkt", "splits": 2, "num-rounds": 4, "merge-rounds": 2, "lr": 0.1,
             "local-epochs": 1,
             "affinity-rounds": 2, "affinity-every": 2, "clients-per-round": 3, "batch-size": 4,
             "image-size": 32, "model": "tiny", "data-root": str(tiny_federation), "output-dir": str(out),
             "run-name": "mas-test"}, num_supernodes=4)
    return out / "mas-test"


def test_results_have_every_key(mas_run: Path) -> None:
    results = json.loads((mas_run / "results.json").read_text())
    assert set(results) >= RESULT_KEYS
    assert set(results["test_loss"]) == set("sdnkt")
    assert results["total_test_loss"] == pytest.approx(sum(results["test_loss"].values()))
    assert all(np.isfinite(v) and v > 0 for v in results["test_loss"].values())
    assert results["client_train_seconds"] > 0 and results["wall_seconds"] > results["client_train_seconds"] / 3
    # Every network's test covered every building, and every validation all 4 nodes (validation-nodes=100
    # >= 4): not an estimate, none missing.
    assert results["test_missing"] == [] and results["lost_buildings"] == {}
    assert all(covered == results["nodes"] for covered in results["test_buildings"].values())
    assert results["validation_sample"] == results["nodes"]
    assert all((e["val_nodes"], e["val_of"], e["val_estimate"]) == (4, 4, False) and "val_missing" not in e
               for h in results["history"] for e in h["federations"].values())


def test_merge_then_split_rounds(mas_run: Path) -> None:
    history = json.loads((mas_run / "results.json").read_text())["history"]
    assert [(h["round"], h["phase"]) for h in history] == [(1, "merge"), (2, "merge"), (3, "split"), (4, "split")]
    assert all(len(h["sampled"]) == 3 for h in history)
    # The learning rate follows lr·(1 − r/R)^0.9 across the whole run, split phase included.
    assert [h["lr"] for h in history] == pytest.approx([0.1 * (1 - r / 4) ** 0.9 for r in range(4)])


def test_affinity_is_the_mean_of_the_round_matrices_and_drives_the_split(mas_run: Path) -> None:
    from mas_flower.splitting import mas_split

    results = json.loads((mas_run / "results.json").read_text())
    rounds = [np.array(h["federations"]["all"]["affinity"]) for h in results["history"][:2]]
    matrix = np.array(results["affinity"]["matrix"])
    np.testing.assert_allclose(matrix, np.mean(rounds, axis=0), rtol=1e-9)
    assert not np.allclose(rounds[0], rounds[1])  # genuinely measured in each round
    chosen = mas_split(matrix, 2)
    assert sorted(results["splits"]) == sorted("".join("sdnkt"[i] for i in g) for g in chosen.groups)
    assert sorted("".join(results["splits"])) == sorted("sdnkt")
    assert json.loads((mas_run / "affinity.json").read_text()) == results["affinity"]


def test_each_split_starts_from_the_merged_encoder_and_its_decoders(mas_run: Path) -> None:
    results = json.loads((mas_run / "results.json").read_text())
    merged = torch.load(mas_run / "weights" / "merge-all.pt")
    for group in results["splits"]:
        init = torch.load(mas_run / "weights" / f"split-{group}-init.pt")
        expected = {k for k in merged if k.startswith("encoder.")} | {
            k for k in merged for t in group if k.startswith(f"decoders.{t}.")}
        assert set(init) == expected
        for key in expected:
            assert torch.equal(init[key], merged[key]), key
        final = torch.load(mas_run / "weights" / f"split-{group}.pt")
        assert any(not torch.equal(final[k], init[k]) for k in init)  # and it trained afterwards


def test_task_metrics_flops_bytes_and_the_live_file(mas_run: Path, tiny_federation: Path) -> None:
    from mas_flower.data import open_building
    from mas_flower.flops import network_flops
    from mas_flower.live import read_live
    from mas_flower.metrics import metric_names

    results = json.loads((mas_run / "results.json").read_text())
    # Task metrics: each task by its serving network, summed over every node's test split.
    assert {t: set(m) for t, m in results["test_metrics"].items()} == {t: set(metric_names(t)) for t in "sdnkt"}
    assert 0 <= results["test_metrics"]["s"]["miou"] <= 1 and results["test_metrics"]["d"]["rmse_m"] > 0
    assert set(results["history"][-1]["federations"][results["splits"][0]]["val_metrics"]) == set(results["splits"][0])
    # Training FLOPs without the lookahead, by hand: per round, network × epochs (1) × each sampled
    # building's training samples; a round's "federations" are the networks it trained ("all": sdnkt).
    train = {b: open_building(tiny_federation, b, "sdnkt", 32).sizes()["train"] for b in results["nodes"]}
    expected = sum(network_flops("tiny", "sdnkt" if fed == "all" else fed, 32).train * train[b]
                   for h in results["history"] for fed in h["federations"] for b in h["sampled"])
    assert 0 < results["affinity_tflops"] < results["train_tflops"]
    assert (results["train_tflops"] - results["affinity_tflops"]) * 1e12 == pytest.approx(expected, rel=1e-9)
    assert results["eval_tflops"] > 0 and results["client_setup_seconds"] > 0
    # Bytes: down carries each sampled node's networks, so more than up's metrics, less than 2x up.
    assert results["comm_mb"] == pytest.approx(results["comm_mb_down"] + results["comm_mb_up"])
    rounds = results["history"]
    assert all(h["comm_mb_down"] > 0 and h["comm_mb_up"] > 0 for h in rounds)
    assert sum(h["comm_mb"] for h in rounds) < results["comm_mb"]  # + the final test evaluation
    assert sum(h["train_tflops"] for h in rounds) == pytest.approx(results["train_tflops"])
    # The live file: one line per round, the history entry plus the totals so far.
    live = read_live(mas_run)
    assert [(x["round"], x["phase"]) for x in live] == [(h["round"], h["phase"]) for h in rounds]
    assert live[-1]["federations"] == rounds[-1]["federations"]
    assert live[-1]["train_tflops_so_far"] == pytest.approx(results["train_tflops"])


def test_report_draws_an_unfinished_run_from_its_live_file(mas_run: Path, tmp_path: Path) -> None:
    import shutil

    from mas_flower.tools.report import make_report

    run = tmp_path / "running"
    shutil.copytree(mas_run, run)
    (run / "results.json").unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")  # three rounds done so far
    written = make_report([run], tmp_path / "figures")
    assert sorted(p.name for p in written) == ["affinity-rounds-sdnkt-mas-2.png", "validation-loss.png",
                                                   "validation-skill-sdnkt.png"]
    assert all(p.stat().st_size > 5000 for p in written)


def test_skill_against_the_best_constant_of_the_nodes_training_labels(mas_run: Path, tiny_federation: Path) -> None:
    """The constant's test loss, worked out here from the raw data of the run's nodes, is what the
    server got from the clients' label counts and their evaluation (nothing else leaves a node)."""
    from mas_flower.constant import LabelHistogram, best_constants, evaluate_constants, histogram_of
    from mas_flower.data import open_building

    results = json.loads((mas_run / "results.json").read_text())
    buildings = [open_building(tiny_federation, b, "sdnkt", 32) for b in results["nodes"]]
    labels = LabelHistogram("")
    for b in buildings:
        labels.merge(histogram_of(b.split("train"), "sdnkt"))
    constants = best_constants(labels)
    floors = [(evaluate_constants(b.split("test"), constants, "sdnkt"), len(b.split("test"))) for b in buildings]
    total = sum(n for _, n in floors)
    want = {t: sum(f[t] * n for f, n in floors) / total for t in "sdnkt"}
    assert results["test_constant_loss"] == pytest.approx(want, rel=1e-6)
    assert results["test_skill"] == pytest.approx(
        {t: 1 - results["test_loss"][t] / want[t] for t in "sdnkt"}, rel=1e-6)
    for h in results["history"]:
        for e in h["federations"].values():
            assert set(e["val_skill"]) == set(e["val_loss"])
            assert all(v < 1 for v in e["val_skill"].values())
