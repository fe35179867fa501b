"""rsst's Optuna sweeper under the name Hydra accepts: ``hydra/sweeper=optuna`` (conf/hydra/sweeper/optuna.yaml).

Hydra instantiates a sweeper only from its ``hydra_plugins`` namespace package and finds it by scanning
that package, so this module holds a subclass and nothing else; the sweeper is
:class:`rsst.search.sweeper.OptunaSweeper`.
"""

from rsst.search import sweeper as _sweeper


class OptunaSweeper(_sweeper.OptunaSweeper):
    """:class:`rsst.search.sweeper.OptunaSweeper`, registered with Hydra."""
