"""Structured export: the shrunk network computes the masked network's function, with the channels really gone."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import CONF, FAST, launch, only_run_dir, option_node, python
from hydra.utils import instantiate
from torch import nn

from rsst.commands.export import describe_layers, load_exported, load_round, main, save_exported
from rsst.commands.report import report
from rsst.models import prunable_weights
from rsst.models.shrink import FoldedConv2d, shrink
from rsst.models.size import count_macs, count_params, is_channel_wise

# Structured export removes conv output channels; the LeNet-300-100 MLP has no conv to shrink.
ARCHS = sorted(p.stem for p in (CONF / "arch").glob("*.yaml") if p.stem != "lenet_300_100")
BIG = {"resnet50", "densenet121", "densenet161"}


DIMS = {"num_classes": 10, "in_channels": 3, "image_size": 32}


def build(arch: str) -> nn.Module:
    return instantiate(option_node("arch", arch))(**DIMS)


def randomise_bn_(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BN constants at a sane scale: statistics measured on random inputs, then perturbed.

    A zero filter's output is then ``relu(beta - gamma * mean / std)``, as often positive as not.
    """
    momenta = {}
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            momenta[m], m.momentum = m.momentum, None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32, generator=gen))
        for m, momentum in momenta.items():
            c = m.num_features
            m.momentum = momentum
            m.running_mean.add_(torch.randn(c, generator=gen) * 0.2)
            m.running_var.clamp_(min=0.5)
            m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(c, generator=gen) * 0.5)
    model.eval()


def channel_masks(model: nn.Module, rate: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Whole output filters of every prunable conv zeroed at random (at least one kept per layer)."""
    masks = {}
    for name, w in prunable_weights(model).items():
        rows = (torch.rand(w.shape[0], generator=gen) >= rate).float()
        rows[torch.randint(w.shape[0], (1,), generator=gen)] = 1.0
        masks[name] = rows.view(-1, 1, 1, 1).expand_as(w).clone()
    return masks


def masked(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in masks:
                p.mul_(masks[name])
    return model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_export_computes_the_masked_network_exactly(arch, tmp_path):
    gen = torch.Generator().manual_seed(ARCHS.index(arch))
    torch.manual_seed(0)
    model = build(arch)
    masks = channel_masks(model, 0.5, gen)
    randomise_bn_(masked(model, masks), gen)
    exported = shrink(model, masks)
    side, batch = (32, 2) if arch in BIG else (32, 4)
    x = torch.randn(batch, 3, side, side, generator=gen)
    with torch.inference_mode():
        want, got = model(x), exported(x)
    assert (want - got).abs().max().item() < 1e-4
    assert count_params(exported) < count_params(model)
    assert count_macs(exported, x.shape) < count_macs(model, x.shape)
    file = tmp_path / "exported.pt"
    save_exported(exported, option_node("arch", arch), DIMS, file)
    reloaded = load_exported(file)
    with torch.inference_mode():
        diff = (reloaded(x) - got).abs().max().item()
    assert diff == 0.0, f"{arch}: the reloaded export differs from the one in memory by {diff}"
    assert describe_layers(reloaded) == describe_layers(exported)


def _dead(masks, name):
    return int((masks[f"{name}.weight"].flatten(1).sum(1) == 0).sum())


@pytest.mark.parametrize("arch", ["resnet20", "vgg16_bn", "resnet18", "densenet121"])
def test_export_has_exactly_the_expected_channels_per_layer(arch):
    """Internal convs lose every dead channel; convs that feed a residual sum keep theirs (documented rule)."""
    gen = torch.Generator().manual_seed(7)
    model = build(arch)
    masks = channel_masks(model, 0.5, gen)
    randomise_bn_(masked(model, masks), gen)
    exported = shrink(model, masks)
    before = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    after = {n: m for n, m in exported.named_modules() if isinstance(m, nn.Conv2d)}
    residual = arch.startswith("resnet")
    for name, conv in before.items():
        feeds_sum = residual and (
            name.endswith(("conv2", "downsample.0")) if arch == "resnet18" else name.endswith("conv2")
        )
        expected = conv.out_channels
        if f"{name}.weight" in masks and not feeds_sum:
            expected -= _dead(masks, name)
        assert after[name].out_channels == expected, name


def test_resnet20_at_half_the_internal_channels_has_the_numbers_the_masks_imply():
    """Half of every block's conv1 filters gone: conv1 and conv2 of each block each lose half their weights.

    ResNet-20 (10 classes): 269,722 parameters and 40,551,040 MACs dense at 32x32. The blocks'
    3x3 convs hold 267,264 weights (conv1 + conv2 of 9 blocks); half of them go, and with them
    half of each bn1 (2 x 8/16/32 per block, three blocks a stage): 269,722 - 133,632 - 336 = 135,754.
    MACs: the blocks cost all but the stem (3 x 16 x 9 x 32 x 32) and the classifier (64 x 10); half go.
    """
    model = build("resnet20")
    masks = {n: torch.ones_like(w) for n, w in prunable_weights(model).items()}
    for name in masks:
        if name.endswith("conv1.weight"):
            masks[name][masks[name].shape[0] // 2 :] = 0
    exported = shrink(masked(model, masks), masks)
    assert is_channel_wise(masks)
    assert count_params(model) == 269_722
    assert count_params(exported) == 135_754
    assert count_macs(model, (1, 3, 32, 32)) == 40_551_040
    block_macs = 40_551_040 - 3 * 16 * 9 * 32 * 32 - 640  # less stem and classifier
    assert count_macs(exported, (1, 3, 32, 32)) == 40_551_040 - block_macs // 2
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert (model(x) - exported(x)).abs().max().item() < 1e-4


def test_a_constant_into_a_padded_conv_is_folded_as_a_border_exact_map():
    gen = torch.Generator().manual_seed(3)
    model = build("resnet20")
    randomise_bn_(model, gen)
    with torch.no_grad():
        model.layer1[0].bn1.bias.fill_(1.0)  # every removed channel's constant is relu(...) > 0
        model.layer1[0].bn1.running_mean.zero_()
    masks = {n: torch.ones_like(w) for n, w in prunable_weights(model).items()}
    masks["layer1.0.conv1.weight"][:8] = 0
    exported = shrink(masked(model, masks), masks)
    assert isinstance(exported.layer1[0].conv2, FoldedConv2d)
    x = torch.randn(3, 3, 17, 23, generator=gen)  # any input size: the map is made per size
    with torch.inference_mode():
        assert (model(x) - exported(x)).abs().max().item() < 1e-4


# -- the command line on real runs ------------------------------------------------------------------


def _run(root: Path, struct: str) -> Path:
    extra = ["criteria=magnitude"] if struct == "refill" else []
    result = launch(f"struct={struct}", *extra, "prune.rounds=2", *FAST, "train.epochs=1", f"paths.root={root}")
    assert result.returncode == 0, result.stderr[-2000:]
    return only_run_dir(root)


@pytest.fixture(scope="module")
def refill_run(tmp_path_factory) -> Path:
    """One real two-round refill run, shared; tests that damage it work on a copy."""
    return _run(tmp_path_factory.mktemp("refill"), "refill")


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


def _export(*args: str) -> subprocess.CompletedProcess:
    return python("-m", "rsst.export", *args)


@pytest.mark.slow
def test_export_cli_on_a_refill_run_writes_the_model_and_the_measurement(refill_run, tmp_path):
    run_dir = _copy(refill_run, tmp_path)
    out = tmp_path / "model.pt"
    result = _export(str(run_dir), "--round", "1", "--out", str(out), "--repeats", "2")
    assert result.returncode == 0, result.stderr
    assert "latency_ms_batch256" in result.stdout
    measured = json.loads((run_dir / "export_round_1.json").read_text())
    assert measured["channel_wise"] and measured["dead_channels"] > 0
    assert measured["params"]["exported"] < measured["params"]["dense"]
    assert measured["macs"]["ratio"] < 1.0
    for b in (1, 256):
        assert measured[f"latency_ms_batch{b}"]["exported"] > 0
    model = load_exported(out)
    assert count_params(model) == measured["params"]["exported"]
    rounds = json.loads((run_dir / "rounds.json").read_text())
    assert rounds[1]["params"] == measured["params"]["exported"]
    assert rounds[1]["macs"] == measured["macs"]["exported"]
    assert "macs" not in rounds[0]
    plotted = report(run_dir, tmp_path / "report", x="macs")
    assert [lvl["macs"] for lvl in plotted["groups"][0].levels("test_acc", "macs")] == [rounds[1]["macs"]]
    assert (tmp_path / "report" / "report.png").stat().st_size > 0
    by_channels = report(run_dir, tmp_path / "by_channels", x="channel_density")
    levels = by_channels["groups"][0].levels("test_acc", "channel_density")
    assert [lvl["channel_density"] for lvl in levels] == [100.0 - row["channel_sparsity"] for row in rounds]
    assert levels[-1]["channel_density"] < 100.0


@pytest.mark.slow
def test_the_exported_file_reloads_to_the_slim_network_in_memory(refill_run, tmp_path):
    """``load_exported`` (plain data, weights_only) computes what ``shrink`` of the round computes."""
    run_dir = _copy(refill_run, tmp_path)
    loaded = load_round(run_dir, 1, torch.device("cpu"))
    slim = shrink(loaded.model, loaded.masks)
    out = tmp_path / "slim.pt"
    assert main([str(run_dir), "--round", "1", "--out", str(out), "--repeats", "1", "--device", "cpu"]) == 0
    torch.load(out, weights_only=True)  # plain data: loads with no code allowed
    reloaded = load_exported(out)
    x = torch.randn(8, *loaded.input_shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = (reloaded(x) - slim(x)).abs().max().item()
    assert diff <= 1e-6, f"the reloaded export differs from the slim model in memory by {diff}"
    assert count_params(reloaded) == count_params(slim) < count_params(loaded.model)


def _refused(capsys, run_dir: Path) -> str:
    """Run the export command on ``run_dir``; assert exit code 2 and return its one-line message."""
    assert main([str(run_dir), "--round", "1", "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.slow
def test_export_refuses_an_edited_config_yaml(refill_run, tmp_path, capsys):
    run_dir = _copy(refill_run, tmp_path)
    cfg = run_dir / "config.yaml"
    cfg.write_text(cfg.read_text().replace("width: 8", "width: 16", 1))
    err = _refused(capsys, run_dir)
    assert f"{cfg} was edited" in err


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["weights", "masks"])
def test_export_names_a_truncated_round_file(refill_run, tmp_path, capsys, kind):
    run_dir = _copy(refill_run, tmp_path)
    file = run_dir / kind / "round_1.pt"
    blob = file.read_bytes()
    file.write_bytes(blob[: len(blob) // 2])
    err = _refused(capsys, run_dir)
    assert f"{file}: not a file torch.save wrote, or truncated" in err
    assert "rerun" in err


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["weights", "masks"])
def test_export_names_a_missing_round_file_and_how_to_rebuild_it(refill_run, tmp_path, capsys, kind):
    run_dir = _copy(refill_run, tmp_path)
    file = run_dir / kind / "round_1.pt"
    file.unlink()
    err = _refused(capsys, run_dir)
    assert f"{file} is missing (the folder holds rounds [0])" in err
    assert "rerun the run (into a fresh paths.run_dir) to rebuild it" in err


@pytest.mark.slow
def test_export_cli_on_an_imp_run_explains_there_is_nothing_to_remove(tmp_path):
    run_dir = _run(tmp_path, "imp")
    result = _export(str(run_dir), "--round", "1")
    assert result.returncode == 2
    assert "nothing to remove" in result.stderr and "no output channel is entirely zero" in result.stderr
    assert "Traceback" not in result.stderr
    assert "macs" not in json.loads((run_dir / "rounds.json").read_text())[1]
    with pytest.raises(KeyError, match="only channel-wise"):
        report(run_dir, tmp_path / "report", x="macs")


@pytest.mark.slow
def test_the_checkpoint_records_the_sha256_of_every_round_file_as_written(refill_run):
    from rsst.folder.checkpoint import file_sum, recorded_sums  # noqa: PLC0415

    sums = recorded_sums(refill_run / "checkpoint.pt")
    names = [f"{kind}/round_{r}.pt" for kind in ("masks", "weights") for r in (0, 1)]
    assert sorted(sums) == sorted(names)
    assert all(sums[name] == file_sum(refill_run / name) and len(sums[name]) == 64 for name in names)


@pytest.mark.slow
def test_export_refuses_round_files_that_are_not_the_ones_the_run_wrote(refill_run, tmp_path, capsys):
    run_dir = _copy(refill_run, tmp_path)
    weights = run_dir / "weights" / "round_1.pt"
    shutil.copyfile(run_dir / "weights" / "round_0.pt", weights)  # dense weights under the ticket's name
    err = _refused(capsys, run_dir)
    assert f"{weights} is not the file the run wrote (sha256 " in err and "replaced or damaged" in err
    run_dir = _copy(refill_run, tmp_path / "masks")
    masks = run_dir / "masks" / "round_1.pt"
    blob = torch.load(masks, weights_only=True)
    name = next(n for n, m in blob.items() if m.dim() == 4)
    blob[name] = blob[name][0, 0]  # a [3, 3] entry for a [C_out, C_in, 3, 3] weight, which would broadcast
    torch.save(blob, masks)
    err = _refused(capsys, run_dir)
    assert f"{masks} is not the file the run wrote (sha256 " in err


@pytest.mark.slow
def test_a_checkpoint_from_before_the_sums_still_exports(refill_run, tmp_path):
    run_dir = _copy(refill_run, tmp_path)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    del ckpt["file_sums"]
    torch.save(ckpt, run_dir / "checkpoint.pt")
    assert main([str(run_dir), "--round", "1", "--repeats", "1", "--device", "cpu"]) == 0
