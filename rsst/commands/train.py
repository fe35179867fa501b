"""``rsst-train`` (and ``python launch.py``): compose the Hydra config and hand it to ``rsst.run``.

The config groups are :func:`rsst.config.location.conf_dir`: the checkout's ``conf/``, or the copy
a wheel installs inside the package. A user's mistake (any :class:`~rsst.errors.RsstError`: a bad
value, a missing file or device, a folder in use, a full disk) ends a single run with one line on
stderr and exit 2. In a sweep the job fails alone: the launcher runs the other jobs and ends the
sweep with a summary of the failures (see :mod:`rsst.config.sweeps`).

The run itself (torch, the loop) is imported when a job starts, so ``--help`` and ``--cfg`` stay quick.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from rsst.config.location import conf_dir
from rsst.errors import INTERRUPTED, INTERRUPTED_STARTING, RsstError, one_line, shown

log = logging.getLogger("rsst")


def report_error(message: str) -> None:
    """``message`` on one printable line of bounded length (:func:`rsst.errors.shown`) to stderr, and to the
    ``rsst`` logger's own handlers (``run.log`` while one is attached); not through the root logger, whose
    console handler Hydra points at stdout."""
    message = shown(message)
    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()
    if log.handlers:
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (message,), None)
        for handler in log.handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def task(cfg: DictConfig) -> dict[str, Any]:
    from rsst import run  # noqa: PLC0415  (torch and the loop, only once a job runs)

    hc = HydraConfig.get()
    sweep = hc.mode == RunMode.MULTIRUN
    if cfg.paths.root is None:
        with open_dict(cfg):
            cfg.paths.root = hc.sweep.dir if sweep else "runs"
    try:
        return run(cfg)
    except RsstError as exc:
        message = one_line(exc)
        report_error(message)
        if sweep:  # no exit: the launcher runs the next job; the sweep's summary lists this one
            from rsst.config.sweeps import record_failure  # noqa: PLC0415

            record_failure(hc.sweep.dir, hc.job.num, list(hc.overrides.task), message)
            return {"error": message, "error_type": type(exc).__name__}
        sys.exit(2)


def register_sweeper() -> None:
    """Make ``hydra/sweeper=optuna`` instantiable, from a checkout or any install: the sweeper's class is
    registered by name through Hydra's public ``Plugins.register`` (:func:`rsst.search.sweeper.register`)."""
    from rsst.search.sweeper import register  # noqa: PLC0415

    register()


def main() -> None:
    """The command: Hydra composes and runs :func:`task`; a config it cannot compose is one line and exit 2.

    Hydra prints its own compose errors over several lines with exit 1, unless ``HYDRA_FULL_ERROR``
    is exactly ``1``, when it raises them. It is set to ``1`` here, whatever the user's shell exported
    (unset, ``0``, anything), so that a wrong type, key or option always reaches
    :func:`rsst.config.checks.compose_error`, which names the key, the value and what is allowed.
    A user error raised outside a job (a search's sweeper refusing its settings) is one line and exit 2
    as well, and so is an integer of more digits than Python converts; Ctrl-C before the run started
    is one line and exit 130. Anything else keeps its traceback.
    """
    from hydra.errors import HydraException  # noqa: PLC0415
    from omegaconf.errors import OmegaConfBaseException  # noqa: PLC0415

    from rsst.config.checks import compose_error, long_integer_error  # noqa: PLC0415

    os.environ["HYDRA_FULL_ERROR"] = "1"  # not setdefault: an exported 0 would give Hydra's lines and exit 1
    register_sweeper()
    try:
        task()
    except RsstError as exc:
        report_error(one_line(exc))
        sys.exit(2)
    except (HydraException, OmegaConfBaseException) as exc:
        message = compose_error(exc)
        if message is None:
            raise
        report_error(message)
        sys.exit(2)
    except ValueError as exc:  # Hydra's override parser reading an integer longer than Python converts
        message = long_integer_error(exc, sys.argv[1:])
        if message is None:
            raise
        report_error(message)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C while torch or the loop still import: the run's own handler is not in place
        report_error(INTERRUPTED_STARTING)
        sys.exit(INTERRUPTED)


if __name__ == "__main__":
    main()
