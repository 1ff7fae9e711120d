"""The Flower strategies: fedavg gives the numbers of before (bit for bit), every `server-strategy`
builds Flower's own class with its hyperparameters, and a user's ServerApp from docs/strategies.md runs."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg, FedYogi

from mas_flower.defaults import load_settings
from mas_flower.methods import FederationSpec, Stage
from mas_flower.strategy import ParallelFederations, server_strategy
from mas_flower.strategy.aggregators import MEASURED_SERVER_LR, SERVER_STRATEGIES, server_hyperparameters
from tests.test_app_simulation import run_app

REPO = Path(__file__).resolve().parents[1]
GOLDENS = [json.loads(p.read_text()) for p in sorted((REPO / "tests" / "golden").glob("fedavg-mas-sdk*.json"))]
GOLDEN = GOLDENS[0]  # the first: made at d17bfcc, before strategies were swappable


def environment() -> dict[str, str]:
    """What decides floating-point results on the CPU besides our code: library versions and CPU kernels."""
    import platform

    import numpy
    import PIL
    import torch

    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    return {"torch": torch.__version__, "numpy": numpy.__version__, "pillow": PIL.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu}


def _identical(results: dict, golden: dict) -> bool:
    return (results["splits"] == golden["splits"] and results["test_loss"] == golden["test_loss"]
            and results["affinity"] == golden["affinity"]
            and all(mine["sampled"] == before["sampled"] and all(
                mine["federations"][name][key] == entry[key] for name, entry in before["federations"].items()
                for key in ("train_loss", "val_loss"))
                for mine, before in zip(results["history"], golden["history"], strict=True)))


def test_fedavg_reproduces_the_numbers_of_before_bit_for_bit(private_homes, tiny_federation: Path,
                                                            tmp_path: Path) -> None:
    """Bit for bit equal to a golden file (the numbers of the app before strategies were swappable); in an
    environment that made none (other CPU kernels or numpy/Pillow versions: float drift, measured up to
    1 % after 3 rounds between two machines), the same choices and numbers close to the first file."""
    # The golden file's config leaves lr and local-epochs to the defaults of its day.
    run_app({"lr": 0.1, "local-epochs": 1, **GOLDEN["config"], "server-strategy": "fedavg",
             "data-root": str(tiny_federation),
             "output-dir": str(tmp_path), "run-name": "golden"}, num_supernodes=4)
    results = json.loads((tmp_path / "golden" / "results.json").read_text())
    assert results["server_strategy"] == "fedavg"
    if any(_identical(results, golden) for golden in GOLDENS):
        return
    made_here = [g for g in GOLDENS if g.get("environment") == environment()]
    assert not made_here, "this environment made a golden file: the numbers must equal it bit for bit"
    assert results["splits"] == GOLDEN["splits"]
    assert results["test_loss"] == pytest.approx(GOLDEN["test_loss"], rel=2e-2)
    for mine, theirs in zip(results["affinity"]["matrix"], GOLDEN["affinity"]["matrix"], strict=True):
        assert mine == pytest.approx(theirs, abs=1e-4)
    for mine, before in zip(results["history"], GOLDEN["history"], strict=True):
        assert mine["sampled"] == before["sampled"]
        for name, entry in before["federations"].items():
            for key in ("train_loss", "val_loss"):
                assert mine["federations"][name][key] == pytest.approx(entry[key], rel=2e-2), (name, key)


@pytest.mark.parametrize(("name", "cls", "expected"), [
    ("fedavg", FedAvg, {}),
    ("fedprox", FedProx, {"proximal_mu": 0.004}),
    ("fedadam", FedAdam, {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001}),  # measured, not Flower's 0.1
    ("fedyogi", FedYogi, {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001}),
    ("fedadagrad", FedAdagrad, {"eta": 0.01, "tau": 0.001}),  # measured, not Flower's 0.1
    ("fedavgm", FedAvgM, {"server_learning_rate": 1.0, "server_momentum": 0.0}),
    ("fedmedian", FedMedian, {}),
    ("fedtrimmedavg", FedTrimmedAvg, {"beta": 0.2}),
])
def test_server_strategy_is_flowers_class_with_its_defaults_or_the_measured_eta(name: str, cls: type,
                                                                                expected: dict) -> None:
    strategy = server_strategy(load_settings({}, {"server-strategy": name}))
    assert type(strategy) is cls
    for key, value in expected.items():
        assert getattr(strategy, key) == value, key
    assert strategy.weighted_by_key == "num-examples" and strategy.fraction_train == 1.0


@pytest.mark.parametrize("name", ["fedadam", "fedadagrad"])
def test_flowers_own_eta_stays_reachable_by_setting_it(name: str) -> None:
    """server-lr=0 gives the measured 0.01; Flower's 0.1 is still there for whoever asks for it."""
    assert server_strategy(load_settings({}, {"server-strategy": name, "server-lr": 0.1})).eta == 0.1
    assert server_strategy(load_settings({}, {"server-strategy": name})).eta == MEASURED_SERVER_LR[name] == 0.01


def test_server_hyperparameters_come_from_the_run_config() -> None:
    adam = server_strategy(load_settings({}, {"server-strategy": "fedadam", "server-lr": 0.02, "beta-1": 0.5,
                                              "tau": 0.01}))
    assert (adam.eta, adam.beta_1, adam.beta_2, adam.tau) == (0.02, 0.5, 0.99, 0.01)
    avgm = server_strategy(load_settings({}, {"server-strategy": "fedavgm", "server-momentum": 0.9}))
    assert (avgm.server_learning_rate, avgm.server_momentum) == (1.0, 0.9)
    trimmed = server_strategy(load_settings({}, {"server-strategy": "fedtrimmedavg", "trim-beta": 0.1}))
    assert trimmed.beta == 0.1


@pytest.mark.parametrize("name", list(SERVER_STRATEGIES))
def test_every_hyperparameter_is_a_keyword_of_its_flower_class(name: str) -> None:
    """Each keyword read from the settings exists on Flower's class (a typo would otherwise surface only
    when that strategy is built), and `server-lr=0` never reaches Flower as 0."""
    import inspect

    import flwr.serverapp.strategy as flower

    entry = SERVER_STRATEGIES[name]
    accepted = inspect.signature(getattr(flower, entry.flower_class).__init__).parameters
    assert set(entry.hyperparameters) <= set(accepted)
    hyper = server_hyperparameters(load_settings({}, {"server-strategy": name, "server-lr": 0.0}))
    assert set(hyper) == set(entry.hyperparameters) and 0.0 not in (hyper.get("eta"), hyper.get("server_learning_rate"))


@pytest.mark.parametrize(("override", "message"), [
    ({"server-strategy": "krum"}, "server-strategy='krum'"),
    ({"trim-beta": 0.5}, "trim-beta=0.5"),
    ({"beta-2": 1.0}, "beta-2=1.0"),
    ({"eval-every": 0}, "eval-every=0"),
])
def test_bad_strategy_settings_name_the_key(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match="invalid run config") as err:
        load_settings({}, override)
    assert message in str(err.value)


def test_a_strategy_that_would_wait_for_more_nodes_than_sampled_is_refused() -> None:
    s = load_settings({}, {"clients-per-round": 1, "task-set": "sd"})
    stage = Stage("all-in-one", [FederationSpec("all", "sd")], rounds=1, schedule_total=1)
    with pytest.raises(ValueError, match=r"federation 'all': its FedAdam .* needs 2 nodes.*clients-per-round=1"):
        ParallelFederations(stage, s, lambda: FedAdam())


def readme_server_app() -> types.ModuleType:
    """The own-ServerApp example of docs/strategies.md, section "Your own ServerApp", as a module (so the
    page cannot rot)."""
    page = (REPO / "docs" / "strategies.md").read_text()
    section = page.split("\n## Your own ServerApp\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("readme_server_app")
    exec(compile(code, "docs/strategies.md", "exec"), module.__dict__)
    return module


def test_a_users_serverapp_from_the_readme_runs_mas_over_fedadam(private_homes, tiny_federation: Path,
                                                                 tmp_path: Path) -> None:
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from client_app.app import app as client_app

    user = readme_server_app()
    assert isinstance(user.app, ServerApp)
    run_config = {"task-set": "sdk", "splits": 2, "num-rounds": 3, "merge-rounds": 2, "affinity-rounds": 1,
                  "affinity-every": 2, "clients-per-round": 3, "batch-size": 4, "image-size": 32,
                  "eval-every": 2, "data-root": str(tiny_federation), "output-dir": str(tmp_path),
                  "run-name": "users"}
    app = ServerApp()

    @app.main()
    def main(grid, context):  # what `flwr run --run-config` would hand the user's app
        context.run_config = run_config
        user.main(grid, context)

    run_simulation(server_app=app, client_app=client_app, num_supernodes=4,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "num_gpus": 0}})
    results = json.loads((tmp_path / "users" / "results.json").read_text())
    assert results["method"] == "mas" and results["server_strategy"] == "FedAdam"
    assert results["server_hyperparameters"]["eta"] == 0.01  # the docs/strategies.md block's
    assert [h["phase"] for h in results["history"]] == ["merge", "merge", "split"]
    # eval-every=2: round 1 is not validated; round 2 is, and so is the last round of every stage.
    assert ["val_loss" in e for h in results["history"] for e in h["federations"].values()] == [False, True, True, True]
    assert sorted("".join(results["splits"])) == sorted("sdk")
    checkpoint = __import__("torch").load(tmp_path / "users" / "checkpoint.pt", weights_only=False)
    adams = checkpoint["progress"].strategies
    assert set(adams) == set(results["splits"]) and all(type(a) is FedAdam for a in adams.values())
    assert all(a.m_t is not None for a in adams.values())  # each split network has its own moments


def test_a_suite_compares_one_method_over_two_server_strategies(tmp_path: Path) -> None:
    from mas_flower.tools.suite import load_suite
    from mas_flower.tools.summary import Run, display_name, summarise
    from tests.bench_suite import write_suite

    suite = load_suite(write_suite(tmp_path / "suite.yaml", methods=["mas-2", "mas-2@fedadam"]), check_data=False)
    runs = suite.runs()
    assert [r.name for r in runs] == ["mas-x2-sdk-seed0", "mas-x2-fedadam-sdk-seed0"]
    assert "server-strategy" not in suite.run_config_for(runs[0])
    assert suite.run_config_for(runs[1])["server-strategy"] == "fedadam"
    with pytest.raises(ValueError, match=r"server-strategy='krum' \(after '@' in 'mas-2@krum'\) is not one of"):
        load_suite(write_suite(tmp_path / "bad.yaml", methods=["mas-2@krum"]), check_data=False)
    fake = {"method": "mas", "task_set": "sdk", "seed": 0, "splits": ["sd", "k"], "config": {"splits": 2},
            "total_test_loss": 3.0, "client_train_seconds": 1.0, "wall_seconds": 2.0, "energy_kwh": 0.0, "co2_g": 0.0,
            "test_loss": {"s": 1.0, "d": 1.0, "k": 1.0}}
    adam = {**fake, "server_strategy": "fedadam", "server_hyperparameters": {"eta": 0.1}, "total_test_loss": 2.0}
    rows = summarise([Run(tmp_path / "a", {**fake, "server_strategy": "fedavg"}), Run(tmp_path / "b", adam)])
    assert [(r.method, r.server_strategy, r.total[0]) for r in rows] == [("mas-2", "fedavg", 3.0),
                                                                         ("mas-2@fedadam", "fedadam", 2.0)]
    assert rows[1].server_hyperparameters == {"eta": 0.1} and display_name("mas-2@fedadam") == "MAS-2 over fedadam"


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"num_rounds": 3}, "num_rounds"),
    ({"timeout": 60.0, "evaluate_fn": lambda r, a: None}, "timeout, evaluate_fn"),
    ({"train_config": ConfigRecord({"lr": 0.5})}, "train_config"),
])
def test_method_strategy_start_refuses_flowers_parameters_it_cannot_honour(kwargs: dict, named: str) -> None:
    """Flower's `start(grid, initial_arrays, num_rounds, ...)`: the method decides rounds and networks, so
    a caller's values are refused by name before anything is sent, not silently ignored."""
    from mas_flower.methods import build_method
    from mas_flower.strategy import MethodStrategy

    strategy = MethodStrategy(build_method(load_settings({})), "fedavg")
    with pytest.raises(ValueError, match=f"MethodStrategy.start cannot honour {named}: "):
        strategy.start(None, **kwargs)  # type: ignore[arg-type]  (refused before the grid is used)
