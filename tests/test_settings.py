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
])
def test_bad_settings_name_the_key(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match="invalid run config|run-config key") as err:
        load_settings({}, override)
    assert message in str(err.value)


def test_unknown_key_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown key 'num-round' \(did you mean 'num-rounds'\?\)"):
        load_settings({"num-round": 3})
    with pytest.raises(ValueError, match=r"unknown key 'num_rounds' \(did you mean 'num-rounds'\?\)"):
        load_settings({"num_rounds": 3})  # `flwr run` would reject it: keys are spelt with `-`


def test_learning_rate_schedule() -> None:
    s = load_settings({}, {"lr": 0.1, "num-rounds": 100})
    assert s.lr_at(0) == pytest.approx(0.1)
    assert s.lr_at(70) == pytest.approx(0.1 * 0.3 ** 0.9)
