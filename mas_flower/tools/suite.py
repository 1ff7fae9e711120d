"""Benchmark suites: a YAML file naming task sets x methods x seeds, parsed and validated as a whole.

Everything is checked before the first run starts (hours of compute can hinge on a typo), and every
problem is reported at once, one line each, naming the file and the key. See `conf/` for examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mas_flower.defaults import app_defaults
from mas_flower.settings import Settings, did_you_mean, home
from mas_flower.tasks import parse_tasks

if TYPE_CHECKING:
    from mas_flower.methods.label import MethodLabel

TOP_KEYS = {"description", "task_sets", "methods", "seeds", "data", "output", "run_config", "nodes",
            "cpus_per_node", "gpus_per_node"}
REQUIRED_KEYS = ("task_sets", "methods", "seeds", "data")
SYNTHETIC_KEYS = {"buildings": 1, "views": 1, "size": 8, "seed": 0}  # key -> smallest allowed value
#: Run-config keys each run gets from the suite's own keys, so `run_config` may not set them.
SUITE_OWNED = {"method": "methods", "splits": "methods", "task-set": "task_sets", "seed": "seeds",
               "data-root": "data", "synthetic-buildings": "data", "synthetic-views": "data",
               "synthetic-size": "data", "output-dir": "output", "run-name": "(derived per run)",
               "resume": "(interrupted runs are redone)"}


class SuiteError(ValueError):
    """A suite that cannot run; the message lists every problem, one per line."""


@dataclass(frozen=True)
class RunSpec:
    method: MethodLabel
    task_set: str
    seed: int

    @property
    def name(self) -> str:
        """The run folder name, as the app names runs (without its timestamp): deterministic for resuming."""
        x = "" if self.method.splits is None else f"-x{self.method.splits}"
        server = "" if self.method.server_strategy is None else f"-{self.method.server_strategy}"
        return f"{self.method.method}{x}{server}-{self.task_set}-seed{self.seed}"


@dataclass(frozen=True)
class Suite:
    path: Path
    task_sets: list[str]
    methods: list[MethodLabel]
    seeds: list[int]
    output: Path
    data_root: Path | None = None
    synthetic: dict[str, int] | None = None
    run_config: dict[str, Any] = field(default_factory=dict)
    nodes: int = 1
    cpus_per_node: float = 1.0
    gpus_per_node: float = 0.0

    @property
    def runs_dir(self) -> Path:
        return self.output / "runs"

    @property
    def flwr_home(self) -> Path:
        """The suite's own Flower home: its managed SuperLink is recognisable (and stoppable) by this path."""
        return self.output / ".flwr"

    def synthetic_dir(self) -> Path:
        s = self.synthetic or {}
        return self.output / "data" / f"synthetic-b{s['buildings']}-v{s['views']}-s{s['size']}-seed{s['seed']}"

    def dataset_root(self) -> Path:
        return self.data_root if self.data_root is not None else self.synthetic_dir()

    def runs(self) -> list[RunSpec]:
        """Every run, task set by task set, seed by seed, methods in the suite's order."""
        return [RunSpec(m, ts, seed) for ts in self.task_sets for seed in self.seeds for m in self.methods]

    def run_config_for(self, run: RunSpec) -> dict[str, Any]:
        """The run config one `flwr run` gets (the app's defaults fill in the rest)."""
        config = dict(self.run_config)
        config.update({"method": run.method.method, "task-set": run.task_set, "seed": run.seed,
                       "data-root": str(self.dataset_root()), "output-dir": str(self.runs_dir),
                       "run-name": run.name})
        if run.method.splits is not None:
            config["splits"] = run.method.splits
        if run.method.server_strategy is not None:
            config["server-strategy"] = run.method.server_strategy
        return config


def default_output(path: Path) -> Path:
    """Where a suite without an `output` key writes: `$MAS_FLOWER_HOME/bench/<suite file name>`
    (`~/mas-flower/bench/...` when MAS_FLOWER_HOME is unset)."""
    return home() / "bench" / Path(path).stem


def load_suite(path: Path, check_data: bool = True, output: Path | None = None) -> Suite:
    """Parse and validate a suite file; raise SuiteError listing every problem.

    With `check_data`, also require a `data.root` to exist and hold enough buildings for `nodes`
    (a dry run skips this so a suite with a placeholder path can still be listed). The output folder
    is `output` when given (`mas-flower bench --output`, relative to the current folder), else the
    suite's `output` key, else `default_output(path)`.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SuiteError(f"{path}: suite file not found") from None
    except yaml.YAMLError as err:
        raise SuiteError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a suite is a YAML mapping (task_sets, methods, seeds, data, output, ...)")
    if output is not None:
        raw = {**raw, "output": str(Path(output).expanduser().resolve())}
    elif raw.get("output") is None:  # absent or empty
        raw = {**raw, "output": str(default_output(path))}
    checker = _Checker(path, raw)
    suite = checker.suite(check_data)
    if checker.problems:
        raise SuiteError("\n".join(f"{path}: {p}" for p in dict.fromkeys(checker.problems)))
    assert suite is not None
    return suite


class _Checker:
    """Collects problems key by key; `suite()` returns None when anything is wrong."""

    def __init__(self, path: Path, raw: dict[str, Any]) -> None:
        self.path, self.raw, self.problems = path, raw, []

    def bad(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def suite(self, check_data: bool) -> Suite | None:

        for key in sorted(set(self.raw) - TOP_KEYS):
            self.bad(key, f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")
        for key in REQUIRED_KEYS:
            if key not in self.raw:
                self.bad(key, "missing (required)")
        task_sets = self.task_sets()
        methods = self.methods(task_sets)
        seeds = self.int_list("seeds")
        output = self.abs_path("output", self.raw.get("output"))
        data_root, synthetic = self.data()
        run_config = self.run_config(methods, task_sets)
        effective = self.effective_config(run_config)
        nodes = self.nodes(effective, synthetic, data_root, check_data)
        cpus = self.number("cpus_per_node", 1.0, positive=True)
        gpus = self.number("gpus_per_node", 0.0, positive=False)
        if self.problems or output is None:
            return None
        return Suite(self.path, task_sets, methods, seeds, output, data_root, synthetic, run_config, nodes, cpus, gpus)

    def task_sets(self) -> list[str]:
        values = self.list_of("task_sets", str)
        for i, letters in enumerate(values):
            try:
                parse_tasks(letters)
            except ValueError as err:
                self.bad(f"task_sets[{i}]", str(err))
        self.no_duplicates("task_sets", values)
        return values

    def methods(self, task_sets: list[str]) -> list[MethodLabel]:
        from mas_flower.methods.label import MethodLabel  # imports the methods, and so torch: only when needed

        specs = []
        for i, text in enumerate(self.list_of("methods", str)):
            try:
                spec = MethodLabel.parse(text)
            except ValueError as err:
                self.bad(f"methods[{i}]", str(err))
                continue
            for letters in task_sets:
                if spec.splits is not None and spec.splits > len(letters):
                    self.bad(f"methods[{i}]", f"{text!r} asks for {spec.splits} groups but task set {letters!r} "
                             f"has only {len(letters)} tasks")
            specs.append(spec)
        self.no_duplicates("methods", [s.label for s in specs])
        return specs

    def int_list(self, key: str) -> list[int]:
        values = self.list_of(key, int)
        for i, value in enumerate(values):
            if value < 0:
                self.bad(f"{key}[{i}]", f"must be a non-negative integer, got {value}")
        self.no_duplicates(key, values)
        return values

    def list_of(self, key: str, kind: type) -> list[Any]:
        value = self.raw.get(key)
        if key not in self.raw:
            return []
        if not isinstance(value, list) or not value:
            self.bad(key, f"must be a non-empty list, got {value!r}")
            return []
        good = []
        for i, item in enumerate(value):
            if isinstance(item, kind) and not isinstance(item, bool):
                good.append(item)
            else:
                self.bad(f"{key}[{i}]", f"must be of type {kind.__name__}, got {item!r}")
        return good

    def no_duplicates(self, key: str, values: list[Any]) -> None:
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            self.bad(key, f"repeated: {', '.join(repeated)}")

    def abs_path(self, key: str, value: Any) -> Path | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.bad(key, f"must be a path, got {value!r}")
            return None
        path = Path(value).expanduser()  # `~/...` is anchored, not relative
        if not path.is_absolute():
            self.bad(key, f"{value!r} must be an absolute path or start with ~ (the Flower apps run in other folders)")
            return None
        return path

    def data(self) -> tuple[Path | None, dict[str, int] | None]:
        data = self.raw.get("data")
        if data is None:
            return None, None
        if not isinstance(data, dict) or len(data) != 1 or not set(data) <= {"root", "synthetic"}:
            self.bad("data", "must be {root: /abs/path} or {synthetic: {buildings, views, size, seed}}, "
                     f"got {data!r}")
            return None, None
        if "root" in data:
            return self.abs_path("data.root", data["root"]), None
        synth = data["synthetic"]
        if not isinstance(synth, dict):
            self.bad("data.synthetic", f"must be a mapping with {', '.join(SYNTHETIC_KEYS)}, got {synth!r}")
            return None, None
        for key in sorted(set(synth) - set(SYNTHETIC_KEYS)):
            self.bad(f"data.synthetic.{key}", f"unknown key (known: {', '.join(SYNTHETIC_KEYS)})")
        out = {}
        for key, least in SYNTHETIC_KEYS.items():
            value = synth.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                self.bad(f"data.synthetic.{key}", f"must be an integer >= {least}, got {value!r}")
            else:
                out[key] = value
        return None, out if len(out) == len(SYNTHETIC_KEYS) else None

    def run_config(self, methods: list[MethodLabel], task_sets: list[str]) -> dict[str, Any]:
        config = self.raw.get("run_config", {}) or {}
        if not isinstance(config, dict):
            self.bad("run_config", f"must be a mapping of run-config keys, got {config!r}")
            return {}
        defaults = app_defaults()
        good: dict[str, Any] = {}
        for key, value in config.items():
            where = f"run_config.{key}"
            if key in SUITE_OWNED:
                self.bad(where, f"is set per run by the suite (from `{SUITE_OWNED[key]}`); remove it here")
            elif key not in defaults:
                self.bad(where, f"not a run-config key of the app{did_you_mean(key, defaults)}; "
                         f"known: {', '.join(sorted(defaults))}")
            elif (typed := _as_kind(value, defaults[key])) is None:
                self.bad(where, f"expected {type(defaults[key]).__name__}, got {value!r}")
            else:
                good[key] = typed
        # Cross-key rules (merge-rounds <= num-rounds, ...) for the keys, methods and task sets that passed.
        base = {**defaults, **good, "data-root": "/", "output-dir": "/"}
        valid_sets = [ts for ts in task_sets if _parses(ts)]
        for spec in methods:
            for letters in valid_sets:
                if (spec.splits or 1) <= len(letters):
                    trial = {**base, "method": spec.method, "task-set": letters, "splits": spec.splits or 1}
                    self.cross_check(trial, f"{spec.label} on {letters}")
        return good

    def cross_check(self, config: dict[str, Any], what: str) -> None:
        try:
            Settings.from_run_config(config)
        except ValueError as err:
            for problem in str(err).removeprefix("invalid run config: ").split("; "):
                self.bad("run_config", f"{problem} (for {what})")

    def effective_config(self, run_config: dict[str, Any]) -> dict[str, Any]:
        return {**app_defaults(), **run_config}

    def nodes(self, config: dict[str, Any], synthetic: dict[str, int] | None, root: Path | None,
              check_data: bool) -> int:
        nodes = self.raw.get("nodes", synthetic["buildings"] if synthetic else None)
        if nodes is None:
            if "root" in (self.raw.get("data") or {}):
                self.bad("nodes", "missing: with data.root, say how many buildings (SuperNodes) to simulate")
            return 0
        if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
            self.bad("nodes", f"must be a positive integer, got {nodes!r}")
            return 0
        k = config["clients-per-round"]
        if isinstance(k, int) and nodes < k:
            self.bad("nodes", f"{nodes} simulated nodes cannot supply clients-per-round={k} clients each round")
        if synthetic and nodes > synthetic["buildings"]:
            self.bad("nodes", f"{nodes} nodes but data.synthetic.buildings={synthetic['buildings']} "
                     "(one building per node)")
        if root is not None and check_data:
            from mas_flower.data.layout import list_buildings

            try:
                found = len(list_buildings(root))
            except ValueError as err:
                self.bad("data.root", f"{err} (edit the suite's data.root; see `mas-flower check-data`)")
            else:
                if nodes > found:
                    self.bad("nodes", f"{nodes} nodes but data.root {root} holds only {found} buildings")
        return nodes

    def number(self, key: str, default: float, positive: bool) -> float:
        value = self.raw.get(key, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (value <= 0 if positive else value < 0):
            self.bad(key, f"must be a {'positive' if positive else 'non-negative'} number, got {value!r}")
            return default
        return float(value)


def _parses(letters: str) -> bool:
    try:
        parse_tasks(letters)
    except ValueError:
        return False
    return True


def _as_kind(value: Any, default: Any) -> Any:
    """A YAML value as the type of a run-config key whose default is `default`, or None if it does not fit.

    Ints pass for floats. So do float strings such as `1e-3`: YAML 1.1 (PyYAML) reads an exponent
    without a dot as a string, while TOML, and so `flwr run --run-config "lr=1e-3"`, reads a float.
    """
    if isinstance(default, bool) or isinstance(value, bool):
        return value if isinstance(value, bool) and isinstance(default, bool) else None
    if isinstance(default, float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return None
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
    return value if isinstance(value, type(default)) else None
