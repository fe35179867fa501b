"""``provenance.json``: where, with what and how a run was made (written at start, updated at each resume)."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from rsst.folder.atomic import atomic_write_json
from rsst.folder.layout import RunFiles

PACKAGES = ("torch", "torchvision", "hydra-core", "omegaconf", "submitit", "wandb", "rsst")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_state(where: Path | None = None) -> dict[str, Any] | None:
    """The commit and dirtiness of the checkout that holds the ``rsst`` package, if it is one."""
    where = where or Path(__file__).resolve().parents[2]
    if not (where / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "count": torch.cuda.device_count()}
    return {"type": device.type, "name": cpu_model(), "count": os.cpu_count()}


def collect(device: torch.device, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """This process's provenance: code, versions, device, host, command line and Slurm job."""
    slurm = {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID") if k in os.environ}
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_state(),
        "versions": {"python": platform.python_version(), **{p: _version(p) for p in PACKAGES}},
        "device": device_info(device),
        "host": socket.gethostname(),
        "command": [sys.executable, *sys.argv],
        "slurm_job_id": slurm.get("SLURM_JOB_ID"),
        **({"slurm": slurm} if slurm else {}),
        **(extra or {}),
    }


def record_start(run_dir: Path, device: torch.device, resumed: bool, extra: dict[str, Any] | None = None) -> None:
    """Write ``provenance.json``: the first start's record, and one entry per start (resumes included)."""
    path = RunFiles(run_dir).provenance
    now = collect(device, extra)
    previous: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            previous = {}
    if not isinstance(previous, dict):  # a record replaced by another JSON value: this start begins it anew
        previous = {}
    starts = previous.get("starts") if resumed and isinstance(previous.get("starts"), list) else []
    keys = ("time", "host", "command", "slurm_job_id", "git", "device", "processes")
    starts.append({k: now[k] for k in keys if k in now})
    first = previous.get("created") if isinstance(previous.get("created"), dict) else now
    atomic_write_json(path, {**now, "created": first if resumed else now, "starts": starts})
