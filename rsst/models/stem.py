"""The input stem choice of ImageNet-family networks: ``cifar`` (3x3 conv, stride 1, no max-pool) or ``imagenet``."""

from __future__ import annotations

STEMS = ("auto", "cifar", "imagenet")


def resolve_stem(stem: str, image_size: int) -> str:
    """``auto`` is the ImageNet stem (7x7 conv, stride 2, 3x3 max-pool) from 64 pixels up, the CIFAR stem below."""
    if stem not in STEMS:
        raise ValueError(f"arch.stem={stem!r}: expected one of {', '.join(STEMS)}")
    if stem == "auto":
        return "imagenet" if image_size >= 64 else "cifar"
    return stem
