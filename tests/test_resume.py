"""A run killed in the merge or the split phase resumes from its checkpoint and ends exactly as an
uninterrupted run with the same seed would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.flower_processes import pids_with_arg
from tests.test_app_simulation import run_app

NODES = 4


def config(data: Path, out: Path, name: str, **extra) -> dict:
    return {"method": "mas", "task-set": "sdk", "splits": 2, "num-rounds": 5, "merge-rounds": 3,
            "affinity-rounds": 2, "affinity-every": 2, "clients-per-round": 3, "batch-size": 4, "image-size": 32,
            "data-root": str(data), "output-dir": str(out), "run-name": name, **extra}


@pytest.fixture(scope="module")
def uninterrupted(private_homes, tiny_federation: Path, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("reference")
    run_app(config(tiny_federation, out, "reference"), NODES)
    return json.loads((out / "reference" / "results.json").read_text())


def crash_during(phase: str, run_config: dict, run_dir: Path) -> None:
    """Start the run in its own process group and SIGKILL it once a checkpoint of `phase` exists."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.run_sim", json.dumps(run_config), str(NODES)],
                            cwd=Path(__file__).parents[1], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            path = run_dir / "checkpoint.pt"
            if path.exists():
                progress = torch.load(path, weights_only=False)["progress"]
                if progress.stage.phase == phase and progress.next_round >= 1:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "results.json").exists()
    # Ray's processes live in the killed group or die with their parent; none of this run may linger.
    time.sleep(1.0)
    # (This run's only: other checkouts on the machine may be running theirs.)
    assert not [p for p in pids_with_arg(json.dumps(run_config)) if p != os.getpid()]


def assert_same_run(resumed: dict, uninterrupted: dict) -> None:
    assert resumed["splits"] == uninterrupted["splits"]
    np.testing.assert_allclose(resumed["affinity"]["matrix"], uninterrupted["affinity"]["matrix"], rtol=1e-6)
    assert resumed["test_loss"] == pytest.approx(uninterrupted["test_loss"], rel=1e-6)
    assert [h["sampled"] for h in resumed["history"]] == [h["sampled"] for h in uninterrupted["history"]]
    for mine, theirs in zip(resumed["history"], uninterrupted["history"], strict=True):
        for name, entry in mine["federations"].items():
            assert entry["val_loss"] == pytest.approx(theirs["federations"][name]["val_loss"], rel=1e-6)
    # the books carry over: same FLOPs and bytes as without the crash
    for key in ("train_tflops", "affinity_tflops", "eval_tflops", "comm_mb"):
        assert resumed[key] == pytest.approx(uninterrupted[key], rel=1e-9), key


def crash_and_resume(phase: str, run_config: dict, run_dir: Path) -> dict:
    crash_during(phase, run_config, run_dir)
    done = torch.load(run_dir / "checkpoint.pt", weights_only=False)["progress"]
    assert done.stage.phase == phase
    run_app({"resume": str(run_dir)}, NODES)
    results = json.loads((run_dir / "results.json").read_text())
    from mas_flower.live import read_live

    assert [x["round"] for x in read_live(run_dir)] == [h["round"] for h in results["history"]]  # each once
    return results


@pytest.mark.parametrize("phase", ["merge", "split"])
def test_killed_run_resumes_to_the_same_results(phase: str, uninterrupted: dict, tiny_federation: Path,
                                                tmp_path: Path) -> None:
    resumed = crash_and_resume(phase, config(tiny_federation, tmp_path, "crashed"), tmp_path / "crashed")
    assert_same_run(resumed, uninterrupted)
    assert_energy_kept(resumed)


def assert_energy_kept(resumed: dict) -> None:
    """The energy metered before the kill is in the resumed run's total: one part per finished round
    of the first session, checkpointed with it, then the second session's parts."""
    parts = resumed["energy_parts"]
    before = [p for p in parts if p["session"] == 1]
    after = [p for p in parts if p["session"] == 2]
    assert before and after and len(before) + len(after) == len(parts)
    assert [p["rounds_done"] for p in before] == list(range(1, len(before) + 1))
    assert all(p["energy_kwh"] > 0 for p in parts)
    assert resumed["energy_kwh"] == pytest.approx(sum(p["energy_kwh"] for p in parts), rel=1e-12)
    assert sum(p["energy_kwh"] for p in before) > 0.2 * resumed["energy_kwh"]
    assert "2 session(s)" in resumed["energy_covers"] and "resumed" in resumed["energy_covers"]


def test_killed_run_over_fedadam_resumes_with_its_server_optimiser_state(private_homes, tiny_federation: Path,
                                                                         tmp_path: Path) -> None:
    """FedAdam's moments (m_t, v_t) of the merged network are checkpointed: losing them would change
    every later round. The run over FedAdam is also a different run from the one over FedAvg."""
    fedadam = {"server-strategy": "fedadam", "server-lr": 0.05}
    run_app(config(tiny_federation, tmp_path, "adam-reference", **fedadam), NODES)
    reference = json.loads((tmp_path / "adam-reference" / "results.json").read_text())
    assert reference["server_strategy"] == "fedadam"
    assert reference["server_strategy_class"] == "flwr.serverapp.strategy.fedadam.FedAdam"
    hyper = reference["server_hyperparameters"]
    assert (hyper["eta"], hyper["beta_1"], hyper["beta_2"], hyper["tau"]) == (0.05, 0.9, 0.99, 0.001)
    assert reference["config"]["server-strategy"] == "fedadam"
    resumed = crash_and_resume("merge", config(tiny_federation, tmp_path, "adam-crashed", **fedadam),
                               tmp_path / "adam-crashed")
    assert_same_run(resumed, reference)
