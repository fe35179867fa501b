"""The model zoo. Every factory takes ``num_classes``, ``in_channels`` and ``image_size``."""

from rsst.models.prunable import prunable_weights, stem_module_name

__all__ = ["prunable_weights", "stem_module_name"]
