"""BatchNorm running statistics are the clients' example-weighted mean whatever the server strategy:
by hand, bit for bit FedAvg's with FedAvg, and Flower's real FedAvgM, which overshoots them negative."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedAvgM

from mas_flower.strategy import protocol as P
from mas_flower.strategy.bn_statistics import averaged_statistics, is_statistic
from tests.test_federated_arithmetic import in_a_run  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("in_a_run")


def network(var: list[float], weight: list[float], batches: int = 4) -> ArrayRecord:
    return ArrayRecord({"bn.weight": Array(np.array(weight, dtype=np.float32)),
                        "bn.running_mean": Array(np.array([v / 2 for v in var], dtype=np.float32)),
                        "bn.running_var": Array(np.array(var, dtype=np.float32)),
                        "bn.num_batches_tracked": Array(np.array(batches, dtype=np.int64))})


def reply(arrays: ArrayRecord, examples: int, node: int) -> Message:
    return Message(RecordDict({P.ARRAYS: arrays, P.METRICS: MetricRecord({P.NUM_EXAMPLES: examples})}),
                   dst_node_id=node, message_type="train")


def test_statistics_are_named_by_torchs_buffer_names() -> None:
    assert [is_statistic(k) for k in ("enc.1.running_var", "enc.1.running_mean", "bn.num_batches_tracked",
                                      "enc.1.weight", "running_var.weight", "enc.1.bias")] == \
        [True, True, True, False, False, False]


def test_statistics_are_the_example_weighted_mean_and_parameters_stay_the_strategys() -> None:
    replies = [reply(network([1.0, 2.0], [0.0, 0.0], batches=6), 3, 1),
               reply(network([5.0, 10.0], [9.0, 9.0], batches=2), 1, 2)]
    strategy_says = network([-0.5, -7.0], [0.25, -0.75], batches=0)
    out = averaged_statistics(strategy_says, replies)
    # (3 · [1, 2] + 1 · [5, 10]) / 4 = [2, 4]; the means are halves of the variances; (3·6 + 2) / 4 = 5
    np.testing.assert_allclose(out["bn.running_var"].numpy(), [2.0, 4.0])
    np.testing.assert_allclose(out["bn.running_mean"].numpy(), [1.0, 2.0])
    assert float(out["bn.num_batches_tracked"].numpy()) == 5.0
    np.testing.assert_array_equal(out["bn.weight"].numpy(), [0.25, -0.75])
    assert list(out) == list(strategy_says)


def test_with_fedavg_nothing_changes_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    replies = [reply(network(list(rng.random(3) * 3), list(rng.normal(size=3)), batches=int(b)), n, i)
               for i, (n, b) in enumerate([(7, 3), (2, 9), (5, 4)], start=1)]
    fedavg, _ = FedAvg(weighted_by_key=P.NUM_EXAMPLES, arrayrecord_key=P.ARRAYS).aggregate_train(1, replies)
    out = averaged_statistics(fedavg, replies)
    for key in fedavg:
        assert out[key].numpy().tobytes() == fedavg[key].numpy().tobytes(), key


def test_flowers_fedavgm_drives_a_variance_negative_and_the_average_does_not() -> None:
    # The clients' variance settles at 0.05 from any start (their data's), as BatchNorm's does; momentum
    # 0.9 carries the server past it: 1 → 0.05 → -0.8 ... Measured on the default workload the same way.
    strategy = FedAvgM(server_momentum=0.9, server_learning_rate=1.0, weighted_by_key=P.NUM_EXAMPLES,
                       arrayrecord_key=P.ARRAYS)
    strategy.current_arrays = network([1.0], [0.0])
    raw, kept = [], []
    for server_round in (1, 2, 3):
        replies = [reply(network([0.05], [0.1]), 4, 1), reply(network([0.05], [0.3]), 4, 2)]
        aggregate, _ = strategy.aggregate_train(server_round, replies)
        raw.append(float(aggregate["bn.running_var"].numpy()[0]))
        kept.append(float(averaged_statistics(aggregate, replies)["bn.running_var"].numpy()[0]))
    assert min(raw) < 0
    assert kept == pytest.approx([0.05, 0.05, 0.05])


def test_no_examples_is_refused() -> None:
    with pytest.raises(ValueError, match="replies with examples"):
        averaged_statistics(network([1.0], [0.0]), [reply(network([1.0], [0.0]), 0, 1)])
    assert averaged_statistics(ArrayRecord({"w": Array(np.zeros(2))}), []).keys() == {"w"}
