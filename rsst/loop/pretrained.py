"""theta_0 from a pretrained state_dict (``prune.rewind=pretrained``), read without unpickling code.

The file must be a state_dict (a dict of tensors, optionally under ``"state_dict"`` or
``"model"``, keys optionally prefixed ``module.``) of the same architecture: every key the
model has and no other, with the same shapes. The stem conv and the classifier are not taken
from it (they keep the model's fresh initialisation, as the original tool's ``pt`` mode did:
a pretrained head and input layer do not fit a new data set's classes and channels).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from rsst.config.checks import ConfigError
from rsst.folder.checkpoint import clone_state
from rsst.folder.safeload import UnloadableFile, load_tensors
from rsst.models import stem_module_name

EXPECTED = 'a state_dict: a dict of tensors, optionally under "state_dict" or "model"'


def _listed(keys: Iterable[str], shown: int = 3) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{len(keys)} ({', '.join(keys[:shown])}{more})"


def read_state_dict(path: str) -> dict[str, Tensor]:
    """The file's tensors by name, ``module.`` prefixes removed; :class:`ConfigError` for anything else."""
    key = f"prune.pretrained={path!r}"
    try:
        blob = load_tensors(path)
    except FileNotFoundError:
        raise ConfigError(f"{key}: no such file (expected {EXPECTED})") from None
    except UnloadableFile as exc:
        raise ConfigError(f"{key}: {str(exc).removeprefix(f'{path}: ')}; expected {EXPECTED}") from None
    if isinstance(blob, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(blob.get(wrapper), dict):
                blob = blob[wrapper]
                break
    if not isinstance(blob, dict):
        raise ConfigError(f"{key} holds a {type(blob).__name__}; expected {EXPECTED}")
    wrong = {k: type(v).__name__ for k, v in blob.items() if not isinstance(k, str) or not isinstance(v, Tensor)}
    if wrong:
        shown = ", ".join(f"{k!r}: {t}" for k, t in list(wrong.items())[:3])
        raise ConfigError(f"{key} holds {len(wrong)} entries that are not named tensors ({shown}); expected {EXPECTED}")
    return {k.removeprefix("module."): v for k, v in blob.items()}


def load_pretrained(path: str, model: nn.Module, classifier: str) -> dict[str, Tensor]:
    """theta_0 for ``prune.rewind=pretrained``: the file's weights, with stem and classifier re-initialised.

    Keys must match in both directions (the stem and ``classifier`` aside); a missing BatchNorm
    ``num_batches_tracked`` (older torchvision files) keeps the fresh count. Raises
    :class:`~rsst.config.ConfigError` naming ``prune.pretrained`` on any mismatch.
    """
    blob = read_state_dict(path)
    fresh = clone_state(model)
    reinit = (f"{stem_module_name(model)}.", f"{classifier}.")
    missing = {
        k for k in fresh if k not in blob and not k.startswith(reinit) and not k.endswith(".num_batches_tracked")
    }
    extra = {k for k in blob if k not in fresh and not k.startswith(reinit)}
    if missing or extra:
        arch = type(model).__name__
        parts = [f"lacks {_listed(missing)} weights {arch} needs"] if missing else []
        parts += [f"has {_listed(extra)} weights {arch} does not have"] if extra else []
        raise ConfigError(
            f"prune.pretrained={path!r} is not a state_dict of this architecture: it {' and '.join(parts)}"
        )
    theta = {}
    for k, v in fresh.items():
        if k.startswith(reinit) or k not in blob:
            theta[k] = v
        elif blob[k].shape != v.shape:
            raise ConfigError(
                f"prune.pretrained={path!r}: {k} has shape {tuple(blob[k].shape)}, expected {tuple(v.shape)}"
            )
        else:
            theta[k] = blob[k].detach().clone().to(v.dtype)
    return theta
