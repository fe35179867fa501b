"""Tiny-ImageNet-200 from the standard ``tiny-imagenet-200`` folder: 64x64 colour images, 200 classes.

The 100,000 training images are split 90,000 train / 10,000 val as the original tool
did: class folders in sorted order and images in sorted order within each (torchvision's
``ImageFolder`` order), then ``numpy.random.seed(10); numpy.random.permutation(100000)``,
whose first 90,000 indices are train and the rest val. The official validation
folder (``val/images`` labelled by ``val/val_annotations.txt``) is the test split.
Train images are augmented with a random 64x64 crop of the image padded by 4 and a
horizontal flip, as in the original. JPEGs are decoded once, in threads, into uint8
``[N, 3, 64, 64]`` tensors (about 1.2 GB for train).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsst.config import schema
from rsst.data.archives import extract
from rsst.data.base import Split, TensorDataModule
from rsst.data.files import CorruptDatasetError, check_count, locate
from rsst.data.options import Serving, data_options

log = logging.getLogger(__name__)

FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
IMAGE_SIZE = 64
JPEG_SUFFIXES = (".jpeg", ".jpg")
EXPECTED_FILES = "wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt"


def _complete(folder: Path) -> bool:
    return all(
        p.exists()
        for p in (
            folder / "wnids.txt",
            folder / "train",
            folder / "val" / "images",
            folder / "val" / "val_annotations.txt",
        )
    )


def read_wnids(folder: Path, num_classes: int) -> list[str]:
    """The class ids of ``wnids.txt`` in sorted order (the class index order of ``ImageFolder``)."""
    path = folder / "wnids.txt"
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(wnids)) != len(wnids):
        raise CorruptDatasetError(f"{path}: lists some class ids twice")
    if len(wnids) != num_classes:
        raise CorruptDatasetError(f"{path}: lists {len(wnids)} classes, expected dataset.num_classes={num_classes}")
    return sorted(wnids)


def train_pool_files(folder: Path, wnids: Sequence[str]) -> tuple[list[Path], list[int]]:
    """Every ``train/<wnid>/images/*.JPEG`` with its class index, classes and files in sorted order."""
    paths, labels = [], []
    for label, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        if not images.is_dir():
            raise CorruptDatasetError(f"{images}: missing, but {folder / 'wnids.txt'} lists class {wnid}")
        found = sorted(p for p in images.iterdir() if p.suffix.lower() in JPEG_SUFFIXES)
        paths += found
        labels += [label] * len(found)
    return paths, labels


def official_val_files(folder: Path, wnids: Sequence[str]) -> tuple[list[Path], list[int]]:
    """The official validation images with their labels from ``val/val_annotations.txt``."""
    path = folder / "val" / "val_annotations.txt"
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise CorruptDatasetError(
                f"{path}, line {number}: expected '<file>\\t<wnid>\\t...' with a wnid from wnids.txt, got {line!r}"
            )
        image = folder / "val" / "images" / fields[0]
        if not image.is_file():
            raise CorruptDatasetError(f"{path}, line {number}: {image} does not exist")
        paths.append(image)
        labels.append(index[fields[1]])
    return paths, labels


def decode(paths: Sequence[Path], threads: int) -> np.ndarray:
    """uint8 ``[N, 3, 64, 64]`` from the JPEGs at ``paths`` (grey images become RGB)."""
    from PIL import Image

    out = np.empty((len(paths), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)

    def load(i: int) -> None:
        try:
            with Image.open(paths[i]) as img:
                pixels = np.asarray(img.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as exc:
            raise CorruptDatasetError(f"{paths[i]}: not a readable image ({type(exc).__name__}: {exc})") from exc
        if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise CorruptDatasetError(
                f"{paths[i]}: image of {pixels.shape[1]}x{pixels.shape[0]} pixels, expected {IMAGE_SIZE}x{IMAGE_SIZE}"
            )
        out[i] = pixels.transpose(2, 0, 1)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(load, range(len(paths))):
            pass
    return out


class TinyImageNet(TensorDataModule):
    """Tiny-ImageNet under ``root/tiny-imagenet-200`` (``root`` itself may be that folder)."""

    name = "tiny_imagenet"
    options = schema.TinyImageNet  # its keys, types and rules (conf/dataset/<name>.yaml holds the values)

    def __init__(self, **given: Any) -> None:
        """The keys of ``conf/dataset/tiny_imagenet.yaml``; those not given take that file's values."""
        o = data_options(self, given)
        base = Path(o.root).expanduser()
        folder = locate(
            name="Tiny-ImageNet",
            candidates=[base / FOLDER, base],
            complete=_complete,
            expected_files=EXPECTED_FILES,
            download=o.download,
            downloader=lambda: _download(base),
            url=URL,
            download_root=base,
        )
        wnids = read_wnids(folder, o.num_classes)
        pool_paths, pool_labels = train_pool_files(folder, wnids)
        keys = "dataset.train_size + dataset.val_size"
        check_count(len(pool_paths), o.train_size + o.val_size, "train/*/images", folder, keys)
        test_paths, test_labels = official_val_files(folder, wnids)
        check_count(len(test_paths), o.test_size, "val/val_annotations.txt", folder, "dataset.test_size")
        perm = np.random.RandomState(o.split_seed).permutation(len(pool_paths))
        threads = min(8, os.cpu_count() or 1)
        log.info("decoding %d Tiny-ImageNet images from %s", len(pool_paths) + len(test_paths), folder)

        def split(paths: Sequence[Path], labels: Sequence[int], order: Sequence[int]) -> Split:
            x = decode([paths[i] for i in order], threads)
            return Split(torch.from_numpy(x), torch.tensor([labels[i] for i in order], dtype=torch.int64))

        n, train_subset, eval_subset = o.train_size, o.train_subset, o.eval_subset
        super().__init__(  # decode only the images the subsets keep
            split(pool_paths, pool_labels, perm[:n][:train_subset]),
            split(pool_paths, pool_labels, perm[n:][:eval_subset]),
            split(test_paths, test_labels, range(len(test_paths))[:eval_subset]),
            o.num_classes,
            o.mean,
            o.std,
            Serving.of(o),
        )


def _download(root: Path) -> None:
    """Fetch the zip (md5-checked by torchvision), then unpack it, every member checked (:mod:`rsst.data.archives`)."""
    from torchvision.datasets.utils import download_url

    download_url(URL, str(root), md5=MD5)
    extract(root / URL.rsplit("/", 1)[-1], root)
