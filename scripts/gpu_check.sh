#!/usr/bin/env bash
# The speed path's GPU checks as one run, for a machine with a CUDA GPU and torch + torchvision:
#   bash scripts/gpu_check.sh --wheels      # here, with pip: fill .whl/ with the pure-Python packages
#   bash scripts/gpu_check.sh [OUT_DIR]     # there: tests and benchmarks, figures into OUT_DIR
# The run takes about six minutes on an H100/H200. It installs .whl/*.whl (hydra-core, omegaconf,
# antlr4, submitit, cloudpickle, tqdm, PyYAML) into a private folder when .whl exists, so nothing
# needs the network there.
# OUT_DIR gets gpu.txt, tests.txt, nccl.txt and bench.jsonl (the benchmark's JSON lines, four runs):
#   1. ResNet-20, batch 128, every loop, the defaults (bf16, channels_last, eager)
#   2. the same, project loops only, train.compile=reduce-overhead (CUDA graphs)
#   3. batch 512, dense and imp, reduce-overhead: the 100,000 images/s target
#   4. 45,000 CIFAR-100-shaped images on the device, rsst: the 4 GiB peak-memory target
# and, where the machine has two GPUs or more, a 2-GPU NCCL smoke run: one RSST run over two
# processes (torchrun), whose ranks must end with identical weights and masks. nccl.txt says
# whether NCCL was exercised, and why not where it was not.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--wheels" ]; then
    python3 -m pip wheel --quiet --no-deps -w .whl \
        hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 submitit==1.5.4 \
        cloudpickle==3.1.3 tqdm==4.70.1
    for py in 3.10 3.11 3.12 3.13; do  # PyYAML is compiled: one wheel per Python the device may have
        python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" \
            --platform manylinux2014_x86_64 -d .whl PyYAML==6.0.4
    done
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    ls .whl
    exit 0
fi
out=${1:-${OUT:-gpu_check_out}}
mkdir -p "$out"
site=$PWD
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --find-links .whl --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/rsst-site hydra-core omegaconf antlr4-python3-runtime submitit \
        cloudpickle tqdm PyYAML
    site=/tmp/rsst-site:$PWD
fi
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 WANDB_MODE=offline
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -rs \
    tests/test_execution.py::test_the_rsst_hot_loop_never_synchronises_with_the_gpu \
    tests/test_regularizer.py::test_penalty_step_does_not_synchronise_with_the_gpu 2>&1 | tee "$out/tests.txt" || true
bench() { python3 benchmarks/train_speed.py --amp bf16 "$@" | tee -a "$out/bench.jsonl"; }
bench --images 20000 --epochs 2
bench --images 20000 --epochs 2 --loops dense,imp,refill,rsst --compile reduce-overhead
bench --images 50000 --epochs 2 --batch-size 512 --loops dense,imp --compile reduce-overhead
bench --images 45000 --classes 100 --epochs 1 --loops rsst

# 2-GPU NCCL smoke: one run over two processes; rank 0 logs the cross-rank check of every round.
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
    rm -rf "$out/ddp"
    if python3 -m torch.distributed.run --standalone --nproc-per-node 2 launch.py device=cuda struct=rsst prune.rounds=2 \
            train.epochs=2 progress=false "paths.root=$out/ddp" > "$out/ddp.log" 2>&1 \
        && grep -q "round 1 end: weights, buffers and masks identical on 2 processes" "$out"/ddp/*/run.log \
        && grep -q '"backend": "nccl"' "$out"/ddp/*/provenance.json; then
        echo "NCCL exercised: a 2-process RSST run on 2 of $gpus GPUs, ranks identical every round" | tee "$out/nccl.txt"
    else
        echo "NCCL smoke FAILED on $gpus GPUs: see ddp.log" | tee "$out/nccl.txt"
        tail -n 30 "$out/ddp.log"
    fi
else
    echo "NCCL not exercised: this machine has $gpus GPU(s); the 2-GPU smoke needs two" | tee "$out/nccl.txt"
fi
