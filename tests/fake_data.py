"""Miniature data sets written in the REAL on-disk formats: CIFAR pickles, a tiny-imagenet-200 tree, idx files."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_cifar(root: Path, kind: str = "cifar10", per_file: int = 20, test: int = 30, seed: int = 0) -> dict:
    """Write ``root/cifar-10-batches-py`` (5 batches of ``per_file``) or ``root/cifar-100-python``.

    Returns the arrays written: ``train_x`` ``[N, 3, 32, 32]`` uint8, ``train_y``, ``test_x``, ``test_y``
    (for CIFAR-100 ``*_y`` are the fine labels; the coarse ones are written too, and differ).
    """
    rng = np.random.default_rng(seed)
    classes = 10 if kind == "cifar10" else 100

    def batch(n: int, label: str) -> dict:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, n).tolist()
        entry = {"batch_label": label, "data": data, "filenames": [f"img_{i}.png" for i in range(n)]}
        if kind == "cifar10":
            entry["labels"] = labels
        else:
            entry["fine_labels"] = labels
            entry["coarse_labels"] = [(v + 1) % 20 for v in labels]
        return entry

    if kind == "cifar10":
        folder, train_names, test_name = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "test_batch",
        )
    else:
        folder, train_names, test_name = root / "cifar-100-python", ["train"], "test"
    folder.mkdir(parents=True, exist_ok=True)
    per = per_file if kind == "cifar10" else 5 * per_file
    train = [batch(per, name) for name in train_names]
    test_entry = batch(test, test_name)
    for name, entry in [*zip(train_names, train, strict=True), (test_name, test_entry)]:
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    key = "labels" if kind == "cifar10" else "fine_labels"
    return {
        "folder": folder,
        "train_x": np.concatenate([e["data"] for e in train]).reshape(-1, 3, 32, 32),
        "train_y": np.concatenate([e[key] for e in train]),
        "test_x": test_entry["data"].reshape(-1, 3, 32, 32),
        "test_y": np.asarray(test_entry[key]),
    }


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    """An idx file of unsigned bytes (gzipped when ``path`` ends in .gz)."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    blob = struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)
    return path


def write_fashion_mnist(folder: Path, train: int = 30, test: int = 10, gz: bool = True, seed: int = 0) -> dict:
    """The four Fashion-MNIST idx files in ``folder``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), array)
    return arrays


def tiny_colour(label: int, index: int) -> tuple[int, int, int]:
    """The flat colour of image ``index`` of class ``label`` in the fake tree (JPEG keeps flat colours)."""
    return (40 * label + 20, 10 * index + 5, 200 - 30 * label)


def write_tiny_imagenet(root: Path, classes: int = 3, per_class: int = 12, val: int = 5) -> dict:
    """A miniature ``root/tiny-imagenet-200``: real JPEGs, wnids.txt, val/val_annotations.txt.

    wnids.txt lists the classes unsorted (as the real file does); the first val image is greyscale.
    Returns the sorted wnids, the train pool's labels and colours in ``ImageFolder`` order, and the
    val images' labels and colours in annotation order.
    """
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    wnids = [f"n{9 - c:08d}" for c in range(classes)]  # descending: sorted order differs from file order
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    ordered = sorted(wnids)
    pool_labels, pool_colours = [], []
    for label, wnid in enumerate(ordered):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(per_class):
            Image.new("RGB", (64, 64), tiny_colour(label, i)).save(images / f"{wnid}_{i}.JPEG", quality=95)
        # ImageFolder order: file names sorted as strings
        for name in sorted(f"{wnid}_{i}.JPEG" for i in range(per_class)):
            i = int(name.split("_")[1].split(".")[0])
            pool_labels.append(label)
            pool_colours.append(tiny_colour(label, i))
    lines, val_labels, val_colours = [], [], []
    for j in range(val):
        label = j % classes
        colour = tiny_colour(label, j)
        if j == 0:
            grey = int(round(0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]))
            Image.new("L", (64, 64), grey).save(folder / "val" / "images" / f"val_{j}.JPEG", quality=95)
            colour = (grey, grey, grey)
        else:
            Image.new("RGB", (64, 64), colour).save(folder / "val" / "images" / f"val_{j}.JPEG", quality=95)
        lines.append(f"val_{j}.JPEG\t{ordered[label]}\t0\t0\t63\t63")
        val_labels.append(label)
        val_colours.append(colour)
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return {
        "folder": folder,
        "wnids": ordered,
        "pool_labels": np.asarray(pool_labels),
        "pool_colours": np.asarray(pool_colours),
        "val_labels": np.asarray(val_labels),
        "val_colours": np.asarray(val_colours),
    }


def write_imagenet_folders(root: Path, classes: int = 3, train_per_class: int = 6, val_per_class: int = 2) -> dict:
    """A miniature ILSVRC-2012 tree in ``root``: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (real JPEGs).

    Each image is a flat colour of its class (``tiny_colour``), 40x30 (landscape) so that the
    resize and crop have work to do. Returns the sorted wnids and the image counts per split.
    """
    from PIL import Image

    wnids = [f"n{1440764 + 1000 * c:08d}" for c in range(classes)]
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label, wnid in enumerate(wnids):
            (root / split / wnid).mkdir(parents=True)
            for i in range(per_class):
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{label * 100 + i:08d}.JPEG"
                Image.new("RGB", (40, 30), tiny_colour(label, i)).save(root / split / wnid / name, quality=95)
    return {"wnids": wnids, "train": classes * train_per_class, "val": classes * val_per_class}
