"""Structured export: turn a round's channel-wise ticket into a smaller dense network and measure its speed-up.

    python -m rsst.export RUN_DIR --round R [--out FILE] [--repeats N]

Loads ``weights/round_<R>.pt`` and ``masks/round_<R>.pt``, removes the output channels
whose filters are all zero (:func:`rsst.models.shrink.shrink`), saves the exported network
as plain data (its weights and a description of its layers; :func:`load_exported` rebuilds
it) and writes ``export_round_<R>.json``: parameters, MACs, and batch-1 / batch-256 latency
of the dense (masked) and the exported network on the current device, with their ratios.

Nothing read from the run folder is executed: ``config.yaml`` must hash to the identity its
checkpoint records, only the project's own ``_target_``s are built from it
(:mod:`rsst.config.registry`), and every ``.pt`` is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from rsst.config.checks import available_devices, build
from rsst.config.registry import RefusedConfig, checked_node
from rsst.errors import INTERRUPTED, RsstError, one_line
from rsst.folder.atomic import atomic_torch_save, atomic_write_text
from rsst.folder.checkpoint import CheckpointError, mismatch, recorded_sums
from rsst.folder.layout import MASKS, WEIGHTS, RunFiles
from rsst.folder.naming import read_verified_config
from rsst.folder.safeload import UnloadableFile, dense_storage, load_tensors
from rsst.models.shrink import FoldedConv2d, shrink
from rsst.models.size import count_macs, count_params, dead_channels, is_channel_wise
from rsst.runtime.execution import resolve_device

EXPORT_FORMAT = 1


class ExportError(RsstError, RuntimeError):
    """A run folder or exported file that cannot be used; the message names the file and why."""


class NothingToRemove(RsstError, ValueError):
    """The ticket has no output channel whose filter is entirely zero (an unstructured ticket)."""


def latency_ms(model: nn.Module, x: Tensor, repeats: int = 10, warmup: int = 3) -> float:
    """Median wall time of ``model(x)`` in milliseconds, after ``warmup`` untimed runs, in inference mode."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def channel_counts(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _tensor_dict(blob: Any, file: Path, what: str) -> dict[str, Tensor]:
    if not isinstance(blob, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in blob.items()):
        found = type(blob).__name__ if not isinstance(blob, dict) else "a dict with entries that are not named tensors"
        raise ExportError(f"{file}: expected {what} (a dict of named tensors), found {found}")
    return blob


def _read_round_file(run_dir: Path, kind: str, round_: int) -> dict[str, Tensor]:
    """``weights/round_<r>.pt`` or ``masks/round_<r>.pt`` of the run, as tensors; :class:`ExportError` otherwise."""
    files = RunFiles(run_dir)
    file = files.weights(round_) if kind == WEIGHTS else files.masks(round_)
    try:
        blob = load_tensors(file)
    except FileNotFoundError:
        kept = files.kept_rounds(kind)
        raise ExportError(
            f"{file} is missing (the folder holds rounds {kept or 'none'}): it is written once, when round "
            f"{round_} finishes, and no other file can rebuild it; rerun the run (into a fresh paths.run_dir) "
            "to rebuild it"
        ) from None
    except UnloadableFile as exc:
        raise ExportError(f"{exc}; the run must be rerun (into a fresh paths.run_dir) to rebuild it") from None
    try:
        wrong = mismatch(run_dir, file, recorded_sums(files.checkpoint))
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    if wrong is not None:
        raise ExportError(f"{wrong}: it was replaced or damaged; rerun the same command to rebuild what can be")
    return _tensor_dict(blob, file, f"round {round_}'s {kind}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def build_dense(arch: Mapping[str, Any], dims: Mapping[str, int], source: str | Path) -> nn.Module:
    """The model ``arch`` builds for data of shape ``dims``, once :func:`~rsst.config.registry.checked_node` allows
    it."""
    return build(OmegaConf.create(checked_node(arch, "arch", source)), "arch")(**dims)


def on_meta(make: Callable[[], nn.Module]) -> nn.Module:
    """``make()`` on PyTorch's meta device: the network's shapes and dtypes, with no memory behind them.

    What a received file says is compared with it before the network is built for real.
    """
    with torch.device("meta"):
        return make()


def _shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def check_weights(blob: Mapping[str, Tensor], expected: Mapping[str, Tensor], file: Path) -> None:
    """:class:`ExportError` unless ``blob`` holds exactly ``expected``'s names, each with its shape and dtype, each
    element stored once (:func:`rsst.folder.safeload.dense_storage`) and every floating value finite.

    The values are looked at only once the shapes are known to be the model's, so nothing here costs more
    than the model does.
    """
    missing, extra = sorted(set(expected) - set(blob)), sorted(set(blob) - set(expected))
    if missing or extra:
        parts = [f"lacks {len(missing)} of the model's tensors ({', '.join(missing[:3])})"] if missing else []
        parts += [f"has {len(extra)} the model does not ({', '.join(extra[:3])})"] if extra else []
        raise ExportError(f"{file} does not fit the run's arch: it {' and '.join(parts)}")
    for name, ref in expected.items():
        t = blob[name]
        if _shape(t) != _shape(ref) or t.dtype != ref.dtype:
            raise ExportError(
                f"{file}: {name} is {t.dtype} of shape {_shape(t)}, but the run's arch has {ref.dtype} of shape "
                f"{_shape(ref)}"
            )
        if not dense_storage(t):
            raise ExportError(f"{file}: {name} stores fewer values than its shape declares (a stride-0 view)")
    for name, t in blob.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ExportError(
                f"{file}: {name} holds non-finite values (inf or nan); a finished round's weights are finite, so "
                "the file was damaged"
            )


def check_masks(blob: Mapping[str, Tensor], expected: Mapping[str, Tensor], file: Path) -> None:
    """:class:`ExportError` unless every mask in ``blob`` names a tensor of ``expected`` with its shape, stores each
    element once, and holds only 0 and 1 (a bool tensor, as the run writes them, or numbers that are 0 or 1)."""
    unknown = sorted(set(blob) - set(expected))
    if unknown:
        raise ExportError(f"{file} masks weights the model lacks: {unknown[:3]}")
    for name, m in blob.items():
        if _shape(m) != _shape(expected[name]):
            raise ExportError(
                f"{file}: the mask of {name} has shape {_shape(m)}, but the weight it masks has "
                f"{_shape(expected[name])}"
            )
        if not dense_storage(m):
            raise ExportError(f"{file}: the mask of {name} stores fewer values than its shape declares")
        if m.dtype != torch.bool and (m.is_complex() or not bool(((m == 0) | (m == 1)).all())):
            raise ExportError(
                f"{file}: the mask of {name} holds values other than 0 and 1 ({m.dtype}); a mask keeps or removes "
                "a weight, it never scales it"
            )


@dataclass
class LoadedRound:
    """A run's dense model with one round's weights (eval mode), that round's masks, and how it was built."""

    model: nn.Module
    masks: dict[str, Tensor]
    input_shape: tuple[int, int, int, int]
    arch: dict[str, Any]
    dims: dict[str, int]


def load_round(run_dir: Path, round_: int, device: torch.device) -> LoadedRound:
    """The run's model with round ``round_``'s weights and masks, built from the run's verified config.

    Raises :class:`~rsst.folder.naming.RunFolderError` (an edited or missing config), :class:`RefusedConfig`
    (a ``_target_`` that is not the project's own) or :class:`ExportError` (a missing or corrupt round file).
    """
    cfg = read_verified_config(run_dir)
    files = RunFiles(run_dir)
    cfg_file = files.config
    arch, dataset = (checked_node(cfg.get(group), group, cfg_file) for group in ("arch", "dataset"))
    weights = _read_round_file(run_dir, WEIGHTS, round_)
    masks = _read_round_file(run_dir, MASKS, round_)
    data = build(OmegaConf.create(dataset), "dataset")
    shape = (1, data.in_channels, data.image_size, data.image_size)
    dims = {"num_classes": data.num_classes, "in_channels": data.in_channels, "image_size": data.image_size}
    expected = on_meta(lambda: build_dense(arch, dims, cfg_file)).state_dict()
    check_weights(weights, expected, files.weights(round_))  # before any arithmetic on a received tensor
    check_masks(masks, expected, files.masks(round_))
    model = build_dense(arch, dims, cfg_file)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ExportError(f"{files.weights(round_)} does not fit the run's arch: {_one_line(exc)}") from None
    masks = {n: m.to(device=device, dtype=torch.float32) for n, m in masks.items()}
    return LoadedRound(model.to(device).eval(), masks, shape, arch, dims)


# -- the exported file: plain data, rebuilt from the project's own factories -------------------------


def describe_layers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per conv / BatchNorm / linear layer: its kind and channel counts, all a rebuild needs beyond the factory."""
    layers: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            kind = "folded_conv" if isinstance(m, FoldedConv2d) else "conv"
            layers[name] = {"kind": kind, "in": m.in_channels, "out": m.out_channels, "groups": m.groups}
            layers[name]["bias"] = m.bias is not None
        elif isinstance(m, nn.BatchNorm2d):
            layers[name] = {"kind": "bn", "features": m.num_features}
        elif isinstance(m, nn.Linear):
            layers[name] = {"kind": "linear", "in": m.in_features, "out": m.out_features, "bias": m.bias is not None}
    return layers


def save_exported(model: nn.Module, arch: Mapping[str, Any], dims: Mapping[str, int], file: str | Path) -> None:
    """Write the exported network as plain data that ``torch.load(file, weights_only=True)`` reads.

    ``{"format", "architecture": {"arch": the run's arch node, "dims": num_classes / in_channels /
    image_size, "layers": describe_layers(model)}, "state_dict"}``; :func:`load_exported` rebuilds it.
    """
    architecture = {"arch": dict(arch), "dims": dict(dims), "layers": describe_layers(model)}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": EXPORT_FORMAT, "architecture": architecture, "state_dict": state}, file)


def _rebuilt(old: nn.Module, spec: Mapping[str, Any], name: str, file: Path) -> nn.Module:
    """A layer like ``old`` (same geometry) with the channel counts ``spec`` gives."""
    kind = spec.get("kind")
    if isinstance(old, nn.Conv2d):
        limits = {"in": old.in_channels, "out": old.out_channels}
    elif isinstance(old, nn.BatchNorm2d):
        limits = {"features": old.num_features}
    else:
        limits = {"in": getattr(old, "in_features", 0), "out": getattr(old, "out_features", 0)}
    for key, most in limits.items():
        count = spec.get(key)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= most:
            raise ExportError(
                f"{file}: layer {name} is described with {key}={count!r}; the architecture's layer has {most}, and "
                "an export only removes channels"
            )
    if kind in ("conv", "folded_conv") and isinstance(old, nn.Conv2d):
        conv = nn.Conv2d(
            int(spec["in"]),
            int(spec["out"]),
            old.kernel_size,
            old.stride,
            old.padding,
            old.dilation,
            int(spec["groups"]),
            bool(spec["bias"]),
            old.padding_mode,
        )
        if kind == "conv":
            return conv
        return FoldedConv2d(conv, torch.zeros(conv.out_channels, 1, *conv.kernel_size))
    if kind == "bn" and isinstance(old, nn.BatchNorm2d):
        return nn.BatchNorm2d(int(spec["features"]), old.eps, old.momentum, old.affine, old.track_running_stats)
    if kind == "linear" and isinstance(old, nn.Linear):
        return nn.Linear(int(spec["in"]), int(spec["out"]), bool(spec["bias"]))
    raise ExportError(f"{file}: layer {name} is described as {kind!r}, but the architecture has a {type(old).__name__}")


def load_exported(file: str | Path) -> nn.Module:
    """The network :func:`save_exported` wrote, in eval mode on the CPU, rebuilt without unpickling code.

    Only a registered arch ``_target_`` is built (:mod:`rsst.config.registry`); the layers are then resized
    as described and the weights loaded strictly. :class:`ExportError` names the file on any mismatch.
    """
    file = Path(file)
    try:
        blob = load_tensors(file)
    except (FileNotFoundError, UnloadableFile) as exc:
        raise ExportError(_one_line(exc) if isinstance(exc, UnloadableFile) else f"{file} is missing") from None
    expected = f'an exported network (a dict with "format": {EXPORT_FORMAT}, "architecture" and "state_dict")'
    if not isinstance(blob, dict) or blob.get("format") != EXPORT_FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise ExportError(f"{file}: expected {expected}, found format {found!r}")
    architecture, state = blob.get("architecture"), _tensor_dict(blob.get("state_dict"), file, "a state_dict")
    if not isinstance(architecture, dict) or not all(
        isinstance(architecture.get(k), dict) for k in ("arch", "dims", "layers")
    ):
        raise ExportError(f"{file}: expected {expected}; its architecture lacks arch, dims or layers")

    def assemble() -> nn.Module:
        model = build_dense(architecture["arch"], architecture["dims"], file)
        for name, spec in architecture["layers"].items():
            if not isinstance(spec, dict):
                raise ExportError(f"{file}: layer {name} is described by a {type(spec).__name__}, not a dict")
            old = model.get_submodule(name)
            new = _rebuilt(old, spec, name, file)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, new)
        return model

    try:
        check_weights(
            state, on_meta(assemble).state_dict(), file
        )  # the file's tensors against the network it describes
        model = assemble()
        model.load_state_dict(state)
    except (ExportError, RefusedConfig):
        raise
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ExportError(f"{file}: does not rebuild ({type(exc).__name__}: {_one_line(exc)})") from None
    return model.eval()


def measure(
    dense: nn.Module, exported: nn.Module, input_shape: Sequence[int], repeats: int = 10, batches=(1, 256)
) -> dict[str, Any]:
    """Parameters, MACs and latency of both networks, and exported / dense ratios."""
    param = next(dense.parameters())
    out: dict[str, Any] = {"device": str(param.device)}
    for key, fn in (("params", count_params), ("macs", lambda m: count_macs(m, input_shape))):
        d, e = fn(dense), fn(exported)
        out[key] = {"dense": d, "exported": e, "ratio": e / d}
    for b in batches:
        x = torch.randn(b, *input_shape[1:], device=param.device, dtype=param.dtype)
        d, e = latency_ms(dense, x, repeats), latency_ms(exported, x, repeats)
        out[f"latency_ms_batch{b}"] = {"dense": d, "exported": e, "ratio": e / d}
    return out


def export_round(
    run_dir: str | Path, round_: int, out: str | Path | None = None, device: str = "auto", repeats: int = 10
) -> dict[str, Any]:
    """Export round ``round_`` of the run in ``run_dir``; write the model and ``export_round_<r>.json``."""
    check_arguments(round_, device, repeats)
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    loaded = load_round(run_dir, round_, dev)
    dense, masks, shape = loaded.model, loaded.masks, loaded.input_shape
    if dead_channels(masks) == 0:
        density = sum(float(m.sum()) for m in masks.values()) / max(1, sum(m.numel() for m in masks.values()))
        raise NothingToRemove(
            f"{run_dir} round {round_}: nothing to remove: no output channel is entirely zero "
            f"({100 * density:.2f}% of the prunable weights remain, scattered inside filters). Structured "
            "export removes whole channels only; an unstructured (imp) ticket is exactly as large as dense."
        )
    exported = shrink(dense, masks)
    with torch.no_grad():
        for name, param in dense.named_parameters():
            if name in masks:
                param.mul_(masks[name])
    out_file = Path(out) if out else RunFiles(run_dir).export_model(round_)
    result = {
        "run_dir": str(run_dir),
        "round": round_,
        "model_file": str(out_file),
        "channel_wise": is_channel_wise(masks),
        "dead_channels": dead_channels(masks),
        "input_shape": list(shape),
        "channels": {
            n: [c, channel_counts(exported).get(n, 0)]
            for n, c in channel_counts(dense).items()
            if c != channel_counts(exported).get(n, 0)
        },
        **measure(dense, exported, shape, repeats),
    }
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_exported(exported, loaded.arch, loaded.dims, out_file)
    atomic_write_text(RunFiles(run_dir).export_json(round_), json.dumps(result, indent=2) + "\n")
    return result


def summary(result: dict[str, Any]) -> str:
    lines = [f"exported round {result['round']} of {result['run_dir']} to {result['model_file']}"]
    lines.append(f"{'':24}{'dense':>14}{'exported':>14}{'ratio':>8}")
    for key in ("params", "macs", *[k for k in result if k.startswith("latency_ms")]):
        d, e, r = result[key]["dense"], result[key]["exported"], result[key]["ratio"]
        fmt = "{:>14.3f}" if key.startswith("latency") else "{:>14,}"
        lines.append(f"{key:24}" + fmt.format(d) + fmt.format(e) + f"{r:>8.3f}")
    lines.append(f"device: {result['device']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsst.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder (with config.yaml, weights/ and masks/)")
    parser.add_argument("--round", type=int, required=True, help="the round whose ticket to export")
    parser.add_argument("--out", help="where to save the exported model (default: RUN_DIR/export_round_<R>.pt)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per latency (median reported)")
    args = parser.parse_args(argv)
    try:
        result = export_round(args.run_dir, args.round, args.out, args.device, args.repeats)
    except RsstError as exc:  # NothingToRemove, ExportError, RunFolderError, RefusedConfig, ConfigError, ...
        sys.stderr.write(f"rsst.export: {one_line(exc)}\n")
        return 2
    except KeyboardInterrupt:  # the exported files are whole or absent: each is written to a temporary, then renamed
        sys.stderr.write("rsst.export: interrupted; nothing was left half-written, the same command exports again\n")
        return INTERRUPTED
    sys.stdout.write(summary(result) + "\n")
    return 0


MAX_REPEATS = 10_000


def check_arguments(round_: int, device: str, repeats: int) -> None:
    """One line (:class:`ExportError`) for a round, a device or a number of repeats that cannot be, before any file
    is read."""
    if round_ < 0:
        raise ExportError(f"--round {round_} is invalid: expected a round >= 0 (round 0 is the dense network)")
    if not 1 <= repeats <= MAX_REPEATS:
        raise ExportError(f"--repeats {repeats} is invalid: expected an integer from 1 to {MAX_REPEATS} (timed runs)")
    have = available_devices()
    try:
        dev = resolve_device(device)
    except (RuntimeError, ValueError):
        dev = None
    wanted = None if dev is None else f"cuda:{dev.index or 0}" if dev.type == "cuda" else str(dev)
    if wanted not in have:
        raise ExportError(f"--device {device!r} is not available on this machine: it has auto, {', '.join(have)}")


if __name__ == "__main__":
    raise SystemExit(main())
