"""Received files cost what their size on disk says: no YAML alias expansion, no inflating torch archive."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import ROOT

from rsst.folder.checkpoint import CheckpointError, load_checkpoint, read_identity
from rsst.folder.naming import RunFolderError, read_verified_config
from rsst.folder.safeload import UnloadableFile, UnreadableYaml, load_tensors, load_yaml
from rsst.folder.tickets import load_masks
from rsst.pruning.masks import Masks


def _alias_bomb(levels: int = 9) -> str:
    """The classic nested-alias YAML: each level is nine references to the one before it (9**levels leaves)."""
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def test_a_config_of_nested_aliases_is_refused_in_well_under_a_second(tmp_path):
    bomb = tmp_path / "config.yaml"
    bomb.write_text(_alias_bomb())
    assert bomb.stat().st_size < 2000  # a 9**9-leaf tree in under 2 KB
    start = time.perf_counter()
    with pytest.raises(UnreadableYaml, match=r"config\.yaml: it uses an anchor .*line 1.*never writes"):
        load_yaml(bomb)
    assert time.perf_counter() - start < 0.5


def test_a_run_folder_whose_config_uses_aliases_is_one_line_before_the_checkpoint_is_read(tmp_path):
    (tmp_path / "config.yaml").write_text("seed: 1\nother: &x {a: 1}\nthird: *x\n")
    with pytest.raises(RunFolderError) as err:
        read_verified_config(tmp_path)  # no checkpoint.pt: the config is judged first
    message = str(err.value)
    assert "\n" not in message and "config.yaml is unreadable: it uses an anchor" in message


def test_a_config_larger_than_any_the_platform_writes_is_refused_unread(tmp_path):
    big = tmp_path / "config.yaml"
    big.write_text("k: " + "v" * (2 << 20) + "\n")
    with pytest.raises(UnreadableYaml, match="larger than 1048576 bytes"):
        load_yaml(big)


def test_the_configs_the_platform_writes_read_back_equal(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"seed": 1, "train": {"milestones": [4, 6], "amp": "off"}, "a": {"x": [1]}, "b": {"x": [1]}})
    path = tmp_path / "config.yaml"
    path.write_text(OmegaConf.to_yaml(cfg))  # how rsst.loop.run writes it
    assert load_yaml(path) == OmegaConf.to_container(cfg)


def _deflate(src: Path, dst: Path) -> None:
    """``src`` (a torch.save archive) rewritten with its tensor entries deflated, streamed in 1 MiB chunks."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            out = zipfile.ZipInfo(info.filename, info.date_time)
            out.compress_type = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            with zin.open(info) as r, zout.open(out, "w", force_zip64=True) as w:
                while chunk := r.read(1 << 20):
                    w.write(chunk)


@pytest.fixture(scope="module")
def inflating_pt(tmp_path_factory) -> Path:
    """A ~0.3 MB ``.pt`` that declares a 256 MiB tensor (its entries deflated, which torch.save never does)."""
    folder = tmp_path_factory.mktemp("bomb")
    stored = folder / "stored.pt"
    torch.save({"w": torch.zeros(1 << 26)}, stored)
    bomb = folder / "bomb.pt"
    _deflate(stored, bomb)
    stored.unlink()
    assert bomb.stat().st_size < 1 << 20
    return bomb


def test_a_deflated_torch_archive_is_refused_naming_the_entry(inflating_pt):
    with pytest.raises(UnloadableFile, match=r"bomb\.pt: its entry '.*data/0' is compressed .* declaring 268435456"):
        load_tensors(inflating_pt)


def test_an_inflating_checkpoint_and_mask_file_are_one_line_each(inflating_pt, tmp_path):
    with pytest.raises(CheckpointError, match="is unreadable .*compressed") as err:
        load_checkpoint(inflating_pt, "0123456789")
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="is unreadable .*compressed"):
        read_identity(inflating_pt)
    with pytest.raises(UnloadableFile, match="compressed"):
        Masks(load_masks(inflating_pt))


def test_an_archive_beyond_what_the_caller_allows_is_refused(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    with pytest.raises(UnloadableFile, match=r"holds \d+ bytes, more than the 1000"):
        load_tensors(path, max_bytes=1000)
    assert torch.equal(load_tensors(path, max_bytes=10_000)["w"], torch.zeros(1000))


def test_a_mask_file_that_is_not_a_mapping_of_tensors_is_one_line(tmp_path):
    path = tmp_path / "round_1.pt"
    torch.save({"conv.weight": [1, 2]}, path)
    with pytest.raises(UnloadableFile, match="not a mapping of weight names to mask tensors"):
        Masks(load_masks(path))


PEAK = """
import json, sys, torch
from rsst.folder.safeload import UnloadableFile, load_tensors
def peak():  # this process's own high-water mark (ru_maxrss would carry the parent's across exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
base = peak()
try:
    load_tensors(sys.argv[1])
except UnloadableFile:
    pass
guarded = peak() - base
torch.load(sys.argv[1], map_location="cpu", weights_only=True)  # the same file unguarded, as a control
print(json.dumps({"guarded": guarded, "unguarded": peak() - base}))
"""


@pytest.mark.slow
def test_refusing_an_inflating_archive_keeps_the_memory_peak_under_16_mib(inflating_pt):
    out = subprocess.run(
        [sys.executable, "-c", PEAK, str(inflating_pt)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    peak = json.loads(out.stdout.strip().splitlines()[-1])
    assert peak["guarded"] < 16 << 20, peak
    assert peak["unguarded"] > 200 << 20, peak  # the control: torch.load alone inflates the 256 MiB
