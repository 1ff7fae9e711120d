"""Run settings: the flat run config of `flwr run` turned into one validated, typed object.

Every run-config key is declared once, on `Settings`: its type, default, one line of meaning and its
checks side by side, grouped as `mas-flower config` lists them. `mas_flower.defaults` derives the
defaults table from these declarations (mirrored in `pyproject.toml` for Flower), so that bad input
fails before any training with a message naming the key and value. Imports neither torch nor Flower:
checks that need a registry import it when they run.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from mas_flower.tasks import parse_tasks

#: `precision` values: `auto` is bf16 autocast on a GPU that supports it, fp32 otherwise.
PRECISIONS = ("auto", "fp32", "bf16")
#: `affinity-mode` values: the exact lookahead (Fifty et al., TAG) or its first-order approximation.
AFFINITY_MODES = ("exact", "first_order")
#: `test-coverage` values: the final test covers `all` buildings holding test data, or `any` of them.
TEST_COVERAGE = ("all", "any")

#: One rule of one key: (key as spelt in the run config, its value, all settings) -> the whole problem
#: message naming key and value, or None when the value passes. The settings let a rule read the keys it
#: depends on (min-replies against clients-per-round).
Check = Callable[[str, Any, "Settings"], "str | None"]
T = TypeVar("T")


def rule(passes: Callable[[Any], bool], reason: str) -> Check:
    """A check on the value alone: `key=value <reason>` unless `passes(value)`."""
    return lambda key, value, _: None if passes(value) else f"{key}={value!r} {reason}"


def at_least(low: int, why: str = "") -> Check:
    return rule(lambda v: v >= low, f"must be at least {low}" + (f" ({why})" if why else ""))


def one_of(choices: tuple[str, ...]) -> Check:
    return rule(lambda v: v in choices, f"must be one of {', '.join(choices)}")


def within(low: float, high: float, closed: str = "[)") -> Check:
    """`low <= value < high` for "[)", `low < value <= high` for "(]", ...; the message writes the interval."""
    lo_ok = (lambda v: low <= v) if closed[0] == "[" else (lambda v: low < v)
    hi_ok = (lambda v: v <= high) if closed[1] == "]" else (lambda v: v < high)
    return rule(lambda v: lo_ok(v) and hi_ok(v), f"must be in {closed[0]}{low:g}, {high:g}{closed[1]}")


positive = rule(lambda v: v > 0, "must be positive")
non_negative = rule(lambda v: v >= 0, "must be non-negative")
absolute_or_empty = rule(lambda v: not v or Path(v).is_absolute(), "must be an absolute path (the app runs elsewhere)")


@dataclass(frozen=True)
class Group:
    """A heading of the run config: `mas-flower config --format markdown` and docs/configuration.md list
    the keys under it, in declaration order."""

    title: str

    def key(self, default: T, meaning: str, *checks: Check) -> T:
        """One run-config key of this group: default (a TOML scalar), one line of meaning, and its checks,
        run in order until one fails (so a later check may assume the earlier ones passed). A float key
        is checked to be finite first, whatever its checks."""
        return field(default=default, metadata={"group": self, "meaning": meaning, "checks": checks})


TRAINING = Group("Training")
AFFINITY = Group("Affinity")
SERVER = Group("Server strategy")
EVALUATION = Group("Evaluation")
FAULTS = Group("Faults and membership")
ENERGY = Group("Energy")
SYNTHETIC = Group("Synthetic data")
OUTPUTS = Group("Data and outputs")


# Checks that read a registry or another key; imported lazily so that reading settings stays light.

def _known_method(key: str, value: str, _: Settings) -> str | None:
    from mas_flower.methods import list_methods

    return None if value in list_methods() else f"{key}={value!r} is not one of {', '.join(list_methods())}"


def _task_letters(key: str, value: str, _: Settings) -> str | None:
    try:
        parse_tasks(value)
    except ValueError as err:
        return f"{key}={value!r}: {err}"
    return None


def _known_model(key: str, value: str, _: Settings) -> str | None:
    from mas_flower.models.registry import list_models

    return None if value in list_models() else f"{key}={value!r} is not one of {', '.join(list_models())}"


def _fits_model(key: str, value: int, s: Settings) -> str | None:
    """The image side is a multiple of the model's total stride (an unknown model is `model`'s problem)."""
    from mas_flower.models.registry import check_image_size, list_models

    if s.model not in list_models():
        return None
    try:
        check_image_size(s.model, value)
    except ValueError as err:
        return f"{key}={value}: {err}"
    return None


def _at_most_sampled(key: str, value: int, s: Settings) -> str | None:
    if 1 <= value <= s.clients_per_round:
        return None
    return f"{key}={value} must be between 1 and clients-per-round={s.clients_per_round}"


def _known_server_strategy(key: str, value: str, _: Settings) -> str | None:
    from mas_flower.strategy.aggregators import check_server_strategy  # the one check of a strategy's name

    try:
        check_server_strategy(value)
    except ValueError as err:
        return str(err)
    return None


def _priced_country(key: str, value: str, s: Settings) -> str | None:
    """Carbontracker bundles an intensity for the country; only asked when energy-intensity is 0 (unset)."""
    from mas_flower.energy import resolve_intensity  # reads carbontracker's table, imports no tracker

    if s.energy_intensity:
        return None
    try:
        resolve_intensity(value or None, None)
    except ValueError as err:
        reason = str(err).replace("intensity_g_per_kwh", "energy-intensity")
        hint = "" if "energy-intensity" in reason else "; or set energy-intensity=<gCO2eq/kWh>"
        return f"{key}={value!r}: {reason}{hint}"
    return None


_plain_name = rule(lambda v: v not in (".", "..") and not any(sep in v for sep in "/\\"),
                   "must be a plain folder name (no path separators)")
_run_folder = rule(lambda v: not v or Path(v).is_absolute(), "must be the absolute path of a run folder")


@dataclass(frozen=True)
class Settings:
    """Everything a run needs, named as in the run config with `-` replaced by `_`, declared once here:
    `Group.key(default, meaning, *checks)`. Code reads the flat attributes (`settings.lr`)."""

    # -- Training: what each network learns, and how -------------------------------------------------------------
    method: str = TRAINING.key(
        "mas", "mas, fedavg, fedprox, gradnorm, one-by-one, hoa, tag, oracle or pairs (mas_flower/methods/)",
        _known_method)  # the method's own rules (splits, merge-rounds, ...) are its `check`, see `validate`
    task_set: str = TRAINING.key("sdnkt", "task letters trained together, e.g. sdnkt", _task_letters)
    splits: int = TRAINING.key(2, "number of groups x for mas, hoa, tag and oracle")
    num_rounds: int = TRAINING.key(
        20, "R, all rounds of the run (HOA and TAG retrain their groups for another R)", at_least(1))
    merge_rounds: int = TRAINING.key(14, "R0, rounds of the merged (all-in-one) network before MAS splits")
    split_schedule: str = TRAINING.key(
        "continue", "MAS's split stage: continue the lr schedule, or restart it at lr over R − R0 rounds",
        one_of(("continue", "restart")))
    hoa_single_cost: float = TRAINING.key(
        1.0, "price of a single-task network against HOA's budget of x networks (Standley: 0.5)",
        within(0, 1, "(]"))
    local_epochs: int = TRAINING.key(2, "E, local epochs per round", at_least(1))
    clients_per_round: int = TRAINING.key(
        4, "K, nodes sampled each round (at most the number of nodes)", at_least(1))
    batch_size: int = TRAINING.key(16, "local training batch size", at_least(1))
    lr: float = TRAINING.key(0.2, "base learning rate; round r uses lr·(1 − r/R)^0.9", positive)
    model: str = TRAINING.key("tiny", "tiny (CPU), xception (the paper's network) or resnet18", _known_model)
    image_size: int = TRAINING.key(
        32, "input side in pixels (a multiple of the model's stride)", at_least(1), _fits_model)
    precision: str = TRAINING.key(
        "auto", "auto (bf16 autocast on CUDA that supports it, else float32), fp32 or bf16", one_of(PRECISIONS))
    fedprox_mu: float = TRAINING.key(0.004, "FedProx's proximal weight μ", non_negative)
    gradnorm_alpha: float = TRAINING.key(1.5, "GradNorm's asymmetry α", non_negative)
    seed: int = TRAINING.key(0, "seeds initialisation, client sampling and local shuffling",
                             rule(lambda v: v >= 0, "must be a non-negative integer"))

    # -- Affinity: when and how the lookahead measures it --------------------------------------------------------
    affinity_rounds: int = AFFINITY.key(5, "affinities are measured in the first this many rounds", at_least(0))
    affinity_every: int = AFFINITY.key(
        2, "ρ: the affinity lookahead runs every ρ-th local batch",
        at_least(1, "the lookahead runs every ρ-th local batch"))
    affinity_mode: str = AFFINITY.key(
        "exact", "exact (the paper's lookahead) or first_order (gradient inner products)", one_of(AFFINITY_MODES))
    affinity_first_epoch_only: bool = AFFINITY.key(
        False, "measure affinities only in a round's first local epoch")

    # -- Server strategy: the Flower strategy aggregating every network, and its hyperparameters -----------------
    server_strategy: str = SERVER.key(
        "fedavg", "Flower strategy aggregating every network: fedavg, fedprox, fedadam, fedyogi, fedadagrad, "
        "fedavgm, fedmedian, fedtrimmedavg", _known_server_strategy)
    server_lr: float = SERVER.key(
        0.0, "server learning rate of fedadam/fedyogi/fedadagrad/fedavgm (0: 0.01 for fedadam and fedadagrad, "
        "as measured; else that strategy's Flower default)", non_negative)
    server_momentum: float = SERVER.key(0.0, "FedAvgM's server momentum", within(0, 1))
    beta_1: float = SERVER.key(0.9, "first-moment decay of fedadam/fedyogi", within(0, 1))
    beta_2: float = SERVER.key(0.99, "second-moment decay of fedadam/fedyogi", within(0, 1))
    tau: float = SERVER.key(0.001, "adaptivity τ of fedadam/fedyogi/fedadagrad", positive)
    trim_beta: float = SERVER.key(0.2, "fraction cut at each end by fedtrimmedavg", within(0, 0.5))
    bn_statistics: str = SERVER.key(
        "average", "'average': BatchNorm running statistics are the clients' example-weighted mean whatever the "
        "server strategy; 'strategy': aggregated like parameters", one_of(("average", "strategy")))

    # -- Evaluation: how often, on which nodes -------------------------------------------------------------------
    eval_batch_size: int = EVALUATION.key(64, "batch size of validation and test", at_least(1))
    eval_every: int = EVALUATION.key(
        1, "validate every this many rounds (and always in a stage's last round)", at_least(1))
    validation_nodes: int = EVALUATION.key(
        100, "nodes that validate: a fixed sample of this many, drawn once from seed and redrawn only to replace "
        "nodes that leave (a larger federation's validation loss is then an estimate, labelled as one); "
        "0: every node. The final test covers every node",
        rule(lambda v: v >= 0, "must be 0 (every node validates) or a number of nodes >= 1"))

    # -- Faults and membership: late, missing and lost nodes -----------------------------------------------------
    min_replies: int = FAULTS.key(1, "fewest valid replies a round needs per network", _at_most_sampled)
    round_retries: int = FAULTS.key(2, "how often a round short of replies is retried", non_negative)
    reply_timeout: float = FAULTS.key(3600.0, "seconds to wait for the nodes' replies in a round", non_negative)
    node_timeout: float = FAULTS.key(300.0, "seconds to wait for enough nodes to connect", positive)
    lost_after: int = FAULTS.key(
        3, "a building whose node fails this many training exchanges in a row is lost", at_least(1))
    test_coverage: str = FAULTS.key(
        "all", "the final test must cover all buildings holding test data, or any of them", one_of(TEST_COVERAGE))

    # -- Energy: how the run's energy is priced in CO2 -----------------------------------------------------------
    energy_country: str = ENERGY.key(
        "GB", "ISO country code whose carbon intensity prices the energy", _priced_country)
    energy_intensity: float = ENERGY.key(
        0.0, "fixed carbon intensity in gCO2eq/kWh (> 0 wins over energy-country)", non_negative)

    # -- Synthetic data: the built-in federation used when data-root is empty ------------------------------------
    synthetic_buildings: int = SYNTHETIC.key(
        6, "buildings of the synthetic federation used when data-root is empty", at_least(1))
    synthetic_views: int = SYNTHETIC.key(96, "views per building of the synthetic federation", at_least(1))
    synthetic_size: int = SYNTHETIC.key(32, "image side in pixels of the synthetic federation", at_least(1))

    # -- Data and outputs: where data is read and results go -----------------------------------------------------
    data_root: str = OUTPUTS.key(
        "", "absolute path of a Taskonomy-layout dataset; empty: the built-in synthetic federation",
        absolute_or_empty)
    output_dir: str = OUTPUTS.key(
        "", "absolute folder for run folders; empty: $MAS_FLOWER_HOME/outputs", absolute_or_empty)
    run_name: str = OUTPUTS.key(
        "", "a fixed run folder name; empty: <method>[-x<splits>][@<server strategy>]-<task set>-seed<seed>-<time>",
        _plain_name)
    resume: str = OUTPUTS.key(
        "", "absolute path of a stopped or killed run's folder: continue it from its checkpoint", _run_folder)

    @classmethod
    def from_run_config(cls, config: dict[str, Any]) -> Settings:
        """Build from a flat `key-name -> value` mapping; unknown or missing keys raise, naming them.

        Every key must be given (`mas_flower.defaults.load_settings` fills in the defaults), so that an old
        checkpoint's config lacking a newer key is refused rather than silently completed."""
        known = {run_config_key(f.name): f for f in fields(cls)}
        values: dict[str, Any] = {}
        unknown = []
        for key, value in config.items():
            if key not in known:
                unknown.append(f"unknown key {key!r}{did_you_mean(key, known)}")
                continue
            values[known[key].name] = _coerce(key, value, known[key].type)
        if unknown:
            raise ValueError("invalid run config: " + "; ".join(sorted(unknown)))
        missing = [key for key, f in known.items() if f.name not in values]
        if missing:
            raise ValueError(f"missing run-config key(s): {', '.join(missing)}")
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject impossible settings before any work, one clear message per problem: each key's declared
        checks (the first that fails), then the method's own rules across keys."""
        from mas_flower.methods import list_methods, method_class

        problems = [p for f in fields(self) if (p := _key_problem(self, f.name))]
        if self.method in list_methods():
            problems += method_class(self.method).check(self)
        if problems:
            raise ValueError("invalid run config: " + "; ".join(problems))

    def lr_at(self, round_index: int, total: int | None = None) -> float:
        """Learning rate of a round (0-based) under lr·(1 − r/R)^0.9."""
        total = total or self.num_rounds
        return self.lr * (1.0 - round_index / total) ** 0.9

    def to_run_config(self) -> dict[str, Any]:
        return {run_config_key(f.name): getattr(self, f.name) for f in fields(self)}


def run_config_key(name: str) -> str:
    """`num_rounds` -> `num-rounds`: run-config keys are spelt with `-` only."""
    return name.replace("_", "-")


def _key_problem(settings: Settings, name: str) -> str | None:
    """The first declared check of one key that fails (finiteness first for a float), or None."""
    f, key, value = _FIELDS[name], run_config_key(name), getattr(settings, name)
    if f.type == "float" and not math.isfinite(value):
        return f"{key}={value!r} must be a finite number"
    for check in f.metadata["checks"]:
        if problem := check(key, value, settings):
            return problem
    return None


_FIELDS = {f.name: f for f in fields(Settings)}


class Declared(NamedTuple):
    """One run-config key as `Settings` declares it (what `mas_flower.defaults` tabulates)."""

    key: str
    default: Any
    meaning: str
    group: Group


#: Every run-config key, in declaration order (grouped).
DECLARED: tuple[Declared, ...] = tuple(
    Declared(run_config_key(f.name), f.default, f.metadata["meaning"], f.metadata["group"]) for f in fields(Settings))


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
