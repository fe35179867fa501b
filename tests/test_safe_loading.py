"""Nothing from a file is executed: CIFAR batches, pretrained weights, run folders and exported networks.

Every hostile file here carries a payload that creates a marker file when it runs; each test
first shows the payload is live (loading it the unsafe way creates a control marker) and then
that the project's loader refuses it, with one line naming the file, and creates nothing.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_data import write_cifar
from helpers import CONF, ROOT, compose_config, option_node
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rsst.commands.export import ExportError, load_exported, main, save_exported
from rsst.config.checks import ConfigError
from rsst.config.registry import RefusedConfig, registered_targets
from rsst.data import CorruptDatasetError
from rsst.data.cifar import Cifar10
from rsst.folder.naming import written_config_hash
from rsst.loop.pretrained import load_pretrained
from rsst.models.shrink import shrink

DIMS = {"num_classes": 10, "in_channels": 3, "image_size": 32}
SMALL_CIFAR = {"train_size": 80, "val_size": 20, "test_size": 30}


class OpensMarker:
    """Unpickling this calls ``open(path, "w")``, which creates ``path``: a stand-in for any code payload."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _payload_is_live(load, file: Path, marker: Path) -> None:
    """Loading ``file`` with the unsafe ``load`` creates ``marker``: the refusal tested next is what stops it."""
    assert not marker.exists()
    result = load(file)
    assert marker.exists(), "the hostile file's payload did not run even when loaded unsafely"
    for value in result.values() if isinstance(result, dict) else [result]:
        if hasattr(value, "close"):
            value.close()
    marker.unlink()


def _one_line(message: str) -> str:
    assert len(message.strip().splitlines()) == 1, message
    return message


def _arch(name: str) -> dict:
    return OmegaConf.to_container(option_node("arch", name))


def _model(name: str, **kwargs):
    return instantiate({**_arch(name), **kwargs})(**DIMS)


# -- CIFAR batches: a restricted unpickler --------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_cifar_batch_with_a_code_payload_is_refused_and_never_runs(tmp_path, protocol):
    fake = write_cifar(tmp_path / "data")
    batch = fake["folder"] / "data_batch_3"
    marker = tmp_path / "marker"
    with open(batch, "wb") as f:
        pickle.dump({"batch_label": "x", "data": OpensMarker(marker), "labels": [0]}, f, protocol=protocol)
    _payload_is_live(lambda p: pickle.loads(p.read_bytes(), encoding="latin1")["data"], batch, marker)
    with pytest.raises(CorruptDatasetError) as caught:
        Cifar10(root=str(tmp_path / "data"), **SMALL_CIFAR)
    message = _one_line(str(caught.value))
    assert message.startswith(f"{batch}: refuses to load ")
    assert ("io.open") in message
    assert "a CIFAR batch holds only numpy arrays, lists, dicts, bytes, numbers and strings" in message
    assert not marker.exists()


# -- pretrained weights --------------------------------------------------------------------------------


def test_pretrained_weights_load_with_stem_and_classifier_reinitialised(tmp_path):
    source, target = _model("resnet20"), _model("resnet20")
    file = tmp_path / "pretrained.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, file)
    theta = load_pretrained(str(file), target, "fc")
    fresh, trained = target.state_dict(), source.state_dict()
    assert set(theta) == set(fresh)
    for k, v in theta.items():
        expected = fresh[k] if k.startswith(("conv1.", "fc.")) else trained[k]
        assert (v - expected).abs().max().item() == 0.0, k
    assert (theta["layer1.0.conv1.weight"] - fresh["layer1.0.conv1.weight"]).abs().max().item() > 0.01


def test_pretrained_weights_without_num_batches_tracked_load(tmp_path):
    """Older torchvision files lack BatchNorm's ``num_batches_tracked``; the fresh count is kept."""
    source, target = _model("resnet20"), _model("resnet20")
    file = tmp_path / "old.pt"
    torch.save({k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}, file)
    theta = load_pretrained(str(file), target, "fc")
    assert int(theta["bn1.num_batches_tracked"]) == 0
    assert torch.equal(theta["layer3.2.bn2.running_var"], source.state_dict()["layer3.2.bn2.running_var"])


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a torch file at all" * 8)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    torch.save(_model("resnet20").state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])


def _whole_module(path: Path) -> None:
    torch.save(_model("resnet20"), path)


def _tensor(path: Path) -> None:
    torch.save(torch.zeros(3), path)


def _not_tensors(path: Path) -> None:
    torch.save({"conv1.weight": [1.0, 2.0], "epoch": 3}, path)


@pytest.mark.parametrize(
    ("write", "says"),
    [
        (_garbage, "not a file torch.save wrote, or truncated"),
        (_empty, "the file is empty"),
        (_truncated, "not a file torch.save wrote, or truncated"),
        (_whole_module, "it names rsst.models.cifar_resnet.CifarResNet, code or a pickled object rather than tensors"),
        (_tensor, "holds a Tensor"),
        (_not_tensors, "holds 2 entries that are not named tensors ('conv1.weight': list, 'epoch': int)"),
    ],
)
def test_a_pretrained_file_that_is_not_a_state_dict_is_one_config_error(tmp_path, write, says):
    file = tmp_path / "weights.pt"
    write(file)
    with pytest.raises(ConfigError) as caught:
        load_pretrained(str(file), _model("resnet20"), "fc")
    message = _one_line(str(caught.value))
    assert message.startswith(f"prune.pretrained={str(file)!r}")
    assert says in message
    assert message.endswith('expected a state_dict: a dict of tensors, optionally under "state_dict" or "model"')


def test_a_pretrained_file_with_a_code_payload_is_refused_and_never_runs(tmp_path):
    file, marker = tmp_path / "hostile.pt", tmp_path / "marker"
    torch.save({"conv1.weight": OpensMarker(marker)}, file)
    _payload_is_live(lambda p: torch.load(p, weights_only=False), file, marker)
    with pytest.raises(ConfigError) as caught:
        load_pretrained(str(file), _model("resnet20"), "fc")
    message = _one_line(str(caught.value))
    assert "it names io.open" in message and "never loaded" in message
    assert not marker.exists()


def test_pretrained_weights_of_another_depth_list_the_keys_on_both_sides(tmp_path):
    file = tmp_path / "resnet32.pt"
    torch.save(_model("resnet32").state_dict(), file)
    with pytest.raises(ConfigError) as caught:
        load_pretrained(str(file), _model("resnet20"), "fc")
    message = _one_line(str(caught.value))
    # ResNet-32 has 5 blocks a stage, ResNet-20 3: blocks 3 and 4 of 3 stages, 12 tensors each (2 convs, 2 x 5 BN)
    assert "has 72 (layer1.3.bn1.bias, layer1.3.bn1.num_batches_tracked, layer1.3.bn1.running_mean and 69 more)" in (
        message
    )
    assert "weights CifarResNet does not have" in message and "lacks" not in message

    file = tmp_path / "resnet20.pt"
    torch.save(_model("resnet20").state_dict(), file)
    with pytest.raises(ConfigError) as caught:
        load_pretrained(str(file), _model("resnet32"), "fc")
    # the other way round the 12 num_batches_tracked are not required (older files lack them): 60 missing
    assert "lacks 60 (layer1.3.bn1.bias, layer1.3.bn1.running_mean" in _one_line(str(caught.value))


def test_pretrained_weights_of_another_width_name_the_first_mismatched_shape(tmp_path):
    file = tmp_path / "wide.pt"
    torch.save(_model("resnet20", width=32).state_dict(), file)
    with pytest.raises(ConfigError, match=r"bn1.weight has shape \(32,\), expected \(16,\)"):
        load_pretrained(str(file), _model("resnet20"), "fc")


# -- run folders: only the project's own _target_s are built ----------------------------------------------


def test_registered_targets_are_exactly_those_of_the_shipped_options():
    """Every conf/arch and conf/dataset option, composed by Hydra, names a registered target, and no more exist."""
    for group in ("arch", "dataset"):
        composed = {
            compose_config([f"{group}={p.stem}"])[group]["_target_"] for p in sorted((CONF / group).glob("*.yaml"))
        }
        assert composed == registered_targets(group), group


def _hostile_run(run_dir: Path, marker: Path, where: str) -> Path:
    """A run folder whose config.yaml carries a payload at ``where``, and whose checkpoint matches its hash."""
    arch = {"_target_": "rsst.models.cifar_resnet.resnet20", "_partial_": True, "width": 8}
    dataset = {"_target_": "rsst.data.synthetic.Synthetic", "train_size": 16, "val_size": 8, "test_size": 8}
    payloads = {
        "arch": ("arch", {"_target_": "builtins.open", "_args_": [str(marker), "w"]}),
        "dataset": ("dataset", {"_target_": "shutil.copy", "src": str(run_dir / "config.yaml"), "dst": str(marker)}),
        "nested": ("arch", {**arch, "width": {"_target_": "builtins.open", "_args_": [str(marker), "w"]}}),
        "interpolation": (
            "arch",
            {**arch, "width": f'${{oc.create:${{oc.decode:"{{_target_: builtins.open, _args_: [{marker}, w]}}"}}}}'},
        ),
    }
    group, node = payloads[where]
    cfg = {"seed": 0, "arch": arch, "dataset": dataset, group: node}
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    # the hash of the file as written (a forger can write the checkpoint too): only the payload can refuse the run
    torch.save({"format_version": 1, "config_hash": written_config_hash(cfg)}, run_dir / "checkpoint.pt")
    return run_dir


@pytest.mark.parametrize(
    ("where", "refused"),
    [
        ("arch", "arch._target_='builtins.open'"),
        ("dataset", "dataset._target_='shutil.copy'"),
        ("nested", "arch.width._target_='builtins.open'"),
        ("interpolation", "arch.width holds the interpolation '${oc.create:"),
    ],
)
def test_export_builds_no_target_from_a_run_folder_but_the_projects_own(tmp_path, capsys, where, refused):
    marker = tmp_path / "marker"
    run_dir = _hostile_run(tmp_path / "run", marker, where)
    group = "dataset" if where == "dataset" else "arch"
    node = OmegaConf.load(run_dir / "config.yaml")[group]
    _payload_is_live(lambda _: instantiate(node), run_dir, marker)
    assert main([str(run_dir), "--round", "1"]) == 2
    err = _one_line(capsys.readouterr().err)
    if where == "interpolation":  # refused before anything in the file is resolved
        assert f"{run_dir / 'config.yaml'}: {refused}" in err and "refused without resolving it" in err
    else:
        assert f"{run_dir / 'config.yaml'}: refuses to build {refused}" in err
        assert f"only the project's own {group} targets" in err
    assert not marker.exists()


def test_an_exported_file_naming_a_foreign_target_is_refused_and_never_runs(tmp_path):
    model = _model("resnet20", width=8)
    good = tmp_path / "good.pt"
    save_exported(shrink(model, {}), _arch("resnet20") | {"width": 8}, DIMS, good)
    blob = torch.load(good, weights_only=True)
    marker = tmp_path / "marker"
    blob["architecture"]["arch"] = {"_target_": "builtins.open", "_args_": [str(marker), "w"]}
    hostile = tmp_path / "hostile.pt"
    torch.save(blob, hostile)
    _payload_is_live(lambda _: instantiate(blob["architecture"]["arch"]), hostile, marker)
    with pytest.raises(RefusedConfig, match=f"{hostile}: refuses to build arch._target_='builtins.open'"):
        load_exported(hostile)
    assert not marker.exists()


def test_an_exported_file_with_a_code_payload_is_refused_and_never_runs(tmp_path):
    file, marker = tmp_path / "hostile.pt", tmp_path / "marker"
    torch.save({"format": 1, "architecture": OpensMarker(marker), "state_dict": {}}, file)
    with pytest.raises(ExportError) as caught:
        load_exported(file)
    assert _one_line(str(caught.value)).startswith(f"{file}: it names io.open")
    assert not marker.exists()


@pytest.mark.slow
def test_python_m_rsst_export_runs_without_a_runpy_warning():
    """The loop never imports ``rsst.export``, so ``-m rsst.export`` is not imported twice (runpy's warning)."""
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "rsst.export", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": ""},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "--round" in result.stdout
    from rsst import run  # the lazy attribute is still the run function launch.py imports

    assert callable(run) and run.__module__ == "rsst.loop.run"
