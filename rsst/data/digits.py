"""scikit-learn's bundled handwritten digits: 1,797 grey 8x8 images, 10 classes, no download."""

from __future__ import annotations

from typing import Any

import torch

from rsst.config import schema
from rsst.data.base import Split, TensorDataModule, split_indices
from rsst.data.options import Serving, data_options


class Digits(TensorDataModule):
    """The embedded default: a fixed split of 1,437 train / 180 val / 180 test images by default."""

    name = "digits"
    options = schema.Data  # its keys, types and rules (conf/dataset/<name>.yaml holds the values)

    def __init__(self, **given: Any) -> None:
        """The keys of ``conf/dataset/digits.yaml``; those not given take that file's values."""
        from sklearn.datasets import load_digits

        o = data_options(self, given)
        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(bunch.target, dtype=torch.int64)
        tr, va, te = split_indices(len(y), o.val_size, o.test_size)
        train = Split(x[tr], y[tr])
        mean, std = float(train.x.mean()), float(train.x.std())
        super().__init__(train, Split(x[va], y[va]), Split(x[te], y[te]), 10, [mean], [std], Serving.of(o))
