"""Where a run computes, resolved once: the device, this process's place in the run, and the precision.

:func:`resolve_runtime` reads ``device``, ``train.amp`` and the launcher's environment (``torchrun`` or
Slurm through submitit) and returns a :class:`Runtime` that the rest of the run only reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rsst.errors import ConfigError
from rsst.parallel import dist
from rsst.parallel.dist import DistEnv
from rsst.runtime.execution import resolve_device
from rsst.runtime.precision import resolve_amp_name


@dataclass(frozen=True)
class Precision:
    """``train.amp`` as asked (``requested``), as this machine runs it (``resolved``), and why."""

    requested: str
    resolved: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"requested": self.requested, "resolved": self.resolved, "reason": self.reason}


@dataclass(frozen=True)
class Runtime:
    """The device, the process environment and the precision of one process of a run."""

    device: torch.device
    env: DistEnv
    precision: Precision

    @property
    def writer(self) -> bool:
        """Rank 0 writes the run folder; the others only compute."""
        return dist.is_writer(self.env)

    @property
    def shard(self) -> tuple[int, int] | None:
        """(rank, world size) in a multi-process run, else None."""
        return (self.env.rank, self.env.world_size) if self.env.is_distributed else None


def resolve_runtime(device: str, amp: str | bool, batch_size: int, from_launcher: bool = True) -> Runtime:
    """The runtime of ``device``/``train.amp``; a process of a multi-process run uses its local rank's GPU.

    ``train.batch_size`` (``batch_size``), the global batch, must split evenly over the processes.
    ``from_launcher=False`` ignores the launcher's variables (one process, as the unit tests build loops).
    """
    resolved = resolve_device(device)
    try:
        env = dist.from_environment(resolved.type) if from_launcher else dist.single_process(resolved.type)
        if env.is_distributed:
            dist.shard_windows(0, int(batch_size), env.rank, env.world_size)
            resolved = dist.local_device(env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    name, reason = resolve_amp_name(amp, resolved)
    return Runtime(resolved, env, Precision(str(amp), name, reason))
