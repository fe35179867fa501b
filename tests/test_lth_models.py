"""The classic lottery-ticket models (Frankle & Carbin 2019, Figure 2) and the per-layer-kind pruning rates they use."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_config
from torch import nn

from rsst.config.checks import ConfigError, build
from rsst.folder.tickets import load_masks
from rsst.models import prunable_weights
from rsst.models.shrink import shrink
from rsst.pruning.masks import Masks
from rsst.pruning.strategies import IMP, PruneContext

LTH = ["lenet_300_100", "conv2", "conv4", "conv6"]
SHAPES = {"28x28x1": (1, 28), "32x32x3": (3, 32), "8x8x1": (1, 8)}


def factory(arch: str):
    return build(compose_config([f"arch={arch}"]).arch, "arch")


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lenet_300_100_has_the_papers_266_610_parameters_on_28x28x1():
    model = factory("lenet_300_100")(num_classes=10, in_channels=1, image_size=28)
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [(784, 300), (300, 100), (100, 10)]
    assert count(model) == 266_610  # 784*300+300 + 300*100+100 + 100*10+10


@pytest.mark.parametrize(
    ("arch", "convs", "exact", "paper"),
    [
        ("conv2", [64, 64], 4_301_642, "4.3M"),
        ("conv4", [64, 64, 128, 128], 2_425_930, "2.4M"),
        ("conv6", [64, 64, 128, 128, 256, 256], 2_262_602, "1.7M"),
    ],
)
def test_conv_nets_have_the_figure_2_layers_and_parameter_counts(arch, convs, exact, paper):
    """Conv-2 and Conv-4 round to the paper's 4.3M and 2.4M on 32x32x3.

    Conv-6 has 2,262,602 (2.3M), not the 1.7M printed in Figure 2: its three conv pairs
    alone hold 1.14M weights and the fully connected 4096-256-256-10 another 1.12M, and
    no reading of the figure's architecture (3x3 convs, 'same' padding, three pools)
    gives 1.7M. The layers follow the figure; the count is what they make.
    """
    model = factory(arch)(num_classes=10, in_channels=3, image_size=32)
    conv_layers = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in conv_layers] == convs
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in conv_layers)
    pools = sum(isinstance(m, nn.MaxPool2d) for m in model.modules())
    side = 32 // 2**pools
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [(convs[-1] * side * side, 256), (256, 256), (256, 10)]
    assert count(model) == exact
    if arch != "conv6":
        assert f"{count(model) / 1e6:.1f}M" == paper
    else:
        assert f"{count(model) / 1e6:.2f}M" == "2.26M" and paper == "1.7M"


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("arch", LTH)
def test_lth_models_build_and_train_on_every_data_set_shape(arch, shape):
    torch.manual_seed(0)
    channels, size = shape
    model = factory(arch)(num_classes=7, in_channels=channels, image_size=size)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7) and bool(out.isfinite().all())
    out.square().mean().backward()
    assert all(p.grad is not None and bool(p.grad.isfinite().all()) for p in model.parameters())
    head = model.get_submodule(model.classifier_name)
    assert isinstance(head, nn.Linear) and head.out_features == 7


def test_the_mlp_prunes_every_layer_with_include_fc_and_refuses_to_run_without_it():
    model = factory("lenet_300_100")(num_classes=10, in_channels=1, image_size=28)
    assert list(prunable_weights(model, include_fc=True)) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert list(prunable_weights(model, include_stem=True, include_fc=True)) == list(
        prunable_weights(model, include_fc=True)
    )  # the stem rule is a conv rule: fc1 is pruned with the other fully connected layers
    with pytest.raises(ConfigError) as err:
        prunable_weights(model, include_stem=True)
    assert str(err.value) == "arch=lenet_300_100 has no prunable conv weights: set prune.include_fc=true"


@pytest.mark.parametrize("arch", ["conv2", "conv4", "conv6"])
def test_conv_nets_prune_all_convs_but_the_stem_and_the_fc_layers_only_with_include_fc(arch):
    model = factory(arch)(num_classes=10, in_channels=3, image_size=32)
    convs = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert list(prunable_weights(model)) == convs[1:] and convs[0] == "features.0.weight"
    assert list(prunable_weights(model, include_fc=True)) == [*convs[1:], "fc1.weight", "fc2.weight", "fc3.weight"]


def imp_rounds(model: nn.Module, rounds: int, **rates: float) -> list[dict[str, int]]:
    """Alive weights per layer after each of ``rounds`` IMP prunings of the untrained ``model`` (include_fc=true)."""
    weights = {n: w.detach() for n, w in prunable_weights(model, include_fc=True).items()}
    masks, alive = Masks.ones_like(weights), []
    for r in range(1, rounds + 1):
        ctx = PruneContext(round=r, model=model, weights=weights, masks=masks, batches=lambda: iter([]), **rates)
        masks = IMP().plan(ctx).final
        alive.append({n: int(m.sum()) for n, m in masks.items()})
    return alive


def test_lenet_loses_the_papers_per_layer_rates_each_round():
    """LTH, Figure 2: LeNet-300-100 prunes 20% of each hidden layer and 10% of the output layer per round."""
    torch.manual_seed(0)
    model = factory("lenet_300_100")(num_classes=10, in_channels=1, image_size=28)
    alive = imp_rounds(model, 3, rate=0.2, rate_fc=0.2, rate_output=0.1)
    expected = {"fc1.weight": 235_200, "fc2.weight": 30_000, "fc3.weight": 1_000}
    for row in alive:
        expected = {n: a - round((0.1 if n == "fc3.weight" else 0.2) * a) for n, a in expected.items()}
        assert row == expected
    assert alive[-1] == {"fc1.weight": 120_422, "fc2.weight": 15_360, "fc3.weight": 729}


def test_conv6_prunes_its_convs_together_and_each_fc_layer_at_its_own_rate():
    """Conv-6 as in the paper: convs 15% per round (here one global ranking among them), fc 20%, output 10%."""
    torch.manual_seed(0)
    model = factory("conv6")(num_classes=10, in_channels=1, image_size=8)
    weights = prunable_weights(model, include_fc=True)
    conv_names = [n for n in weights if n.startswith("features.")]
    conv_alive = sum(weights[n].numel() for n in conv_names)
    fc = {n: weights[n].numel() for n in ("fc1.weight", "fc2.weight", "fc3.weight")}
    for row in imp_rounds(model, 2, rate=0.15, rate_fc=0.2, rate_output=0.1):
        conv_alive -= round(0.15 * conv_alive)
        fc = {n: a - round((0.1 if n == "fc3.weight" else 0.2) * a) for n, a in fc.items()}
        assert sum(row[n] for n in conv_names) == conv_alive
        assert {n: row[n] for n in fc} == fc
        assert len({round(row[n] / weights[n].numel(), 3) for n in conv_names}) > 1  # global among the convs


def test_without_fc_rates_every_prunable_weight_is_ranked_together():
    torch.manual_seed(0)
    model = factory("conv2")(num_classes=10, in_channels=1, image_size=8)
    (row,) = imp_rounds(model, 1, rate=0.2)
    total = sum(w.numel() for w in prunable_weights(model, include_fc=True).values())
    assert sum(row.values()) == total - round(0.2 * total)
    assert row["fc3.weight"] != round(0.8 * 2560)  # no layer is pruned on its own


@pytest.mark.parametrize("arch", ["conv2", "conv4", "conv6"])
def test_export_of_a_conv_net_channel_ticket_is_exact_and_smaller(arch):
    """Dead conv channels go, their constant relu(bias) folded into the next conv or fc1; fc masks stay unstructured."""
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = factory(arch)(num_classes=10, in_channels=3, image_size=32).eval()
    masks = {}
    for name, w in prunable_weights(model, include_stem=True, include_fc=True).items():
        if w.dim() == 4:
            rows = (torch.rand(w.shape[0], generator=gen) >= 0.5).float()
            masks[name] = rows.view(-1, 1, 1, 1).expand_as(w).clone()
        else:
            masks[name] = (torch.rand(w.shape, generator=gen) >= 0.3).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in masks:
                p.mul_(masks[name])
            elif name.endswith("bias"):
                p.normal_(0, 0.1, generator=gen)  # non-zero constants relu(bias) for the dead channels
    exported = shrink(model, masks)
    x = torch.randn(4, 3, 32, 32, generator=gen)
    with torch.inference_mode():
        assert (model(x) - exported(x)).abs().max().item() < 1e-4
    dead = sum(int((masks[n].flatten(1).sum(1) == 0).sum()) for n in masks if masks[n].dim() == 4)
    convs_after = [m.out_channels for m in exported.modules() if isinstance(m, nn.Conv2d)]
    convs_before = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(convs_before) - sum(convs_after) == dead > 0
    assert count(exported) < count(model)


def run_cfg(tmp_path, *overrides: str):
    fast = ["train.epochs=1", "lr_schedule.milestones=[]", "progress=false", "struct=imp", "prune.rounds=2"]
    return compose_config(["arch=lenet_300_100", *fast, f"paths.root={tmp_path}", *overrides])


def test_a_run_of_the_mlp_without_include_fc_stops_before_training_with_one_line(tmp_path):
    from rsst import run

    with pytest.raises(ConfigError) as err:
        run(run_cfg(tmp_path))
    assert str(err.value) == "arch=lenet_300_100 has no prunable conv weights: set prune.include_fc=true"
    assert not list(tmp_path.glob("**/checkpoint.pt")) and not list(tmp_path.glob("**/metrics.csv"))


@pytest.mark.train
def test_a_lenet_run_prunes_each_layer_at_the_configured_rates(tmp_path):
    from rsst import run

    run(run_cfg(tmp_path, "prune.include_fc=true", "prune.rate_fc=0.2", "prune.rate_output=0.1"))
    (masks_file,) = tmp_path.glob("*/masks/round_1.pt")
    density = Masks(load_masks(masks_file)).layer_density()
    assert density == pytest.approx({"fc1.weight": 0.8, "fc2.weight": 0.8, "fc3.weight": 0.9}, abs=1e-4)
