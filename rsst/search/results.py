"""What a search leaves in its sweep folder, rewritten after every batch of trials:

- ``optimization_results.yaml``: ``name``, ``best_params`` and ``best_value`` as Hydra's Optuna sweeper
  writes them, then the metric, the direction, the best trial's number, run folder and the
  ``python launch.py`` command that reruns it, and the count of trials by state;
- ``trials.csv``: a row per trial (number, state, objective, each searched key, seconds, run folder, error);
- ``optimization_history.png``: the objective of every trial and the best so far, failed trials marked.

The trials' run folders are ordinary run folders in the same sweep folder, so ``python -m rsst.report``
on it tables and plots them as for any sweep.
"""

from __future__ import annotations

import csv
import io
import math
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from rsst.folder.atomic import atomic_write_bytes, atomic_write_text
from rsst.search.space import overrides

RESULTS, TRIALS, HISTORY = "optimization_results.yaml", "trials.csv", "optimization_history.png"


def best_command(fixed: Sequence[str], params: dict[str, Any]) -> str:
    """The single-run command that trains the best trial's config (into ``runs/``, as any single run)."""
    return " ".join(["python launch.py", *(shlex.quote(o) for o in [*fixed, *overrides(params)])])


def best_trial(study: Any) -> Any | None:
    from optuna.trial import TrialState  # noqa: PLC0415

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None


def write_results(sweep_dir: Path, study: Any, metric: str, direction: str, fixed: Sequence[str], keys: Sequence[str],
                  ) -> dict[str, Any]:  # fmt: skip
    """Write the three files; return what ``optimization_results.yaml`` holds."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    best = best_trial(study)
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    results: dict[str, Any] = {"name": "optuna", "best_params": None, "best_value": None}
    if best is not None:
        results.update(
            best_params=dict(best.params),
            best_value=float(best.value),
            best_trial=best.number,
            best_run_dir=best.user_attrs.get("run_dir"),
            best_command=best_command(fixed, best.params),
        )
    results.update(optimized_metric=metric, direction=direction, trials=states)
    atomic_write_text(sweep_dir / RESULTS, yaml.safe_dump(results, sort_keys=False, width=1000))
    atomic_write_text(sweep_dir / TRIALS, trials_csv(trials, metric, keys))
    atomic_write_bytes(sweep_dir / HISTORY, history_png(trials, metric, direction))
    return results


def trials_csv(trials: Sequence[Any], metric: str, keys: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["number", "state", metric, *keys, "seconds", "run_dir", "error"])
    for t in trials:
        seconds = "" if t.duration is None else f"{t.duration.total_seconds():.1f}"
        writer.writerow([t.number, t.state.name.lower(), "" if t.value is None else t.value,
                         *(t.params.get(k, "") for k in keys), seconds, t.user_attrs.get("run_dir", ""),
                         t.user_attrs.get("error", "")])  # fmt: skip
    return out.getvalue()


def history_png(trials: Sequence[Any], metric: str, direction: str) -> bytes:
    """The objective over trials: a dot per complete trial, the best so far as a step line, failed trials as x."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    complete = [(t.number, t.value) for t in trials if t.value is not None and math.isfinite(t.value)]
    failed = [t.number for t in trials if t.state.name == "FAIL"]
    if complete:
        xs, ys = zip(*complete, strict=True)
        ax.plot(xs, ys, "o", color="tab:blue", label="trial")
        pick = max if direction == "maximize" else min
        best = [pick(ys[: i + 1]) for i in range(len(ys))]
        ax.step(xs, best, where="post", color="tab:red", label="best so far")
    if failed:
        low = ax.get_ylim()[0] if complete else 0.0
        ax.plot(failed, [low] * len(failed), "x", color="black", label="failed", clip_on=False)
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{direction} {metric}")
    if complete or failed:
        ax.legend(loc="best")
        ax.xaxis.get_major_locator().set_params(integer=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
