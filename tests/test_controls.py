"""Lottery-ticket controls (reinit, shuffle_layerwise) and the ticket's own accuracy as the headline number."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from helpers import FAST, compose_config, launch, python, read_rounds
from hydra.utils import instantiate

from rsst.folder.tickets import load_masks
from rsst.loop.hot_loop import evaluate
from rsst.loop.run import RoundLoop, epoch_seed, resolve_precision
from rsst.pruning.controls import control_seed, is_channel_ticket, shuffle_layerwise
from rsst.pruning.masks import Masks

CONTROLLED = [*FAST, "struct=imp", "prune.rounds=2", "train.epochs=3", "prune.controls=[reinit,shuffle_layerwise]"]


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def metrics_without_time(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


# -- pure functions -----------------------------------------------------------------------------------


def random_mask(shape: tuple[int, ...], density: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) < density).float()


def test_shuffle_layerwise_keeps_every_layers_count_and_changes_the_mask():
    ticket = Masks({"a.weight": random_mask((16, 8, 3, 3), 0.3, 0), "b.weight": random_mask((10, 64), 0.5, 1)})
    shuffled = shuffle_layerwise(ticket, torch.Generator().manual_seed(5))
    for name, m in ticket.items():
        assert int(shuffled[name].sum()) == int(m.sum())
        assert not torch.equal(shuffled[name], m)
        assert set(shuffled[name].unique().tolist()) <= {0.0, 1.0}
    again = shuffle_layerwise(ticket, torch.Generator().manual_seed(5))
    other = shuffle_layerwise(ticket, torch.Generator().manual_seed(6))
    assert again.equal(shuffled) and not other.equal(shuffled)


def test_shuffle_layerwise_of_a_channel_ticket_keeps_each_layers_channel_count():
    rows = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.float32)
    conv = rows.view(-1, 1, 1, 1).expand(8, 4, 3, 3).clone()
    fc = random_mask((10, 8), 0.5, 3)  # a Linear layer stays unstructured inside a channel ticket
    ticket = Masks({"conv.weight": conv, "fc.weight": fc})
    assert is_channel_ticket(ticket)
    shuffled = shuffle_layerwise(ticket, torch.Generator().manual_seed(0))
    alive = shuffled["conv.weight"].flatten(1).sum(1)
    assert set(alive.tolist()) <= {0.0, 36.0}  # whole channels
    assert int((alive > 0).sum()) == 4 and not torch.equal(alive > 0, rows > 0)
    assert int(shuffled["fc.weight"].sum()) == int(fc.sum())


def test_every_run_seed_gets_its_own_data_order():
    """torch keeps only a seed's low 32 bits: (seed << 32) + ... gave all seeds one order."""
    data = instantiate(compose_config([]).dataset)
    firsts = [next(data.batches("train", 64, "cpu", seed=epoch_seed(s, 0, 0)))[1] for s in range(4)]
    assert all(not torch.equal(firsts[0], f) for f in firsts[1:])
    seeds = {epoch_seed(s, r, e) for s in range(3) for r in range(20) for e in range(200)}
    assert len(seeds) == 3 * 20 * 200 and max(seeds) < 2**32


def test_control_seeds_differ_from_every_data_order_seed():
    epochs = {epoch_seed(3, r, e) for r in range(4) for e in range(200)} | {epoch_seed(3, r, 1 << 15) for r in range(4)}
    controls = {control_seed(3, r, c) for r in range(4) for c in ("reinit", "shuffle_layerwise")}
    assert len(controls) == 8 and not controls & epochs


def control_start(tmp_path: Path, name: str, seed: int = 0) -> RoundLoop:
    """A loop at the start of round 1's ``name`` control, after a stand-in IMP ticket of round 1."""
    cfg, _ = resolve_precision(compose_config([*CONTROLLED, f"seed={seed}", f"paths.run_dir={tmp_path}"]))
    loop = RoundLoop(cfg, tmp_path)
    loop.fresh_start()
    loop.state.ticket = Masks({n: random_mask(tuple(w.shape), 0.5, i) for i, (n, w) in enumerate(loop.weights.items())})
    loop.state.round, loop.state.pending = 2, [name]
    loop.begin_branch()
    return loop


def test_reinit_keeps_the_mask_and_draws_new_weights_from_the_same_family(tmp_path):
    loop = control_start(tmp_path, "reinit")
    assert loop.state.plan.train.equal(loop.state.ticket)
    state = loop.model.state_dict()
    for name, w in loop.weights.items():
        theta0 = loop.state.theta_0[name]
        assert not torch.equal(w.detach() != 0, torch.zeros_like(w, dtype=torch.bool))
        alive = loop.state.ticket[name].bool()
        assert not torch.equal(w.detach()[alive], theta0[alive])  # new initial values
        assert int((w.detach()[~alive] != 0).sum()) == 0  # the mask applied
        ratio = float(state[name].std() / (theta0 * loop.state.ticket[name]).std())
        assert 0.7 < ratio < 1.4, (name, ratio)  # the same initialiser's scale
    assert all(torch.equal(state[k], v) for k, v in loop.state.theta_0.items() if k.endswith("running_var"))
    again = control_start(tmp_path, "reinit")
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in state.items())  # reproducible
    other = control_start(tmp_path, "reinit", seed=1)
    assert not all(torch.equal(v, other.model.state_dict()[k]) for k, v in state.items() if k in loop.weights)


def test_shuffle_layerwise_starts_from_the_rewind_point_with_the_tickets_counts(tmp_path):
    loop = control_start(tmp_path, "shuffle_layerwise")
    for name, w in loop.weights.items():
        mask = loop.state.plan.train[name]
        assert int(mask.sum()) == int(loop.state.ticket[name].sum()) and not torch.equal(mask, loop.state.ticket[name])
        assert torch.equal(w.detach(), loop.state.theta_rewind[name] * mask)


# -- end to end -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def controlled(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("controls") / "run"
    proc = launch(*CONTROLLED, f"paths.run_dir={run_dir}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return run_dir


@pytest.mark.slow
def test_a_run_with_controls_records_each_control_beside_its_ticket(controlled):
    rows = read_rounds(controlled)
    assert [(r["round"], r.get("branch")) for r in rows] == [
        (0, None),
        (1, None),
        (1, "reinit"),
        (1, "shuffle_layerwise"),
    ]
    ticket = Masks(load_masks(controlled / "masks" / "round_1.pt"))
    assert Masks(load_masks(controlled / "masks" / "round_1_reinit.pt")).equal(ticket)
    shuffled = Masks(load_masks(controlled / "masks" / "round_1_shuffle_layerwise.pt"))
    assert {n: int(m.sum()) for n, m in shuffled.items()} == {n: int(m.sum()) for n, m in ticket.items()}
    assert not shuffled.equal(ticket)
    assert rows[2]["remain_weight"] == rows[3]["remain_weight"] == pytest.approx(rows[1]["remain_weight"])
    # the next trunk round would prune from the ticket's weights, not a control's
    final = torch.load(controlled / "checkpoint.pt", weights_only=True)["model"]
    weights = torch.load(controlled / "weights" / "round_1.pt", weights_only=True)
    assert all(torch.equal(final[k], v) for k, v in weights.items())


@pytest.mark.slow
def test_each_row_reports_the_first_best_validation_epoch_of_its_network(controlled):
    with open(controlled / "metrics.csv") as f:
        epochs = list(csv.DictReader(f))
    for row in read_rounds(controlled):
        mine = [e for e in epochs if int(e["round"]) == row["round"] and e.get("branch", "") == row.get("branch", "")]
        best = max(mine, key=lambda e: float(e["val_acc"]))  # the first epoch with the best val accuracy
        assert (row["best_epoch"], row["test_acc"]) == (int(best["epoch"]), float(best["test_acc"]))
        if "branch" not in row:  # IMP: the trained network is the ticket
            assert (row["trained_best_epoch"], row["trained_test_acc"]) == (row["best_epoch"], row["test_acc"])


@pytest.mark.slow
def test_a_run_killed_during_a_control_resumes_to_the_same_files(controlled, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "RSST_KILL_AT": "epoch_saved:1:reinit:0", "WANDB_MODE": "offline"}
    killed = python("launch.py", *CONTROLLED, f"paths.run_dir={run_dir}", env=env)
    assert killed.returncode == -9
    assert [r.get("branch") for r in read_rounds(run_dir)] == [None, None]
    resumed = launch(*CONTROLLED, f"paths.run_dir={run_dir}")
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    assert comparable(read_rounds(run_dir)) == comparable(read_rounds(controlled))
    assert metrics_without_time(run_dir / "metrics.csv") == metrics_without_time(controlled / "metrics.csv")


def ticket_accuracy(run_dir: Path, round_: int, overrides: list[str]) -> float:
    """Test accuracy of the saved weights with the saved mask applied, recomputed here."""
    cfg = compose_config(overrides)
    data = instantiate(cfg.dataset)
    model = instantiate(cfg.arch)(num_classes=data.num_classes, in_channels=data.in_channels, image_size=8)
    model.load_state_dict(torch.load(run_dir / "weights" / f"round_{round_}.pt", weights_only=True))
    masks = Masks(load_masks(run_dir / "masks" / f"round_{round_}.pt"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            params[name].mul_(m)
    return evaluate(model, data.batches("test", 1024, torch.device("cpu")))


@pytest.mark.slow
@pytest.mark.parametrize("struct", ["rsst", "admm"])
def test_the_recorded_accuracy_is_the_tickets_own(tmp_path, struct):
    """With one epoch the best epoch is the last, so test_acc must equal the saved ticket's accuracy."""
    # fp32: the recomputation below runs in fp32 (auto is bf16 on a CPU with AMX)
    overrides = [*FAST, f"struct={struct}", "prune.rounds=3", "train.epochs=1", "train.amp=off"]
    overrides.append(f"paths.run_dir={tmp_path / 'run'}")
    proc = launch(*overrides)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = read_rounds(tmp_path / "run")
    differs = 0
    for row in rows[1:]:
        assert row["test_acc"] == pytest.approx(ticket_accuracy(tmp_path / "run", row["round"], overrides), abs=1e-9)
        assert "trained_test_acc" in row and row["best_epoch"] == 0
        differs += row["trained_test_acc"] != row["test_acc"]
    assert differs >= 1  # the network as trained is another network, with another accuracy
