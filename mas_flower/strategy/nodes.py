"""Waiting for enough connected nodes before a run starts.

In simulation Flower registers all `num-supernodes` nodes at once, just after the ServerApp starts,
so the node count is known as soon as it stops growing: too few nodes fail at once. In deployment
SuperNodes connect when they come up, so the wait lasts up to `node-timeout`, logged every
`LOG_EVERY` seconds (not every poll).
"""

from __future__ import annotations

import time
from logging import INFO

from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid

#: Seconds between "waiting for nodes" log lines in deployment.
LOG_EVERY = 15.0
#: Seconds the simulated node count must stay the same to count as complete (Flower registers the
#: nodes in one loop, microseconds apart).
SETTLE = 0.5
POLL = 0.1


def wait_for_nodes(grid: Grid, need: int, timeout: float) -> list[int]:
    """Sorted ids of the connected nodes once there are `need`; ValueError naming clients-per-round if not.

    Simulation (Flower's in-memory grid): raises as soon as the registered count is known to be short.
    Deployment: waits up to `timeout` seconds.
    """
    simulation = isinstance(grid, InMemoryGrid)
    start = time.monotonic()
    last_log = last_change = -LOG_EVERY
    count = -1
    while True:
        ids = sorted(grid.get_node_ids())
        now = time.monotonic() - start
        if len(ids) >= need:
            return ids
        if len(ids) != count:
            count, last_change = len(ids), now
        if simulation and ids and now - last_change >= SETTLE:
            raise ValueError(f"clients-per-round={need} but only {len(ids)} nodes are simulated "
                             "(num-supernodes): lower clients-per-round or simulate more nodes")
        if now >= timeout:
            raise ValueError(f"clients-per-round={need} but only {len(ids)} nodes are connected "
                             f"after node-timeout={timeout:g} s")
        if not simulation and now - last_log >= LOG_EVERY:
            log(INFO, "waiting for nodes: %d connected, %d needed (up to node-timeout=%g s)", len(ids), need, timeout)
            last_log = now
        time.sleep(POLL if simulation else 1.0)
