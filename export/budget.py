"""The export's time budget: what the fidelity gate's remedies may spend, and where they are stopped.

``edgeseg export --time-budget S`` bounds the whole export (default 900 s: the issue's 15 minutes for the three
TotalSegmentator-sized parts); ``--remedy-time`` bounds the remedies alone. The base export (conversion,
quantization, validation) always runs to its end; the remedies get what is left of both bounds when they start
(:class:`Deadline`). Each remedy is checked before it starts against what the base INT8 cost (its quantization
and validation seconds): one that cannot fit is recorded as not tried. A remedy running when the deadline passes
is stopped at the next check -- every calibration patch NNCF collects statistics on, every validation patch of
accuracy control, every tile of a validation series, every patch of the sensitivity pass -- by
:class:`BudgetSpent`, which the remedy loop records ("stopped", with the seconds it ran) before it restores the
INT8 model as first quantized and marks it failed.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass


class BudgetSpent(Exception):
    """The export's remedy deadline passed (caught by the remedy loop; never leaves the export)."""


@dataclass(frozen=True)
class Deadline:
    """A point in ``time.monotonic()`` (None: no bound) and the words that name it in the report."""

    at: float | None
    what: str = "the remedy time"

    def left(self) -> float:
        """Seconds left (infinite without a bound; negative once passed)."""
        return math.inf if self.at is None else self.at - time.monotonic()

    def check(self, where: str = "") -> None:
        """Raise :class:`BudgetSpent` once the deadline has passed."""
        if self.at is not None and time.monotonic() > self.at:
            raise BudgetSpent(f"{self.what} ran out{' during ' + where if where else ''}")


#: no bound: :meth:`Deadline.check` never raises
NO_DEADLINE = Deadline(None, "no bound")


def remedy_deadline(export_started: float, base_done: float, time_budget_s: float | None,
                    remedy_time_s: float | None) -> Deadline:
    """The remedies' deadline: the earlier of ``export_started + time_budget_s`` (the export's budget) and
    ``base_done + remedy_time_s`` (the remedies' own bound); both ``time.monotonic()`` values."""
    bounds: list[tuple[float, str]] = []
    if time_budget_s is not None:
        bounds.append((export_started + time_budget_s,
                       f"the export's time budget ({time_budget_s:g} s; the base export took "
                       f"{base_done - export_started:.0f} s)"))
    if remedy_time_s is not None:
        bounds.append((base_done + remedy_time_s, f"the remedy time ({remedy_time_s:g} s)"))
    if not bounds:
        return NO_DEADLINE
    at, what = min(bounds)
    return Deadline(at, what)
