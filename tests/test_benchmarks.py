"""The benchmarks' quick modes run on the CPU and print their figures as JSON lines (and a table)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, compose_config, python
from omegaconf import OmegaConf

from rsst.config.checks import validate_config
from rsst.config.sweeps import job_overrides
from rsst.data.fashion_mnist import SYSTEM_ROOT
from rsst.runtime.precision import cpuinfo_flags, fast_bf16_cpu, processor_name, torch_bf16_units

FIELDS = {
    "loop",
    "arch",
    "classes",
    "images_per_s",
    "seconds_per_epoch",
    "peak_memory_mib",
    "peak_rss_mib",
    "device",
    "batch_size",
    "images",
    "epochs",
    "amp",
    "channels_last",
    "compile",
    "data",
    "torch",
}
LOOPS = ["seed_imp", "seed_rsst", "dense", "imp", "refill", "rsst"]
PROJECT = ["dense", "imp", "refill", "rsst"]
RATIOS = {
    "imp_speedup_vs_seed_imp",
    "rsst_speedup_vs_seed_rsst",
    "rsst_epoch_vs_imp_epoch",
    "imp_epoch_vs_dense_epoch",
    "refill_epoch_vs_dense_epoch",
    "seed_rsst_epoch_vs_seed_imp_epoch",
}


def bench(*argv: str, timeout: float = 300):
    """``python ARGV`` from the repository root with the checkout on the path, as the scripts' docs run them."""
    return python(*argv, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout)


@pytest.mark.slow
def test_the_mask_layout_benchmark_times_both_layouts_in_one_process_and_prints_their_ratio():
    proc = bench("benchmarks/mask_layout.py", "--repeats", "20", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["layers"] == 18 and figures["standard_layout_us"] > 0 and figures["weights_layout_us"] > 0
    assert figures["speedup"] == pytest.approx(figures["standard_layout_us"] / figures["weights_layout_us"], abs=0.01)
    bad = bench("benchmarks/mask_layout.py", "--repeats", "0")
    assert bad.returncode == 2 and "--repeats=0: expected an integer >= 1" in bad.stderr


@pytest.mark.slow
def test_quick_mode_prints_one_json_line_per_loop_and_precision_and_the_ratios():
    proc = bench("benchmarks/train_speed.py", "--quick")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rows, last = lines[:-1], lines[-1]
    # the seed-style loops once (fp32), the project's loops in fp32 and then in bf16
    assert [(row["loop"], row["amp"]) for row in rows] == [
        *((loop, "off") for loop in LOOPS),
        *((loop, "bf16") for loop in PROJECT),
    ]
    native = "bf16 units: " + (", ".join(torch_bf16_units() or []) or "none")
    for row in rows:
        assert set(row) == FIELDS
        assert row["images_per_s"] > 0 and row["seconds_per_epoch"] > 0
        assert row["images_per_s"] == pytest.approx(row["images"] / row["seconds_per_epoch"], rel=0.01)
        assert row["device"].startswith("CPU (") and row["device"].endswith(f" threads, {native})")
        assert row["peak_memory_mib"] is None
        assert (row["batch_size"], row["images"], row["epochs"]) == (32, 64, 1)
    assert rows[0]["data"].startswith("DataLoader") and rows[2]["data"] == "device"
    ratios = last["ratios"]
    bf16_keys = {f"{k}_bf16" for k in RATIOS if not k.startswith("seed_")} | {f"{p}_bf16_vs_off" for p in PROJECT}
    assert set(ratios) == RATIOS | bf16_keys
    by_key = {(row["loop"], row["amp"]): row for row in rows}
    expect = by_key[("imp", "off")]["images_per_s"] / by_key[("seed_imp", "off")]["images_per_s"]
    assert ratios["imp_speedup_vs_seed_imp"] == pytest.approx(expect, abs=0.002)
    expect = by_key[("imp", "bf16")]["images_per_s"] / by_key[("seed_imp", "off")]["images_per_s"]
    assert ratios["imp_speedup_vs_seed_imp_bf16"] == pytest.approx(expect, abs=0.002)
    expect = by_key[("rsst", "bf16")]["images_per_s"] / by_key[("rsst", "off")]["images_per_s"]
    assert ratios["rsst_bf16_vs_off"] == pytest.approx(expect, abs=0.002)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--amp", "off,fp8"], "--amp: unknown ['fp8']; choose from auto, bf16, fp16, off, comma-separated"),
        (
            ["--loops", "imp,fastest"],
            "--loops: unknown ['fastest']; choose from seed_imp, seed_rsst, dense, imp, refill, rsst",
        ),
    ],
    ids=["amp", "loops"],
)
@pytest.mark.slow
def test_an_unknown_choice_is_refused_with_the_choices(args, message):
    proc = bench("benchmarks/train_speed.py", "--quick", *args, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr


def load_benchmark(name: str):
    """A script under benchmarks/ as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_parity_summary_calls_a_difference_within_the_spread_only_up_to_the_larger_std():
    parity = load_benchmark("bf16_parity")

    def runs(fp32: list[float], bf16: list[float]) -> list[dict]:
        return [
            {"precision": p, "seed": s, "test_acc": {"0": acc, "1": acc - 1.0}, "wall_seconds": 10.0}
            for p, accs in (("fp32", fp32), ("bf16", bf16))
            for s, acc in enumerate(accs)
        ]

    close = parity.summarise(runs([80.0, 82.0, 84.0], [81.0, 83.0, 85.5]))  # std 2.0 and 2.25, diff +1.17
    assert close["rounds"]["0"]["fp32"] == {"mean": 82.0, "std": 2.0, "n": 3}
    assert close["rounds"]["0"]["bf16_minus_fp32"] == pytest.approx(1.17, abs=0.01)
    assert close["rounds"]["0"]["within_seed_spread"] is True
    assert close["wall_seconds"] == {"fp32": 30.0, "bf16": 30.0}
    far = parity.summarise(runs([80.0, 82.0, 84.0], [84.0, 85.0, 86.0]))  # std 2.0 and 1.0, diff +3.0
    assert far["rounds"]["1"]["bf16_minus_fp32"] == pytest.approx(3.0)
    assert far["rounds"]["1"]["within_seed_spread"] is False
    one = parity.summarise(runs([80.0], [79.0]))
    assert one["rounds"]["0"]["fp32"]["std"] is None and one["rounds"]["0"]["within_seed_spread"] is None


@pytest.mark.slow
@pytest.mark.skipif(not SYSTEM_ROOT.is_dir(), reason=f"{SYSTEM_ROOT} absent: apt-get install dataset-fashion-mnist")
def test_parity_quick_mode_trains_both_precisions_on_fashion_mnist_and_prints_the_table(tmp_path):
    proc = bench("benchmarks/bf16_parity.py", "--quick", "--out", str(tmp_path), timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    runs, last = lines[:-1], lines[-1]
    assert [(r["precision"], r["seed"]) for r in runs] == [("fp32", 0), ("bf16", 0)]
    for run in runs:
        assert set(run["test_acc"]) == {"0", "1"} and all(0.0 <= a <= 100.0 for a in run["test_acc"].values())
        assert run["remain_weight"]["1"] == pytest.approx(80.0, abs=0.01)
        assert run["wall_seconds"] >= run["train_seconds"] > 0
        assert run["run_dir"].startswith("imp_fashionmnist_resnet20_s0_")
    fp32, bf16 = runs
    assert (tmp_path / "fp32_s0" / fp32["run_dir"] / "rounds.json").is_file()
    assert (tmp_path / "bf16_s0" / bf16["run_dir"] / "rounds.json").is_file()
    assert fp32["run_dir"] != bf16["run_dir"]  # the precision is part of the run's identity
    summary, settings = last["summary"], last["settings"]
    for rnd in ("0", "1"):
        row = summary["rounds"][rnd]
        assert row["fp32"] == {"mean": round(fp32["test_acc"][rnd], 2), "std": None, "n": 1}
        assert row["bf16_minus_fp32"] == pytest.approx(bf16["test_acc"][rnd] - fp32["test_acc"][rnd], abs=0.011)
    assert (settings["train_subset"], settings["epochs"], settings["width"], settings["seeds"]) == (128, 1, 4, 1)
    assert settings["fast_bf16"] is fast_bf16_cpu()[0]
    assert f"| dense (round 0) | bf16 | {bf16['test_acc']['0']:.2f} |" in proc.stdout


def test_the_replication_verdict_needs_tickets_near_dense_in_the_band_and_above_both_controls_at_the_end():
    replication = load_benchmark("lth_replication")

    def runs(ticket: dict[int, float], reinit: float, shuffle: float) -> list[list[dict]]:
        weights = {0: 100.0, 1: 21.0, 2: 16.9, 3: 6.95, 4: 4.47}
        rows = []
        for seed_shift in (-0.5, 0.5):  # two seeds, 1 point apart
            seed = []
            for r, acc in ticket.items():
                seed.append({"round": r, "remain_weight": weights[r], "test_acc": acc + seed_shift})
                if r > 0:
                    seed.append({"round": r, "branch": "reinit", "remain_weight": weights[r], "test_acc": reinit})
                    seed.append({"round": r, "branch": "shuffle_layerwise", "test_acc": shuffle})
            rows.append(seed)
        return rows

    good = replication.summarise(runs({0: 88.0, 1: 80.0, 2: 87.2, 3: 87.0, 4: 86.0}, 85.0, 85.5), sparsest=2)
    assert good["dense"] == {"mean": 88.0, "std": 0.71, "n": 2}
    by_round = {e["round"]: e for e in good["rounds"]}
    assert "within_dense" not in by_round[1] and "within_dense" not in by_round[4]  # 21% and 4.47% lie outside 5-20%
    assert by_round[2]["ticket_minus_dense"] == pytest.approx(-0.8) and by_round[2]["within_dense"] is True
    assert by_round[3]["within_dense"] is True and good["sparsest"] == [3, 4]
    assert by_round[4]["above_controls"] is True and by_round[4]["shuffle_layerwise"]["mean"] == 85.5
    assert good["pattern"] is True
    assert replication.verdict(good).startswith("The lottery-ticket pattern appeared: tickets from 20% to 5%")
    far = replication.summarise(runs({0: 88.0, 1: 88.0, 2: 86.9, 3: 87.0, 4: 86.0}, 85.0, 85.5), sparsest=2)
    assert {e["round"]: e.get("within_dense") for e in far["rounds"]}[2] is False  # 1.1 points below dense
    assert far["pattern"] is False and far["above_controls"] is True
    beaten = replication.summarise(runs({0: 88.0, 1: 88.0, 2: 87.5, 3: 87.0, 4: 85.4}, 85.0, 85.5), sparsest=2)
    assert beaten["within_dense"] is True and beaten["above_controls"] is False and beaten["pattern"] is False
    assert "did not appear" in replication.verdict(beaten)
    dense_only = replication.summarise([[{"round": 0, "remain_weight": 100.0, "test_acc": 88.0}]])
    assert dense_only["pattern"] is None and "cannot be judged" in replication.verdict(dense_only)


@pytest.mark.slow
def test_replication_quick_mode_writes_the_report_with_both_controls_beside_the_ticket(tmp_path):
    import csv

    from fake_data import write_fashion_mnist

    extra = []
    if not SYSTEM_ROOT.is_dir():  # the real format, written small, where Debian's package is absent
        write_fashion_mnist(tmp_path / "fashion", train=60, test=20)
        extra = [f"dataset.root={tmp_path / 'fashion'}", "dataset.train_size=50", "dataset.val_size=10"]
        extra.append("dataset.test_size=20")
    out = tmp_path / "sweep"
    proc = bench("benchmarks/lth_replication.py", "--quick", "--out", str(out), *extra, timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert all((out / name).stat().st_size > 0 for name in ("report.md", "report.png", "report.csv"))
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    # two seeds; the ticket at rounds 0, 1, 2 and each control at the pruned rounds 1 and 2
    assert sorted((row["branch"], row["round"], row["n"]) for row in rows) == [
        ("reinit", "1", "2"),
        ("reinit", "2", "2"),
        ("shuffle_layerwise", "1", "2"),
        ("shuffle_layerwise", "2", "2"),
        ("ticket", "0", "2"),
        ("ticket", "1", "2"),
        ("ticket", "2", "2"),
    ]
    assert [float(row["remain_weight"]) for row in rows if row["branch"] == "ticket"] == pytest.approx(
        [100.0, 80.04, 64.06], abs=0.01
    )
    markdown = (out / "report.md").read_text()
    assert "| imp — reinit | 2 |" in markdown and "| imp — shuffle_layerwise | 2 |" in markdown
    result = json.loads(proc.stdout.splitlines()[-1])
    summary, settings = result["summary"], result["settings"]
    assert [e["round"] for e in summary["rounds"]] == [0, 1, 2] and settings["seeds"] == [1, 2]
    for entry in summary["rounds"][1:]:
        assert {"ticket", "reinit", "shuffle_layerwise"} <= set(entry) and entry["reinit"]["n"] == 2
    assert summary["pattern"] is None  # 64% is the sparsest level: nothing between 20% and 5% to judge
    assert "The lottery-ticket pattern cannot be judged here" in proc.stdout
    assert json.loads((out / "pattern.json").read_text())["summary"] == summary
    assert 0 < settings["sweep_seconds"] <= settings["wall_seconds"] < 60


def test_the_study_verdict_pairs_seeds_and_needs_a_difference_beyond_the_seed_spread():
    study = load_benchmark("structured_study")

    def diff(d, spread):
        return {"diff": d, "seed_spread": spread, "beyond_spread": abs(d) > spread}

    assert study.answer([diff(2.0, 1.0), diff(3.0, 1.0), diff(0.1, 1.0)]).startswith("yes: RSST beats Refill")
    assert study.answer([diff(-9.0, 1.0), diff(-3.0, 1.0), diff(0.5, 1.0)]).startswith("no: Refill beats RSST")
    assert study.answer([diff(2.0, 1.0), diff(-3.0, 1.0), diff(0.5, 1.0)]).startswith("no difference beyond")
    assert study.answer([]).startswith("cannot be judged yet")
    rows = {"refill": [(1, 60.0), (2, 62.0)], "rsst": [(1, 55.0), (2, 58.0)]}
    runs = [
        {"cfg": {"seed": s, "struct": {"_target_": f"rsst.pruning.strategies.{m.upper()}"}, "schedule": {}},
         "rows": [{"round": 0, "test_acc": 70.0}, {"round": 1, "test_acc": acc}]}
        for m, pairs in rows.items() for s, acc in pairs
    ]  # fmt: skip
    (paired,) = study.paired(runs, "rsst", "refill", "test_acc", "test_acc", [])
    assert (
        paired["round"] == 1
        and paired["diff"] == pytest.approx(-4.5)
        and paired["diff_std"] == pytest.approx(0.707, abs=1e-3)
    )
    assert paired["seed_spread"] == pytest.approx(2.121, abs=1e-3) and paired["beyond_spread"] is True


def test_structured_study_gpu_budget_sweeps_compose_and_validate_with_every_training_image():
    study = load_benchmark("structured_study")
    args = argparse.Namespace(
        quick=False, budget="gpu", seeds=[1, 2], controls=["reinit"], ablation=["channels"], overrides=[]
    )
    todo = study.sweeps(args)
    assert len(todo) == 2 * 3  # per seed: refill+rsst, the ablation, imp
    assert [label for label, _ in todo[:3]] == ["seed 1: refill, rsst", "seed 1: rsst channels", "seed 1: imp"]
    for label, argv in todo:
        assert argv[0] == "-m"
        overrides = [*argv[1:], "device=cuda"]
        for job in job_overrides(OmegaConf.create({"hydra": {"overrides": {"task": overrides}}})):
            cfg = compose_config(job)
            validate_config(cfg, check_device=False)
            assert cfg.dataset.train_subset is None and cfg.dataset.train_size == 45000, label
            assert (cfg.train.epochs, list(cfg.lr_schedule.milestones), cfg.prune.rounds) == (20, [10, 15], 6)


def test_an_ablations_runs_carry_the_label_its_verdict_pairs_with_refill():
    """``--ablation NAME`` launches RSST with ``ablation_overrides(NAME)``; the summary finds those runs by
    ``method_of``, and the verdict pairs ``ablation_label(NAME)`` with Refill: the three must agree."""
    study = load_benchmark("structured_study")
    cases = (("channels", "rsst channels"), ("period_round", "rsst period_round"), ("g=0.1", "rsst g=0.1"))
    for name, label in cases:
        cfg = compose_config([*study.METHOD, "struct=rsst", *study.ablation_overrides(name)])
        run = {"cfg": OmegaConf.to_container(cfg, resolve=True)}
        assert study.ablation_label(name) == label and study.method_of(run, [name]) == label
    plain = {"cfg": OmegaConf.to_container(compose_config([*study.METHOD, "struct=rsst"]), resolve=True)}
    assert study.method_of(plain, ["channels"]) == "rsst"  # the original: period an epoch, penalty on the weights


@pytest.mark.slow
def test_structured_study_quick_mode_runs_every_arm_on_its_own_cifar_format_files(tmp_path):
    """No dataset.root: the smoke run writes its own tiny data set in CIFAR-10's on-disk format and trains on it."""
    out = tmp_path / "study"
    cmd = ["benchmarks/structured_study.py", "--quick", "--out", str(out), "--repeats", "1"]
    cmd += ["--seeds", "1,2", "--controls", "reinit", "--ablation", "channels", "--jobs", "2"]  # two sweeps at once
    proc = bench(*cmd)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert (out / "smoke_data" / "cifar-10-batches-py" / "test_batch").is_file()
    result = json.loads((out / "study.json").read_text())
    assert f"dataset.root={out / 'smoke_data'}" in result["settings"]["overrides"]
    methods = result["summary"]["methods"]
    assert set(methods) == {"imp", "refill", "rsst", "rsst channels", "refill reinit", "rsst reinit"}
    for control in ("refill reinit", "rsst reinit"):  # the control of every pruned ticket, over both seeds
        entries = methods[control]
        assert [e["round"] for e in entries] == [1, 2] and all(e["test_acc"]["n"] == 2 for e in entries)
    for name, entries in methods.items():
        if name.endswith("reinit"):
            continue
        assert [e["round"] for e in entries] == [0, 1, 2], name
        assert all(e["test_acc"]["n"] == 2 for e in entries)  # two seeds, mean and std
        assert entries[-1]["weight_density"]["mean"] < 70.0
    assert methods["refill"][-1]["channel_density"]["mean"] < 100.0 and methods["refill"][-1]["speedup"] > 1.0
    assert methods["imp"][-1]["channel_density"]["mean"] == 100.0 and methods["imp"][-1]["speedup"] == 1.0
    assert {"trained_test_acc", "cut_cost", "penalised_norm_end"} <= set(methods["rsst"][1])
    assert "penalised_gamma_end" not in methods["rsst"][1]
    gamma = methods["rsst channels"][1]["penalised_gamma_end"]["mean"]  # the channel scope shrinks the gammas
    assert 0 < gamma < methods["rsst channels"][1]["penalised_gamma_start"]["mean"]
    assert [d["round"] for d in result["verdict"]["ticket_rounds"]] == [1, 2]
    assert result["verdict"]["ticket"].startswith(("yes: ", "no: ", "no difference beyond the seed spread"))
    assert [d["round"] for d in result["verdict"]["intervention"]["rounds"]] == [1, 2]
    assert result["verdict"]["intervention"]["answer"].startswith(("yes: ", "partly: ", "no: "))
    # each structured ticket against its reinit control, paired by seed at every pruned round
    for method, name in (("refill", "Refill"), ("rsst", "RSST")):
        control = result["verdict"]["controls"][method]["reinit"]
        assert [(d["round"], d["seeds"]) for d in control["rounds"]] == [(1, [1, 2]), (2, [1, 2])]
        for d in control["rounds"]:
            tickets = methods[method][d["round"]]["test_acc"]["mean"]
            reinits = methods[f"{method} reinit"][d["round"] - 1]["test_acc"]["mean"]
            assert d["diff"] == pytest.approx(tickets - reinits, abs=2e-3)
        assert control["answer"].startswith(("yes: ", "no: ", "no difference beyond the seed spread"))
        assert f"Is {name}'s ticket a ticket? Against its reinit control" in (out / "study.md").read_text()
    # the beta check evaluates every pruned channel-scope ticket, with and without the cut channels' beta
    assert {(b["seed"], b["round"]) for b in result["beta"]} == {(s, r) for s in (1, 2) for r in (1, 2)}
    assert all(b["channels"] > 0 and 0 <= b["beta_zeroed_test_acc"] <= 100 for b in result["beta"])
    for method in ("refill", "rsst"):
        assert {"latency_ms_batch1", "latency_ms_batch256"} <= set(result["latency"][method])
    removed = {(r["method"], r["seed"], r["round"]): r for r in result["removed"]}
    assert set(removed) == {(m, s, r) for m in ("refill", "rsst", "rsst channels") for s in (1, 2) for r in (1, 2)}
    assert all(r["channels_cut"] > 0 for r in removed.values())
    # Refill's cut channels output zeros all round, so their BN running variance decays from its init of 1
    assert all(removed[("refill", s, 2)]["cut_running_var"] < 1.0 for s in (1, 2))
    study_md = (out / "study.md").read_text()
    assert "What the channels cut at every round still carried" in study_md
    assert "does penalising the whole channel close the cut's cost?" in study_md
    assert (out / "report_channel_density" / "report.png").stat().st_size > 0
    assert (out / "report_macs" / "report.png").stat().st_size > 0
    assert "Does RSST beat Refill here?" in (out / "study.md").read_text()
    # a rerun resumes: every run is finished, so nothing trains and nothing changes (seed 1's sweeps rerun, to save
    # time; the summary still reads every run under --out)
    again = bench(*cmd, "--seeds", "1")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "new run in" not in again.stderr and "epoch 1/1" not in again.stderr
    assert json.loads((out / "study.json").read_text())["summary"] == result["summary"]


def test_structured_study_refuses_an_out_that_is_a_file_in_one_line(tmp_path, capsys):
    study = load_benchmark("structured_study")
    file = tmp_path / "study.txt"
    file.write_text("not a folder\n")
    with pytest.raises(SystemExit) as stopped:
        study.main(["--out", str(file), "--no-train"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(f"error: --out={str(file)!r} is a file: expected a folder (made if missing)")
    )
    assert file.read_text() == "not a folder\n"


@pytest.mark.slow
def test_structured_study_without_training_reads_a_corrupt_study_time_json_as_a_fresh_start(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "study_time.json").write_text('{"sweep_seconds": ')  # cut off by a kill
    proc = python("benchmarks/structured_study.py", "--quick", "--no-train", "--out", str(out), "--repeats", "1")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == f"{out / 'study_time.json'} is unreadable: the wall time counts from this start"
    assert proc.returncode == 1 and lines[-1].startswith(
        f"rsst.report --x channel_density failed: FileNotFoundError: {out}"
    )


@pytest.mark.slow
def test_a_killed_study_keeps_its_wall_time_up_to_the_last_tick_and_the_machine_it_ran_on(tmp_path):
    """The clock is written every --clock-every seconds while sweeps train, not only when one ends."""
    out = tmp_path / "study"
    cmd = [sys.executable, "benchmarks/structured_study.py", "--quick", "--out", str(out), "--seeds", "1"]
    cmd += ["--ablation", "none", "--controls", "", "--clock-every", "0.5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    clock = out / "study_time.json"
    try:
        seconds = 0.0
        while seconds < 3.0 and proc.poll() is None and time.monotonic() - started < 120:
            time.sleep(0.1)
            try:
                seconds = json.loads(clock.read_text())["sweep_seconds"]
            except (OSError, ValueError, KeyError):
                continue  # not written yet, or caught mid-write
        assert proc.poll() is None, "the study ended before it could be killed: the test needs a longer sweep"
        os.killpg(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    timing = json.loads(clock.read_text())
    assert 3.0 <= timing["sweep_seconds"] <= killed - started  # no sweep had ended: the ticks alone wrote it
    assert timing["starts"] == 1 and len(timing["machines"]) == 1
    machine = timing["machines"][0]
    assert machine["processor"] == processor_name()
    assert machine["bf16_flags"] == sorted(f for f in cpuinfo_flags() if f.startswith("amx") or "bf16" in f)
    assert not (out / "study.json").exists()  # it was killed while training


def test_a_study_clock_from_before_the_machine_record_counts_its_starts_as_unrecorded(tmp_path):
    study = load_benchmark("structured_study")
    clock = tmp_path / "study_time.json"
    clock.write_text(json.dumps({"sweep_seconds": 7322.8, "starts": 2}) + "\n")  # as a study of the first edition
    timing = study.read_timing(clock)
    assert timing == {"sweep_seconds": 7322.8, "starts": 2, "machines": []}
    timing["starts"] += 1
    timing["machines"].append({"from": "2026-12-06T19:48:49+0000", "processor": "Xeon", "bf16_flags": ["amx_bf16"]})
    assert study.machines_line(timing) == (
        "2 earlier start(s) whose machine was not recorded; Xeon (amx_bf16) from 2026-12-06T19:48:49+0000"
    )
    clock.write_text(json.dumps({**timing, "machines": [{"from": 3}]}))  # a record of the wrong shape
    assert study.read_timing(clock) == {"sweep_seconds": 0.0, "starts": 0, "machines": []}


def test_structured_study_refuses_a_clock_interval_that_is_not_positive(tmp_path, capsys):
    study = load_benchmark("structured_study")
    with pytest.raises(SystemExit) as stopped:
        study.main(["--out", str(tmp_path / "study"), "--no-train", "--clock-every", "0"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("error: --clock-every=0: expected a number of seconds > 0")
    assert not (tmp_path / "study").exists()  # refused before anything was made
