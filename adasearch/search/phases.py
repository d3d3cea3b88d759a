"""Where a run's wall time goes: seconds per phase, for run.yaml and the summary's last note.

Phases nest (the re-timing races its close calls inside it). Each second counts once, in the innermost
phase open at that moment, so the phases add up to the time they cover and a reader can tell the racing's
share from the first re-timing's.
"""

from __future__ import annotations

import contextlib
import time

SETUP, SEARCH, RETIMING, RACING, HELDOUT = "setup", "search", "re-timing", "racing", "held-out"


class PhaseClock:
    """Wall seconds per phase name, summed over every time the phase was open (a fallback round of engine:
    model searches and re-times again: its seconds join the first round's)."""

    def __init__(self, clock=time.perf_counter):
        self.seconds: dict[str, float] = {}
        self._clock = clock
        self._open: list[list] = []  # [name, started at, seconds spent in the phases it opened]

    @contextlib.contextmanager
    def phase(self, name: str):
        self.seconds.setdefault(name, 0.0)  # listed in the order the phases first opened
        self._open.append([name, self._clock(), 0.0])
        try:
            yield
        finally:
            _, started, inner = self._open.pop()
            spent = self._clock() - started
            self.seconds[name] += spent - inner
            if self._open:
                self._open[-1][2] += spent

    def note(self, total_s: float) -> str:
        """One summary line: the run's seconds in all, then each phase's, in the order they first ran."""
        parts = ", ".join(f"{name} {s:.0f} s" for name, s in self.seconds.items())
        return f"time: {total_s:.0f} s in all ({parts})" if parts else f"time: {total_s:.0f} s in all"
