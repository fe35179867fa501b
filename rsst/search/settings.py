"""The sweeper's own keys (``conf/hydra/sweeper/optuna.yaml``), checked before anything runs: one line per mistake.

The keys are those of Hydra's Optuna sweeper plugin (``direction``, ``n_trials``, ``n_jobs``, ``sampler``,
``storage``, ``study_name``, ``max_failure_rate``, ``params``) plus ``optimized_metric``, the validation
figure the search tunes (:mod:`rsst.search.objective`). Two differ in meaning:

- ``n_trials`` is the size of the whole study, not the number of trials this command adds: the same
  command run again has nothing left to do, and a larger ``n_trials`` continues the search;
- ``storage`` names a kind of file in the sweep folder (``journal``, ``sqlite``) or ``null`` (in memory,
  nothing to resume), not a database URL: the study lives beside its trials.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rsst.config.checks import ConfigError
from rsst.search.objective import Objective, parse_objective

PREFIX = "hydra.sweeper"
KEYS = (
    "optimized_metric",
    "direction",
    "n_trials",
    "n_jobs",
    "max_failure_rate",
    "sampler",
    "storage",
    "study_name",
    "params",
)
DIRECTIONS = ("maximize", "minimize")
STORAGES = ("journal", "sqlite")


@dataclass(frozen=True)
class Settings:
    """The search's settings, checked."""

    objective: Objective
    direction: str
    n_trials: int
    n_jobs: int
    max_failure_rate: float
    sampler: dict[str, Any]  # ``_target_`` (a class of optuna.samplers) and its keyword arguments
    storage: str | None
    study_name: str
    params: dict[str, Any]

    def identity(self) -> dict[str, Any]:
        """What makes two searches the same one, besides their fixed overrides (the size and the pace do not)."""
        return {"metric": self.objective.name, "direction": self.direction, "sampler": self.sampler}


def _whole(node: Mapping[str, Any], key: str, low: int) -> int:
    value = node.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{PREFIX}.{key}={value!r} is invalid: expected an integer >= {low}")
    return value


def check_sampler(node: Any) -> dict[str, Any]:
    """The sampler's node as a plain dict, if it names a class of ``optuna.samplers`` that takes its arguments."""
    import optuna  # noqa: PLC0415

    target = node.get("_target_") if isinstance(node, Mapping) else None
    name = str(target).removeprefix("optuna.samplers.")
    if not (isinstance(target, str) and target.startswith("optuna.samplers.") and hasattr(optuna.samplers, name)):
        raise ConfigError(
            f"{PREFIX}.sampler._target_={target!r} is invalid: expected a sampler of optuna.samplers "
            "(optuna.samplers.TPESampler, optuna.samplers.RandomSampler, ...)"
        )
    seed = node.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"{PREFIX}.sampler.seed={seed!r} is invalid: expected an integer or null")
    try:
        make_sampler(dict(node), seed)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{PREFIX}.sampler is invalid: {name}: {str(exc).splitlines()[0]}") from None
    return dict(node)


def make_sampler(node: Mapping[str, Any], seed: int | None) -> Any:
    """A fresh sampler of the node's class and arguments, seeded with ``seed``."""
    import optuna  # noqa: PLC0415

    kwargs = {k: v for k, v in node.items() if k != "_target_"}
    kwargs["seed"] = seed
    return getattr(optuna.samplers, str(node["_target_"]).removeprefix("optuna.samplers."))(**kwargs)


def read_settings(node: Mapping[str, Any]) -> Settings:
    """The sweeper's keys (a resolved, plain ``hydra.sweeper`` node without ``_target_``), checked in order."""
    unknown = sorted(set(node) - set(KEYS) - {"_target_", "_recursive_"})
    if unknown:
        raise ConfigError(
            f"{PREFIX}.{unknown[0]}={node[unknown[0]]!r} is invalid: not a key of the optuna sweeper; "
            f"expected one of {', '.join(KEYS)}"
        )
    objective = parse_objective(node.get("optimized_metric"))
    direction = node.get("direction")
    if direction not in DIRECTIONS:
        raise ConfigError(
            f"{PREFIX}.direction={direction!r} is invalid: expected maximize or minimize "
            f"(one objective: {objective.name})"
        )
    n_trials, n_jobs = _whole(node, "n_trials", 1), _whole(node, "n_jobs", 1)
    rate = node.get("max_failure_rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ConfigError(f"{PREFIX}.max_failure_rate={rate!r} is invalid: expected a number in [0, 1]")
    storage = node.get("storage")
    if storage is not None and storage not in STORAGES:
        raise ConfigError(
            f"{PREFIX}.storage={storage!r} is invalid: expected journal or sqlite (a file in the sweep folder), "
            "or null (in memory: nothing to resume)"
        )
    name = node.get("study_name")
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"{PREFIX}.study_name={name!r} is invalid: expected a name of letters, digits, _ and -")
    params = node.get("params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{PREFIX}.params={params!r} is invalid: expected a mapping of keys to their ranges")
    sampler = check_sampler(node.get("sampler"))
    return Settings(objective, direction, n_trials, n_jobs, float(rate), sampler, storage, name, dict(params))
