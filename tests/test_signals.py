"""Runs stop when asked: real SIGINT (Ctrl-C: the whole process group) and SIGTERM (`kill` of
./run.sh) sent to a real `mas-flower run` after its first round; the run, its SuperLink and Ray are
gone within seconds, and the output names the checkpoint and the `resume=` run-config."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from mas_flower.strategy.checkpoint import CHECKPOINT_FILE
from mas_flower.tools.launch import APP_DIR
from tests.flower_processes import pids_with_arg, stop_trees

CLI = str(APP_DIR / ".venv" / "bin" / "mas-flower")
#: Seconds the stopped command may take to exit (the work: `flwr stop`, SIGTERM, SIGKILL after 3 s).
EXIT_WITHIN = 15.0


def _run_config(data: Path, out: Path) -> str:
    """A fedavg run far longer than the test (500 rounds of tiny steps), on 2 nodes."""
    return (f"method='fedavg' task-set='sd' num-rounds=500 clients-per-round=2 batch-size=4 image-size=32 "
            f"data-root='{data}' output-dir='{out}'")


class Running:
    """A command started in its own session, its output collected by a thread."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(cmd, env=env, cwd=APP_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self.first_round = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if re.search(r"\] round 1/500 ", line):
                self.first_round.set()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
        except psutil.Error:
            pass
    return out


def _stop_and_check(run: Running, send: signal.Signals, to_group: bool, marker: str) -> tuple[int, float]:
    """Wait for round 1, snapshot the run's processes, send the signal; return (exit code, seconds to exit)
    after checking that no process of the run (nor any naming `marker`) is left."""
    try:
        assert run.first_round.wait(240), f"no round 1 logged in 240 s:\n{run.text[-3000:]}"
        tree = run.descendants()
        assert len(tree) >= 5, [p.cmdline()[:3] for p in tree]  # flwr run, SuperLink, SuperExec, ServerApp, Ray
        t0 = time.monotonic()
        (os.killpg if to_group else os.kill)(run.proc.pid, send)
        try:
            code = run.proc.wait(EXIT_WITHIN + 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_WITHIN + 30:g} s after {send.name}:\n{run.text[-3000:]}")
        seconds = time.monotonic() - t0
        time.sleep(0.5)
        assert not pids_with_arg(marker), f"processes naming {marker} left after {send.name}"
        assert not _alive(tree), f"processes of the run left after {send.name}: {_alive(tree)}"
        return code, seconds
    finally:  # a failing test must not leave its Flower processes behind
        if run.proc.poll() is None:
            run.proc.kill()
        stop_trees([p.pid for p in psutil.Process().children(recursive=True)] + pids_with_arg(marker), grace=3)


def _check_resume_hint(text: str, send: signal.Signals) -> None:
    """The output names the run folder, its checkpoint, and the exact resume= run-config for it."""
    run_dir = Path(re.search(r"run folder: (.+?)\s*$", text, re.M).group(1))
    assert f"stopped by {send.name}: run " in text
    assert (run_dir / CHECKPOINT_FILE).is_file()
    assert f"checkpoint: {run_dir / CHECKPOINT_FILE} (last round logged: all-in-one " in text
    assert f"to resume, run with the run-config: resume='{run_dir}'\n" in text
    assert f"./run.sh --run-config \"resume='{run_dir}'\"\n" in text
    assert "Traceback" not in text


def test_ctrl_c_stops_the_run_its_superlink_and_ray(private_homes, tiny_federation: Path, tmp_path: Path) -> None:
    """SIGINT to the process group (what Ctrl-C does) of `mas-flower run` in its first rounds: exit 130
    within seconds, nothing of the run left, the resume hint printed."""
    flwr_home = (tmp_path / "flwr").resolve()
    run = Running([CLI, "run", "--nodes", "2", "--flwr-home", str(flwr_home), "--", "--run-config",
                   _run_config(tiny_federation, tmp_path / "out")], dict(os.environ))
    code, seconds = _stop_and_check(run, signal.SIGINT, to_group=True, marker=str(flwr_home))
    assert code == 130, run.text[-3000:]
    assert seconds < EXIT_WITHIN, f"exit took {seconds:.1f} s"
    text = run.text
    assert re.search(r"^run \d+ stopped \(`flwr stop \d+`", text, re.M), text[-2000:]
    _check_resume_hint(text, signal.SIGINT)
    assert f"mas-flower run --nodes 2 -- --run-config \"resume='{tmp_path / 'out'}/" in text


def test_kill_of_run_sh_stops_the_run(tiny_federation: Path, tmp_path: Path) -> None:
    """SIGTERM to ./run.sh alone (`kill PID`; it execs `mas-flower run`): exit 143, nothing left."""
    home = (tmp_path / "home").resolve()
    env = {**os.environ, "MAS_FLOWER_HOME": str(home), "MAS_FLOWER_NODES": "2"}
    run = Running([str(APP_DIR / "run.sh"), "--run-config", _run_config(tiny_federation, tmp_path / "out")], env)
    code, seconds = _stop_and_check(run, signal.SIGTERM, to_group=False, marker=str(home))
    assert code == 143, run.text[-3000:]
    assert seconds < EXIT_WITHIN, f"exit took {seconds:.1f} s"
    assert f"FLWR_HOME={home}/flwr/run-" in run.text  # the run's own SuperLink lived under MAS_FLOWER_HOME
    _check_resume_hint(run.text, signal.SIGTERM)


def test_resume_hint_quotes_the_folder_as_flwr_and_the_shell_read_it(tmp_path: Path) -> None:
    """Each of the hint's cases, by hand: no folder yet, no checkpoint yet, a folder with a quote in its
    name (TOML basic string, then single-quoted for the shell), a finished run."""
    from mas_flower.tools.launch import parse_run_config_args, resume_hint

    assert resume_hint(None) == "the ServerApp had not named a run folder yet: nothing to resume (start the run again)"
    run_dir = tmp_path / "it's a run"
    run_dir.mkdir()
    assert resume_hint(run_dir) == (f"run folder: {run_dir}; no checkpoint yet (no round had ended): nothing to "
                                    "resume, start it again")
    (run_dir / CHECKPOINT_FILE).write_bytes(b"")
    hint = resume_hint(run_dir, "merge 3/20", nodes=3, run_sh=False).splitlines()
    assert hint[:3] == [f"run folder: {run_dir}", f"checkpoint: {run_dir / CHECKPOINT_FILE} (last round logged: "
                        "merge 3/20)", f"to resume, run with the run-config: resume=\"{run_dir}\""]
    assert len(hint) == 4 and hint[3].startswith("  mas-flower run --nodes 3 -- --run-config ")
    word = subprocess.run(["bash", "-c", f"printf %s {hint[3].split('--run-config ')[1]}"], capture_output=True,
                          text=True, check=True).stdout  # what the shell hands to flwr
    assert parse_run_config_args([word]) == {"resume": str(run_dir)}  # what flwr reads
    (run_dir / "results.json").write_text("{}")
    assert resume_hint(run_dir) == f"run folder: {run_dir} (finished: results.json is there)"
