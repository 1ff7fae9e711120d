"""Flower's per-federation lines that contradict ours ("Sampled 4 nodes (out of 4)" in a federation of
6, one "Received" line per federation) are dropped; every other Flower line passes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import FLOWER_LOGGER
from flwr.serverapp.strategy import FedAvg

from mas_flower.strategy import protocol as P
from mas_flower.strategy.parallel import INNER_STRATEGY_LINES
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


def test_flowers_hints_on_the_federation_size_are_not_shown_and_our_lines_are() -> None:
    """`flwr run` says the default federation has 2 SuperNodes and how to change it; `mas-flower run`
    sets the size itself (--nodes), so those lines would contradict the "(6 simulated SuperNodes)" line."""
    from mas_flower.tools.launch import shown

    hidden = ["\x1b[93mWARNING \x1b[0m:   Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.",
              "\x1b[92mINFO \x1b[0m:      To change federation size, use the following command:",
              "\x1b[92mINFO \x1b[0m:      \tflwr federation simulation-config @none/default <superlink> "
              "--num-supernodes <N>"]
    kept = ["\x1b[92mINFO \x1b[0m:      Federation `@none/default` (6 simulated SuperNodes)",
            "\x1b[92mINFO \x1b[0m:      [merge] round 1/2  trained on 4 of 6 nodes (a,b,c,d)  val loss all: 8.5944",
            "Successfully started run 8635880483659243303"]
    assert [shown(line) for line in hidden] == [False, False, False]
    assert [shown(line) for line in kept] == [True, True, True]
