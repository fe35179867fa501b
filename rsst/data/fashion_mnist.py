"""Fashion-MNIST (Xiao et al. 2017) from its idx files, gzipped or plain: 28x28 grey images, 10 classes.

The default root is Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``) when it is installed, else ``data``;
torchvision's layout (``<root>/FashionMNIST/raw``) is found too. As for CIFAR, the
last 5,000 training images are the validation split: 55,000 train / 5,000 val /
10,000 test. The normalisation constants are the mean and standard deviation of
the pixels of the 55,000-image train split.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsst.config import schema
from rsst.data.base import Split, TensorDataModule
from rsst.data.files import CorruptDatasetError, check_count, locate
from rsst.data.options import Serving, data_options

SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # idx: unsigned bytes, 3 and 1 dimensions


def _file(folder: Path, stem: str) -> Path | None:
    """``folder/stem.gz`` or ``folder/stem``, whichever exists (the gzipped one first)."""
    return next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)


def read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    """The uint8 array of an idx file, after checking its magic number and that its size matches its header."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise CorruptDatasetError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    header = 4 * (1 + dims)
    if len(raw) < header:
        raise CorruptDatasetError(f"{path}: {len(raw)} bytes, too short for an idx header")
    found_magic, *shape = (int(v) for v in np.frombuffer(raw[:header], dtype=">u4"))
    if found_magic != magic:
        raise CorruptDatasetError(f"{path}: idx magic number {found_magic}, expected {magic}")
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise CorruptDatasetError(f"{path}: {len(raw)} bytes, its header (shape {shape}) says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


class FashionMNIST(TensorDataModule):
    name = "fashion_mnist"
    options = schema.Cifar  # its keys, types and rules (conf/dataset/<name>.yaml holds the values)
    url = "https://github.com/zalandoresearch/fashion-mnist (data/fashion/*.gz)"

    def __init__(self, **given: Any) -> None:
        """The keys of ``conf/dataset/fashion_mnist.yaml``; those not given take that file's values."""
        o = data_options(self, given)
        root = o.root
        if root is None:
            roots = [SYSTEM_ROOT, Path("data")] if SYSTEM_ROOT.is_dir() else [Path("data")]
        else:
            roots = [Path(root).expanduser()]
        download_root = roots[-1]
        folder = locate(
            name="Fashion-MNIST",
            candidates=[d for r in roots for d in (r, r / "FashionMNIST" / "raw")],
            complete=lambda d: all(_file(d, stem) is not None for stem in FILES.values()),
            expected_files=", ".join(f"{stem}[.gz]" for stem in FILES.values()),
            download=o.download,
            downloader=lambda: _download(download_root),
            url=self.url,
            download_root=download_root,
        )
        arrays = {}
        for key, stem in FILES.items():
            path = _file(folder, stem)
            assert path is not None, "locate() returns a folder holding every file"
            images = key.endswith("images")
            arrays[key] = read_idx(path, IMAGES_MAGIC if images else LABELS_MAGIC, 3 if images else 1)
            if images and arrays[key].shape[1:] != (28, 28):
                raise CorruptDatasetError(f"{path}: images of {arrays[key].shape[1:]} pixels, expected (28, 28)")
            if not images and arrays[key].size and arrays[key].max() >= 10:
                raise CorruptDatasetError(f"{path}: label {arrays[key].max()} found, expected labels 0..9")
        for split in ("train", "test"):
            n_images, n_labels = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
            if n_images != n_labels:
                raise CorruptDatasetError(f"{folder}: {split} has {n_images} images but {n_labels} labels")
        n_train = len(arrays["train_labels"])
        keys = "dataset.train_size + dataset.val_size"
        check_count(n_train, o.train_size + o.val_size, FILES["train_images"], folder, keys)
        check_count(len(arrays["test_labels"]), o.test_size, FILES["test_images"], folder, "dataset.test_size")
        x = torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1)
        y = torch.from_numpy(arrays["train_labels"].astype(np.int64))
        n = o.train_size
        test = Split(
            torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1),
            torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        )
        super().__init__(Split(x[:n], y[:n]), Split(x[n:], y[n:]), test, 10, o.mean, o.std, Serving.of(o))


def _download(root: Path) -> None:
    from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

    TorchvisionFashionMNIST(str(root), train=True, download=True)
