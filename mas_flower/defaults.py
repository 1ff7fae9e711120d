"""The app's run-config defaults, in code: the one place they are written.

`pyproject.toml`'s `[tool.flwr.app.config]` must list the same keys and values (Flower reads it there
for `flwr run`; `tests/test_package.py` keeps the two equal). Code never reads `pyproject.toml`, so
the package works the same from a wheel as from a checkout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mas_flower.settings import Settings, home

#: Run-config key -> default value (TOML scalar types: str, int, float, bool).
RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "method": "mas",
    "task-set": "sdnkt",
    "splits": 2,
    "num-rounds": 20,
    "merge-rounds": 14,
    "affinity-rounds": 5,
    "affinity-every": 2,
    "local-epochs": 2,
    "clients-per-round": 4,
    "batch-size": 16,
    "lr": 0.2,
    "image-size": 32,
    "model": "tiny",
    "data-root": "",
    "output-dir": "",
    "seed": 0,
    "run-name": "",
    "affinity-mode": "exact",
    "affinity-first-epoch-only": False,
    "fedprox-mu": 0.004,
    "gradnorm-alpha": 1.5,
    "eval-batch-size": 64,
    "synthetic-buildings": 6,
    "synthetic-views": 96,
    "synthetic-size": 32,
    "resume": "",
    "min-replies": 1,
    "round-retries": 2,
    "reply-timeout": 3600.0,
    "node-timeout": 300.0,
    "energy-country": "GB",
    "energy-intensity": 0.0,
    "precision": "auto",
    "server-strategy": "fedavg",
    "server-lr": 0.0,
    "server-momentum": 0.0,
    "beta-1": 0.9,
    "beta-2": 0.99,
    "tau": 0.001,
    "trim-beta": 0.2,
    "bn-statistics": "average",
    "eval-every": 1,
    "validation-nodes": 100,
    "lost-after": 3,
    "test-coverage": "all",
    "split-schedule": "continue",
    "hoa-single-cost": 1.0,
}


#: Run-config key -> what it means, one line each (`mas-flower config` prints them with the defaults).
RUN_CONFIG_HELP: dict[str, str] = {
    "method": "mas, fedavg, fedprox, gradnorm, one-by-one, hoa, tag, oracle or pairs (mas_flower/methods/)",
    "task-set": "task letters trained together, e.g. sdnkt",
    "splits": "number of groups x for mas, hoa, tag and oracle",
    "num-rounds": "R, all rounds of the run (HOA and TAG retrain their groups for another R)",
    "merge-rounds": "R0, rounds of the merged (all-in-one) network before MAS splits",
    "affinity-rounds": "affinities are measured in the first this many rounds",
    "affinity-every": "ρ: the affinity lookahead runs every ρ-th local batch",
    "local-epochs": "E, local epochs per round",
    "clients-per-round": "K, nodes sampled each round (at most the number of nodes)",
    "batch-size": "local training batch size",
    "lr": "base learning rate; round r uses lr·(1 − r/R)^0.9",
    "image-size": "input side in pixels (a multiple of the model's stride)",
    "model": "tiny (CPU), xception (the paper's network) or resnet18",
    "data-root": "absolute path of a Taskonomy-layout dataset; empty: the built-in synthetic federation",
    "output-dir": "absolute folder for run folders; empty: $MAS_FLOWER_HOME/outputs",
    "seed": "seeds initialisation, client sampling and local shuffling",
    "run-name": "a fixed run folder name; empty: <method>[-x<splits>][@<server strategy>]-<task set>-seed<seed>-<time>",
    "affinity-mode": "exact (the paper's lookahead) or first_order (gradient inner products)",
    "affinity-first-epoch-only": "measure affinities only in a round's first local epoch",
    "fedprox-mu": "FedProx's proximal weight μ",
    "gradnorm-alpha": "GradNorm's asymmetry α",
    "eval-batch-size": "batch size of validation and test",
    "synthetic-buildings": "buildings of the synthetic federation used when data-root is empty",
    "synthetic-views": "views per building of the synthetic federation",
    "synthetic-size": "image side in pixels of the synthetic federation",
    "resume": "absolute path of a stopped or killed run's folder: continue it from its checkpoint",
    "min-replies": "fewest valid replies a round needs per network",
    "round-retries": "how often a round short of replies is retried",
    "reply-timeout": "seconds to wait for the nodes' replies in a round",
    "node-timeout": "seconds to wait for enough nodes to connect",
    "energy-country": "ISO country code whose carbon intensity prices the energy",
    "energy-intensity": "fixed carbon intensity in gCO2eq/kWh (> 0 wins over energy-country)",
    "precision": "auto (bf16 autocast on CUDA that supports it, else float32), fp32 or bf16",
    "server-strategy": "Flower strategy aggregating every network: fedavg, fedprox, fedadam, fedyogi, fedadagrad, "
                       "fedavgm, fedmedian, fedtrimmedavg",
    "server-lr": "server learning rate of fedadam/fedyogi/fedadagrad/fedavgm (0: 0.01 for fedadam and fedadagrad, "
                 "as measured; else that strategy's Flower default)",
    "server-momentum": "FedAvgM's server momentum",
    "beta-1": "first-moment decay of fedadam/fedyogi",
    "beta-2": "second-moment decay of fedadam/fedyogi",
    "tau": "adaptivity τ of fedadam/fedyogi/fedadagrad",
    "trim-beta": "fraction cut at each end by fedtrimmedavg",
    "bn-statistics": ("'average': BatchNorm running statistics are the clients' example-weighted mean whatever "
                      "the server strategy; 'strategy': aggregated like parameters"),
    "eval-every": "validate every this many rounds (and always in a stage's last round)",
    "validation-nodes": ("nodes that validate: a fixed sample of this many, drawn once from seed and redrawn only to "
                         "replace nodes that leave (a larger federation's validation loss is then an estimate, "
                         "labelled as one); 0: every node. The final test covers every node"),
    "lost-after": "a building whose node fails this many training exchanges in a row is lost",
    "test-coverage": "the final test must cover all buildings holding test data, or any of them",
    "split-schedule": "MAS's split stage: continue the lr schedule, or restart it at lr over R − R0 rounds",
    "hoa-single-cost": "price of a single-task network against HOA's budget of x networks (Standley: 0.5)",
}


def describe_run_config(markdown: bool = False) -> str:
    """Every run-config key, its default (as written in `--run-config`, TOML) and `RUN_CONFIG_HELP`'s line:
    aligned columns, or a Markdown table (`| key | default | meaning |`) when `markdown`."""
    rows = [(key, _toml_value(value), RUN_CONFIG_HELP[key]) for key, value in RUN_CONFIG_DEFAULTS.items()]
    if markdown:
        return "\n".join(["| key | default | meaning |", "|---|---|---|",
                          *(f"| `{k}` | `{d}` | {m} |" for k, d, m in rows)])
    width_k, width_d = (max(len(r[i]) for r in rows) for i in (0, 1))
    return "\n".join(f"{k:<{width_k}}  {d:<{width_d}}  {m}" for k, d, m in rows)


def _toml_value(value: Any) -> str:
    """A default as `--run-config` writes it: 'text', 3, 0.2, false."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"'{value}'" if isinstance(value, str) else repr(value)

def app_defaults() -> dict[str, Any]:
    """A fresh copy of the defaults (callers may change it)."""
    return dict(RUN_CONFIG_DEFAULTS)


def load_settings(run_config: dict[str, Any], overrides: dict[str, Any] | None = None) -> Settings:
    """The defaults, then `run_config` (e.g. `flwr run --run-config`), then `overrides` (tests), validated.

    Raises ValueError naming the key for an unknown key, a value of the wrong type or an impossible setting.
    """
    return Settings.from_run_config({**RUN_CONFIG_DEFAULTS, **run_config, **(overrides or {})})


def synthetic_root(settings: Settings) -> Path:
    """Where the default synthetic federation lives: outside the app folder, one per generator setting."""
    s = settings
    name = f"synthetic-b{s.synthetic_buildings}-v{s.synthetic_views}-s{s.synthetic_size}-seed{s.seed}"
    return home() / "data" / name
