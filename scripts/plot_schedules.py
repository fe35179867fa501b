"""Draw every RSST lambda schedule at its conf defaults, period included: regenerates docs/schedules.png.

    python scripts/plot_schedules.py [--out docs/schedules.png] [--steps-per-epoch 352] [--epochs 120]

The schedules are built from the real config (``struct=rsst schedule=NAME``), exactly as a
run builds them. A schedule whose period is the round (the x family) is drawn over the whole
round of ``T`` steps (default: the paper setting, CIFAR-100 at batch 128 for 120 epochs,
``T = 42,240``); one whose period is an epoch (``exp_custom``, ``exp_custom_exponents``) restarts
every epoch and is drawn over the round's first :data:`EPOCHS_SHOWN` epochs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from rsst.config.checks import build  # noqa: E402
from rsst.config.location import conf_dir  # noqa: E402  (and the schema conf/ names)

ROOT = Path(__file__).resolve().parents[1]
EPOCHS_SHOWN = 3  # an epoch-long period is drawn over this many epochs: the restarts show
FORMULAS = {
    "x": r"$\min(ug, c)$",
    "x2": r"$\min(ug, c)^2$",
    "x3": r"$\min(ug, c)^3$",
    "exp": r"$\exp(\min(ug, c))$",
    "exp_custom": r"$\frac{g}{e-1}(e^{t/T} - 1)$",
    "exp_custom_exponents": r"$\frac{g}{e-1}(e^{(t/T)^n} - 1)$",
}


def schedule_of(name: str):
    """The schedule a run with ``struct=rsst schedule=NAME`` builds, from the real conf."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["struct=rsst", f"schedule={name}"])
    return build(cfg.struct, "struct").schedule


def defaults(schedule) -> str:
    keys = ("reg_granularity_prune", "update_every", "ceiling", "exponents")
    short = {"reg_granularity_prune": "g", "update_every": "every", "ceiling": "c", "exponents": "n"}
    return ", ".join(f"{short[k]}={getattr(schedule, k):g}" for k in keys if hasattr(schedule, k))


def plot(out: Path, steps_per_epoch: int, epochs: int) -> None:
    T = steps_per_epoch * epochs
    t = torch.arange(T + 1)
    names = list(FORMULAS)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for ax, name in zip(axes.flat, names, strict=True):
        schedule = schedule_of(name)
        if schedule.period == "round":
            lam = schedule(t, T).double().numpy()
            ax.axvspan(0, 0.5, color="0.93", zorder=0)
            ax.plot(t.numpy() / T, lam, color="C0")
            ax.set_xlabel("t / T (period: the round)")
            ax.set_xlim(0, 1)
        else:  # step k of the round is step (k - 1) % steps_per_epoch + 1 of its epoch
            k = torch.arange(1, EPOCHS_SHOWN * steps_per_epoch + 1)
            lam = schedule((k - 1) % steps_per_epoch + 1, steps_per_epoch).double().numpy()
            for e in range(EPOCHS_SHOWN):
                ax.axvspan(e, e + 0.5, color="0.93", zorder=0)
            ax.plot(k.numpy() / steps_per_epoch, lam, color="C1")
            ax.set_xlabel(f"epoch (period: an epoch; the first {EPOCHS_SHOWN} of {epochs})")
            ax.set_xlim(0, EPOCHS_SHOWN)
        ax.set_title(f"{name}, period={schedule.period}: {FORMULAS[name]}\n{defaults(schedule)}", fontsize=10)
        ax.set_ylabel("lambda")
        ax.grid(alpha=0.3)
        right = 1 if schedule.period == "round" else EPOCHS_SHOWN
        ax.annotate(f"{lam[-1]:.4g}", (right, lam[-1]), textcoords="offset points", xytext=(-4, -12), ha="right")
    fig.suptitle(
        f"RSST lambda at the conf defaults, a round of {T:,} steps ({epochs} epochs x {steps_per_epoch});"
        " u = floor(t / every), shaded: the first half of each period",
        fontsize=11,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "schedules.png")
    parser.add_argument("--steps-per-epoch", type=int, default=352)
    parser.add_argument("--epochs", type=int, default=120)
    args = parser.parse_args()
    plot(args.out, args.steps_per_epoch, args.epochs)


if __name__ == "__main__":
    main()
