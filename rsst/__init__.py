"""rsst: lottery-ticket pruning experiments (IMP, Refill, RSST and baselines), configured with Hydra.

``rsst.run`` is the run function, imported on first use: importing the loop here would import
``rsst.export`` too, and ``python -m rsst.export`` would then run a module already imported.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from rsst import resolvers

resolvers.register()

__version__ = "0.1.0"
__all__ = ["run"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from rsst.run import run  # noqa: PLC0415  (lazy: see the module docstring)

        globals()["run"] = run
        return run
    raise AttributeError(f"module 'rsst' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps ``rsst.run`` the function: importing the submodule would otherwise bind the module to that name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "run" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
