"""The live metrics file: `<run>/metrics.jsonl`, one JSON line per finished round (`tail -f` follows it).

Each line is the round's history entry (phase, round, lr, sampled buildings, per-network train and
validation losses and affinity, seconds, the round's TFLOPs and MB) plus the run's totals so far
(`train_tflops_so_far`, `comm_mb_so_far`, ...). `mas-flower report` draws an unfinished run from it.
Light on purpose (no torch, no Flower): the report reads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LIVE_FILE = "metrics.jsonl"


def append_live(run_dir: Path, record: Mapping[str, Any], totals: Mapping[str, float]) -> None:
    """Append one round: `record` and `totals` (e.g. `Accounts.totals()`) as `<key>_so_far`."""
    line = {**record, **{f"{k}_so_far": v for k, v in totals.items()}}
    with open(Path(run_dir) / LIVE_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def read_live(run_dir: Path) -> list[dict[str, Any]]:
    """The rounds in `<run_dir>/metrics.jsonl`, in order. A torn line (a run killed mid-write) is
    skipped; a round written twice (killed before its checkpoint, then resumed) keeps its last line."""
    path = Path(run_dir) / LIVE_FILE
    if not path.is_file():
        return []
    rounds: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        rounds[int(entry.get("round", len(rounds) + 1))] = entry
    return [rounds[r] for r in sorted(rounds)]
