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

from rsst.config import schema
from rsst.data.archives import filtered_tar_extraction
from rsst.data.base import Split, TensorDataModule
from rsst.data.files import CorruptDatasetError, check_count, locate
from rsst.data.options import Serving, data_options

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
    data, raw = entry["data"], entry[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        raise CorruptDatasetError(f"{path}: 'data' must be a uint8 array of shape [N, 3072], got {shape}")
    # the labels are checked before numpy sees them: a small pickle can share one nested list many times
    # over, which np.asarray would expand into gigabytes
    flat = isinstance(raw, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
    if not (flat or (isinstance(raw, np.ndarray) and raw.ndim == 1 and raw.dtype.kind in "iu")):
        found = type(raw).__name__ if not isinstance(raw, list) else "a list holding other things"
        raise CorruptDatasetError(f"{path}: {label_key!r} must be a list of integer labels, found {found}")
    if len(raw) != data.shape[0]:
        raise CorruptDatasetError(f"{path}: {data.shape[0]} images but {label_key!r} holds {len(raw)} labels")
    labels = np.asarray(raw, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CorruptDatasetError(
            f"{path}: labels must lie in [0, {num_classes}), found [{labels.min()}, {labels.max()}]"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


class Cifar10(TensorDataModule):
    """CIFAR-10 under ``root/cifar-10-batches-py`` (``root`` itself may be that folder)."""

    name = "cifar10"
    options = schema.Cifar  # its keys, types and rules (conf/dataset/<name>.yaml holds the values)
    title = "CIFAR-10"
    folder = "cifar-10-batches-py"
    train_files: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files: tuple[str, ...] = ("test_batch",)
    label_key = "labels"
    classes = 10
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

    def __init__(self, **given: Any) -> None:
        """The keys of ``conf/dataset/<name>.yaml``; those not given take that file's values (:func:`data_options`)."""
        o = data_options(self, given)
        base = Path(o.root).expanduser()
        files = (*self.train_files, *self.test_files)
        folder = locate(
            name=self.title,
            candidates=[base / self.folder, base],
            complete=lambda d: all((d / f).is_file() for f in files),
            expected_files=", ".join(files),
            download=o.download,
            downloader=lambda: self._download(base),
            url=self.url,
            download_root=base,
        )
        train_x, train_y = self._read(folder, self.train_files)
        test_x, test_y = self._read(folder, self.test_files)
        names = "+".join(self.train_files)
        keys = "dataset.train_size + dataset.val_size"
        check_count(len(train_y), o.train_size + o.val_size, names, folder, keys)
        check_count(len(test_y), o.test_size, "+".join(self.test_files), folder, "dataset.test_size")
        x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
        n = o.train_size
        super().__init__(
            Split(x[:n], y[:n]),
            Split(x[n:], y[n:]),
            Split(torch.from_numpy(test_x), torch.from_numpy(test_y)),
            self.classes,
            o.mean,
            o.std,
            Serving.of(o),
        )

    def _read(self, folder: Path, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [read_cifar_pickle(folder / n, self.label_key, self.classes) for n in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    @staticmethod
    def _download(root: Path) -> None:
        from torchvision.datasets import CIFAR10

        with filtered_tar_extraction():  # torchvision extracts with no filter of its own
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

    @staticmethod
    def _download(root: Path) -> None:
        from torchvision.datasets import CIFAR100

        with filtered_tar_extraction():
            CIFAR100(str(root), train=True, download=True)
