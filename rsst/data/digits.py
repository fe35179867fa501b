"""scikit-learn's bundled handwritten digits: 1,797 grey 8x8 images, 10 classes, no download."""

from __future__ import annotations

import torch

from rsst.data.base import Split, TensorDataModule, split_indices


class Digits(TensorDataModule):
    """The embedded default: a fixed split of 1,437 train / 180 val / 180 test images by default."""

    name = "digits"

    def __init__(
        self,
        val_size: int = 180,
        test_size: int = 180,
        augment: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        loader: str = "auto",
    ) -> None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(bunch.target, dtype=torch.int64)
        tr, va, te = split_indices(len(y), val_size, test_size)
        train = Split(x[tr], y[tr])
        mean, std = float(train.x.mean()), float(train.x.std())
        super().__init__(
            train,
            Split(x[va], y[va]),
            Split(x[te], y[te]),
            10,
            [mean],
            [std],
            augment,
            num_workers=num_workers,
            pin_memory=pin_memory,
            loader=loader,
        )
