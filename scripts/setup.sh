#!/usr/bin/env bash
# Create .venv and install rsst into it (idempotent). With --dev: also pytest/ruff and the
# system packages the tests use (Debian's dataset-fashion-mnist and a Slurm cluster's daemons),
# when run as root with apt.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# The torch/torchvision pair first: on x86_64 the tested pair, elsewhere whatever pyproject's ranges allow.
if [ "$(uname -m)" = "x86_64" ] && ! .venv/bin/python -c 'import torch, torchvision' 2>/dev/null; then
    # That pair is a CUDA build, about 5.6 GB unpacked: say so up front rather than let pip die
    # half-way with "No space left on device".
    need_gb=7
    free_gb=$(( $(df -Pk .venv | awk 'NR==2 {print $4}') / 1024 / 1024 ))
    if [ "$free_gb" -lt "$need_gb" ]; then
        echo "setup: torch==2.14.1 + torchvision==0.29.1 need about $need_gb GB free for .venv;" \
             "$(df -Ph .venv | awk 'NR==2 {print $6}') has $free_gb GB. Free some space and rerun." >&2
        exit 1
    fi
    "${pip[@]}" torch==2.14.1 torchvision==0.29.1
fi

if [ "$dev" = 1 ]; then
    "${pip[@]}" -e '.[dev]'
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        if [ ! -d /usr/share/datasets/fashion-mnist ]; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
        fi
        bash scripts/slurm_local.sh install
    fi
else
    "${pip[@]}" -e .
fi
echo "rsst is installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
