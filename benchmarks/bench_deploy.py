"""Cost of a deployed round: `deploy-local` on loopback, and the fixed costs of one ClientApp process.

A deployed SuperNode runs every message in a fresh `flwr-clientapp` process, so a deployed round
costs what those processes cost. This prints:

1. per fresh process (median of --repeats new Python processes): importing the ClientApp (torch,
   Flower, ours), opening the building with a full check and from the index saved in the run,
   starting the energy meter without and with the saved hardware probe, and one local epoch of the
   tiny network (its one-time setup apart);
2. per deployment (--repeats runs of MAS-x on --nodes real SuperNodes, tiny network, 32 px): every
   round's seconds by phase, the median merge round (round 1 left out: it also measures the affinity
   and warms every cache) and split round, and split / merge.

    .venv/bin/python benchmarks/bench_deploy.py [--splits 3] [--nodes 3] [--repeats 2] [--views 12]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
PROCESS = r"""
import json, sys, time
t0 = time.perf_counter()
import client_app.app  # noqa: F401  (torch, Flower and ours, as flwr-clientapp loads it)
t1 = time.perf_counter()
from pathlib import Path
from mas_flower.data import clear_memory_cache, list_buildings, open_building
from mas_flower.energy import EnergyMeter
from mas_flower.models import build_model
from mas_flower.training import TrainConfig, train_local
root, cache, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
building = list_buildings(root)[0]
t2 = time.perf_counter()
data = open_building(root, building, "sdk", 32, cache_dir=cache / "data", index_token="bench",
                     reuse_index=mode == "reuse")
t3 = time.perf_counter()
meter = EnergyMeter(probe_cache=cache if mode == "reuse" else None)
meter.start()
t4 = time.perf_counter()
result = train_local(build_model("tiny", "sdk", image_size=32), data.split("train"),
                     TrainConfig(lr=0.1, epochs=1, batch_size=4, num_threads=1))
meter.stop()
print(json.dumps({"import ClientApp": t1 - t0, "open building": t3 - t2, "start energy meter": t4 - t3,
                  "training setup": result.setup_seconds, "one local epoch": result.seconds}))
"""


def process_costs(root: Path, work: Path, repeats: int) -> None:
    rows: dict[str, list[float]] = {}
    for mode in ("check", "reuse"):
        for _ in range(repeats + 1):  # the first "reuse" process saves what the others reuse
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", PROCESS, str(root), str(work / "cache"), mode],
                                 capture_output=True, text=True, check=True, cwd=REPO)
            figures = {**json.loads(out.stdout.strip().splitlines()[-1]), "whole process": time.perf_counter() - t}
            for name, value in figures.items():
                rows.setdefault(f"{name} [{mode}]", []).append(value)
    print(f"fresh-process costs, seconds (median of {repeats} processes; check = full check and probe, "
          "reuse = the run's saved index and the saved hardware probe)")
    for name, values in rows.items():
        print(f"  {name:36s} {statistics.median(values[1:]):7.3f}")


class ClientAppWatch:
    """Samples every `flwr-clientapp` process on this machine (every 0.1 s): when it was first and last
    seen alive and the CPU seconds it had used by then."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, float], list[float]] = {}  # (pid, create time) -> [first, last, cpu]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ClientAppWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            now = time.time()
            for proc in psutil.process_iter(["pid", "cmdline", "create_time", "cpu_times"]):
                cmd = proc.info["cmdline"] or []
                if any(part.endswith("flwr-clientapp") for part in cmd[:2]) and proc.info["cpu_times"]:
                    cpu = proc.info["cpu_times"].user + proc.info["cpu_times"].system
                    entry = self.seen.setdefault((proc.info["pid"], proc.info["create_time"]),
                                                 [proc.info["create_time"], now, cpu])
                    entry[1], entry[2] = now, cpu

    def summary(self) -> str:
        if not self.seen:
            return "no flwr-clientapp process seen"
        lives = [last - first for first, last, _ in self.seen.values()]
        cpus = [cpu for _, _, cpu in self.seen.values()]
        return (f"{len(lives)} flwr-clientapp processes, lifetime median {statistics.median(lives):.1f} s "
                f"(max {max(lives):.1f}), CPU median {statistics.median(cpus):.1f} s")


def deployed_rounds(root: Path, work: Path, args: argparse.Namespace) -> None:
    from mas_flower.tools.deploy import run_deployment

    rounds = args.merge_rounds + args.split_rounds
    ratios = []
    for i in range(args.repeats):
        config = (f"method='mas' task-set='sdk' splits={args.splits} num-rounds={rounds} "
                  f"merge-rounds={args.merge_rounds} affinity-rounds=1 batch-size=4 image-size=32 "
                  f"clients-per-round={args.clients_per_round} output-dir='{work / 'out'}' run-name='bench-{i}'")
        with ClientAppWatch() as watch:
            result = run_deployment(args.nodes, config, data_root=str(root), timeout=1800, out=io.StringIO())
        if result.exit_code != 0:
            raise SystemExit(f"deploy-local failed: {result.error} (logs in {result.deploy_dir})")
        history = json.loads((result.results_dir / "results.json").read_text())["history"]
        merge = [h["seconds"] for h in history if h["phase"] == "merge"]
        split = [h["seconds"] for h in history if h["phase"] != "merge"]
        ratio = statistics.median(split) / statistics.median(merge[1:])
        ratios.append(ratio)
        print(f"run {i}: {watch.summary()}")
        print(f"run {i}: merge rounds {' '.join(f'{s:.1f}' for s in merge)} s; split rounds "
              f"{' '.join(f'{s:.1f}' for s in split)} s; median split {statistics.median(split):.1f} s / "
              f"median merge (without round 1) {statistics.median(merge[1:]):.1f} s = {ratio:.2f}x")
    print(f"MAS-{args.splits}, {args.nodes} SuperNodes, {args.clients_per_round} per round: split / merge round "
          f"{' '.join(f'{r:.2f}x' for r in ratios)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--clients-per-round", type=int, default=2)
    parser.add_argument("--merge-rounds", type=int, default=3)
    parser.add_argument("--split-rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--views", type=int, default=12, help="views per synthetic building (32 px)")
    parser.add_argument("--skip-processes", action="store_true", help="only the deployed rounds")
    parser.add_argument("--skip-deploy", action="store_true", help="only the fresh-process costs")
    args = parser.parse_args()
    from mas_flower.synthetic import generate_dataset

    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        work = Path(tmp)
        os.environ["MAS_FLOWER_HOME"] = str(work / "home")  # fresh caches, ours only
        root = work / "data"
        generate_dataset(root, buildings=max(args.nodes, 2), views=args.views, size=32, seed=0)
        if not args.skip_processes:
            process_costs(root, work, args.repeats)
        if not args.skip_deploy:
            deployed_rounds(root, work, args)


if __name__ == "__main__":
    main()
