"""Entry point: compose the Hydra config and hand it to ``rsst.run``.

A user's mistake (a bad value, a missing file or device, a folder in use, a full disk) ends a
single run with one line on stderr and exit 2. In a sweep the job fails alone: the launcher runs
the other jobs and ends the sweep with a summary of the failures (see ``rsst/config/sweeps.py``).
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from rsst import run
from rsst.config.checks import ConfigError
from rsst.config.sweeps import record_failure
from rsst.folder.atomic import RunIOError
from rsst.folder.checkpoint import CheckpointError
from rsst.folder.lock import RunLockedError
from rsst.folder.naming import RunFolderError
from rsst.parallel.agree import PeerFailed

log = logging.getLogger("rsst")

# PeerFailed: another process of a multi-process run failed first and printed its own error
USER_ERRORS = (ConfigError, CheckpointError, RunFolderError, RunLockedError, RunIOError, PeerFailed)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    hc = HydraConfig.get()
    sweep = hc.mode == RunMode.MULTIRUN
    if cfg.paths.root is None:
        with open_dict(cfg):
            cfg.paths.root = hc.sweep.dir if sweep else "runs"
    try:
        return run(cfg)
    except USER_ERRORS as exc:
        log.error("%s", exc)
        if sweep:  # no exit: the launcher runs the next job; the sweep's summary lists this one
            record_failure(hc.sweep.dir, hc.job.num, list(hc.overrides.task), str(exc))
            return {"error": str(exc)}
        sys.exit(2)


if __name__ == "__main__":
    main()
