"""Silent phases speak: a heartbeat line every few seconds while the synthetic federation is written or
the nodes are first contacted, and never after the step ended."""

from __future__ import annotations

import threading
import time

import pytest
from flwr.common.logger import FLOWER_LOGGER

from mas_flower import heartbeat as hb
from mas_flower.defaults import load_settings
from mas_flower.prepare import prepare_data
from mas_flower.strategy.roster import NodeRoster
from mas_flower.synthetic import generate_dataset
from tests.test_log_lines import Lines
from tests.test_membership_rules import ScriptedGrid, in_a_run  # noqa: F401 (in_a_run: an autouse fixture)


def test_heartbeat_speaks_every_period_while_the_block_runs_and_never_after() -> None:
    said: list[float] = []
    with hb.heartbeat(said.append, every=0.05):
        time.sleep(0.33)
    count = len(said)
    time.sleep(0.15)
    assert len(said) == count, "the heartbeat went on after its block ended"
    assert 3 <= count <= 7, said  # 6 periods fit; a loaded machine may skip some, never add
    assert said == sorted(said) and said[0] >= 0.05 - 1e-3  # elapsed seconds, growing, from the block's start
    assert not any(t.name == "heartbeat" for t in threading.enumerate())


def test_a_short_block_says_nothing_and_a_failing_line_does_not_break_the_step() -> None:
    said: list[float] = []
    with hb.heartbeat(said.append, every=5.0):
        pass
    assert said == []

    def broken(_: float) -> None:
        raise RuntimeError("log handler gone")

    with hb.heartbeat(broken, every=0.01):
        time.sleep(0.05)  # the step finishes normally


@pytest.mark.parametrize("every", [0, -1.0])
def test_a_period_that_is_not_positive_is_refused(every: float) -> None:
    with pytest.raises(ValueError, match="every must be > 0"), hb.heartbeat(lambda _: None, every=every):
        pass


@pytest.mark.parametrize("workers", [1, 2])
def test_generation_reports_each_building_in_order(tmp_path, workers: int) -> None:
    done: list[int] = []
    generate_dataset(tmp_path / "d", buildings=3, views=2, size=16, seed=4, workers=workers, progress=done.append)
    assert done == [1, 2, 3]


def test_generating_the_synthetic_federation_logs_progress(tmp_path, monkeypatch) -> None:
    """prepare_data on a fresh home writes the federation and says how far it got while doing so."""
    monkeypatch.setenv("MAS_FLOWER_HOME", str(tmp_path))
    monkeypatch.setattr(hb, "HEARTBEAT_SECONDS", 0.01)
    settings = load_settings({"synthetic-buildings": 3, "synthetic-views": 4, "synthetic-size": 16})
    handler = Lines()
    FLOWER_LOGGER.addHandler(handler)
    try:
        prepared = prepare_data(settings)
    finally:
        FLOWER_LOGGER.removeHandler(handler)
    beats = [line for line in handler.lines if line.startswith("generating the synthetic federation:")]
    assert beats, handler.lines
    counts = [int(line.split(": ")[1].split(" of ")[0]) for line in beats]
    assert counts == sorted(counts) and all(0 <= c <= 3 for c in counts)
    assert all(" of 3 buildings written (" in line for line in beats)
    assert str(tmp_path) in prepared.data_root


class SlowGrid(ScriptedGrid):
    """Nodes that answer only after `delay` seconds (a first message that starts a process and imports torch)."""

    def __init__(self, nodes: dict[int, str], delay: float) -> None:
        super().__init__(nodes)
        self.ready_at = time.monotonic() + delay

    def pull_messages(self, message_ids):
        return super().pull_messages(message_ids) if time.monotonic() >= self.ready_at else []


def test_waiting_for_the_nodes_first_answers_logs_a_heartbeat(monkeypatch) -> None:
    monkeypatch.setattr(hb, "HEARTBEAT_SECONDS", 0.05)
    grid = SlowGrid({1: "a", 2: "b", 3: "c"}, delay=0.4)
    settings = load_settings({"clients-per-round": 2, "node-timeout": 5.0, "reply-timeout": 5.0})
    handler = Lines()
    FLOWER_LOGGER.addHandler(handler)
    try:
        infos, errors = NodeRoster(settings).query_info(grid, [1, 2, 3], timeout=5.0)
    finally:
        FLOWER_LOGGER.removeHandler(handler)
    assert sorted(i["building"] for i in infos.values()) == ["a", "b", "c"] and not errors
    beats = [line for line in handler.lines if line.startswith("waiting for 3 node(s) to answer")]
    assert len(beats) >= 2, handler.lines  # 0.4 s of waiting, a line every 0.05 s
