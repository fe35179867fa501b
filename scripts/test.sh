#!/usr/bin/env bash
# Set up a development environment and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
if command -v slurmctld >/dev/null && [ "$(id -u)" = 0 ]; then  # the Slurm tests' cluster, stopped on exit
    bash scripts/slurm_local.sh start
    trap 'bash scripts/slurm_local.sh stop' EXIT
fi
.venv/bin/python -m pytest -q "$@"
