"""The search's objective, ``hydra.sweeper.optimized_metric``: a validation figure of a trial's rounds, never a test.

Written ``<figure>@<rounds>``:

- ``figure`` is a validation column of the ticket's rows in ``rounds.json``: ``best_val_acc`` (the
  ticket's validation accuracy at its best-validation epoch) or ``trained_best_val_acc`` (the network
  as trained, which differs from the ticket for RSST and ADMM);
- ``rounds`` is ``last`` (the last round), a round number ``r``, ``mean_pruned`` (the mean over the
  pruned rounds 1 to R-1: the area under the validation-accuracy/density curve, per round) or
  ``mean`` (every round, the dense one included).

A test figure (``test_acc``, ``trained_test_acc``, ``final_test_acc``) is refused by name: tuning on it
would report a test accuracy that was chosen on the test set.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rsst.config.checks import ConfigError

KEY = "hydra.sweeper.optimized_metric"
VALIDATION_FIGURES = ("best_val_acc", "trained_best_val_acc")
SUMMARIES = ("last", "mean_pruned", "mean")
EXPECTED = (
    f"<figure>@<rounds>, figure one of {', '.join(VALIDATION_FIGURES)} (validation figures of rounds.json), "
    f"rounds one of {', '.join(SUMMARIES)} or a round number"
)


@dataclass(frozen=True)
class Objective:
    """A validation figure of a run's ticket rows, at one round or averaged over rounds."""

    figure: str
    rounds: str  # a SUMMARIES name, or a round number as digits

    @property
    def name(self) -> str:
        return f"{self.figure}@{self.rounds}"

    def check_rounds(self, rounds: int) -> None:
        """Refuse, before anything trains, an objective that runs of ``prune.rounds=rounds`` cannot give."""
        if self.rounds.isdigit() and int(self.rounds) >= rounds:
            raise ConfigError(
                f"{KEY}={self.name!r} is invalid: round {self.rounds} does not exist with prune.rounds={rounds}; "
                f"expected a round in 0..{rounds - 1}, or last, mean_pruned, mean"
            )
        if self.rounds == "mean_pruned" and rounds < 2:
            raise ConfigError(
                f"{KEY}={self.name!r} is invalid: prune.rounds={rounds} has no pruned round; "
                "expected prune.rounds >= 2, or rounds last, mean or a round number"
            )

    def value(self, rows: Sequence[dict[str, Any]]) -> float:
        """The objective of a finished run's round rows (lottery-ticket control rows are not the ticket's)."""
        tickets = {row["round"]: row for row in rows if not row.get("branch")}
        if not tickets:
            raise ValueError("the run recorded no round")
        if self.rounds == "last":
            chosen = [max(tickets)]
        elif self.rounds == "mean":
            chosen = sorted(tickets)
        elif self.rounds == "mean_pruned":
            chosen = sorted(r for r in tickets if r > 0)
        else:
            chosen = [int(self.rounds)]
        missing = [r for r in chosen if r not in tickets or self.figure not in tickets[r]]
        if not chosen or missing:
            raise ValueError(f"the run has no {self.figure} for round {missing[0] if missing else 'r > 0'}")
        value = sum(float(tickets[r][self.figure]) for r in chosen) / len(chosen)
        if not math.isfinite(value):
            raise ValueError(f"{self.name} is {value}, not a number")
        return value


def parse_objective(text: Any) -> Objective:
    """``text`` as an :class:`Objective`, or one line naming the key, the value and what is expected."""
    found = re.fullmatch(r"([a-z_]+)@([a-z_]+|[0-9]+)", text) if isinstance(text, str) else None
    if found is None:
        raise ConfigError(f"{KEY}={text!r} is invalid: expected {EXPECTED}")
    figure, rounds = found[1], found[2]
    if "test" in figure:
        raise ConfigError(
            f"{KEY}={text!r} is refused: {figure} is a test figure, and a search is tuned on validation only; "
            f"expected {EXPECTED}"
        )
    if figure not in VALIDATION_FIGURES or not (rounds.isdigit() or rounds in SUMMARIES):
        raise ConfigError(f"{KEY}={text!r} is invalid: expected {EXPECTED}")
    return Objective(figure, str(int(rounds)) if rounds.isdigit() else rounds)
