"""Writes a finished run's folder and logs its summary."""

from __future__ import annotations

import json
import re
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.common.logger import log

from mas_flower.energy import carbontracker_version
from mas_flower.results import RESULTS_FILE, affinity_payload, save_torch, write_json
from mas_flower.strategy.divergence import diverged_networks
from mas_flower.strategy.ledger import Ledger
from mas_flower.strategy.method import MethodStrategy


def energy_summary(ledger: Ledger, remote_nodes: int) -> dict[str, Any]:
    """Energy of the run: this machine's meter (once, however many clients it ran) plus what nodes
    on other machines measured of their own training."""
    local = ledger.local_energy
    methods = distinct_methods([part["method"] for part in local])
    if remote_nodes:
        methods.append(f"{remote_nodes} remote node(s) metered their own training")
    intensity = local[0]["intensity_g_per_kwh"] if local else None
    return {
        "energy_kwh": sum(p["energy_kwh"] for p in local) + ledger.remote_energy_kwh,
        "co2_g": sum(p["co2_g"] for p in local) + ledger.remote_co2_g,
        "energy_estimated": (any(p["estimated"] for p in local) or ledger.remote_estimated
                             or not local and not remote_nodes),
        "energy_method": "; ".join(methods) or "nothing measured",
        "carbontracker_version": carbontracker_version(),
        "carbon_intensity_g_per_kwh": intensity,
        "pue": local[0]["pue"] if local else None,
        "energy_parts": local,
        "energy_covers": energy_coverage(ledger, remote_nodes),
    }


def distinct_methods(methods: list[str]) -> list[str]:
    """Each way of metering once, in first-seen order, with how many parts used it: the parts of a run
    (one per round) differ only in their numbers (seconds, watts, samples), so their texts are grouped
    by the text with every number blanked. Returns e.g. ['carbontracker 2.4.7: cpu 35.61 W ... (21 parts)']."""
    groups: dict[str, list[str]] = {}
    for method in methods:
        groups.setdefault(re.sub(r"\d+(?:\.\d+)?", "#", method), []).append(method)
    return [texts[0] + (f" (first of {len(texts)} parts metered alike)" if len(texts) > 1 else "")
            for texts in groups.values()]


def energy_brief(results: dict[str, Any]) -> str:
    """One short line on what the energy figure is: measured or estimated, which components were
    measured, mean power x seconds x PUE (the full text is results.json's `energy_method`)."""
    parts = results.get("energy_parts") or []
    if not parts:
        return f"{'estimated' if results['energy_estimated'] else 'measured'}: {results['energy_method']}"
    seconds = sum(p["seconds"] for p in parts)
    watts = sum(p["mean_power_w"] * p["seconds"] for p in parts) / seconds if seconds > 0 else 0.0
    measured = sorted({c for p in parts for c in p.get("components", [])})
    what = f"measured: {', '.join(measured)}" if measured else "no component measured, a constant power assumed"
    label = "ESTIMATED" if results["energy_estimated"] else "measured"
    return (f"{label} ({what}): mean {watts:.1f} W x {seconds:.0f} s x PUE {parts[0]['pue']:g}; "
            "how: results.json energy_method")


def energy_coverage(ledger: Ledger, remote_nodes: int) -> str:
    """What `energy_kwh` covers, in words (for results.json)."""
    if not ledger.local_energy and not remote_nodes:
        return "nothing: no meter ran"
    sessions = max(ledger.sessions, 1)
    text = (f"this machine from the start of training to the test, metered per round in {len(ledger.local_energy)} "
            f"part(s) over {sessions} session(s)") if ledger.local_energy else "nothing on this machine"
    if sessions > 1:
        text += ("; the run was resumed: the energy of every round finished before an interruption is kept, that "
                 "of a round interrupted before its checkpoint is lost and the round's repeat is counted")
    if remote_nodes:
        text += "; plus what remote nodes metered of their own training (the replies that reached the server)"
    return text


def server_strategy_record(strategy: MethodStrategy) -> dict[str, Any]:
    """Which Flower strategy aggregated the federations, and its hyperparameters (scalar settings)."""
    instances = [s for p in [strategy.progress] if p is not None for s in p.strategies.values()]
    instance = instances[0] if instances else None
    name = strategy.aggregator if isinstance(strategy.aggregator, str) else type(instance).__name__
    hyper = {k: v for k, v in vars(instance).items() if not k.startswith("_") and isinstance(v, (int, float, str))
             and not k.endswith("_key")} if instance is not None else {}
    return {"server_strategy": name, "server_strategy_class": f"{type(instance).__module__}.{type(instance).__name__}"
            if instance is not None else None, "server_hyperparameters": hyper}


def write_outputs(strategy: MethodStrategy, run_dir: Path) -> Path:
    """results.json (last, atomically), affinity.json, and every stage's networks under weights/."""
    settings, method, ledger = strategy.settings, strategy.method, strategy.ledger
    runner, outcome, test_loss = strategy, strategy.outcome, strategy.test_loss
    weights = run_dir / "weights"
    weights.mkdir(exist_ok=True)
    for done in runner.outcomes:  # every stage's final networks, and the inherited starts of later stages
        for fed in done.stage.federations:
            save_torch(weights / f"{done.stage.phase}-{fed.name}.pt", done.states[fed.name])
            if fed.init is not None:
                save_torch(weights / f"{done.stage.phase}-{fed.name}-init.pt", fed.init)
    affinity = affinity_payload(settings.task_set, method.affinity)
    if affinity is not None:
        write_json(run_dir / "affinity.json", affinity)
    results: dict[str, Any] = {
        "method": settings.method,
        "task_set": settings.task_set,
        "splits": method.splits,
        "num_rounds": settings.num_rounds,
        "seed": settings.seed,
        "test_loss": {t: test_loss[t] for t in settings.task_set},
        "total_test_loss": sum(test_loss.values()),
        "test_metrics": strategy.test_metrics,
        "test_constant_loss": strategy.test_constant_loss,
        "test_skill": strategy.test_skill,
        "client_train_seconds": ledger.client_train_seconds,
        "client_setup_seconds": ledger.accounts.client_setup_seconds,
        **ledger.accounts.totals(),
        "wall_seconds": ledger.wall_seconds,
        "precision": settings.precision,
        "precision_used": sorted(ledger.precisions),
        **energy_summary(ledger, len(runner.remote)),
        "affinity": affinity,
        "affinity_se": None if getattr(method, "affinity_se", None) is None else method.affinity_se.tolist(),
        **({"split_stability": method.details["split_stability"]} if "split_stability" in method.details else {}),
        "served_by": method.serving(outcome),
        **server_strategy_record(strategy),
        "details": method.details,
        **{k: method.details[k] for k in ("oracle_mas_rank", "oracle_score_spearman") if k in method.details},
        "nodes": sorted(runner.nodes.values()),
        # The buildings that validated (validation-nodes; null: every node), as at the last validation.
        "validation_sample": runner.roster.validation_sample,
        **strategy.coverage,
        "diverged": diverged_networks(ledger.history),  # networks whose validation loss exploded (> 3x its first)
        "history": ledger.history,
        "config": settings.to_run_config(),
    }
    write_json(run_dir / RESULTS_FILE, results)  # last: its presence means the run finished
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
    if results.get("test_skill"):
        lines.append("test skill (1 - loss / best constant's loss): "
                     + "  ".join(f"{t}={v:.3f}" for t, v in results["test_skill"].items()))
    if results.get("split_stability") is not None:
        lines.append(f"split stability: {results['split_stability']:.3f} (share of client bootstrap resamples "
                     "giving the same split)")
    if results.get("oracle_score_spearman") is not None:
        lines.append(f"oracle: Spearman rho(partition score, total test loss) = {results['oracle_score_spearman']:.3f} "
                     "(-1: a higher score always meant a lower loss)")
    details = results.get("details") or {}
    for split in ("val", "test"):
        if details.get(f"pair_gain_{split}") is not None:
            lines.append(f"pair gain g[i->j] on {split} (row i helps column j), median |g| "
                         f"{details[f'pair_gain_{split}_median_abs']:.4f}:")
            lines.append("      " + "".join(f"{t:>9}" for t in results["task_set"]))
            for t, row in zip(results["task_set"], details[f"pair_gain_{split}"], strict=True):
                lines.append(f"  {t:>3} " + "".join(f"{'-':>9}" if v is None else f"{v:9.4f}" for v in row))
    lines.append(f"total test loss: {results['total_test_loss']:.4f}")
    lines.append(f"time: wall {results['wall_seconds']:.1f} s, client training {results['client_train_seconds']:.1f} s")
    lines.append(f"energy: {results['energy_kwh']:.6f} kWh, {results['co2_g']:.3f} gCO2eq, {energy_brief(results)}")
    return "\n".join(lines) + "\n" + json.dumps({"splits": results["splits"],
                                                 "total_test_loss": results["total_test_loss"]})
