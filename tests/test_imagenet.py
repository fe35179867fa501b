"""dataset=imagenet: the ILSVRC-2012 folder layout read through the real config, seeded and reproducible batches."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_config, launch, only_run_dir, read_rounds

from rsst.config.checks import ConfigError, build, validate_config
from rsst.data.files import CorruptDatasetError
from rsst.data.imagenet import DEVKIT, META_FILE, TRAIN_TAR, VAL_TAR, ImageNet, read_meta

WNIDS = ["n01530575", "n01440764", "n01443537"]  # written unsorted: the class order must come from sorting
TRAIN_PER_CLASS, VAL_PER_CLASS = 6, 2
SIZES = {"train_size": 15, "val_size": 3, "test_size": 6}  # 3 x 6 train images: 15 train + 3 held out; 3 x 2 val
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def colour(label: int, i: int) -> tuple[int, int, int]:
    return (40 + 70 * label, 200 - 20 * i, 30 + 25 * i)


def write_imagenet(root: Path) -> dict:
    """A miniature ILSVRC-2012 tree: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` of small two-tone JPEGs.

    The left half of an image has its colour, the right half is black, so crops and flips change pixels.
    Images are 40x30 or 30x52 (landscape and portrait). Returns the labels and colours in ImageFolder order.
    """
    from PIL import Image

    out = {"train": ([], []), "val": ([], [])}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for wnid in WNIDS:
            (root / split / wnid).mkdir(parents=True)
            label = sorted(WNIDS).index(wnid)
            for i in range(per_class):
                w, h = (40, 30) if i % 2 == 0 else (30, 52)
                img = Image.new("RGB", (w, h), (0, 0, 0))
                img.paste(colour(label, i), (0, 0, w // 2, h))
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{label * 10 + i:08d}.JPEG"
                img.save(root / split / wnid / name, quality=95)
        for wnid in sorted(WNIDS):  # ImageFolder order: classes sorted, files sorted within each
            label = sorted(WNIDS).index(wnid)
            for i in range(per_class):
                out[split][0].append(label)
                out[split][1].append(colour(label, i))
    return {s: (np.array(labels), np.array(colours)) for s, (labels, colours) in out.items()}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("imagenet")
    return root, write_imagenet(root)


def imagenet(root: Path, *overrides: str):
    sizes = [f"dataset.{k}={v}" for k, v in SIZES.items()]
    cfg = compose_config(["dataset=imagenet", f"dataset.root={root}", "dataset.num_workers=0", *sizes, *overrides])
    return build(cfg.dataset, "dataset")


def gather(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_the_tree_gives_sorted_wnid_classes_a_seeded_holdout_and_the_official_val_as_test(tree):
    root, fake = tree
    data = imagenet(root)
    assert type(data) is ImageNet and data.classes == sorted(WNIDS)
    assert (data.num_classes, data.in_channels, data.image_size) == (3, 3, 224)
    assert [data.size(s) for s in ("train", "val", "test")] == [15, 3, 6]
    perm = np.random.RandomState(0).permutation(18)  # split_seed 0 over the train pool in ImageFolder order
    pool_labels = fake["train"][0]
    assert data.splits["train"].labels.tolist() == pool_labels[perm[:15]].tolist()
    assert data.splits["val"].labels.tolist() == pool_labels[perm[15:]].tolist()
    test_order = np.random.RandomState(0).permutation(6)
    assert data.splits["test"].labels.tolist() == fake["val"][0][test_order].tolist()
    assert sorted(data.splits["test"].labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_eval_batches_are_resized_centre_cropped_224_and_normalised(tree):
    root, fake = tree
    data = imagenet(root)
    x, y = gather(data.batches("test", 4, "cpu"))
    assert x.shape == (6, 3, 224, 224) and x.dtype == torch.float32 and y.shape == (6,)
    assert data.num_batches("test", 4) == 2
    pixels = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    order = np.random.RandomState(0).permutation(6)
    left = (pixels[:, :, 112, 20] * 255).round().numpy()  # well inside the coloured left half after the crop
    assert np.abs(left - fake["val"][1][order]).max() <= 4  # JPEG keeps a flat colour within a few levels
    right = (pixels[:, :, 112, 200] * 255).round()
    assert right.abs().max() <= 4  # the black right half


def test_an_epoch_order_and_its_augmentation_are_a_pure_function_of_the_seed(tree):
    root, _ = tree
    data = imagenet(root)
    a, b, c = (gather(data.batches("train", 4, "cpu", seed=s)) for s in (5, 5, 6))
    assert a[0].shape == (15, 3, 224, 224) and data.num_batches("train", 4) == 4
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # same seed: bit for bit
    whole = gather(data.batches("train", 15, "cpu", seed=5))  # another batch size: the same images, same views
    assert torch.equal(a[0], whole[0]) and torch.equal(a[1], whole[1])
    assert sorted(a[1].tolist()) == sorted(data.splits["train"].labels.tolist())  # every image once
    assert not torch.equal(data.epoch("train", 4, seed=5).order, data.epoch("train", 4, seed=6).order)
    assert not torch.equal(a[0], c[0])
    # the same image, in epochs 5 and 6: a different random crop/flip (train only; eval views are fixed)
    order5, order6 = data.epoch("train", 4, seed=5).order.tolist(), data.epoch("train", 4, seed=6).order.tolist()
    first = order5[0]
    assert not torch.equal(a[0][0], c[0][order6.index(first)])
    plain = gather(data.batches("train", 15, "cpu"))[0]  # no seed: file order, the evaluation view
    assert not torch.equal(a[0][0], plain[first])


def test_rank_shards_of_an_augmented_epoch_union_to_the_single_process_batches(tree):
    """15 images, global batch 4 over 2 ranks: every step's two shards, concatenated, are that step's batch
    (images, their crops and flips, labels); evaluation shares cover the split once."""
    root, _ = tree
    data = imagenet(root)
    whole = list(data.batches("train", 4, "cpu", seed=5))
    shards = [list(data.batches("train", 4, "cpu", seed=5, shard=(rank, 2))) for rank in (0, 1)]
    assert [len(s) for s in shards] == [len(whole)] * 2 == [4, 4]
    assert [len(shards[1][-1][1]), len(shards[0][-1][1])] == [2, 1]  # the last batch of 3: 1 + 2
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([shards[0][step][0], shards[1][step][0]]), x)
        assert torch.equal(torch.cat([shards[0][step][1], shards[1][step][1]]), y)
    test = gather(data.batches("test", 4, "cpu"))
    shares = [gather(data.batches("test", 4, "cpu", shard=(rank, 2))) for rank in (0, 1)]
    assert torch.equal(torch.cat([shares[0][0], shares[1][0]]), test[0])
    assert torch.equal(torch.cat([shares[0][1], shares[1][1]]), test[1])


def test_workers_cut_the_same_batches_as_the_main_process(tree):
    root, _ = tree
    inline = gather(imagenet(root).batches("train", 4, "cpu", seed=11))
    workers = gather(imagenet(root, "dataset.num_workers=2").batches("train", 4, "cpu", seed=11))
    assert torch.equal(inline[0], workers[0]) and torch.equal(inline[1], workers[1])


def test_loader_auto_is_the_dataloader_and_loader_device_is_refused_in_one_line(tree):
    root, _ = tree
    data = imagenet(root)
    assert data.loader_choice == "auto" and data.num_workers == 0
    assert data.resolve_loader("cpu") == "dataloader" and data.resolve_loader("cuda:0") == "dataloader"
    assert compose_config(["dataset=imagenet"]).dataset.num_workers == 8  # the default decodes in workers
    with pytest.raises(ConfigError) as err:
        imagenet(root, "dataset.loader=device")
    msg = str(err.value)
    assert msg.startswith("dataset: dataset.loader='device'") and "does not fit on a device" in msg
    assert "\n" not in msg


def test_a_missing_tree_is_a_one_line_error_naming_the_root_the_layout_and_image_net_org(tmp_path):
    root = tmp_path / "absent"
    with pytest.raises(ConfigError) as err:
        imagenet(root)
    msg = str(err.value)
    assert msg.startswith("dataset: ImageNet not found") and "\n" not in msg
    assert str(root) in msg and str(root / "imagenet") in msg
    assert "train/<wnid>/*.JPEG" in msg and "val/<wnid>/*.JPEG" in msg and TRAIN_TAR in msg
    assert "image-net.org" in msg and "not downloaded automatically" in msg


def test_counts_that_do_not_match_the_config_name_the_keys(tree):
    root, _ = tree
    with pytest.raises(ConfigError, match=r"holds 18 images, expected dataset.train_size \+ dataset.val_size = 20"):
        imagenet(root, "dataset.train_size=17")


def test_torchvisions_archives_are_checked_and_meta_bin_is_read_with_weights_only(tmp_path):
    for name in (DEVKIT, TRAIN_TAR, VAL_TAR):
        (tmp_path / name).write_bytes(b"not the real archive")
    with pytest.raises(CorruptDatasetError) as err:  # torchvision's md5 check refuses a wrong devkit
        ImageNet(root=str(tmp_path), num_workers=0)
    assert DEVKIT in str(err.value) and str(tmp_path) in str(err.value)
    assert not (tmp_path / "val").exists() and not (tmp_path / "train").exists()
    torch.save(({"n01440764": ("tench",)}, ["n01440764", "n01443537"]), tmp_path / META_FILE)
    assert read_meta(tmp_path / META_FILE) == ({"n01440764": ("tench",)}, ["n01440764", "n01443537"])
    with pytest.raises(CorruptDatasetError) as err:  # with meta.bin the devkit is not needed: the val tar is next
        ImageNet(root=str(tmp_path), num_workers=0)
    assert VAL_TAR in str(err.value) and DEVKIT not in str(err.value)
    torch.save((argparse.Namespace(payload=1), []), tmp_path / META_FILE)
    with pytest.raises(CorruptDatasetError, match="loadable with weights_only=True") as err:
        read_meta(tmp_path / META_FILE)
    assert "\n" not in str(err.value)


def test_the_refill_imagenet_preset_composes_with_the_papers_recipe_and_builds_on_the_tree(tree):
    root, _ = tree
    cfg = compose_config(["experiment=refill_imagenet_resnet50"])
    validate_config(cfg, check_device=False)
    assert cfg.dataset._target_ == "rsst.data.imagenet.ImageNet" and cfg.arch._target_.endswith("resnet50")
    assert cfg.struct._target_.endswith("Refill") and cfg.struct.fillback_rate == 0.1
    recipe = (cfg.train.epochs, cfg.train.batch_size, cfg.optimizer.lr, cfg.optimizer.weight_decay)
    assert recipe == (90, 1024, 0.4, 1e-4)
    assert list(cfg.lr_schedule.milestones) == [29, 59, 79] and cfg.lr_schedule.warmup_epochs == 4
    assert (cfg.prune.rounds, cfg.prune.rate, cfg.prune.rewind, cfg.prune.rewind_epoch) == (10, 0.2, "epoch", 15)
    sizes = [f"dataset.{k}={v}" for k, v in SIZES.items()]
    on_tree = compose_config(["experiment=refill_imagenet_resnet50", f"dataset.root={root}", *sizes])
    data = build(on_tree.dataset, "dataset")
    assert data.resolve_loader("cpu") == "dataloader" and data.num_workers == 16
    model = build(on_tree.arch, "arch")(
        num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size
    )
    assert model.stem == "imagenet" and model.conv1.kernel_size == (7, 7)  # the ImageNet stem at 224 px


@pytest.mark.slow
def test_a_run_trains_and_prunes_on_the_tree_through_launch(tree, tmp_path):
    root, _ = tree
    sizes = [f"dataset.{k}={v}" for k, v in SIZES.items()]
    done = launch(
        "dataset=imagenet",
        f"dataset.root={root}",
        *sizes,
        "dataset.image_size=32",
        "dataset.resize_size=36",
        "dataset.num_workers=1",
        "arch.width=8",
        "struct=refill",
        "prune.rounds=2",
        "train.epochs=1",
        "train.batch_size=8",
        "lr_schedule.milestones=[]",
        "progress=false",
        "device=cpu",
        f"paths.root={tmp_path}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rounds = read_rounds(only_run_dir(tmp_path))
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["remain_weight"] < 100.0
    assert all(0.0 <= r["test_acc"] <= 100.0 for r in rounds)
