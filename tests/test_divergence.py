"""Divergence is named, never averaged in: the aggregate check on hand-made ArrayRecords (each
violation), the 3x rule on hand-made loss series, results.json's `diverged`, and the bench summary's
flag. The end-to-end runs (a real Flower simulation) are in tests/test_wrapped_strategies.py."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAdam, FedAvg

from mas_flower.strategy.divergence import (
    DivergedError,
    Explosion,
    aggregate_problems,
    check_aggregate,
    diverged_networks,
    explosion,
    strategy_name,
    validation_series,
    watch_validation,
)
from mas_flower.strategy.replies import non_finite, reject_evaluate_reply
from tests.test_federated_arithmetic import in_a_run  # noqa: F401 (a fixture)


def sent() -> ArrayRecord:
    """A network as sent to the clients: a float weight, a BatchNorm's buffers (int counter)."""
    return ArrayRecord({
        "enc.conv.weight": Array(np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5),
        "enc.bn.running_mean": Array(np.array([-1.0, 0.5, 2.0], dtype=np.float32)),
        "enc.bn.running_var": Array(np.array([0.25, 1.0, 4.0], dtype=np.float32)),
        "enc.bn.num_batches_tracked": Array(np.array(7, dtype=np.int64)),
    })


def aggregate(**changes: np.ndarray | None) -> ArrayRecord:
    """`sent()` as a strategy might return it (FedAvg averages the int counter into a float), with
    `changes` (None drops the key)."""
    arrays = {k: v.numpy() for k, v in sent().items()}
    arrays["enc.bn.num_batches_tracked"] = np.array(7.5)
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def test_a_healthy_aggregate_passes_negative_weights_and_means_included() -> None:
    # negative weights and running means are fine; the counter may come back averaged, as a float
    assert aggregate_problems(aggregate(), sent()) == []


@pytest.mark.parametrize(("result", "kind", "text"), [
    (None, "none", "returned NoneType instead of an ArrayRecord"),
    (aggregate(enc__bn__running_mean=None), "keys", "missing ['enc.bn.running_mean'], unexpected []"),
    (aggregate(enc__extra=np.zeros(2)), "keys", "missing [], unexpected ['enc.extra']"),
    (aggregate(enc__conv__weight=np.zeros((3, 2), np.float32)), "shape",
     "array 'enc.conv.weight' has shape (3, 2), sent (2, 3)"),
    (aggregate(enc__conv__weight=np.zeros((2, 3), np.int64)), "dtype",
     "array 'enc.conv.weight' has dtype int64, sent float32"),
    (aggregate(enc__conv__weight=np.array([[np.nan, 1, np.inf], [0, -np.inf, np.nan]], np.float32)), "non-finite",
     "array 'enc.conv.weight' holds 2 NaN and 2 Inf of 6 values"),
    (aggregate(enc__bn__running_var=np.array([0.5, -0.125, -2.0], np.float32)), "negative-variance",
     "BatchNorm running variance 'enc.bn.running_var' has 2 negative value(s) (min -2)"),
])
def test_each_violation_is_named(result: ArrayRecord | None, kind: str, text: str) -> None:
    problems = aggregate_problems(result, sent())
    assert [p.kind for p in problems] == [kind]
    assert text in problems[0].text


def test_every_broken_array_is_found_and_a_variance_of_zero_is_not_negative() -> None:
    broken = aggregate(enc__conv__weight=np.full((2, 3), np.nan, np.float32),
                       enc__bn__running_var=np.array([0.0, -0.0, -1e-9], np.float32))
    problems = aggregate_problems(broken, sent())
    assert [p.kind for p in problems] == ["non-finite", "negative-variance"]
    assert "1 negative value(s)" in problems[1].text  # 0.0 and -0.0 are not below zero


def test_the_error_names_federation_class_round_and_what_to_lower_never_a_resume() -> None:
    wrapped = DifferentialPrivacyServerSideFixedClipping(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0,
                                                         num_sampled_clients=2)
    broken = aggregate(enc__bn__running_var=np.array([0.5, -0.125, 1.0], np.float32))
    with pytest.raises(DivergedError) as err:
        check_aggregate(broken, sent(), federation="sd", strategy=wrapped, server_round=4)
    text = str(err.value)
    assert text.startswith("federation 'sd', round 4: the network aggregated by its "
                           "DifferentialPrivacyServerSideFixedClipping(FedAvg) diverged: BatchNorm running variance "
                           "'enc.bn.running_var' has 1 negative value(s)")
    for hint in ("lower lr", "server-lr", "server-momentum", "noise_multiplier", "start a new run",
                 "Round 4 is not checkpointed"):
        assert hint in text, hint
    assert "resume=" not in text
    # A wrong shape is the strategy's code, not a learning rate.
    with pytest.raises(DivergedError, match=r"FedAdam is broken: array 'enc.conv.weight' has shape .*fix the "
                                            r"strategy's code") as err:
        check_aggregate(aggregate(enc__conv__weight=np.zeros(6, np.float32)), sent(), federation="all",
                        strategy=FedAdam(), server_round=1)
    assert "lower lr" not in str(err.value)
    check_aggregate(aggregate(), sent(), federation="all", strategy=FedAvg(), server_round=1)  # healthy: silent


def test_strategy_names_see_through_wrappers_at_any_depth() -> None:
    inner = FedAvg()
    once = DifferentialPrivacyServerSideFixedClipping(inner, 1.0, 1.0, 2)
    twice = DifferentialPrivacyServerSideFixedClipping(once, 1.0, 1.0, 2)
    assert strategy_name(inner) == "FedAvg"
    assert strategy_name(twice) == ("DifferentialPrivacyServerSideFixedClipping("
                                    "DifferentialPrivacyServerSideFixedClipping(FedAvg))")


# The 3x rule ---------------------------------------------------------------------------------------


def test_exactly_three_times_the_first_loss_is_not_diverged_above_it_is() -> None:
    assert explosion([(2, 0.5), (4, 1.25), (6, 1.5)]) is None  # 3 x 0.5 = 1.5 exactly
    assert explosion([(2, 0.5), (4, 1.5), (6, 1.5000001), (8, 9.0)]) == Explosion(6, 1.5000001, 0.5)
    assert explosion([(1, 2.0), (2, 0.1), (3, 6.5)]) == Explosion(3, 6.5, 2.0)  # against the first, not the best
    assert explosion([(1, 2.0), (2, float("nan"))]).round == 2
    assert explosion([(1, 2.0), (2, float("inf"))]).loss == float("inf")
    assert explosion([]) is None


def entry(val: dict[str, float] | None) -> dict:
    return {"train_loss": {"s": 9.0}, **({"val_loss": val} if val is not None else {})}


#: Round 1 not validated (eval-every 2); the merged network "all", then split networks "s" and "d".
HISTORY = [
    {"round": 1, "phase": "merge", "federations": {"all": entry(None)}},
    {"round": 2, "phase": "merge", "federations": {"all": entry({"s": 0.25, "d": 0.75})}},
    {"round": 3, "phase": "merge", "federations": {"all": entry(None)}},
    {"round": 4, "phase": "merge", "federations": {"all": entry({"s": 1.0, "d": 2.5})}},
    {"round": 5, "phase": "split", "federations": {"s": entry({"s": 0.5}), "d": entry({"d": 4.0})}},
    {"round": 6, "phase": "split", "federations": {"s": entry({"s": 1.5}), "d": entry({"d": 12.5})}},
]


def test_the_first_validated_round_is_the_reference_per_network() -> None:
    assert validation_series(HISTORY, "merge", "all") == [(2, 1.0), (4, 3.5)]  # rounds 1 and 3 did not validate
    assert validation_series(HISTORY, "split", "d") == [(5, 4.0), (6, 12.5)]
    # all: 3.5 > 3 x 1.0; s: 1.5 = 3 x 0.5 (not); d: 12.5 > 3 x 4.0
    assert diverged_networks(HISTORY) == {"all": {"round": 4, "loss": 3.5, "first_loss": 1.0},
                                          "d": {"round": 6, "loss": 12.5, "first_loss": 4.0}}
    assert diverged_networks(HISTORY[:3]) == {}


def test_a_name_reused_by_a_later_stage_is_a_new_network() -> None:
    # HOA: a single-task network "s" in stage "pairs", a new "s" trained from scratch in stage "groups".
    history = [{"round": 1, "phase": "pairs", "federations": {"s": entry({"s": 1.0})}},
               {"round": 2, "phase": "pairs", "federations": {"s": entry({"s": 3.5})}},
               {"round": 1, "phase": "groups", "federations": {"s": entry({"s": 0.3})}},
               {"round": 2, "phase": "groups", "federations": {"s": entry({"s": 1.0})}}]
    assert diverged_networks(history) == {"s": {"round": 2, "loss": 3.5, "first_loss": 1.0},
                                          "groups/s": {"round": 2, "loss": 1.0, "first_loss": 0.3}}


def test_the_warning_comes_once_per_network_and_a_non_finite_loss_stops(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flwr")
    strategies = {"all": FedAdam(), "s": FedAvg(), "d": FedAvg()}
    for index, record in enumerate(HISTORY):
        watch_validation(HISTORY[:index], record, phase=record["phase"], server_round=record["round"],
                         strategies=strategies)
    later = {"round": 7, "phase": "split", "federations": {"s": entry({"s": 1.0}), "d": entry({"d": 20.0})}}
    watch_validation(HISTORY, later, phase="split", server_round=7, strategies=strategies)  # d again: no repeat
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].startswith("federation 'all' diverged in round 4: total validation loss 3.5 > 3 x its first "
                                  "1 (FedAdam)") and "lower lr" in warnings[0]
    assert warnings[1].startswith("federation 'd' diverged in round 6: total validation loss 12.5 > 3 x its first 4")
    nan = {"round": 7, "phase": "split", "federations": {"s": entry({"s": float("nan")})}}
    with pytest.raises(DivergedError, match=r"federation 's', round 7: the total validation loss of the network "
                                            r"aggregated by its FedAvg is nan \(its first was 0.5\)"):
        watch_validation(HISTORY, nan, phase="split", server_round=7, strategies=strategies)


@pytest.mark.usefixtures("in_a_run")
def test_a_non_finite_evaluation_loss_reads_as_non_finite() -> None:
    def reply(loss: float) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 3, "loss-s": loss})}),
                       dst_node_id=1, message_type="evaluate")

    assert non_finite(reject_evaluate_reply(reply(float("nan")), "s"))
    assert non_finite(reject_evaluate_reply(reply(float("inf")), "s"))
    assert not non_finite(reject_evaluate_reply(reply(-1.0), "s"))  # impossible, but a number
    assert reject_evaluate_reply(reply(0.5), "s") is None


# The bench summary ---------------------------------------------------------------------------------


def write_run(root: Path, name: str, seed: int, total: float, diverged: dict | None) -> None:
    folder = root / "runs" / name
    folder.mkdir(parents=True)
    results = {"method": "fedavg", "task_set": "sd", "seed": seed, "splits": None, "config": {"splits": 2},
               "total_test_loss": total, "test_loss": {"s": total / 4, "d": 3 * total / 4},
               "client_train_seconds": 3600.0, "wall_seconds": 7200.0, "energy_kwh": 1.0, "co2_g": 2.0}
    if diverged is not None:
        results["diverged"] = diverged
    (folder / "results.json").write_text(json.dumps(results))


def test_the_summary_says_which_runs_diverged(tmp_path: Path) -> None:
    from mas_flower.tools.summary import load_runs, summarise, write_summary

    write_run(tmp_path, "fedavg-sd-seed0", 0, 2.0, {})
    write_run(tmp_path, "fedavg-sd-seed1", 1, 40.0, {"all": {"round": 3, "loss": 30.5, "first_loss": 4.0}})
    write_run(tmp_path, "fedavg-sd-seed2", 2, 4.0, None)  # an older run: no record, counted as not diverged
    runs = load_runs([tmp_path])
    (row,) = summarise(runs)
    assert row.diverged_runs == 1 and row.total == pytest.approx((46 / 3, np.std([2.0, 40.0, 4.0])))
    csv_path, md_path = write_summary(tmp_path, runs)
    assert next(csv.DictReader(csv_path.open()))["diverged_runs"] == "1"
    md = md_path.read_text()
    line = next(line for line in md.splitlines() if line.startswith("| FedAvg"))
    assert "**diverged** (1 of 3 runs)" in line
    assert "Diverged: `fedavg-sd-seed1` all (round 3: validation loss 30.5 > 3 x its first 4)" in md
    tidy = {r["run"]: r["diverged"] for r in csv.DictReader((tmp_path / "runs.csv").open()) if r["task"] == "s"}
    assert tidy == {"fedavg-sd-seed0": "", "fedavg-sd-seed1": "all", "fedavg-sd-seed2": ""}


# Non-finite on every node: a divergence, not a failed round --------------------------------------


@pytest.mark.usefixtures("in_a_run")
def test_a_network_with_a_non_finite_loss_on_every_node_stops_as_diverged() -> None:
    from flwr.app import Array, ConfigRecord

    from mas_flower.defaults import load_settings
    from mas_flower.methods import FederationSpec, Stage
    from mas_flower.strategy import ParallelFederations
    from mas_flower.strategy.roster import RoundFailed

    s = load_settings({}, {"task-set": "sd", "clients-per-round": 2})
    strategy = ParallelFederations(Stage("merge", [FederationSpec("all", "sd")], rounds=1, schedule_total=1), s,
                                   "fedadam")
    strategy.roster.nodes = {22: "b", 11: "a"}
    arrays = ArrayRecord({"all/w": Array(np.zeros(2, np.float32))})

    def replies(*d_losses: float) -> list[Message]:
        sent = strategy.configure_evaluate(3, arrays, ConfigRecord({"split": "val"}), None)
        return [Message(RecordDict({"metrics.all": MetricRecord({"num-examples": 5, "loss-s": 0.5, "loss-d": loss})}),
                        reply_to=msg) for msg, loss in zip(sent, d_losses, strict=True)]

    with pytest.raises(DivergedError, match=r"federation 'all', round 3: the network aggregated by its FedAdam gives "
                                            r"a non-finite val loss on every node \(a: loss of task 'd' is nan "
                                            r"\(NaN or Inf\); b: loss of task 'd' is inf \(NaN or Inf\)\): it "
                                            r"diverged\. lower lr") as err:
        strategy.aggregate_evaluate(3, replies(float("nan"), float("inf")))
    assert "resume=" not in str(err.value)
    with pytest.raises(RoundFailed, match="no node evaluated federation 'all' on val"):  # one impossible, not NaN
        strategy.aggregate_evaluate(3, replies(float("nan"), -1.0))
    metrics = strategy.aggregate_evaluate(3, replies(float("nan"), 2.0))  # b alone still evaluates it
    assert strategy.evaluation.covered == {"all": ["b"]} and metrics["all/loss-d"] == 2.0


def test_local_training_that_diverges_on_every_node_stops_as_diverged(monkeypatch, private_homes,
                                                                      tiny_federation: Path, tmp_path: Path) -> None:
    """Before, the run stopped as a failed round and offered a resume, which would replay the NaN."""
    from tests.test_faults import run_faulty

    with pytest.raises(DivergedError, match=r"round 1: the local training of federation\(s\) 'all' gave non-finite "
                                            r"values on every node whose reply was rejected, in each of 2 "
                                            r"attempt\(s\) \(.*holds NaN or Inf.*\): it diverged\. lower lr") as err:
        run_faulty(monkeypatch, "0=nan,1=nan",
                   {"method": "fedavg", "task-set": "sd", "num-rounds": 1, "clients-per-round": 2, "batch-size": 4,
                    "image-size": 32, "round-retries": 1, "data-root": str(tiny_federation),
                    "output-dir": str(tmp_path), "run-name": "nan"}, nodes=2)
    assert "resume=" not in str(err.value)
    assert not (tmp_path / "nan" / "checkpoint.pt").exists()
