"""Hyperparameter search (``hparams_search``, ``hydra/sweeper=optuna``): real Optuna, real Hydra, real runs on digits.

Unit tier: the objective, the space's grammar, the sweeper's settings, and the sweeper set up in this
process (its folder, the Slurm launcher it builds). End to end: one shared 3-trial search (its results,
its rerun, its report, the command that reruns its best trial), the same seed in another folder killed
mid-trial and resumed, a diverging trial, and a test metric refused before anything runs.
"""

from __future__ import annotations

import math
import shlex
import signal
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import CONF, compose_config, launch, read_rounds
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, RunMode
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from rsst.commands.report import report
from rsst.commands.train import register_sweeper
from rsst.config.checks import ConfigError
from rsst.folder.naming import config_hash
from rsst.search.objective import parse_objective
from rsst.search.results import HISTORY, RESULTS, TRIALS
from rsst.search.settings import read_settings
from rsst.search.space import override_value, parse_space
from rsst.search.study import JOURNAL, ask

# Each trial tiny: a narrow ResNet-20, two rounds of one epoch.
TINY = ["arch.width=8", "prune.rounds=2", "train.epochs=1", "lr_schedule.milestones=[]", "progress=false"]
SEARCH = ["-m", "hparams_search=rsst_lambda", "hydra.sweeper.n_trials=3", *TINY]
SPACE = ("schedule.reg_granularity_prune", "schedule.exponents", "schedule.period")


def search(sweep_dir: Path, *extra: str, env: dict[str, str] | None = None):
    return launch(*SEARCH, f"hydra.sweep.dir={sweep_dir}", *extra, env=env, timeout=300)


def study_of(sweep_dir: Path, name: str = "rsst_lambda") -> optuna.Study:
    """The study as its journal holds it (JSON lines: nothing is unpickled)."""
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL)))
    return optuna.load_study(study_name=name, storage=storage)


def trials_table(sweep_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(sweep_dir / TRIALS, newline="") as f:
        return list(csv.DictReader(f))


def run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if (p / "config.yaml").is_file())


@pytest.fixture
def composing():
    """Hydra initialised on conf/ for the test, as launch.py has it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


# -- the objective ----------------------------------------------------------------------------------------------

ROWS = [
    {"round": 0, "best_val_acc": 50.0, "test_acc": 90.0, "trained_best_val_acc": 50.0},
    {"round": 1, "best_val_acc": 40.0, "test_acc": 10.0, "trained_best_val_acc": 44.0},
    {"round": 1, "branch": "reinit", "best_val_acc": 99.0, "test_acc": 99.0},
    {"round": 2, "best_val_acc": 30.0, "test_acc": 20.0, "trained_best_val_acc": 36.0},
]


@pytest.mark.parametrize(
    ("metric", "value"),
    [
        ("best_val_acc@mean_pruned", 35.0),  # rounds 1 and 2, not the control's 99
        ("best_val_acc@last", 30.0),
        ("best_val_acc@mean", 40.0),
        ("best_val_acc@1", 40.0),
        ("trained_best_val_acc@mean_pruned", 40.0),
    ],
)
def test_the_objective_is_a_validation_figure_of_the_ticket_rows(metric, value):
    assert parse_objective(metric).value(ROWS) == value


@pytest.mark.parametrize("metric", ["test_acc@last", "trained_test_acc@mean_pruned", "final_test_acc@1"])
def test_a_test_figure_is_refused_by_name(metric):
    with pytest.raises(ConfigError) as err:
        parse_objective(metric)
    figure = metric.split("@")[0]
    assert str(err.value).startswith(f"hydra.sweeper.optimized_metric='{metric}' is refused: {figure} is a test figure")


@pytest.mark.parametrize("metric", ["best_val_acc", "val_acc@last", "best_val_acc@first", 3])
def test_an_objective_not_written_figure_at_rounds_is_one_line_naming_the_form(metric):
    with pytest.raises(ConfigError) as err:
        parse_objective(metric)
    assert str(err.value) == (
        f"hydra.sweeper.optimized_metric={metric!r} is invalid: expected <figure>@<rounds>, figure one of "
        "best_val_acc, trained_best_val_acc (validation figures of rounds.json), rounds one of last, mean_pruned, "
        "mean or a round number"
    )


def test_an_objective_the_runs_cannot_give_is_refused_against_prune_rounds():
    parse_objective("best_val_acc@1").check_rounds(2)
    with pytest.raises(ConfigError, match=r"round 2 does not exist with prune.rounds=2; expected a round in 0..1"):
        parse_objective("best_val_acc@2").check_rounds(2)
    with pytest.raises(ConfigError, match=r"prune.rounds=1 has no pruned round"):
        parse_objective("best_val_acc@mean_pruned").check_rounds(1)


# -- the space --------------------------------------------------------------------------------------------------


def test_the_rsst_lambda_space_is_g_on_a_log_scale_n_and_the_period(composing):
    params = compose(config_name="config", overrides=["hparams_search=rsst_lambda"], return_hydra_config=True)
    fixed, space = parse_space(params.hydra.sweeper.params, [])
    assert fixed == [] and list(space) == list(SPACE)
    assert space[SPACE[0]].distribution == FloatDistribution(0.01, 10.0, log=True)
    assert space[SPACE[1]].distribution == CategoricalDistribution((1, 2, 4, 8))
    assert space[SPACE[2]].distribution == CategoricalDistribution(("epoch", "round"))
    assert space[SPACE[0]].probes == (0.01, 10.0)


def test_ranges_are_hydras_int_tags_make_integers_and_the_command_line_wins():
    params = {"schedule.period": "choice(epoch, round)", "struct.fillback_rate": "interval(0, 1)"}
    args = [
        "prune.rounds=2",
        "schedule.period=round",
        "seed=range(1, 7, 2)",
        "arch.width=tag(int, log, interval(4, 64))",
    ]
    fixed, space = parse_space(params, args)
    assert fixed == ["prune.rounds=2", "schedule.period=round"]  # a plain value on the command line fixes the key
    assert list(space) == ["struct.fillback_rate", "seed", "arch.width"]
    assert space["seed"].distribution == IntDistribution(1, 5, step=2)  # 1, 3, 5: Hydra's range stops below 7
    assert space["arch.width"].distribution == IntDistribution(4, 64, log=True)
    assert space["struct.fillback_rate"].distribution == FloatDistribution(0.0, 1.0)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("tag(shuffle, interval(0, 1))", "unknown tag 'shuffle'; expected the tags log and int"),
        ("tag(log, interval(0, 1))", "a log scale needs low > 0"),
        ("interval(1, 1)", "expected interval(low, high) with low < high"),
        ("choice(a, a)", "a choice is listed twice; expected distinct choices"),
    ],
)
def test_a_bad_range_is_one_line_naming_the_key(text, why):
    with pytest.raises(ConfigError) as err:
        parse_space({"struct.fillback_rate": text}, [])
    assert str(err.value) == f"the search space's struct.fillback_rate={text} is invalid: {why}"


@pytest.mark.parametrize("value", [0.1, 1e30, 3, -2, "l1", "a b", "1", "null", True, None])
def test_a_trials_value_reads_back_from_its_override(value):
    parsed = OverridesParser.create().parse_override(f"key={override_value(value)}").value()
    assert parsed == value and type(parsed) is type(value)


# -- the sweeper's keys -----------------------------------------------------------------------------------------

SETTINGS = {
    "optimized_metric": "best_val_acc@mean_pruned", "direction": "maximize", "n_trials": 3, "n_jobs": 1,
    "max_failure_rate": 1.0, "study_name": "s", "storage": "journal", "params": {},
    "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 1},
}  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value", "line"),
    [
        ("direction", "up", "hydra.sweeper.direction='up' is invalid: expected maximize or minimize"),
        ("n_trials", 0, "hydra.sweeper.n_trials=0 is invalid: expected an integer >= 1"),
        ("n_jobs", 1.5, "hydra.sweeper.n_jobs=1.5 is invalid: expected an integer >= 1"),
        ("max_failure_rate", 2, "hydra.sweeper.max_failure_rate=2 is invalid: expected a number in [0, 1]"),
        ("storage", "sqlite:///x.db", "hydra.sweeper.storage='sqlite:///x.db' is invalid: expected journal or sqlite"),
        ("sampler", {"_target_": "os.system"}, "hydra.sweeper.sampler._target_='os.system' is invalid"),
        (
            "sampler",
            {"_target_": "optuna.samplers.TPESampler", "seed": 1, "bins": 3},
            "hydra.sweeper.sampler is invalid",
        ),
        ("extra", 1, "hydra.sweeper.extra=1 is invalid: not a key of the optuna sweeper"),
    ],
)
def test_a_wrong_sweeper_key_is_one_line_naming_the_key_and_value(key, value, line):
    with pytest.raises(ConfigError) as err:
        read_settings({**SETTINGS, key: value})
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


# -- the sweeper set up in this process (nothing launched) ------------------------------------------------------


def set_up(*overrides: str):
    """The sweeper Hydra would build for ``launch.py -m hparams_search=rsst_lambda OVERRIDES`` (nothing runs)."""
    register_sweeper()
    loader = GlobalHydra.instance().config_loader()
    cfg = loader.load_configuration("config", ["hparams_search=rsst_lambda", *overrides], run_mode=RunMode.MULTIRUN)
    sweeper = Plugins.instance().instantiate_sweeper(
        config=cfg,
        hydra_context=HydraContext(config_loader=loader, callbacks=None),  # type: ignore[arg-type]  (nothing launches)
        task_function=lambda c: None,
    )
    return sweeper, cfg


def test_the_search_folder_is_the_same_for_the_same_search_and_new_for_another(composing):
    first, cfg = set_up(*TINY)
    name = first.sweep_dir.name
    assert first.sweep_dir.parent == Path("multirun_outputs") and name.startswith("rsst_lambda_")
    assert cfg.hydra.sweep.dir == str(first.sweep_dir)  # every job is composed with the same folder
    # not a timestamp: the same search, however many trials and however fast, finds its folder again
    assert set_up(*TINY, "hydra.sweeper.n_trials=50", "hydra.sweeper.n_jobs=4")[0].sweep_dir.name == name
    assert set_up(*TINY, "hydra.sweeper.sampler.seed=2")[0].sweep_dir.name != name
    assert set_up(*TINY[1:], "arch.width=16")[0].sweep_dir.name != name


def test_the_slurm_launcher_composes_with_the_search_and_writes_into_its_folder(composing):
    sweeper, cfg = set_up(*TINY, "hydra/launcher=slurm", "hydra.launcher.partition=cpu")
    launcher = sweeper.launcher
    assert type(launcher).__name__ == "SlurmLauncher" and launcher.params["partition"] == "cpu"
    assert launcher.params["submitit_folder"] == f"{sweeper.sweep_dir}/.submitit/%j"


def test_a_space_that_reaches_an_invalid_value_is_refused_before_any_trial(composing):
    with pytest.raises(ConfigError) as err:
        set_up(*TINY, "struct.fillback_rate=interval(0, 5)")
    assert str(err.value) == (
        "the search space's struct.fillback_rate=interval(0, 5) reaches struct.fillback_rate=5.0, which cannot run: "
        "struct.fillback_rate=5.0 is invalid: expected a number in [0, 1]"
    )


def test_every_trial_is_checked_before_launch_and_one_breaking_a_rule_fails_without_running(composing, tmp_path):
    """Nesterov needs momentum: each value runs on its own, so the space passes; the pair fails as a trial."""
    sweep_dir = tmp_path / "checked"
    space = ["optimizer.nesterov=choice(true, false)", "optimizer.momentum=choice(0, 0.9)"]
    sweeper, _ = set_up(*TINY, *space, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={sweep_dir}")
    sweep_dir.mkdir()
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL)))
    study = optuna.create_study(storage=storage, study_name="rsst_lambda", direction="maximize")
    study.enqueue_trial({"optimizer.nesterov": True, "optimizer.momentum": 0}, skip_if_exists=False)
    with pytest.raises(SystemExit) as ended:  # no trial completed
        sweeper.sweep([])
    assert ended.value.code == 1
    (trial,) = study_of(sweep_dir).trials
    assert trial.state == TrialState.FAIL and trial.value is None
    assert trial.user_attrs["error"].startswith("its config cannot run: optimizer.nesterov=true is invalid")
    assert run_dirs(sweep_dir) == []  # never launched


# -- end to end: launch.py -m, real trials ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A 3-trial rsst_lambda search (seed 1, basic launcher), run once for the tests below."""
    sweep_dir = tmp_path_factory.mktemp("search") / "rsst_lambda"
    proc = search(sweep_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep_dir


def test_a_3_trial_search_tells_each_trial_its_validation_objective_and_writes_its_results(searched):
    results = yaml.safe_load((searched / RESULTS).read_text())
    assert results["name"] == "optuna" and set(results["best_params"]) == set(SPACE)
    assert results["trials"] == {"complete": 3} and results["optimized_metric"] == "best_val_acc@mean_pruned"
    table = trials_table(searched)
    assert [row["number"] for row in table] == ["0", "1", "2"] and {row["state"] for row in table} == {"complete"}
    assert len(run_dirs(searched)) == len({row["run_dir"] for row in table}) == 3  # each trial an ordinary run
    for row in table:  # the objective is the ticket's best validation accuracy, mean over the pruned round
        rounds = read_rounds(Path(row["run_dir"]))
        assert float(row["best_val_acc@mean_pruned"]) == rounds[1]["best_val_acc"]
        assert 0.01 <= float(row[SPACE[0]]) <= 10 and row[SPACE[1]] in {"1", "2", "4", "8"}
    values = [float(row["best_val_acc@mean_pruned"]) for row in table]
    assert results["best_value"] == max(values) and results["best_trial"] == values.index(max(values))
    study = study_of(searched)
    assert [t.value for t in study.trials] == values and study.best_trial.params == results["best_params"]
    assert (searched / HISTORY).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_best_command_trains_the_best_trials_config(searched):
    results = yaml.safe_load((searched / RESULTS).read_text())
    args = shlex.split(results["best_command"])
    assert args[:2] == ["python", "launch.py"] and "-m" not in args
    best = Path(results["best_run_dir"])
    cfg = compose_config(args[2:])
    cfg.train.amp = yaml.safe_load((best / "config.yaml").read_text())["train"]["amp"]  # as the run resolved auto
    assert best.name.endswith("_" + config_hash(cfg))


def test_rsst_report_tables_the_search_as_any_sweep(searched):
    result = report(searched)
    assert len(result["groups"]) == 3 and (searched / "report.md").is_file()


def test_rerunning_the_search_trains_nothing_new(searched):
    before = {d.name: (d / "checkpoint.pt").stat().st_mtime_ns for d in run_dirs(searched)}
    proc = search(searched)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "3 of 3 trials done" in proc.stdout and "Launching" not in proc.stdout and "new run in" not in proc.stdout
    assert {d.name: (d / "checkpoint.pt").stat().st_mtime_ns for d in run_dirs(searched)} == before
    assert len(study_of(searched).trials) == 3


@pytest.mark.slow
def test_the_same_seed_asks_the_same_trials_and_a_killed_search_resumes_its_trial_in_flight(searched, tmp_path):
    """Killed in trial 0's round 1, the search resumes that trial from its checkpoint, then asks what the first did."""
    again = tmp_path / "again"
    killed = search(again, env={"RSST_KILL_AT": "epoch_saved:1:ticket:0"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert [t.state for t in study_of(again).trials] == [TrialState.RUNNING]
    resumed = search(again)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming 1 trials that were in flight: 0" in resumed.stdout
    assert "resuming" in (Path(trials_table(again)[0]["run_dir"]) / "run.log").read_text()
    first, second = trials_table(searched), trials_table(again)
    columns = ["number", "state", "best_val_acc@mean_pruned", *SPACE]
    assert [[row[c] for c in columns] for row in second] == [[row[c] for c in columns] for row in first]
    assert [Path(r["run_dir"]).name for r in second] == [Path(r["run_dir"]).name for r in first]  # the same runs


@pytest.mark.slow
def test_a_test_metric_is_refused_with_one_line_before_anything_runs(tmp_path):
    proc = search(tmp_path / "refused", "hydra.sweeper.optimized_metric=test_acc@last")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "hydra.sweeper.optimized_metric='test_acc@last' is refused: test_acc is a test figure, and a search is tuned "
        "on validation only; expected <figure>@<rounds>, figure one of best_val_acc, trained_best_val_acc "
        "(validation figures of rounds.json), rounds one of last, mean_pruned, mean or a round number"
    ]
    assert not (tmp_path / "refused").exists()


LRS = "choice(0.05, 1e30)"  # 1e30 diverges in the first epoch


def diverging_first_seed(sampler: dict) -> int:
    """The first seed whose search over ``optimizer.lr`` asks 1e30 first and 0.05 second (the sweeper's own asks)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _, space = parse_space({}, [f"optimizer.lr={LRS}"])
    distributions = {"optimizer.lr": space["optimizer.lr"].distribution}
    for seed in range(100):
        study = optuna.create_study(direction="maximize")
        first = ask(study, {**sampler, "seed": seed}, distributions)
        study.tell(first, state=TrialState.FAIL)
        if [first.params["optimizer.lr"], ask(study, {**sampler, "seed": seed}, distributions).params["optimizer.lr"]] \
                == [1e30, 0.05]:  # fmt: skip
            return seed
    raise AssertionError("no seed in 0..99 asks 1e30, then 0.05")


@pytest.mark.slow
def test_a_diverging_trial_is_recorded_as_failed_not_as_a_number_and_the_search_goes_on(composing, tmp_path):
    sampler = dict(compose(config_name="config", overrides=["hydra/sweeper=optuna"], return_hydra_config=True)
                   .hydra.sweeper.sampler)  # fmt: skip
    seed = diverging_first_seed(sampler)
    sweep_dir = tmp_path / "diverging"
    proc = launch("-m", "hydra/sweeper=optuna", f"optimizer.lr={LRS}", "hydra.sweeper.n_trials=2",
                  f"hydra.sweeper.sampler.seed={seed}", "hydra.sweeper.optimized_metric=best_val_acc@last",
                  f"hydra.sweep.dir={sweep_dir}", *TINY)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    failed, ok = study_of(sweep_dir, "search").trials
    assert (failed.state, failed.value, failed.params) == (TrialState.FAIL, None, {"optimizer.lr": 1e30})
    assert failed.user_attrs["error"].startswith("training diverged at round 0, epoch 1")
    diverged = [d for d in run_dirs(sweep_dir) if (d / "diverged.json").is_file()]  # the run recorded where
    assert [yaml.safe_load((d / "config.yaml").read_text())["optimizer"]["lr"] for d in diverged] == [1e30]
    assert ok.state == TrialState.COMPLETE and ok.params == {"optimizer.lr": 0.05}
    assert ok.value == read_rounds(Path(ok.user_attrs["run_dir"]))[1]["best_val_acc"]
    assert [row["state"] for row in trials_table(sweep_dir)] == ["fail", "complete"]
    results = yaml.safe_load((sweep_dir / RESULTS).read_text())
    assert results["best_trial"] == 1 and results["trials"] == {"fail": 1, "complete": 1}
    assert not math.isnan(results["best_value"])
