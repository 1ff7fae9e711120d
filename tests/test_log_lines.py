"""Flower's per-federation lines that contradict ours ("Sampled 4 nodes (out of 4)" in a federation of
6, one "Received" line per federation) are dropped; every other Flower line passes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import FLOWER_LOGGER
from flwr.serverapp.strategy import FedAvg

from mas_flower import protocol as P
from mas_flower.strategy.federations import INNER_STRATEGY_LINES
from tests.test_federated_arithmetic import in_a_run  # noqa: F401 (a fixture)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def flower_lines():
    handler = Lines()
    FLOWER_LOGGER.addHandler(handler)
    FLOWER_LOGGER.addFilter(INNER_STRATEGY_LINES)
    yield handler.lines
    FLOWER_LOGGER.removeHandler(handler)
    FLOWER_LOGGER.removeFilter(INNER_STRATEGY_LINES)


@pytest.mark.usefixtures("in_a_run")
def test_flowers_received_line_is_dropped_and_others_pass(flower_lines: list[str]) -> None:
    replies = [Message(RecordDict({P.ARRAYS: ArrayRecord({"w": Array(np.ones(2, dtype=np.float32))}),
                                   P.METRICS: MetricRecord({P.NUM_EXAMPLES: n})}), dst_node_id=i, message_type="train")
               for i, n in ((1, 2), (2, 3))]
    FedAvg(weighted_by_key=P.NUM_EXAMPLES, arrayrecord_key=P.ARRAYS).aggregate_train(1, replies)
    FLOWER_LOGGER.info("configure_train: Sampled %s nodes (out of %s)", 4, 4)
    FLOWER_LOGGER.info("configure_evaluate: Sampled %s nodes (out of %s)", 6, 6)
    FLOWER_LOGGER.info("Starting Flower ServerApp")
    assert flower_lines == ["Starting Flower ServerApp"]
