"""Linear-mode stability (``prune.stability``, docs/algorithms.md, section 1e): the error along the straight line
between a round's ticket and a second copy trained under another data order."""

from __future__ import annotations

import csv
import os
import statistics
from itertools import islice
from pathlib import Path

import pytest
import torch
from helpers import FAST, compose_config, launch, python, read_rounds
from hydra.utils import instantiate
from report_runs import write_run
from torch import nn

from rsst.commands.report import report
from rsst.loop.hot_loop import evaluate
from rsst.loop.run import run
from rsst.loop.stability import alphas, barrier, interpolate, linear_path, norm_seed, recompute_batch_norm

# RSST (its penalty trains in the copy too), rewound to step 30 of round 0 (inside its second epoch of 23 steps),
# so every copy starts inside an epoch and trains two epochs' worth of rows.
STABLE = [*FAST, "struct=rsst", "train.epochs=3", "prune.rounds=2", "prune.rewind=step", "prune.rewind_step=30"]
STABLE.append("prune.stability=true")
# LeNet-300-100 has no BatchNorm: the ends of its path are exactly the two copies as they were trained.
LENET = ["arch=lenet_300_100", "prune.include_fc=true", "struct=imp", "prune.rounds=2", *FAST[1:]]


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


# -- pure functions -----------------------------------------------------------------------------------------


def test_the_barrier_is_the_highest_error_on_the_path_above_the_mean_of_its_ends():
    assert barrier([10.0, 30.0, 12.0]) == 19.0
    assert barrier([4.0, 3.0, 6.0]) == 1.0  # the highest point is an end: 6 - (4 + 6) / 2
    assert barrier([5.0, 5.0, 5.0, 5.0]) == 0.0
    assert alphas(11) == [i / 10 for i in range(11)] and alphas(2) == [0.0, 1.0]


def test_interpolation_is_exact_at_the_ends_and_between_identical_copies():
    gen = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(50, generator=gen), "n": torch.tensor(7)}
    b = {"w": torch.randn(50, generator=gen), "n": torch.tensor(9)}
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"]) and torch.equal(interpolate(a, b, 1.0)["w"], b["w"])
    for alpha in alphas(11):
        assert torch.equal(interpolate(a, a, alpha)["w"], a["w"]), alpha  # not just close: equal
        assert int(interpolate(a, b, alpha)["n"]) == 7  # integer buffers are the first copy's
    middle = interpolate(a, b, 0.25)["w"]
    assert torch.allclose(middle, 0.75 * a["w"] + 0.25 * b["w"], atol=1e-6)


def conv_bn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def test_batch_norm_statistics_are_recomputed_as_the_average_over_the_batches_and_differ_from_interpolated_ones():
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 2, 6, 6, generator=gen) * 3 + 1, torch.zeros(8, dtype=torch.long)) for _ in range(4)]
    model = conv_bn(0)
    model(batches[0][0])  # the lazy layer takes its shape
    model.eval()
    assert recompute_batch_norm(model, batches) == 4
    with torch.no_grad():
        outs = [model[0](x) for x, _ in batches]
    norm = model[1]
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
    assert torch.allclose(norm.running_mean, mean, atol=1e-5) and torch.allclose(norm.running_var, var, atol=1e-4)
    assert norm.momentum == 0.1 and not model.training  # the layer's momentum and the model's mode are restored
    assert recompute_batch_norm(nn.Sequential(nn.Flatten(), nn.Linear(72, 2)), batches) == 0  # nothing to do

    # why recompute: the midpoint of two networks does not have the mean of their statistics
    other = conv_bn(1)
    other(batches[0][0])
    recompute_batch_norm(other, batches)
    mid = conv_bn(2)
    mid(batches[0][0])
    mid.load_state_dict(interpolate(model.state_dict(), other.state_dict(), 0.5))
    averaged = mid[1].running_var.clone()
    recompute_batch_norm(mid, batches)
    assert float((mid[1].running_var - averaged).abs().max()) > 0.05 * float(averaged.abs().max())


# -- end to end ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stability_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("stability") / "run"
    proc = launch(*STABLE, f"paths.run_dir={run_dir}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return run_dir


@pytest.mark.slow
def test_every_round_records_its_barrier_curve_and_copy(stability_run):
    rows = read_rounds(stability_run)
    assert [(row["round"], row.get("branch")) for row in rows] == [(0, None), (1, None)]  # no row of its own
    for row in rows:
        curve = row["stability_curve"]
        assert curve["alpha"] == alphas(11)
        for split in ("val", "test"):
            errors = curve[f"{split}_error"]
            assert len(errors) == 11 and all(0 <= e <= 100 for e in errors)
            assert row["stability_barrier"][split] == pytest.approx(max(errors) - (errors[0] + errors[-1]) / 2)
            assert row["stability_barrier"][split] >= 0
        assert 10 < row["stability_copy"]["test_acc"] <= 100  # the copy learned: better than chance
    copies = [(int(m["round"]), int(m["epoch"])) for m in metrics(stability_run) if m["branch"] == "stability"]
    # round 0's copy continues round 0 from step 30 (epoch 1); round 1's copy trains what round 1 trains
    assert copies == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert [int(m["epoch"]) for m in metrics(stability_run) if m["branch"] == "" and m["round"] == "1"] == [1, 2]


@pytest.mark.slow
def test_two_identical_copies_have_a_flat_path_and_a_barrier_of_zero(stability_run):
    cfg = compose_config(STABLE)
    data = instantiate(cfg.dataset)
    model = instantiate(cfg.arch)(num_classes=data.num_classes, in_channels=data.in_channels, image_size=8)
    trained = torch.load(stability_run / "weights" / "round_0.pt", weights_only=True)  # the dense network of the run

    def score(split: str) -> float:
        return evaluate(model, data.batches(split, 1024))

    def norm_batches():
        return islice(data.batches("train", 64, seed=norm_seed(0, 0)), 10)

    curve = linear_path(model, trained, trained, 11, score, norm_batches)
    assert curve["alpha"] == alphas(11)
    for split in ("val", "test"):
        errors = curve[f"{split}_error"]
        assert len(set(errors)) == 1, errors
        assert barrier(errors) == 0.0
    assert curve["test_error"][0] < 50  # a trained network: far better than chance on 10 classes


@pytest.mark.slow
def test_a_run_killed_during_the_stability_copy_resumes_to_the_same_figures(stability_run, tmp_path):
    run_dir = tmp_path / "run"
    env = {"RSST_KILL_AT": "epoch_saved:1:stability:1", "WANDB_MODE": "offline"}
    killed = python("launch.py", *STABLE, f"paths.run_dir={run_dir}", env={**os.environ, **env})
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert "stability_barrier" not in read_rounds(run_dir)[1]  # killed after the copy's first epoch, before its path
    resumed = launch(*STABLE, f"paths.run_dir={run_dir}")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    assert comparable(read_rounds(run_dir)) == comparable(read_rounds(stability_run))
    assert metrics(run_dir) == metrics(stability_run)


@pytest.fixture(scope="module")
def lenet_pair(tmp_path_factory) -> dict[bool, dict]:
    """LeNet on the digits, rewound to init, once with the stability copies and once without."""
    root = tmp_path_factory.mktemp("lenet")
    out = {}
    for stability in (True, False):
        cfg = compose_config([*LENET, f"prune.stability={str(stability).lower()}", f"paths.root={root}"])
        out[stability] = run(cfg)
    return out


@pytest.mark.train
def test_the_paths_ends_are_the_two_copies_own_accuracies(lenet_pair):
    summary = lenet_pair[True]
    epochs = metrics(Path(summary["run_dir"]))
    for row in summary["rounds"]:
        curve, copy = row["stability_curve"], row["stability_copy"]
        last = [m for m in epochs if int(m["round"]) == row["round"] and m["branch"] == ""][-1]
        assert curve["test_error"][0] == pytest.approx(100 - row["final_test_acc"], abs=1e-9)  # the ticket
        assert curve["val_error"][0] == pytest.approx(100 - float(last["val_acc"]), abs=1e-9)
        assert curve["test_error"][-1] == pytest.approx(100 - copy["test_acc"], abs=1e-9)  # its copy
        assert curve["val_error"][-1] == pytest.approx(100 - copy["val_acc"], abs=1e-9)
    assert summary["rounds"][1]["remain_weight"] < 81  # round 1's copy trained the pruned ticket


@pytest.mark.train
def test_the_stability_copies_leave_every_round_as_it_was(lenet_pair):
    measured = [{k: v for k, v in row.items() if not k.startswith("stability_")} for row in lenet_pair[True]["rounds"]]
    assert comparable(measured) == comparable(lenet_pair[False]["rounds"])
    a, b = (Path(lenet_pair[s]["run_dir"]) for s in (True, False))
    for r in (0, 1):
        x, y = (torch.load(d / "weights" / f"round_{r}.pt", weights_only=True) for d in (a, b))
        assert all(torch.equal(x[n], y[n]) for n in x)


# -- the report ---------------------------------------------------------------------------------------------


def stability_rows(barriers: list[float], curve: list[float]) -> list[dict]:
    return [
        {
            "round": r,
            "remain_weight": 100.0 * 0.8**r,
            "test_acc": 90.0,
            "stability_barrier": {"test": b, "val": b / 2},
            "stability_curve": {"alpha": alphas(len(curve)), "test_error": curve, "val_error": curve},
            "stability_copy": {"test_acc": 89.0, "val_acc": 90.0},
        }
        for r, b in enumerate(barriers)
    ]


def test_the_report_shows_the_barrier_per_round_and_draws_the_paths(tmp_path):
    args = ["struct=imp", "prune.rounds=2", "prune.stability=true"]
    write_run(tmp_path, args, 1, stability_rows([4.0, 1.0], [10.0, 16.0, 12.0]))
    write_run(tmp_path, args, 2, stability_rows([6.0, 2.0], [12.0, 20.0, 14.0]))
    result = report(tmp_path)
    table = result["markdown"].split("\n\n")[1].splitlines()
    assert table[0] == "| error barrier (points): mean ± std | split | seeds | round 0 | round 1 |"
    sd = statistics.stdev
    assert table[2] == f"| imp | test | 2 | 100.0%: 5.00 ± {sd([4, 6]):.2f} | 80.0%: 1.50 ± {sd([1, 2]):.2f} |"
    assert table[3] == f"| imp | val | 2 | 100.0%: 2.50 ± {sd([2, 3]):.2f} | 80.0%: 0.75 ± {sd([0.5, 1]):.2f} |"
    assert result["written"][-1] == "stability.png"
    assert (tmp_path / "stability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "report.md").read_text() == result["markdown"] + "\n"


def test_runs_without_stability_keep_the_report_as_it_was(tmp_path):
    write_run(tmp_path, ["struct=imp", "prune.rounds=2"], 1, [{"round": 0, "remain_weight": 100.0, "test_acc": 90.0}])
    result = report(tmp_path)
    assert "barrier" not in result["markdown"] and not (tmp_path / "stability.png").exists()
    assert result["written"] == ["report.csv", "report.md", "report.png"]
