#!/usr/bin/env bash
# Set up a development environment and run the whole test suite (what CI runs). Extra arguments go to pytest:
#   bash scripts/test.sh -m unit    # the unit tier, about a minute: no training run, no Python subprocess
#   bash scripts/test.sh -m slow    # the end-to-end tier (marked train: the runs trained in-process)
# The markers are listed in pyproject.toml; tests/conftest.py applies them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
if command -v slurmctld >/dev/null && [ "$(id -u)" = 0 ]; then  # the Slurm tests' cluster, stopped on exit
    bash scripts/slurm_local.sh start
    trap 'bash scripts/slurm_local.sh stop' EXIT
fi
# Two workers, one torch thread each: the suite is half subprocess start-ups and Slurm waits, and
# two torch processes with two threads each on two cores slow each other down many times over.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/python -m pytest -q -n 2 --dist loadgroup "$@"
