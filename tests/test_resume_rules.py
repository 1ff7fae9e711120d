"""A resume keeps its word: it refuses given settings that differ from its checkpoint's (naming each),
applies only the keys that cannot change the results, and names the version that wrote a checkpoint
it cannot read. Checkpoints here are written by the real `MethodStrategy.checkpoint`, or by hand
where a payload of another version is the point."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
import torch

import mas_flower
from mas_flower.defaults import load_settings
from mas_flower.methods import build_method
from mas_flower.strategy import MethodStrategy
from mas_flower.strategy.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    RESUME_MAY_CHANGE,
    CheckpointError,
    given_keys,
    load_checkpoint,
    resume_settings,
)
from server_app.app import preflight

#: The killed run: MAS on sdnkt, 5 rounds (the app defaults are MAS on sdnkt, 20 rounds).
ORIGINAL = {"method": "mas", "task-set": "sdnkt", "splits": 2, "num-rounds": 5, "merge-rounds": 3,
            "affinity-rounds": 2, "clients-per-round": 3, "batch-size": 4, "run-name": "killed"}


@pytest.fixture
def killed_run(tiny_federation: Path, tmp_path: Path) -> Path:
    """A run folder holding the checkpoint the real MethodStrategy writes (and no results.json)."""
    settings = load_settings({}, {**ORIGINAL, "data-root": str(tiny_federation), "output-dir": str(tmp_path)})
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    MethodStrategy(build_method(settings), run_dir=run_dir).checkpoint()
    assert (run_dir / CHECKPOINT_FILE).is_file()
    return run_dir


def test_a_checkpoint_records_its_format_and_the_version_that_wrote_it(killed_run: Path) -> None:
    payload = load_checkpoint(killed_run)
    assert (payload["format"], payload["app_version"]) == (CHECKPOINT_FORMAT, mas_flower.__version__)
    assert payload["config"]["task-set"] == "sdnkt" and payload["config"]["num-rounds"] == 5


def test_changed_settings_are_refused_each_named(killed_run: Path) -> None:
    """The issue's case: resume with task-set='sdk' method='fedavg' num-rounds=6 used to continue
    silently as the checkpoint's MAS on sdnkt."""
    with pytest.raises(CheckpointError) as err:
        preflight({"task-set": "sdk", "method": "fedavg", "num-rounds": 6}, {"resume": str(killed_run)})
    message = str(err.value)
    assert f"resume='{killed_run}'" in message
    assert ("method='fedavg' (checkpoint: 'mas'), num-rounds=6 (checkpoint: 5), task-set='sdk' (checkpoint: "
            "'sdnkt')") in message
    # a result-changing key that only reads like plumbing is refused too
    with pytest.raises(CheckpointError, match=r"this given key differs .*: min-replies=2 \(checkpoint: 1\)\."):
        preflight({"min-replies": 2}, {"resume": str(killed_run)})
    # a resumed run stays in its folder: another run-name cannot be honoured
    with pytest.raises(CheckpointError, match=r"run-name='elsewhere' \(checkpoint: 'killed'\)"):
        preflight({"run-name": "elsewhere"}, {"resume": str(killed_run)})


def test_a_key_known_to_be_given_is_refused_even_at_the_default(killed_run: Path) -> None:
    """num-rounds=20 is the app default, so from the merged run config alone it reads as not given (the
    checkpoint's 5 is kept); named in Flower's override_config (`given`), it is known given and refused."""
    settings, _, _ = preflight({"num-rounds": 20}, {"resume": str(killed_run)})
    assert settings.num_rounds == 5
    with pytest.raises(CheckpointError, match=r"num-rounds=20 \(checkpoint: 5\)"):
        preflight({"num-rounds": 20}, {"resume": str(killed_run)}, given={"num-rounds"})


def test_settings_equal_to_the_checkpoints_are_accepted(killed_run: Path, tiny_federation: Path) -> None:
    """Resuming with the original command line plus `resume` continues the same run."""
    settings, method, checkpoint = preflight(
        {**ORIGINAL, "data-root": str(tiny_federation), "output-dir": str(killed_run.parent)},
        {"resume": str(killed_run)}, given=ORIGINAL)
    assert checkpoint is not None and method.name == "mas"
    assert (settings.method, settings.task_set, settings.num_rounds, settings.resume) == (
        "mas", "sdnkt", 5, str(killed_run))


def test_keys_that_cannot_change_the_results_are_applied_and_logged(killed_run: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="flwr"):
        settings, _, _ = preflight({"reply-timeout": 60, "round-retries": 5, "energy-intensity": 120.0},
                                   {"resume": str(killed_run)})
    assert (settings.reply_timeout, settings.round_retries, settings.energy_intensity) == (60.0, 5, 120.0)
    assert (settings.method, settings.task_set, settings.num_rounds) == ("mas", "sdnkt", 5)  # the checkpoint's
    line = next(r.getMessage() for r in caplog.records if "resuming" in r.getMessage())
    assert ("applied the given energy-intensity=120.0 (checkpoint: 0.0), reply-timeout=60.0 (checkpoint: 3600.0), "
            "round-retries=5 (checkpoint: 2)") in line
    assert f"written by mas-flower {mas_flower.__version__}" in line


def test_the_allowed_keys_are_run_config_keys_and_given_keys_follow_the_rule() -> None:
    known = set(load_settings({}).to_run_config())
    assert set(RESUME_MAY_CHANGE) <= known and "resume" not in RESUME_MAY_CHANGE
    settings = load_settings({}, {"num-rounds": 30, "lr": 0.2, "resume": "/x"})  # lr 0.2 is the default
    assert given_keys(settings) == {"num-rounds"}
    assert given_keys(settings, ["lr", "resume"]) == {"num-rounds", "lr"}


def test_invalid_settings_given_with_resume_say_that_the_checkpoints_are_kept(killed_run: Path) -> None:
    """num-rounds=6 with the default merge-rounds=14 is invalid before any comparison: the message says so
    and that a resume keeps the checkpoint's settings."""
    with pytest.raises(ValueError, match=r"merge-rounds=14 must be between 1 and num-rounds=6.*give only resume"):
        preflight({"num-rounds": 6}, {"resume": str(killed_run)})


def test_checkpoint_settings_of_another_version_are_named(killed_run: Path) -> None:
    payload = load_checkpoint(killed_run)
    payload["config"] = {k: v for k, v in payload["config"].items() if k != "lost-after"}
    payload["app_version"] = "0.0.7"
    given = load_settings({}, {"resume": str(killed_run)})
    with pytest.raises(CheckpointError, match=r"missing run-config key\(s\): lost-after.*mas-flower 0\.0\.7"):
        resume_settings(given, payload)


# Checkpoints this version cannot read: hand-made payloads --------------------------------------------

READS = f"this version (mas-flower {mas_flower.__version__}) reads checkpoint format(s) {CHECKPOINT_FORMAT}"


def _write(tmp_path: Path, payload: object) -> Path:
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    torch.save(payload, run_dir / CHECKPOINT_FILE)
    return run_dir


def test_a_checkpoint_without_a_format_is_refused(tmp_path: Path) -> None:
    """As written before formats were recorded: the same keys, no `format`, no `app_version`."""
    run_dir = _write(tmp_path, {"config": {"method": "mas"}, "method": None, "ledger": None, "outcomes": [],
                                "progress": None, "rng": {}})
    with pytest.raises(CheckpointError, match="records no format") as err:
        load_checkpoint(run_dir)
    assert READS in str(err.value)


def test_an_unknown_format_is_refused_naming_the_writer(tmp_path: Path) -> None:
    run_dir = _write(tmp_path, {"format": 99, "app_version": "7.1.0", "config": {}})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(run_dir)
    assert "written by mas-flower 7.1.0 in checkpoint format 99" in str(err.value) and READS in str(err.value)


def test_a_checkpoint_naming_a_module_that_is_gone_names_its_writer(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Today's case: "No module named 'server_app.runner'" from a checkpoint of before a rename."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "old_runner.py").write_text(
        "from dataclasses import dataclass\n\n@dataclass\nclass Progress:\n    next_round: int\n")
    monkeypatch.syspath_prepend(str(package))
    import old_runner  # noqa: PLC0415 - a module made for this test

    run_dir = _write(tmp_path, {"format": 2, "app_version": "0.0.9", "config": {},
                                "progress": old_runner.Progress(3)})
    monkeypatch.delitem(sys.modules, "old_runner")
    (package / "old_runner.py").unlink()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(run_dir)
    message = str(err.value)
    assert "cannot read checkpoint.pt (ModuleNotFoundError: No module named 'old_runner')" in message
    assert "written by mas-flower 0.0.9 in checkpoint format 2" in message and READS in message


def test_a_damaged_checkpoint_is_named(tmp_path: Path) -> None:
    run_dir = tmp_path / "damaged"
    run_dir.mkdir()
    (run_dir / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=re.escape("cannot read checkpoint.pt (")) as err:
        load_checkpoint(run_dir)
    assert "records no format" in str(err.value) and READS in str(err.value)
