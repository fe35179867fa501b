"""Masks and global magnitude pruning (docs/algorithms.md, section 1: the first step of every round)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

from rsst.folder.tickets import load_masks, save_masks
from rsst.pruning.masks import Masks, apply_masks_, global_magnitude_prune, magnitude_prune


def toy_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1))


def convs(net: nn.Sequential) -> list[tuple[str, nn.Conv2d]]:
    return [(f"{i}.weight", m) for i, m in enumerate(net) if isinstance(m, nn.Conv2d)]


def test_global_magnitude_prune_matches_torch_global_unstructured_over_rounds():
    ours_net, oracle_net = toy_net(), toy_net()
    weights = {name: m.weight for name, m in convs(ours_net)}
    masks = Masks.ones_like(weights)
    oracle_params = [(m, "weight") for _, m in convs(oracle_net)]
    for _ in range(4):
        masks = global_magnitude_prune(weights, masks, 0.2)
        tprune.global_unstructured(oracle_params, pruning_method=tprune.L1Unstructured, amount=0.2)
        for (name, _), (module, _) in zip(convs(ours_net), oracle_params, strict=True):
            assert torch.equal(masks[name], module.weight_mask), name


def test_remaining_fraction_after_k_rounds_is_0_8_to_the_k_within_one_weight_per_layer():
    net = toy_net(1)
    weights = {name: m.weight for name, m in convs(net)}
    masks = Masks.ones_like(weights)
    total = masks.numel()
    for k in range(1, 8):
        masks = global_magnitude_prune(weights, masks, 0.2)
        assert abs(masks.alive() - total * 0.8**k) <= len(masks), (k, masks.alive(), total * 0.8**k)


def test_pruning_removes_the_smallest_alive_weights_by_trained_magnitude():
    w = {"a": torch.tensor([[0.5, -0.1, 3.0, 0.2, -2.0]])}
    masks = Masks({"a": torch.tensor([[1.0, 1.0, 1.0, 0.0, 1.0]])})
    out = global_magnitude_prune(w, masks, 0.5)  # 4 alive -> remove 2: |-0.1| and |0.5|; 0.2 is already dead
    assert out["a"].tolist() == [[0.0, 0.0, 1.0, 0.0, 1.0]]


def test_ties_are_broken_by_layer_then_index():
    w = {"a": torch.ones(4), "b": torch.ones(4)}
    out = global_magnitude_prune(w, Masks.ones_like(w), 0.25)
    assert out["a"].tolist() == [0.0, 0.0, 1.0, 1.0] and out["b"].tolist() == [1.0] * 4


def test_pruning_neither_writes_into_nor_aliases_its_inputs():
    net = toy_net(2)
    weights = {name: m.weight for name, m in convs(net)}
    masks = Masks.ones_like(weights)
    before = masks.clone()
    out = global_magnitude_prune(weights, masks, 0.3)
    assert masks.equal(before)
    ptrs = [t.untyped_storage().data_ptr() for t in [*out.values(), *masks.values(), *weights.values()]]
    assert len(set(ptrs)) == len(ptrs)


def test_apply_masks_zeroes_exactly_the_pruned_weights():
    net = toy_net(3)
    weights = {name: m.weight for name, m in convs(net)}
    masks = global_magnitude_prune(weights, Masks.ones_like(weights), 0.5)
    kept = {n: w.detach().clone() for n, w in weights.items()}
    apply_masks_(weights.values(), masks.values())
    for n, w in weights.items():
        assert int((w[masks[n] == 0] != 0).sum()) == 0
        assert torch.equal(w[masks[n] == 1], kept[n][masks[n] == 1])


def test_density_and_channel_sparsity_count_weights_and_dead_rows():
    m = Masks({"a": torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]), "b": torch.zeros(1, 2)})
    assert m.alive() == 3 and m.numel() == 8 and m.density() == 3 / 8
    assert m.channel_sparsity() == 2 / 4  # row 1 of a and the only row of b are empty


def test_masks_round_trip_through_a_file(tmp_path):
    m = global_magnitude_prune({"x": torch.randn(5, 3)}, Masks.ones_like({"x": torch.zeros(5, 3)}), 0.4)
    save_masks(m, tmp_path / "m.pt")
    assert Masks(load_masks(tmp_path / "m.pt")).equal(m)


def conv_and_fc_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two convs (72 + 144 weights), a hidden fc (160) and an output layer (30), with layer scales far apart."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"a": (4, 2, 3, 3), "b": (4, 4, 3, 3), "fc": (10, 16), "out": (3, 10)}
    scale = {"a": 1.0, "b": 0.01, "fc": 100.0, "out": 1e-4}  # a global ranking would empty b and out first
    return {n: torch.randn(shape, generator=gen) * scale[n] for n, shape in shapes.items()}


def test_magnitude_prune_prunes_each_rated_layer_at_its_own_rate_and_the_rest_globally():
    weights = conv_and_fc_weights()
    rates = {"fc": 0.2, "out": 0.1}
    masks = Masks.ones_like(weights)
    alive = {"convs": 216, "fc": 160, "out": 30}
    for _ in range(3):
        new = magnitude_prune(weights, masks, 0.1, rates)
        conv_alive = int(new["a"].sum() + new["b"].sum())
        assert alive["convs"] - conv_alive == round(0.1 * alive["convs"])  # the convs together lose 10%
        for name, rate in rates.items():
            assert alive[name] - int(new[name].sum()) == round(rate * alive[name])  # each fc layer its own rate
            removed = (masks[name] - new[name]).bool()
            kept = new[name].bool()
            assert weights[name][removed].abs().max() <= weights[name][kept].abs().min()  # the layer's smallest
        alive = {"convs": conv_alive, "fc": int(new["fc"].sum()), "out": int(new["out"].sum())}
        masks = new
    assert alive == {"convs": 157, "fc": 82, "out": 22}  # 216-194-175-157, 160-128-102-82, 30-27-24-22
    global_only = magnitude_prune(weights, Masks.ones_like(weights), 0.1)
    assert global_only.equal(global_magnitude_prune(weights, Masks.ones_like(weights), 0.1))
    assert int(global_only["out"].sum()) == 0  # what the per-layer rate protects the output layer from


def test_magnitude_prune_rejects_rates_for_layers_that_are_not_prunable():
    weights = conv_and_fc_weights()
    with pytest.raises(ValueError, match=r"layer rates for layers that are not prunable: \['head'\]"):
        magnitude_prune(weights, Masks.ones_like(weights), 0.1, {"head": 0.2})


def test_masks_made_like_channels_last_weights_keep_that_layout_through_pruning_refill_union_and_minus(tmp_path):
    """The round's masks match their weights' memory format, so the per-step multiply stays on the fused path."""
    from rsst.pruning.refill import refill

    net = toy_net().to(memory_format=torch.channels_last)
    weights = {name: m.weight for name, m in convs(net)}
    cl = torch.channels_last
    assert all(w.is_contiguous(memory_format=cl) for w in weights.values())
    assert not weights["0.weight"].is_contiguous()  # a 3x3 kernel: the two layouts differ (a 1x1 one is both)
    masks = Masks.ones_like(weights)
    pruned = global_magnitude_prune(weights, masks, 0.3)
    scores = {n: torch.arange(w.shape[0], dtype=torch.float32) for n, w in weights.items()}
    refilled = refill(pruned, scores, 0.0)
    for made in (masks, pruned, refilled, pruned.union(refilled), pruned.minus(refilled), Masks(
        {n: m.contiguous() for n, m in pruned.items()}
    ).like(weights)):  # fmt: skip
        assert all(m.is_contiguous(memory_format=cl) for m in made.values())
        assert not made["0.weight"].is_contiguous()
        assert all(m.dtype == torch.float32 for m in made.values())
    # the same values as in the standard layout: the layout changes where they lie, not what they are
    plain = {n: w.detach().contiguous() for n, w in weights.items()}
    assert global_magnitude_prune(plain, Masks.ones_like(plain), 0.3).equal(pruned)
    assert refill(global_magnitude_prune(plain, Masks.ones_like(plain), 0.3), scores, 0.0).equal(refilled)
    save_masks(pruned, tmp_path / "m.pt")  # the file holds the standard layout, as before
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert all(t.is_contiguous() and t.dtype == torch.bool for t in saved.values())
