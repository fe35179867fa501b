"""docs/extending.md's three worked examples, as the page writes them: its code blocks go into a scratch copy of the
project (conf/ copied, the new modules loaded under their dotted names, the schema rows stored in Hydra's
ConfigStore), its commands are composed and validated, and the new method, model and data set are built and used."""

from __future__ import annotations
import __future__

import importlib.util
import re
import shlex
import shutil
import sys

import numpy as np
import pytest
import torch
from helpers import CONF, ROOT
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rsst.config import schema
from rsst.config.checks import ConfigError, build, validate_config
from rsst.config.sweeps import job_overrides
from rsst.models.prunable import prunable_weights
from rsst.pruning.masks import Masks
from rsst.pruning.strategies import IMP, PruneContext

PAGE = ROOT / "docs" / "extending.md"
NEW_FILES = {
    "rsst/pruning/layerwise.py",
    "conf/struct/layerwise_imp.yaml",
    "rsst/models/tiny.py",
    "conf/arch/tiny_cnn.yaml",
    "rsst/data/npz.py",
    "conf/dataset/npz.yaml",
}


def sections() -> dict[str, str]:
    """The page's ``## `` sections by heading."""
    parts = re.split(r"^## (.+)$", PAGE.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def blocks(text: str) -> list[tuple[str, str, str]]:
    """``(language, file named on the first line, body)`` of every code block that names its file."""
    out = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        first = body.splitlines()[0]
        if lang in ("python", "yaml") and re.fullmatch(r"# [\w/]+\.(py|yaml)", first):
            out.append((lang, first[2:], body))
    return out


def launch_lines(text: str) -> list[list[str]]:
    out = []
    for body in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in body.splitlines():
            argv = shlex.split(line)
            assert argv[:2] == ["python", "launch.py"], line
            out.append(argv[2:])
    return out


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A copy of conf/ with the page's options, its modules importable, its schemas stored; yields the conf folder."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    store = ConfigStore.instance()
    stored = []
    # the schema's blocks first: a module the page writes imports its dataclass from rsst.config.schema
    for lang, path, body in sorted(blocks(PAGE.read_text()), key=lambda b: b[1] != "rsst/config/schema.py"):
        if path == "rsst/config/schema.py":  # dataclasses beside the schema's own, and their GROUP_SCHEMAS rows
            names = dict(vars(schema))
            flags = __future__.annotations.compiler_flag
            exec(compile(body, str(PAGE), "exec", flags=flags, dont_inherit=True), names)
            for group, name, node in (row for row in names["GROUP_SCHEMAS"] if row is not Ellipsis):
                store.store(group=f"schema/{group}", name=name, node=node)
                stored.append((group, name))
                monkeypatch.setattr(schema, node.__name__, node, raising=False)  # importable, as if written there
        elif lang == "yaml":
            (tmp_path / path).write_text(body)
        else:
            file = tmp_path / path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(body)
            dotted = path.removesuffix(".py").replace("/", ".")
            spec = importlib.util.spec_from_file_location(dotted, file)
            module = importlib.util.module_from_spec(spec)
            monkeypatch.setitem(sys.modules, dotted, module)
            spec.loader.exec_module(module)
            parent, _, leaf = dotted.rpartition(".")
            monkeypatch.setattr(sys.modules[parent], leaf, module, raising=False)
    monkeypatch.setattr("rsst.data.options.conf_dir", lambda: conf)  # the scratch copy's conf/dataset files
    monkeypatch.setattr("rsst.config.registry.CONF_DIR", conf)  # its options' targets are the ones a run may build
    yield conf
    for group, name in stored:
        del store.repo["schema"][group][f"{name}.yaml"]


def compose_in(conf, overrides):
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def composed_commands(conf, section: str) -> list:
    """Every command of the section, each job composed in ``conf`` and validated."""
    configs = []
    lines = launch_lines(sections()[section])
    assert lines, f"no commands in {section}"
    for args in lines:
        overrides = [a for a in args if a != "-m"]
        jobs = [overrides]
        if "-m" in args:
            jobs = job_overrides(OmegaConf.create({"hydra": {"overrides": {"task": overrides}}}))
        for job in jobs:
            cfg = compose_in(conf, job)
            validate_config(cfg)
            configs.append(cfg)
    return configs


def tiny_resnet(conf):
    cfg = compose_in(conf, ["arch.width=4"])
    return instantiate(cfg.arch)(num_classes=10, in_channels=1, image_size=8)


def context(model, masks, rate=0.2, include_fc=False):
    weights = {n: p for n, p in prunable_weights(model, include_fc=include_fc).items()}
    return PruneContext(round=1, model=model, weights=weights, masks=masks, rate=rate, batches=lambda: iter(()))


def test_the_page_writes_out_every_new_file_and_the_schema_and_conf_do_not_already_have_them():
    paths = [path for _, path, _ in blocks(PAGE.read_text())]
    assert set(paths) == {*NEW_FILES, "rsst/config/schema.py"}, paths
    assert paths.count("rsst/config/schema.py") == 2
    assert not [p for p in NEW_FILES if (ROOT / p).exists()]


def test_the_pruning_method_composes_validates_and_prunes_every_layer_at_the_rate(project):
    configs = composed_commands(project, "A pruning method")
    assert [c.struct._target_.rsplit(".", 1)[-1] for c in configs] == ["LayerwiseIMP"] * 2 + ["IMP"] * 3 + [
        "LayerwiseIMP"
    ] * 3
    strategy = instantiate(configs[0].struct)
    model = tiny_resnet(project)
    weights = prunable_weights(model)
    plan = strategy.plan(context(model, Masks.ones_like(weights)))
    for name, mask in plan.final.items():
        n = mask.numel()
        assert int(mask.sum()) == n - round(0.2 * n), name  # each layer on its own, not one global ranking
    assert plan.train.equal(plan.final)
    # a layer at or below min_density stays as it is
    strict = instantiate(compose_in(project, ["struct=layerwise_imp", "struct.min_density=0.85"]).struct)
    assert strict.plan(context(model, plan.final)).final.equal(plan.final)
    # the refusal the page quotes
    line = re.search(r"`(struct\.min_density=1\.5 is invalid: [^`]+)`", sections()["A pruning method"])[1]
    with pytest.raises(ConfigError) as err:
        validate_config(compose_in(project, ["struct=layerwise_imp", "struct.min_density=1.5"]))
    assert str(err.value) == line


def test_the_model_composes_builds_and_is_pruned_by_imp_and_by_whole_channels(project):
    configs = composed_commands(project, "A model")
    assert len(configs) == 2
    model = instantiate(configs[0].arch)(num_classes=10, in_channels=1, image_size=8)
    assert model(torch.rand(4, 1, 8, 8)).shape == (4, 10)
    assert list(prunable_weights(model)) == ["conv2.weight"]  # the stem is not pruned
    assert list(prunable_weights(model, include_fc=True)) == ["conv2.weight", "fc.weight"]
    weights = prunable_weights(model)
    refill = instantiate(configs[0].struct)  # struct=refill criteria=magnitude
    channels = refill.plan(context(model, Masks.ones_like(weights))).final["conv2.weight"].flatten(1)
    kept = channels.sum(1)
    assert set(kept.tolist()) <= {0.0, float(channels.shape[1])}  # whole output channels
    assert 0 < int((kept == 0).sum()) < channels.shape[0]
    imp = IMP().plan(context(model, Masks.ones_like(prunable_weights(model, include_fc=True)), include_fc=True))
    alive = sum(int(m.sum()) for m in imp.final.values())
    total = sum(m.numel() for m in imp.final.values())
    assert alive == total - round(0.2 * total)


def test_the_data_set_composes_loads_its_file_and_names_it_when_it_is_missing(project, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    gen = np.random.default_rng(0)
    x = gen.integers(0, 256, size=(300, 1, 8, 8), dtype=np.uint8)
    np.savez(root / "images.npz", x=x, y=np.arange(300) % 3)
    configs = composed_commands(project, "A data set")
    assert len(configs) == 2
    data = build(
        compose_in(
            project, ["dataset=npz", f"dataset.root={root}", *(f"dataset.{k}=10" for k in ("val_size", "test_size"))]
        ).dataset,
        "dataset",
    )
    assert [data.size(s) for s in ("train", "val", "test")] == [280, 10, 10]
    assert (data.num_classes, data.in_channels, data.image_size) == (3, 1, 8)
    images, labels = next(data.batches("train", 8, seed=0))
    assert images.shape == (8, 1, 8, 8) and images.dtype == torch.float32 and labels.shape == (8,)
    assert abs(float(data.normalise(data.splits["train"].x).mean())) < 1e-4
    with pytest.raises(ConfigError) as err:
        build(configs[0].dataset, "dataset")  # dataset.root=data/my_images: not there
    assert str(err.value) == "dataset: npz images not found: expected data/my_images/images.npz, holding arrays x and y"
    # built in Python with only a root, it takes the other options from conf/dataset/npz.yaml (val and test 100)
    direct = sys.modules["rsst.data.npz"].NpzImages(root=str(root))
    assert [direct.size(s) for s in ("train", "val", "test")] == [100, 100, 100]
    assert (direct.augment, direct.loader_choice) == (False, "auto")
    # the last command puts the three examples together: the data set's shape builds the model, the method prunes it
    last = configs[1]
    data = build(compose_in(project, [*last_overrides(), f"dataset.root={root}"]).dataset, "dataset")
    model = instantiate(last.arch)(
        num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size
    )
    plan = instantiate(last.struct).plan(context(model, Masks.ones_like(prunable_weights(model))))
    assert int(plan.final["conv2.weight"].sum()) == 32 * 16 * 9 - round(0.2 * 32 * 16 * 9)


def last_overrides() -> list[str]:
    return launch_lines(sections()["A data set"])[-1]
