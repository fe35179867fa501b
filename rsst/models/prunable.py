"""The prunable set, defined in one place: every Conv2d weight except the stem, Linear weights if asked."""

from __future__ import annotations

from torch import nn


def stem_module_name(model: nn.Module) -> str:
    """Name of the model's stem conv; every model in the zoo declares ``stem_name``."""
    name = getattr(model, "stem_name", None)
    if name is None:
        raise ValueError(f"{type(model).__name__} does not declare `stem_name`; every zoo model must name its stem")
    return name


def prunable_weights(model: nn.Module, include_stem: bool = False, include_fc: bool = False) -> dict[str, nn.Parameter]:
    """``{parameter name: weight}`` for the layers pruning acts on, in module order."""
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
        raise ValueError(f"{type(model).__name__} has no prunable weights (include_stem={include_stem})")
    return out
