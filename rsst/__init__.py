"""rsst: lottery-ticket pruning experiments (IMP, Refill, RSST and baselines), configured with Hydra.

Importing the package is cheap: it registers the OmegaConf resolvers the configs use (so Slurm
jobs have them too) and nothing else; ``rsst.run`` (the single run function) is imported on first
use. The layers, top to bottom: ``commands`` (train, report, export), ``loop`` (the round loop),
``config``, ``folder`` (the run folder), ``parallel`` and ``runtime``; below them the plug-in
groups ``data``, ``models``, ``pruning`` and ``tracking``, which Hydra instantiates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rsst.config import resolvers

if TYPE_CHECKING:
    from rsst.loop.run import run

resolvers.register()

__version__ = "0.1.0"
__all__ = ["run"]


def __getattr__(name: str) -> Any:
    if name == "run":  # the run function, imported with the loop (torch, Hydra) only when asked for
        from rsst.loop.run import run

        return run
    raise AttributeError(f"module 'rsst' has no attribute {name!r}")
