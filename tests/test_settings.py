"""Run settings: one source of defaults, and clear errors for bad input before any work."""

from __future__ import annotations

import dataclasses

import pytest

from mas_flower.defaults import app_defaults, load_settings
from mas_flower.settings import Settings


def test_pyproject_holds_a_default_for_every_setting() -> None:
    keys = {k.replace("-", "_") for k in app_defaults()}
    assert keys == {f.name for f in dataclasses.fields(Settings)}


def test_defaults_are_valid_and_typed() -> None:
    s = load_settings({})
    assert s.method == "mas" and isinstance(s.lr, float) and isinstance(s.num_rounds, int)


@pytest.mark.parametrize(("override", "message"), [
    ({"task-set": "sdq"}, "'q'"),
    ({"splits": 6}, "splits=6"),
    ({"merge-rounds": 30, "num-rounds": 20}, "merge-rounds=30"),
    ({"method": "nope"}, "method='nope'"),
    ({"data-root": "relative/path"}, "data-root='relative/path'"),
    ({"lr": "fast"}, "'lr'"),
    ({"affinity-mode": "guess"}, "affinity-mode='guess'"),
    ({"lost-after": 0}, "lost-after=0 must be at least 1"),
    ({"test-coverage": "most"}, "test-coverage='most' must be one of all, any"),
    # values that cannot run, refused before any work (HOA would fail only after its pairs stage)
    ({"hoa-single-cost": 0}, "hoa-single-cost=0.0 must be in (0, 1]"),
    ({"hoa-single-cost": 1.5}, "hoa-single-cost=1.5 must be in (0, 1]"),
    ({"method": "hoa", "hoa-single-cost": -0.5}, "hoa-single-cost=-0.5 must be in (0, 1]"),
    ({"affinity-every": 0}, "affinity-every=0 must be at least 1"),
    ({"method": "tag", "affinity-every": -3}, "affinity-every=-3 must be at least 1"),
    ({"method": "fedavg", "affinity-rounds": -1}, "affinity-rounds=-1 must be at least 0"),
    ({"local-epochs": 0}, "local-epochs=0 must be at least 1"),
    ({"eval-every": 0}, "eval-every=0 must be at least 1"),
    ({"min-replies": 0}, "min-replies=0 must be between 1 and clients-per-round=4"),
    ({"min-replies": 5}, "min-replies=5 must be between 1 and clients-per-round=4"),
    ({"node-timeout": 0}, "node-timeout=0.0 must be positive"),
    ({"seed": -1}, "seed=-1 must be a non-negative integer"),
    ({"lr": 0}, "lr=0.0 must be positive"),
    ({"trim-beta": 0.5}, "trim-beta=0.5 must be in [0, 0.5)"),
    ({"beta-2": 1.0}, "beta-2=1.0 must be in [0, 1)"),
    ({"lr": float("nan")}, "lr=nan must be a finite number"),
    ({"node-timeout": float("inf")}, "node-timeout=inf must be a finite number"),
    ({"server-lr": float("nan")}, "server-lr=nan must be a finite number"),
    ({"fedprox-mu": float("-inf")}, "fedprox-mu=-inf must be a finite number"),
    ({"model": "nope"}, "model='nope' is not one of resnet18, tiny, tiny-fine, xception"),
    ({"image-size": 60}, "image-size=60: image size 60 does not fit model 'tiny'"),
    ({"model": "xception", "image-size": 72}, "image-size=72: image size 72 does not fit model 'xception'"),
    ({"run-name": "../elsewhere"}, "run-name='../elsewhere' must be a plain folder name"),
    # every rule names its own key and value (these once shared one message naming several keys)
    ({"round-retries": -1}, "round-retries=-1 must be non-negative"),
    ({"energy-intensity": -5}, "energy-intensity=-5.0 must be non-negative"),
    ({"gradnorm-alpha": -1}, "gradnorm-alpha=-1.0 must be non-negative"),
    ({"server-lr": -0.1}, "server-lr=-0.1 must be non-negative"),
    ({"tau": 0}, "tau=0.0 must be positive"),
    ({"task-set": "sdq"}, "task-set='sdq': unknown task letter(s) 'q'"),
])
def test_bad_settings_name_the_key(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match="invalid run config|run-config key") as err:
        load_settings({}, override)
    assert message in str(err.value)


@pytest.mark.parametrize(("override", "message"), [
    ({"lr": float("-inf")}, "lr=-inf must be a finite number"),
    ({"server-momentum": -0.5}, "server-momentum=-0.5 must be in [0, 1)"),
    ({"energy-intensity": float("nan")}, "energy-intensity=nan must be a finite number"),
    ({"image-size": 0}, "image-size=0 must be at least 1"),
])
def test_one_rule_one_message(override: dict, message: str) -> None:
    """A key's checks stop at its first failure: a value breaking two rules is not reported twice."""
    with pytest.raises(ValueError) as err:
        load_settings({}, override)
    assert str(err.value) == f"invalid run config: {message}"


def test_every_key_is_declared_with_group_meaning_and_default() -> None:
    from mas_flower.settings import DECLARED

    assert [d.key for d in DECLARED] == list(app_defaults())
    assert all(d.meaning and d.group.title for d in DECLARED)
    groups = [d.group for d in DECLARED]
    assert len({*groups}) == len([g for i, g in enumerate(groups) if i == 0 or g != groups[i - 1]])  # contiguous
    assert Settings() == load_settings({})  # the declared defaults are the defaults


def test_unknown_key_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown key 'num-round' \(did you mean 'num-rounds'\?\)"):
        load_settings({"num-round": 3})
    with pytest.raises(ValueError, match=r"unknown key 'num_rounds' \(did you mean 'num-rounds'\?\)"):
        load_settings({"num_rounds": 3})  # `flwr run` would reject it: keys are spelt with `-`


def test_learning_rate_schedule() -> None:
    s = load_settings({}, {"lr": 0.1, "num-rounds": 100})
    assert s.lr_at(0) == pytest.approx(0.1)
    assert s.lr_at(70) == pytest.approx(0.1 * 0.3 ** 0.9)


@pytest.mark.parametrize("override", [
    {"hoa-single-cost": 1.0}, {"method": "hoa", "hoa-single-cost": 0.5}, {"affinity-every": 1},
    {"method": "fedavg", "affinity-rounds": 0}, {"min-replies": 1}, {"min-replies": 4}, {"eval-every": 1},
    {"trim-beta": 0.0}, {"server-lr": 0.0}, {"image-size": 8}, {"model": "xception", "image-size": 16},
    {"reply-timeout": 0.0}, {"seed": 0}, {"run-name": "mas-sdk-seed0"},
])
def test_each_threshold_itself_is_accepted(override: dict) -> None:
    s = load_settings({}, override)
    assert all(getattr(s, k.replace("-", "_")) == v for k, v in override.items())


@pytest.mark.parametrize("module", ["mas_flower.settings", "mas_flower.defaults", "mas_flower.tasks"])
def test_configuration_modules_load_without_torch_or_flower(module: str) -> None:
    """Reading and checking a run config must not pay torch's (or Flower's) import: a fresh interpreter
    imports the module and reports which heavy packages came with it."""
    import subprocess
    import sys

    probe = f"import sys, {module}; print(sorted(m for m in ('torch', 'flwr', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {module} brought {out.strip()}"
