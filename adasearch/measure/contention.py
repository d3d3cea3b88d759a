"""How busy the machine was while adasearch timed: other processes' CPU use, the load average, and the drift
of the timed references across rounds.

A timing taken while other processes compete for the CPU is inflated: on a 2-core machine kept at a load
average of 4, configs whose p90 is about 1 ms quietly read 10-17 ms. pyperf warns when a result "may be
unstable" and when the system load is high; MLPerf requires a quiet system. Here every timing window (a
trial's timing, the latency profile, the interleaved re-timing of the finalists) is watched:

- other_cpu_share (0..1): the CPU time other processes used during the windows over the machine's CPU
  capacity in them: (busy time of every CPU, /proc/stat through psutil, minus this process tree's CPU
  time) / (the CPUs' total time). CPU time is counted in clock ticks (10 ms), so a window shorter than a
  few ticks is noisy alone; the sums over all windows are not.
- load_avg: the 1-minute load average at the end of the windows, their mean.
- reference_cv: in the interleaved re-timing each config is visited once a round; the coefficient of
  variation (sample standard deviation over mean) of a config's per-visit p50 across the rounds (what the
  interleaved timer returns per round, under the run's runtime), the median over configs.
- inflation: per config, its median visit over its quietest visit, minus 1; the median over configs.
  About how much the timed figures are above what the quietest moments of the same run gave.

Only the run's own process is watched: its descendants (search.workers' extra processes) count as its own
CPU, not others', and their timing windows and Ray nodes' are not watched.

With quiet_wait_s, a window that follows a busy one first waits, in steps of QUIET_STEP_S, until the
machine is quiet (others under BUSY_SHARE) or the wait budget of the whole run is spent.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Optional

import numpy as np
import psutil

from adasearch.checks import MAX_QUIET_WAIT_S
from adasearch.measure.interleaved import ROUND_FIGURES
from adasearch.metrics import P50, TIMED_METRICS

# Others using more than a quarter of the machine's CPU while it times. On N CPUs, others' work fits beside
# T timing threads without taking their CPUs only up to (N - T) / N: 0 for the demo's 2 threads on 2 cores,
# 0.5 for 1 thread there. A quarter is half of that room on the smallest target adasearch times on (2 cores,
# 1 thread), and on 2 threads it means a timing thread waits for its CPU about a quarter of the time, which
# moves a p90 by more than the 15 % at which the latency model's prediction counts as a miss. Measured on the
# shared 2-core VM of the issue (bench/results/contention.md): 0.66 with other jobs alone at load 4, 0.84-0.95
# with 1-4 burners added; pyperf's "may be unstable" (a standard deviation over 10 % of the mean) fired too.
BUSY_SHARE = 0.25
QUIET_STEP_S = 1.0  # a quiet-wait samples the machine over this long before it decides again
CHILDREN_EVERY_S = 5.0  # how often this process's descendants are looked up again
WATCHED = ("time", "profile_latency")  # the evaluator's timing methods a window wraps (besides time_interleaved)


def _busy_total_s() -> tuple:
    """(busy, total) CPU seconds of the whole machine since boot, over every CPU."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    busy = sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
    return busy, busy + idle


class _Tree:
    """CPU seconds of this process, its reaped children and its live descendants (workers, Ray's). Finding
    the descendants scans every process (about 9 ms on a busy machine), so they are looked up again only
    every CHILDREN_EVERY_S; reading the known ones' times is cheap."""

    def __init__(self):
        self.proc, self.children, self.found_at = psutil.Process(), [], -math.inf

    def cpu_s(self) -> float:
        if time.monotonic() - self.found_at > CHILDREN_EVERY_S:
            self.children, self.found_at = self.proc.children(recursive=True), time.monotonic()
        t = self.proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in self.children:
            with contextlib.suppress(psutil.Error):  # it ended meanwhile
                c = child.cpu_times()
                total += c.user + c.system
        return total


def _load() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # not on this platform
        return None


class ContentionMonitor:
    """Watches the timing windows of one run. `watch(evaluator)` wraps its timing methods; `summary()`
    is what run.yaml's environment.contention records; `warning()` the summary's line when busy."""

    def __init__(self, quiet_wait_s: float = 0.0):
        self.tree = _Tree()
        self.other_s = self.total_s = 0.0
        self.last_share = 0.0  # others' share in the last window (or quiet-wait sample)
        self.loads: list = []
        self.visits: dict = {}  # config -> per-visit median ms, over every interleaved re-timing
        self.quiet_wait_s, self.waited_s = min(quiet_wait_s, MAX_QUIET_WAIT_S), 0.0

    def _snapshot(self) -> tuple:
        busy, total = _busy_total_s()
        return busy, total, self.tree.cpu_s()

    def _share(self, start: tuple, end: tuple) -> tuple:
        """(others' CPU seconds, the machine's CPU seconds) between two snapshots."""
        total = end[1] - start[1]
        return max(0.0, (end[0] - start[0]) - (end[2] - start[2])), max(total, 0.0)

    def _wait_for_quiet(self) -> None:
        while self.last_share > BUSY_SHARE and self.waited_s + QUIET_STEP_S <= self.quiet_wait_s:
            start = self._snapshot()
            time.sleep(QUIET_STEP_S)
            other, total = self._share(start, self._snapshot())
            self.waited_s += QUIET_STEP_S
            self.last_share = other / total if total else 0.0

    @contextlib.contextmanager
    def window(self):
        """A stretch of timing: others' CPU use during it is counted (after a quiet-wait, when asked)."""
        self._wait_for_quiet()
        start = self._snapshot()
        try:
            yield
        finally:
            other, total = self._share(start, self._snapshot())
            self.other_s, self.total_s = self.other_s + other, self.total_s + total
            self.last_share = other / total if total else self.last_share
            load = _load()
            if load is not None:
                self.loads.append(load)

    def watch(self, evaluator) -> None:
        """Run the evaluator's timing methods inside windows (as instance attributes wrapping them)."""
        for name in WATCHED:
            setattr(evaluator, name, self._windowed(getattr(evaluator, name)))
        interleaved = evaluator.time_interleaved

        def time_interleaved(*args, **kwargs):
            with self.window():
                timed = interleaved(*args, **kwargs)
            for config, figures in timed.items():  # each round's p50 of a config: its per-visit figure
                self.visits.setdefault(config, []).extend(
                    v for v in figures.get(ROUND_FIGURES, {}).get(P50, []) if v is not None
                )
            return timed

        evaluator.time_interleaved = time_interleaved

    def _windowed(self, method):
        def wrapped(*args, **kwargs):
            with self.window():
                return method(*args, **kwargs)

        return wrapped

    def summary(self) -> Optional[dict]:
        """{other_cpu_share, load_avg, reference_cv, inflation, waited_s}; None when nothing was timed here."""
        if self.total_s <= 0:
            return None
        cvs, inflations = [], []
        for medians in self.visits.values():
            m = np.asarray(medians)
            if m.size >= 2 and m.min() > 0:
                cvs.append(float(m.std(ddof=1) / m.mean()))
                inflations.append(float(np.median(m) / m.min() - 1))
        return {
            "other_cpu_share": round(self.other_s / self.total_s, 3),
            "load_avg": round(float(np.mean(self.loads)), 2) if self.loads else None,
            "reference_cv": round(float(np.median(cvs)), 3) if cvs else None,
            "inflation": round(float(np.median(inflations)), 3) if inflations else None,
            "waited_s": self.waited_s,
        }


def busy(contention: Optional[dict]) -> bool:
    return bool(contention) and contention["other_cpu_share"] > BUSY_SHARE


def describe(contention: dict) -> str:
    """e.g. `other processes used 62% of its CPU, load average 3.9`."""
    load = contention.get("load_avg")
    return f"other processes used {contention['other_cpu_share']:.0%} of its CPU" + (
        f", load average {load:.1f}" if isinstance(load, (int, float)) else ""
    )


def report_line(contention: Optional[dict]) -> str:
    """The report's line on the conditions of the timing (run.yaml's environment.contention)."""
    if not isinstance(contention, dict) or not isinstance(contention.get("other_cpu_share"), (int, float)):
        return "not recorded"
    cv, inflation = contention.get("reference_cv"), contention.get("inflation")
    return (
        f"{'BUSY: timed figures are inflated' if busy(contention) else 'quiet'}: {describe(contention)}"
        + (f"; reference CV {cv:.3f}" if isinstance(cv, (int, float)) else "")
        + (f"; typical round {inflation:.0%} over the quietest" if isinstance(inflation, (int, float)) else "")
    )


def warning(contention: Optional[dict]) -> Optional[str]:
    """The summary's one line when the machine was busy while timing, else None."""
    if not busy(contention):
        return None
    inflation = contention.get("inflation")
    by = (
        f"by about {inflation:.0%} (the timed configs' typical round over their quietest)"
        if inflation is not None
        else "by an unknown amount"
    )
    waited = f"; waited {contention['waited_s']:.0f} s for quiet" if contention.get("waited_s") else ""
    return (
        f"the machine was busy while timing: {describe(contention)}{waited}; timed figures are inflated {by}: "
        f"run again on a quiet machine, or with --quiet-wait SECONDS"
    )


def summary_lines(contention: Optional[dict], front: list, records: list) -> list:
    """What the run's summary adds: the warning when the machine was busy, and, when it was and no config
    met a timed constraint, that the busy machine may be why (so no empty front is left unexplained)."""
    line = warning(contention)
    if line is None:
        return []
    out = [f"warning: {line}"]
    missed = sorted({name for r in records for name in r.violations} & set(TIMED_METRICS))
    if not front and missed:
        out.append(
            f"no config satisfies the constraints, and the machine was busy while timing ({describe(contention)}): "
            f"{', '.join(missed)} may be missed because of that alone"
        )
    return out
