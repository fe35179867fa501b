"""Data sets. Each module builds a data module exposing shapes, normalisation and seeded batches."""

from rsst.data.base import Split, TensorDataModule

__all__ = ["Split", "TensorDataModule"]
