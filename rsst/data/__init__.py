"""Data sets. Each module builds a data module exposing shapes, normalisation and seeded batches."""

from rsst.data.base import Split, TensorDataModule
from rsst.data.files import CorruptDatasetError, DatasetError, DatasetNotFoundError

__all__ = ["CorruptDatasetError", "DatasetError", "DatasetNotFoundError", "Split", "TensorDataModule"]
