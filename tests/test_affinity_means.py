"""Affinity means on asymmetric matrices (A[i→j] ≠ A[j→i]) and unequal counts, so that a transpose, a
column-major reshape or an unweighted mean fails: one client's batches, then the server's clients."""

from __future__ import annotations

import numpy as np
from flwr.app import Message, Metadata, MetricRecord, RecordDict

from mas_flower.affinity import AffinityAccumulator
from mas_flower.strategy import protocol as P
from mas_flower.strategy.replies import affinity_mean


def test_a_clients_mean_keeps_each_direction_in_its_cell() -> None:
    acc = AffinityAccumulator("sdk")
    first = np.array([[0.0, 0.3, -0.6], [0.1, 0.0, 0.9], [-0.2, 0.4, 0.0]])  # row i, column j: A[i→j]
    acc.add(first)
    acc.add(3 * first)
    assert acc.count == 2
    np.testing.assert_allclose(acc.mean(), 2 * first)  # (1 + 3) / 2 = 2 times each cell, not its mirror


def _reply(count: int, flat: list[float]) -> Message:
    meta = Metadata(run_id=1, message_id="", src_node_id=2, dst_node_id=1, reply_to_message_id="x",
                    group_id="", created_at=0.0, ttl=60.0, message_type="train")
    metrics = MetricRecord({P.NUM_EXAMPLES: 100 // count, P.AFFINITY: flat, P.AFFINITY_COUNT: count})
    return Message(content=RecordDict({P.METRICS: metrics}), metadata=meta)


def test_the_server_weights_row_major_matrices_by_lookahead_counts() -> None:
    # Two tasks; on the wire A is row-major: [A00, A01, A10, A11]. Client 1: A[0→1] = 0.4, A[1→0] = 0.1,
    # 3 lookahead batches; client 2: 0.8 and -0.3, 1 batch; client 3 measured nothing.
    replies = [_reply(3, [0.0, 0.4, 0.1, 0.0]), _reply(1, [0.0, 0.8, -0.3, 0.0]),
               Message(content=RecordDict({P.METRICS: MetricRecord({P.NUM_EXAMPLES: 7})}),
                       metadata=_reply(1, []).metadata)]
    # A[0→1] = (3·0.4 + 1·0.8) / 4 = 0.5; A[1→0] = (3·0.1 − 1·0.3) / 4 = 0 (unweighted: 0.6 and −0.1)
    np.testing.assert_allclose(affinity_mean(replies, 2), [[0.0, 0.5], [0.0, 0.0]], atol=1e-12)
    assert affinity_mean(replies[2:], 2) is None


def test_the_server_reads_a_three_task_matrix_row_by_row() -> None:
    flat = [0.0, 1.0, 2.0, 3.0, 0.0, 5.0, 6.0, 7.0, 0.0]  # A[0→2] = 2, A[2→0] = 6
    matrix = affinity_mean([_reply(2, flat)], 3)
    np.testing.assert_array_equal(matrix, [[0, 1, 2], [3, 0, 5], [6, 7, 0]])
