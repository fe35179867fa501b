"""The study: its storage in the sweep folder, its identity, the next trials to run, and their sampler.

- **Storage.** ``journal`` is Optuna's ``JournalStorage`` on ``optuna.journal``, a file of JSON lines
  (nothing in it is unpickled); ``sqlite`` is ``optuna.db``. Either lives in the sweep folder, beside the
  trials' run folders, so the folder is the whole search.
- **Identity.** The study records what defines the search (the fixed overrides, the space, the metric,
  the direction, the sampler) and refuses a command that would continue it with another definition.
- **Resume.** A trial asked but never told is a trial that was in flight when the search stopped; it is
  launched again with the same values, so its run resumes from its checkpoint (or is read, if it
  finished) and the trial keeps its number.
- **Sampler.** Each trial is asked with a fresh sampler seeded from ``(seed, trial number)``, so a trial's
  values depend only on the seed and the trials told before it: a resumed search asks what an
  uninterrupted one would have asked, and the same seed gives the same trials.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from rsst.errors import RsstError
from rsst.seeds import derive_seed

JOURNAL, SQLITE = "optuna.journal", "optuna.db"
IDENTITY_ATTR = "rsst_search"


class SearchError(RsstError, RuntimeError):
    """A search that cannot go on as asked (its folder holds another search, or is in use)."""


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]


def storage(sweep_dir: Path, kind: str | None) -> Any:
    """The study's storage in ``sweep_dir`` (``None``: in memory)."""
    import optuna  # noqa: PLC0415

    if kind is None:
        return None
    if kind == "sqlite":
        return f"sqlite:///{(sweep_dir / SQLITE).resolve()}"
    from optuna.storages.journal import JournalFileBackend  # noqa: PLC0415

    return optuna.storages.JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL)))


def open_study(sweep_dir: Path, kind: str | None, name: str, direction: str, identity: dict[str, Any]) -> Any:
    """The study ``name`` in ``sweep_dir``: created with ``identity``, or loaded and checked to have it."""
    import optuna  # noqa: PLC0415

    optuna.logging.set_verbosity(logging.WARNING)  # the sweeper says what happens, one line per trial
    study = optuna.create_study(storage=storage(sweep_dir, kind), study_name=name, direction=direction,
                                load_if_exists=True)  # fmt: skip
    recorded = study.user_attrs.get(IDENTITY_ATTR)
    if recorded is None:
        study.set_user_attr(IDENTITY_ATTR, json.loads(json.dumps(identity, default=str)))
    elif identity_hash(recorded) != identity_hash(identity):
        changed = sorted(k for k in {*recorded, *identity} if json.dumps(recorded.get(k), sort_keys=True, default=str)
                         != json.dumps(identity.get(k), sort_keys=True, default=str))  # fmt: skip
        raise SearchError(
            f"hydra.sweep.dir={str(sweep_dir)!r} holds the study {name!r} of another search (its "
            f"{', '.join(changed)} differ): choose another hydra.sweep.dir, or leave it out to get this search's own"
        )
    return study


def in_flight(study: Any) -> list[Any]:
    """The trials asked and never told: those running when the search stopped (by number)."""
    from optuna.trial import TrialState  # noqa: PLC0415

    return sorted(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)), key=lambda t: t.number)


def done(study: Any) -> list[Any]:
    """The trials told: complete, failed or pruned."""
    from optuna.trial import TrialState  # noqa: PLC0415

    states = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    return sorted(study.get_trials(deepcopy=False, states=states), key=lambda t: t.number)


def ask(study: Any, sampler: dict[str, Any], distributions: dict[str, Any]) -> Any:
    """A new trial, its values drawn by a sampler seeded from the search's seed and the trial's number."""
    from rsst.search.settings import make_sampler  # noqa: PLC0415

    seed = sampler.get("seed")
    number = len(study.get_trials(deepcopy=False))  # the new trial's number (a trial enqueued by hand: its own)
    study.sampler = make_sampler(sampler, None if seed is None else derive_seed(seed, "trial", number))
    return study.ask(distributions)


def reopen(study: Any, frozen: Any) -> Any:
    """A trial in flight from a stopped search, to be told again (Optuna's own tell names a trial by this id)."""
    import optuna  # noqa: PLC0415

    return optuna.trial.Trial(study, frozen._trial_id)
