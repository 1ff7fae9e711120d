#!/usr/bin/env bash
# Set everything up (once) and run the main job: MAS with 2 splits on sdnkt over a synthetic
# federation of 6 buildings, generated on first use under $MAS_FLOWER_HOME (default ~/mas-flower).
# Extra arguments go to `flwr run` (e.g. --run-config "method='fedavg' num-rounds=20").
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/flwr ] || ! .venv/bin/python -c "import mas_flower" 2>/dev/null; then
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1   # from this machine's disk
    .venv/bin/pip install -q -e '.[dev]'
fi
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export MAS_FLOWER_HOME="${MAS_FLOWER_HOME:-$HOME/mas-flower}"
NODES="${MAS_FLOWER_NODES:-6}"
exec .venv/bin/mas-flower run --nodes "$NODES" -- "$@"
