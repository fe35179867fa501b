"""The device-resident loader: each index once per epoch, reproducible, augmented like torchvision."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_config

from rsst.config.checks import ConfigError, build
from rsst.data.base import Split, TensorDataModule, loader_for
from rsst.data.options import Serving

N, SIZE, PAD = 600, 8, 2


def indexed_module(augment: bool = True, loader: str = "device", **kw) -> TensorDataModule:
    """Images whose pixels say where they came from: channel 0 = row + 1, channel 1 = column + 1,
    channel 2 = the sample's index mod 251 + 1; the label is the index itself."""
    rows = torch.arange(1, SIZE + 1, dtype=torch.uint8).view(SIZE, 1).expand(SIZE, SIZE)
    cols = rows.t()
    idx = torch.arange(N)
    tag = (idx % 251 + 1).to(torch.uint8).view(N, 1, 1)
    x = torch.stack([rows.expand(N, SIZE, SIZE), cols.expand(N, SIZE, SIZE), tag.expand(N, SIZE, SIZE)], dim=1)
    split = Split(x, idx)
    serving = Serving(augment=augment, crop_padding=PAD, loader=loader, **kw)
    return TensorDataModule(split, split.head(10), split.head(10), N, [0.0] * 3, [1.0] * 3, serving)


def raw(x: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation (mean 0, std 1 in [0, 1] units): back to the uint8 pixel values."""
    return (x * 255).round().to(torch.int64)


def gather(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_the_device_loader_yields_every_training_index_exactly_once_per_epoch():
    data = indexed_module()
    assert data.resolve_loader("cpu") == "device"
    for seed in (0, 1, 12345):
        batches = list(data.batches("train", 64, seed=seed))
        assert [len(y) for _, y in batches] == [64] * 9 + [24]
        _, y = gather(batches)
        assert torch.equal(torch.sort(y).values, torch.arange(N))
    x, y = gather(data.batches("train", 64, seed=3))  # the image travels with its own label
    assert torch.equal(raw(x)[:, 2].amax((1, 2)), y % 251 + 1)


def test_an_epoch_is_reproducible_for_a_seed_and_differs_between_seeds():
    data = indexed_module()
    a, b, c = (gather(data.batches("train", 50, seed=s)) for s in (7, 7, 8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert (a[1] != c[1]).float().mean() > 0.9  # a new order, not a shifted one
    fresh = gather(indexed_module().batches("train", 50, seed=7))  # a new module: the same epoch
    assert torch.equal(a[0], fresh[0])


def crop_and_flip_of(img: torch.Tensor) -> tuple[int, int, bool]:
    """Recover the crop offsets (dy, dx in [0, 2*PAD]) and the flip of one augmented image."""
    row_channel, col_channel = img[0], img[1]
    live_rows = (row_channel.amax(1) > 0).nonzero().flatten()
    i0 = int(live_rows[0])
    dy = PAD - i0 if i0 > 0 else int(row_channel[0].amax()) - 1 + PAD
    live = col_channel[i0]
    cols = live[live > 0]
    flip = bool(len(cols) > 1 and cols[0] > cols[-1])
    unflipped = live.flip(0) if flip else live
    j0 = int((unflipped > 0).nonzero()[0])
    dx = PAD - j0 if j0 > 0 else int(unflipped[0]) - 1 + PAD
    return dy, dx, flip


def test_augmentation_matches_random_crop_with_padding_and_horizontal_flip():
    data = indexed_module()
    x, _ = gather(data.batches("train", 200, seed=11))
    pixels = raw(x)
    offsets, flips = [], []
    grid = torch.arange(1, SIZE + 1).view(SIZE, 1).expand(SIZE, SIZE)
    padded_rows, padded_cols = (torch.nn.functional.pad(g, (PAD, PAD, PAD, PAD)) for g in (grid, grid.t()))
    for img in pixels:
        dy, dx, flip = crop_and_flip_of(img)
        offsets.append((dy, dx))
        flips.append(flip)
        # the image is exactly the zero-padded original cropped at those offsets (and mirrored)
        want_rows = padded_rows[dy : dy + SIZE, dx : dx + SIZE]
        want_cols = padded_cols[dy : dy + SIZE, dx : dx + SIZE]
        if flip:
            want_rows, want_cols = want_rows.flip(1), want_cols.flip(1)
        assert torch.equal(img[0], want_rows) and torch.equal(img[1], want_cols)
    offsets = torch.tensor(offsets)
    assert offsets.min() >= 0 and offsets.max() <= 2 * PAD
    counts = torch.bincount(offsets.flatten(), minlength=2 * PAD + 1).float() / offsets.numel()
    assert counts.min() > 0.12 and counts.max() < 0.28  # each of the 5 offsets near 1/5
    rate = sum(flips) / len(flips)
    assert 0.43 < rate < 0.57, rate  # 600 samples: one standard deviation is 0.02
    val, _ = gather(data.batches("val", 10))
    assert torch.equal(raw(val)[:, 0], torch.arange(1, SIZE + 1).view(SIZE, 1).expand(10, SIZE, SIZE))


def test_the_dataloader_path_yields_the_same_batches_as_the_device_path():
    device, loader = indexed_module(loader="device"), indexed_module(loader="dataloader", num_workers=1)
    assert loader.resolve_loader("cpu") == "dataloader"
    assert loader.loader("train", 64, seed=2).num_workers == 1
    for split, seed in (("train", 2), ("val", None)):
        pairs = zip(device.batches(split, 64, seed=seed), loader.batches(split, 64, seed=seed), strict=True)
        for (xa, ya), (xb, yb) in pairs:
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("loader", ["device", "dataloader"])
def test_rank_shards_on_both_paths_union_to_the_single_process_batches(loader):
    """600 augmented images, global batch 64 over 2 and 4 ranks (the last batch of 24: 12 or 6 each):
    each step's shards, concatenated in rank order, are the single-process batch, crops and flips included."""
    data = indexed_module(loader=loader, **({"num_workers": 1} if loader == "dataloader" else {}))
    whole = list(data.batches("train", 64, seed=4))
    for world in (2, 4):
        shards = [list(data.batches("train", 64, seed=4, shard=(rank, world))) for rank in range(world)]
        assert [len(s) for s in shards] == [len(whole)] * world
        for step, (x, y) in enumerate(whole):
            assert torch.equal(torch.cat([shards[rank][step][0] for rank in range(world)]), x)
            assert torch.equal(torch.cat([shards[rank][step][1] for rank in range(world)]), y)
    val = gather(data.batches("val", 4))  # evaluation: contiguous shares of the split, 10 = 5 + 5
    shares = [gather(data.batches("val", 4, shard=(rank, 2))) for rank in (0, 1)]
    assert torch.equal(torch.cat([shares[0][1], shares[1][1]]), val[1]) and len(shares[0][1]) == 5


def test_a_wrong_loader_is_an_error_naming_the_key_and_the_choices():
    expected = r"^dataset.loader='gpu' is invalid: expected one of auto, device, dataloader$"
    with pytest.raises(ValueError, match=expected):
        indexed_module(loader="gpu")
    cfg = compose_config(["dataset.loader=fast"])
    with pytest.raises(ConfigError, match=r"^dataset: dataset.loader='fast'"):
        build(cfg.dataset, "dataset")


def test_every_dataset_yaml_offers_the_loader_choice():
    for name in ("digits", "synthetic"):
        data = build(compose_config([f"dataset={name}"]).dataset, "dataset")
        assert data.loader_choice == "auto" and data.resolve_loader("cpu") == "device"
    data = build(compose_config(["dataset.loader=dataloader"]).dataset, "dataset")
    assert data.resolve_loader("cpu") == "dataloader"


def test_auto_uses_the_dataloader_when_workers_are_asked_for():
    assert indexed_module(loader="auto", num_workers=0).resolve_loader("cpu") == "device"
    asked = indexed_module(loader="auto", num_workers=2)
    assert asked.resolve_loader("cpu") == "dataloader"
    assert asked.loader("train", 64, seed=0).num_workers == 2
    assert indexed_module(loader="device", num_workers=2).resolve_loader("cpu") == "device"  # an explicit choice wins
    data = build(compose_config(["dataset.num_workers=1"]).dataset, "dataset")
    assert data.loader_choice == "auto" and data.resolve_loader("cpu") == "dataloader"


def test_auto_keeps_the_data_on_a_gpu_only_when_it_needs_at_most_half_the_free_memory():
    held = indexed_module().nbytes()
    assert held == (N + 10 + 10) * (3 * SIZE * SIZE + 8)  # train, val, test: uint8 images, int64 labels
    gib = 2**30
    assert loader_for(int(0.15 * gib), 78 * gib) == "device"  # CIFAR-100 as uint8 on an H100
    assert loader_for(2 * gib, 4 * gib) == "device"  # exactly half
    assert loader_for(2 * gib + 1, 4 * gib) == "dataloader"
    assert loader_for(1, 0) == "dataloader"
