"""Writes a finished run's folder and prints its summary."""

from __future__ import annotations

import json
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.common.logger import log

from mas_flower.energy import estimate_from_seconds
from mas_flower.methods import Method, StageOutcome
from mas_flower.results import RESULTS_FILE, affinity_payload, new_run_dir, save_state, write_json
from mas_flower.settings import Settings
from server_app.runner import FederatedRunner


def write_outputs(settings: Settings, method: Method, runner: FederatedRunner, outcome: StageOutcome,
                  test_loss: dict[str, float], wall_seconds: float) -> Path:
    run_dir = new_run_dir(settings)
    weights = run_dir / "weights"
    weights.mkdir()
    for done in runner.outcomes:  # every stage's final networks, and the inherited starts of later stages
        for fed in done.stage.federations:
            save_state(weights / f"{done.stage.phase}-{fed.name}.pt", done.states[fed.name])
            if fed.init is not None:
                save_state(weights / f"{done.stage.phase}-{fed.name}-init.pt", fed.init)
    write_json(run_dir / "config.json", settings.to_run_config())
    affinity = affinity_payload(settings.task_set, method.affinity)
    if affinity is not None:
        write_json(run_dir / "affinity.json", affinity)
    energy = estimate_from_seconds(runner.ledger.client_train_seconds)
    results: dict[str, Any] = {
        "method": settings.method,
        "task_set": settings.task_set,
        "splits": method.splits,
        "num_rounds": settings.num_rounds,
        "seed": settings.seed,
        "test_loss": {t: test_loss[t] for t in settings.task_set},
        "total_test_loss": sum(test_loss.values()),
        "client_train_seconds": runner.ledger.client_train_seconds,
        "wall_seconds": wall_seconds,
        "energy_kwh": energy.energy_kwh,
        "co2_g": energy.co2_g,
        "energy_estimated": energy.estimated,
        "energy_method": energy.method,
        "carbon_intensity_g_per_kwh": energy.intensity_g_per_kwh,
        "pue": energy.pue,
        "affinity": affinity,
        "served_by": method.serving(outcome),
        "details": method.details,
        "nodes": sorted(runner.nodes.values()),
        "history": runner.ledger.history,
        "config": settings.to_run_config(),
    }
    write_json(run_dir / RESULTS_FILE, results)
    for line in summary(results, run_dir).splitlines():  # through Flower's logger: `flwr run --stream` shows it
        log(INFO, "%s", line)
    return run_dir


def summary(results: dict[str, Any], run_dir: Path) -> str:
    lines = [f"== {results['method']} on {results['task_set']}: results in {run_dir}"]
    if results["splits"] is not None:
        lines.append(f"splits: {','.join(results['splits'])}")
    if results["affinity"] is not None:
        tasks = results["affinity"]["tasks"]
        lines.append("affinity Z[i->j] (row i helps column j):")
        lines.append("      " + "".join(f"{t:>9}" for t in tasks))
        for t, row in zip(tasks, results["affinity"]["matrix"], strict=True):
            lines.append(f"  {t:>3} " + "".join(f"{v:9.4f}" for v in row))
    lines.append("test loss: " + "  ".join(f"{t}={v:.4f}" for t, v in results["test_loss"].items()))
    lines.append(f"total test loss: {results['total_test_loss']:.4f}")
    lines.append(f"time: wall {results['wall_seconds']:.1f} s, client training {results['client_train_seconds']:.1f} s")
    lines.append(f"energy: {results['energy_kwh']:.6f} kWh, {results['co2_g']:.3f} gCO2eq "
                 f"({results['energy_method']})")
    return "\n".join(lines) + "\n" + json.dumps({"splits": results["splits"],
                                                 "total_test_loss": results["total_test_loss"]})
