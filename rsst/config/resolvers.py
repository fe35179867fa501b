"""OmegaConf resolvers the configs use. Registered on import of ``rsst`` so that Slurm jobs have them too."""

from __future__ import annotations

import secrets
from pathlib import Path

from omegaconf import OmegaConf


def register() -> None:
    # A short random token that keeps two sweeps started in the same second apart. Cached, like
    # Hydra's `now`, so the launcher and its jobs resolve the same sweep folder.
    if not OmegaConf.has_resolver("rsst_uid"):
        OmegaConf.register_new_resolver("rsst_uid", lambda: secrets.token_hex(2), use_cache=True)
    # `--help`: each group's options, read from the conf folder (Hydra's own list would show the
    # schema's ConfigStore entries too, which are types, not choices).
    if not OmegaConf.has_resolver("rsst_group_options"):
        OmegaConf.register_new_resolver("rsst_group_options", group_options)


def group_options() -> str:
    """``group: a, b, c`` for every folder of ``conf/`` but ``hydra``, one line each."""
    from rsst.config.location import conf_dir  # noqa: PLC0415

    root: Path = conf_dir()
    lines = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "hydra"):
        names = sorted(f.stem for f in folder.glob("*.yaml"))
        lines.append(f"{folder.name}: {', '.join(names)}")
    return "\n".join(lines)
