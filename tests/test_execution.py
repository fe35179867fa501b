"""The hot loop's knobs: autocast, channels_last, multi-tensor optimisers, and compile once per run."""

from __future__ import annotations

import functools

import pytest
import torch

from rsst.config.checks import ConfigError, validate_config
from rsst.folder.checkpoint import load_checkpoint
from rsst.folder.naming import config_hash, run_directory
from rsst.folder.tickets import load_masks
from rsst.loop.hot_loop import train_epoch
from rsst.loop.optim import build_optimizer, build_scheduler
from rsst.loop.run import RoundLoop
from rsst.models.cifar_resnet import resnet20
from rsst.models.prunable import prunable_weights
from rsst.pruning.masks import Masks, apply_masks_, global_magnitude_prune
from rsst.runtime.execution import Execution, compile_model
from rsst.runtime.precision import fast_bf16_cpu

CPU = torch.device("cpu")


def small_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = resnet20(num_classes=4, in_channels=3, width=8)
    weights = prunable_weights(model)
    masks = global_magnitude_prune(weights, Masks.ones_like(weights), 0.5)
    apply_masks_(weights.values(), masks.values())
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 4, (16,), generator=gen)) for _ in range(3)]
    return model, weights, masks, batches


def one_epoch(model, weights, masks, batches, execution=None, hook=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = build_scheduler(opt, len(batches), 0, [], 0.1)
    w, m = list(weights.values()), list(masks.like(weights).values())  # the loop's masks: in the weights' layout
    return train_epoch(model, batches, opt, sched, w, m, grad_hook=hook, execution=execution)


def test_auto_settings_are_channels_last_and_bf16_only_where_bf16_is_faster_on_the_cpu():
    run = Execution.from_config("auto", "auto", CPU)
    native = fast_bf16_cpu()[0]  # fp32 on a CPU without AMX (tests/test_precision.py)
    assert run.amp == (torch.bfloat16 if native else None) and run.channels_last is True and run.scaler is None
    assert Execution.from_config("auto", "auto", torch.device("mps")).channels_last is False
    assert Execution.from_config("bf16", True, CPU).amp == torch.bfloat16
    fp16 = Execution.from_config("fp16", False, CPU)
    assert fp16.amp == torch.float16 and fp16.scaler is not None


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_training_keeps_fp32_weights_and_pruned_weights_at_zero(amp):
    model, weights, masks, batches = small_setup()
    stats = one_epoch(model, weights, masks, batches, Execution.from_config(amp, False, CPU))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert sum(int((w[masks[n] == 0] != 0).sum()) for n, w in weights.items()) == 0
    assert torch.isfinite(torch.tensor(stats["train_loss"])) and stats["train_loss"] > 0
    # the forward really ran in the low precision
    with torch.autocast("cpu", dtype=Execution.from_config(amp, False, CPU).amp):
        assert model(batches[0][0]).dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def test_the_penalty_hook_sees_unscaled_gradients_under_fp16():
    """GradScaler multiplies the loss by 65536; the hook must run after unscaling, on true gradients."""
    norms = {}
    for amp in ("off", "fp16"):
        model, weights, masks, batches = small_setup()
        first = next(iter(weights.values()))
        seen = []

        def hook(w=first, seen=seen) -> None:
            seen.append(float(w.grad.norm()))

        one_epoch(model, weights, masks, batches[:1], Execution.from_config(amp, False, CPU), hook)
        norms[amp] = seen[0]
    assert norms["off"] > 0
    assert 0.8 < norms["fp16"] / norms["off"] < 1.25, norms


def test_channels_last_gives_the_same_outputs_and_step_as_the_default_layout():
    """Same outputs and the same first step, to float rounding (later steps amplify rounding, in any layout)."""
    results = []
    for layout in (False, True):
        model, weights, masks, batches = small_setup()
        run = Execution.from_config("off", layout, CPU)
        run.prepare(model)
        conv = dict(model.named_modules())["layer1.0.conv1"]
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == layout
        model.eval()
        before = model(run.layout(batches[1][0])).detach()
        one_epoch(model, weights, masks, batches[:1], run)
        assert sum(int((w[masks[n] == 0] != 0).sum()) for n, w in weights.items()) == 0
        results.append((before, [p.detach().clone() for p in model.parameters()]))
    (out_a, params_a), (out_b, params_b) = results
    assert (out_a - out_b).abs().max() < 1e-4 * out_a.abs().max()
    assert max(float((a - b).abs().max()) for a, b in zip(params_a, params_b, strict=True)) < 1e-5


def test_the_optimiser_uses_multi_tensor_kernels_unless_the_config_chose():
    params = [torch.nn.Parameter(torch.randn(3))]
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    assert build_optimizer(sgd, params, CPU).defaults["foreach"] is True
    chosen = functools.partial(torch.optim.SGD, lr=0.1, foreach=False)
    assert build_optimizer(chosen, params, CPU).defaults["foreach"] is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.amp=fp8", "train.amp='fp8' is invalid: expected one of auto, bf16, fp16, off"),
        ("train.channels_last=maybe", "train.channels_last='maybe' is invalid: expected auto, true or false"),
        ("train.compile=fast", "train.compile='fast' is invalid: expected one of off, default, reduce-overhead"),
    ],
)
def test_a_wrong_execution_setting_is_named_before_training(fast_cfg, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_config(fast_cfg(override))


def test_compile_layout_and_loader_do_not_change_the_run_folder_but_precision_does(fast_cfg):
    base = config_hash(fast_cfg())
    same = ("train.compile=default", "train.channels_last=true", "dataset.loader=dataloader", "train.eval_batch_size=7")
    assert config_hash(fast_cfg(*same)) == base
    assert config_hash(fast_cfg("train.amp=bf16")) != base


def compiled_frames() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["frames"].values()) if "frames" in counters else 0


@pytest.mark.slow
def test_compile_default_gives_the_same_masks_and_compiles_once_per_run(fast_cfg, tmp_path):
    """Refill rounds with ``train.compile=default`` end with the weights and masks of the eager loop,
    and no round after the first compiles anything new.

    A small step size without momentum keeps training out of the chaotic regime: at lr 0.1 with
    momentum, even a 1e-6 change of the initial weights grows to 1e-1 within an epoch, in any mode.
    Batches of 479 split the 1,437 digits evenly, so no partial batch adds a shape to compile.
    """
    import torch._dynamo

    torch._dynamo.reset()
    # fp32 on every CPU: with auto, a CPU with AMX trains in bf16, where compiled and eager kernels round apart
    settings = ("struct=refill", "prune.rounds=3", "train.epochs=2", "train.batch_size=479", "train.amp=off")
    sgd = ("optimizer.lr=0.002", "optimizer.momentum=0.0")
    weights, masks, frames = {}, {}, {}
    for mode in ("off", "default"):
        cfg = fast_cfg(*settings, *sgd, f"train.compile={mode}", f"paths.root={tmp_path / mode}")
        run_dir = run_directory(cfg)
        run_dir.mkdir(parents=True)
        loop = RoundLoop(cfg, run_dir)
        loop.fresh_start()
        frames[mode] = []
        for _ in range(3):
            loop.begin_round()
            for _ in range(cfg.train.epochs):
                loop.run_epoch()
            loop.end_round()
            frames[mode].append(compiled_frames())
        weights[mode] = torch.load(run_dir / "weights" / "round_0.pt", weights_only=True)
        masks[mode] = [Masks(load_masks(run_dir / "masks" / f"round_{r}.pt")) for r in range(3)]
    drift = max(float((weights["off"][k].float() - w.float()).abs().max()) for k, w in weights["default"].items())
    assert drift < 5e-4, f"trained dense weights differ by {drift}"  # 1.05e-4 seen on a Xeon with AMX
    for r in (1, 2):
        assert masks["off"][r].equal(masks["default"][r]), f"round {r} masks differ"
    assert masks["default"][2].channel_sparsity() > 0.2
    first, second, third = frames["default"]
    assert first > frames["off"][-1], "compile=default compiled nothing"
    assert third == second == first, f"frames compiled after rounds 0, 1, 2: {frames['default']}"


class SyncGuardOff:
    """Stands in for the progress bar: turns the sync guard off after the last step, before the epoch's
    one deliberate read of its loss and accuracy."""

    def __init__(self, steps: int) -> None:
        self.steps, self.seen = steps, 0

    def update(self, n: int) -> None:
        self.seen += n
        if self.seen == self.steps:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to check for host synchronisation")
def test_the_rsst_hot_loop_never_synchronises_with_the_gpu():
    """Device batches (cut, cropped, flipped, normalised), bf16 autocast, channels_last, the fused
    optimiser, the RSST penalty and the in-place masks: not one host synchronisation per step."""
    from rsst.data.base import Split, TensorDataModule
    from rsst.data.options import Serving
    from rsst.pruning.regularizer import ExpCustomExponentsSchedule, RSSTPenalty

    device = torch.device("cuda")
    torch.manual_seed(0)
    x, y = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (512,))
    data = TensorDataModule(Split(x, y), Split(x, y), Split(x, y), 10, [0.5] * 3, [0.25] * 3, Serving(augment=True))
    run = Execution.from_config("bf16", True, device)
    model = run.prepare(resnet20(num_classes=10).to(device))
    weights = prunable_weights(model)
    masks = global_magnitude_prune(weights, Masks.ones_like(weights).to(device), 0.2)
    train = list(masks.like(weights).values())  # as the round loop makes them: in the weights' layout
    penalised = list(Masks({n: m * (torch.rand_like(m) < 0.1) for n, m in masks.items()}).like(weights).values())
    opt = build_optimizer(functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), model.parameters(), device)
    assert opt.defaults["fused"] is True
    sched = build_scheduler(opt, 4, 1, [], 0.1)
    penalty = RSSTPenalty(list(weights.values()), penalised, ExpCustomExponentsSchedule(1.0, 4), 4, 1)
    batches = data.epoch("train", 128, seed=0, device=device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats = train_epoch(model, batches, opt, sched, list(weights.values()), train, penalty, SyncGuardOff(4), run)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert stats["train_loss"] > 0
    assert sum(int((w[masks[n] == 0] != 0).sum()) for n, w in weights.items()) == 0
    assert penalty.t.item() == 4


def test_a_bare_off_read_as_false_by_yaml_means_off(fast_cfg):
    cfg = fast_cfg("train.compile=false", "train.amp=false")
    validate_config(cfg)
    assert Execution.from_config(cfg.train.amp, False, CPU).amp is None
    model = torch.nn.Linear(2, 2)
    assert compile_model(model, cfg.train.compile) is model


@pytest.mark.train
def test_a_resumed_fp16_run_keeps_its_loss_scaler_state(fast_cfg, tmp_path):
    """The fp16 loss scaler is part of the checkpoint: a restart continues its count of clean steps
    towards the next growth of the scale (and any scale reached) instead of starting over."""
    cfg = fast_cfg("train.amp=fp16", f"paths.root={tmp_path}")
    run_dir = run_directory(cfg)
    run_dir.mkdir(parents=True)
    loop = RoundLoop(cfg, run_dir)
    loop.fresh_start()
    loop.begin_round()
    loop.run_epoch()
    reached = loop.execution.scaler.state_dict()
    steps = loop.data.num_batches("train", cfg.train.batch_size)
    assert reached["_growth_tracker"] == steps > 0  # no overflow in this epoch: every step counted
    loop.save()
    again = RoundLoop(cfg, run_dir)
    assert again.execution.scaler.state_dict()["_growth_tracker"] == 0
    again.restore(load_checkpoint(run_dir / "checkpoint.pt", again.hash))
    assert again.execution.scaler.state_dict() == reached
