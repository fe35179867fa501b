"""One run across several processes: the environment, the data shards and the collectives it needs.

A run started by ``torchrun`` or by Slurm through submitit is N processes running the same
``run(cfg)``. This module reads which process this is (:func:`from_environment`), joins the
process group (NCCL on CUDA, gloo on the CPU), cuts every global batch into disjoint per-rank
shards (:func:`shard_windows`), and offers the few collectives the round loop needs: sums of
scores, one rank's masks on every rank, a check that tensors agree, and a reduced accuracy.

Every collective is a no-op in a single process with no process group, so a run without a
distributed environment behaves exactly as before. Collectives must be called by every rank,
in the same order, with tensors of the same names, shapes and dtypes.
"""

from __future__ import annotations

import os
import socket
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from submitit.helpers import TorchDistributedEnvironment
from torch import Tensor

from rsst.errors import RsstError
from rsst.parallel.stall import CollectiveTimeout, is_timeout, stalled_ranks, timeout_line

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
SUBMITIT_LAUNCHERS = {"slurm": "slurm", "local": "submitit-local"}  # SUBMITIT_EXECUTOR -> DistEnv.launcher
HOSTNAME_BYTES = 256
CHECKSUM_CHUNK = 1 << 22
CHECKSUM_PERIOD = 65521
DEFAULT_TIMEOUT_S = 600.0  # collective_timeout_s: the config's default


class RanksDisagree(RsstError, RuntimeError):
    """Tensors that must be identical on every rank are not."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a run: its rank, its rank on its node, and how to join the others.

    ``launcher`` is ``torchrun``, ``slurm`` or ``submitit-local`` (through submitit) or ``none``; ``backend`` and
    ``init_method`` are ``None`` when the run is a single process.
    """

    rank: int
    local_rank: int
    world_size: int
    backend: str | None
    init_method: str | None
    launcher: str
    device_type: str

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def single_process(device_type: str) -> DistEnv:
    """The environment of a run that is one process: rank 0 of 1, nothing to join."""
    return DistEnv(0, 0, 1, None, None, "none", device_type)


def from_environment(device_type: str) -> DistEnv:
    """Read this process's place in the run from ``torchrun``'s or submitit's Slurm variables.

    ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``; a task started by submitit on Slurm has ``SUBMITIT_EXECUTOR=slurm`` and
    Slurm's ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS`` and node list, from which
    submitit derives the first host and a port shared by the job's tasks (submitit's local
    executor, ``hydra/launcher=local``, is read the same way, on this host). With neither, or with
    a world of one process, the run is a single process. The backend is NCCL when
    ``device_type`` is ``cuda`` and gloo otherwise.
    """
    backend = "nccl" if device_type == "cuda" else "gloo"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        values = {name: os.environ.get(name) for name in TORCHRUN_VARS}
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise ValueError(f"torchrun environment: {', '.join(missing)} not set; expected all of {TORCHRUN_VARS}")
        rank, world_size, local_rank = (_env_int(name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        _env_int("MASTER_PORT")
        launcher, init_method = "torchrun", "env://"
    elif os.environ.get("SUBMITIT_EXECUTOR") in SUBMITIT_LAUNCHERS:
        tasks = TorchDistributedEnvironment()
        rank, world_size, local_rank = tasks.rank, tasks.world_size, tasks.local_rank
        launcher = SUBMITIT_LAUNCHERS[os.environ["SUBMITIT_EXECUTOR"]]
        init_method = f"tcp://{tasks.master_addr}:{tasks.master_port}"
    else:
        return single_process(device_type)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(
            f"{launcher} environment: rank {rank}, local rank {local_rank}, world size {world_size}; "
            "expected 0 <= rank < world size and local rank >= 0"
        )
    if world_size == 1:
        return DistEnv(0, 0, 1, None, None, launcher, device_type)
    return DistEnv(rank, local_rank, world_size, backend, init_method, launcher, device_type)


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer") from None


def local_device(env: DistEnv) -> torch.device:
    """This rank's device: the GPU of its local rank on CUDA, ``device_type`` otherwise.

    A task that sees a single GPU (Slurm binding one GPU per task) uses that one.
    """
    if env.device_type != "cuda":
        return torch.device(env.device_type)
    count = torch.cuda.device_count()
    if count == 1:
        return torch.device("cuda", 0)
    if env.local_rank >= count:
        raise ValueError(f"local rank {env.local_rank} has no GPU: this node shows {count}; start <= {count} tasks")
    return torch.device("cuda", env.local_rank)


def init_process_group(env: DistEnv, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Join the run's process group (NCCL on CUDA, gloo on the CPU); a single process does nothing.

    ``timeout_s`` bounds the wait to join and every collective after (``collective_timeout_s``).
    """
    if not env.is_distributed:
        return
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (env.rank, env.world_size):
            raise RuntimeError(
                f"a process group is already set up as rank {dist.get_rank()} of {dist.get_world_size()}, "
                f"not rank {env.rank} of {env.world_size}"
            )
        return
    if env.backend == "nccl":
        torch.cuda.set_device(local_device(env))
    dist.init_process_group(
        env.backend,
        init_method=env.init_method,
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(seconds=timeout_s),
    )


def destroy_process_group() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(env: DistEnv, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[DistEnv]:
    """Join the process group for the duration of a ``with`` block, and leave it after.

    A collective that times out (a rank stopped, or its node lost) ends the block with
    :class:`CollectiveTimeout`, whose one line names the ranks that did not answer.
    """
    init_process_group(env, timeout_s)
    try:
        yield env
    except RuntimeError as exc:
        if not env.is_distributed or not is_timeout(exc):
            raise
        stalled = stalled_ranks(env.rank, env.world_size, timeout_s)
        raise CollectiveTimeout(timeout_line(env.rank, env.world_size, timeout_s, stalled)) from None
    finally:
        destroy_process_group()


def is_writer(env: DistEnv) -> bool:
    """Whether this process writes the run folder: rank 0 only."""
    return env.rank == 0


def active() -> bool:
    """Whether this process is in a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    """Where a tensor must live for the default group's backend (the current GPU under NCCL)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank gets here (after rank 0 wrote something the others read)."""
    if active():
        dist.barrier()


def shard_windows(n: int, batch_size: int, rank: int, world_size: int) -> list[slice]:
    """This rank's positions in each global batch of an epoch of ``n`` samples.

    Global batch ``b`` holds positions ``[b * batch_size, min((b + 1) * batch_size, n))`` of the
    epoch's order, as in a single process. Rank ``r`` of ``W`` takes the contiguous part
    ``[b * batch_size + r * s // W, b * batch_size + (r + 1) * s // W)`` of a batch of ``s``
    samples, so the ranks' parts are disjoint and their union is the global batch. A full batch
    must split evenly (``batch_size`` divisible by ``W``); the last, partial batch is split as
    evenly as it goes (parts differ by at most one sample and may be empty), and every rank has
    the same number of steps. Weight losses with :func:`loss_scale` so the ranks' averaged
    gradients equal the single-process gradient.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size}: expected 0 <= rank < world size")
    if batch_size < 1 or batch_size % world_size:
        raise ValueError(
            f"train.batch_size={batch_size} does not split over {world_size} processes: the batch size is the "
            f"global batch, so expected a positive multiple of the world size {world_size}"
        )
    if n < 0:
        raise ValueError(f"n={n}: expected a number of samples >= 0")
    windows = []
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        windows.append(slice(start + rank * size // world_size, start + (rank + 1) * size // world_size))
    return windows


def shard_indices(order: Tensor, batch_size: int, rank: int, world_size: int) -> list[Tensor]:
    """This rank's sample indices for each step of an epoch whose seeded global order is ``order``.

    Step ``b``'s indices over all ranks are exactly ``order[b * batch_size:(b + 1) * batch_size]``;
    see :func:`shard_windows` for the split and the last partial batch.
    """
    return [order[window] for window in shard_windows(len(order), batch_size, rank, world_size)]


def shard_range(n: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous share of ``n`` samples for evaluation (no gradient, so any batch size).

    Shares differ by at most one sample; their union is ``range(n)``. Reduce with
    :func:`reduce_accuracy`.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size}: expected 0 <= rank < world size")
    return slice(rank * n // world_size, (rank + 1) * n // world_size)


Shard = tuple[int, int]  # (rank, world size)


def batch_windows(n: int, batch_size: int, shard: Shard | None = None, evaluation: bool = False) -> list[slice]:
    """The positions, in an epoch's order of ``n`` samples, of each batch this process takes.

    Without ``shard``: batch ``b`` is ``[b * batch_size, (b + 1) * batch_size)`` (the last one
    shorter). With ``shard=(rank, world_size)``: for training, rank ``r``'s part of every global
    batch (:func:`shard_windows`, the same number of steps on every rank); for ``evaluation``,
    the rank's contiguous share of the split (:func:`shard_range`) cut into batches of
    ``batch_size``, as no gradient ties the ranks' steps together.
    """
    if shard is None:
        return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    rank, world_size = shard
    if not evaluation:
        return shard_windows(n, batch_size, rank, world_size)
    share = shard_range(n, rank, world_size)
    return [slice(start, min(start + batch_size, share.stop)) for start in range(share.start, share.stop, batch_size)]


def loss_scale(global_size: int, world_size: int) -> float:
    """Factor for the SUM of this rank's per-sample losses in a step whose global batch holds ``global_size``.

    DistributedDataParallel averages gradients over the ``W`` ranks, so each rank's loss
    ``sum_i l_i * W / global_size`` averages to the single-process mean loss over the global
    batch, even where the last batch's shards are uneven or empty (an empty shard's sum is 0).
    """
    if global_size < 1:
        raise ValueError(f"global batch of {global_size} samples: expected at least 1")
    return world_size / global_size


def _flat_groups(tensors: Iterable[Tensor]) -> Iterator[tuple[list[Tensor], Tensor]]:
    """Tensors grouped by (device, dtype), each group with one flat buffer of its values."""
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        yield group, torch.cat([t.detach().reshape(-1) for t in group])


def _unflatten_into(group: list[Tensor], flat: Tensor) -> None:
    with torch.no_grad():
        for t, part in zip(group, flat.split([t.numel() for t in group]), strict=True):
            t.copy_(part.view_as(t))


def all_reduce_sum_(tensors: Iterable[Tensor]) -> None:
    """Replace every tensor by its sum over the ranks, in place (one collective per dtype and device)."""
    if not active():
        return
    for group, flat in _flat_groups(tensors):
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        _unflatten_into(group, flat)


def broadcast_masks_(masks: Mapping[str, Tensor], src: int = 0) -> None:
    """Overwrite every rank's masks with rank ``src``'s, in place (same names and shapes on every rank)."""
    if not active():
        return
    for group, flat in _flat_groups(masks[name] for name in sorted(masks)):
        dist.broadcast(flat, src=src)
        _unflatten_into(group, flat)


def checksum(t: Tensor) -> tuple[int, int]:
    """Two integer sums of the bytes of ``t``: plain, and weighted by position (mod 65521, plus one).

    Exact and independent of summation order, so equal tensors give equal sums on any rank;
    any single changed byte changes both, and a moved one changes the weighted sum.
    """
    data = t.detach().contiguous().reshape(-1).view(torch.uint8)
    plain = weighted = 0
    for offset in range(0, data.numel(), CHECKSUM_CHUNK):
        chunk = data[offset : offset + CHECKSUM_CHUNK].to(torch.int64)
        weight = (torch.arange(offset, offset + chunk.numel(), device=chunk.device) % CHECKSUM_PERIOD) + 1
        plain += int(chunk.sum())
        weighted += int((chunk * weight).sum())
    return plain % (1 << 62), weighted % (1 << 62)


def _signature(name: str, t: Tensor) -> int:
    return zlib.crc32(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())


def check_identical(tensors_by_name: Mapping[str, Tensor], what: str) -> None:
    """Raise :class:`RanksDisagree` on every rank, naming the first tensor that differs between ranks.

    Each rank gathers every rank's names, shapes, dtypes and :func:`checksum` of each tensor,
    so the comparison moves a few integers per tensor, not the tensors. ``what`` names the
    set in the message (e.g. ``"round 2 masks"``).
    """
    if not active():
        return
    names = list(tensors_by_name)
    world_size, device = dist.get_world_size(), _comm_device()
    count = torch.tensor([len(names)], dtype=torch.int64, device=device)
    counts = [torch.empty_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    if len(set(sizes)) > 1:
        raise RanksDisagree(f"{what}: the ranks hold different numbers of tensors ({sizes} on ranks 0, 1, ...)")
    rows = torch.tensor(
        [[_signature(n, tensors_by_name[n]), *checksum(tensors_by_name[n])] for n in names],
        dtype=torch.int64,
        device=device,
    ).reshape(len(names), 3)
    gathered = [torch.empty_like(rows) for _ in range(world_size)]
    dist.all_gather(gathered, rows)
    table = torch.stack(gathered).cpu()
    for i, name in enumerate(names):
        for rank in range(1, world_size):
            if not torch.equal(table[rank, i], table[0, i]):
                part = "name, shape or dtype" if table[rank, i, 0] != table[0, i, 0] else "values"
                raise RanksDisagree(f"{what}: {name!r} differs between rank 0 and rank {rank} ({part})")


def reduce_accuracy(correct: int | Tensor, seen: int) -> float:
    """Top-1 accuracy in percent over every rank's evaluated samples: ``100 * sum(correct) / sum(seen)``.

    Every rank returns the same number (integer counts are summed exactly).
    """
    counts = torch.tensor([int(correct), int(seen)], dtype=torch.int64)
    if active():
        counts = counts.to(_comm_device())
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    total_correct, total_seen = (int(c) for c in counts)
    if total_seen < 1:
        raise ValueError(f"accuracy over {total_seen} samples: expected at least one evaluated sample")
    return 100.0 * total_correct / total_seen


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank, answered identically on every rank.

    For decisions every rank must take together: a stop requested by a signal that reached
    one rank first, or a refusal on rank 0 (say, the run-folder lock) that the others must
    follow rather than wait in the next collective.
    """
    if not active():
        return flag
    votes = torch.tensor([int(flag)], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    return bool(votes.item())


def hostnames() -> list[str]:
    """The sorted distinct host names of the run's processes (for provenance); a collective."""
    own = socket.gethostname()
    if not active():
        return [own]
    encoded = own.encode()[:HOSTNAME_BYTES]
    buffer = torch.zeros(HOSTNAME_BYTES, dtype=torch.uint8)
    buffer[: len(encoded)] = torch.tensor(list(encoded), dtype=torch.uint8)
    buffer = buffer.to(_comm_device())
    gathered = [torch.empty_like(buffer) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, buffer)
    return sorted({bytes(g.cpu().tolist()).rstrip(b"\0").decode(errors="replace") for g in gathered})
