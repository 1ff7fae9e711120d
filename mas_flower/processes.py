"""Start processes in their own sessions and stop exactly them, with everything they spawned.

Flower's SuperLink starts its SuperExec in a new session (so killing the SuperLink's process group
misses it) and SuperExecs start the app processes. The set below therefore follows parent links in
/proc from the processes it started, remembers every descendant it ever saw (pid + start time, so a
reused pid is never signalled), and stops them all: SIGTERM, a grace period, then SIGKILL. Linux only.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) of a live pid from /proc, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return rest[0], int(rest[1]), int(rest[19])


def process_alive(pid: int, starttime: int | None = None) -> bool:
    """True if `pid` runs (zombies count as dead) and, when given, is the process started at `starttime`."""
    stat = proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return starttime is None or stat[2] == starttime


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the launcher dies without cleaning up (e.g. SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Started:
    """One process this set started (its own session and process group) and where its output goes."""

    name: str
    popen: subprocess.Popen
    log: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> bool:
        return self.popen.poll() is not None


class ProcessSet:
    """The processes of one deployment and all their descendants; `pid_file` always lists them."""

    def __init__(self, pid_file: Path) -> None:
        self.pid_file = pid_file
        self.started: list[Started] = []
        self.seen: dict[int, dict[str, Any]] = {}  # pid -> {"starttime", "name", "cmd"}
        self.state: dict[str, Any] = {"launcher_pid": os.getpid(), "phase": "starting"}

    def start(self, name: str, cmd: list[str], env: dict[str, str], log: Path, cwd: Path,
              stdout_pipe: bool = False, **info: Any) -> Started:
        """Start `cmd` in a new session, output to `log` (or a pipe the caller drains)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as sink:
            popen = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE if stdout_pipe else sink, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        proc = Started(name, popen, log, dict(info))
        self.started.append(proc)
        self._remember(popen.pid, name)
        self.refresh()
        return proc

    def _remember(self, pid: int, name: str) -> None:
        stat = proc_stat(pid)
        if stat is None:
            return
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = ""
        self.seen[pid] = {"pid": pid, "starttime": stat[2], "name": name, "cmd": cmd}

    def refresh(self) -> None:
        """Record every live descendant of the started processes, then rewrite the pid file."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (stat := proc_stat(int(entry.name))) is not None:
                children.setdefault(stat[1], []).append(int(entry.name))
        # From every live process already known, so that orphans (reparented to init when their parent
        # died) still lead to the processes they start.
        todo = [(pid, rec["name"]) for pid, rec in self.seen.items() if process_alive(pid, rec["starttime"])]
        while todo:
            parent, name = todo.pop()
            for pid in children.get(parent, []):
                known = self.seen.get(pid)
                if known is None or not process_alive(pid, known["starttime"]):
                    self._remember(pid, name if name.endswith(" child") else f"{name} child")
                    todo.append((pid, name))
        self.write()

    def set_phase(self, phase: str, **extra: Any) -> None:
        self.state.update(phase=phase, **extra)
        self.write()

    def write(self) -> None:
        payload = {**self.state, "started": [{"name": p.name, "pid": p.pid, **p.info} for p in self.started],
                   "processes": list(self.seen.values())}
        tmp = self.pid_file.with_name(f".{self.pid_file.name}.tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, self.pid_file)

    def alive(self) -> list[int]:
        """Pids of this set (started or descendant) that still run."""
        return [pid for pid, rec in self.seen.items() if process_alive(pid, rec["starttime"])]

    def stop(self, grace: float) -> list[int]:
        """SIGTERM everything, SIGKILL what is left after `grace` seconds; return pids that survived both."""
        self.refresh()
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for proc in self.started:  # whole process groups first: catches children not yet seen
                if proc.popen.poll() is None:  # our own unreaped child: its pid cannot have been reused
                    _signal(lambda s, p=proc.pid: os.killpg(p, s), sig)
            for pid in self.alive():
                _signal(lambda s, p=pid: os.kill(p, s), sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                for proc in self.started:
                    proc.popen.poll()  # reap our own children so they do not linger as zombies
                if not self.alive():
                    break
                time.sleep(0.1)
            self.refresh()  # a process may have spawned another before it died
        for proc in self.started:
            proc.popen.poll()
        return self.alive()


def _signal(send: Any, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        send(sig)
