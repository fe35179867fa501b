"""ImageNet (ILSVRC-2012) read from its JPEG files, decoded and augmented in DataLoader workers.

Layouts: ``root`` (or ``root/imagenet``) holds ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``
(the validation images already sorted into class folders, as torchvision's ``ImageNet`` leaves
them, ``meta.bin`` next to them or not), or torchvision's archives ``ILSVRC2012_devkit_t12.tar.gz``
(or its ``meta.bin``), ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar``: those are
checked (md5) and extracted once with torchvision's own helpers, under a file lock, into
``train/`` and ``val/``, every member through :mod:`rsst.data.archives` (no ``..``, absolute
paths or links). ``meta.bin`` is read through :func:`rsst.folder.safeload.load_tensors` only (it
holds dicts, lists and strings), and its wnids must be WordNet ids; nothing is unpickled.
ImageNet is never downloaded: it is licensed and must be fetched by hand from image-net.org.

Classes are the sorted wnid folders of ``train/`` (torchvision's ``ImageFolder`` order), and the
images of a class its files in sorted order. Splits: ``val_size`` images held out of ``train/`` by
``numpy.random.RandomState(split_seed).permutation`` (as Tiny-ImageNet's split) are the validation
split the best epoch is chosen on; the rest train; the official validation images are the test
split, in a fixed shuffled order so that ``eval_subset`` keeps a sample of every class.

Training images get torchvision's ``RandomResizedCrop(image_size)`` (scale 0.08-1, ratio 3/4-4/3,
bilinear) and ``RandomHorizontalFlip()``; evaluation images ``Resize(resize_size)`` and
``CenterCrop(image_size)``. Batches come from workers as uint8 and are scaled and normalised
with the ImageNet mean/std on the training device.

Reproducibility: an epoch's order is ``torch.randperm`` under a ``torch.Generator`` seeded with the
epoch's seed, and the crop and flip of image ``i`` of the split come from
``random.Random((seed << 32) + i)``: batch ``b`` is a pure function of ``(seed, b)``, so the batches
are the same for any ``num_workers`` (worker seeds play no part), a resumed epoch replays exactly,
and an image's augmentation does not depend on the batch size or on how the order is cut into
batches or shards. What is not covered: decoding and resizing are Pillow's, so another Pillow build (or
Pillow-SIMD) may differ in the last bits of some pixels.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import functional as F  # imported here, so that forked workers inherit it

from rsst.config import schema
from rsst.data.archives import UnsafeArchiveError, filtered_tar_extraction
from rsst.data.base import SPLITS, batch_loader, normalise
from rsst.data.files import CorruptDatasetError, DatasetNotFoundError, check_count
from rsst.data.options import data_options
from rsst.folder.safeload import load_tensors
from rsst.parallel.dist import Shard, batch_windows

log = logging.getLogger(__name__)

FOLDER = "imagenet"
URL = "https://image-net.org"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
META_FILE = "meta.bin"
META_MAX_BYTES = 16 << 20  # torchvision's meta.bin is about 2 MB: a class table and 50,000 wnids
WNID = re.compile(r"n\d{8}")
LOCK_FILE = ".imagenet-extract.lock"
EXPECTED_FILES = (
    "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (validation images in class folders), or torchvision's "
    f"ImageNet archives {DEVKIT} (or its {META_FILE}), {TRAIN_TAR} and {VAL_TAR}"
)
# torchvision's ImageFolder extensions: the files ImageFolder would list
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SCALE = (0.08, 1.0)  # RandomResizedCrop's defaults: area fraction and aspect ratio
RATIO = (3.0 / 4.0, 4.0 / 3.0)


# -- finding and preparing the files ----------------------------------------------------------------


def _has_folders(d: Path) -> bool:
    return (d / "train").is_dir() and (d / "val").is_dir()


def _has_archives(d: Path) -> bool:
    train = (d / "train").is_dir() or (d / TRAIN_TAR).is_file()
    val = (d / "val").is_dir() or ((d / VAL_TAR).is_file() and ((d / META_FILE).is_file() or (d / DEVKIT).is_file()))
    return train and val


def locate_imagenet(base: Path) -> Path:
    """The folder holding ImageNet under ``base``, its archives extracted first when only they are there."""
    candidates = [base / FOLDER, base]
    found = next((c for c in candidates if _has_folders(c)), None)
    if found is not None:
        return found
    found = next((c for c in candidates if _has_archives(c)), None)
    if found is not None:
        prepare_archives(found)
        return found
    where = " or ".join(str(c) for c in candidates)
    raise DatasetNotFoundError(
        f"ImageNet not found: expected {where} to hold {EXPECTED_FILES}. ImageNet is not downloaded "
        f"automatically: get ILSVRC-2012 from {URL} (registration required) and put it in {base}, "
        "or point dataset.root at it."
    )


def read_meta(path: Path) -> tuple[dict[str, Any], list[str]]:
    """torchvision's ``meta.bin``, ``(wnid_to_classes, val_wnids)``, loaded with ``weights_only=True`` only."""
    try:
        content = load_tensors(path, max_bytes=META_MAX_BYTES)
    except FileNotFoundError:
        raise
    except Exception as exc:  # a refused global, a truncated file, not a torch file: all mean unusable
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CorruptDatasetError(
            f"{path}: not a torchvision ImageNet meta file loadable with weights_only=True "
            f"({type(exc).__name__}: {first}); delete it to rebuild it from {DEVKIT}"
        ) from exc
    ok = (
        isinstance(content, (tuple, list))
        and len(content) == 2
        and isinstance(content[0], dict)
        and isinstance(content[1], list)
        and all(isinstance(w, str) for w in content[1])
    )
    if not ok:
        raise CorruptDatasetError(f"{path}: expected (wnid_to_classes dict, list of validation wnids)")
    # the validation wnids become folder names: each must be a WordNet id (n and 8 digits), never a path
    odd = next((w for w in [*content[0], *content[1]] if not isinstance(w, str) or not WNID.fullmatch(w)), None)
    if odd is not None:
        raise CorruptDatasetError(f"{path}: {odd!r} is not a WordNet id (expected n and 8 digits, e.g. n01440764)")
    return content[0], content[1]


@contextlib.contextmanager
def _extraction_lock(folder: Path) -> Iterator[None]:
    """One process extracts at a time (the ranks of a multi-process run start together); the others wait."""
    with open(folder / LOCK_FILE, "a") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def _extract_into(folder: Path, name: str, extract: Callable[[str], None]) -> None:
    """Run ``extract(partial_folder_name)`` and move the result to ``folder/name`` only once it is complete."""
    partial = f"{name}.partial"
    shutil.rmtree(folder / partial, ignore_errors=True)  # a previous extraction that was cut short
    log.info("extracting ImageNet %s into %s (once)", name, folder / name)
    extract(partial)
    os.replace(folder / partial, folder / name)


def prepare_archives(folder: Path) -> None:
    """Extract torchvision's ImageNet archives in ``folder`` into ``train/`` and ``val/<wnid>/``.

    torchvision's helpers check each archive's md5 and do the extraction; the validation wnids
    come from ``meta.bin`` (built from the devkit first when missing), read by :func:`read_meta`.
    """
    from torchvision.datasets import imagenet as tv

    stage = DEVKIT
    try:
        with _extraction_lock(folder), filtered_tar_extraction():  # torchvision's extractall gets our filter
            if not (folder / "val").is_dir():
                if not (folder / META_FILE).is_file():
                    tv.parse_devkit_archive(str(folder))
                wnids = read_meta(folder / META_FILE)[1]
                stage = VAL_TAR
                _extract_into(folder, "val", lambda part: tv.parse_val_archive(str(folder), wnids=wnids, folder=part))
            if not (folder / "train").is_dir():
                stage = TRAIN_TAR
                _extract_into(folder, "train", lambda part: tv.parse_train_archive(str(folder), folder=part))
    except UnsafeArchiveError as exc:
        raise UnsafeArchiveError(f"{folder / stage}: {exc} (nothing outside {folder} was written)") from None
    except RuntimeError as exc:  # torchvision: an archive is missing or fails its md5 check
        raise CorruptDatasetError(f"{folder}: {exc}") from exc
    except OSError as exc:
        raise CorruptDatasetError(f"{folder}: extracting the ImageNet archives failed ({exc})") from exc


def find_classes(folder: Path) -> list[str]:
    """The wnid folders of ``folder/train`` in sorted order (``ImageFolder``'s class index order)."""
    wnids = sorted(e.name for e in os.scandir(folder / "train") if e.is_dir())
    if not wnids:
        raise CorruptDatasetError(f"{folder / 'train'}: holds no class folders, expected train/<wnid>/*.JPEG")
    val = sorted(e.name for e in os.scandir(folder / "val") if e.is_dir())
    if val != wnids:
        if not val:
            raise CorruptDatasetError(
                f"{folder / 'val'}: holds no class folders, expected val/<wnid>/*.JPEG; sort the validation images "
                f"into class folders (torchvision does it: put {DEVKIT} and {VAL_TAR} in {folder} and remove val/)"
            )
        extra, missing = sorted(set(val) - set(wnids)), sorted(set(wnids) - set(val))
        raise CorruptDatasetError(
            f"{folder}: val/ and train/ must hold the same class folders; val/ has {len(val)}, train/ has "
            f"{len(wnids)} (only in val/: {extra[:3]}, only in train/: {missing[:3]})"
        )
    return wnids


def scan(folder: Path, split: str, wnids: Sequence[str]) -> tuple[np.ndarray, Tensor]:
    """Every image of ``folder/split/<wnid>/``: paths relative to ``folder`` (bytes) and class indices."""

    def images(wnid: str) -> list[str]:
        names = sorted(
            e.name for e in os.scandir(folder / split / wnid) if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)
        )
        if not names:
            raise CorruptDatasetError(f"{folder / split / wnid}: holds no images, expected *.JPEG")
        return names

    with ThreadPoolExecutor(max_workers=16) as pool:  # listing 1000 folders is I/O bound (network file systems)
        per_class = list(pool.map(images, wnids))
    files = np.array([f"{split}/{w}/{n}".encode() for w, names in zip(wnids, per_class, strict=True) for n in names])
    labels = torch.tensor([c for c, names in enumerate(per_class) for _ in names], dtype=torch.int64)
    return files, labels


# -- one image --------------------------------------------------------------------------------------


def load_rgb(path: Path) -> Any:
    """The image at ``path`` as an RGB ``PIL.Image`` (grey and CMYK JPEGs are converted)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise CorruptDatasetError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc


def crop_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop: torchvision's ``RandomResizedCrop.get_params`` drawn from ``rng``."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    ratio = width / height  # fallback: the whole image, its aspect ratio clamped into RATIO
    if ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif ratio > RATIO[1]:
        h, w = height, int(round(height * RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_view(img: Any, size: int, rng: random.Random) -> Tensor:
    """``RandomResizedCrop(size)`` then ``RandomHorizontalFlip()``, drawn from ``rng``; uint8 ``[3, size, size]``."""
    top, left, h, w = crop_box(img.width, img.height, rng)
    out = F.resized_crop(img, top, left, h, w, [size, size], antialias=True)
    if rng.random() < 0.5:
        out = F.hflip(out)
    return F.pil_to_tensor(out)


def eval_view(img: Any, size: int, resize: int) -> Tensor:
    """``Resize(resize)`` (shorter side) then ``CenterCrop(size)``; uint8 ``[3, size, size]``."""
    return F.pil_to_tensor(F.center_crop(F.resize(img, resize, antialias=True), [size, size]))


# -- the data module --------------------------------------------------------------------------------


@dataclass
class FileSplit:
    folder: Path
    files: np.ndarray  # paths relative to folder, as bytes
    labels: Tensor  # int64 class indices

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, order: Sequence[int] | np.ndarray) -> FileSplit:
        index = np.asarray(order, dtype=np.int64)
        return FileSplit(self.folder, self.files[index], self.labels[torch.from_numpy(index)])


class ImageNetEpoch(Dataset):
    """Batch ``b`` of one pass over a split: decode, crop/flip (train) or resize/centre-crop, as uint8.

    A batch is a pure function of its index: the order was drawn when the epoch was planned, and
    each image's augmentation is drawn from a generator seeded by the epoch's seed and the image's index.
    """

    def __init__(
        self,
        split: FileSplit,
        order: Tensor,
        windows: list[slice],
        seed: int | None,
        augment: bool,
        size: int,
        resize: int,
    ) -> None:
        self.split, self.order, self.windows = split, order, windows
        self.seed, self.augment, self.size, self.resize = seed, augment, size, resize

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, b: int) -> tuple[Tensor, Tensor]:
        if not 0 <= b < len(self):
            raise IndexError(b)
        idx = self.order[self.windows[b]]
        images = []
        for i in idx.tolist():
            img = load_rgb(self.split.folder / self.split.files[i].decode())
            if self.augment:
                images.append(train_view(img, self.size, random.Random((self.seed << 32) + i)))
            else:
                images.append(eval_view(img, self.size, self.resize))
        if not images:  # an empty shard of the last batch
            return torch.empty(0, 3, self.size, self.size, dtype=torch.uint8), self.split.labels[idx]
        return torch.stack(images), self.split.labels[idx]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return (self[b] for b in range(len(self)))


class ImageNet:
    """ILSVRC-2012 under ``root`` or ``root/imagenet``; batches are decoded by DataLoader workers.

    The interface of :class:`rsst.data.base.TensorDataModule` that a run uses: ``num_classes``,
    ``in_channels``, ``image_size``, ``mean``, ``std``, :meth:`size`, :meth:`num_batches`,
    :meth:`resolve_loader` and :meth:`batches`, with the same seeded, reproducible order.
    """

    name = "imagenet"
    options = schema.ImageNet  # its keys, types and rules (conf/dataset/<name>.yaml holds the values)

    def __init__(self, **given: Any) -> None:
        """The keys of ``conf/dataset/imagenet.yaml``; those not given take that file's values."""
        o = data_options(self, given)
        if o.loader == "device":
            raise ValueError(
                "dataset.loader='device': ImageNet is decoded from its JPEG files by DataLoader workers and "
                "does not fit on a device; use dataset.loader=auto or dataloader"
            )
        if o.resize_size < o.image_size:
            raise ValueError(f"dataset.resize_size={o.resize_size!r}: expected an integer >= image_size={o.image_size}")
        mean, std = tuple(float(m) for m in o.mean), tuple(float(s) for s in o.std)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"dataset.mean/std: expected 3 values each, got {list(mean)} / {list(std)}")
        train_size, val_size, test_size = o.train_size, o.val_size, o.test_size
        train_subset, eval_subset, split_seed = o.train_subset, o.eval_subset, o.split_seed
        folder = locate_imagenet(Path(o.root).expanduser())
        self.folder = folder
        self.classes = find_classes(folder)
        log.info("listing ImageNet images under %s", folder)
        pool_files, pool_labels = scan(folder, "train", self.classes)
        test_files, test_labels = scan(folder, "val", self.classes)
        keys = "dataset.train_size + dataset.val_size"
        check_count(len(pool_files), train_size + val_size, "train/<wnid>/", folder, keys)
        check_count(len(test_files), test_size, "val/<wnid>/", folder, "dataset.test_size")
        pool = FileSplit(folder, pool_files, pool_labels)
        test = FileSplit(folder, test_files, test_labels)
        perm = np.random.RandomState(split_seed).permutation(len(pool))
        test_order = np.random.RandomState(split_seed).permutation(len(test))
        self.splits = {
            "train": pool.take(perm[:train_size][:train_subset]),
            "val": pool.take(perm[train_size:][:eval_subset]),
            "test": test.take(test_order[:eval_subset]),
        }
        self.num_classes = len(self.classes)
        self.in_channels = 3
        self.image_size = int(o.image_size)
        self.resize_size = int(o.resize_size)
        self.mean, self.std = mean, std
        self.augment = bool(o.augment)
        self.loader_choice = o.loader
        self.num_workers = o.num_workers
        self.pin_memory = bool(o.pin_memory)

    def resolve_loader(self, device: torch.device | str) -> str:
        """Always ``dataloader``: the images are decoded from files, never held on a device."""
        return "dataloader"

    def size(self, split: str) -> int:
        return len(self.splits[_check_split(split)])

    def num_batches(self, split: str, batch_size: int) -> int:
        return -(-self.size(split) // batch_size)

    def normalise(self, x: Tensor) -> Tensor:
        """Scale uint8 ``x`` to float and normalise it with the ImageNet mean/std."""
        return normalise(x, self.mean, self.std)

    def epoch(
        self, split: str, batch_size: int, seed: int | None = None, shard: Shard | None = None, start: int = 0
    ) -> ImageNetEpoch:
        """The batches of one pass over ``split`` as a map-style data set (item ``b`` is batch ``b``, uint8).

        ``shard=(rank, world_size)`` keeps this process's part of every batch
        (:func:`rsst.parallel.dist.batch_windows`); an image's augmentation does not depend on it.
        ``start``: the pass begins at that batch (the earlier ones are not decoded).
        """
        data = self.splits[_check_split(split)]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected an integer >= 1")
        if seed is None:
            order = torch.arange(len(data))
        else:
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        augment = self.augment and split == "train" and seed is not None
        windows = batch_windows(len(data), batch_size, shard, evaluation=seed is None)[start:]
        return ImageNetEpoch(data, order, windows, seed, augment, self.image_size, self.resize_size)

    def loader(
        self, split: str, batch_size: int, seed: int | None = None, shard: Shard | None = None, start: int = 0
    ) -> DataLoader:
        """A DataLoader over :meth:`epoch` with ``num_workers`` workers, each decoding whole batches."""
        return batch_loader(self.epoch(split, batch_size, seed, shard, start), self.num_workers, self.pin_memory)

    def batches(
        self,
        split: str,
        batch_size: int,
        device: torch.device | str = "cpu",
        seed: int | None = None,
        shard: Shard | None = None,
        start: int = 0,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalised batches of ``split`` on ``device``; shuffled (and augmented, for train) when ``seed`` is given.

        ``shard=(rank, world_size)``: only this process's part of each batch (:meth:`epoch`); ``start``: from
        that batch of the pass on. Batches cross to the device as uint8 (a quarter of float32's bytes) and are
        normalised there.
        """
        device = torch.device(device)
        non_blocking = self.pin_memory and device.type == "cuda"
        for x, y in self.loader(split, batch_size, seed, shard, start):
            yield self.normalise(x.to(device, non_blocking=non_blocking)), y.to(device, non_blocking=non_blocking)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split
