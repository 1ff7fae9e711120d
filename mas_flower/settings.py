"""Run settings: the flat run config of `flwr run` turned into one validated, typed object.

Defaults live only in `mas_flower.defaults` (mirrored in `pyproject.toml` for Flower); this module only
types and checks them, so that bad input fails before any training with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mas_flower.tasks import parse_tasks

#: `precision` values: `auto` is bf16 autocast on a GPU that supports it, fp32 otherwise.
PRECISIONS = ("auto", "fp32", "bf16")
#: `affinity-mode` values: the exact lookahead (Fifty et al., TAG) or its first-order approximation.
AFFINITY_MODES = ("exact", "first_order")
#: `test-coverage` values: the final test covers `all` buildings holding test data, or `any` of them.
TEST_COVERAGE = ("all", "any")


@dataclass(frozen=True)
class Settings:
    """Everything a run needs, named as in the run config with `-` replaced by `_`."""

    method: str
    task_set: str
    splits: int
    num_rounds: int
    merge_rounds: int
    affinity_rounds: int
    affinity_every: int
    local_epochs: int
    clients_per_round: int
    batch_size: int
    lr: float
    image_size: int
    model: str
    data_root: str
    output_dir: str
    seed: int
    affinity_mode: str
    affinity_first_epoch_only: bool
    fedprox_mu: float
    gradnorm_alpha: float
    synthetic_buildings: int
    synthetic_views: int
    synthetic_size: int
    eval_batch_size: int
    run_name: str
    resume: str
    min_replies: int
    round_retries: int
    reply_timeout: float
    node_timeout: float
    energy_country: str
    energy_intensity: float
    precision: str
    #: Flower strategy aggregating each federation (`mas_flower.strategy.aggregators`) and its hyperparameters.
    server_strategy: str
    server_lr: float
    server_momentum: float
    beta_1: float
    beta_2: float
    tau: float
    trim_beta: float
    bn_statistics: str
    #: Validate every this many rounds (and always in a stage's last round).
    eval_every: int
    #: Nodes that validate: a fixed seeded sample of this many (0: every node); the final test covers every node.
    validation_nodes: int
    #: A building whose node fails this many rounds in a row is reported lost and no longer sampled.
    lost_after: int
    #: Which buildings holding test data the final test must cover: `all` of them, or `any` (at least one).
    test_coverage: str
    #: MAS's split stage: `continue` the run's lr schedule, or `restart` it at `lr` over R − R0 rounds.
    split_schedule: str
    #: HOA's price of a single-task network against the budget of x networks (Standley's code: 0.5).
    hoa_single_cost: float

    @classmethod
    def from_run_config(cls, config: dict[str, Any]) -> Settings:
        """Build from a flat `key-name -> value` mapping; unknown or missing keys raise, naming them."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}  # keys are spelt with `-` only
        values: dict[str, Any] = {}
        unknown = []
        for key, value in config.items():
            if key not in known:
                unknown.append(f"unknown key {key!r}{did_you_mean(key, known)}")
                continue
            values[known[key].name] = _coerce(key, value, known[key].type)
        if unknown:
            raise ValueError("invalid run config: " + "; ".join(sorted(unknown)))
        missing = [f.name.replace("_", "-") for f in fields(cls)
                   if f.name not in values and f.default is dataclasses.MISSING]
        if missing:
            raise ValueError(f"missing run-config key(s): {', '.join(missing)}")
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject impossible settings before any work, one clear message per problem."""
        from mas_flower.methods import list_methods, method_class  # the method's own checks

        problems: list[str] = [f"{f.name.replace('_', '-')}={getattr(self, f.name)} must be a finite number"
                               for f in fields(self) if f.type == "float" and not math.isfinite(getattr(self, f.name))]
        try:
            parse_tasks(self.task_set)
        except ValueError as err:
            problems.append(f"task-set: {err}")
        problems += _model_problems(self.model, self.image_size)
        if self.run_name in (".", "..") or any(sep in self.run_name for sep in "/\\"):
            problems.append(f"run-name={self.run_name!r} must be a plain folder name (no path separators)")
        if self.method not in list_methods():
            problems.append(f"method={self.method!r} is not one of {', '.join(list_methods())}")
        else:
            problems += method_class(self.method).check(self)
        for key in ("num_rounds", "local_epochs", "clients_per_round", "batch_size", "image_size",
                    "eval_batch_size", "synthetic_buildings", "synthetic_views", "synthetic_size"):
            if getattr(self, key) < 1:
                problems.append(f"{key.replace('_', '-')}={getattr(self, key)} must be at least 1")
        if self.affinity_rounds < 0:
            problems.append(f"affinity-rounds={self.affinity_rounds} must be at least 0")
        if self.affinity_every < 1:
            problems.append(f"affinity-every={self.affinity_every} must be at least 1 (the lookahead runs every ρ-th "
                            "local batch)")
        if self.precision not in PRECISIONS:
            problems.append(f"precision={self.precision!r} must be one of {', '.join(PRECISIONS)}")
        if self.affinity_mode not in AFFINITY_MODES:
            problems.append(f"affinity-mode={self.affinity_mode!r} must be one of {', '.join(AFFINITY_MODES)}")
        if self.min_replies < 1 or self.min_replies > self.clients_per_round:
            problems.append(f"min-replies={self.min_replies} must be between 1 and clients-per-round="
                            f"{self.clients_per_round}")
        if self.round_retries < 0 or self.reply_timeout < 0 or self.energy_intensity < 0:
            problems.append("round-retries, reply-timeout and energy-intensity must be non-negative")
        if self.lost_after < 1:
            problems.append(f"lost-after={self.lost_after} must be at least 1")
        if self.test_coverage not in TEST_COVERAGE:
            problems.append(f"test-coverage={self.test_coverage!r} must be one of {', '.join(TEST_COVERAGE)}")
        if self.node_timeout <= 0:
            problems.append(f"node-timeout={self.node_timeout} must be positive")
        if self.resume and not Path(self.resume).is_absolute():
            problems.append(f"resume={self.resume!r} must be the absolute path of a run folder")
        if self.seed < 0:
            problems.append(f"seed={self.seed} must be a non-negative integer")
        problems.extend(_energy_problems(self.energy_country, self.energy_intensity))
        if self.lr <= 0:
            problems.append(f"lr={self.lr} must be positive")
        if self.fedprox_mu < 0 or self.gradnorm_alpha < 0:
            problems.append("fedprox-mu and gradnorm-alpha must be non-negative")
        if self.data_root and not Path(self.data_root).is_absolute():
            problems.append(f"data-root={self.data_root!r} must be an absolute path (the app runs elsewhere)")
        if self.output_dir and not Path(self.output_dir).is_absolute():
            problems.append(f"output-dir={self.output_dir!r} must be an absolute path (the app runs elsewhere)")
        if self.split_schedule not in ("continue", "restart"):
            problems.append(f"split-schedule={self.split_schedule!r} must be 'continue' or 'restart'")
        if not 0 < self.hoa_single_cost <= 1:
            problems.append(f"hoa-single-cost={self.hoa_single_cost} must be in (0, 1]")
        problems += self._server_problems()
        if problems:
            raise ValueError("invalid run config: " + "; ".join(problems))

    def _server_problems(self) -> list[str]:
        from mas_flower.strategy.aggregators import check_server_strategy

        problems = []
        try:
            check_server_strategy(self.server_strategy)
        except ValueError as err:
            problems.append(str(err))
        if self.server_lr < 0 or self.server_momentum < 0 or self.tau <= 0:
            problems.append("server-lr and server-momentum must be non-negative, tau positive")
        for key in ("server_momentum", "beta_1", "beta_2"):
            if not 0 <= getattr(self, key) < 1:
                problems.append(f"{key.replace('_', '-')}={getattr(self, key)} must be in [0, 1)")
        if self.bn_statistics not in ("average", "strategy"):
            problems.append(f"bn-statistics={self.bn_statistics!r} is not 'average' or 'strategy'")
        if not 0 <= self.trim_beta < 0.5:
            problems.append(f"trim-beta={self.trim_beta} must be in [0, 0.5)")
        if self.eval_every < 1:
            problems.append(f"eval-every={self.eval_every} must be at least 1")
        if self.validation_nodes < 0:
            problems.append(f"validation-nodes={self.validation_nodes} must be 0 (every node validates) or a number "
                            "of nodes >= 1")
        return problems

    def lr_at(self, round_index: int, total: int | None = None) -> float:
        """Learning rate of a round (0-based) under lr·(1 − r/R)^0.9."""
        total = total or self.num_rounds
        return self.lr * (1.0 - round_index / total) ** 0.9

    def to_run_config(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}


def _model_problems(model: str, image_size: int) -> list[str]:
    """Whether the model is registered and the image size a multiple of its total stride."""
    from mas_flower.models.registry import check_image_size, list_models

    if model not in list_models():
        return [f"model={model!r} is not one of {', '.join(list_models())}"]
    try:
        check_image_size(model, image_size)
    except ValueError as err:
        return [] if image_size < 1 else [f"image-size={image_size}: {err}"]  # < 1: said elsewhere
    return []


def _energy_problems(country: str, intensity: float) -> list[str]:
    """Whether carbontracker can price the run's energy: a fixed energy-intensity, or a bundled country."""
    from mas_flower.energy import resolve_intensity  # reads carbontracker's table, imports no tracker

    try:
        resolve_intensity(country or None, intensity or None)
    except ValueError as err:
        reason = str(err).replace("intensity_g_per_kwh", "energy-intensity")
        if intensity:
            return [] if intensity < 0 else [f"energy-intensity={intensity!r}: {reason}"]  # < 0: said elsewhere
        hint = "" if "energy-intensity" in reason else "; or set energy-intensity=<gCO2eq/kWh>"
        return [f"energy-country={country!r}: {reason}{hint}"]
    return []


def home() -> Path:
    """Where default data and outputs go: `$MAS_FLOWER_HOME`, else `~/mas-flower` (never the app folder)."""
    return Path(os.environ.get("MAS_FLOWER_HOME", Path.home() / "mas-flower")).expanduser().resolve()


def did_you_mean(key: Any, known: Iterable[str]) -> str:
    """` (did you mean 'num-rounds'?)` for the known key that `key` resembles, else ``.

    A key that differs only in `_` versus `-` wins; otherwise the closest spelling by `difflib`
    (ratio >= 0.8, e.g. `num-round`).
    """
    known = list(known)
    wanted = str(key).replace("_", "-")
    close = [k for k in known if k.replace("_", "-") == wanted] or difflib.get_close_matches(wanted, known, 1, 0.8)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    """Run-config values arrive as TOML/CLI scalars; accept ints for floats and check the rest."""
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind == "str":
        return str(value)
    raise ValueError(f"run-config key {key!r}: expected {kind}, got {value!r}")
