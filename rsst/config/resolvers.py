"""OmegaConf resolvers the configs use. Registered on import of ``rsst`` so that Slurm jobs have them too."""

from __future__ import annotations

import secrets

from omegaconf import OmegaConf


def register() -> None:
    # A short random token that keeps two sweeps started in the same second apart. Cached, like
    # Hydra's `now`, so the launcher and its jobs resolve the same sweep folder.
    if not OmegaConf.has_resolver("rsst_uid"):
        OmegaConf.register_new_resolver("rsst_uid", lambda: secrets.token_hex(2), use_cache=True)
