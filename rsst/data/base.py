"""In-memory data modules: splits held as tensors, batched with a seeded order.

Every data module exposes ``num_classes``, ``in_channels``, ``image_size``, ``mean``
and ``std``, and yields normalised ``(x, y)`` batches on the requested device. The
order of an epoch is a pure function of the seed given, so a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    x: Tensor  # float in [0, 1], shape [N, C, H, W]
    y: Tensor  # int64 class labels, shape [N]

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"split has {self.x.shape[0]} images but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])


class TensorDataModule:
    """Base class for data sets small enough to hold in memory as tensors."""

    name = "tensor"

    def __init__(
        self,
        train: Split,
        val: Split,
        test: Split,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
    ) -> None:
        self.splits = {"train": train, "val": val, "test": test}
        self.num_classes = int(num_classes)
        self.in_channels = int(train.x.shape[1])
        self.image_size = int(train.x.shape[-1])
        if len(mean) != self.in_channels or len(std) != self.in_channels:
            raise ValueError(f"mean/std need {self.in_channels} values, got {list(mean)} / {list(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment
        self._device_cache: dict[tuple[str, str], Split] = {}

    def size(self, split: str) -> int:
        return len(self.splits[split])

    def num_batches(self, split: str, batch_size: int) -> int:
        return -(-self.size(split) // batch_size)

    def _on(self, split: str, device: torch.device) -> Split:
        key = (split, str(device))
        if key not in self._device_cache:
            s = self.splits[split]
            self._device_cache[key] = Split(s.x.to(device), s.y.to(device))
        return self._device_cache[key]

    def normalise(self, x: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def batches(
        self,
        split: str,
        batch_size: int,
        device: torch.device | str = "cpu",
        seed: int | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalised batches of ``split``; shuffled (and augmented, for train) when ``seed`` is given."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        device = torch.device(device)
        data = self._on(split, device)
        n = len(data)
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(seed)
            order = torch.randperm(n, generator=gen).to(device)
        else:
            order = torch.arange(n, device=device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = data.x[idx]
            if gen is not None and self.augment and split == "train":
                x = self.augment_batch(x, gen)
            yield self.normalise(x), data.y[idx]

    def augment_batch(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Random crop with zero padding of 1/8 of the side, and horizontal flip, per sample."""
        n, _, h, w = x.shape
        pad = max(1, h // 8)
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        rows = (dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h)).view(n, 1, h, 1)
        cols = dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w)
        cols = torch.where(flip.view(n, 1), cols.flip(1), cols).view(n, 1, 1, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        chans = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        return padded[batch, chans, rows, cols]


def split_indices(n: int, val: int, test: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """A fixed permutation of ``range(n)`` cut into train / val / test (independent of the run's seed)."""
    if val + test >= n:
        raise ValueError(f"val ({val}) + test ({test}) must leave training data out of {n} samples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val + test :], perm[:val], perm[val : val + test]
