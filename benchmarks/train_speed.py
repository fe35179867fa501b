"""Benchmark: training epochs of a seed-style loop against this project's loop, in one process.

    python benchmarks/train_speed.py                 # ResNet-20, batch 128, CIFAR-shaped data, fp32 and bf16
    python benchmarks/train_speed.py --quick         # a CPU smoke run, about a minute
    python benchmarks/train_speed.py --batch-size 512 --loops dense,imp --compile reduce-overhead

Every loop trains the same architecture on the same random CIFAR-shaped uint8 data
(``--images`` images, ``--classes`` classes) on the same device, with SGD and a per-step lr
schedule, and is timed over ``--epochs`` epochs after ``--warmup`` untimed ones:

* ``seed_imp`` / ``seed_rsst``: the loop this project replaces, written here for the
  comparison: fp32, ``torch.nn.utils.prune`` forward hooks, a DataLoader over
  per-sample torchvision transforms (random crop with padding 4, horizontal flip,
  to-tensor, normalise), a per-parameter SGD step, and for RSST a penalty that
  copies each layer's mask to the host, finds the penalised indices with numpy
  and adds ``lambda * w`` there, on every batch.
* ``dense``, ``imp``, ``refill``, ``rsst``: this project's loop
  (:func:`rsst.loop.hot_loop.train_epoch`): the data on the device as uint8, cut,
  augmented and normalised there in batches; masks multiplied in place after the
  step; the fused (CUDA) or foreach (CPU) optimiser; ``--channels-last`` and
  ``--compile`` as ``train.channels_last`` and ``train.compile``; each precision of
  ``--amp`` (``off,bf16`` by default: fp32 and bf16 autocast, as ``train.amp``) in turn;
  the RSST penalty as device tensor ops. ``imp`` keeps 80% of the weights
  (unstructured), ``refill`` 80% of each layer's channels, ``rsst`` trains with
  ``M | R`` and penalises ``M & ~R``.

Prints one JSON line per loop and precision (images/s, seconds per epoch, peak memory, the
device with the processor's model and the bf16 units PyTorch reports, settings) and a last
line of ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsst.data.base import Split, TensorDataModule
from rsst.data.options import Serving
from rsst.loop.hot_loop import train_epoch
from rsst.loop.optim import build_optimizer, build_scheduler
from rsst.models import prunable_weights
from rsst.models.cifar_resnet import resnet20, resnet56
from rsst.pruning.masks import Masks, apply_masks_, global_magnitude_prune
from rsst.pruning.regularizer import ExpCustomExponentsSchedule, RSSTPenalty
from rsst.runtime.execution import Execution, compile_model, resolve_device
from rsst.runtime.precision import AMP_CHOICES, processor_name, resolve_amp_name, torch_bf16_units

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
ARCHS = {"resnet20": resnet20, "resnet56": resnet56}
SEED_LOOPS = ("seed_imp", "seed_rsst")
PROJECT_LOOPS = ("dense", "imp", "refill", "rsst")
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


def random_images(n: int, classes: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    return x, torch.randint(0, classes, (n,), generator=gen)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def masks_for(loop: str, model: nn.Module, device: torch.device) -> tuple[Masks | None, Masks | None]:
    """(training mask, penalised mask) of a loop, from the model's own initial weights."""
    weights = {n: w.detach() for n, w in prunable_weights(model).items()}
    ones = Masks.ones_like(weights).to(device)
    if loop == "dense":
        return None, None
    m = global_magnitude_prune(weights, ones, 0.2)  # M: 80% of the weights, unstructured
    if loop == "imp":
        return m, None
    r = Masks()  # R: the 80% of each layer's filters with the largest L1 norm of w * M
    for name, w in weights.items():
        score = (w * m[name]).abs().flatten(1).sum(1)
        keep = torch.zeros_like(score)
        keep[score.argsort(descending=True)[: max(1, int(0.8 * w.shape[0]))]] = 1.0
        r[name] = keep.view(-1, *([1] * (w.dim() - 1))).expand_as(w).contiguous()
    if loop == "refill":
        return r, None
    return m.union(r), m.minus(r)  # rsst: train M | R, penalise P = M & ~R


# -- the seed-style reference loop ---------------------------------------------------------------


class PerSampleImages(torch.utils.data.Dataset):
    """CIFAR as torchvision serves it: HWC uint8 arrays, one PIL image and transform per sample."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        from torchvision import transforms

        self.images = x.permute(0, 2, 3, 1).numpy()
        self.labels = y.tolist()
        self.transform = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def host_side_penalty(model: nn.Module, penalised: dict[str, Tensor], lam: float) -> None:
    """The original per-batch penalty: mask to the host, indices by numpy, ``grad[idx] += lam * w[idx]``."""
    modules = dict(model.named_modules())
    for name, mask in penalised.items():
        module = modules[name.rsplit(".", 1)[0]]
        w = module.weight_orig if hasattr(module, "weight_orig") else module.weight
        idx = np.nonzero(mask.cpu().numpy())
        if len(idx[0]):
            idx_t = tuple(torch.as_tensor(i, device=w.device) for i in idx)
            w.grad.data[idx_t] += lam * w.data[idx_t]


def seed_style_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    penalised: dict[str, Tensor] | None,
    schedule: Callable[[int], float],
    step: list[int],
) -> None:
    model.train()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        if penalised is not None:
            step[0] += 1
            host_side_penalty(model, penalised, schedule(step[0]))
        optimizer.step()
        scheduler.step()


# -- the benchmark -------------------------------------------------------------------------------


def time_epochs(run_epoch: Callable[[], None], device: torch.device, warmup: int, epochs: int) -> float:
    for _ in range(warmup):
        run_epoch()
    synchronise(device)
    start = time.perf_counter()
    for _ in range(epochs):
        run_epoch()
    synchronise(device)
    return (time.perf_counter() - start) / epochs


def bench_seed(
    loop: str, amp: str, args: argparse.Namespace, device: torch.device, data: tuple[Tensor, Tensor]
) -> float:
    from torch.nn.utils import prune

    torch.manual_seed(0)
    model = ARCHS[args.arch](num_classes=args.classes).to(device)
    train_mask, penalised = masks_for(loop.removeprefix("seed_"), model, device)
    modules = dict(model.named_modules())
    for name, mask in (train_mask or {}).items():
        prune.custom_from_mask(modules[name.rsplit(".", 1)[0]], "weight", mask)
    loader = torch.utils.data.DataLoader(
        PerSampleImages(*data),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.seed_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.seed_workers > 0,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, foreach=False)
    scheduler = build_scheduler(optimizer, len(loader), 0, [], 0.1)
    total = len(loader) * (args.warmup + args.epochs)
    schedule = ExpCustomExponentsSchedule(1.0, 4)
    step = [0]

    def lam(t: int) -> float:  # the original computed lambda as a Python float on the host
        return float(schedule(torch.tensor(t), total))

    return time_epochs(
        lambda: seed_style_epoch(model, loader, optimizer, scheduler, device, penalised, lam, step),
        device,
        args.warmup,
        args.epochs,
    )


def bench_project(
    loop: str, amp: str, args: argparse.Namespace, device: torch.device, data: tuple[Tensor, Tensor]
) -> float:
    torch.manual_seed(0)
    execution = Execution.from_config(amp, args.channels_last, device)
    model = execution.prepare(ARCHS[args.arch](num_classes=args.classes).to(device))
    forward = compile_model(model, args.compile)
    x, y = data
    module = TensorDataModule(
        Split(x, y),
        Split(x[:1], y[:1]),
        Split(x[:1], y[:1]),
        args.classes,
        MEAN,
        STD,
        Serving(augment=True, crop_padding=4, loader="device"),
    )
    named = prunable_weights(model)
    weights = list(named.values())
    train_mask, penalised = masks_for(loop, model, device)
    masks = []
    if train_mask is None:
        weights = []
    else:  # masks in the weights' memory format, made as the round loop makes them (Masks.like)
        masks = list(train_mask.like(named).values())
        apply_masks_(weights, masks)
    optimizer = build_optimizer(
        lambda params, **kw: torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, **kw),
        model.parameters(),
        device,
    )
    steps = module.num_batches("train", args.batch_size)
    scheduler = build_scheduler(optimizer, steps, 0, [], 0.1)
    penalty = None
    if penalised is not None:
        pen = list(penalised.like(named).values())
        penalty = RSSTPenalty(weights, pen, ExpCustomExponentsSchedule(1.0, 4), steps, args.warmup + args.epochs)
    epoch = [0]

    def run_epoch() -> None:
        batches: Iterator = module.batches("train", args.batch_size, device, seed=epoch[0])
        if penalty is not None:
            penalty.start_epoch(epoch[0])
        train_epoch(forward, batches, optimizer, scheduler, weights, masks, penalty, execution=execution)
        epoch[0] += 1

    return time_epochs(run_epoch, device, args.warmup, args.epochs)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model, thread count and the bf16 units PyTorch reports."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    units = ", ".join(torch_bf16_units() or []) or "none"
    return f"CPU ({processor_name()}, {torch.get_num_threads()} threads, bf16 units: {units})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: 64 images, batch 32, 1 epoch, no warm-up")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--arch", default="resnet20", choices=sorted(ARCHS))
    parser.add_argument("--images", type=int, default=10_000, help="training images per epoch")
    parser.add_argument("--classes", type=int, default=10, help="10: CIFAR-10-shaped, 100: CIFAR-100-shaped")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per loop")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs first (compilation, caches)")
    parser.add_argument(
        "--amp", default="off,bf16", help="train.amp values the project's loops run in, comma-separated (each in turn)"
    )
    parser.add_argument("--channels-last", default="auto", help="train.channels_last: auto, true or false")
    parser.add_argument("--compile", default="off", help="train.compile of the project's loops")
    parser.add_argument("--seed-workers", type=int, default=None, help="DataLoader workers of the seed-style loop")
    parser.add_argument("--loops", default=",".join(SEED_LOOPS + PROJECT_LOOPS))
    args = parser.parse_args(argv)
    if args.quick:
        args.device, args.images, args.batch_size, args.epochs, args.warmup = "cpu", 64, 32, 1, 0
    args.channels_last = {"true": True, "false": False}.get(str(args.channels_last).lower(), args.channels_last)
    device = resolve_device(args.device)
    if args.seed_workers is None:
        args.seed_workers = 4 if device.type == "cuda" else 0
    loops = [name for name in args.loops.split(",") if name]
    unknown = sorted(set(loops) - set(SEED_LOOPS + PROJECT_LOOPS))
    if unknown:
        parser.error(f"--loops: unknown {unknown}; choose from {', '.join(SEED_LOOPS + PROJECT_LOOPS)}")
    amps = [name for name in args.amp.split(",") if name]
    wrong = [name for name in amps if name not in AMP_CHOICES]
    if wrong or not amps:
        parser.error(f"--amp: unknown {wrong}; choose from {', '.join(AMP_CHOICES)}, comma-separated")
    amps = list(dict.fromkeys(resolve_amp_name(name, device)[0] for name in amps))  # auto as what it resolves to
    data = random_images(args.images, args.classes)
    results: dict[tuple[str, str], dict] = {}
    runs = [(loop, "off") for loop in loops if loop in SEED_LOOPS]  # the seed-style loop is fp32 only
    runs += [(loop, amp) for amp in amps for loop in loops if loop in PROJECT_LOOPS]
    for loop, amp in runs:
        reset_peak(device)
        seconds = (bench_seed if loop in SEED_LOOPS else bench_project)(loop, amp, args, device, data)
        seed_style = loop in SEED_LOOPS
        execution = Execution.from_config(amp, args.channels_last, device)
        row = {
            "loop": loop,
            "arch": args.arch,
            "classes": args.classes,
            "images_per_s": round(args.images / seconds, 1),
            "seconds_per_epoch": round(seconds, 4),
            "peak_memory_mib": peak_memory_mib(device),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "device": device_name(device),
            "batch_size": args.batch_size,
            "images": args.images,
            "epochs": args.epochs,
            "amp": amp,
            "channels_last": False if seed_style else execution.channels_last,
            "compile": "off" if seed_style else args.compile,
            "data": f"DataLoader, {args.seed_workers} workers, per-sample transforms" if seed_style else "device",
            "torch": torch.__version__,
        }
        results[(loop, amp)] = row
        print(json.dumps(row), flush=True)
    print(json.dumps({"ratios": ratios(results)}), flush=True)
    return 0


def ratios(results: dict[tuple[str, str], dict]) -> dict[str, float]:
    """Speed-ups as images/s ratios (> 1: faster), overheads as epoch-time ratios (> 1: slower).

    Keys without a precision compare the project's loops in the first precision of ``--amp``
    (fp32 by default); ``<key>_<amp>`` the same in each further one, and ``<loop>_<amp>_vs_<first>``
    a loop's speed in that precision against the first.
    """
    out = {}
    amps = list(dict.fromkeys(amp for loop, amp in results if loop in PROJECT_LOOPS))
    for i, amp in enumerate(amps):
        suffix = "" if i == 0 else f"_{amp}"
        for key, value in ratios_at(results, amp).items():
            if i == 0 or not key.startswith("seed_"):  # seed-style against itself: fp32 only
                out[key + suffix] = value
        if i > 0:
            for loop in PROJECT_LOOPS:
                a, b = results.get((loop, amp)), results.get((loop, amps[0]))
                if a and b:
                    out[f"{loop}_{amp}_vs_{amps[0]}"] = round(a["images_per_s"] / b["images_per_s"], 3)
    return out


def ratios_at(results: dict[tuple[str, str], dict], amp: str) -> dict[str, float]:
    """The ratios of one precision of the project's loops (the seed-style loops are fp32)."""
    out = {}
    rows = {loop: row for (loop, a), row in results.items() if a == ("off" if loop in SEED_LOOPS else amp)}

    def speed(a: str, b: str) -> float:
        return round(rows[a]["images_per_s"] / rows[b]["images_per_s"], 3)

    def cost(a: str, b: str) -> float:
        return round(rows[a]["seconds_per_epoch"] / rows[b]["seconds_per_epoch"], 3)

    pairs = {
        "imp_speedup_vs_seed_imp": ("imp", "seed_imp", speed),
        "rsst_speedup_vs_seed_rsst": ("rsst", "seed_rsst", speed),
        "rsst_epoch_vs_imp_epoch": ("rsst", "imp", cost),
        "imp_epoch_vs_dense_epoch": ("imp", "dense", cost),
        "refill_epoch_vs_dense_epoch": ("refill", "dense", cost),
        "seed_rsst_epoch_vs_seed_imp_epoch": ("seed_rsst", "seed_imp", cost),
    }
    for key, (a, b, f) in pairs.items():
        if a in rows and b in rows:
            out[key] = f(a, b)
    return out


if __name__ == "__main__":
    sys.exit(main())
