"""Validation on a sample (`validation-nodes`): a fixed seeded set of buildings validates each
round, replaced only where a building left; the validation loss is recorded and logged as an estimate
with the number of nodes behind it; the final test still covers every building."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from mas_flower.defaults import load_settings
from mas_flower.methods import FederationSpec, Stage, build_method
from mas_flower.strategy import MethodStrategy, ParallelFederations
from mas_flower.strategy import protocol as P
from mas_flower.strategy.checkpoint import load_checkpoint
from mas_flower.strategy.method import validation_note
from mas_flower.strategy.roster import NodeRoster, validation_priority
from server_app.app import preflight
from tests.test_federated_arithmetic import in_a_run  # noqa: F401 (a fixture)
from tests.test_resume_rules import killed_run  # noqa: F401 (a fixture)

#: Five nodes, ids not in building order. With seed 1 the buildings' draw priorities are
#: a 0.916, b 0.176, c 0.437, d 0.732, e 0.112: the order of the draw is e, b, c, d, a.
FIVE = {50: "c", 10: "e", 20: "a", 40: "b", 30: "d"}


def roster(nodes: dict[int, str] = FIVE, **overrides) -> NodeRoster:
    r = NodeRoster(load_settings({}, {"seed": 1, **overrides}))
    r.nodes = dict(nodes)
    return r


def buildings(r: NodeRoster, ids: list[int]) -> list[str]:
    return [r.nodes[i] for i in ids]


def test_the_draw_priorities_by_hand() -> None:
    assert [round(validation_priority(1, b), 3) for b in "abcde"] == [0.916, 0.176, 0.437, 0.732, 0.112]
    assert validation_priority(0, "a") != validation_priority(1, "a")  # seeded by the run's seed


def test_the_sample_is_the_same_each_round_and_replaced_only_where_a_building_left() -> None:
    r = roster(**{"validation-nodes": 2})
    ids, change = r.validators()
    assert (buildings(r, ids), change, r.validation_sample) == (["b", "e"], {}, ["b", "e"])  # ordered by building
    for _ in range(3):  # every later validation: the same nodes, nothing changed
        assert r.validators() == (ids, {})
    del r.nodes[40]  # b's node left: c (next in the draw) takes its place, e stays
    ids, change = r.validators()
    assert (buildings(r, ids), change) == (["c", "e"], {"out": ["b"], "in": ["c"]})
    r.nodes[41] = "b"  # b rejoins with a new id: it displaces nobody
    assert buildings(r, r.validators()[0]) == ["c", "e"] and r.validators()[1] == {}
    del r.nodes[30]  # d, outside the sample, left: nothing changes
    assert buildings(r, r.validators()[0]) == ["c", "e"] and r.validators()[1] == {}
    del r.nodes[10]
    r.nodes[11] = "e"  # e restarted (a new id, the same building): still in the sample, under its new id
    assert r.validators() == ([50, 11], {})


def test_zero_or_at_least_the_federation_is_every_node_as_before() -> None:
    every = roster(**{"validation-nodes": 0})
    assert every.validators() == ([20, 40, 50, 30, 10], {}) == (every.ordered(), {})
    assert every.validation_sample is None
    r = roster(**{"validation-nodes": 5})
    assert r.validators() == (r.ordered(), {})
    r = roster({10: "e", 20: "a"}, **{"validation-nodes": 3})  # fewer nodes than the count at the draw
    assert buildings(r, r.validators()[0]) == ["a", "e"]
    r.nodes.update({40: "b", 50: "c"})  # two join: the sample grows by one, b before c in the draw
    ids, change = r.validators()
    assert (buildings(r, ids), change) == (["a", "b", "e"], {"out": [], "in": ["b"]})


def _federations(**overrides) -> ParallelFederations:
    s = load_settings({}, {"task-set": "sd", "clients-per-round": 2, "seed": 1, **overrides})
    strategy = ParallelFederations(Stage("merge", [FederationSpec("all", "sd")], rounds=1, schedule_total=1), s)
    strategy.roster.nodes = dict(FIVE)
    return strategy


ARRAYS = ArrayRecord({"all/w": Array(np.zeros(2, np.float32))})


def _answer(sent: list[Message], skip: str = "", loss: float = 1.0) -> list[Message]:
    nodes = dict(FIVE)
    return [Message(RecordDict({"metrics.all": MetricRecord({P.NUM_EXAMPLES: 5, "loss-s": loss, "loss-d": loss})}),
                    reply_to=m) for m in sent if nodes.get(m.metadata.dst_node_id) != skip]


@pytest.mark.usefixtures("in_a_run")
def test_validation_goes_to_the_sample_and_the_test_to_every_node() -> None:
    strategy = _federations(**{"validation-nodes": 2})
    for _ in range(2):
        sent = list(strategy.configure_evaluate(1, ARRAYS, ConfigRecord({"split": "val"}), None))
        assert [m.metadata.dst_node_id for m in sent] == [40, 10]  # b, e
        strategy.aggregate_evaluate(1, _answer(sent))
        assert strategy.evaluation.validation_record("all") == {"val_nodes": 2, "val_of": 5, "val_estimate": True}
    strategy.aggregate_evaluate(1, _answer(sent, skip="e"))  # e's reply is missing: named
    assert strategy.evaluation.validation_record("all") == {"val_nodes": 1, "val_of": 5, "val_estimate": True,
                                                 "val_missing": ["e"]}
    test = list(strategy.configure_evaluate(1, ARRAYS, ConfigRecord({"split": "test"}), None))
    assert [m.metadata.dst_node_id for m in test] == [20, 40, 50, 30, 10]  # every node, in building order
    strategy.aggregate_evaluate(1, _answer(test))
    assert strategy.evaluation.covered == {"all": ["a", "b", "c", "d", "e"]}
    assert strategy.evaluation.validation_record("all") == {"val_nodes": 5, "val_of": 5, "val_estimate": False}


@pytest.mark.usefixtures("in_a_run")
def test_every_node_validates_with_zero_and_nothing_is_an_estimate() -> None:
    strategy = _federations(**{"validation-nodes": 0})
    sent = list(strategy.configure_evaluate(1, ARRAYS, ConfigRecord({"split": "val"}), None))
    assert [m.metadata.dst_node_id for m in sent] == [20, 40, 50, 30, 10]
    strategy.aggregate_evaluate(1, _answer(sent))
    assert strategy.evaluation.validation_record("all") == {"val_nodes": 5, "val_of": 5, "val_estimate": False}


def test_the_round_line_says_how_many_nodes_an_estimate_is_over() -> None:
    entry = {"val_loss": {"s": 1.0}, "val_nodes": 100, "val_of": 1000, "val_estimate": True}
    assert validation_note({"federations": {"all": entry}}) == " (validation on 100 of 1000 nodes: an estimate)"
    two = {"sd": entry, "k": {**entry, "val_nodes": 98}}
    assert validation_note({"federations": two}) == " (validation on 98-100 of 1000 nodes: an estimate)"
    assert validation_note({"federations": {"all": {**entry, "val_nodes": 4, "val_of": 4, "val_estimate": False}}}) \
        == ""
    assert validation_note({"federations": {"all": {"train_loss": {"s": 1.0}}}}) == ""


@pytest.mark.parametrize(("value", "message"), [
    (-1, "validation-nodes=-1 must be 0 (every node validates) or a number of nodes >= 1"),
    (2.5, "run-config key 'validation-nodes': expected int, got 2.5"),
    (True, "run-config key 'validation-nodes': expected int, got True"),
    ("3", "run-config key 'validation-nodes': expected int, got '3'"),
])
def test_bad_values_name_the_key(value: object, message: str) -> None:
    with pytest.raises(ValueError) as err:
        load_settings({}, {"validation-nodes": value})
    assert message in str(err.value)


def test_a_resume_keeps_the_sample_and_refuses_another_count(killed_run: Path) -> None:  # noqa: F811
    with pytest.raises(ValueError, match=r"validation-nodes=2 \(checkpoint: 100\)"):
        preflight({"validation-nodes": 2}, {"resume": str(killed_run)})
    payload = load_checkpoint(killed_run)
    settings = load_settings(payload["config"])
    strategy = MethodStrategy(build_method(settings), run_dir=killed_run, checkpoint=payload)
    assert strategy.roster.validation_sample is None  # no validation yet: drawn at the first one
    strategy.roster.validation_sample = ["b", "e"]
    strategy.checkpoint()
    resumed = MethodStrategy(build_method(settings), checkpoint=load_checkpoint(killed_run))
    assert resumed.roster.validation_sample == ["b", "e"]


# End to end in Flower's simulation -------------------------------------------------------------------


def test_two_of_five_nodes_validate_each_round_and_the_test_covers_all_five(monkeypatch, private_homes,
                                                                           tiny_federation: Path,
                                                                           tmp_path: Path) -> None:
    from flwr.simulation import run_simulation

    from server_app.app import make_server_app
    from tests.fault_client import app as recording_app

    messages = tmp_path / "messages.txt"
    monkeypatch.setenv("MAS_FLOWER_TEST_RECORD", str(messages))
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("flwr").addHandler(handler)
    try:
        run_simulation(server_app=make_server_app({
            "method": "fedavg", "task-set": "sd", "num-rounds": 3, "clients-per-round": 2, "local-epochs": 1,
            "batch-size": 4, "image-size": 32, "lr": 0.1, "validation-nodes": 2, "data-root": str(tiny_federation),
            "output-dir": str(tmp_path), "run-name": "sampled"}), client_app=recording_app, num_supernodes=5,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                            "init_args": {"num_cpus": 2, "num_gpus": 0}})
    finally:
        logging.getLogger("flwr").removeHandler(handler)
    results = json.loads((tmp_path / "sampled" / "results.json").read_text())
    nodes = results["nodes"]
    assert len(nodes) == 5
    sample = sorted(nodes, key=lambda b: validation_priority(0, b))[:2]  # seed 0: the two first in the draw
    # What the nodes saw: per round, training on 2 nodes, then validation on the same 2 sampled nodes;
    # at the end the test on all 5.
    rounds: list[dict[str, list[str]]] = []
    for kind, what, building in (line.split(" ", 2) for line in messages.read_text().splitlines()):
        if kind == "train" and (not rounds or rounds[-1]["val"] or rounds[-1]["test"]):
            rounds.append({"train": [], "val": [], "test": []})
        rounds[-1]["train" if kind == "train" else what].append(building)
    assert len(rounds) == 3 and all(len(r["train"]) == 2 for r in rounds)
    assert [sorted(r["val"]) for r in rounds] == [sorted(r["val"]) for r in rounds[:1]] * 3  # the same 2 each round
    assert sorted(rounds[0]["val"]) == sorted(sample) == results["validation_sample"]  # the seeded draw's first 2
    assert [r["test"] for r in rounds[:2]] == [[], []] and sorted(rounds[2]["test"]) == nodes
    # What the run recorded: 2 of 5 nodes behind every validation loss, an estimate; the test over all 5.
    for h in results["history"]:
        entry = h["federations"]["all"]
        assert (entry["val_nodes"], entry["val_of"], entry["val_estimate"]) == (2, 5, True)
        assert "val_missing" not in entry and "val_buildings" not in entry and "val_sample_changed" not in h
    live = [json.loads(line) for line in (tmp_path / "sampled" / "metrics.jsonl").read_text().splitlines()]
    assert [e["federations"]["all"]["val_nodes"] for e in live] == [2, 2, 2]
    assert results["test_buildings"] == {"all": nodes} and results["test_missing"] == []
    # Logged as one: once at the draw, then in every round's line.
    assert any(line.startswith("validation: a fixed sample of 2 of the 5 nodes validates (validation-nodes=2")
               for line in lines)
    rounds_logged = [line for line in lines if line.startswith("[all-in-one] round ")]
    assert len(rounds_logged) == 3
    assert all("(validation on 2 of 5 nodes: an estimate)" in line for line in rounds_logged)
