"""Run the app locally with `flwr run` (managed SuperLink, simulation) and report how it really ended.

`flwr run --stream` exits 0 even when the ServerApp crashed, so after streaming the logs this asks
the SuperLink for the run's final status and exits non-zero unless it completed. It only shells out
to the `flwr` command; the library itself never imports Flower.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[1]
RUN_ID = re.compile(r"Successfully started run (\d+)")


def flwr_command() -> str:
    candidate = Path(sys.executable).with_name("flwr")
    return str(candidate) if candidate.exists() else "flwr"


def run_status(run_id: int, env: dict[str, str] | None = None) -> str:
    """The run's status string from the SuperLink, e.g. 'finished:completed' or 'finished:failed'."""
    out = subprocess.run([flwr_command(), "ls", "--run-id", str(run_id), "--format", "json"],
                         capture_output=True, text=True, check=True, env=env, cwd=APP_DIR).stdout
    runs = json.loads(out[out.index("{"):])["runs"]
    return str(runs[0]["status"])


def launch(nodes: int, cpus_per_node: float, gpus_per_node: float, extra: list[str],
           env: dict[str, str] | None = None) -> tuple[int, str]:
    """Start the run, stream its logs, return (run id, final status)."""
    env = dict(env or os.environ)
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    # `flwr run` starts `flower-superlink` by name: make this environment's scripts findable.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    federation = f"num-supernodes={nodes} client-resources-num-cpus={cpus_per_node:g} " \
                 f"client-resources-num-gpus={gpus_per_node:g}"
    cmd = [flwr_command(), "run", str(APP_DIR), "--stream", "--federation-config", federation, *extra]
    run_id = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=APP_DIR) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if run_id is None and (m := RUN_ID.search(line)):
                run_id = int(m.group(1))
    if run_id is None:
        raise RuntimeError(f"`{' '.join(cmd)}` did not start a run (exit code {proc.returncode})")
    return run_id, run_status(run_id, env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=6, help="simulated SuperNodes (one building each)")
    parser.add_argument("--cpus-per-node", type=float, default=1.0)
    parser.add_argument("--gpus-per-node", type=float, default=0.0)
    parser.add_argument("extra", nargs="*", help="further `flwr run` arguments (after --)")
    args = parser.parse_args(argv)
    run_id, status = launch(args.nodes, args.cpus_per_node, args.gpus_per_node, args.extra)
    print(f"run {run_id}: {status}")
    return 0 if status == "finished:completed" else 1


if __name__ == "__main__":
    sys.exit(main())
