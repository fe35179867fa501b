"""The prunable set, defined in one place: every Conv2d weight except the stem, Linear weights if asked.

The stem rule concerns convs: ``include_stem`` decides about the first conv only.
``Linear`` layers are prunable exactly when ``include_fc`` is set, all of them, the
classifier included. A model with no conv (an MLP such as ``lenet_300_100``) names its
input layer as ``stem_name`` for re-initialisation, but with ``include_fc=true`` every
one of its layers is pruned, the input layer too (as the lottery-ticket paper pruned
LeNet-300-100); with ``include_fc=false`` it has nothing to prune, which is a
:class:`~rsst.config.ConfigError`, raised before any training.
"""

from __future__ import annotations

from torch import nn

from rsst.errors import ConfigError


def stem_module_name(model: nn.Module) -> str:
    """Name of the model's stem (its first conv, or an MLP's input layer); every zoo model declares ``stem_name``."""
    name = getattr(model, "stem_name", None)
    if name is None:
        raise ValueError(f"{type(model).__name__} does not declare `stem_name`; every zoo model must name its stem")
    return name


def prunable_weights(model: nn.Module, include_stem: bool = False, include_fc: bool = False) -> dict[str, nn.Parameter]:
    """``{parameter name: weight}`` for the layers pruning acts on, in module order.

    Raises :class:`~rsst.config.ConfigError` when nothing is prunable: an MLP without
    ``include_fc``, or a single-conv network without ``include_stem``.
    """
    stem = stem_module_name(model)
    out: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if name == stem and not include_stem:
                continue
        elif not (isinstance(module, nn.Linear) and include_fc):
            continue
        out[f"{name}.weight"] = module.weight
    if not out:
        arch = getattr(model, "arch_name", type(model).__name__)
        if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
            raise ConfigError(f"arch={arch} has no prunable conv weights: set prune.include_fc=true")
        raise ConfigError(
            f"arch={arch} has no prunable weights with prune.include_stem={include_stem} and "
            f"prune.include_fc={include_fc}: set prune.include_fc=true or prune.include_stem=true"
        )
    return out
