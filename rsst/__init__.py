"""rsst: lottery-ticket pruning experiments (IMP, Refill, RSST and baselines), configured with Hydra."""

from rsst import resolvers
from rsst.run import run

resolvers.register()

__version__ = "0.1.0"
__all__ = ["run"]
