"""scikit-learn's bundled handwritten digits: 1,797 grey 8x8 images, 10 classes, no download."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsst.config import schema
from rsst.data.base import Split, TensorDataModule, split_indices
from rsst.data.options import Serving, data_options


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``load_digits()``'s ``images`` ([1797, 8, 8], 0..16) and ``target``, read from the file it reads.

    The file inside scikit-learn's wheel (``sklearn/datasets/data/digits.csv.gz``: 64 pixels and the
    label per row) is found without importing scikit-learn, whose ``sklearn.datasets`` takes 0.6 s to
    import; if a release moves it, ``load_digits`` is used.
    """
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(folders[0]) / "datasets" / "data" / "digits.csv.gz" if folders else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits  # noqa: PLC0415

        bunch = load_digits()
        return bunch.images, bunch.target
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


class Digits(TensorDataModule):
    """The embedded default: a fixed split of 1,437 train / 180 val / 180 test images by default."""

    name = "digits"
    options = schema.Data  # its keys, types and rules (conf/dataset/<name>.yaml holds the values)

    def __init__(self, **given: Any) -> None:
        """The keys of ``conf/dataset/digits.yaml``; those not given take that file's values."""
        o = data_options(self, given)
        images, target = digits_arrays()
        x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(target, dtype=torch.int64)
        tr, va, te = split_indices(len(y), o.val_size, o.test_size)
        train = Split(x[tr], y[tr])
        mean, std = float(train.x.mean()), float(train.x.std())
        super().__init__(train, Split(x[va], y[va]), Split(x[te], y[te]), 10, [mean], [std], Serving.of(o))
