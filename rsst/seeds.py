"""Derived seeds: one 32-bit seed per (run seed, round, epoch, purpose).

PyTorch's CPU generator keeps only the low 32 bits of a seed: ``manual_seed(s)`` and
``manual_seed(s + 2**32)`` draw the same numbers. A seed built as ``(seed << 32) + ...`` would
therefore give every run seed the same data order. Derived seeds are hashed into 32 bits instead.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: int | str) -> int:
    """A seed in ``[0, 2**32)`` that depends on every part (a hash: distinct parts, distinct streams)."""
    text = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "little")
