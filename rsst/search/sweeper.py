"""The Optuna sweeper: trials asked from Optuna, launched as ordinary runs through Hydra's launcher, told back.

``setup`` checks everything before a trial exists (the sweeper's keys, the objective against
``prune.rounds``, the base config, both ends of every range and every choice), decides the sweep
folder, and only then builds the launcher, whose paths follow the folder. ``sweep`` locks the folder,
opens the study and runs batches of ``n_jobs`` trials until the study holds ``n_trials``:

- the trials in flight when an earlier search stopped are launched again first, with their values
  (their runs resume from their checkpoints, or are read when they finished);
- each trial's config is composed and checked before launch; one that does not pass fails alone;
- a trial's objective is read from the round rows its run returns; a trial whose run failed (a user
  error, a divergence, a crash) is told as failed with its one-line reason, never as a number;
- the results (:mod:`rsst.search.results`) are rewritten after every batch.

Hydra instantiates a sweeper only when its class is registered and its name lies in Hydra's
``hydra_plugins`` namespace. Rather than a top-level ``hydra_plugins/`` folder beside ``rsst/``,
:func:`hydra_plugin` gives Hydra this class under the name ``hydra_plugins.rsst_search.OptunaSweeper``
(a subclass with that name and nothing else), and the command registers it (:func:`register`).
"""

from __future__ import annotations

import logging
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from rsst.config.checks import ConfigError
from rsst.config.sweeps import job_problem, stop
from rsst.errors import one_line
from rsst.folder.lock import RunLock, RunLockedError
from rsst.search import study as studies
from rsst.search.results import RESULTS, best_command, write_results
from rsst.search.settings import Settings, read_settings
from rsst.search.space import override_value, overrides, parse_space

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    """``hydra/sweeper=optuna``: a search over ``hydra.sweeper.params`` for the best ``optimized_metric``."""

    def __init__(self, **keys: Any) -> None:  # the keys are read, checked, from the composed config in setup
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        node = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
        assert isinstance(node, dict)
        self.settings: Settings = read_settings(node)
        arguments = [str(a) for a in config.hydra.overrides.task]
        self.fixed, self.space = parse_space(self.settings.params, arguments)
        self._check_space()
        identity = {"fixed": sorted(self.fixed), "space": {k: p.text for k, p in self.space.items()},
                    **self.settings.identity()}  # fmt: skip
        self.identity = identity
        self.sweep_dir = self._folder(config, identity)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _check(self, overrides_: list[str], where: str) -> DictConfig:
        """The job ``overrides_`` composed, or one line naming ``where`` and why it cannot run."""
        problem = job_problem(self.config, overrides_)
        if problem is not None:
            raise ConfigError(f"{where}: {problem[1]}")
        return self.hydra_context.config_loader.load_sweep_config(self.config, overrides_)

    def _check_space(self) -> None:
        """Before any trial: the base config, the objective against its rounds, every end and choice of the space."""
        if not self.space:
            raise ConfigError(
                "hydra.sweeper.params={} is invalid: nothing to search; expected keys with interval(...), "
                "range(...) or choice(...), e.g. hparams_search=rsst_lambda"
            )
        base = self._check(self.fixed, "the search's base config (the command line without the searched keys)")
        self.settings.objective.check_rounds(int(base.prune.rounds))
        # All keys at once, probe by probe (as many composes as the longest list); a key whose value cannot run
        # on its own is found key by key and refused. A combination that breaks a rule between keys is not: it
        # fails alone, as a trial, when its config is checked before launch.
        for i in range(max(len(p.probes) for p in self.space.values())):
            probe = {key: p.probes[i % len(p.probes)] for key, p in self.space.items()}
            if job_problem(self.config, [*self.fixed, *overrides(probe)]) is None:
                continue
            for key, value in probe.items():
                where = f"the search space's {key}={self.space[key].text} reaches {key}={override_value(value)}, which"
                self._check([*self.fixed, f"{key}={override_value(value)}"], f"{where} cannot run")

    def _folder(self, config: DictConfig, identity: dict[str, Any]) -> Path:
        """``hydra.sweep.dir`` when the command gives it; else one named by the search, the same for the same command.

        The default sweep folder is a new timestamped one per command; a search's must be found again, so
        it is ``<that folder's parent>/<study_name>_<hash of the search's definition>`` (``n_trials``,
        ``n_jobs`` and the launcher are not part of it). Every job is composed with the same folder.
        """
        parser = OverridesParser.create()
        given = any(o.get_key_element() == "hydra.sweep.dir" for o in parser.parse_overrides(
            [str(o) for o in config.hydra.overrides.hydra]))  # fmt: skip
        if given:
            return Path(str(config.hydra.sweep.dir))
        name = f"{self.settings.study_name}_{studies.identity_hash(identity)}"
        folder = Path(str(config.hydra.sweep.dir)).parent / name
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = str(folder)
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={override_value(str(folder))}")
        return folder

    def sweep(self, arguments: list[str]) -> None:
        settings, sweep_dir = self.settings, self.sweep_dir
        sweep_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(sweep_dir)
        try:
            lock.acquire()
        except RunLockedError as exc:
            raise studies.SearchError(f"the search in {sweep_dir} is running in another process: {exc}") from None
        try:
            study = studies.open_study(sweep_dir, settings.storage, settings.study_name, settings.direction,
                                       self.identity)  # fmt: skip
            elsewhere = self._run(study)
            results = write_results(sweep_dir, study, settings.objective.name, settings.direction, self.fixed,
                                    list(self.space))  # fmt: skip
        finally:
            lock.release()
        self._summary(study, results, elsewhere)

    def _run(self, study: Any) -> list[str]:
        """Batches until the study holds ``n_trials`` trials; the lines of trials whose runs are busy elsewhere."""
        settings = self.settings
        log.info(
            "search %s in %s: %s %s over %s; %d of %d trials done",
            settings.study_name, self.sweep_dir, settings.direction, settings.objective.name, ", ".join(self.space),
            len(studies.done(study)), settings.n_trials,
        )  # fmt: skip
        distributions = {key: p.distribution for key, p in self.space.items()}
        resumed = studies.in_flight(study)
        if resumed:
            numbers = ", ".join(str(t.number) for t in resumed)
            log.info("resuming %d trials that were in flight: %s", len(resumed), numbers)
        elsewhere: list[str] = []
        while not elsewhere:
            count = len(studies.done(study)) + len(studies.in_flight(study))
            batch = [studies.reopen(study, t) for t in resumed[: settings.n_jobs]]
            resumed = resumed[len(batch) :]
            while len(batch) < settings.n_jobs and count < settings.n_trials:
                batch.append(studies.ask(study, settings.sampler, distributions))
                count += 1
            if not batch:
                break
            elsewhere = self._run_batch(study, batch)
            write_results(self.sweep_dir, study, settings.objective.name, settings.direction, self.fixed,
                          list(self.space))  # fmt: skip
            done = studies.done(study)
            failed = sum(t.state.name == "FAIL" for t in done)
            if done and failed / len(done) > settings.max_failure_rate:
                stop(f"{failed} of {len(done)} trials failed, more than hydra.sweeper.max_failure_rate="
                     f"{settings.max_failure_rate}; the search stops (see {self.sweep_dir / RESULTS})", 1)  # fmt: skip
        return elsewhere

    def _run_batch(self, study: Any, batch: Sequence[Any]) -> list[str]:
        """Check, launch and tell one batch; the trials left in flight because their runs are busy elsewhere."""
        settings = self.settings
        launch, jobs = [], []
        for trial in batch:
            job = [*self.fixed, *overrides({k: trial.params[k] for k in self.space})]
            problem = job_problem(self.config, job)
            log.info("trial %d (%d/%d): %s", trial.number, trial.number + 1, settings.n_trials,
                     " ".join(overrides(trial.params)))  # fmt: skip
            if problem is not None:
                self._tell(study, trial, None, f"its config cannot run: {problem[1]}")
                continue
            launch.append(trial)
            jobs.append(job)
        if not launch:
            return []
        started = time.monotonic()
        returns = self.launcher.launch(jobs, initial_job_idx=launch[0].number)
        elsewhere = []
        for trial, ret in zip(launch, returns, strict=True):
            summary, error, kind = None, None, None
            try:
                summary = ret.return_value
            except Exception as exc:  # noqa: BLE001  (the job raised: told as failed, with its reason)
                error = f"{type(exc).__name__}: {one_line(exc)}"
            if isinstance(summary, dict) and "error" in summary:
                error, kind = str(summary["error"]), summary.get("error_type")
            if kind == "RunLockedError":  # a run of this trial still works on it (a Slurm job of a stopped search)
                elsewhere.append(f"trial {trial.number}: {error}")
                continue
            value = None
            if error is None:
                try:
                    value = settings.objective.value(summary["rounds"])
                except (KeyError, TypeError, ValueError) as exc:
                    error = f"no {settings.objective.name}: {one_line(exc)}"
            if isinstance(summary, dict) and summary.get("run_dir"):
                trial.set_user_attr("run_dir", str(summary["run_dir"]))
            self._tell(study, trial, value, error)
        log.info("batch of %d trials took %.1f s", len(launch), time.monotonic() - started)
        return elsewhere

    def _tell(self, study: Any, trial: Any, value: float | None, error: str | None) -> None:
        from optuna.trial import TrialState  # noqa: PLC0415

        name = self.settings.objective.name
        if error is not None:
            trial.set_user_attr("error", error)
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, error)
            return
        study.tell(trial, value)
        best = study.best_trial
        log.info("trial %d: %s = %.4g (best %.4g, trial %d)", trial.number, name, value, best.value, best.number)

    def _summary(self, study: Any, results: dict[str, Any], elsewhere: list[str]) -> None:
        """The search's last lines: the best trial and how to rerun it, or why the command ends with status 1."""
        if elsewhere:
            stop(
                f"{len(elsewhere)} trials are still being run by another process (a job of an earlier search):"
                + "".join(f"\n  {line}" for line in elsewhere)
                + "\nrun the same command again once they have ended",
                1,
            )
        if results.get("best_trial") is None:
            stop(f"no trial of the search completed; the reasons are in {self.sweep_dir / 'trials.csv'}", 1)
        log.info(
            "best trial %d: %s = %.4g with %s\n  rerun it: %s\n  results: %s",
            results["best_trial"], results["optimized_metric"], results["best_value"],
            " ".join(overrides(results["best_params"])), best_command(self.fixed, results["best_params"]),
            self.sweep_dir / RESULTS,
        )  # fmt: skip


PLUGIN_MODULE = "hydra_plugins.rsst_search"  # conf/hydra/sweeper/optuna.yaml's _target_ is this module's class


def hydra_plugin() -> type[OptunaSweeper]:
    """:class:`OptunaSweeper` as ``hydra_plugins.rsst_search.OptunaSweeper``, made once per process.

    The module is put in ``sys.modules`` too, so that the class is found by that name wherever
    Python looks a class up by its module (pickle, Hydra's own checks).
    """
    module = sys.modules.get(PLUGIN_MODULE)
    if module is None:
        module = types.ModuleType(PLUGIN_MODULE, "rsst's Optuna sweeper, under the name Hydra accepts")
        plugin = type(
            "OptunaSweeper", (OptunaSweeper,), {"__module__": PLUGIN_MODULE, "__doc__": OptunaSweeper.__doc__}
        )
        module.OptunaSweeper = plugin  # type: ignore[attr-defined]
        sys.modules[PLUGIN_MODULE] = module
    return module.OptunaSweeper  # type: ignore[no-any-return]


def register() -> None:
    """Register :func:`hydra_plugin` with Hydra (``Plugins.register``, public); idempotent."""
    Plugins.instance().register(hydra_plugin())
