"""The search space in Hydra's sweep grammar, as Optuna distributions, and a trial's values back as overrides.

``hydra.sweeper.params`` maps a key (or a config group) to one of:

- ``interval(a, b)``: a float in [a, b]; ``tag(log, interval(a, b))`` on a log scale;
  ``tag(int, interval(a, b))`` an integer (both tags together: an integer on a log scale);
- ``range(a, b[, step])``: ``a, a + step, ...`` below ``b``, as Hydra's range means it;
- ``choice(x, y, ...)``: one of the values (a group's options, strings, numbers);
- a plain value: fixed for every trial.

Sweep overrides on the command line (``struct.fillback_rate=interval(0, 1)``) join the space; plain
ones are fixed. Optuna is imported only when a distribution is made.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rsst.config.checks import ConfigError

TAGS = {"log", "int"}
_PLAIN = re.compile(r"[A-Za-z_][\w.\-/]*")
_WORDS = {"null", "true", "false", "nan", "inf"}


@dataclass(frozen=True)
class Param:
    """One searched key: its grammar as written, its Optuna distribution, and the values the space check composes."""

    key: str
    text: str
    distribution: Any
    probes: tuple[Any, ...]  # an interval's or range's ends, every choice


def override_value(value: Any) -> str:
    """``value`` as the override grammar reads it back: numbers and plain words as they are, other text quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _WORDS:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def overrides(params: Mapping[str, Any]) -> list[str]:
    """A trial's values as ``key=value`` overrides, in the order of the space."""
    return [f"{key}={override_value(value)}" for key, value in params.items()]


def flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``params`` as dotted keys: ``hydra.sweeper.params.struct.fillback_rate=...`` nests, a YAML file may not."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _distribution(key: str, text: str, override: Any) -> Param:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep  # noqa: PLC0415
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: PLC0415

    sweep = override.value()
    where = f"the search space's {key}={text} is invalid"
    unknown = set(sweep.tags) - TAGS
    if unknown:
        raise ConfigError(f"{where}: unknown tag {sorted(unknown)[0]!r}; expected the tags log and int")
    if isinstance(sweep, ChoiceSweep):
        values = list(sweep.list)
        bad = [v for v in values if not isinstance(v, (str, int, float, bool, type(None)))]
        if bad or not values:
            raise ConfigError(f"{where}: expected choices that are strings, numbers, booleans or null")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{where}: a choice is listed twice; expected distinct choices")
        return Param(key, text, CategoricalDistribution(values), tuple(values))
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{where}: the range is empty; expected range(start, stop, step) with a value below stop")
        step = sweep.step
        whole = all(isinstance(v, int) for v in (sweep.start, sweep.stop, step))
        if whole:
            ints = IntDistribution(int(values[0]), int(values[-1]), step=int(step))
            return Param(key, text, ints, (values[0], values[-1]))
        low, high = float(values[0]), float(values[0]) + step * (len(values) - 1)
        return Param(key, text, FloatDistribution(low, high, step=float(step)), (low, high))
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        log = "log" in sweep.tags
        if not low < high:
            raise ConfigError(f"{where}: expected interval(low, high) with low < high")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log scale needs low > 0")
        if "int" in sweep.tags:
            if int(low) != low or int(high) != high:
                raise ConfigError(f"{where}: tag(int, ...) needs whole ends")
            return Param(key, text, IntDistribution(int(low), int(high), log=log), (int(low), int(high)))
        return Param(key, text, FloatDistribution(float(low), float(high), log=log), (float(low), float(high)))
    raise ConfigError(f"{where}: expected interval(...), range(...), choice(...) or a plain value")


def parse_space(params: Mapping[str, Any], arguments: Sequence[str]) -> tuple[list[str], dict[str, Param]]:
    """``(fixed overrides, searched keys)`` from ``hydra.sweeper.params`` and the command line's task overrides.

    The command line wins: a plain ``key=value`` there fixes a key ``params`` searches, and a sweep there
    replaces the key's range in ``params``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: PLC0415
    from hydra.errors import OverrideParseException  # noqa: PLC0415

    parser = OverridesParser.create()
    written = [(f"hydra.sweeper.params.{key}", f"{key}={value if isinstance(value, str) else override_value(value)}")
               for key, value in flatten(params).items()]  # fmt: skip
    written += [("the command line's", line) for line in arguments]
    fixed: dict[str, str] = {}
    space: dict[str, Param] = {}
    for where, line in written:
        try:
            override = parser.parse_override(line)
        except OverrideParseException as exc:
            raise ConfigError(f"{where} {line!r} does not parse: {str(exc).splitlines()[0]}") from None
        key = override.get_key_element()
        fixed.pop(key, None)
        space.pop(key, None)
        if override.is_sweep_override():
            space[key] = _distribution(key, line.partition("=")[2], override)
        else:
            fixed[key] = line
    return list(fixed.values()), space
