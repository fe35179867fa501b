"""In-memory data modules: splits held as tensors, batched with a seeded order.

Every data module exposes ``num_classes``, ``in_channels``, ``image_size``, ``mean``
and ``std``, and yields normalised ``(x, y)`` batches on the requested device. The
order of an epoch, and the augmentation of each of its batches, are a pure function
of the seed given, so a resumed run sees exactly the batches an uninterrupted run
would have seen, whether the batches are cut on the device or by DataLoader workers.

Images are stored as uint8 (real data sets) or float in [0, 1] (generated ones) and
are scaled and normalised one batch at a time, so no float copy of a data set is held.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from rsst.data.options import Serving
from rsst.parallel.dist import Shard, batch_windows

SPLITS = ("train", "val", "test")
DEVICE_MEMORY_SHARE = 0.5  # loader=auto keeps the data on a GPU when it needs at most this share of free memory


@dataclass
class Split:
    x: Tensor  # uint8 in [0, 255] or float in [0, 1], shape [N, C, H, W]
    y: Tensor  # int64 class labels, shape [N]

    def __post_init__(self) -> None:
        if self.x.dim() != 4:
            raise ValueError(f"split images must have shape [N, C, H, W], got {tuple(self.x.shape)}")
        if self.x.dtype != torch.uint8 and not self.x.is_floating_point():
            raise ValueError(f"split images must be uint8 or float, got {self.x.dtype}")
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"split has {self.x.shape[0]} images but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def head(self, n: int | None) -> Split:
        """The first ``n`` samples (all of them when ``n`` is None)."""
        return self if n is None else Split(self.x[:n], self.y[:n])


class TensorDataModule:
    """Base class for data sets small enough to hold in memory as tensors.

    ``loader`` chooses where batches are cut. ``device`` keeps each split on the
    training device (moved once, as uint8 for real images) and cuts, augments and
    normalises batches there; ``dataloader`` keeps the data on the CPU and cuts
    batches in a DataLoader with ``num_workers`` worker processes (0: the main
    process), pinned when ``pin_memory``; ``auto`` picks ``dataloader`` when
    ``num_workers > 0`` asks for workers, else ``device`` unless the data would take
    more than half of a GPU's free memory. Both yield the same batches
    for the same seed. ``train_subset`` / ``eval_subset`` keep only the first N
    images of train / of val and test, for quick looks.
    """

    name = "tensor"

    def __init__(
        self,
        train: Split,
        val: Split,
        test: Split,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        serving: Serving = Serving(),  # noqa: B008  (frozen: one shared default is safe)
    ) -> None:
        augment, crop_padding, loader = serving.augment, serving.crop_padding, serving.loader
        train_subset, eval_subset = serving.train_subset, serving.eval_subset
        self.splits = {"train": train.head(train_subset), "val": val.head(eval_subset), "test": test.head(eval_subset)}
        self.num_classes = int(num_classes)
        self.in_channels = int(train.x.shape[1])
        self.image_size = int(train.x.shape[-1])
        if train.x.shape[-2] != self.image_size:
            raise ValueError(f"images must be square, got {tuple(train.x.shape[-2:])}")
        if len(mean) != self.in_channels or len(std) != self.in_channels:
            raise ValueError(f"mean/std need {self.in_channels} values, got {list(mean)} / {list(std)}")
        if any(float(s) <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {list(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = bool(augment)
        self.crop_padding = max(1, self.image_size // 8) if crop_padding is None else crop_padding
        self.loader_choice = loader
        self.num_workers = serving.num_workers
        self.pin_memory = bool(serving.pin_memory)
        self._device_cache: dict[tuple[str, str], Split] = {}
        self._auto: dict[str, str] = {}

    def nbytes(self) -> int:
        """Bytes the three splits take (images and labels)."""
        return sum(s.x.nbytes + s.y.nbytes for s in self.splits.values())

    def resolve_loader(self, device: torch.device | str) -> str:
        """``device`` or ``dataloader``: what ``loader`` means for training on ``device``.

        ``auto`` is ``dataloader`` when ``num_workers > 0`` (workers were asked for, so
        they are used); otherwise it keeps the data on the device unless that is a GPU
        whose free memory is less than twice the data's size (the model, activations
        and optimizer need the rest); on the CPU the data is in host memory either way.
        """
        if self.loader_choice != "auto":
            return self.loader_choice
        if self.num_workers > 0:
            return "dataloader"
        device = torch.device(device)
        if device.type != "cuda":
            return "device"
        if str(device) not in self._auto:  # decided once per device, so a run never switches paths
            free, _ = torch.cuda.mem_get_info(device)
            self._auto[str(device)] = loader_for(self.nbytes(), free)
        return self._auto[str(device)]

    def size(self, split: str) -> int:
        return len(self.splits[_check_split(split)])

    def num_batches(self, split: str, batch_size: int) -> int:
        return -(-self.size(split) // batch_size)

    def _on(self, split: str, device: torch.device) -> Split:
        key = (split, str(device))
        if key not in self._device_cache:
            s = self.splits[split]
            self._device_cache[key] = Split(s.x.to(device), s.y.to(device))
        return self._device_cache[key]

    def normalise(self, x: Tensor) -> Tensor:
        """Scale ``x`` (uint8 or float in [0, 1]) to float and normalise it with this data set's mean/std."""
        return normalise(x, self.mean, self.std)

    def epoch(
        self,
        split: str,
        batch_size: int,
        seed: int | None = None,
        device: torch.device | str = "cpu",
        shard: Shard | None = None,
        start: int = 0,
    ) -> EpochBatches:
        """The batches of one pass over ``split`` as a map-style data set (item ``b`` is batch ``b``).

        ``shard=(rank, world_size)`` keeps this process's part of every batch (see
        :func:`rsst.parallel.dist.batch_windows`); the order, crops and flips are the unsharded epoch's.
        ``start``: the pass begins at that batch (the earlier ones are neither cut nor counted).
        """
        _check_split(split)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected an integer >= 1")
        data = self._on(split, torch.device(device))
        n = len(data)
        crops = None
        if seed is None:
            order = torch.arange(n)
        else:
            gen = torch.Generator().manual_seed(seed)
            order = torch.randperm(n, generator=gen)
            if self.augment and split == "train":
                crops = random_crops(n, self.crop_padding, gen).to(data.x.device)
        windows = batch_windows(n, batch_size, shard, evaluation=seed is None)[start:]
        order = order.to(data.x.device)
        return EpochBatches(data, order, windows, crops, self.crop_padding, self.mean, self.std)

    def loader(
        self, split: str, batch_size: int, seed: int | None = None, shard: Shard | None = None, start: int = 0
    ) -> DataLoader:
        """A DataLoader over ``split`` with this module's ``num_workers`` and ``pin_memory``.

        It yields the same normalised CPU batches as :meth:`batches` for the same seed:
        shuffled (and augmented, for train) when ``seed`` is given, in file order otherwise.
        """
        epoch = self.epoch(split, batch_size, seed, shard=shard, start=start)
        return batch_loader(epoch, self.num_workers, self.pin_memory)

    def batches(
        self,
        split: str,
        batch_size: int,
        device: torch.device | str = "cpu",
        seed: int | None = None,
        shard: Shard | None = None,
        start: int = 0,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalised batches of ``split``; shuffled (and augmented, for train) when ``seed`` is given.

        ``shard=(rank, world_size)``: only this process's part of each batch (:meth:`epoch`). ``start``:
        from that batch of the pass on (a round rewound to a step of round 0 starts inside an epoch).
        """
        device = torch.device(device)
        if self.resolve_loader(device) == "device":
            yield from self.epoch(split, batch_size, seed, device, shard, start)
            return
        non_blocking = self.pin_memory and device.type == "cuda"
        for x, y in self.loader(split, batch_size, seed, shard, start):
            yield x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)


class EpochBatches(Dataset):
    """Batch ``b`` of an epoch: gather, crop and flip (train only), scale, normalise.

    Batch ``b`` holds the samples at positions ``windows[b]`` of the epoch's ``order``.
    Everything random was drawn when the epoch was planned, so a batch is a pure
    function of its index; on a GPU, cutting a batch needs no host synchronisation.
    """

    def __init__(
        self,
        data: Split,
        order: Tensor,
        windows: list[slice],
        crops: Tensor | None,
        crop_padding: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.data, self.order, self.windows = data, order, windows
        self.crops, self.crop_padding = crops, crop_padding
        self.mean, self.std = normalisation(mean, std, data.x.dtype, data.x.device)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, b: int) -> tuple[Tensor, Tensor]:
        if not 0 <= b < len(self):
            raise IndexError(b)
        window = self.windows[b]
        idx = self.order[window]
        x = self.data.x[idx]
        if self.crops is not None:
            x = crop_flip(x, self.crops[window], self.crop_padding)
        return (x.to(torch.float32) - self.mean) / self.std, self.data.y[idx]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return (self[b] for b in range(len(self)))


def batch_loader(batches: Dataset, num_workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader whose items are whole batches (``batches[b]`` is batch ``b``), in order."""
    return DataLoader(
        batches,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
    )


def loader_for(data_bytes: int, free_bytes: int) -> str:
    """``loader=auto`` on a GPU: ``device`` when the data needs at most half of its free memory."""
    return "device" if data_bytes <= DEVICE_MEMORY_SHARE * free_bytes else "dataloader"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def normalisation(
    mean: Sequence[float], std: Sequence[float], dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Per-channel ``(mean, std)`` as ``[1, C, 1, 1]`` float32 tensors in the units of ``dtype`` (x255 for uint8)."""
    scale = 255.0 if dtype == torch.uint8 else 1.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * scale
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * scale
    return m.to(device), s.to(device)


def normalise(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel in float32; uint8 input is first scaled by 1/255."""
    m, s = normalisation(mean, std, x.dtype, x.device)
    return (x.to(torch.float32) - m) / s


def random_crops(n: int, pad: int, gen: torch.Generator) -> Tensor:
    """``[n, 3]`` int64: per sample the crop offsets ``dy``, ``dx`` in ``[0, 2 * pad]`` and a flip bit."""
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
    flips = (torch.rand(n, generator=gen) < 0.5).long().view(n, 1)
    return torch.cat([offsets, flips], dim=1)


def crop_flip(x: Tensor, crops: Tensor, pad: int) -> Tensor:
    """Crop each sample of ``x`` zero-padded by ``pad`` at its offsets, mirrored where its flip bit is set.

    With :func:`random_crops` this is the batched equivalent of torchvision's
    ``RandomCrop(size, padding=pad)`` followed by ``RandomHorizontalFlip()``.
    """
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy, dx, flip = crops[:, 0].view(n, 1), crops[:, 1].view(n, 1), crops[:, 2].view(n, 1).bool()
    rows = (dy + torch.arange(h, device=x.device).view(1, h)).view(n, 1, h, 1)
    cols = dx + torch.arange(w, device=x.device).view(1, w)
    cols = torch.where(flip, cols.flip(1), cols).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chans, rows, cols]


def split_indices(n: int, val: int, test: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """A fixed permutation of ``range(n)`` cut into train / val / test (independent of the run's seed)."""
    if val + test >= n:
        raise ValueError(f"val ({val}) + test ({test}) must leave training data out of {n} samples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val + test :], perm[:val], perm[val : val + test]
