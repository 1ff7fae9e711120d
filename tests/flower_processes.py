"""Finding and stopping the Flower processes a test started (by PID, never by name alone)."""

from __future__ import annotations

import socket

from mas_flower.tools.processes import pids_with_arg, stop_trees

__all__ = ["pids_with_arg", "port_in_use", "stop_process_group"]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def stop_process_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM `pid` (e.g. the SuperLink) and every process it spawned, then SIGKILL what is left."""
    stop_trees([pid], grace=timeout)
