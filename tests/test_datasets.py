"""Data modules read files written in the real formats: shapes, labels, splits, normalisation, augmentation, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import write_cifar, write_fashion_mnist, write_idx, write_tiny_imagenet
from helpers import compose_config

from rsst.config.checks import ConfigError, build
from rsst.data import CorruptDatasetError, DatasetNotFoundError
from rsst.data.cifar import Cifar10, Cifar100
from rsst.data.digits import Digits
from rsst.data.fashion_mnist import SYSTEM_ROOT, FashionMNIST
from rsst.data.synthetic import Synthetic
from rsst.data.tiny_imagenet import URL as TINY_URL
from rsst.data.tiny_imagenet import TinyImageNet

SMALL_CIFAR = {"train_size": 80, "val_size": 20, "test_size": 30}  # write_cifar: 5 x 20 train, 30 test
SMALL_FMNIST = {"train_size": 24, "val_size": 6, "test_size": 10}  # write_fashion_mnist: 30 train, 10 test
SMALL_TINY = {"num_classes": 3, "train_size": 30, "val_size": 6, "test_size": 5}  # 3 x 12 train, 5 val


def normalised(x: np.ndarray | torch.Tensor, mean, std) -> torch.Tensor:
    """The reference normalisation: uint8 -> [0, 1] -> (x - mean) / std per channel."""
    x = torch.as_tensor(np.asarray(x)).float() / 255
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def gather(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def crops_of(image: torch.Tensor, pad: int) -> torch.Tensor:
    """Every crop of ``image`` padded by ``pad`` with zeros, and their mirror images: ``[(2p+1)^2 * 2, C, H, W]``."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    crops = [padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    crops = torch.stack(crops)
    return torch.cat([crops, crops.flip(-1)])


# -- CIFAR ------------------------------------------------------------------------------------------


def test_cifar10_takes_train_from_the_first_images_and_val_from_the_last(tmp_path):
    fake = write_cifar(tmp_path)
    data = Cifar10(root=str(tmp_path), **SMALL_CIFAR)
    assert (data.name, data.num_classes, data.in_channels, data.image_size) == ("cifar10", 10, 3, 32)
    assert data.mean == (0.4914, 0.4822, 0.4465) and data.std == (0.2470, 0.2435, 0.2616)
    assert [data.size(s) for s in ("train", "val", "test")] == [80, 20, 30]
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    assert train.x.dtype == torch.uint8 and train.x.shape == (80, 3, 32, 32)
    assert torch.equal(train.x, torch.from_numpy(fake["train_x"][:80]))
    assert torch.equal(val.x, torch.from_numpy(fake["train_x"][80:]))
    assert torch.equal(test.x, torch.from_numpy(fake["test_x"]))
    assert train.y.tolist() == fake["train_y"][:80].tolist() and val.y.tolist() == fake["train_y"][80:].tolist()
    assert test.y.dtype == torch.int64 and test.y.tolist() == fake["test_y"].tolist()


def test_cifar100_reads_the_fine_labels_and_its_own_constants(tmp_path):
    fake = write_cifar(tmp_path, kind="cifar100")
    data = Cifar100(root=str(tmp_path), **SMALL_CIFAR)
    assert (data.name, data.num_classes) == ("cifar100", 100)
    assert data.mean == (0.5071, 0.4866, 0.4409) and data.std == (0.2673, 0.2564, 0.2762)
    assert data.splits["train"].y.tolist() == fake["train_y"][:80].tolist()
    assert data.splits["test"].y.tolist() == fake["test_y"].tolist()


def test_the_root_may_be_the_batches_folder_itself(tmp_path):
    fake = write_cifar(tmp_path)
    data = Cifar10(root=str(fake["folder"]), **SMALL_CIFAR)
    assert torch.equal(data.splits["test"].x, torch.from_numpy(fake["test_x"]))


def test_eval_batches_are_normalised_per_channel_and_in_file_order(tmp_path):
    fake = write_cifar(tmp_path)
    data = Cifar10(root=str(tmp_path), **SMALL_CIFAR)
    x, y = gather(data.batches("test", 16))
    assert x.dtype == torch.float32 and x.shape == (30, 3, 32, 32)
    torch.testing.assert_close(x, normalised(fake["test_x"], data.mean, data.std), atol=1e-5, rtol=0)
    assert y.tolist() == fake["test_y"].tolist()


def test_augmentation_is_off_for_val_and_test_and_crops_and_flips_train(tmp_path):
    write_cifar(tmp_path)
    data = Cifar10(root=str(tmp_path), **SMALL_CIFAR)
    for split in ("val", "test"):
        epoch = data.epoch(split, 16, seed=5)
        x, y = gather(epoch)
        assert not torch.equal(epoch.order, torch.arange(len(epoch.order)))  # shuffled, yet not augmented
        raw = data.splits[split]
        torch.testing.assert_close(x, normalised(raw.x[epoch.order], data.mean, data.std), atol=1e-5, rtol=0)
        assert torch.equal(y, raw.y[epoch.order])
    epoch = data.epoch("train", 16, seed=5)
    x, _ = gather(epoch)
    raw = normalised(data.splits["train"].x[epoch.order], data.mean, data.std)
    zero = normalised(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), data.mean, data.std)  # a padded pixel
    unchanged = 0
    for aug, img in zip(x, raw, strict=True):
        candidates = crops_of(img - zero[0], pad=4) + zero[0]
        assert (candidates - aug).abs().flatten(1).amax(1).min() < 1e-5  # a 4-padded crop, maybe mirrored
        unchanged += bool(torch.allclose(aug, img, atol=1e-5))
    assert unchanged < len(x) // 4
    off = Cifar10(root=str(tmp_path), augment=False, **SMALL_CIFAR)
    epoch = off.epoch("train", 16, seed=5)
    torch.testing.assert_close(gather(epoch)[0], raw, atol=1e-5, rtol=0)


def test_an_epoch_is_a_pure_function_of_its_seed(tmp_path):
    write_cifar(tmp_path)
    a = Cifar10(root=str(tmp_path), **SMALL_CIFAR)
    b = Cifar10(root=str(tmp_path), **SMALL_CIFAR)
    first, again = gather(a.batches("train", 16, seed=7)), gather(b.batches("train", 16, seed=7))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], gather(a.batches("train", 16, seed=8))[0])


def test_dataloader_workers_yield_the_same_batches_as_the_device_path(tmp_path):
    write_cifar(tmp_path)
    inline = Cifar10(root=str(tmp_path), **SMALL_CIFAR)
    workers = Cifar10(root=str(tmp_path), loader="dataloader", num_workers=2, pin_memory=True, **SMALL_CIFAR)
    loader = workers.loader("train", 16, seed=3)
    assert loader.num_workers == 2 and loader.pin_memory == torch.cuda.is_available()
    assert len(loader) == inline.num_batches("train", 16) == 5
    for split, seed in (("train", 3), ("test", None)):
        pairs = zip(inline.batches(split, 16, seed=seed), workers.batches(split, 16, seed=seed), strict=True)
        for (xa, ya), (xb, yb) in pairs:
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_subsets_keep_the_first_images_of_each_split(tmp_path):
    fake = write_cifar(tmp_path)
    data = Cifar10(root=str(tmp_path), train_subset=10, eval_subset=5, **SMALL_CIFAR)
    assert [data.size(s) for s in ("train", "val", "test")] == [10, 5, 5]
    assert torch.equal(data.splits["val"].x, torch.from_numpy(fake["train_x"][80:85]))
    with pytest.raises(ValueError, match=r"^dataset.train_subset=0 is invalid: expected null or an integer >= 1$"):
        Cifar10(root=str(tmp_path), train_subset=0, **SMALL_CIFAR)


def test_missing_cifar_names_the_path_the_files_and_how_to_get_them(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        Cifar10(root=str(root))
    msg = str(err.value)
    assert str(root / "cifar-10-batches-py") in msg
    assert "data_batch_1" in msg and "data_batch_5" in msg and "test_batch" in msg
    assert "dataset.download=true" in msg and "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert isinstance(err.value, ValueError)


def test_a_failed_download_is_reported_with_its_cause_and_the_url(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError) as err:
        Cifar100(root=str(root), download=True)
    msg = str(err.value)
    assert "dataset.download=true failed (OSError: network is unreachable)" in msg
    assert str(root / "cifar-100-python") in msg and "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in msg


def test_download_true_fetches_missing_data_into_the_root(tmp_path, monkeypatch):
    fetched = []

    def fake_download(root: Path) -> None:
        fetched.append(root)
        write_cifar(root)

    monkeypatch.setattr(Cifar10, "_download", staticmethod(fake_download))
    data = Cifar10(root=str(tmp_path / "data"), download=True, **SMALL_CIFAR)
    assert fetched == [tmp_path / "data"] and data.size("train") == 80
    Cifar10(root=str(tmp_path / "data"), download=True, **SMALL_CIFAR)  # present now: no second download
    assert len(fetched) == 1


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _rewrite(path: Path, change) -> None:
    with open(path, "rb") as f:
        entry = pickle.load(f)
    change(entry)
    with open(path, "wb") as f:
        pickle.dump(entry, f)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_truncate, "not a readable CIFAR pickle"),
        (lambda p: _rewrite(p, lambda e: e.update(data=e["data"][:, :1024])), "shape [N, 3072]"),
        (lambda p: _rewrite(p, lambda e: e.pop("labels")), "expected a dict with 'data' and 'labels'"),
        (lambda p: _rewrite(p, lambda e: e.update(labels=e["labels"][:-1])), "20 images but 'labels'"),
        (lambda p: _rewrite(p, lambda e: e.update(labels=[10] * 20)), "labels must lie in [0, 10)"),
    ],
    ids=["truncated", "wrong-shape", "no-labels", "label-count", "label-range"],
)
def test_a_damaged_cifar_file_is_an_error_naming_the_file(tmp_path, damage, says):
    fake = write_cifar(tmp_path)
    path = fake["folder"] / "data_batch_3"
    damage(path)
    with pytest.raises(CorruptDatasetError) as err:
        Cifar10(root=str(tmp_path), **SMALL_CIFAR)
    assert str(err.value).startswith(str(path)) and says in str(err.value)


def _shared_nested_labels(entry: dict) -> None:
    """20 labels, each one list shared five levels deep: a small pickle np.asarray would expand to 2 billion ints."""
    node: object = 0
    for width in (40, 40, 40, 40, 40):
        node = [node] * width
    entry["labels"] = [node] * 20


def test_labels_that_are_not_flat_integers_are_refused_before_numpy_expands_them(tmp_path):
    fake = write_cifar(tmp_path)
    path = fake["folder"] / "data_batch_2"
    _rewrite(path, _shared_nested_labels)
    assert path.stat().st_size < 200_000  # the pickle memo shares the lists: the file is small
    with pytest.raises(CorruptDatasetError) as err:
        Cifar10(root=str(tmp_path), **SMALL_CIFAR)
    assert str(err.value) == f"{path}: 'labels' must be a list of integer labels, found a list holding other things"
    _rewrite(path, lambda e: e.update(labels=[True] * 20))  # bools are not labels either
    with pytest.raises(CorruptDatasetError, match="must be a list of integer labels"):
        Cifar10(root=str(tmp_path), **SMALL_CIFAR)


def test_files_that_do_not_hold_the_expected_split_sizes_are_an_error(tmp_path):
    fake = write_cifar(tmp_path)
    with pytest.raises(CorruptDatasetError) as err:
        Cifar10(root=str(tmp_path))  # the real sizes: 45,000 + 5,000 training images
    msg = str(err.value)
    assert str(fake["folder"]) in msg and "holds 100 images" in msg
    assert "dataset.train_size + dataset.val_size = 50000" in msg


# -- Fashion-MNIST ----------------------------------------------------------------------------------


def test_fashion_mnist_reads_gzipped_idx_files(tmp_path):
    arrays = write_fashion_mnist(tmp_path / "fm")
    data = FashionMNIST(root=str(tmp_path / "fm"), **SMALL_FMNIST)
    assert (data.name, data.num_classes, data.in_channels, data.image_size) == ("fashion_mnist", 10, 1, 28)
    assert [data.size(s) for s in ("train", "val", "test")] == [24, 6, 10]
    images, labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    assert data.splits["train"].x.dtype == torch.uint8
    assert torch.equal(data.splits["val"].x[:, 0], torch.from_numpy(images[24:]))
    assert data.splits["train"].y.tolist() == labels[:24].tolist()
    x, y = gather(data.batches("test", 4))
    expected = normalised(arrays["t10k-images-idx3-ubyte"][:, None], data.mean, data.std)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
    assert y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert not data.augment  # grey 28x28 garments: augmentation is opt-in


def test_fashion_mnist_reads_plain_idx_files_in_torchvision_layout(tmp_path):
    arrays = write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    data = FashionMNIST(root=str(tmp_path), **SMALL_FMNIST)
    assert torch.equal(data.splits["test"].x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))


def test_an_idx_file_with_the_wrong_magic_number_is_named(tmp_path):
    arrays = write_fashion_mnist(tmp_path)
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", arrays["t10k-images-idx3-ubyte"], magic=2049)
    with pytest.raises(CorruptDatasetError, match="idx magic number 2049, expected 2051") as err:
        FashionMNIST(root=str(tmp_path), **SMALL_FMNIST)
    assert str(err.value).startswith(str(path))


def test_a_truncated_gzip_or_short_idx_file_is_named(tmp_path):
    write_fashion_mnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    _truncate(path)
    with pytest.raises(CorruptDatasetError) as err:
        FashionMNIST(root=str(tmp_path), **SMALL_FMNIST)
    assert str(err.value).startswith(f"{path}: cannot be read")
    plain = tmp_path / "plain"
    write_fashion_mnist(plain, gz=False)
    path = plain / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-784])  # one image short of what the header says
    with pytest.raises(CorruptDatasetError, match="its header") as err:
        FashionMNIST(root=str(plain), **SMALL_FMNIST)
    assert str(err.value).startswith(str(path))


def test_missing_fashion_mnist_names_the_path_the_files_and_how_to_get_them(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        FashionMNIST(root=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path) in msg and str(tmp_path / "FashionMNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg and "dataset.download=true" in msg


@pytest.mark.skipif(not SYSTEM_ROOT.is_dir(), reason=f"{SYSTEM_ROOT} absent: apt-get install dataset-fashion-mnist")
def test_the_default_root_finds_the_debian_package_and_its_constants_normalise_train():
    data = FashionMNIST()
    assert [data.size(s) for s in ("train", "val", "test")] == [55000, 5000, 10000]
    x = data.normalise(data.splits["train"].x)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3


# -- Tiny-ImageNet ----------------------------------------------------------------------------------


def test_tiny_imagenet_decodes_jpegs_and_carves_val_from_train_as_the_original(tmp_path):
    fake = write_tiny_imagenet(tmp_path)
    data = TinyImageNet(root=str(tmp_path), **SMALL_TINY)
    assert (data.name, data.num_classes, data.in_channels, data.image_size) == ("tiny_imagenet", 3, 3, 64)
    assert data.mean == (0.4802, 0.4481, 0.3975) and data.std == (0.2302, 0.2265, 0.2262)
    assert data.augment and data.crop_padding == 4
    perm = np.random.RandomState(10).permutation(36)  # the original: np.random.seed(10); permutation(100000)
    for split, order in (("train", perm[:30]), ("val", perm[30:])):
        s = data.splits[split]
        assert s.x.dtype == torch.uint8 and s.x.shape == (len(order), 3, 64, 64)
        assert s.y.tolist() == fake["pool_labels"][order].tolist()
        centre = s.x[:, :, 32, 32].int().numpy()
        assert np.abs(centre - fake["pool_colours"][order]).max() <= 3  # JPEG keeps flat colours within 3
    test = data.splits["test"]
    assert test.y.tolist() == fake["val_labels"].tolist()
    assert np.abs(test.x[:, :, 32, 32].int().numpy() - fake["val_colours"]).max() <= 3  # the grey one is RGB too


def test_missing_tiny_imagenet_names_the_path_the_files_and_how_to_get_them(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        TinyImageNet(root=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "tiny-imagenet-200") in msg
    assert "wnids.txt" in msg and "val/val_annotations.txt" in msg and "train/<wnid>/images/*.JPEG" in msg
    assert "dataset.download=true" in msg and TINY_URL in msg


def test_a_truncated_or_wrongly_sized_jpeg_is_named(tmp_path):
    from PIL import Image

    fake = write_tiny_imagenet(tmp_path)
    path = fake["folder"] / "train" / fake["wnids"][1] / "images" / f"{fake['wnids'][1]}_3.JPEG"
    _truncate(path)
    with pytest.raises(CorruptDatasetError, match="not a readable image") as err:
        TinyImageNet(root=str(tmp_path), **SMALL_TINY)
    assert str(err.value).startswith(str(path))
    Image.new("RGB", (32, 32), (1, 2, 3)).save(path)
    with pytest.raises(CorruptDatasetError, match="32x32 pixels, expected 64x64") as err:
        TinyImageNet(root=str(tmp_path), **SMALL_TINY)
    assert str(err.value).startswith(str(path))


def test_tiny_imagenet_index_files_are_checked(tmp_path):
    fake = write_tiny_imagenet(tmp_path)
    with pytest.raises(CorruptDatasetError, match="lists 3 classes, expected dataset.num_classes=200"):
        TinyImageNet(root=str(tmp_path))
    annotations = fake["folder"] / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(CorruptDatasetError, match="line 6") as err:
        TinyImageNet(root=str(tmp_path), **SMALL_TINY)
    assert str(err.value).startswith(str(annotations))


# -- configs ----------------------------------------------------------------------------------------


def _fake_for(name: str, root: Path) -> list[str]:
    """Write a fake of data set ``name`` under ``root``; return the size overrides it needs."""
    if name in ("cifar10", "cifar100"):
        write_cifar(root, kind=name)
        sizes = SMALL_CIFAR
    elif name == "tiny_imagenet":
        write_tiny_imagenet(root)
        sizes = SMALL_TINY
    else:
        write_fashion_mnist(root)
        sizes = SMALL_FMNIST
    return [f"dataset.{k}={v}" for k, v in sizes.items()]


@pytest.mark.parametrize(
    ("name", "cls"),
    [("cifar10", Cifar10), ("cifar100", Cifar100), ("tiny_imagenet", TinyImageNet), ("fashion_mnist", FashionMNIST)],
)
def test_each_dataset_option_builds_its_module_from_the_yaml(tmp_path, name, cls):
    sizes = _fake_for(name, tmp_path)
    cfg = compose_config([f"dataset={name}", f"dataset.root={tmp_path}", "dataset.num_workers=1", *sizes])
    data = build(cfg.dataset, "dataset")
    assert type(data) is cls and data.name == name and data.num_workers == 1
    assert data.mean == tuple(cfg.dataset.mean) and data.std == tuple(cfg.dataset.std)
    assert data.augment == (name != "fashion_mnist")


def test_missing_data_through_the_config_is_a_config_error_naming_the_group(tmp_path):
    cfg = compose_config(["dataset=cifar100", f"dataset.root={tmp_path}"])
    with pytest.raises(ConfigError) as err:
        build(cfg.dataset, "dataset")
    assert str(err.value).startswith("dataset: CIFAR-100 not found") and "cifar-100-python" in str(err.value)


def test_the_embedded_data_sets_still_build_and_batch_alike_with_workers():
    digits = build(compose_config().dataset, "dataset")
    assert isinstance(digits, Digits) and [digits.size(s) for s in ("train", "val", "test")] == [1437, 180, 180]
    assert (digits.in_channels, digits.image_size) == (1, 8) and digits.splits["train"].x.dtype == torch.float32
    workers = Digits(augment=True, loader="dataloader", num_workers=2)
    inline = Digits(augment=True)
    a, b = gather(inline.batches("train", 256, seed=1)), gather(workers.batches("train", 256, seed=1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    synthetic = build(compose_config(["dataset=synthetic"]).dataset, "dataset")
    assert isinstance(synthetic, Synthetic) and (synthetic.in_channels, synthetic.image_size) == (3, 32)


def test_every_data_module_names_the_schema_of_its_conf_file_and_takes_its_defaults_only_from_it():
    from helpers import CONF
    from hydra.utils import get_class

    from rsst.config.schema import GROUP_SCHEMAS
    from rsst.data.options import data_options, option_values
    from rsst.folder.safeload import load_yaml

    schemas = {name: node for group, name, node in GROUP_SCHEMAS if group == "dataset"}
    files = sorted((CONF / "dataset").glob("*.yaml"))
    assert len(files) == 7
    for path in files:
        raw = load_yaml(path)
        cls = get_class(raw["_target_"])
        named = raw["defaults"][0].removeprefix("/schema/dataset/").removesuffix("@_here_")
        assert cls.name == path.stem and cls.options is schemas[named], path.name
        options = data_options(cls, {})  # nothing given: every value is the file's
        values = option_values(path.stem)
        assert values and {k: getattr(options, k) for k in values} == values, path.name
        assert set(values) == {f for f in vars(options) if f != "_target_"}, path.name  # the file gives every key


def test_a_data_module_built_in_python_refuses_a_wrong_key_or_value_in_one_line(tmp_path):
    with pytest.raises(TypeError, match=r"^Digits\(\) got an unexpected keyword argument 'root' \(its options: "):
        Digits(root="data")
    with pytest.raises(ValueError, match=r"^dataset.val_size=0 is invalid: expected an integer >= 1 \(the best"):
        Digits(val_size=0)
    with pytest.raises(ValueError, match=r"^dataset.std=\[0.3, 0.0, 0.3\] is invalid: expected a list of numbers > 0"):
        Cifar10(root=str(tmp_path), std=(0.3, 0.0, 0.3))


def test_the_digits_are_read_from_scikit_learns_file_exactly_as_load_digits_gives_them():
    from sklearn.datasets import load_digits

    from rsst.data.digits import digits_arrays

    images, target = digits_arrays()
    bunch = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == bunch.images.dtype
    assert np.array_equal(images, bunch.images) and np.array_equal(target, bunch.target)
