"""A round's cost against the federation's size: the same short runs at N = 10, 100, 1,000 buildings.

Only the number of simulated buildings changes (`mas-flower run --nodes N` with
`synthetic-buildings=N`); the work a round asks of its clients does not (clients-per-round K fixed).
For each N this generates the synthetic federation once under its own `MAS_FLOWER_HOME`
(`<work>/n<N>`, timed: "data s", "reused" when already there), decodes every building into the
clients' cache (timed: "decode s"; with a warm cache only the opening), so that no run pays it and the
runs compare, then runs, through the real launcher
(`python -m mas_flower run`, Flower's simulation engine), FedAvg (2 rounds, `--fedavg-rounds`) and MAS-2 (4 rounds,
2 merged; --methods) on task set `sd`, 8 views of 32 px per building, K = 10 per round, and prints
per N and method:

- run wall s: `wall_seconds` of results.json (the ServerApp's training and test, not Flower's start-up);
  launcher s: the whole `mas-flower run` command;
- disc s: discovery (from the ServerApp's data-root line to its "federation: N nodes" line: waiting for
  the nodes, one query to each); test s: the final test (from the last round's line to the results line);
- s/round: median of results.json's per-round `seconds`, the first round left out (it warms every
  cache); r1 s: the first round;
- train s: the clients' local training seconds (`client_train_seconds`), MB: traffic (`comm_mb`);
- server MB: peak resident memory of the ServerApp's process (in simulation the ServerApp runs in
  `flwr-simulation`, which also drives Ray), from Linux's VmHWM (else the peak of samples every
  0.25 s); tree MB: the peak of the summed RSS of every process of the run (launcher, SuperLink,
  simulation, Ray and its actors; sampled, shared pages counted once per process);
  actor MB: the largest peak RSS of one Ray ClientApp actor.

    .venv/bin/python benchmarks/bench_scale.py [--nodes 10,100,1000] [--with-5000] [--methods fedavg,mas]
        [--clients-per-round 10] [--fedavg-rounds 2] [--work /tmp/mas-bench-scale] [--run-config "validation-nodes=0"]

`--run-config` adds `key=value` pairs to every run's config (after the ones above), e.g.
`validation-nodes=0` to validate on every node as before validation was sampled (default: 100 nodes).

Each run's log is `<work>/n<N>/<method>.log`. N = 1,000 takes minutes per run on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
#: Run config shared by every run; {n} is the number of buildings, {k} the clients per round.
BASE = ("task-set='sd' clients-per-round={k} synthetic-views=8 synthetic-size=32 image-size=32 "
        "synthetic-buildings={n} seed=0")
METHODS = {
    "fedavg": "method='fedavg' num-rounds={rounds}",
    "mas": "method='mas' splits=2 num-rounds=4 merge-rounds=2 affinity-rounds=1",
}
MB = 1e6


def run_config(method: str, n: int, k: int, rounds: int = 2) -> str:
    return f"{METHODS[method].format(rounds=rounds)} {BASE.format(n=n, k=k)}"


def _hwm_bytes(pid: int) -> int:
    """Linux's peak resident set (VmHWM) of `pid`, in bytes; 0 where /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class TreeMemory:
    """Samples a process tree every `every` s: the peak RSS of its `flwr-simulation` process (the
    ServerApp's), of its largest Ray ClientApp actor, and of the tree's summed RSS."""

    def __init__(self, root_pid: int, every: float = 0.25) -> None:
        self.root, self.every = psutil.Process(root_pid), every
        self.server = self.actor = self.tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            total = 0
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    cmd = " ".join(proc.cmdline()[:2])
                except psutil.Error:
                    continue
                total += rss
                if "flwr-simulation" in cmd:
                    self.server = max(self.server, rss, _hwm_bytes(proc.pid))
                elif "ClientAppActor" in cmd:
                    self.actor = max(self.actor, rss, _hwm_bytes(proc.pid))
            self.tree = max(self.tree, total)


def prepare(home: Path, n: int, k: int) -> tuple[float | None, float]:
    """Generate N buildings under `home` (None: already there) and decode them into its cache, timed."""
    os.environ["MAS_FLOWER_HOME"] = str(home)  # read by settings.home() on every call
    from mas_flower.data import clear_memory_cache, list_buildings, open_building
    from mas_flower.defaults import load_settings, synthetic_root
    from mas_flower.settings import home as mas_home
    from mas_flower.synthetic import generate_dataset, is_complete

    settings = load_settings(_pairs(run_config("fedavg", n, k)))
    root = synthetic_root(settings)
    generated = None
    if not is_complete(root):
        t = time.perf_counter()
        generate_dataset(root, buildings=n, views=settings.synthetic_views, size=settings.synthetic_size,
                         seed=settings.seed)  # default workers: every core for many buildings
        generated = time.perf_counter() - t
    t = time.perf_counter()
    for building in list_buildings(root):  # as the ClientApp opens it: the run's tasks, size and cache
        open_building(root, building, settings.task_set, settings.image_size, cache_dir=mas_home() / "cache")
        clear_memory_cache()  # each kept memory map holds a file descriptor: N = 5,000 ran out of them
    return generated, time.perf_counter() - t


def _pairs(config: str) -> dict[str, Any]:
    """`key=value` pairs of a run-config string as Python values (quoted strings, ints)."""
    out: dict[str, Any] = {}
    for item in config.split():
        key, value = item.split("=", 1)
        out[key] = value.strip("'") if value.startswith("'") else int(value)
    return out


#: Log lines timed by run_once: the ServerApp's data root (just before it waits for the nodes and asks
#: each for its building), the discovery's summary, each round's line (the last one kept), the results line
#: (after the final test).
MARKERS = {"settings": re.compile(r"no data-root given"), "federation": re.compile(r"federation: \d+ nodes"),
           "last round": re.compile(r"\] round \d+/\d+ "), "results": re.compile(r"== .*: results in ")}


def _between(seen: dict[str, float], start: str, end: str) -> float:
    return seen[end] - seen[start] if start in seen and end in seen else float("nan")


def run_once(home: Path, method: str, n: int, k: int, extra: str = "", rounds: int = 2) -> dict[str, Any]:
    """One `mas-flower run` at N nodes, `extra` run-config pairs added; its figures (see the module doc)."""
    out_dir = Path(tempfile.mkdtemp(prefix=f"{method}-", dir=home))
    config = f"{run_config(method, n, k, rounds)} {extra} output-dir='{out_dir}'"
    cmd = [sys.executable, "-m", "mas_flower", "run", "--nodes", str(n), "--flwr-home",
           str(home / "flwr" / out_dir.name), "--", "--run-config", config]
    env = {**os.environ, "MAS_FLOWER_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    log = home / f"{method}.log"
    t = time.perf_counter()
    seen: dict[str, float] = {}  # marker -> seconds since the start when its (last) line came
    with open(log, "w") as f, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                               cwd=REPO, text=True) as proc, TreeMemory(proc.pid) as memory:
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            for marker, pattern in MARKERS.items():
                if pattern.search(line) and (marker not in seen or marker == "last round"):
                    seen[marker] = time.perf_counter() - t
        code = proc.wait()
    launcher = time.perf_counter() - t
    found = sorted(out_dir.glob("*/results.json"))
    if code != 0 or not found:
        raise SystemExit(f"N={n} {method}: `mas-flower run` exited {code} without results.json; log: {log}")
    results = json.loads(found[0].read_text())
    seconds = [h["seconds"] for h in results["history"]]
    return {"wall": results["wall_seconds"], "launcher": launcher, "round1": seconds[0],
            "per_round": statistics.median(seconds[1:]) if len(seconds) > 1 else float("nan"),
            "train": results["client_train_seconds"], "mb": results["comm_mb"],
            "discovery": _between(seen, "settings", "federation"), "test": _between(seen, "last round", "results"),
            "server_mb": memory.server / MB, "tree_mb": memory.tree / MB, "actor_mb": memory.actor / MB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="10,100,1000", help="comma-separated federation sizes")
    parser.add_argument("--with-5000", action="store_true", help="also N = 5,000")
    parser.add_argument("--methods", default="fedavg,mas", help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--fedavg-rounds", type=int, default=2, help="FedAvg's rounds (s/round: the median of "
                        "all but the first)")
    parser.add_argument("--run-config", default="", help="key=value pairs added to every run's config, e.g. "
                        "validation-nodes=0")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mas-bench-scale",
                        help="one MAS_FLOWER_HOME per N below it (data kept and reused)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.nodes.split(",")] + ([5000] if args.with_5000 else [])
    methods = args.methods.split(",")
    if unknown := [m for m in methods if m not in METHODS]:
        parser.error(f"unknown method(s) {unknown}: use {', '.join(METHODS)}")
    if bad := [n for n in sizes if n < args.clients_per_round]:
        parser.error(f"N={bad} is below --clients-per-round={args.clients_per_round}")
    header = (f"{'N':>6} {'method':7} {'data s':>7} {'decode s':>8} {'wall s':>7} {'launch s':>8} {'disc s':>6} "
              f"{'r1 s':>6} {'s/round':>7} {'test s':>6} {'train s':>7} {'MB':>8} {'server MB':>9} {'tree MB':>8} "
              f"{'actor MB':>8}")
    rows = []
    for n in sizes:
        home = (args.work / f"n{n}").resolve()
        home.mkdir(parents=True, exist_ok=True)
        generated, decoded = prepare(home, n, args.clients_per_round)
        data = "reused" if generated is None else f"{generated:.1f}"
        for method in methods:
            r = run_once(home, method, n, args.clients_per_round, args.run_config, args.fedavg_rounds)
            rows.append(f"{n:>6} {method:7} {data:>7} {decoded:8.1f} {r['wall']:7.1f} {r['launcher']:8.1f} "
                        f"{r['discovery']:6.1f} {r['round1']:6.2f} {r['per_round']:7.2f} {r['test']:6.1f} "
                        f"{r['train']:7.2f} {r['mb']:8.1f} {r['server_mb']:9.0f} {r['tree_mb']:8.0f} "
                        f"{r['actor_mb']:8.0f}")
            print(rows[-1], flush=True)
    print(f"\nK = {args.clients_per_round} clients per round, task set sd, 8 views of 32 px per building; "
          f"{psutil.cpu_count()} CPUs" + (f"; also {args.run_config}" if args.run_config else ""))
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
