"""rsst: lottery-ticket pruning experiments (IMP, Refill, RSST and baselines), configured with Hydra."""

from rsst.run import run

__version__ = "0.1.0"
__all__ = ["run"]
