"""Channel criteria (docs/algorithms.md, section 3) on hand-built nets whose answers are known in closed form."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import CONF, compose_config
from torch import nn

from rsst.config.checks import build
from rsst.models import prunable_weights
from rsst.pruning.criteria import L1, L2, Magnitude, Remain, Saliency
from rsst.pruning.masks import Masks
from rsst.pruning.refill import refill

NAMES = ("conv1.weight", "conv2.weight")


class TwoConv(nn.Module):
    """1x1 conv (1 -> 3), ReLU, 1x1 conv (3 -> 3), BatchNorm, ReLU, global pool, linear (3 -> 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 1, bias=False)
        self.conv2 = nn.Conv2d(3, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            # layer 1: channel c multiplies the input by w1[c]; channel 0 is the strongest
            self.conv1.weight.copy_(torch.tensor([3.0, 1.0, 2.0]).view(3, 1, 1, 1))
            # layer 2: channel 2 sums all inputs (strongest), channel 0 reads only input 1 (weakest)
            self.conv2.weight.copy_(torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]).view(3, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0, 0.5], [-1.0, 2.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a1 = F.relu(self.conv1(x))
        a2 = F.relu(self.bn(self.conv2(a1)))
        return self.fc(a2.mean((2, 3)))


def data(n_batches: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.rand(4, 1, 2, 2, generator=gen) + 0.1, torch.tensor([0, 1, 0, 1])) for _ in range(n_batches)]


def ones(model: nn.Module) -> Masks:
    return Masks({n: torch.ones_like(model.get_parameter(n)) for n in NAMES})


def reference_activations(model: TwoConv, masks: Masks, x: torch.Tensor, y: torch.Tensor):
    """Both conv outputs and dLoss/d(output), by an explicit functional forward in eval mode."""
    w1 = model.conv1.weight.detach() * masks["conv1.weight"]
    w2 = model.conv2.weight.detach() * masks["conv2.weight"]
    a1 = F.conv2d(x, w1).requires_grad_()
    a2 = F.conv2d(F.relu(a1), w2)
    a2.retain_grad()
    bn = model.bn
    h = F.batch_norm(a2, bn.running_mean, bn.running_var, bn.weight.detach(), bn.bias.detach(), False, 0.0, bn.eps)
    loss = F.cross_entropy(F.linear(F.relu(h).mean((2, 3)), model.fc.weight.detach(), model.fc.bias.detach()), y)
    loss.backward()
    return {"conv1.weight": (a1.detach(), a1.grad), "conv2.weight": (a2.detach(), a2.grad)}


def reference_scores(model: TwoConv, masks: Masks, batches, kind: str) -> dict[str, torch.Tensor]:
    out = {n: torch.zeros(3) for n in NAMES}
    for x, y in batches:
        for n, (a, g) in reference_activations(model, masks, x, y).items():
            v = {"l1": a.abs(), "l2": a.square(), "saliency": (a * g).abs()}[kind]
            out[n] += v.sum((0, 2, 3))
    return out


def test_remain_counts_the_surviving_weights_of_each_channel():
    model = TwoConv()
    masks = ones(model)
    masks["conv2.weight"][0] = 0
    masks["conv2.weight"][2, :2] = 0
    s = Remain().scores(model, masks, lambda: iter([]))
    assert s["conv1.weight"].tolist() == [1.0, 1.0, 1.0]
    assert s["conv2.weight"].tolist() == [0.0, 3.0, 1.0]


def test_magnitude_is_the_l1_norm_of_the_masked_trained_filter():
    model = TwoConv()
    with torch.no_grad():
        model.conv2.weight[1] *= 10  # channel 1's filter scaled by 10
    masks = ones(model)
    s = Magnitude().scores(model, masks, lambda: iter([]))
    assert s["conv2.weight"].tolist() == [1.0, 20.0, 3.0]
    assert torch.argmax(s["conv2.weight"]).item() == 1
    masks["conv2.weight"][1, 0] = 0  # a pruned weight counts for nothing
    assert Magnitude().scores(model, masks, lambda: iter([]))["conv2.weight"].tolist() == [1.0, 10.0, 3.0]


def test_l1_scores_each_layer_by_its_own_output():
    model = TwoConv()
    batches = data(2)
    s = L1(batches=2).scores(model, ones(model), lambda: iter(batches))
    total_x = sum(float(x.sum()) for x, _ in batches)
    # layer 1's output channel c is w1[c] * x: its l1 score is |w1[c]| * sum(x)
    torch.testing.assert_close(s["conv1.weight"], torch.tensor([3.0, 1.0, 2.0]) * total_x)
    # layer 2 reads relu(layer 1): channel 0 = 1 * x, channel 1 = (3 + 2) * x, channel 2 = (3 + 1 + 2) * x
    torch.testing.assert_close(s["conv2.weight"], torch.tensor([1.0, 5.0, 6.0]) * total_x)
    assert s["conv1.weight"].argsort().tolist() == [1, 2, 0]
    assert s["conv2.weight"].argsort().tolist() == [0, 1, 2]  # a different ranking: not layer 1's activation


@pytest.mark.parametrize("kind", ["l1", "l2", "saliency"])
def test_activation_criteria_match_a_functional_reference(kind):
    model = TwoConv()
    with torch.no_grad():  # running statistics that are not the identity, so BN matters
        model.bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        model.bn.running_var.copy_(torch.tensor([2.0, 0.5, 4.0]))
    masks = ones(model)
    masks["conv2.weight"][2, 0] = 0
    batches = data(3)
    criterion = {"l1": L1, "l2": L2, "saliency": Saliency}[kind](batches=2)
    s = criterion.scores(model, masks, lambda: iter(batches))
    expected = reference_scores(model, masks, batches[:2], kind)  # only the first `batches` batches count
    for n in NAMES:
        torch.testing.assert_close(s[n], expected[n])


class InplaceReLUNet(nn.Module):
    """1x1 conv (1 -> 3), ``nn.ReLU(inplace=True)``, 1x1 conv (3 -> 3), ``nn.ReLU(inplace=True)``, pool, linear.

    Weights of both signs and inputs in [-1, 1]: many pre-activations are negative, where ``relu(a) != a`` and
    dLoss/da is 0 while dLoss/d relu(a) is not. The in-place ReLU overwrites the conv's own output tensor.
    """

    names = ("body.0.weight", "body.2.weight")

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(inplace=True), nn.Conv2d(3, 3, 1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.body[0].weight.copy_(torch.tensor([1.0, -2.0, 0.5]).view(3, 1, 1, 1))
            self.body[0].bias.copy_(torch.tensor([0.1, 0.2, -0.1]))
            w2 = torch.tensor([[1.0, -1.0, 0.5], [-0.5, 1.0, 1.0], [1.0, 1.0, -2.0]])
            self.body[2].weight.copy_(w2.view(3, 3, 1, 1))
            self.body[2].bias.copy_(torch.tensor([0.0, -0.1, 0.2]))
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0, 0.5], [-1.0, 2.0, -0.5]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


def inplace_reference(model: InplaceReLUNet, masks: Masks, x: torch.Tensor, y: torch.Tensor):
    """Both conv outputs ``a`` (before the ReLU) and dLoss/da, by a functional forward with out-of-place ReLUs."""
    conv1, conv2, fc = model.body[0], model.body[2], model.fc
    w1 = conv1.weight.detach() * masks["body.0.weight"]
    w2 = conv2.weight.detach() * masks["body.2.weight"]
    a1 = F.conv2d(x, w1, conv1.bias.detach()).requires_grad_()
    a2 = F.conv2d(F.relu(a1), w2, conv2.bias.detach())
    a2.retain_grad()
    logits = F.linear(F.relu(a2).mean((2, 3)), fc.weight.detach(), fc.bias.detach())
    F.cross_entropy(logits, y).backward()
    return {"body.0.weight": (a1.detach(), a1.grad), "body.2.weight": (a2.detach(), a2.grad)}


@pytest.mark.parametrize("kind", ["l1", "l2", "saliency"])
def test_activation_criteria_score_the_conv_output_before_an_inplace_relu(kind):
    model = InplaceReLUNet()
    masks = Masks({n: torch.ones_like(model.get_parameter(n)) for n in model.names})
    masks["body.2.weight"][1, 2] = 0
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.rand(4, 1, 3, 3, generator=gen) * 2 - 1, torch.tensor([0, 1, 1, 0])) for _ in range(2)]
    reference = [inplace_reference(model, masks, x, y) for x, y in batches]
    for n in model.names:  # the network has negative pre-activations, and dLoss/da vanishes there
        a = torch.cat([r[n][0] for r in reference])
        g = torch.cat([r[n][1] for r in reference])
        assert 0.2 < float((a < 0).float().mean()) < 0.8
        assert float(g[a < 0].abs().max()) == 0.0 and float(g[a > 0].abs().max()) > 0.01
    expected = {n: torch.zeros(3) for n in model.names}
    for r in reference:
        for n, (a, g) in r.items():
            expected[n] += {"l1": a.abs(), "l2": a.square(), "saliency": (a * g).abs()}[kind].sum((0, 2, 3))
    criterion = {"l1": L1, "l2": L2, "saliency": Saliency}[kind](batches=2)
    s = criterion.scores(model, masks, lambda: iter(batches))
    for n in model.names:
        torch.testing.assert_close(s[n], expected[n])
        assert float(expected[n].min()) > 0


ARCHS = sorted(p.stem for p in (CONF / "arch").glob("*.yaml"))


@pytest.mark.parametrize("arch", ARCHS)
def test_saliency_is_the_gradient_at_each_layers_own_output_in_every_architecture(arch):
    """dLoss/da at every prunable layer's output ``a``, taken independently: the layer's output plus a zero leaf."""
    torch.manual_seed(0)
    model = build(compose_config([f"arch={arch}"]).arch, "arch")(num_classes=3, in_channels=1, image_size=32)
    weights = prunable_weights(model, include_stem=True, include_fc=True)  # every conv and linear
    masks = Masks({n: (torch.rand_like(w) > 0.3).float() for n, w in weights.items()})
    x, y = torch.randn(2, 1, 32, 32), torch.tensor([0, 2])
    s = Saliency(batches=1).scores(model, masks, lambda: iter([(x, y)]))

    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        for n, m in masks.items():
            reference.get_parameter(n).mul_(m)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (a, a zero leaf added to a)

    def probe(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            zero = torch.zeros_like(output, requires_grad=True)
            seen[name] = (output.detach().clone(), zero)
            return output + zero  # whatever follows in place rewrites this sum, never ``output`` or ``zero``

        return hook

    for n in masks:
        reference.get_submodule(n.rpartition(".")[0]).register_forward_hook(probe(n))
    grads = torch.autograd.grad(F.cross_entropy(reference(x), y), [z for _, z in seen.values()])
    assert set(seen) == set(s)
    for (n, (a, _)), g in zip(seen.items(), grads, strict=True):
        dims = [d for d in range(a.dim()) if d != 1]
        torch.testing.assert_close(s[n], (a * g).abs().sum(dims), rtol=1e-5, atol=1e-7, msg=f"{arch}: {n}")


def test_a_silenced_channel_scores_zero_and_is_dropped_by_refill():
    model = TwoConv()
    with torch.no_grad():
        model.conv2.weight[1] = 0  # its activation is forced to zero
    masks = ones(model)
    masks["conv2.weight"][2] = 0
    masks["conv2.weight"][1, 0] = 0  # 5 of 9 weights alive: d*C_out = 5/3, refill keeps 1 channel
    for criterion in (L1(2), L2(2), Saliency(2)):
        s = criterion.scores(model, masks, lambda: iter(data(2)))
        assert s["conv2.weight"][1].item() == 0.0
        assert s["conv2.weight"][2].item() == 0.0  # scored as masked by M: all its weights are pruned
        r = refill({"conv2.weight": masks["conv2.weight"]}, {"conv2.weight": s["conv2.weight"]})
        assert r["conv2.weight"][:, 0, 0, 0].tolist() == [1.0, 0.0, 0.0]


def test_saliency_ignores_a_channel_the_loss_does_not_see():
    model = TwoConv()
    with torch.no_grad():
        model.fc.weight[:, 2] = 0  # conv2's channel 2 has the largest activation but no effect on the loss
    s_l1 = L1(2).scores(model, ones(model), lambda: iter(data(2)))["conv2.weight"]
    s_sal = Saliency(2).scores(model, ones(model), lambda: iter(data(2)))["conv2.weight"]
    assert s_l1.argmax().item() == 2
    assert s_sal[2].item() == 0.0 and s_sal[1].item() > 0


@pytest.mark.parametrize("criterion", [L1(2), L2(2), Saliency(2)], ids=["l1", "l2", "saliency"])
def test_scoring_leaves_the_model_exactly_as_it_was(criterion):
    model = TwoConv().train()
    model.bn.eval()  # a mixed mode must come back as it was, module by module
    masks = ones(model)
    masks["conv1.weight"][0] = 0
    masks["conv2.weight"][:, 1] = 0
    state = {k: v.clone() for k, v in model.state_dict().items()}
    criterion.scores(model, masks, lambda: iter(data(2)))
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state), "weights or BN buffers changed"
    assert model.training and not model.bn.training and model.conv1.training
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


def test_activation_criteria_score_the_network_with_the_mask_applied():
    model = TwoConv()
    masks = ones(model)
    masks["conv1.weight"][0] = 0  # the strongest channel of layer 1, pruned in M_r
    s = L1(2).scores(model, masks, lambda: iter(data(2)))
    total_x = sum(float(x.sum()) for x, _ in data(2))
    torch.testing.assert_close(s["conv1.weight"], torch.tensor([0.0, 1.0, 2.0]) * total_x)
    # and layer 2 sees layer 1 as masked: channel 1 = (0 + 2) * x, channel 2 = (0 + 1 + 2) * x
    torch.testing.assert_close(s["conv2.weight"], torch.tensor([1.0, 2.0, 3.0]) * total_x)
    assert model.conv1.weight[0].item() == 3.0


def test_criteria_reject_a_batch_count_below_one():
    with pytest.raises(ValueError, match=r"criteria.batches=0 is invalid: expected an integer >= 1"):
        L1(batches=0)
