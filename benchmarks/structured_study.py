"""Study: does RSST beat Refill? Structured tickets of ResNet-20 on real CIFAR-10, against IMP.

    python benchmarks/structured_study.py --out ~/studies/structured dataset.root=DATA
    python benchmarks/structured_study.py --quick --out DIR      # smoke run on generated CIFAR-format files
    python benchmarks/structured_study.py --budget gpu --jobs 4 --out DIR dataset.root=DATA device=cuda  # a GPU

The second edition's arms, each for seeds 1, 2 and 3: Refill; RSST as the original defines it (the
schedule's period an epoch); RSST with ``struct.penalty_scope=channels`` (the intervention: the
BatchNorm scale of the dropped channels penalised too); RSST with ``schedule.period=round`` (the first
edition's RSST, now an ablation); IMP for reference; and the ``reinit`` control of Refill's and
RSST's tickets. Each is a ``launch.py -m`` sweep with the seed project's settings (criterion ``l1``,
schedule ``exp_custom_exponents`` with g = 1 and n = 4, ``fillback_rate`` 0, rate 0.2 per round,
rewind to init) and one shared budget for every arm (:data:`BUDGET`: the same data subset, rounds,
epochs, optimiser, lr schedule and seeds). Every run resumes: rerunning the same command continues
where it stopped, and finished runs are read without training. Then, for the sparsest round, it
exports the Refill and RSST tickets of the first seed
(``rsst.export``: params, MACs and the batch-1 and batch-256 CPU latency against dense), draws the
study with ``rsst.report`` (accuracy against channel density and against MACs), and writes:

* ``OUT/study.json``: per round and arm, mean ± std over seeds of the ticket's test accuracy
  (at its best-validation epoch), RSST's ``trained_test_acc`` (the denser ``M_r | R_r`` as trained,
  what the original code reported) and the cut's cost (as trained minus ticket, paired by seed),
  weight density, channel density, params, MACs and the theoretical speed-up (dense MACs / ticket
  MACs); ``penalised_norm_start``/``_end`` (``|P_r|``) and, for the channel scope,
  ``penalised_gamma_start``/``_end``; the latency figures; what the channels cut at every round
  still carried (their BatchNorm's running variance and |gamma|, :func:`removed_channels`); the
  verdicts; the budget, the machine and the compute time;
* ``OUT/study.md``: the same as tables and the verdict in words.
* ``OUT/study_time.json``: the study's wall time over every start (written every ``--clock-every``
  seconds, so a killed study keeps it) and, per start, when it began and on which processor with
  which bf16 units: the runs of one study may come from several machines, and the report says which.

The verdict compares RSST with Refill per pruned round, paired by seed: the mean difference in
points and its std over seeds, and whether the difference is larger than the seed-to-seed spread
(|mean difference| above the larger of the two methods' std over seeds). RSST "beats" Refill when
it is ahead beyond the spread at a majority of the pruned rounds, and the other way round; else
the answer is "no difference beyond the seed spread". It is given twice: for the tickets, and for
RSST's network as trained against Refill's ticket.

The verdict is given for every RSST arm against Refill, and the intervention's question is answered
from the cut's cost: does penalising the whole channel close it (:func:`intervention`)?

``--controls`` (default ``reinit``) trains the control on every pruned Refill and RSST ticket (is a
structured ticket a ticket?); ``--ablation`` (default ``channels`` and ``period_round``) names the
extra RSST arms: ``channels``, ``period_round`` or ``g=<float>`` (another ``reg_granularity_prune``);
``--ablation none`` runs none. Extra arguments go to ``launch.py`` as overrides. Training uses
``OMP_NUM_THREADS`` threads (2 unless set; 1 per sweep with ``--jobs`` above 1).

``--quick`` without a ``dataset.root`` override writes a tiny data set in CIFAR-10's on-disk format
under ``OUT/smoke_data`` and runs on it, so the smoke run needs no download.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rsst.folder.atomic import atomic_write_text  # noqa: E402
from rsst.runtime.precision import cpuinfo_flags, processor_name  # noqa: E402

METHODS = ("refill", "rsst", "imp")
NAMES = {"refill": "Refill", "rsst": "RSST", "imp": "IMP"}  # in the report's words
# The seed project's method settings, identical for every method where they apply.
METHOD = [
    "dataset=cifar10",
    "arch=resnet20",
    "criteria=l1",
    "schedule=exp_custom_exponents",
    "schedule.reg_granularity_prune=1.0",
    "schedule.exponents=4",
    "prune.rate=0.2",
    "prune.rewind=init",
]
# One recipe for every budget: SGD at lr 0.1 with momentum 0.9 and weight decay 5e-4, no warmup, the lr cut 10x
# at the milestones, bf16 (explicit, so the run folders do not depend on what `auto` picks on a machine).
RECIPE = [
    "train.batch_size=128",
    "train.amp=bf16",
    "optimizer=sgd",
    "optimizer.lr=0.1",
    "optimizer.momentum=0.9",
    "optimizer.weight_decay=5e-4",
    "lr_schedule.warmup_epochs=0",
    "lr_schedule.gamma=0.1",
]
# The CPU budget: 20,000 training images (of the 45,000), the full 5,000 val and 10,000 test images,
# 5 pruned rounds (0.8^5 = 32.8% of the weights), 8 epochs per round with the lr cut at 4 and 6.
BUDGET = ["prune.rounds=6", "dataset.train_subset=20000", "train.epochs=8", "lr_schedule.milestones=[4,6]", *RECIPE]
# The GPU budget (--budget gpu): every training image (45,000, and the 5,000 val), 6 rounds of 20 epochs with
# the lr cut at 10 and 15. Meant for one GPU with --jobs 4 (ResNet-20 leaves most of it idle, so four sweeps at
# once): about 5 s an epoch each on an H100-class GPU, so roughly 1.5 h for the study.
BUDGET_GPU = ["prune.rounds=6", "train.epochs=20", "lr_schedule.milestones=[10,15]", *RECIPE]
BUDGETS = {"cpu": BUDGET, "gpu": BUDGET_GPU}
QUICK = [
    "prune.rounds=3",
    "train.epochs=1",
    "dataset.train_subset=64",
    "dataset.eval_subset=50",
    "arch.width=4",
    "train.batch_size=32",
    "train.amp=off",
    "criteria.batches=1",
]
ABLATIONS = {"channels": ["struct.penalty_scope=channels"], "period_round": ["schedule.period=round"]}
DEFAULT_ABLATIONS = ("channels", "period_round")
# The smoke run's own data (--quick without dataset.root): 5 batches of 40 training images, 60 test images.
SMOKE_SIZES = ["dataset.train_size=160", "dataset.val_size=40", "dataset.test_size=60"]


def ablation_overrides(name: str) -> list[str]:
    if name in ABLATIONS:
        return ABLATIONS[name]
    if name.startswith("g="):
        value = float(name[2:])
        if not value > 0:
            raise ValueError(f"--ablation {name}: g must be > 0")
        return [f"schedule.reg_granularity_prune={value:g}"]
    raise ValueError(f"--ablation {name!r}: expected one of {', '.join(ABLATIONS)} or g=<float>")


def ablation_label(name: str) -> str:
    """The method label :func:`method_of` gives an ablation's runs: ``rsst channels``, ``rsst g=0.1``."""
    return f"rsst g={float(name[2:]):g}" if name.startswith("g=") else f"rsst {name}"


def write_smoke_cifar(root: Path, per_file: int = 40, test: int = 60, seed: int = 0) -> Path:
    """Random images in CIFAR-10's on-disk layout (``root/cifar-10-batches-py``), for the smoke run only."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    if (folder / "test_batch").is_file():
        return root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for name in names:
        n = test if name == "test_batch" else per_file
        entry = {
            "batch_label": name,
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).tolist(),
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        tmp = folder / f".{name}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        tmp.replace(folder / name)
    return root


def sweeps(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(label, launch.py arguments) of every sweep: one per seed, and one per seed and ablation (RSST only)."""
    budget = QUICK if args.quick else BUDGETS[args.budget]
    controls = f"prune.controls=[{','.join(args.controls)}]" if args.controls else None

    def common(seed: int) -> list[str]:
        return [*METHOD, *budget, f"seed={seed}", "progress=false", *args.overrides]

    structured = [controls] if controls else []
    # Seed by seed, so that a study stopped part-way has whole seeds to pair: Refill and RSST (the study's
    # question), the RSST ablations (without controls), then the IMP reference.
    out = []
    for s in args.seeds:
        out.append((f"seed {s}: refill, rsst", ["-m", "struct=refill,rsst", *common(s), *structured]))
        for name in args.ablation:
            out.append((f"seed {s}: rsst {name}", ["-m", "struct=rsst", *common(s), *ablation_overrides(name)]))
        out.append((f"seed {s}: imp", ["-m", "struct=imp", *common(s)]))
    return out


def read_runs(out: Path) -> list[dict[str, Any]]:
    """Every run folder under ``out`` with its hash-checked config and its rounds."""
    from rsst.folder.naming import read_verified_config

    runs = []
    for rounds in sorted(out.glob("*/rounds.json")):
        cfg = read_verified_config(rounds.parent)
        runs.append({"dir": rounds.parent, "cfg": cfg, "rows": json.loads(rounds.read_text())})
    return runs


def method_of(run: dict[str, Any], ablations: list[str]) -> str:
    """``imp``, ``refill``, ``rsst`` (the original: period an epoch, penalty on the weights) or ``rsst <ablation>``.

    Read from the run's config: ``rsst channels``, ``rsst period_round``, ``rsst g=0.1``; a run that
    departs in several ways carries every label (``rsst channels period_round``).
    """
    cfg = run["cfg"]
    name = cfg["struct"]["_target_"].rsplit(".", 1)[-1].lower()
    if name != "rsst":
        return name
    sched = cfg["struct"].get("schedule") or cfg.get("schedule") or {}
    parts = ["rsst"]
    if cfg["struct"].get("penalty_scope", "weights") == "channels":
        parts.append("channels")
    if sched.get("period") == "round":
        parts.append("period_round")
    if float(sched.get("reg_granularity_prune", 1.0)) != 1.0:
        parts.append(f"g={float(sched['reg_granularity_prune']):g}")
    return " ".join(parts)


def mean_std(values: list[float]) -> dict[str, Any] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "mean": round(statistics.fmean(values), 3),
        "std": round(statistics.stdev(values), 3) if len(values) > 1 else None,
        "n": len(values),
    }


def summarise(runs: list[dict[str, Any]], ablations: list[str]) -> dict[str, Any]:
    """Per method and round, mean ± std over seeds of the figures the study reports."""
    by: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for run in runs:
        method = method_of(run, ablations)
        for row in run["rows"]:
            branch = row.get("branch")
            key = method if branch is None else f"{method} {branch}"
            by.setdefault(key, {}).setdefault(row["round"], []).append({**row, "seed": run["cfg"]["seed"]})
    dense_macs = [r.get("macs") for rows in by.get("refill", {}).get(0, []) for r in [rows]]
    dense = {}
    if "imp" in by and 0 in by["imp"]:
        dense = {"test_acc": mean_std([r["test_acc"] for r in by["imp"][0]])}
    table: dict[str, list[dict[str, Any]]] = {}
    for key, rounds in sorted(by.items()):
        entries = []
        for r, rows in sorted(rounds.items()):
            entry: dict[str, Any] = {"round": r, "seeds": sorted(row["seed"] for row in rows)}
            entry["test_acc"] = mean_std([row["test_acc"] for row in rows])
            if any("trained_test_acc" in row for row in rows) and key.startswith("rsst"):
                entry["trained_test_acc"] = mean_std([row.get("trained_test_acc") for row in rows])
                # the cut's cost, paired by seed: the network as trained minus its ticket
                entry["cut_cost"] = mean_std(
                    [row["trained_test_acc"] - row["test_acc"] for row in rows if "trained_test_acc" in row]
                )
            entry["weight_density"] = mean_std([row["remain_weight"] for row in rows])
            entry["channel_density"] = mean_std([100.0 - row.get("channel_sparsity", 0.0) for row in rows])
            for k in (
                "params", "macs", "penalised_norm_start", "penalised_norm_end", "penalised_gamma_start",
                "penalised_gamma_end", "reg_lambda",
            ):  # fmt: skip
                if any(k in row for row in rows):
                    entry[k] = mean_std([row.get(k) for row in rows])
            entries.append(entry)
        table[key] = entries
    del dense_macs
    return {"dense": dense, "methods": table}


def attach_sizes(summary: dict[str, Any], dense_params: int, dense_macs: int) -> None:
    """Dense rounds and IMP tickets export to the dense network's size; speed-up = dense MACs / ticket MACs."""
    for entries in summary["methods"].values():
        for e in entries:
            if "macs" not in e:  # dense round 0, IMP, or a control: no channel removed
                e["params"] = {"mean": dense_params, "std": 0.0, "n": e["test_acc"]["n"]}
                e["macs"] = {"mean": dense_macs, "std": 0.0, "n": e["test_acc"]["n"]}
            e["speedup"] = round(dense_macs / e["macs"]["mean"], 3)
    summary["dense_size"] = {"params": dense_params, "macs": dense_macs}


def paired(
    runs: list[dict[str, Any]],
    a: str,
    b: str,
    metric_a: str,
    metric_b: str,
    ablations,
    branch_a: str | None = None,
    branch_b: str | None = None,
) -> list[dict]:
    """Per pruned round: (a - b) per seed, its mean and std, and whether it exceeds the seed spread.

    ``a`` and ``b`` are methods (:func:`method_of`); ``branch_a``/``branch_b`` pick a control's rows of it
    (``reinit``) instead of the ticket's, so a ticket can be paired with its own control.
    """
    rows: dict[str, dict[tuple[int, int], dict]] = {"a": {}, "b": {}}
    for run in runs:
        m = method_of(run, ablations)
        for side, method, branch in (("a", a, branch_a), ("b", b, branch_b)):
            if m == method:
                for row in run["rows"]:
                    if row.get("branch") == branch:
                        rows[side][(row["round"], run["cfg"]["seed"])] = row
    out = []
    for r in sorted({r for r, _ in rows["a"]} & {r for r, _ in rows["b"]}):
        if r == 0:
            continue
        seeds = sorted({s for rr, s in rows["a"] if rr == r} & {s for rr, s in rows["b"] if rr == r})
        if not seeds:
            continue
        va = [rows["a"][(r, s)][metric_a] for s in seeds]
        vb = [rows["b"][(r, s)][metric_b] for s in seeds]
        diffs = [x - y for x, y in zip(va, vb, strict=True)]
        spread = max((statistics.stdev(v) for v in (va, vb) if len(v) > 1), default=None)
        mean = statistics.fmean(diffs)
        out.append(
            {
                "round": r,
                "seeds": seeds,
                "diff": round(mean, 3),
                "diff_std": round(statistics.stdev(diffs), 3) if len(diffs) > 1 else None,
                "seed_spread": None if spread is None else round(spread, 3),
                "beyond_spread": None if spread is None else abs(mean) > spread,
            }
        )
    return out


def answer(diffs: list[dict], a: str = "RSST", b: str = "Refill") -> str:
    if not diffs:
        return f"cannot be judged yet: no pruned round has finished for both {a} and {b}"
    wins = sum(1 for d in diffs if d["beyond_spread"] and d["diff"] > 0)
    losses = sum(1 for d in diffs if d["beyond_spread"] and d["diff"] < 0)
    n = len(diffs)
    mean = statistics.fmean(d["diff"] for d in diffs)
    tail = f"(mean {a} - {b} over the {n} pruned rounds {mean:+.2f} points; ahead beyond the seed spread at "
    tail += f"{wins} of {n}, behind beyond it at {losses} of {n})"
    if wins > n / 2:
        return f"yes: {a} beats {b} {tail}"
    if losses > n / 2:
        return f"no: {b} beats {a} {tail}"
    return f"no difference beyond the seed spread {tail}"


def fmt(stat: dict | None, digits: int = 2) -> str:
    if stat is None:
        return "-"
    if stat.get("std") is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def tables(summary: dict[str, Any]) -> str:
    head = [
        "method",
        "round",
        "weights %",
        "channels %",
        "test acc (ticket)",
        "trained test acc",
        "cut's cost",
        "params",
        "MACs",
        "speed-up",
        "|P_r| start -> end",
        "|gamma| dropped start -> end",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for key, entries in summary["methods"].items():
        for e in entries:
            norms = gammas = "-"
            if "penalised_norm_end" in e:
                norms = f"{fmt(e['penalised_norm_start'], 3)} -> {fmt(e['penalised_norm_end'], 4)}"
            if "penalised_gamma_end" in e:
                gammas = f"{fmt(e['penalised_gamma_start'], 3)} -> {fmt(e['penalised_gamma_end'], 4)}"
            lines.append(
                "| "
                + " | ".join(
                    [
                        key,
                        str(e["round"]),
                        fmt(e["weight_density"]),
                        fmt(e["channel_density"]),
                        fmt(e["test_acc"]),
                        fmt(e.get("trained_test_acc")),
                        fmt(e.get("cut_cost")),
                        f"{e['params']['mean']:,.0f}",
                        f"{e['macs']['mean'] / 1e6:.2f}M",
                        f"{e['speedup']:.2f}x",
                        norms,
                        gammas,
                    ]
                )
                + " |"
            )
    return "\n".join(lines)


def diff_table(diffs: list[dict], what: str = "RSST - Refill") -> str:
    lines = [f"| round | {what} (points) | seed spread | beyond spread |", "| --- | --- | --- | --- |"]
    for d in diffs:
        std = "" if d["diff_std"] is None else f" ± {d['diff_std']:.2f}"
        spread = "-" if d["seed_spread"] is None else f"{d['seed_spread']:.2f}"
        beyond = "" if d["beyond_spread"] is None else ("yes" if d["beyond_spread"] else "no")
        lines.append(f"| {d['round']} | {d['diff']:+.2f}{std} | {spread} | {beyond} |")
    return "\n".join(lines)


def removed_channels(run_dir: Path, round_: int) -> dict[str, float] | None:
    """What the channels cut at the end of ``round_`` still carried: their BatchNorm's running variance and |gamma|.

    A channel is cut when it is alive in ``masks/round_<r-1>.pt`` and dead in ``masks/round_<r>.pt``.
    Its conv weights are zero in ``weights/round_<r>.pt`` (saved after the cut), but the BatchNorm
    after it keeps the running variance of the pre-BN output it had while training: near BN's eps
    (1e-5) only if the channel was already silent. The medians are over the cut channels (and, for
    scale, the kept ones) of every ``<block>.conv<i>`` with a ``<block>.bn<i>``.
    """
    from rsst.folder.layout import RunFiles
    from rsst.folder.safeload import load_tensors

    files = RunFiles(run_dir)
    if round_ < 1 or not files.masks(round_).is_file() or not files.weights(round_).is_file():
        return None
    before, after, weights = (
        load_tensors(p) for p in (files.masks(round_ - 1), files.masks(round_), files.weights(round_))
    )
    cut_var, cut_gamma, cut_beta, kept_var = [], [], [], []
    for name, mask in after.items():
        bn = name.replace(".conv", ".bn").removesuffix(".weight")
        if ".conv" not in name or f"{bn}.running_var" not in weights or mask.dim() != 4:
            continue
        alive = mask.flatten(1).any(1)  # a row of the mask: one output channel
        cut = before[name].flatten(1).any(1) & ~alive
        var, gamma = weights[f"{bn}.running_var"].float(), weights[f"{bn}.weight"].float().abs()
        cut_var += var[cut].tolist()
        cut_gamma += gamma[cut].tolist()
        cut_beta += weights[f"{bn}.bias"].float().abs()[cut].tolist()
        kept_var += var[alive].tolist()
    if not cut_var:
        return None
    return {
        "channels_cut": len(cut_var),
        "cut_running_var": statistics.median(cut_var),
        "cut_abs_gamma": statistics.median(cut_gamma),
        "cut_abs_beta": statistics.median(cut_beta),
        "kept_running_var": statistics.median(kept_var),
    }


def beta_check(run_dir: Path, round_: int, threads: int) -> dict[str, float] | None:
    """Does the ticket use the constant its cut channels still emit? Test accuracy with and without their beta.

    A cut channel's conv weights are zero, so after BatchNorm (eval mode) it emits the constant
    ``beta - gamma * mean / sqrt(var + eps)``, which the masked ticket keeps and ``rsst.export`` folds
    into the next layer. With gamma near zero (``penalty_scope=channels``) that constant is ``beta``.
    Zeroing the cut channels' beta in the saved ticket and evaluating on the test split shows whether
    the network relies on it: if not, penalising beta too would change nothing; if it does, penalising
    beta would take away a constant the ticket keeps for free.
    """
    import torch
    from omegaconf import OmegaConf

    from rsst.commands.export import load_round
    from rsst.config.checks import build
    from rsst.folder.naming import read_verified_config
    from rsst.loop.hot_loop import evaluate

    torch.set_num_threads(threads)
    loaded = load_round(run_dir, round_, torch.device("cpu"))
    before = load_round(run_dir, round_ - 1, torch.device("cpu")).masks
    model = loaded.model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in loaded.masks:
                p.mul_(loaded.masks[name])
    data = build(OmegaConf.create(read_verified_config(run_dir)["dataset"]), "dataset")
    kept = evaluate(model, data.batches("test", 1000))
    zeroed = 0
    with torch.no_grad():
        for name, mask in loaded.masks.items():
            bn = name.replace(".conv", ".bn").removesuffix(".weight")
            if ".conv" not in name or mask.dim() != 4 or not hasattr(model.get_submodule(bn), "bias"):
                continue
            cut = before[name].flatten(1).any(1) & ~mask.flatten(1).any(1)
            model.get_submodule(bn).bias[cut] = 0.0
            zeroed += int(cut.sum())
    return {
        "ticket_test_acc": kept,
        "beta_zeroed_test_acc": evaluate(model, data.batches("test", 1000)),
        "channels": zeroed,
    }


def removed_table(runs: list[dict[str, Any]], ablations: list[str]) -> tuple[list[dict[str, Any]], str]:
    """:func:`removed_channels` at every pruned round of each channel-wise run: rows, and a markdown table of
    the medians' mean over seeds per arm and round."""
    rows = []
    for run in runs:
        method = method_of(run, ablations)
        if method == "imp":
            continue
        for r in sorted({row["round"] for row in run["rows"] if "branch" not in row} - {0}):
            found = removed_channels(run["dir"], r)
            if found is not None:
                rows.append({"method": method, "seed": run["cfg"]["seed"], "round": r, **found})
    lines = [
        "| method | round | seeds | channels cut | cut: median pre-BN running var | cut: median abs gamma "
        "| kept: median pre-BN running var |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["round"]), []).append(r)
    for (method, rnd), group in sorted(groups.items()):

        def avg(key: str, group=group) -> float:
            return statistics.fmean(g[key] for g in group)

        lines.append(
            f"| {method} | {rnd} | {len(group)} | {avg('channels_cut'):.0f} | {avg('cut_running_var'):.3g} "
            f"| {avg('cut_abs_gamma'):.3g} | {avg('kept_running_var'):.3g} |"
        )
    return rows, "\n".join(lines)


def beta_checks(runs: list[dict[str, Any]], ablations: list[str], out: Path, threads: int) -> list[dict[str, Any]]:
    """:func:`beta_check` at every pruned round of the ``rsst channels`` runs, cached in ``OUT/beta_check.json``."""
    cache_file = out / "beta_check.json"
    try:
        cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
        assert isinstance(cache, dict)
    except (ValueError, AssertionError, OSError):
        cache = {}
    rows = []
    for run in runs:
        if method_of(run, ablations) != "rsst channels":
            continue
        for r in sorted({row["round"] for row in run["rows"] if "branch" not in row} - {0}):
            key = f"{run['dir'].name}:{r}"
            if key not in cache:
                cache[key] = beta_check(run["dir"], r, threads)
                cache_file.write_text(json.dumps(cache, indent=1) + "\n")
            rows.append({"seed": run["cfg"]["seed"], "round": r, **cache[key]})
    return rows


def beta_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| round | seeds | ticket test acc | with the cut channels' beta zeroed | difference |",
        "| --- | --- | --- | --- | --- |",
    ]
    by: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["round"], []).append(row)
    for r, group in sorted(by.items()):
        kept = mean_std([g["ticket_test_acc"] for g in group])
        zeroed = mean_std([g["beta_zeroed_test_acc"] for g in group])
        diff = mean_std([g["beta_zeroed_test_acc"] - g["ticket_test_acc"] for g in group])
        lines.append(f"| {r} | {len(group)} | {fmt(kept)} | {fmt(zeroed)} | {fmt(diff)} |")
    return "\n".join(lines)


def cut_costs(runs: list[dict[str, Any]], method: str, ablations: list[str]) -> dict[tuple[int, int], float]:
    """``{(round, seed): trained_test_acc - test_acc}`` of one RSST arm's pruned rounds: what the cut cost."""
    out = {}
    for run in runs:
        if method_of(run, ablations) != method:
            continue
        for row in run["rows"]:
            if row.get("branch") is None and row["round"] > 0 and "trained_test_acc" in row:
                out[(row["round"], run["cfg"]["seed"])] = row["trained_test_acc"] - row["test_acc"]
    return out


def intervention(runs: list[dict[str, Any]], ablations: list[str]) -> dict[str, Any]:
    """Does penalising the whole channel close the cut's cost? ``rsst channels`` against ``rsst``, paired by seed.

    Per pruned round: both arms' cut cost (as trained minus ticket) and their paired difference. The
    channel scope *narrows* the cost at a round when the paired reduction exceeds the seed spread of
    the two arms' costs; it *closes* it at a round when its own mean cost is within its seed spread of
    zero (or below 0.5 points with one seed). The answer counts rounds.
    """
    weights, channels = cut_costs(runs, "rsst", ablations), cut_costs(runs, "rsst channels", ablations)
    rounds = []
    for r in sorted({r for r, _ in weights} & {r for r, _ in channels}):
        seeds = sorted({s for rr, s in weights if rr == r} & {s for rr, s in channels if rr == r})
        w = [weights[(r, s)] for s in seeds]
        c = [channels[(r, s)] for s in seeds]
        reduction = [a - b for a, b in zip(w, c, strict=True)]
        spread = max((statistics.stdev(v) for v in (w, c) if len(v) > 1), default=None)
        c_std = statistics.stdev(c) if len(c) > 1 else None
        mean_c = statistics.fmean(c)
        rounds.append(
            {
                "round": r,
                "seeds": seeds,
                "cost_weights": round(statistics.fmean(w), 3),
                "cost_channels": round(mean_c, 3),
                "cost_channels_std": None if c_std is None else round(c_std, 3),
                "reduction": round(statistics.fmean(reduction), 3),
                "reduction_std": round(statistics.stdev(reduction), 3) if len(reduction) > 1 else None,
                "narrowed": None if spread is None else statistics.fmean(reduction) > spread,
                "closed": abs(mean_c) <= (c_std if c_std is not None else 0.5),
            }
        )
    if not rounds:
        return {"answer": "cannot be judged yet: no pruned round has finished for both RSST arms", "rounds": []}
    n = len(rounds)
    narrowed = sum(1 for d in rounds if d["narrowed"])
    closed = sum(1 for d in rounds if d["closed"])
    mean_w = statistics.fmean(d["cost_weights"] for d in rounds)
    mean_c = statistics.fmean(d["cost_channels"] for d in rounds)
    if closed > n / 2:
        head = "yes: penalising the whole channel closes the cut's cost"
    elif narrowed > n / 2:
        head = "partly: penalising the whole channel narrows the cut's cost beyond the seed spread, not closing it"
    else:
        head = "no: penalising the whole channel does not narrow the cut's cost beyond the seed spread"
    tail = (
        f"(the cut costs {mean_w:+.2f} points with the penalty on the weights and {mean_c:+.2f} with it on the "
        f"channels, mean over the {n} pruned rounds; narrowed beyond the seed spread at {narrowed} of {n}, "
        f"within the seed spread of zero at {closed} of {n})"
    )
    return {"answer": f"{head} {tail}", "rounds": rounds}


def intervention_table(rounds: list[dict[str, Any]]) -> str:
    lines = [
        "| round | cut's cost, penalty on weights | cut's cost, penalty on channels | reduction (paired) | narrowed "
        "| closed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for d in rounds:
        c_std = "" if d["cost_channels_std"] is None else f" ± {d['cost_channels_std']:.2f}"
        r_std = "" if d["reduction_std"] is None else f" ± {d['reduction_std']:.2f}"
        narrowed = "-" if d["narrowed"] is None else ("yes" if d["narrowed"] else "no")
        lines.append(
            f"| {d['round']} | {d['cost_weights']:+.2f} | {d['cost_channels']:+.2f}{c_std} "
            f"| {d['reduction']:+.2f}{r_std} | {narrowed} | {'yes' if d['closed'] else 'no'} |"
        )
    return "\n".join(lines)


def export_sparsest(runs: list[dict[str, Any]], ablations: list[str], threads: int, repeats: int) -> dict:
    """``rsst.export`` of the sparsest finished round of the first seed's Refill and RSST runs.

    Run in this process with ``threads`` torch threads, the number the study trains with, so that
    the latencies are those of the training setting on any machine.
    """
    import torch

    torch.set_num_threads(threads)
    out: dict[str, Any] = {}
    for method in ("refill", "rsst"):
        candidates = [r for r in runs if method_of(r, ablations) == method]
        if not candidates:
            continue
        run = min(candidates, key=lambda r: r["cfg"]["seed"])
        rnd = max((row["round"] for row in run["rows"] if row.get("branch") is None), default=0)
        if rnd == 0:
            continue
        from rsst.commands.export import main as export_main  # in this process: no second start-up

        argv = [str(run["dir"]), "--round", str(rnd), "--device", "cpu", "--repeats", str(repeats)]
        errors = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
            code = export_main(argv)
        if code != 0:
            raise SystemExit(f"rsst.export failed for {run['dir']} (exit {code}): {errors.getvalue().strip()}")
        result = json.loads((run["dir"] / f"export_round_{rnd}.json").read_text())
        out[method] = {
            "run_dir": str(run["dir"]),
            "seed": run["cfg"]["seed"],
            "round": rnd,
            **{k: result[k] for k in result if k.startswith("latency_ms") or k in ("params", "macs")},
        }
    return out


def latency_table(exports: dict) -> str:
    lines = [
        "| ticket | round | batch | dense ms | exported ms | exported / dense |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method, e in exports.items():
        for key in sorted(k for k in e if k.startswith("latency_ms")):
            lat = e[key]
            b = key.removeprefix("latency_ms_batch")
            lines.append(
                f"| {method} | {e['round']} | {b} | {lat['dense']:.2f} | {lat['exported']:.2f} | {lat['ratio']:.3f} |"
            )
    return "\n".join(lines)


def dense_size(env: dict[str, str], quick: bool) -> tuple[int, int]:
    """Params and MACs of the dense network the study trains (ResNet-20 of the study's width, CIFAR shape)."""
    from rsst.models.cifar_resnet import resnet20
    from rsst.models.size import count_macs, count_params

    model = resnet20(num_classes=10, in_channels=3, image_size=32, **({"width": 4} if quick else {}))
    return count_params(model), count_macs(model, (1, 3, 32, 32))


def read_timing(timing_file: Path) -> dict[str, Any]:
    """The study's clock from ``timing_file``: wall seconds, starts and each start's machine; fresh when unreadable.

    A file written before the machines were recorded has no ``machines``: its starts count as unrecorded.
    """
    timing: dict[str, Any] = {"sweep_seconds": 0.0, "starts": 0, "machines": []}
    if not timing_file.is_file():
        return timing
    try:
        found = json.loads(timing_file.read_text())
        numbers = ("sweep_seconds", "starts")
        assert isinstance(found, dict) and all(isinstance(found.get(k), (int, float)) for k in numbers)
        machines = found.get("machines", [])
        assert isinstance(machines, list) and all(
            isinstance(m, dict) and isinstance(m.get("from"), str) and isinstance(m.get("processor"), str)
            and isinstance(m.get("bf16_flags"), list) and all(isinstance(f, str) for f in m["bf16_flags"])
            for m in machines
        )  # fmt: skip
        return {"sweep_seconds": found["sweep_seconds"], "starts": found["starts"], "machines": machines}
    except (ValueError, AssertionError, OSError):
        sys.stderr.write(f"{timing_file} is unreadable: the wall time counts from this start\n")
        return timing


def machine_record() -> dict[str, Any]:
    """What this start of the study runs on: the time, the processor and its bf16 units (``lscpu``'s flags)."""
    flags = sorted(f for f in cpuinfo_flags() if f.startswith("amx") or "bf16" in f)
    return {"from": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "processor": processor_name(), "bf16_flags": flags}


def machines_line(timing: dict[str, Any]) -> str:
    """Which processor ran which start, in words: every training start is recorded by :func:`machine_record`."""
    machines = timing.get("machines", [])
    parts = [f"{m['processor']} ({', '.join(m['bf16_flags']) or 'no bf16 units'}) from {m['from']}" for m in machines]
    unrecorded = timing["starts"] - len(machines)
    if unrecorded > 0:
        parts.insert(0, f"{unrecorded} earlier start(s) whose machine was not recorded")
    return "; ".join(parts) if parts else "no start recorded"


def run_sweeps(
    todo: list[tuple[str, list[str]]],
    out: Path,
    env: dict[str, str],
    jobs: int,
    timing: dict,
    timing_file: Path,
    tick: float = 60.0,
) -> None:
    """Each ``launch.py -m`` sweep, ``jobs`` at a time, into ``out``; the wall time is added to ``timing`` as it goes.

    The wall time is written to ``timing_file`` every ``tick`` seconds and when a sweep ends, so a study killed
    part-way keeps all but the last tick of it. One at a time, a sweep's output streams to stderr; several at
    once, each writes ``out/logs/<n>.log``. The first sweep that fails ends the study (after the ones running
    beside it) with its exit status.
    """
    clock = {"last": time.perf_counter()}
    lock = threading.Lock()
    done = threading.Event()
    (out / "logs").mkdir(exist_ok=True)

    def account() -> None:
        with lock:  # the wall time since the last update: sweeps running side by side are not counted twice
            now = time.perf_counter()
            timing["sweep_seconds"] += now - clock["last"]
            clock["last"] = now
            atomic_write_text(timing_file, json.dumps(timing) + "\n")  # a kill mid-write keeps the last

    def ticker() -> None:
        while not done.wait(tick):
            account()

    def one(item: tuple[int, tuple[str, list[str]]]) -> tuple[str, int, Path | None]:
        n, (label, sweep) = item
        cmd = [sys.executable, "launch.py", *sweep, f"hydra.sweep.dir={out}"]
        if jobs == 1:
            sys.stderr.write(f"== {label}\n")
            code, log_file = subprocess.run(cmd, cwd=ROOT, env=env, stdout=sys.stderr).returncode, None
        else:
            log_file = out / "logs" / f"{n}.log"
            with open(log_file, "w") as f:
                sys.stderr.write(f"== {label}: started, log in {log_file}\n")
                code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
            sys.stderr.write(f"== {label}: {'done' if code == 0 else f'failed (exit {code})'}\n")
        account()
        return label, code, log_file

    timing["starts"] += 1
    timing.setdefault("machines", []).append(machine_record())
    account()
    clock_thread = threading.Thread(target=ticker, daemon=True)
    clock_thread.start()
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            results = list(pool.map(one, enumerate(todo)))
    finally:
        done.set()
        clock_thread.join()
    for label, code, log_file in results:
        if code != 0:
            where = f"its log is {log_file}" if log_file else "its log is above"
            raise SystemExit(f"the sweep '{label}' failed (launch.py exit {code}); {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 pruned rounds of 1 epoch on 64 images")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    parser.add_argument("--out", default=None, help="the study folder (default multirun_outputs/structured_study)")
    parser.add_argument(
        "--controls", default="reinit", help="controls on the structured tickets (default reinit; '' for none)"
    )
    parser.add_argument(
        "--ablation", action="append", default=None,
        help="extra RSST arms: channels, period_round or g=<float>, repeatable (default channels and period_round; "
        "none for no extra arm)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per latency (median reported)")
    parser.add_argument("--no-train", action="store_true", help="only summarise the runs already in --out")
    parser.add_argument(
        "--budget", choices=tuple(BUDGETS), default="cpu", help="cpu: 20,000 images, 8 epochs a round (default); "
        "gpu: all 45,000, 20 epochs a round (add device=cuda)",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="sweeps run at once (default 1; 4 fills a GPU better)")
    parser.add_argument(
        "--clock-every", type=float, default=60.0, metavar="SECONDS",
        help="write the study's wall time to OUT/study_time.json this often (default 60), so a kill loses at most that",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="extra launch.py overrides, e.g. dataset.root=DIR")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs={args.jobs}: expected an integer >= 1")
    if not args.clock_every > 0:
        parser.error(f"--clock-every={args.clock_every:g}: expected a number of seconds > 0")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
        assert all(s >= 0 for s in args.seeds)
    except (ValueError, AssertionError):
        parser.error(f"--seeds={args.seeds!r}: expected comma-separated integers >= 0, e.g. 1,2")
    args.controls = [c for c in args.controls.split(",") if c]
    args.ablation = list(DEFAULT_ABLATIONS) if args.ablation is None else [a for a in args.ablation if a != "none"]
    if any(c not in ("reinit", "shuffle_layerwise") for c in args.controls):
        parser.error(f"--controls={','.join(args.controls)!r}: expected reinit and/or shuffle_layerwise")
    for name in args.ablation:
        try:
            ablation_overrides(name)
        except ValueError as exc:
            parser.error(str(exc))
    out = Path(args.out or f"multirun_outputs/structured_study{'_quick' if args.quick else ''}").expanduser().resolve()
    if out.exists() and not out.is_dir():
        parser.error(f"--out={str(out)!r} is a file: expected a folder (made if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out={str(out)!r}: cannot make the folder ({exc.strerror})")
    if args.quick and not any(o.startswith("dataset.root=") for o in args.overrides):
        args.overrides += [f"dataset.root={write_smoke_cifar(out / 'smoke_data')}", *SMOKE_SIZES]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    env.setdefault("OMP_NUM_THREADS", "2" if args.jobs == 1 else "1")

    timing_file = out / "study_time.json"
    timing = read_timing(timing_file)
    if not args.no_train:
        run_sweeps(sweeps(args), out, env, args.jobs, timing, timing_file, args.clock_every)

    runs = read_runs(out)
    summary = summarise(runs, args.ablation)
    attach_sizes(summary, *dense_size(env, args.quick))
    ticket = paired(runs, "rsst", "refill", "test_acc", "test_acc", args.ablation)
    trained = paired(runs, "rsst", "refill", "trained_test_acc", "test_acc", args.ablation)
    exports = export_sparsest(runs, args.ablation, int(env["OMP_NUM_THREADS"]), args.repeats)
    compute = sum(row.get("seconds", 0.0) for run in runs for row in run["rows"])
    removed, removed_md = removed_table(runs, args.ablation)
    from rsst.commands.report import report  # in this process, as the export

    for x in ("channel_density", "macs"):
        try:
            report(out, out / f"report_{x}", x=x)
        except Exception as exc:  # any failure of the report ends the study with its reason
            raise SystemExit(f"rsst.report --x {x} failed: {type(exc).__name__}: {exc}") from exc
    ablated = {name: paired(runs, ablation_label(name), "refill", "test_acc", "test_acc", args.ablation)
               for name in args.ablation}  # fmt: skip
    channel_test = intervention(runs, args.ablation)
    controlled = {
        method: [
            {"control": c, "rounds": d}
            for c in args.controls
            if (d := paired(runs, method, method, "test_acc", "test_acc", args.ablation, branch_b=c))
        ]
        for method in ("refill", "rsst")
    }
    betas = beta_checks(runs, args.ablation, out, int(env["OMP_NUM_THREADS"])) if "channels" in args.ablation else []
    verdict = {
        "ticket": answer(ticket),
        "trained": answer(trained, "RSST as trained", "Refill"),
        "ticket_rounds": ticket,
        "trained_rounds": trained,
        "ablations": {
            name: {"answer": answer(d, f"RSST ({ablation_label(name)[5:]})", "Refill"), "rounds": d}
            for name, d in ablated.items()
        },
        "intervention": channel_test,
        "controls": {
            method: {
                c["control"]: {
                    "answer": answer(c["rounds"], f"{NAMES[method]}'s ticket", f"its {c['control']} control"),
                    "rounds": c["rounds"],
                }
                for c in found
            }
            for method, found in controlled.items()
        },
    }
    settings = {
        "quick": args.quick,
        "seeds": args.seeds,
        "method": METHOD,
        "budget": QUICK if args.quick else BUDGETS[args.budget],
        "controls": args.controls,
        "ablation": args.ablation,
        "overrides": args.overrides,
        "processor": processor_name(),
        "cpus": os.cpu_count(),
        "threads": env["OMP_NUM_THREADS"],
        "training_seconds": round(compute, 1),
        "sweep_seconds_all_starts": round(timing["sweep_seconds"], 1),
        "starts": timing["starts"],
        "machines": timing["machines"],
    }
    result = {
        "summary": summary, "verdict": verdict, "latency": exports, "removed": removed, "beta": betas,
        "settings": settings,
    }  # fmt: skip
    (out / "study.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Structured study: RSST against Refill (and IMP) on CIFAR-10, ResNet-20",
        "",
        tables(summary),
        "",
        "RSST is the original's: lambda climbs within every epoch (`schedule.period=epoch`), the penalty on the "
        "conv weights of P_r. The cut's cost is the network as trained minus its ticket, paired by seed.",
        "",
        "## RSST - Refill, ticket against ticket",
        "",
        diff_table(ticket),
        "",
        f"Does RSST beat Refill here? {verdict['ticket']}.",
        "",
        "## RSST as trained (M_r | R_r, what the original code reported) - Refill",
        "",
        diff_table(trained),
        "",
        f"Does RSST as trained beat Refill? {verdict['trained']}.",
        "",
        *(
            line
            for name, d in ablated.items()
            for line in (
                f"## RSST with {ablation_label(name)[5:]} - Refill, ticket against ticket",
                "",
                diff_table(d),
                "",
                f"Does RSST with {ablation_label(name)[5:]} beat Refill? {verdict['ablations'][name]['answer']}.",
                "",
            )
        ),
        *(
            [
                "## The intervention: does penalising the whole channel close the cut's cost?",
                "",
                "`struct.penalty_scope=channels` penalises the BatchNorm scale (gamma) of the channels RSST drops "
                "with the same lambda(t) as their conv weights. If BatchNorm's rescaling is why the cut costs "
                "accuracy, the cut should then cost almost nothing.",
                "",
                intervention_table(channel_test["rounds"]),
                "",
                f"Does it? {channel_test['answer']}.",
                "",
                "Beta is not penalised. A cut channel of the channel scope emits the constant beta (its gamma near "
                "zero), which the masked ticket keeps and `rsst.export` folds into the next layer. Does the ticket "
                "use it? Test accuracy of the saved ticket, and of the same ticket with the cut channels' beta set "
                "to zero (fp32, mean ± std over seeds):",
                "",
                beta_table(betas),
                "",
            ]
            if "channels" in args.ablation
            else []
        ),
        *(
            line
            for method, found in verdict["controls"].items()
            for control, v in found.items()
            for line in (
                f"## Is {NAMES[method]}'s ticket a ticket? Against its {control} control",
                "",
                f"The ticket's test accuracy minus that of the same mask trained from a {control} start, paired "
                "by seed.",
                "",
                diff_table(v["rounds"], f"{NAMES[method]} ticket - {control}"),
                "",
                f"Does {NAMES[method]}'s ticket beat its {control} control? {v['answer']}.",
                "",
            )
        ),
        "## What the channels cut at every round still carried",
        "",
        "BatchNorm undoes a conv weight's scale: a channel whose weights shrink keeps its normalised output "
        "until it is cut. Its running variance near BN's eps (1e-5) means it was already silent. Medians over "
        "the cut channels of each run, averaged over the seeds.",
        "",
        removed_md,
        "",
        "## Latency of the sparsest tickets (CPU, exported against dense)",
        "",
        latency_table(exports),
        "",
        f"Training compute: {compute / 3600:.2f} h summed over rounds ({settings['processor']}, "
        f"{settings['threads']} threads); the sweeps' wall time over {timing['starts']} start(s): "
        f"{timing['sweep_seconds'] / 3600:.2f} h.",
        "",
        f"The starts ran on: {machines_line(timing)}.",
    ]
    (out / "study.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(json.dumps({"verdict": {k: verdict[k] for k in ("ticket", "trained")}, "settings": settings}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
