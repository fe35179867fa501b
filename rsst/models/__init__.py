"""The model zoo. Every factory takes ``num_classes``, ``in_channels`` and ``image_size``.

``cifar_resnet`` (resnet20 ... resnet110, option-A shortcuts), ``resnet`` (resnet18, resnet50),
``vgg`` (vgg16_bn), ``mobilenet`` (MobileNet v1) and ``densenet`` (densenet121, densenet161).
Every model names its stem conv (``stem_name``) and classifier (``classifier_name``); the
prunable set is defined once, in :mod:`rsst.models.prunable`.
"""

from rsst.models.prunable import prunable_weights, stem_module_name

__all__ = ["prunable_weights", "stem_module_name"]
