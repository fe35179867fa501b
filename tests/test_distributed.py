"""rsst.parallel.dist: the environment, the batch shards and the collectives of a multi-process run.

The shard arithmetic and the environment parsing are checked in this process; the collectives
run in one real 2-process gloo group started by ``torchrun`` on the CPU (this file is also the
worker: ``python -m torch.distributed.run ... tests/test_distributed.py OUT``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rsst.parallel import ddp as DDP
from rsst.parallel import dist as D

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR")
# (epoch size, global batch, world size): even, uneven and empty last shards, a single batch, no data
SHARD_CASES = [(10, 4, 2), (10, 4, 4), (7, 6, 3), (100, 8, 8), (3, 4, 4), (64, 64, 2), (1, 2, 2), (0, 4, 2)]
DDP_SAMPLES, DDP_BATCH = 11, 8  # two steps on 2 ranks: shards of 4 + 4, then 1 + 2


def seeded_order(n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(n))


@pytest.mark.parametrize(("n", "batch", "world"), SHARD_CASES)
def test_rank_shards_are_disjoint_and_union_to_each_global_batch(n, batch, world):
    order = seeded_order(n)
    shards = [D.shard_indices(order, batch, rank, world) for rank in range(world)]
    steps = -(-n // batch)
    assert [len(s) for s in shards] == [steps] * world
    for b in range(steps):
        union = torch.cat([shards[rank][b] for rank in range(world)])
        assert torch.equal(union, order[b * batch : (b + 1) * batch])
        sizes = [len(shards[rank][b]) for rank in range(world)]
        assert max(sizes) - min(sizes) <= 1
        if (b + 1) * batch <= n:
            assert sizes == [batch // world] * world


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"train\.batch_size=6 does not split over 4 processes.*multiple of"):
        D.shard_windows(100, 6, 0, 4)
    with pytest.raises(ValueError, match="rank 2 of world size 2"):
        D.shard_windows(100, 4, 2, 2)


@pytest.mark.parametrize(("n", "world"), [(11, 2), (3, 4), (1000, 3), (0, 2)])
def test_evaluation_shares_cover_the_split_once(n, world):
    shares = [D.shard_range(n, rank, world) for rank in range(world)]
    covered = torch.cat([torch.arange(n)[s] for s in shares])
    assert torch.equal(covered, torch.arange(n))
    assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1


@pytest.mark.parametrize(("n", "world"), [(7, 3), (3, 4), (8, 2)])
def test_averaging_scaled_shard_gradients_gives_the_single_process_gradient(n, world):
    """What DistributedDataParallel computes (the mean over ranks) equals one process's mean-loss gradient."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.randn(n, 5), torch.randint(0, 3, (n,))
    single = torch.autograd.grad(F.cross_entropy(model(x), y), model.weight)[0]
    batch = n + (-n) % world  # the smallest global batch that splits over the ranks and holds all n samples
    averaged = torch.zeros_like(single)
    for rank in range(world):
        (part,) = D.shard_windows(n, batch, rank, world)
        loss = F.cross_entropy(model(x[part]), y[part], reduction="sum") * D.loss_scale(n, world)
        averaged += torch.autograd.grad(loss, model.weight)[0] / world
    assert torch.allclose(averaged, single, atol=1e-6), (averaged - single).abs().max()


def test_checksum_is_equal_for_equal_tensors_and_changes_with_one_value_or_a_swap():
    t = torch.randn(1000)
    assert D.checksum(t) == D.checksum(t.clone())
    changed = t.clone()
    changed[500] = torch.nextafter(changed[500], torch.tensor(10.0))  # the smallest change of one float
    plain, weighted = D.checksum(t)
    assert D.checksum(changed)[0] != plain and D.checksum(changed)[1] != weighted
    swapped = t.clone()
    swapped[[3, 7]] = t[[7, 3]]
    assert D.checksum(swapped)[0] == plain and D.checksum(swapped)[1] != weighted
    assert D.checksum(torch.tensor([True, False])) != D.checksum(torch.tensor([False, True]))


@pytest.fixture
def no_launcher(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_without_a_launcher_the_run_is_one_process_and_collectives_do_nothing(no_launcher):
    env = D.from_environment("cpu")
    assert env == D.single_process("cpu")
    assert (env.rank, env.world_size, env.backend, env.is_distributed, D.is_writer(env)) == (0, 1, None, False, True)
    assert D.local_device(env) == torch.device("cpu")
    with D.process_group(env):
        assert not torch.distributed.is_initialized()
        masks = {"w": torch.tensor([1.0, 0.0, 1.0])}
        D.broadcast_masks_(masks)
        D.check_identical(masks, "masks")
        values = [torch.tensor([2.0, 3.0])]
        D.all_reduce_sum_(values)
        assert torch.equal(masks["w"], torch.tensor([1.0, 0.0, 1.0]))
        assert torch.equal(values[0], torch.tensor([2.0, 3.0]))
        assert D.reduce_accuracy(3, 4) == 75.0
        assert D.any_rank(True) and not D.any_rank(False)
        assert D.hostnames() == [socket.gethostname()]


def test_submitit_slurm_variables_give_rank_world_and_the_first_host(no_launcher):
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2"}
    slurm |= {"SLURM_NODEID": "1", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    for name, value in slurm.items():
        no_launcher.setenv(name, value)
    env = D.from_environment("cuda")
    assert (env.rank, env.local_rank, env.world_size, env.backend, env.launcher) == (3, 1, 4, "nccl", "slurm")
    host, port = env.init_method.removeprefix("tcp://").split(":")
    assert host == "gpu07" and 20000 <= int(port) <= 60000
    no_launcher.setenv("SLURM_PROCID", "0")
    no_launcher.setenv("SLURM_LOCALID", "0")
    rank0 = D.from_environment("cpu")
    assert (rank0.rank, rank0.backend, rank0.init_method) == (0, "gloo", env.init_method)  # one port per job
    no_launcher.setenv("SLURM_NTASKS", "1")
    assert D.from_environment("cuda") == D.DistEnv(0, 0, 1, None, None, "slurm", "cuda")


def test_incomplete_or_bad_torchrun_variables_are_named(no_launcher):
    no_launcher.setenv("RANK", "0")
    no_launcher.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"):
        D.from_environment("cpu")
    for name, value in {"LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "RANK": "x"}.items():
        no_launcher.setenv(name, value)
    with pytest.raises(ValueError, match="RANK='x': expected an integer"):
        D.from_environment("cpu")
    no_launcher.setenv("RANK", "2")
    with pytest.raises(ValueError, match="rank 2, local rank 0, world size 2"):
        D.from_environment("cpu")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    """Every rank's results of the collectives in one 2-process gloo group started by torchrun."""
    out = tmp_path_factory.mktemp("ranks")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__, str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


def test_torchrun_variables_give_each_process_its_rank(two_ranks):
    assert [r["env"] for r in two_ranks] == [[rank, rank, 2, "gloo", "env://", "torchrun", True] for rank in (0, 1)]
    assert [r["writer"] for r in two_ranks] == [True, False]
    assert two_ranks[0]["hosts"] == two_ranks[1]["hosts"] == [socket.gethostname()]


def test_any_rank_is_true_on_every_rank_when_one_rank_says_so(two_ranks):
    assert [r["votes"] for r in two_ranks] == [[True, True, False]] * 2


def test_broadcast_masks_gives_rank_1_the_masks_of_rank_0(two_ranks):
    before0, before1 = two_ranks[0]["masks_before"], two_ranks[1]["masks_before"]
    assert not torch.equal(before0["conv.weight"], before1["conv.weight"])
    for rank in (0, 1):
        assert two_ranks[rank]["masks_after"].keys() == before0.keys()
        for name, mask in before0.items():
            assert torch.equal(two_ranks[rank]["masks_after"][name], mask), (rank, name)


def test_all_reduce_sum_gives_every_rank_the_sum(two_ranks):
    for r in two_ranks:
        assert torch.equal(r["summed_float"], torch.tensor([3.0, 4.0, 0.5]))  # [1 + 2, 2 + 2, 0.25 + 0.25]
        assert torch.equal(r["summed_int"], torch.tensor([[1, 12], [2, 12]]))  # rank r holds [[r, 10r + 1], [1, 6]]


def test_check_identical_passes_on_equal_tensors_and_names_the_first_that_differs(two_ranks):
    for r in two_ranks:
        assert r["equal_check"] == "passed"
        assert r["differing_check"] == "round 1 weights: 'fc.weight' differs between rank 0 and rank 1 (values)"
        assert r["shape_check"] == "masks: 'fc.weight' differs between rank 0 and rank 1 (name, shape or dtype)"


def test_sharded_accuracy_is_the_accuracy_over_the_union_on_every_rank(two_ranks):
    preds, labels = worker_eval_data()
    union = 100.0 * float((preds == labels).sum()) / len(labels)
    assert [r["accuracy"] for r in two_ranks] == [union, union]
    assert union == pytest.approx(100.0 * 7 / 11)


def test_ddp_on_scaled_shards_gives_the_single_process_gradient_on_both_ranks(two_ranks):
    """After backward() DistributedDataParallel's all-reduce is done: a gradient hook sees the global gradient."""
    model, x, y = worker_ddp_problem()
    for step, window in enumerate(D.shard_windows(DDP_SAMPLES, DDP_BATCH, 0, 1)):
        model.zero_grad()
        F.cross_entropy(model(x[window]), y[window]).backward()
        for r in two_ranks:
            assert torch.allclose(r["ddp_grads"][step], model.weight.grad, atol=1e-6), (step, r["env"][0])
    assert torch.equal(two_ranks[0]["ddp_grads"][1], two_ranks[1]["ddp_grads"][1])


def test_global_batch_norm_on_shards_trains_like_batch_norm_on_the_whole_batch(two_ranks):
    """Outputs, gradients and running statistics of GlobalBatchNorm over 2 ranks' shards equal plain
    BatchNorm's over the global batch (11 samples: shards of 4 + 4, then 1 + 2), up to float32 rounding."""
    model, x, y = worker_bn_problem()
    outputs, grads = [], []
    for window in D.shard_windows(DDP_SAMPLES, DDP_BATCH, 0, 1):
        model.zero_grad()
        out = model(x[window])
        F.cross_entropy(out, y[window]).backward()
        outputs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for step in range(len(outputs)):
        joined = torch.cat([two_ranks[rank]["bn_outputs"][step] for rank in (0, 1)])
        assert torch.allclose(joined, outputs[step], atol=1e-5), step
        for r in two_ranks:
            for name, grad in grads[step].items():
                assert torch.allclose(r["bn_grads"][step][name], grad, atol=1e-5), (step, name)
    for r in two_ranks:
        for name, buffer in model.state_dict().items():
            assert torch.allclose(r["bn_state"][name].double(), buffer.double(), atol=1e-5), name
    assert torch.equal(two_ranks[0]["bn_state"]["1.running_var"], two_ranks[1]["bn_state"]["1.running_var"])
    assert two_ranks[0]["bn_converted"] == 1


def worker_bn_problem() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 16, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    x = torch.randn(DDP_SAMPLES, 2, 4, 4, generator=gen) * 3 + 2  # a mean well away from 0
    return model, x, torch.randint(0, 3, (DDP_SAMPLES,), generator=gen)


def worker_eval_data() -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(11) % 3
    preds = labels.clone()
    preds[[0, 5, 9, 10]] = (preds[[0, 5, 9, 10]] + 1) % 3  # 7 of 11 right, wrong ones on both shares
    return preds, labels


def worker_ddp_problem() -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 4, generator=gen))
        model.bias.copy_(torch.randn(3, generator=gen))
    return model, torch.randn(DDP_SAMPLES, 4, generator=gen), torch.randint(0, 3, (DDP_SAMPLES,), generator=gen)


def _differs(tensors: dict[str, torch.Tensor], what: str) -> str:
    try:
        D.check_identical(tensors, what)
    except D.RanksDisagree as e:
        return str(e)
    return "passed"


def worker(out: Path) -> None:
    """One rank of the 2-process group: run every collective and save what this rank ends with."""
    env = D.from_environment("cpu")
    with D.process_group(env):
        rank = env.rank
        res: dict = {"env": [rank, env.local_rank, env.world_size, env.backend, env.init_method, env.launcher]}
        res["env"].append(torch.distributed.is_initialized())
        res["writer"], res["hosts"] = D.is_writer(env), D.hostnames()
        res["votes"] = [D.any_rank(rank == 1), D.any_rank(rank == 0), D.any_rank(False)]

        masks = {
            "conv.weight": (torch.arange(24).view(2, 3, 4) % (rank + 2) == 0).float(),
            "fc.weight": torch.full((3, 5), float(rank)),
            "fc.bias_kept": torch.tensor([rank == 0, rank == 1]),
        }
        res["masks_before"] = {name: m.clone() for name, m in masks.items()}
        D.broadcast_masks_(masks)
        res["masks_after"] = masks

        summed = [torch.tensor([rank + 1.0, 2.0, 0.25]), torch.tensor([[rank, 10 * rank + 1], [1, 6]])]
        D.all_reduce_sum_(summed)
        res["summed_float"], res["summed_int"] = summed

        same = {"conv.weight": torch.ones(2, 3), "fc.weight": torch.arange(6.0)}
        res["equal_check"] = _differs(same, "round 1 weights")
        res["differing_check"] = _differs(same | {"fc.weight": torch.arange(6.0) + rank * 1e-6}, "round 1 weights")
        res["shape_check"] = _differs(same | {"fc.weight": torch.zeros(2 + rank)}, "masks")

        preds, labels = worker_eval_data()
        share = D.shard_range(len(labels), rank, env.world_size)
        res["accuracy"] = D.reduce_accuracy((preds[share] == labels[share]).sum(), len(labels[share]))

        model, x, y = worker_ddp_problem()
        ddp = nn.parallel.DistributedDataParallel(model)
        res["ddp_grads"] = []
        for window in D.shard_windows(DDP_SAMPLES, DDP_BATCH, rank, env.world_size):
            global_size = min(DDP_BATCH, DDP_SAMPLES - DDP_BATCH * len(res["ddp_grads"]))
            ddp.zero_grad()
            loss = F.cross_entropy(ddp(x[window]), y[window], reduction="sum") * D.loss_scale(global_size, 2)
            loss.backward()
            res["ddp_grads"].append(model.weight.grad.clone())

        bn_model, x, y = worker_bn_problem()
        res["bn_converted"] = DDP.global_batch_norm(bn_model)
        wrapped = DDP.wrap(bn_model, env, torch.device("cpu"))
        res["bn_outputs"], res["bn_grads"] = [], []
        for step, window in enumerate(D.shard_windows(DDP_SAMPLES, DDP_BATCH, rank, env.world_size)):
            global_size = min(DDP_BATCH, DDP_SAMPLES - DDP_BATCH * step)
            wrapped.zero_grad()
            with DDP.synced(bn_model):
                logits = wrapped(x[window])
            (F.cross_entropy(logits, y[window], reduction="sum") * D.loss_scale(global_size, 2)).backward()
            res["bn_outputs"].append(logits.detach())
            res["bn_grads"].append({n: p.grad.clone() for n, p in bn_model.named_parameters()})
        res["bn_state"] = bn_model.state_dict()
        del ddp, wrapped  # DDP's reducers hold gloo work: gone before the group, or gloo may abort at exit
        D.barrier()
    torch.save(res, out / f"rank{rank}.pt")


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
