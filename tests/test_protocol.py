"""The typed message contract: each instruction written by the server is read back by the client field for
field, under the keys users and Flower's own strategies know (`lr`, `local-epochs`, `proximal-mu`), and a
message missing a key is refused naming it."""

from __future__ import annotations

import dataclasses

import pytest
from flwr.app import ConfigRecord

from mas_flower.strategy import protocol as P

DATA = {"data_root": "/data/taskonomy", "all_tasks": "sdnkt", "image_size": 64, "model": "xception"}


def test_a_train_instruction_travels_as_its_keys_and_comes_back_whole() -> None:
    sent = P.TrainInstruction(**DATA, server_round=7, lr=0.043, local_epochs=3, batch_size=16, gradnorm_alpha=1.5,
                              affinity_mode="first_order", affinity_first_epoch_only=True, precision="bf16",
                              measure_energy=True, energy_country="DE", energy_intensity=312.5)
    record = ConfigRecord(sent.to_record())
    assert dict(record) == {"data-root": "/data/taskonomy", "all-tasks": "sdnkt", "image-size": 64, "model": "xception",
                            "server-round": 7, "lr": 0.043, "local-epochs": 3, "batch-size": 16,
                            "gradnorm-alpha": 1.5, "affinity-mode": "first_order",
                            "affinity-first-epoch-only": True, "precision": "bf16", "measure-energy": True,
                            "energy-country": "DE", "energy-intensity": 312.5}
    assert P.TrainInstruction.from_record(record) == sent


def test_a_federations_instruction_reads_flowers_own_proximal_mu_and_ignores_keys_it_does_not_know() -> None:
    ours = P.FederationTrain(federation="sd", tasks="sd", weighting="gradnorm", affinity_every=2, seed=11)
    assert ours.proximal_mu == 0.0 and ours.to_record()[P.PROXIMAL_MU] == 0.0
    # What Flower's FedProx passes on: our record, its μ over ours, and its own server-round.
    theirs = {**ours.to_record(), P.PROXIMAL_MU: 0.25, "server-round": 4}
    read = P.FederationTrain.from_record(theirs)
    assert read == dataclasses.replace(ours, proximal_mu=0.25)
    # A message from a server that sends no μ (Flower's FedAvg): 0, as documented.
    assert P.FederationTrain.from_record({k: v for k, v in theirs.items() if k != P.PROXIMAL_MU}).proximal_mu == 0.0


def test_values_are_converted_to_the_fields_types() -> None:
    """A float-valued key sent as an int (TOML `lr = 1`) still reads as a float; counts stay ints."""
    record = {"data-root": "r", "all-tasks": "s", "image-size": 32.0, "model": "tiny", "split": "test",
              "batch-size": 8, "precision": "auto"}
    read = P.EvaluateInstruction.from_record(record)
    assert (read.image_size, type(read.image_size), read.task_metrics) == (32, int, False)


def test_the_best_constants_travel_one_key_per_task_and_only_for_the_federations_tasks() -> None:
    sent = P.FederationEvaluate("dk", "dk", {"d": [0.25], "k": [0.5]})
    record = sent.to_record()
    assert record == {"federation": "dk", "tasks": "dk", "constant-d": [0.25], "constant-k": [0.5]}
    assert P.FederationEvaluate.from_record(record) == sent
    # A constant of a task the federation does not hold is not read into it.
    assert P.FederationEvaluate.from_record({**record, "tasks": "d"}).constants == {"d": [0.25]}


@pytest.mark.parametrize(("cls", "missing"), [(P.TrainInstruction, "local-epochs"), (P.InfoQuery, "data-root"),
                                              (P.FederationTrain, "affinity-every"), (P.EvaluateInstruction, "split")])
def test_a_message_missing_a_key_is_refused_naming_it(cls: type[P.Instruction], missing: str) -> None:
    full = {**{k.replace("_", "-"): v for k, v in DATA.items()}, "server-round": 1, "lr": 0.1, "local-epochs": 1,
            "batch-size": 4, "gradnorm-alpha": 1.5, "affinity-mode": "exact", "affinity-first-epoch-only": False,
            "precision": "auto", "measure-energy": False, "energy-country": "", "energy-intensity": 0.0,
            "federation": "all", "tasks": "sd", "weighting": "equal", "affinity-every": 0, "split": "val"}
    cls.from_record(full)  # complete: read
    with pytest.raises(ValueError, match=f"{cls.__name__}: the message lacks config key '{missing}'"):
        cls.from_record({k: v for k, v in full.items() if k != missing})


def test_info_sizes_travel_per_split() -> None:
    record = {P.size_key(s): n for s, n in {"train": 40, "val": 4, "test": 6}.items()}
    assert record == {"size-train": 40, "size-val": 4, "size-test": 6}
    assert P.sizes_in({**record, P.BUILDING: "allensville"}) == {"train": 40, "val": 4, "test": 6}
