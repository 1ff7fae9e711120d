"""A log line every few seconds while a long step that has nothing else to say runs.

Generating the synthetic federation and the first contact with the nodes (each node's first message
starts its process and imports PyTorch) can take minutes on a slow or large federation; a user watching
the log must see within `HEARTBEAT_SECONDS` that the run is alive and what it is waiting for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Seconds between two heartbeat lines (the first comes this long after the step starts).
HEARTBEAT_SECONDS = 10.0


@contextmanager
def heartbeat(say: Callable[[float], None], every: float | None = None) -> Iterator[None]:
    """Call `say(seconds since the block started)` every `every` seconds (default `HEARTBEAT_SECONDS`,
    read at call time) from a daemon thread until the block ends; a block shorter than `every` says
    nothing. An exception raised by `say` is not allowed to stop the step: it ends the heartbeat only.
    """
    period = HEARTBEAT_SECONDS if every is None else every
    if period <= 0:
        raise ValueError(f"heartbeat: every must be > 0 seconds, got {period!r}")
    done = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not done.wait(period):
            try:
                say(time.monotonic() - start)
            except Exception:  # noqa: BLE001 - a broken log line must not break the step it watches
                return

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
