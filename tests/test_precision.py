"""``train.amp=auto``: bf16 where bf16 is faster than fp32 (AMX); the precision is part of a run's identity."""

from __future__ import annotations

import json
import os
import platform
import signal
from pathlib import Path

import pytest
import torch
import yaml
from helpers import FAST, launch, only_run_dir, python, read_rounds

from rsst.loop.hot_loop import train_epoch
from rsst.pruning.masks import Masks, apply_masks_, global_magnitude_prune
from rsst.runtime.execution import Execution, resolve_device
from rsst.runtime.precision import AMP_MODES, cpuinfo_flags, fast_bf16_cpu, resolve_amp, resolve_amp_name

CPU = torch.device("cpu")


# -- detection -------------------------------------------------------------------------------------

X86 = platform.machine().lower() not in ("aarch64", "arm64")
x86_only = pytest.mark.skipif(not X86, reason="the x86 rule (AMX) is tested on x86")


@x86_only
@pytest.mark.parametrize(
    ("units", "fast", "named"),
    [
        (["amx_bf16", "avx512_bf16"], True, "reports amx_bf16 on this CPU: bf16 is faster"),
        (["amx_bf16"], True, "reports amx_bf16 on this CPU"),
        (["avx512_bf16"], False, "reports avx512_bf16 but no amx_bf16 on this CPU: bf16 would be slower"),
        ([], False, "reports no amx_bf16 or avx512_bf16 on this CPU"),
    ],
)
def test_auto_wants_amx_in_what_pytorch_reports_not_avx512_bf16_alone(units, fast, named):
    found, reason = fast_bf16_cpu(torch_units=units)
    assert found is fast
    assert reason == f"PyTorch {named}" or reason.startswith(f"PyTorch {named}")


@x86_only
@pytest.mark.parametrize(
    ("flags", "fast", "named"),
    [
        ({"fpu", "avx2", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}, True, "lists amx_bf16 on this CPU"),
        ({"fpu", "avx2", "avx512f", "avx512_bf16"}, False, "lists avx512_bf16 but no amx_bf16"),
        ({"fpu", "sse4_2", "avx2", "fma", "avx512f", "avx512_vnni"}, False, "lists no amx_bf16 or avx512_bf16"),
    ],
)
def test_the_rule_falls_back_to_the_processor_flags(flags, fast, named):
    found, reason = fast_bf16_cpu(cpu_flags=flags)
    assert found is fast
    assert reason.startswith(f"/proc/cpuinfo {named}")


@x86_only
def test_pytorchs_report_wins_over_the_flags_when_both_are_given():
    assert fast_bf16_cpu(torch_units=["avx512_bf16"], cpu_flags={"amx_bf16"})[0] is False
    assert fast_bf16_cpu(torch_units=["amx_bf16"], cpu_flags={"avx2"})[0] is True
    assert fast_bf16_cpu(cpu_flags=set())[1] == "neither PyTorch nor /proc/cpuinfo reports the CPU's features"


def test_the_flags_are_read_from_the_x86_flags_and_arm_features_lines(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpuinfo_flags(x86) == {"fpu", "avx2", "amx_bf16", "amx_tile"}
    if X86:
        assert fast_bf16_cpu(cpu_flags=cpuinfo_flags(x86))[0] is True
    assert "bf16" in cpuinfo_flags(arm)
    assert cpuinfo_flags(tmp_path / "missing") == set()


def test_this_machines_rule_reads_pytorchs_capabilities():
    capabilities = torch.cpu.get_capabilities()
    units = ("amx_bf16",) if X86 else ("bf16", "sve_bf16")
    expected = any(capabilities.get(unit) is True for unit in units)
    found, reason = fast_bf16_cpu()
    assert found is expected, reason
    assert reason.startswith("PyTorch reports")


# -- resolution ------------------------------------------------------------------------------------


@x86_only
@pytest.mark.parametrize(
    ("units", "name"), [(["amx_bf16", "avx512_bf16"], "bf16"), (["avx512_bf16"], "off"), ([], "off")]
)
def test_auto_on_the_cpu_is_bf16_with_amx_and_fp32_with_avx512_bf16_alone(units, name):
    detected = fast_bf16_cpu(torch_units=units)
    resolved, reason = resolve_amp_name("auto", CPU, detected)
    assert resolved == name
    assert reason == f"auto, {detected[1]}"
    flags = {"avx512_bf16", *(["amx_bf16"] if "amx_bf16" in units else [])}
    assert resolve_amp_name("auto", CPU, fast_bf16_cpu(cpu_flags=flags))[0] == name


def test_auto_on_this_cpu_follows_this_cpus_rule_and_gives_the_execution_its_dtype():
    fast, why = fast_bf16_cpu()
    assert resolve_amp_name("auto", CPU) == ("bf16" if fast else "off", f"auto, {why}")
    assert Execution.from_config("auto", False, CPU).amp == (torch.bfloat16 if fast else None)


@pytest.mark.parametrize(("value", "name"), [("off", "off"), (False, "off"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_an_explicit_precision_passes_through_whatever_the_processor(value, name):
    for native in (True, False):
        assert resolve_amp_name(value, CPU, (native, "injected")) == (name, "set by train.amp")
    assert resolve_amp(value, CPU) is AMP_MODES[name]


def test_auto_is_off_on_mps_and_a_wrong_value_is_named():
    assert resolve_amp_name("auto", torch.device("mps"), (True, "injected"))[0] == "off"
    with pytest.raises(ValueError, match=r"train.amp='fp8' is invalid: expected one of auto, bf16, fp16, off"):
        resolve_amp_name("fp8", CPU)


# -- bf16 training keeps the masks ---------------------------------------------------------------------


class CountPrunedNonzeros:
    """Stands in for the progress bar, which ``train_epoch`` updates after each step's masking."""

    def __init__(self, weights: dict[str, torch.Tensor], masks: Masks) -> None:
        self.weights, self.masks, self.counts = weights, masks, []

    def update(self, n: int) -> None:
        self.counts.append(sum(int((w[self.masks[k] == 0] != 0).sum()) for k, w in self.weights.items()))


def test_bf16_training_keeps_the_pruned_weights_exactly_zero_after_every_step():
    from rsst.loop.optim import build_scheduler
    from rsst.models.cifar_resnet import resnet20
    from rsst.models.prunable import prunable_weights

    torch.manual_seed(0)
    model = resnet20(num_classes=4, in_channels=3, width=8)
    weights = prunable_weights(model)
    masks = global_magnitude_prune(weights, Masks.ones_like(weights), 0.5)
    apply_masks_(weights.values(), masks.values())
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 4, (16,), generator=gen)) for _ in range(4)]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    grads_at_pruned = []

    def hook() -> None:  # the step would move the pruned weights: their gradients are not zero
        grads_at_pruned.append(sum(int((w.grad[masks[k] == 0] != 0).sum()) for k, w in weights.items()))

    counter = CountPrunedNonzeros(weights, masks)
    run = Execution(amp=torch.bfloat16)
    stats = train_epoch(
        model,
        batches,
        opt,
        build_scheduler(opt, len(batches), 0, [], 0.1),
        list(weights.values()),
        list(masks.values()),
        grad_hook=hook,
        progress=counter,
        execution=run,
    )
    assert len(counter.counts) == len(batches) == len(grads_at_pruned)
    assert min(grads_at_pruned) > 1000, grads_at_pruned
    assert counter.counts == [0] * len(batches)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert 0 < stats["train_loss"] < 10
    with run.autocast(CPU):
        assert model(batches[0][0]).dtype == torch.bfloat16


# -- end to end: the log, provenance.json, the run folder and a resume -----------------------------------

# A small generated data set: bf16 autocast is emulated (slow) on a CPU without bf16 units.
TINY = ["dataset=synthetic", "dataset.image_size=8", "dataset.train_size=256", "dataset.val_size=64"]
TINY += ["dataset.test_size=64"]
ONE_EPOCH = [*FAST, *TINY, "struct=imp", "prune.rounds=1", "train.epochs=1"]


@pytest.mark.slow
def test_a_runs_identity_carries_the_precision_auto_resolved_to(tmp_path):
    """``auto`` and the precision it resolves to on this machine share one folder; the other precision
    gets its own; the folder's config, log and provenance name the precision; resuming a folder in
    another precision stops with one line that says how to resume it as it was."""
    resolved, reason = resolve_amp_name("auto", resolve_device("auto"))
    other = "bf16" if resolved == "off" else "off"
    root = tmp_path / "runs"

    auto = launch(*ONE_EPOCH, f"paths.root={root}")
    assert auto.returncode == 0, auto.stderr[-2000:]
    assert f"precision: {resolved} ({reason})" in auto.stdout
    run_dir = only_run_dir(root)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["amp"] == resolved
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["precision"] == {"requested": "auto", "resolved": resolved, "reason": reason}

    explicit = launch(*ONE_EPOCH, f"train.amp={resolved}", f"paths.root={root}")
    assert explicit.returncode == 0, explicit.stderr[-2000:]
    assert only_run_dir(root) == run_dir and "finished" in explicit.stdout
    assert f"precision: {resolved} (set by train.amp)" in explicit.stdout

    refused = launch(*ONE_EPOCH, f"train.amp={other}", f"paths.run_dir={run_dir}")
    assert refused.returncode == 2, refused.stderr[-2000:]
    lines = [line for line in refused.stderr.splitlines() if "checkpoint" in line]  # the error: on stderr
    assert len(lines) == 1, refused.stderr[-2000:]
    assert resolved in lines[0] and other in lines[0] and f"train.amp={resolved}" in lines[0]

    separate = launch(*ONE_EPOCH, f"train.amp={other}", f"paths.root={root}")
    assert separate.returncode == 0, separate.stderr[-2000:]
    folders = sorted(p for p in root.iterdir() if (p / "config.yaml").exists())
    assert len(folders) == 2 and run_dir in folders


def epochs_done(run_root: Path) -> int:
    for metrics in run_root.glob("*/metrics.csv"):
        return max(0, len(metrics.read_text().splitlines()) - 1)
    return 0


def saved_tensors(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    files = sorted([*run_dir.glob("masks/round_*.pt"), *run_dir.glob("weights/round_*.pt")])
    return {str(f.relative_to(run_dir)): torch.load(f, weights_only=True) for f in files}


@pytest.mark.slow
def test_a_bf16_run_killed_mid_round_resumes_to_the_same_files(tmp_path):
    args = [*FAST, *TINY, "struct=imp", "prune.rounds=2", "train.epochs=2", "train.amp=bf16"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert launch(*args, f"paths.root={straight}").returncode == 0
    reference = only_run_dir(straight)

    env = {**os.environ, "RSST_KILL_AT": "epoch_saved:1:ticket:0"}  # SIGKILL after round 1's first epoch
    assert python("launch.py", *args, f"paths.root={killed}", env=env).returncode == -signal.SIGKILL
    run_dir = only_run_dir(killed)
    assert len(torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch_rows"]) == 3
    assert run_dir.name == reference.name

    resumed = launch(*args, f"paths.root={killed}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout and "precision: bf16" in resumed.stdout
    assert epochs_done(killed) == 4
    drop_seconds = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop_seconds(read_rounds(run_dir)) == drop_seconds(read_rounds(reference))
    ours, theirs = saved_tensors(run_dir), saved_tensors(reference)
    assert sorted(ours) == ["masks/round_0.pt", "masks/round_1.pt", "weights/round_0.pt", "weights/round_1.pt"]
    assert sorted(ours) == sorted(theirs)
    for name, tensors in ours.items():
        for key, t in tensors.items():
            assert torch.equal(t, theirs[name][key]), f"{name}: {key} differs after the resume"
