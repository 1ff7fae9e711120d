"""Strategies wrapped in strategies: Flower's real DP wrapper around FedAvg, and a user's own wrapper,
in a user's ServerApp (the pattern of docs/strategies.md, section "Your own ServerApp") run in Flower's simulation.

- a wrapped strategy that would wait for more nodes than a round samples is refused at once, with the
  message a plain one gets (also when the wrapper hides what it wraps: then its wait is cut short);
- a correctly configured DP wrapper runs to the end;
- a wrapper whose aggregate is broken (huge DP noise, NaN) stops the run with DivergedError naming the
  federation, the class and the round, and that round is not checkpointed; a wrapper whose network's
  validation loss explodes is named in results.json's `diverged`.

Run as a module (`python -m tests.test_wrapped_strategies '<json overrides>'`), it runs the user's
ServerApp over a DP-wrapped `FedAvg()` (the refusal test runs it so, under a time limit).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, Strategy

from mas_flower.defaults import load_settings
from mas_flower.methods import FederationSpec, Stage
from mas_flower.strategy import ParallelFederations
from mas_flower.strategy.divergence import DivergedError
from mas_flower.strategy.sampling import PATIENCE, configured
from tests.test_federated_arithmetic import in_a_run  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]
NODES = 3
#: A tiny FedAvg run: 2 of 3 nodes per round, validated every round.
BASE = {"method": "fedavg", "task-set": "sd", "num-rounds": 2, "clients-per-round": 2, "batch-size": 4,
        "image-size": 32, "eval-every": 1}


def dp(strategy: Strategy, noise_multiplier: float, clipping_norm: float = 1.0,
       num_sampled_clients: int = 2) -> DifferentialPrivacyServerSideFixedClipping:
    return DifferentialPrivacyServerSideFixedClipping(strategy, noise_multiplier=noise_multiplier,
                                                      clipping_norm=clipping_norm,
                                                      num_sampled_clients=num_sampled_clients)


class Sabotage(Strategy):
    """A user's own wrapper (it keeps its strategy in `.strategy`, as Flower's do) that spoils its inner
    strategy's aggregate in round `at`: `nan` (one value of the first float array), `scale` (every float
    parameter, running statistics aside, times `factor`: finite, but the network's loss explodes)."""

    def __init__(self, strategy: Strategy, at: int, how: str, factor: float = 4.0) -> None:
        self.strategy, self.at, self.how, self.factor = strategy, at, how, factor

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if server_round != self.at:
            return arrays, metrics
        spoiled = {k: v.numpy().copy() for k, v in arrays.items()}
        if self.how == "nan":
            key = next(k for k, v in spoiled.items() if v.dtype.kind == "f")
            spoiled[key].flat[0] = np.nan
        else:
            for key, value in spoiled.items():
                if value.dtype.kind == "f" and "running_" not in key:
                    value *= self.factor
        return ArrayRecord({k: Array(v) for k, v in spoiled.items()}), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()


class Hidden(Strategy):
    """A user's wrapper that keeps its strategy where no check can read it (not in `.strategy`)."""

    def __init__(self, inner: Strategy) -> None:
        self._inner = inner

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self._inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self._inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self._inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self._inner.summary()


def user_app(make: Callable[[], Strategy], overrides: dict) -> ServerApp:
    """The own-ServerApp pattern of docs/strategies.md: our method, every federation aggregated by `make()`."""
    from mas_flower.methods import build_method
    from mas_flower.results import new_run_dir
    from mas_flower.strategy import MethodStrategy, write_outputs

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context) -> None:
        settings = load_settings(dict(context.run_config), overrides)
        run_dir = new_run_dir(settings)
        strategy = MethodStrategy(build_method(settings), make, run_dir=run_dir)
        strategy.start(grid)
        write_outputs(strategy, run_dir)

    return app


def run_user_app(make: Callable[[], Strategy], overrides: dict, nodes: int = NODES) -> None:
    from flwr.simulation import run_simulation

    from client_app.app import app as client_app

    run_simulation(server_app=user_app(make, overrides), client_app=client_app, num_supernodes=nodes,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "num_gpus": 0}})


def config(tiny_federation: Path, out: Path, name: str, **extra) -> dict:
    return {**BASE, "data-root": str(tiny_federation), "output-dir": str(out), "run-name": name, **extra}


# Refused at once -----------------------------------------------------------------------------------


def refusal(make: Callable[[], Strategy], k: int) -> str:
    s = load_settings({}, {"clients-per-round": k, "task-set": "sd"})
    stage = Stage("all-in-one", [FederationSpec("all", "sd")], rounds=1, schedule_total=1)
    with pytest.raises(ValueError) as err:
        ParallelFederations(stage, s, make)
    return str(err.value)


def test_a_wrapped_fedavg_wanting_two_nodes_gets_the_message_a_plain_one_gets() -> None:
    plain = refusal(FedAvg, 1)
    assert plain == ("federation 'all': its FedAvg has fraction_train=1.0 and needs 2 nodes, but a round gives it "
                     "exactly clients-per-round=1 sampled nodes: use fraction_train=1.0 and min_train_nodes, "
                     "min_available_nodes <= 1")
    wrapped = refusal(lambda: dp(FedAvg(), 1.0, num_sampled_clients=1), 1)
    assert wrapped == plain.replace("FedAvg", "DifferentialPrivacyServerSideFixedClipping(FedAvg)")
    deep = refusal(lambda: dp(dp(FedAvg(min_train_nodes=3, min_available_nodes=1), 1.0, 1.0, 2), 1.0, 1.0, 2), 2)
    assert "DifferentialPrivacyServerSideFixedClipping(DifferentialPrivacyServerSideFixedClipping(FedAvg)) has " \
           "fraction_train=1.0 and needs 3 nodes" in deep and "min_available_nodes <= 2" in deep
    half = refusal(lambda: Sabotage(FedAvg(fraction_train=0.5, min_train_nodes=1, min_available_nodes=1), 0, ""), 2)
    assert "its Sabotage(FedAvg) has fraction_train=0.5 and needs 1 nodes" in half
    # DP noise is scaled by num_sampled_clients: it must be the K a round gives.
    assert refusal(lambda: dp(FedAvg(), 1.0, num_sampled_clients=3), 2) == (
        "federation 'all': its DifferentialPrivacyServerSideFixedClipping(FedAvg) has num_sampled_clients=3 (its "
        "noise is scaled for that many clients), but a round gives it exactly clients-per-round=2 sampled nodes: "
        "use num_sampled_clients=2")


@pytest.mark.usefixtures("in_a_run")
def test_a_wrapper_hiding_what_it_wraps_is_stopped_while_it_waits() -> None:
    """Flower's real FedAvg waits in `sample_nodes` for ever; the nodes view ends its wait after PATIENCE s."""
    arrays, cfg = ArrayRecord({"w": Array(np.zeros(2, np.float32))}), ConfigRecord()
    hidden = Hidden(FedAvg())  # min_available_nodes=2, unseen by the static check
    t0 = time.monotonic()
    with pytest.raises(ValueError) as err:
        configured(hidden, "all", [4], None, lambda view: hidden.configure_train(1, arrays, cfg, view), train=True)
    assert PATIENCE <= time.monotonic() - t0 < PATIENCE + 3
    assert str(err.value).startswith("federation 'all': its Hidden waited for more nodes (still polling for nodes "
                                     "after 3.")
    assert str(err.value).endswith(", but a round gives it exactly clients-per-round=1 sampled nodes: use "
                                   "fraction_train=1.0 and min_train_nodes, min_available_nodes <= 1")
    with pytest.raises(ValueError, match=r"an evaluation gives it exactly the 1 nodes that evaluate \(every node "
                                         r"for the test, the validation-nodes sample for validation\): use "
                                         r"fraction_evaluate=1.0 and min_evaluate_nodes"):
        configured(hidden, "all", [4], None, lambda view: hidden.configure_evaluate(1, arrays, cfg, view),
                   train=False)
    # One that samples half of what it is given sends fewer messages than nodes: refused too.
    half = Hidden(FedAvg(fraction_train=0.5, min_train_nodes=1, min_available_nodes=1))
    with pytest.raises(ValueError, match=r"its Hidden configured 1 training message\(s\) \(to nodes \[(4|9)\]\) "
                                         r"for the round's 2 sampled nodes \[4, 9\], but a round gives it exactly "
                                         r"clients-per-round=2"):
        configured(half, "all", [9, 4], None, lambda view: half.configure_train(1, arrays, cfg, view), train=True)
    ok = Hidden(FedAvg(min_train_nodes=1, min_available_nodes=1))
    t0 = time.monotonic()
    messages = configured(ok, "all", [9, 4], None, lambda view: ok.configure_train(1, arrays, cfg, view), train=True)
    assert sorted(m.metadata.dst_node_id for m in messages) == [4, 9] and time.monotonic() - t0 < 1


def test_in_a_simulation_a_wrapped_fedavg_is_refused_at_once_not_left_waiting(private_homes, tiny_federation: Path,
                                                                               tmp_path: Path) -> None:
    """Before, Flower's `sample_nodes` logged "Waiting for nodes to connect" for ever. The run is a
    process of its own, killed if it outlives the time limit."""
    overrides = config(tiny_federation, tmp_path, "refused", **{"clients-per-round": 1})
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "tests.test_wrapped_strategies", json.dumps(overrides)],
                            cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=os.environ.copy())
    try:
        output, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the run still waits after 150 s")
    assert proc.returncode != 0 and time.monotonic() - t0 < 150
    assert ("federation 'all': its DifferentialPrivacyServerSideFixedClipping(FedAvg) has fraction_train=1.0 and "
            "needs 2 nodes, but a round gives it exactly clients-per-round=1 sampled nodes: use fraction_train=1.0 "
            "and min_train_nodes, min_available_nodes <= 1") in output
    assert "Waiting for nodes to connect" not in output
    assert not list(tmp_path.glob("refused*/checkpoint.pt"))


# Runs to the end, or stops naming the broken network ----------------------------------------------


def test_a_correctly_configured_dp_wrapper_runs_to_the_end(private_homes, tiny_federation: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flwr")
    run_user_app(lambda: dp(FedAvg(), noise_multiplier=1e-3, clipping_norm=1.0), config(tiny_federation, tmp_path,
                                                                                      "dp"))
    results = json.loads((tmp_path / "dp" / "results.json").read_text())
    assert results["server_strategy"] == "DifferentialPrivacyServerSideFixedClipping"
    assert results["diverged"] == {} and [h["round"] for h in results["history"]] == [1, 2]
    assert all(np.isfinite(v) for v in results["test_loss"].values())
    logged = [r.getMessage() for r in caplog.records]
    # Flower's wrapper really clipped (norm 1) every reply and noised (std 1e-3 x 1 / 2) every aggregate.
    assert sum("parameters are clipped by value: 1.0000" in m for m in logged) == 2 * 2
    assert sum("central DP noise with 0.0005 stdev added" in m for m in logged) == 2
    checkpoint = torch.load(tmp_path / "dp" / "checkpoint.pt", weights_only=False)
    (wrapper,) = checkpoint["progress"].strategies.values()
    assert type(wrapper) is DifferentialPrivacyServerSideFixedClipping and type(wrapper.strategy) is FedAvg


def test_huge_dp_noise_stops_the_run_in_round_1_naming_the_wrapper(private_homes, tiny_federation: Path,
                                                                   tmp_path: Path) -> None:
    """Noise of std 50 on every array, BatchNorm variances included (`bn-statistics='strategy'`, as a DP
    user sets it so that the noise covers them): some come out negative."""
    with pytest.raises(DivergedError) as err:
        run_user_app(lambda: dp(FedAvg(), noise_multiplier=100.0),
                     config(tiny_federation, tmp_path, "noisy", **{"bn-statistics": "strategy"}))
    text = str(err.value)
    assert text.startswith("federation 'all', round 1: the network aggregated by its "
                           "DifferentialPrivacyServerSideFixedClipping(FedAvg) diverged: BatchNorm running variance ")
    assert "noise_multiplier" in text and "lower lr" in text and "resume=" not in text
    assert not (tmp_path / "noisy" / "checkpoint.pt").exists() and not (tmp_path / "noisy" / "results.json").exists()


def test_a_wrapper_returning_nan_in_round_2_stops_before_round_2_is_checkpointed(private_homes, tiny_federation: Path,
                                                                                 tmp_path: Path) -> None:
    with pytest.raises(DivergedError) as err:
        run_user_app(lambda: Sabotage(FedAvg(), at=2, how="nan"),
                     config(tiny_federation, tmp_path, "nan", **{"num-rounds": 3}))
    text = str(err.value)
    assert text.startswith("federation 'all', round 2: the network aggregated by its Sabotage(FedAvg) diverged: "
                           "array '")
    assert "holds 1 NaN and 0 Inf of " in text and "Round 2 is not checkpointed" in text
    assert f"{tmp_path / 'nan'} keeps the checkpoint of the rounds before it" in text
    checkpoint = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=False)
    assert checkpoint["progress"].next_round == 1 and [h["round"] for h in checkpoint["ledger"].history] == [1]
    weights = checkpoint["progress"].states["all"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "results.json").exists()


def test_a_network_whose_validation_loss_explodes_is_named_in_results(private_homes, tiny_federation: Path,
                                                                      tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flwr")
    run_user_app(lambda: Sabotage(FedAvg(), at=2, how="scale"), config(tiny_federation, tmp_path, "scaled"))
    results = json.loads((tmp_path / "scaled" / "results.json").read_text())
    totals = [sum(h["federations"]["all"]["val_loss"].values()) for h in results["history"]]
    assert totals[1] > 3 * totals[0]
    assert results["diverged"] == {"all": {"round": 2, "loss": totals[1], "first_loss": totals[0]}}
    warned = [r.getMessage() for r in caplog.records if "diverged in round" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("federation 'all' diverged in round 2: total validation loss ")
    assert "(Sabotage(FedAvg))" in warned[0] and "lower lr" in warned[0]


if __name__ == "__main__":
    run_user_app(lambda: dp(FedAvg(), noise_multiplier=1.0, num_sampled_clients=1), json.loads(sys.argv[1]))
