"""Entry point: compose the Hydra config and hand it to ``rsst.run``."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from rsst import run
from rsst.checkpoint import CheckpointError
from rsst.config import ConfigError

log = logging.getLogger("rsst")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    hc = HydraConfig.get()
    if cfg.paths.root is None:
        with open_dict(cfg):
            cfg.paths.root = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else "runs"
    try:
        return run(cfg)
    except (ConfigError, CheckpointError) as exc:
        log.error("%s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
