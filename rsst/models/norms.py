"""Which BatchNorm normalises which conv's output: the pairs RSST's ``penalty_scope=channels`` penalises together.

Found by running the network once on a zero input in eval mode with forward hooks: a BatchNorm
follows a conv when the tensor it receives is the very tensor that conv returned. That holds
for ``bn(conv(x))`` in any model (CIFAR and torchvision ResNets, VGG, MobileNet, a DenseNet's
bottleneck ``conv1 -> norm2``), and for no conv whose output is first added, concatenated or
activated (a DenseNet's ``conv2`` and transition convs feed a concatenation; Conv-2/4/6 and
LeNet have no BatchNorm at all). No buffer changes: eval mode, no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def following_norms(model: nn.Module, input_shape: Sequence[int]) -> dict[str, str]:
    """``{conv module name: name of the BatchNorm that normalises its output}``, for the convs that have one."""
    produced: dict[int, tuple[str, Tensor]] = {}  # id(output) -> (conv name, the output, kept alive)
    pairs: dict[str, str] = {}
    hooks = []

    def conv_hook(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            produced[id(output)] = (name, output)

        return hook

    def norm_hook(name: str):
        def hook(_module: nn.Module, inputs: tuple) -> None:
            found = produced.get(id(inputs[0])) if inputs else None
            if found is not None and found[1] is inputs[0]:
                pairs.setdefault(found[0], name)

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(conv_hook(name)))
        elif isinstance(module, _BatchNorm):
            hooks.append(module.register_forward_pre_hook(norm_hook(name)))
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(*input_shape, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return pairs
