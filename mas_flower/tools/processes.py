"""Start processes in their own sessions and stop exactly them, with everything they spawned.

Flower's SuperLink starts its SuperExec in a new session (so killing the SuperLink's process group
misses it) and SuperExecs start the app processes. The set below therefore follows parent links
(psutil) from the processes it started, remembers every descendant it ever saw (pid + creation
time, so a reused pid is never signalled), and stops them all: SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from mas_flower.files import write_text_atomic

_PR_SET_PDEATHSIG = 1


def _process(pid: int, starttime: float | None = None) -> psutil.Process | None:
    """The live process `pid` (zombies count as dead), only if it was created at `starttime` when given."""
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        if starttime is not None and proc.create_time() != starttime:
            return None
        return proc
    except psutil.Error:
        return None


def process_alive(pid: int, starttime: float | None = None) -> bool:
    """True if `pid` runs (zombies count as dead) and, when given, is the process created at `starttime`
    (`psutil.Process.create_time()`, seconds since the epoch)."""
    return _process(pid, starttime) is not None


def pids_with_arg(fragment: str) -> list[int]:
    """PIDs (other than this one) whose command line contains `fragment`, e.g. a private FLWR_HOME path."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if fragment in cmdline and proc.pid != os.getpid():
            found.append(proc.pid)
    return found


def stop_trees(pids: Iterable[int], grace: float = 10.0) -> list[int]:
    """SIGTERM each pid and all its descendants, SIGKILL what is left after `grace` s; return the pids
    that were signalled (survivors of SIGKILL are not expected: they would be uninterruptible)."""
    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        if (proc := _process(pid)) is not None:
            procs[proc.pid] = proc
            with contextlib.suppress(psutil.Error):
                procs.update({c.pid: c for c in proc.children(recursive=True)})
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5.0)
    return sorted(procs)


class Watch:
    """Every process descended from some roots, remembered (pid + creation time) as it appears.

    A process whose parent dies is reparented to init and no longer found by walking down from the
    roots (Ray's processes, once the simulation that started them is stopped): remembering each one
    while its parent lives is what lets `stop` reach it. Thread-safe: `watching` refreshes it from a
    background thread while the caller streams a run's output.
    """

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}  # pid -> psutil create_time
        self._lock = threading.Lock()

    def add(self, pids: Iterable[int]) -> None:
        """Remember `pids` (those still alive) and all their descendants."""
        for pid in pids:
            if (proc := _process(pid)) is not None:
                self._remember([proc])
                with contextlib.suppress(psutil.Error):
                    self._remember(proc.children(recursive=True))

    def _remember(self, procs: Iterable[psutil.Process]) -> None:
        for proc in procs:
            with contextlib.suppress(psutil.Error), self._lock:
                self.seen.setdefault(proc.pid, proc.create_time())

    def live(self) -> list[psutil.Process]:
        """The remembered processes that still run (a reused pid is not one of them)."""
        with self._lock:
            items = list(self.seen.items())
        return [p for pid, t in items if (p := _process(pid, t)) is not None]

    def refresh(self) -> None:
        """Remember the descendants of every live remembered process (orphans included)."""
        self.add([p.pid for p in self.live()])

    def stop(self, grace: float = 3.0, spare: Iterable[int] = ()) -> list[int]:
        """SIGTERM every live remembered process but those in `spare`, SIGKILL what is left after
        `grace` s (re-walking the tree before each signal: one may have started another); return the
        pids signalled."""
        spared = set(spare)
        signalled: set[int] = set()
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            self.refresh()
            live = [p for p in self.live() if p.pid not in spared]
            for proc in live:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(sig)
            signalled.update(p.pid for p in live)
            _, alive = psutil.wait_procs(live, timeout=wait)
            if not alive and not [p for p in self.live() if p.pid not in spared]:
                break
        return sorted(signalled)


@contextlib.contextmanager
def watching(watch: Watch, roots: Callable[[], Iterable[int]], every: float = 0.5) -> Iterator[Watch]:
    """While inside, add `roots()` (e.g. the pids whose command line names a FLWR_HOME) and their
    descendants to `watch` every `every` seconds, from a daemon thread."""
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            with contextlib.suppress(Exception):  # a process that vanished mid-walk: try again next tick
                watch.add(roots())
                watch.refresh()
            done.wait(every)

    thread = threading.Thread(target=loop, name="process-watch", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        done.set()
        thread.join(timeout=5.0)


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
        self.seen: dict[int, dict[str, Any]] = {}  # pid -> {"pid", "starttime", "name", "cmd"}
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
        if (p := _process(popen.pid)) is not None:
            self._remember(p, name)
        self.refresh()
        return proc

    def _remember(self, proc: psutil.Process, name: str) -> None:
        with contextlib.suppress(psutil.Error):
            self.seen[proc.pid] = {"pid": proc.pid, "starttime": proc.create_time(), "name": name,
                                   "cmd": " ".join(proc.cmdline())}

    def _live(self) -> list[tuple[psutil.Process, str]]:
        return [(p, rec["name"]) for pid, rec in self.seen.items()
                if (p := _process(pid, rec["starttime"])) is not None]

    def refresh(self) -> None:
        """Record every live descendant of the processes seen so far, then rewrite the pid file.

        From every live process already known, so that orphans (reparented to init when their
        parent died) still lead to the processes they start.
        """
        for parent, name in self._live():
            with contextlib.suppress(psutil.Error):
                for child in parent.children(recursive=True):
                    known = self.seen.get(child.pid)
                    if known is None or not process_alive(child.pid, known["starttime"]):
                        self._remember(child, name if name.endswith(" child") else f"{name} child")
        self.write()

    def set_phase(self, phase: str, **extra: Any) -> None:
        self.state.update(phase=phase, **extra)
        self.write()

    def write(self) -> None:
        payload = {**self.state, "started": [{"name": p.name, "pid": p.pid, **p.info} for p in self.started],
                   "processes": list(self.seen.values())}
        write_text_atomic(self.pid_file, json.dumps(payload, indent=2) + "\n")

    def alive(self) -> list[int]:
        """Pids of this set (started or descendant) that still run."""
        return [p.pid for p, _ in self._live()]

    def stop(self, grace: float) -> list[int]:
        """SIGTERM everything, SIGKILL what is left after `grace` seconds; return pids that survived both."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            self.refresh()  # a process may have spawned another since
            for proc in self.started:  # whole process groups first: catches children not yet seen
                if proc.popen.poll() is None:  # our own unreaped child: its pid cannot have been reused
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, sig)
            live = [p for p, _ in self._live()]
            for p in live:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(sig)
            psutil.wait_procs(live, timeout=wait)
            for proc in self.started:
                proc.popen.poll()  # reap our own children so they do not linger as zombies
            if not self.alive():
                break
        self.refresh()
        return self.alive()
