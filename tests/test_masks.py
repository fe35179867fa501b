"""Masks and global magnitude pruning (DESIGN section 4, first step of every round)."""

from __future__ import annotations

import torch
import torch.nn.utils.prune as tprune
from torch import nn

from rsst.pruning.masks import Masks, apply_masks_, global_magnitude_prune


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
    m.save(tmp_path / "m.pt")
    assert Masks.load(tmp_path / "m.pt").equal(m)
