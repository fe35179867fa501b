"""Synthetic images: one random prototype per class plus Gaussian noise. Learnable, shape-configurable."""

from __future__ import annotations

from typing import Any

import torch

from rsst.config import schema
from rsst.data.base import Split, TensorDataModule
from rsst.data.options import Serving, data_options


class Synthetic(TensorDataModule):
    name = "synthetic"
    options = schema.Synthetic  # its keys, types and rules (conf/dataset/<name>.yaml holds the values)

    def __init__(self, **given: Any) -> None:
        """The keys of ``conf/dataset/synthetic.yaml``; those not given take that file's values."""
        o = data_options(self, given)
        gen = torch.Generator().manual_seed(o.seed)
        shape = (o.in_channels, o.image_size, o.image_size)
        protos = torch.rand((o.num_classes, *shape), generator=gen)

        def make(n: int) -> Split:
            y = torch.randint(0, o.num_classes, (n,), generator=gen)
            x = (protos[y] + o.noise * torch.randn((n, *shape), generator=gen)).clamp(0, 1)
            return Split(x, y)

        train, val, test = make(o.train_size), make(o.val_size), make(o.test_size)
        mean = train.x.mean(dim=(0, 2, 3)).tolist()
        std = train.x.std(dim=(0, 2, 3)).tolist()
        super().__init__(train, val, test, o.num_classes, mean, std, Serving.of(o))
