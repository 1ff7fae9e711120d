"""`mas-flower bench SUITE.yaml`: run every (task set, method, seed) of a suite through Flower, then
tabulate it (summary.csv, summary.md).

The output folder is `--output`, else the suite's `output` key, else `$MAS_FLOWER_HOME/bench/<suite
file name>`. Each run is one `flwr run` (`mas_flower.tools.launch`) into `<output>/runs/<run name>/`; a run counts as
done when its results.json exists, so an interrupted suite resumes where it stopped (a folder
without results.json is moved to `<output>/incomplete/` and the run redone). A failed run is
recorded in `<output>/bench-status.json` and the others go on; the exit code is 1 if any failed.

Flower isolation: the suite uses its own FLWR_HOME (`<output>/.flwr`) and its own free ports for
the managed SuperLink (`mas_flower.tools.launch.own_superlink`), so it neither touches the user's Flower
config nor reuses (or is broken by) a SuperLink someone else started. The SuperLink it started is
stopped at the end by PID, found by that FLWR_HOME path in its command line.

Every run's config is validated as its ServerApp will validate it before the first run starts.
SIGINT or SIGTERM stops the running run and all its processes (`mas_flower.tools.launch.stop_on_signals`),
says where its folder and checkpoint are, and exits 130 / 143.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import tomli_w
from filelock import FileLock, Timeout

from mas_flower.results import RESULTS_FILE, write_json
from mas_flower.tools.launch import Stopped, check_app_dir, launch, own_superlink, resume_hint, stop_on_signals
from mas_flower.tools.suite import RunSpec, Suite, SuiteError, load_suite
from mas_flower.tools.summary import load_runs, oracle_rank_text, summarise, timing, write_summary

STATUS_FILE = "bench-status.json"


def run_suite(path: Path, dry_run: bool = False, output: Path | None = None) -> int:
    """Validate the suite and every run's config, then (unless `dry_run`) run what is not done yet and
    write the summary. `output` overrides the suite's output folder. Returns 0, 1 if a run failed, or
    128 + the signal number after SIGINT/SIGTERM (the running run stopped with all its processes)."""
    suite = load_suite(path, check_data=not dry_run, output=output)
    runs = suite.runs()
    check_runs(suite, runs)
    if dry_run:
        print(f"{path}: {len(runs)} runs into {suite.runs_dir} ({suite.nodes} nodes, data {suite.dataset_root()})")
        for k, run in enumerate(runs, 1):
            done = " (done)" if (suite.runs_dir / run.name / RESULTS_FILE).is_file() else ""
            print(f"  {k}/{len(runs)} {run.name}{done}")
        return 0
    check_app_dir()
    _check_gpus(suite)
    suite.output.mkdir(parents=True, exist_ok=True)
    with stop_on_signals():
        try:
            return _run_suite(suite, runs)
        except Stopped as stop:
            _say_stopped(suite, stop)
            return stop.exit_code


def _run_suite(suite: Suite, runs: list[RunSpec]) -> int:
    with _lock(suite.output):
        _prepare_data(suite)
        with own_superlink(suite.flwr_home) as env:
            failed = _run_all(suite, runs, env)
        finished = [suite.runs_dir / r.name for r in runs if (suite.runs_dir / r.name / RESULTS_FILE).is_file()]
        if finished:
            loaded = load_runs(finished)
            csv_path, md_path = write_summary(suite.output, loaded, [m.label for m in suite.methods])
            print(f"summary: {csv_path} and {md_path}")
            print(summary_lines(loaded, [m.label for m in suite.methods]))
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed: " + ", ".join(f"{n} ({s})" for n, s in failed.items()))
    return 1 if failed else 0


def check_runs(suite: Suite, runs: list[RunSpec]) -> None:
    """Validate the exact run config each run's ServerApp will get (`Suite.run_config_for` over the
    app's defaults); raise SuiteError listing every run that would be refused, before any starts."""
    from mas_flower.defaults import load_settings

    problems = []
    for run in runs:
        try:
            load_settings(suite.run_config_for(run))
        except ValueError as err:
            problems.append(f"{suite.path}: run {run.name}: {err}")
    if problems:
        raise SuiteError("\n".join(problems))


def _say_stopped(suite: Suite, stop: Stopped) -> None:
    """After SIGINT/SIGTERM: which run was stopped, where its checkpoint is, how to go on."""
    print(f"bench stopped by {stop.name}" + (f" during run {stop.run_id}" if stop.run_id is not None else ""))
    if stop.run_dir is not None:
        print(resume_hint(stop.run_dir, stop.last_round, suite.nodes, run_sh=False))
    print(f"to go on with the suite: mas-flower bench {suite.path} --output {suite.output} (finished runs are kept; "
          f"an unfinished one is redone from the start unless resumed first as above)")


def _run_all(suite: Suite, runs: list[RunSpec], env: dict[str, str]) -> dict[str, str]:
    status_path = suite.output / STATUS_FILE
    statuses = json.loads(status_path.read_text()) if status_path.is_file() else {}
    (suite.output / "logs").mkdir(exist_ok=True)
    todo = [r for r in runs if not (suite.runs_dir / r.name / RESULTS_FILE).is_file()]
    print(f"suite {suite.path}: {len(runs)} runs, {len(runs) - len(todo)} done earlier, {len(todo)} to run")
    started, durations, failed = time.monotonic(), [], {}
    for k, run in enumerate(runs, 1):
        run_dir = suite.runs_dir / run.name
        if (run_dir / RESULTS_FILE).is_file():
            print(f"[{k}/{len(runs)}] {run.name}: done earlier, kept")
            continue
        if run_dir.exists():
            _move_aside(run_dir, suite.output / "incomplete")
        log = suite.output / "logs" / f"{run.name}.log"
        print(f"[{k}/{len(runs)}] {run.name}: running (log {log})", flush=True)
        t0 = time.monotonic()
        try:
            run_id, status = _launch(suite, run, env, log)
        except Stopped as stop:
            stop.run_dir = stop.run_dir or run_dir
            statuses[run.name] = {"status": f"stopped by {stop.name}", "run_id": stop.run_id,
                                  "seconds": round(time.monotonic() - t0, 1), "log": str(log)}
            write_json(status_path, statuses)
            print(f"[{k}/{len(runs)}] {run.name}: stopped by {stop.name}; " + "; ".join(stop.report), flush=True)
            raise
        if status == "finished:completed" and not (run_dir / RESULTS_FILE).is_file():
            status = f"{status} but no {RESULTS_FILE} in {run_dir}"
        seconds = time.monotonic() - t0
        durations.append(seconds)
        statuses[run.name] = {"status": status, "run_id": run_id, "seconds": round(seconds, 1), "log": str(log)}
        write_json(status_path, statuses)
        if status != "finished:completed":
            failed[run.name] = status
        else:
            print(f"[{k}/{len(runs)}] {run.name}: " + run_line(json.loads((run_dir / RESULTS_FILE).read_text()),
                                                               seconds), flush=True)
        left = sum(1 for r in runs[k:] if not (suite.runs_dir / r.name / RESULTS_FILE).is_file())
        eta = sum(durations) / len(durations) * left
        print(f"[{k}/{len(runs)}] {run.name}: {status} in {_hms(seconds)} | elapsed "
              f"{_hms(time.monotonic() - started)}, ETA {_hms(eta)} ({left} left)", flush=True)
    return failed


def run_line(results: dict, launch_seconds: float | None = None) -> str:
    """One finished run in a line: total test loss, compute share (`mas_flower.tools.summary.timing`), client
    seconds, TFLOPs, MB; the fixed costs of its `flwr run`: the seconds outside the ServerApp (start-up:
    Flower, Ray, the apps; shut-down) when `launch_seconds` (the whole `flwr run`) is given, and how much
    longer its first round took than the median of the others; and an oracle's rank of MAS's choice."""
    t = timing(results)
    parts = [f"total test loss {results['total_test_loss']:.4f}"]
    if t:
        parts.append(f"compute share {100 * t['compute_share']:.0f}% (client s: {t['steady_client_seconds']:.1f} "
                     f"after warm-up, {t['warmup_client_seconds']:.1f} warm-up round, "
                     f"{results.get('client_setup_seconds') or 0.0:.1f} set-up)")
    else:
        parts.append(f"client s {results['client_train_seconds']:.1f}")
    if results.get("train_tflops") is not None:
        parts.append(f"{results['train_tflops']:.3g} train TFLOPs, {results.get('comm_mb', 0.0):.4g} MB")
    fixed = []
    if launch_seconds is not None:
        fixed.append(f"{launch_seconds - results['wall_seconds']:.0f} s outside the ServerApp")
    rounds = [float(h["seconds"]) for h in results.get("history") or [] if "seconds" in h]
    if len(rounds) > 1:
        fixed.append(f"first round +{rounds[0] - statistics.median(rounds[1:]):.1f} s over the median round")
    if fixed:
        parts.append("fixed: " + ", ".join(fixed))
    if (rank := oracle_rank_text(results)) is not None:
        parts.append(rank)
    return "; ".join(parts)


def summary_lines(runs: list, method_order: list[str]) -> str:
    """The summary's timing and compute per method (mean ± std over seeds), as bench prints it."""
    def cell(stat: tuple[float, float] | None, scale: float = 1.0, unit: str = "", digits: int = 4) -> str:
        return "-" if stat is None else f"{scale * stat[0]:.{digits}g}{unit} ± {scale * stat[1]:.2g}{unit}"

    lines = ["method (task set, runs): total test loss | compute share | client s after warm-up | train TFLOPs | MB"]
    for row in summarise(runs, method_order):
        extra = row.extra.get
        lines.append(f"  {row.method} ({row.task_set}, {row.runs}): {cell(row.total)} | "
                     f"{cell(extra('compute_share'), 100, '%', 2)} | {cell(extra('steady_client_seconds'))} | "
                     f"{cell(extra('train_tflops'))} | {cell(extra('comm_mb'))}")
    return "\n".join(lines)


def _launch(suite: Suite, run: RunSpec, env: dict[str, str], log: Path) -> tuple[int | None, str]:
    """One `flwr run`, its output into `log`; never raises for a failed run (returns its status)."""
    config = write_run_config(suite, run, log)
    with log.open("w") as f, contextlib.redirect_stdout(f):
        try:
            return launch(suite.nodes, suite.cpus_per_node, suite.gpus_per_node, ["--run-config", str(config)], env)
        except Exception as err:  # a run that could not start or report: record it and go on
            print(f"launch failed: {type(err).__name__}: {err}")
            return None, f"error: {type(err).__name__}: {err}".splitlines()[0]


def write_run_config(suite: Suite, run: RunSpec, log: Path) -> Path:
    """The run's config as a TOML file beside its log, for `flwr run --run-config FILE`.

    A file, not `key=value` text: flwr's text parser cannot carry every string (a path with spaces
    and both kinds of quotes); a TOML file carries any value intact.
    """
    path = log.with_name(f"{log.stem}.run-config.toml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(suite.run_config_for(run)), encoding="utf-8")
    return path


def _prepare_data(suite: Suite) -> None:
    if suite.synthetic is None:
        return
    from mas_flower.synthetic import generate_dataset

    s, root = suite.synthetic, suite.synthetic_dir()
    print(f"synthetic data: {root} (generated once, reused)", flush=True)
    generate_dataset(root, buildings=s["buildings"], views=s["views"], size=s["size"], seed=s["seed"],
                     workers=min(os.cpu_count() or 1, s["buildings"]))


def _check_gpus(suite: Suite) -> None:
    if suite.gpus_per_node > 0:
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"{suite.path}: gpus_per_node: {suite.gpus_per_node:g} but this machine has no CUDA "
                             "GPU (the simulation would wait forever); set it to 0 here")


def _move_aside(run_dir: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    k = 1
    while (target := dest / f"{run_dir.name}.{k}").exists():
        k += 1
    shutil.move(str(run_dir), target)
    print(f"  {run_dir} had no {RESULTS_FILE} (an interrupted run): moved to {target}, redoing it")


@contextlib.contextmanager
def _lock(output: Path) -> Iterator[None]:
    """Refuse a second bench on the same output folder while one runs (an OS file lock: a killed
    bench holds it no more)."""
    lock = FileLock(output / ".bench.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ValueError(f"{output}: another `mas-flower bench` is running this suite "
                         f"(it holds {lock.lock_file})") from None
    try:
        yield
    finally:
        lock.release()


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


if __name__ == "__main__":
    sys.exit(run_suite(Path(sys.argv[1]), dry_run="--dry-run" in sys.argv))
