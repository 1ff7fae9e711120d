"""The own-ServerApp example of docs/strategies.md works out of the box: its code block, as written, is
the ServerApp of an app folder of its own, run by the real `flwr run` (a managed SuperLink of this test's
own, stopped by PID) with no data-root, so the library call `prepare_data` must make the synthetic
federation itself."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import tomli_w
import tomllib

from mas_flower.tools.launch import launch, own_superlink, superlink_marker
from tests.flower_processes import pids_with_arg

REPO = Path(__file__).resolve().parents[1]


def readme_block() -> str:
    """The code block of docs/strategies.md, section "Your own ServerApp", as written."""
    section = (REPO / "docs" / "strategies.md").read_text().split("\n## Your own ServerApp\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def user_app_folder(folder: Path) -> Path:
    """An app folder as docs/strategies.md tells a user to make: their ServerApp module, our ClientApp, the
    app's run-config defaults (from our pyproject.toml)."""
    ours = tomllib.loads((REPO / "pyproject.toml").read_text())
    folder.mkdir()
    (folder / "my_server.py").write_text(readme_block())
    (folder / "pyproject.toml").write_text(tomli_w.dumps({
        "build-system": ours["build-system"],
        "project": {"name": "my-mas-app", "version": "1.0.0", "dependencies": ours["project"]["dependencies"]},
        "tool": {"flwr": {"app": {"publisher": "someone", "config": ours["tool"]["flwr"]["app"]["config"],
                                  "components": {"serverapp": "my_server:app",
                                                 "clientapp": "client_app.app:app"}}}}}))
    return folder


def test_the_readme_serverapp_runs_with_no_data_root(private_homes, tmp_path: Path) -> None:
    app_dir = user_app_folder(tmp_path / "my-app")
    out = tmp_path / "out"
    short = tmp_path / "short.toml"  # a short run; no data-root
    short.write_text(tomli_w.dumps({"task-set": "sdk", "num-rounds": 3, "merge-rounds": 2, "affinity-rounds": 1,
                                    "local-epochs": 1, "clients-per-round": 3, "batch-size": 4,
                                    "synthetic-buildings": 4, "synthetic-views": 12, "output-dir": str(out)}))
    flwr_home = tmp_path / "flwr"
    with own_superlink(flwr_home, say=lambda _: None) as env:
        run_id, status = launch(nodes=4, cpus_per_node=1, gpus_per_node=0, extra=["--run-config", str(short)],
                                env=env, app_dir=app_dir)
    assert not pids_with_arg(superlink_marker(flwr_home)), "the SuperLink this test started is still running"
    assert status == "finished:completed", f"run {run_id} ended {status}"
    [run_dir] = out.iterdir()
    assert re.fullmatch(r"mas-x2@fedadam-sdk-seed0-\d{8}-\d{6}", run_dir.name)
    results = json.loads((run_dir / "results.json").read_text())
    generated = private_homes["MAS_FLOWER_HOME"] / "data" / "synthetic-b4-v12-s32-seed0"
    assert results["config"]["data-root"] == str(generated) and (generated / "rgb").is_dir()
    assert results["server_strategy"] == "FedAdam" and results["server_hyperparameters"]["eta"] == 0.01
    assert [h["phase"] for h in results["history"]] == ["merge", "merge", "split"]
    assert set(results["test_loss"]) == set("sdk") and all(math.isfinite(v) for v in results["test_loss"].values())
    val = [v for h in results["history"] for e in h["federations"].values() for v in e["val_loss"].values()]
    assert len(val) >= 9 and all(math.isfinite(v) for v in val)
