"""Run the app in Flower's simulation engine in a process of its own (tests kill it to crash a run).

Usage: python -m tests.run_sim '<json run-config overrides>' <num nodes>
"""

from __future__ import annotations

import json
import sys

from tests.test_app_simulation import run_app

if __name__ == "__main__":
    run_app(json.loads(sys.argv[1]), num_supernodes=int(sys.argv[2]))
