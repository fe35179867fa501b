"""Synthetic images: one random prototype per class plus Gaussian noise. Learnable, shape-configurable."""

from __future__ import annotations

import torch

from rsst.data.base import Split, TensorDataModule


class Synthetic(TensorDataModule):
    name = "synthetic"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        train_size: int = 512,
        val_size: int = 128,
        test_size: int = 128,
        noise: float = 0.5,
        seed: int = 0,
        augment: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        loader: str = "auto",
    ) -> None:
        for key, value in {
            "num_classes": num_classes,
            "in_channels": in_channels,
            "image_size": image_size,
            "train_size": train_size,
            "val_size": val_size,
            "test_size": test_size,
        }.items():
            if int(value) < 1:
                raise ValueError(f"dataset.{key}={value}: expected a positive integer")
        gen = torch.Generator().manual_seed(seed)
        shape = (in_channels, image_size, image_size)
        protos = torch.rand((num_classes, *shape), generator=gen)

        def make(n: int) -> Split:
            y = torch.randint(0, num_classes, (n,), generator=gen)
            x = (protos[y] + noise * torch.randn((n, *shape), generator=gen)).clamp(0, 1)
            return Split(x, y)

        train, val, test = make(train_size), make(val_size), make(test_size)
        mean = train.x.mean(dim=(0, 2, 3)).tolist()
        std = train.x.std(dim=(0, 2, 3)).tolist()
        super().__init__(
            train,
            val,
            test,
            num_classes,
            mean,
            std,
            augment,
            num_workers=num_workers,
            pin_memory=pin_memory,
            loader=loader,
        )
