"""The typed schema of a run's config: Hydra structured configs, registered in its ConfigStore.

One dataclass per top-level section (``prune``, ``train``, ``lr_schedule``, ``paths``) and one per
option of every config group (``conf/<group>/<option>.yaml`` names its schema in its defaults list,
``/schema/<group>/<name>@_here_``). The schema is the single source of:

- **types**: a value of the wrong type (``train.epochs=abc``) is refused while Hydra composes;
  :mod:`rsst.commands.train` turns that into one line naming the key, the value and what is allowed;
- **defaults** of the top-level keys (``conf/config.yaml`` holds only the defaults list and Hydra's
  settings); a group option's values are its YAML file, the schema gives their types;
- **ranges and choices**: each field's :func:`rule` (what is expected, and a predicate), which
  :func:`rsst.config.checks.validate_config` applies once, with the cross-key rules, before anything
  is built.

Choices are plain strings checked by their rule, not ``Enum`` fields: an Enum member would travel
into the checkpoint and ``provenance.json`` as a pickled class, and a bare ``off`` in YAML reads as
``false`` (both mean ``off`` for ``train.amp`` and ``train.compile``).

Numbers that may be written either way (``lr: 1`` or ``lr: 0.1``) are ``int | float``: converting
``1`` to ``1.0`` would change the config's hash, and so the folder name of existing runs.

Imports nothing heavy (no torch): ``--help`` and ``--cfg job`` compose with it.
"""

# ruff: noqa: UP006, UP007, UP045  (OmegaConf reads these typing forms at run time)
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, List, Optional, Union  # noqa: UP035

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

Num = Union[int, float]

REWIND_MODES = ("init", "epoch", "pretrained", "step")
CONTROLS = ("reinit", "shuffle_layerwise")
PENALTY_SCOPES = ("weights", "channels")
PERIODS = ("round", "epoch")
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
LOADERS = ("auto", "device", "dataloader")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _is_num(v) and v == v and v not in (float("inf"), float("-inf"))


def _numbers(v: Any) -> bool:
    return isinstance(v, list) and len(v) >= 1 and all(_finite(x) for x in v)


def _off(v: Any) -> Any:
    return "off" if v is False else v


# The most an integer field may be, with why (the end of the error line). Every count has a bound, so a
# typo such as train.epochs=10**26 is one line before anything runs, not a run that never ends; the
# bounds are far beyond any real use. INT_MOST is the bound of the counts not named below.
INT_MOST = (2**31 - 1, " (a 32-bit count)")
MOST_ROUNDS = (1000, " (at prune.rate=0.2, 0.8**1000 of the weights would remain)")
MOST_EPOCHS = (100_000, " epochs")
MOST_SEED = (2**32 - 1, " (PyTorch keeps a seed's low 32 bits)")
MOST_TIMEOUT = (7 * 24 * 3600, " seconds (a week)")


def rule(
    default: Any = MISSING,
    expected: str = "",
    ok: Callable[[Any], bool] | None = None,
    factory: Any = None,
    most: tuple[int, str] | None = None,
):
    """A field with its range rule: ``expected`` says in words what ``ok`` accepts (the error message's end);
    ``most`` is ``(the largest value allowed, why)``, said only to a value above it."""
    meta = {"expected": expected, "ok": ok, "most": most}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def broken(f: Any, value: Any) -> str | None:
    """What field ``f`` (a dataclass field made by :func:`rule`) expects, in words, if ``value`` breaks its rule;
    None if it keeps it."""
    ok = f.metadata.get("ok")
    if ok is not None and not ok(value):
        return f.metadata["expected"]
    most = f.metadata.get("most")
    if most is not None and _is_num(value) and value > most[0]:
        return f"at most {most[0]}{most[1]}"
    return None


def int_at_least(low: int, default: Any = MISSING, note: str = "", most: tuple[int, str] = INT_MOST) -> Any:
    return rule(default, f"an integer >= {low}{note}", lambda v: _is_int(v) and v >= low, most=most)


def optional_int_at_least(low: int, default: Any = None) -> Any:
    return rule(
        default, f"null or an integer >= {low}", lambda v: v is None or (_is_int(v) and v >= low), most=INT_MOST
    )


def positive(default: Any = MISSING) -> Any:
    return rule(default, "a finite number > 0", lambda v: _finite(v) and v > 0)


def at_least_zero(default: Any = MISSING) -> Any:
    return rule(default, "a finite number >= 0", lambda v: _finite(v) and v >= 0)


def fraction(default: Any = MISSING, open_top: bool = True, what: str = "", nullable: bool = False) -> Any:
    top = "1)" if open_top else "1]"
    inside = (lambda v: 0 < v < 1) if open_top else (lambda v: 0 < v <= 1)
    words = f"a number in (0, {top}{what}"
    if nullable:
        return rule(default, f"null or {words}", lambda v: v is None or (_finite(v) and inside(v)))
    return rule(default, words, lambda v: _finite(v) and inside(v))


# ---------------------------------------------------------------------------------------------- top level


@dataclass
class Prune:
    rounds: int = int_at_least(1, 3, " (round 0 is the dense network)", MOST_ROUNDS)  # original: --pruning_times
    rate: Num = fraction(0.2, what=": the fraction of alive weights removed")  # per round, of the alive weights
    # baselines (snip, grasp, synflow, omp, random, admm): fraction of prunable weights kept from round 1 on;
    # null: the IMP-equivalent density of each round
    density: Optional[Num] = fraction(
        None, open_top=False, what=": the fraction of prunable weights kept", nullable=True
    )
    rewind: str = rule("init", f"one of {', '.join(REWIND_MODES)}", lambda v: v in REWIND_MODES)  # lt | rewind_lt | pt
    rewind_epoch: int = int_at_least(0, 0)  # rewind=epoch: to the weights after this many epochs of round 0
    # rewind=step: to the weights after this many optimizer steps of round 0; a pruned round then trains the
    # rest of round 0's schedule from that step (OpenLTH's --rewinding_steps=<k>it); 0 is rewind=init
    rewind_step: int = int_at_least(0, 0)
    pretrained: Optional[str] = None  # rewind=pretrained: a state_dict file
    include_stem: bool = False  # prune the stem conv too
    include_fc: bool = False  # prune every Linear layer too (the classifier among them)
    # include_fc: each Linear layer pruned on its own at this rate per round (the convs globally at prune.rate);
    # null (and rate_output null): one global ranking at prune.rate
    rate_fc: Optional[Num] = fraction(None, what=": the rate of each fully connected layer", nullable=True)
    rate_output: Optional[Num] = fraction(None, what=": the rate of the classifier", nullable=True)  # null: rate_fc
    # lottery-ticket controls trained on every pruned round's ticket, after it: reinit (same mask, fresh
    # random init) | shuffle_layerwise (random mask with the same per-layer counts, or channel counts for
    # channel tickets, from the rewind point)
    controls: List[str] = rule(
        expected=f"a list of distinct controls from {', '.join(CONTROLS)}, e.g. [reinit,shuffle_layerwise]",
        ok=lambda v: isinstance(v, list) and all(c in CONTROLS for c in v) and len(set(v)) == len(v),
        factory=list,
    )
    # linear-mode stability (Frankle et al. 2020): after each round, a second copy trains from the rewind point with
    # the round's masks under another data order; the error along the straight line between the two is recorded
    stability: bool = False
    stability_points: int = int_at_least(2, 11, " (points on the path, both ends included)")


@dataclass
class Train:
    epochs: int = int_at_least(1, 12, most=MOST_EPOCHS)
    batch_size: int = int_at_least(1, 64)
    eval_batch_size: int = int_at_least(1, 1024)  # evaluation runs under inference_mode, this many images at a time
    # autocast: bf16 | fp16 | off; auto: bf16 on CUDA and on a CPU where bf16 is faster (AMX), off elsewhere
    amp: Union[str, bool] = rule("auto", f"one of {', '.join(AMP_CHOICES)}", lambda v: _off(v) in AMP_CHOICES)
    # NHWC layout for convolutions: true | false; auto: on for CUDA and CPU
    channels_last: Union[str, bool] = rule("auto", "auto, true or false", lambda v: v == "auto" or isinstance(v, bool))
    # torch.compile once per run: off | default | reduce-overhead (CUDA graphs) | max-autotune
    compile: Union[str, bool] = rule("off", f"one of {', '.join(COMPILE_MODES)}", lambda v: _off(v) in COMPILE_MODES)


@dataclass
class LrSchedule:
    # linear warmup per step over this many epochs (original: --warmup)
    warmup_epochs: int = int_at_least(0, 0, most=MOST_EPOCHS)
    milestones: List[int] = rule(  # epochs at which lr *= gamma (original: --decreasing_lr)
        expected="an ascending list of positive epoch numbers, e.g. [91,136]",
        ok=lambda v: isinstance(v, list) and all(_is_int(m) and m > 0 for m in v) and v == sorted(v),
        factory=lambda: [8, 11],
    )
    gamma: Num = fraction(0.1, open_top=False)


@dataclass
class Paths:
    root: Optional[str] = None  # null: runs/ for a single run, the sweep folder for a multirun
    run_dir: Optional[str] = None  # an explicit run folder instead of root/<name>_<hash>


@dataclass
class Config:
    """The whole run. The groups are filled by ``conf/<group>/<option>.yaml``, typed by their own schema."""

    dataset: Any = MISSING
    arch: Any = MISSING
    struct: Any = MISSING
    criteria: Any = MISSING
    schedule: Any = MISSING
    optimizer: Any = MISSING
    logger: Any = MISSING
    seed: int = int_at_least(0, 0, most=MOST_SEED)
    device: str = rule(  # auto picks CUDA when present, else CPU
        "auto",
        "one of auto, cpu, cuda, cuda:N, mps",
        lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
    )
    progress: bool = True  # a progress bar per epoch
    # multi-process runs: how long a rank waits in a collective (or to join) before the run stops with one line
    # naming the rank that stalled; not part of the run's identity
    collective_timeout_s: int = int_at_least(1, 600, most=MOST_TIMEOUT)
    prune: Prune = field(default_factory=Prune)
    train: Train = field(default_factory=Train)
    lr_schedule: LrSchedule = field(default_factory=LrSchedule)
    paths: Paths = field(default_factory=Paths)


# ---------------------------------------------------------------------------------------------- groups
# Every field is MISSING: the option's YAML file gives the value, the schema its type and rule.


@dataclass
class Target:
    _target_: str = MISSING


@dataclass
class Partial(Target):
    # the run calls what the option builds (a model factory with the data's shape, an optimiser with the parameters)
    _partial_: bool = rule(True, "true (the run calls the option with its own arguments)", lambda v: v is True)


@dataclass
class Data(Target):
    val_size: int = int_at_least(1, note=" (the best epoch is chosen on it)")
    test_size: int = int_at_least(1)
    augment: bool = MISSING
    # device: the data lives on the training device, batches are cut there; dataloader: a CPU DataLoader
    # (same batches); auto: device unless it would take over half of a GPU's free memory
    loader: str = rule(MISSING, f"one of {', '.join(LOADERS)}", lambda v: v in LOADERS)
    num_workers: int = int_at_least(0)  # loader=dataloader: worker processes (0: the main process)
    pin_memory: bool = MISSING  # loader=dataloader with CUDA: pinned host batches, copied asynchronously


@dataclass
class Synthetic(Data):
    num_classes: int = int_at_least(2)
    in_channels: int = int_at_least(1)
    image_size: int = int_at_least(1)
    train_size: int = int_at_least(1)
    noise: Num = at_least_zero()
    seed: int = int_at_least(0)


@dataclass
class FileData(Data):
    """A data set read from files under ``root``, with a normalisation and subsets for a quick look."""

    root: Optional[str] = MISSING
    train_size: int = int_at_least(1)
    # List[Any], not List[Num]: OmegaConf 2.3 hands a List[Union] to a constructor as Union nodes
    mean: List[Any] = rule(MISSING, "a list of numbers, one per channel", lambda v: _numbers(v))
    std: List[Any] = rule(MISSING, "a list of numbers > 0, one per channel", lambda v: _numbers(v) and min(v) > 0)
    train_subset: Optional[int] = optional_int_at_least(1)  # keep only the first N train images
    eval_subset: Optional[int] = optional_int_at_least(1)  # keep only the first N val and N test images


@dataclass
class Cifar(FileData):
    download: bool = MISSING  # true: fetch it with torchvision when missing
    crop_padding: Optional[int] = optional_int_at_least(0, MISSING)


@dataclass
class TinyImageNet(Cifar):
    num_classes: int = int_at_least(2)
    split_seed: int = int_at_least(0)


@dataclass
class ImageNet(FileData):
    split_seed: int = int_at_least(0)
    image_size: int = int_at_least(1)
    resize_size: int = int_at_least(1)


@dataclass
class CifarResNet(Partial):
    width: int = int_at_least(1, note=" (channels of the first stage)")


@dataclass
class ResNet(Partial):
    stem: str = MISSING


@dataclass
class DenseNet(ResNet):
    memory_efficient: bool = MISSING


@dataclass
class Refill(Target):
    criteria: Any = MISSING
    fillback_rate: Num = rule(MISSING, "a number in [0, 1]", lambda v: _finite(v) and 0 <= v <= 1)


@dataclass
class RSST(Refill):
    schedule: Any = MISSING
    block_loss_grad: bool = MISSING
    # weights: the penalty on P_r (the original) | channels: also on the BatchNorm gamma of the channels dropped
    penalty_scope: str = rule("weights", f"one of {', '.join(PENALTY_SCOPES)}", lambda v: v in PENALTY_SCOPES)


@dataclass
class Batched(Target):
    batches: int = int_at_least(1)


@dataclass
class GraSP(Batched):
    temperature: Num = positive()


@dataclass
class SynFlow(Target):
    iterations: int = int_at_least(1)


@dataclass
class RandomMask(Target):
    mode: str = MISSING


@dataclass
class ADMM(Target):
    rho: Num = positive()
    update_every: int = int_at_least(1)


@dataclass
class Schedule(Target):
    reg_granularity_prune: Num = at_least_zero()  # g = 0: the control without a penalty
    # round: T = the steps of the round | epoch: T = the steps of an epoch
    period: str = rule(MISSING, f"one of {', '.join(PERIODS)}", lambda v: v in PERIODS)


@dataclass
class ExpCustomExponents(Schedule):
    exponents: Num = positive()


@dataclass
class Stepped(Schedule):
    kind: str = MISSING
    update_every: int = int_at_least(1)
    ceiling: Num = positive()


@dataclass
class Optimizer(Partial):
    lr: Num = positive()
    weight_decay: Num = at_least_zero()


@dataclass
class SGD(Optimizer):
    momentum: Num = rule(MISSING, "a number in [0, 1)", lambda v: _finite(v) and 0 <= v < 1)
    nesterov: bool = MISSING


@dataclass
class Adam(Optimizer):
    betas: List[Any] = rule(
        MISSING,
        "two numbers in [0, 1), e.g. [0.9,0.999]",
        lambda v: isinstance(v, list) and len(v) == 2 and all(_finite(b) and 0 <= b < 1 for b in v),
    )
    eps: Num = positive()


@dataclass
class Wandb(Target):
    project: str = MISSING
    entity: Optional[str] = MISSING
    group: Optional[str] = MISSING
    mode: Optional[str] = MISSING
    tags: List[str] = MISSING


# (group, schema name, node): the names conf/<group>/<option>.yaml refer to as /schema/<group>/<name>.
GROUP_SCHEMAS: tuple[tuple[str, str, type], ...] = (
    ("dataset", "data", Data),
    ("dataset", "synthetic", Synthetic),
    ("dataset", "cifar", Cifar),
    ("dataset", "tiny_imagenet", TinyImageNet),
    ("dataset", "imagenet", ImageNet),
    ("arch", "plain", Partial),
    ("arch", "cifar_resnet", CifarResNet),
    ("arch", "resnet", ResNet),
    ("arch", "densenet", DenseNet),
    ("struct", "plain", Target),
    ("struct", "refill", Refill),
    ("struct", "rsst", RSST),
    ("struct", "batched", Batched),
    ("struct", "grasp", GraSP),
    ("struct", "synflow", SynFlow),
    ("struct", "random", RandomMask),
    ("struct", "admm", ADMM),
    ("criteria", "plain", Target),
    ("criteria", "batched", Batched),
    ("schedule", "exp_custom", Schedule),
    ("schedule", "exp_custom_exponents", ExpCustomExponents),
    ("schedule", "stepped", Stepped),
    ("optimizer", "sgd", SGD),
    ("optimizer", "adam", Adam),
    ("logger", "plain", Target),
    ("logger", "wandb", Wandb),
)

SCHEMA_NAME = "rsst_schema"


def register() -> None:
    """Put the schema into Hydra's ConfigStore (idempotent): ``conf/`` names it, so compose needs it."""
    cs = ConfigStore.instance()
    cs.store(name=SCHEMA_NAME, node=Config)
    for group, name, node in GROUP_SCHEMAS:
        cs.store(group=f"schema/{group}", name=name, node=node)


register()
