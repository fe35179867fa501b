"""Where the config groups are: the checkout's ``conf/``, else the copy installed inside the package.

In a checkout (or an editable install) the groups are the top-level ``conf/`` beside ``rsst/``;
a wheel (``pip install .``) ships that folder as ``rsst/conf``. Hydra composes from
:func:`conf_dir` (:mod:`rsst.commands.train`), and :mod:`rsst.config.registry` reads the targets a
run folder may build from it, so both always see the same options.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # rsst/


def conf_dir() -> Path:
    """The config folder: ``<checkout>/conf`` when ``rsst`` is imported from a checkout, else ``rsst/conf``.

    A checkout is recognised by its ``pyproject.toml`` beside ``rsst/``, so a stray ``conf/`` folder
    next to an installed package (in ``site-packages``) is never taken for the project's.
    """
    import rsst.config.schema  # noqa: F401, PLC0415  (conf/ names the schema: whoever composes from it needs it stored)

    checkout = PACKAGE.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "conf" / "config.yaml").is_file():
        return checkout / "conf"
    return PACKAGE / "conf"
