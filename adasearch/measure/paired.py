"""Paired comparisons of two configs timed in the same interleaved rounds (measure/interleaved.py).

Each round visits every config once, so the configs of one round share that moment's load, and the
machine's speed, which changes between runs and drifts within one, multiplies all of them alike. The
per-round ratio of two configs' figures cancels both; the two configs' own intervals do not, which is
why overlapping intervals are not the test.

- Observations: for each round both configs ran in, d = log(a's figure / b's figure) (the round's p50,
  p90, p99 or throughput, from that round's repetitions). Rounds of several sessions (separate calls of
  the timer: the first re-timing and the races that follow it) pool: each session's rounds are paired
  within it, so the session's own speed cancels too.
- Estimate: the median of d (robust to a burst that hits one config's visit in one round), reported as
  the ratio exp(median).
- Interval: a 95 % percentile bootstrap of that median over rounds (RESAMPLES resamples of the rounds
  with replacement, seeded, so a run gives the same answer twice).
- Separated: the whole interval lies beyond the practical threshold, 1 + PRACTICAL on either side of a
  ratio of 1, as criterion.rs calls a change only when its interval clears its noise threshold. PRACTICAL
  is 3 %: below what anyone would choose one config over another for (0.70 against 0.72 ms), and, in
  the simulated noisy machine of tests/test_front_simulation.py (14 % noise per visit, 128 rounds), the
  threshold that holds the front stillest: 1, 2, 3 and 5 % give a mean pairwise Jaccard of 0.93, 0.92,
  0.94 and 0.79 over its 20 runs (a larger one leaves more pairs undecided than racing can settle).
  criterion.rs' default, 1 %, is meant for machines kept quiet for benchmarking.
- Settled: the whole interval lies within the practical threshold (the interval-inclusion form of an
  equivalence test: TOST at 2.5 % a side). More rounds would not separate the two, so a race spends none
  on them (search/front/beyond_noise.close_calls).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

PRACTICAL = 0.03  # differences of less than 3 % are never "separated" (why 3 %: above)
RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Comparison:
    """a's figure against b's: their ratio (exp of the median per-round log-ratio) and its interval."""

    ratio: float
    low: float
    high: float
    rounds: int  # paired rounds behind it
    threshold: float = PRACTICAL

    @property
    def sign(self) -> int:
        """+1: a's figure is larger beyond noise; -1: smaller beyond noise; 0: not separated."""
        if self.low > 1 + self.threshold:
            return 1
        if self.high < 1 / (1 + self.threshold):
            return -1
        return 0

    @property
    def separated(self) -> bool:
        return self.sign != 0

    @property
    def settled(self) -> bool:
        """Equivalent beyond noise: the whole interval within the threshold, so more rounds would not separate them."""
        return 1 / (1 + self.threshold) <= self.low and self.high <= 1 + self.threshold

    def reversed(self) -> Comparison:
        """b against a: the same test, mirrored (exactly, so the order of two configs never matters)."""
        return Comparison(1 / self.ratio, 1 / self.high, 1 / self.low, self.rounds, self.threshold)


def bootstrap_medians(values: Sequence[float], seed: int = 0, resamples: int = RESAMPLES) -> np.ndarray:
    """The median of each of `resamples` resamples (with replacement) of `values`."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    rng = np.random.default_rng(seed)
    resampled = np.sort(values[rng.integers(0, n, size=(resamples, n))], axis=1)
    # np.median's figures (the middle value, or the mean of the middle two), from one sort of each resample:
    # several times faster than np.median(axis=1) at the hundred-odd rounds a re-timing has.
    return (resampled[:, (n - 1) // 2] + resampled[:, n // 2]) / 2


def median_interval(values: Sequence[float], seed: int = 0, resamples: int = RESAMPLES,
                    confidence: float = CONFIDENCE) -> tuple[float, float, float]:  # fmt: skip
    """(median, low, high): the median of `values` and its percentile bootstrap interval."""
    medians = bootstrap_medians(values, seed, resamples)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(np.median(values)), float(low), float(high)


def compare(a_rounds: Sequence[float], b_rounds: Sequence[float], seed: int = 0,
            threshold: float = PRACTICAL) -> Comparison:  # fmt: skip
    """Compare two configs from their figures in the same rounds (a_rounds[i] and b_rounds[i] were timed
    in round i). The log-ratios' bootstrap is symmetric: compare(b, a) is compare(a, b).reversed() up
    to rounding, and callers that need it exact call reversed()."""
    if len(a_rounds) != len(b_rounds) or not len(a_rounds):
        raise ValueError(f"paired rounds must match and be non-empty: {len(a_rounds)} against {len(b_rounds)}")
    logs = np.log(np.asarray(a_rounds, dtype=float)) - np.log(np.asarray(b_rounds, dtype=float))
    mid, low, high = median_interval(logs, seed)
    return Comparison(math.exp(mid), math.exp(low), math.exp(high), len(logs), threshold)


def shared_rounds(a_sessions: Mapping, b_sessions: Mapping, metric: str) -> tuple[list, list]:
    """The figures of `metric` in the rounds both configs ran in, paired: a config's sessions are
    {session id: {metric: [figure per round]}}; sessions both have, in id order, concatenated. A figure is None
    in a round the config was not visited in (a session timed in groups to fit in memory): such rounds are
    not shared."""
    a, b = [], []
    for session in sorted(set(a_sessions) & set(b_sessions)):
        ra, rb = a_sessions[session].get(metric), b_sessions[session].get(metric)
        if ra and rb and len(ra) == len(rb):
            both = [(x, y) for x, y in zip(ra, rb) if x is not None and y is not None]
            a += [x for x, _ in both]
            b += [y for _, y in both]
    return a, b
