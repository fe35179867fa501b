"""Issue 32, item 9: what a hostile or unlucky user found, each case built in the form it was found in.

Received files are written by hand in ``tmp_path`` (no training): a run folder holds what a real run
leaves (``config.yaml`` from the composed config, a checkpoint recording its hash and the round files'
sums, round files of the real network). The memory bombs run in a process of their own under a limit on
its address space, so that one the code failed to refuse ends in a ``MemoryError`` within seconds
instead of taking the machine; what is asserted is the refusal line, the peak memory and the time.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from pathlib import Path

import pytest
import torch
from helpers import FAST, ROOT, compose_config, launch, python
from omegaconf import OmegaConf
from report_runs import remaining, rows, write_run

from rsst import run
from rsst.commands.export import ExportError, load_exported, load_round, save_exported
from rsst.commands.export import main as export_main
from rsst.commands.report import ReportError, find_runs, read_provenance, report
from rsst.commands.report import main as report_main
from rsst.config.checks import ConfigError, available_devices, build, validate_config
from rsst.errors import INTERRUPTED, INTERRUPTED_STARTING
from rsst.folder.checkpoint import CheckpointError, file_sum, save_checkpoint
from rsst.folder.layout import ReportFiles, RunFiles, temp_name
from rsst.folder.naming import RunFolderError, config_hash, written_config_hash
from rsst.folder.repair import judge
from rsst.loop.rounds import RoundLoop
from rsst.loop.run import resolve_precision
from rsst.models import prunable_weights
from rsst.models.shrink import shrink

IMP = ["struct=imp", "prune.rounds=3"]


def one_line(text: str) -> str:
    """``text`` (a command's stderr) is one line without a traceback; returned without its newline."""
    assert "Traceback" not in text, text[-3000:]
    lines = text.strip().splitlines()
    assert len(lines) == 1, text[-3000:]
    return lines[0]


# -- a run folder that rsst.export reads, written by hand -------------------------------------------------


def export_folder(root: Path) -> Path:
    """A Refill run folder at round 1, without training: a ResNet-20 of width 4 on the digits, round 1's weights
    and a channel-wise mask (the first output channel of every prunable conv removed), the checkpoint recording
    the config's hash and both files' sums."""
    cfg = compose_config(["arch.width=4", "struct=refill"])
    run_dir = root / "run"
    (run_dir / "weights").mkdir(parents=True)
    (run_dir / "masks").mkdir()
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    data = build(cfg.dataset, "dataset")
    model = build(cfg.arch, "arch")(
        num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size
    )
    masks = {}
    for name, weight in prunable_weights(model).items():
        mask = torch.ones_like(weight, dtype=torch.bool)
        mask[0] = False
        masks[name] = mask
    torch.save(model.state_dict(), run_dir / "weights" / "round_1.pt")
    torch.save(masks, run_dir / "masks" / "round_1.pt")
    sums = {f"{kind}/round_1.pt": file_sum(run_dir / kind / "round_1.pt") for kind in ("weights", "masks")}
    torch.save({"format_version": 1, "config_hash": config_hash(cfg), "file_sums": sums}, run_dir / "checkpoint.pt")
    return run_dir


def replace_round_file(run_dir: Path, kind: str, blob: dict) -> Path:
    """Round 1's ``kind`` file replaced by ``blob``, and the checkpoint's sum of it updated to match."""
    path = run_dir / kind / "round_1.pt"
    torch.save(blob, path)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ckpt["file_sums"][f"{kind}/round_1.pt"] = file_sum(path)
    torch.save(ckpt, run_dir / "checkpoint.pt")
    return path


def round_file(run_dir: Path, kind: str) -> dict:
    return torch.load(run_dir / kind / "round_1.pt", weights_only=True)


def doubling(levels: int) -> str:
    """YAML keys whose ``${}`` references double each other: ``b<n>`` resolves to ``4096 * 2**n`` characters."""
    lines = ["b0: " + "x" * 4096] + [f"b{i}: ${{b{i - 1}}}${{b{i - 1}}}" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def with_bomb(run_dir: Path, text: str, forge: bool) -> Path:
    """``text`` appended to the run's ``config.yaml``; with ``forge``, its checkpoint records the file's new hash
    (a checkpoint is a received file too), so that only what the file holds can refuse it."""
    cfg_file = RunFiles(run_dir).config
    cfg_file.write_text(cfg_file.read_text() + text)
    if forge:
        import yaml

        ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        ckpt["config_hash"] = written_config_hash(yaml.safe_load(cfg_file.read_text()))
        torch.save(ckpt, run_dir / "checkpoint.pt")
    return run_dir


# -- memory bombs: refused in bounded memory and time -------------------------------------------------------

BOMBS = """
import json, resource, sys, time
from pathlib import Path
import matplotlib.pyplot, torch
from rsst.commands.export import load_round
from rsst.commands.report import report
from rsst.errors import RsstError, one_line
from rsst.folder.naming import read_verified_config
from rsst.folder.repair import judge

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

limit = status("VmSize") + (1 << 30)  # 1 GiB beyond what this process maps now: a bomb fails in seconds
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
folders = json.loads(sys.argv[1])
cpu = torch.device("cpu")
actions = {
    "edited": lambda: read_verified_config(folders["edited"]),
    "forged": lambda: read_verified_config(folders["forged"]),
    "export": lambda: load_round(Path(folders["forged"]), 1, cpu),
    "new run": lambda: judge(Path(folders["bare"]), "0123456789"),
    "stride-0 mask": lambda: load_round(Path(folders["mask"]), 1, cpu),
    "report": lambda: [why for _, why in report(folders["sweep"], folders["out"])["skipped"]],
}
out = {}
for name, action in actions.items():
    base, start = status("VmHWM"), time.perf_counter()
    try:
        out[name] = action()
    except RsstError as exc:
        out[name] = one_line(exc)
    except MemoryError:
        out[name] = "MemoryError"
    out[name + " seconds"] = time.perf_counter() - start
    out[name + " peak"] = status("VmHWM") - base
print(json.dumps(out, default=str))
"""


@pytest.mark.slow
def test_a_config_of_doubling_interpolations_and_a_stride_0_mask_are_refused_in_bounded_memory_and_time(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep, IMP, 1, rows([90.0, 89.0, 88.0], remaining("imp", 3)))
    bomb = doubling(16)  # 256 MiB of text from 4.4 KB; each extra level doubles the cost
    edited = with_bomb(write_run(sweep, IMP, 2, rows([90.0, 89.0, 88.0], remaining("imp", 3))), bomb, forge=False)
    forged = with_bomb(export_folder(tmp_path / "forged"), bomb, forge=True)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text(bomb)
    (bare / "rounds.json").write_text(json.dumps(rows([90.0], [100.0])))
    mask = export_folder(tmp_path / "mask")
    masks = round_file(mask, "masks")
    first = next(iter(masks))
    masks[first] = torch.ones(1, dtype=torch.bool).expand(10**5, 10**5)  # declares 10**10 values, stores 1
    replace_round_file(mask, "masks", masks)
    assert (mask / "masks" / "round_1.pt").stat().st_size < 64 << 10
    folders = {"edited": edited, "forged": forged, "bare": bare, "mask": mask, "sweep": sweep, "out": tmp_path / "out"}
    script = tmp_path / "bombs.py"
    script.write_text(BOMBS)
    proc = python(str(script), json.dumps({k: str(v) for k, v in folders.items()}), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    config = f"{edited / 'config.yaml'} was edited: it hashes to"
    assert out["edited"].startswith(config), out["edited"]
    assert out["forged"].startswith(f"{forged / 'config.yaml'}: ") and "holds the interpolation" in out["forged"]
    assert "refused without resolving it" in out["forged"] and out["export"] == out["forged"]
    assert out["new run"].startswith(f"{bare} holds another config's run (config ")
    assert out["stride-0 mask"] == (
        f"{mask / 'masks' / 'round_1.pt'}: the mask of {first} has shape (100000, 100000), but the weight it masks "
        f"has {tuple(round_file(mask, 'weights')[first].shape)}"
    )
    assert len(out["report"]) == 1 and out["report"][0].startswith(config)  # the good run is reported, the bomb not
    assert len((tmp_path / "out" / "report.csv").read_text().splitlines()) == 1 + 3  # the good run's three rounds
    for name in ("edited", "forged", "export", "new run", "stride-0 mask"):
        assert out[f"{name} seconds"] < 2.0, out
        assert out[f"{name} peak"] < 32 << 20, out  # against the 2.1 GB (and 40 GB) these cost unrefused
    assert out["report seconds"] < 20 and out["report peak"] < 256 << 20, out  # the figure included


# -- one line instead of a traceback, and a sweep's report skips only the bad run ---------------------------


def test_a_config_nested_150_levels_is_one_line_in_the_report_and_the_export(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_run(sweep, IMP, 1, rows([90.0, 89.0, 88.0], remaining("imp", 3)))
    deep = write_run(sweep, IMP, 2, rows([90.0, 89.0, 88.0], remaining("imp", 3)))
    cfg_file = deep / "config.yaml"
    cfg_file.write_text(cfg_file.read_text() + "deep: " + "{a: " * 150 + "1" + "}" * 150 + "\n")
    runs, skipped = find_runs(sweep)
    assert [r.config["seed"] for r in runs] == [1]
    assert [(path, why.startswith(f"{cfg_file} is unreadable: nested")) for path, why in skipped] == [(deep, True)]
    assert export_main([str(deep), "--round", "1"]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"rsst.export: {cfg_file} is unreadable: nested")


def test_an_integer_of_100000_digits_in_rounds_json_or_provenance_json_is_one_line(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_run(sweep, IMP, 1, rows([90.0, 89.0, 88.0], remaining("imp", 3)))
    huge = write_run(sweep, IMP, 2, rows([90.0, 89.0, 88.0], remaining("imp", 3)))
    rounds = huge / "rounds.json"
    rounds.write_text(rounds.read_text().replace('"best_epoch": 3', '"best_epoch": ' + "7" * 100_000, 1))
    runs, skipped = find_runs(sweep)
    assert [r.config["seed"] for r in runs] == [1]
    assert skipped == [(huge, f"{rounds} holds a value that is not a number a run writes (Exceeds the limit (4300 "
                               "digits) for integer string conversion)")]  # fmt: skip
    (huge / "provenance.json").write_text('{"seed": ' + "7" * 100_000 + "}")
    with pytest.raises(ReportError, match=r"provenance.json is not a provenance record \(Exceeds the limit"):
        read_provenance(huge)
    assert report_main(["--provenance", str(huge)]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"rsst.report: {huge / 'provenance.json'} is not a")


# -- rsst.export: every received tensor checked before any arithmetic ---------------------------------------


def test_the_hand_written_run_folder_exports(tmp_path):
    loaded = load_round(export_folder(tmp_path), 1, torch.device("cpu"))
    assert all(m.dtype == torch.float32 for m in loaded.masks.values())
    assert sum(int((m.flatten(1).sum(1) == 0).sum()) for m in loaded.masks.values()) == len(loaded.masks)


def _wrong_shape(blob: dict, name: str) -> None:
    blob[name] = blob[name][:, :1]


def _scaled(blob: dict, name: str) -> None:
    blob[name] = blob[name].float() * 3.5  # 0 and 3.5: the weights would be exported times 3.5


def _all_inf(blob: dict, name: str) -> None:
    blob[name] = torch.full_like(blob[name], math.inf)


@pytest.mark.parametrize(
    ("kind", "damage", "says"),
    [
        ("masks", _wrong_shape, "the mask of {name} has shape {shape}, but the weight it masks has {right}"),
        ("masks", _scaled, "the mask of {name} holds values other than 0 and 1 (torch.float32)"),
        ("weights", _all_inf, "{name} holds non-finite values (inf or nan)"),
    ],
    ids=["wrong-shaped mask", "mask of 0 and 3.5", "all-inf weights"],
)
def test_a_round_file_whose_sums_match_but_whose_tensors_are_wrong_is_one_line_at_export(
    tmp_path, capsys, kind, damage, says
):
    run_dir = export_folder(tmp_path)
    blob = round_file(run_dir, kind)
    name = next(iter(round_file(run_dir, "masks")))
    right = tuple(blob[name].shape)
    damage(blob, name)
    path = replace_round_file(run_dir, kind, blob)
    assert export_main([str(run_dir), "--round", "1", "--repeats", "1"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(
        f"rsst.export: {path}: " + says.format(name=name, shape=tuple(blob[name].shape), right=right)
    )
    assert not (run_dir / "export_round_1.pt").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--repeats", "-5"], "--repeats -5 is invalid: expected an integer from 1 to 10000 (timed runs)"),
        (["--device", "cuda:9"], "--device 'cuda:9' is not available on this machine: it has auto, {have}"),
    ],
)
def test_export_arguments_that_cannot_be_are_one_line_before_anything_is_read(tmp_path, capsys, args, says):
    have = available_devices()
    if "cuda:9" in have:
        pytest.skip("this machine has a cuda:9")
    run_dir = export_folder(tmp_path)
    assert export_main([str(run_dir), "--round", "1", *args]) == 2
    assert one_line(capsys.readouterr().err) == f"rsst.export: {says.format(have=', '.join(have))}"


def test_an_exported_file_describing_a_layer_wider_than_its_architecture_is_refused(tmp_path):
    loaded = load_round(export_folder(tmp_path), 1, torch.device("cpu"))
    file = tmp_path / "exported.pt"
    save_exported(shrink(loaded.model, loaded.masks), loaded.arch, loaded.dims, file)
    blob = torch.load(file, weights_only=True)
    name = next(n for n, spec in blob["architecture"]["layers"].items() if spec["kind"] == "conv")
    blob["architecture"]["layers"][name]["out"] = 10**5  # a 10**5-channel conv from a few bytes
    torch.save(blob, file)
    start = time.perf_counter()
    with pytest.raises(ExportError, match=rf"layer {re.escape(name)} is described with out=100000; the architecture"):
        load_exported(file)
    assert time.perf_counter() - start < 2


# -- resume: a checkpoint whose sums match but whose contents do not fit ------------------------------------


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda b: b.update(torch_rng=torch.zeros(3, dtype=torch.uint8)), "torch_rng is torch.uint8 of shape (3,), "
         "expected PyTorch's random state (torch.uint8 of shape (5056,))"),
        (lambda b: b["model"].update(extra=torch.zeros(1)), "model does not name this run's tensors (missing [], "
         "unexpected ['extra'])"),
        (lambda b: b.update(round="x"), "round is 'x', expected an integer from 0 to 2"),
        (lambda b: b.update(round=-1), "round is -1, expected an integer from 0 to 2"),
    ],
    ids=["rng state", "model keys", "round not a number", "round below 0"],
)  # fmt: skip
def test_a_checkpoint_whose_contents_do_not_fit_the_run_is_one_line_at_resume(fast_cfg, tmp_path, damage, says):
    cfg = fast_cfg("struct=imp", "prune.rounds=2", f"paths.run_dir={tmp_path / 'run'}")
    loop = RoundLoop(resolve_precision(cfg)[0], tmp_path / "run")  # the loop run(cfg) builds
    blob = loop.checkpoint()
    damage(blob)
    save_checkpoint(loop.files.checkpoint, blob)
    with pytest.raises(CheckpointError) as caught:
        run(cfg)
    assert str(caught.value) == (
        f"checkpoint {loop.files.checkpoint} does not fit this run: {says}; move it away to start this run over, "
        "or restore it from a backup"
    )
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "checkpoint.pt", "run.log"]


# -- the command line: targets, bounds, ignored keys --------------------------------------------------------


def test_a_command_line_target_is_refused_before_it_is_called_or_any_folder_exists(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where tempfile.mkstemp would write
    for override, group, options in [
        ("logger._target_=tempfile.mkstemp", "logger", "rsst.tracking.CsvLogger, rsst.tracking.WandbLogger"),
        ("optimizer._target_=builtins.dict", "optimizer", "torch.optim.Adam, torch.optim.SGD"),
    ]:
        cfg = compose_config([*FAST, f"paths.root={tmp_path / 'runs'}", override])
        with pytest.raises(ConfigError) as caught:
            run(cfg)
        key, value = override.split("=")
        assert str(caught.value) == (
            f"{key}={value!r} is invalid: expected the _target_ of an option in conf/{group} ({options}); choose the "
            f"option ({group}=<name>), or add a file there for a new one"
        )
        with pytest.raises(ConfigError, match=re.escape(f"{key}={value!r} is invalid")):
            build(cfg[group], group)  # whoever builds an option, not only the run
    assert list(scratch.iterdir()) == [] and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("train.epochs=100000000000000000000000000", "expected at most 100000 epochs"),
        ("prune.rounds=5000", "expected at most 1000 (at prune.rate=0.2, 0.8**1000 of the weights would remain)"),
        ("seed=123456789012345678901234567890", "expected at most 4294967295 (PyTorch keeps a seed's low 32 bits)"),
        ("collective_timeout_s=100000000000000000000", "expected at most 604800 seconds (a week)"),
        ("train.batch_size=4294967296", "expected at most 2147483647 (a 32-bit count)"),
        ("arch._partial_=false", "expected true (the run calls the option with its own arguments)"),
    ],
)
def test_a_value_beyond_its_bound_is_one_line_naming_the_bound(override, says):
    key, value = override.split("=")
    shown = repr(OmegaConf.select(compose_config([override]), key))
    with pytest.raises(ConfigError) as caught:
        validate_config(compose_config([override]))
    assert str(caught.value) == f"{key}={shown} is invalid: {says}"


def test_a_pretrained_file_that_the_rewind_mode_would_ignore_is_refused(tmp_path):
    weights = tmp_path / "pretrained.pt"
    torch.save({}, weights)
    with pytest.raises(ConfigError) as caught:
        validate_config(compose_config([f"prune.pretrained={weights}"]))
    assert str(caught.value) == (
        f"prune.pretrained={str(weights)!r} is invalid with prune.rewind=init: the file is read only with "
        "prune.rewind=pretrained; set that, or leave prune.pretrained unset"
    )
    validate_config(compose_config([f"prune.pretrained={weights}", "prune.rewind=pretrained"]))


def test_a_folder_where_nothing_was_trained_does_not_block_another_config(tmp_path):
    """What a start that failed before its first save leaves: another config's config.yaml, provenance, run.log."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    theirs = compose_config(["seed=7"])
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(theirs, resolve=True))
    (run_dir / "rounds.json").write_text("[]\n")
    (run_dir / "provenance.json").write_text("{}\n")
    (run_dir / "run.log").write_text("a start that failed\n")
    ours = config_hash(compose_config(["seed=8"]))
    assert judge(run_dir, ours) is False  # a new run starts in it
    (run_dir / "rounds.json").write_text(json.dumps(rows([90.0], [100.0])))  # a finished round: refused
    with pytest.raises(RunFolderError, match=f"holds another config's run \\(config {config_hash(theirs)}; this run"):
        judge(run_dir, ours)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["seed=" + "9" * 5000], r"seed=9{195}\.\.\.\[4745 characters\]\.\.\.9{60} is invalid: seed holds a "
         r"number of 5000 digits, more than the 4300 an integer may have$"),
        (["device=\x1b[31mred"], r"the command line does not parse: LexerNoViableAltException: device=\\x1b\[31mred "),
        (["device=" + "x" * 100_000], r"device='x{192}\.\.\.\[99749 characters\]\.\.\.x{59}' is invalid: expected "
         r"one of auto, cpu, cuda, cuda:N, mps$"),
        (["arch._target_=os.system", "arch._partial_=false"], r"arch._target_='os.system' is invalid: expected the "
         r"_target_ of an option in conf/arch \("),
    ],
    ids=["5000-digit seed", "escape sequence", "100000-character value", "os.system"],
)  # fmt: skip
def test_launch_echoes_a_hostile_value_on_one_printable_line_of_bounded_length(tmp_path, overrides, says):
    proc = launch(*FAST, f"paths.root={tmp_path}", *overrides)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line(proc.stderr)
    assert re.match(says, line), line[:3000]
    assert line.isprintable() and len(line) < 2100
    assert list(tmp_path.iterdir()) == []


# -- Ctrl-C at the start and during the report's figure; a killed report's temporaries ----------------------

CTRL_C = """
import builtins, os, runpy, signal, sys
target, script, *argv = sys.argv[1:]
real = builtins.__import__

def ctrl_c_on_import(name, *args, **kwargs):
    if name == target:  # Ctrl-C as this module starts to load
        builtins.__import__ = real
        os.kill(os.getpid(), signal.SIGINT)
    return real(name, *args, **kwargs)

builtins.__import__ = ctrl_c_on_import
sys.argv = [script, *argv]
if script.startswith("-m"):
    runpy.run_module(script[2:], run_name="__main__", alter_sys=True)
else:
    runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("module", ["rsst.commands.train", "rsst.loop.run"], ids=["Hydra", "torch and the loop"])
def test_ctrl_c_while_launch_imports_is_one_line_and_exit_130(tmp_path, module):
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C)
    proc = python(str(script), module, str(ROOT / "launch.py"), *FAST, f"paths.root={tmp_path / 'runs'}")
    assert (proc.returncode, one_line(proc.stderr)) == (INTERRUPTED, INTERRUPTED_STARTING)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_ctrl_c_during_the_reports_figure_is_one_line_and_leaves_whole_files(tmp_path):
    write_run(tmp_path / "sweep", IMP, 1, rows([90.0, 89.0, 88.0], remaining("imp", 3)))
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C)
    out = tmp_path / "out"
    proc = python(str(script), "matplotlib.pyplot", "-mrsst.report", str(tmp_path / "sweep"), "--out", str(out))
    assert proc.returncode == INTERRUPTED, proc.stderr[-3000:]
    assert one_line(proc.stderr).startswith("rsst.report: interrupted; every report file written is whole")
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.md"]  # no figure, no temporary


def test_a_report_removes_the_temporaries_a_killed_report_left_and_no_other_file(tmp_path):
    write_run(tmp_path / "sweep", IMP, 1, rows([90.0, 89.0, 88.0], remaining("imp", 3)))
    out = tmp_path / "out"
    out.mkdir()
    pid = os.getpid()
    dead = next(p for p in range(2**22 - 1, 1, -1) if not os.path.exists(f"/proc/{p}"))
    killed = [out / temp_name(name).replace(f"-{pid}-", f"-{dead}-") for name in ReportFiles(out).names]
    alive = out / temp_name("report.png").replace(f"-{pid}-", f"-{os.getppid()}-")  # another report writing now
    recent = out / temp_name("report.csv").replace(f"-{pid}-", f"-{dead}-")  # a writer elsewhere, a second ago
    user = [out / ".report.png.tmp", out / "notes.rsst-tmp-1-0123456789abcdef"]
    old = time.time() - 3600
    for path in [*killed, alive, recent, *user]:
        path.write_bytes(b"partial")
        if path is not recent:
            os.utime(path, (old, old))
    report(tmp_path / "sweep", out)
    left = sorted(p.name for p in out.iterdir())
    assert left == sorted(["report.csv", "report.md", "report.png", alive.name, recent.name, *(p.name for p in user)])
