"""CIFAR-10 and CIFAR-100 from the python pickle batches (the format torchvision downloads).

As in the original tool, the first 45,000 training images are the train split, the
last 5,000 the validation split, and the 10,000 test images the test split; train
images are augmented with a random 32x32 crop of the image padded by 4, and a
horizontal flip. Images are held as uint8 ``[N, 3, 32, 32]`` (about 150 MB).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from rsst.data.base import Split, TensorDataModule
from rsst.data.files import CorruptDatasetError, check_count, check_sizes, locate

try:
    from numpy._core import multiarray  # numpy 2
except ImportError:
    from numpy.core import multiarray  # numpy 1.x


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles from Python 3 use it for bytes, and for nothing else."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refuses _codecs.encode with encoding {encoding!r}; only latin1 builds bytes")
    return text.encode("latin1")


def _numpy_globals() -> dict[str, Any]:
    """The globals a CIFAR batch names: numpy's array and dtype reconstruction (under its 1.x and 2.x names)."""
    return {
        "numpy.core.multiarray._reconstruct": multiarray._reconstruct,
        "numpy._core.multiarray._reconstruct": multiarray._reconstruct,
        "numpy.core.multiarray.scalar": multiarray.scalar,
        "numpy._core.multiarray.scalar": multiarray.scalar,
        "numpy.ndarray": np.ndarray,
        "numpy.dtype": np.dtype,
        "_codecs.encode": _latin1_encode,
    }


class RefusedGlobal(CorruptDatasetError):
    """A CIFAR batch that names a callable outside numpy's array reconstruction."""


class CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR python batch and nothing else: any global outside numpy's array rebuild is refused.

    The batches are pickles, and a pickle may name any callable to run. These files hold dicts,
    lists, strings, bytes, numbers and numpy arrays, so only the names numpy's arrays are rebuilt
    with are looked up; a file naming ``os.system`` (say) fails before anything is called.
    """

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path
        self.allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get(f"{module}.{name}")
        if found is None:
            raise RefusedGlobal(
                f"{self.path}: refuses to load {module}.{name}: a CIFAR batch holds only numpy arrays, lists, "
                "dicts, bytes, numbers and strings; this file is not one (delete it and fetch the data again)"
            )
        return found


def read_cifar_pickle(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 3, 32, 32]`` uint8 and labels ``[N]`` int64 from one CIFAR pickle file (restricted unpickling)."""
    try:
        with open(path, "rb") as f:
            entry = CifarUnpickler(f, path).load()
    except RefusedGlobal:
        raise
    except Exception as exc:  # a truncated or garbled pickle fails in many ways; all mean "corrupt"
        raise CorruptDatasetError(
            f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc}); delete it and fetch the data again"
        ) from exc
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise CorruptDatasetError(f"{path}: expected a dict with 'data' and {label_key!r}, found {keys}")
    data, labels = entry["data"], np.asarray(entry[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        raise CorruptDatasetError(f"{path}: 'data' must be a uint8 array of shape [N, 3072], got {shape}")
    if labels.shape != (data.shape[0],):
        raise CorruptDatasetError(f"{path}: {data.shape[0]} images but {label_key!r} has shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CorruptDatasetError(
            f"{path}: labels must lie in [0, {num_classes}), found [{labels.min()}, {labels.max()}]"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


class Cifar10(TensorDataModule):
    """CIFAR-10 under ``root/cifar-10-batches-py`` (``root`` itself may be that folder)."""

    name = "cifar10"
    title = "CIFAR-10"
    folder = "cifar-10-batches-py"
    train_files: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files: tuple[str, ...] = ("test_batch",)
    label_key = "labels"
    classes = 10
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    MEAN = (0.4914, 0.4822, 0.4465)
    STD = (0.2470, 0.2435, 0.2616)

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        train_size: int = 45000,
        val_size: int = 5000,
        test_size: int = 10000,
        augment: bool = True,
        crop_padding: int = 4,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        train_subset: int | None = None,
        eval_subset: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        loader: str = "auto",
    ) -> None:
        check_sizes(train_size=train_size, val_size=val_size, test_size=test_size)
        base = Path(root).expanduser()
        files = (*self.train_files, *self.test_files)
        folder = locate(
            name=self.title,
            candidates=[base / self.folder, base],
            complete=lambda d: all((d / f).is_file() for f in files),
            expected_files=", ".join(files),
            download=download,
            downloader=lambda: self._download(base),
            url=self.url,
            download_root=base,
        )
        train_x, train_y = self._read(folder, self.train_files)
        test_x, test_y = self._read(folder, self.test_files)
        names = "+".join(self.train_files)
        check_count(len(train_y), train_size + val_size, names, folder, "dataset.train_size + dataset.val_size")
        check_count(len(test_y), test_size, "+".join(self.test_files), folder, "dataset.test_size")
        x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
        super().__init__(
            train=Split(x[:train_size], y[:train_size]),
            val=Split(x[train_size:], y[train_size:]),
            test=Split(torch.from_numpy(test_x), torch.from_numpy(test_y)),
            num_classes=self.classes,
            mean=self.MEAN if mean is None else mean,
            std=self.STD if std is None else std,
            augment=augment,
            crop_padding=crop_padding,
            num_workers=num_workers,
            pin_memory=pin_memory,
            loader=loader,
            train_subset=train_subset,
            eval_subset=eval_subset,
        )

    def _read(self, folder: Path, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [read_cifar_pickle(folder / n, self.label_key, self.classes) for n in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    @staticmethod
    def _download(root: Path) -> None:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)


class Cifar100(Cifar10):
    """CIFAR-100 (the 100 fine labels) under ``root/cifar-100-python``."""

    name = "cifar100"
    title = "CIFAR-100"
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"
    classes = 100
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    MEAN = (0.5071, 0.4866, 0.4409)
    STD = (0.2673, 0.2564, 0.2762)

    @staticmethod
    def _download(root: Path) -> None:
        from torchvision.datasets import CIFAR100

        CIFAR100(str(root), train=True, download=True)
