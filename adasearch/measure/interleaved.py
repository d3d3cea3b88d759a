"""Interleaved timing of many configs, with 95 % intervals: how finalists are re-timed.

Timing each config in its own window lets drift and bursts from other processes land on some configs
and not others, so configs with equal accuracy swap places on noise from run to run. Here the configs
are timed round-robin: rounds (ROUNDS to MAX_ROUNDS), each visiting every config once in a new random
order (seeded), with a warm-up after every config change and an equal share of the time budget per
visit. Noise then lands on all of them alike.

Each figure (p50, p90, p99 per batch, and throughput) pools the repetitions of all rounds (p50 as the
median over the timing batches of each one's median: typical_ms says why). Its 95 %
interval is a percentile bootstrap over rounds: BOOTSTRAP resamples of the rounds with replacement
(seeded), the figure recomputed from each resample's pooled repetitions, and the 2.5th and 97.5th
percentiles of those. Rounds, not repetitions, are resampled because repetitions within one round
share that moment's load.

Each config's figures of every round are returned too (ROUND_FIGURES), so that two configs can be
compared round by round (measure/paired.py), which cancels the load they shared.

How many rounds: as many as the budget allows (rounds_for), not a fixed few. On a shared VM a visit's
figure moves with the machine's state at that moment, however long the visit: in
bench/results/visit_length.md, the demo's configs timed for the same second each, split into 8, 32 or
128 visits, had a per-round sd of the paired log-ratio of 0.19-0.23 at every visit length (2026-12-07), so
the paired interval narrows about as the square root of the rounds (95 % half-width 12.7 %, 4.9 % and
2.5 %; the sd of the paired median between repeats 0.043, 0.028 and 0.013; the table's notes keep an
earlier run, before whole-pass visits: 13.6 %, 3.2 % and 1.8 %). The median config's visit keeps at
least VISIT_CALLS timed calls (a pass through the evaluator's 8 latency batches: a visit times whole
passes, _visit), so that its p50 is a median of several, and there are at most MAX_ROUNDS rounds (each
visit warms up once: more rounds, more warm-up calls). Configs too slow for ROUNDS such visits within
the budget get ROUNDS; a config slower than the median takes one pass a visit, over its share. The
rounds follow the median config, not the slowest: one slow config (the full network among
sub-millisecond ones) would otherwise cut every pair's rounds to a third.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch

from adasearch.metrics import P50, P90, P99, THROUGHPUT, interval_columns

ROUNDS = 8  # the fewest rounds a timing is split into
MAX_ROUNDS = 128  # the most (why: above)
VISIT_CALLS = 8  # timed calls the median config's visit holds at least, when rounds are chosen by rounds_for
OVERRUN = 3.0  # a session of rounds_for's rounds stops (after ROUNDS at least) once it took this many times its budget
STOP_CHECKS = (1 / 8, 1 / 4, 1 / 2, 3 / 4)  # of a session's rounds, after which `stop` is asked (why: finalists)
STOP_MIN_ROUNDS = 16  # the fewest rounds done at a check
BOOTSTRAP = 1000
CHUNK = 100  # bootstrap resamples computed at once (their weight matrices held in memory)
TIMED = (P50, P90, P99, THROUGHPUT)
ROUND_FIGURES = "round_figures"  # {figure name: [its value in each round]}, beside the pooled figures
STOPPED = "stopped_after_rounds"  # [rounds it was visited in, the session's rounds]: only a config `stop` stopped


def rounds_for(budget_s: float, call_ms: float) -> int:
    """The rounds a config's budget_s of timing is split into, when one call takes call_ms: as many as give
    every visit VISIT_CALLS calls, between ROUNDS and MAX_ROUNDS."""
    if not call_ms > 0:
        return MAX_ROUNDS
    return max(ROUNDS, min(MAX_ROUNDS, int(budget_s * 1e3 / (VISIT_CALLS * call_ms))))


def round_robin_order(n: int, rounds: int, seed: int) -> list:
    """[[config indices in round r's order] for each round]: every index once per round, shuffled anew."""
    rng = random.Random(seed)
    order = []
    for _ in range(rounds):
        visit = list(range(n))
        rng.shuffle(visit)
        order.append(visit)
    return order


def typical_ms(times_ms: np.ndarray, n_batches: int) -> float:
    """The p50 of calls that cycled through n_batches batches (call j ran batch j % n_batches): the median
    over the batches of each batch's median call.

    Not the median of the pooled calls. An early-exit config's batches take different times (at batch 1
    some images stop after one block, others run on), and the pooled median of two such groups sits in
    the upper tail of the larger one, as far up as the per-call noise spreads it: with 5 of the 8 timing
    images stopping after block 1 it is that group's 80th percentile, so it grows with the machine's noise
    (tests/test_interleaved.py: over 10 % between per-call noise of 2 % and 25 %), and a prediction made with
    the noise of another moment misses it. A batch's median takes the noise out first; the median over the
    batches is then the typical input's cost. A static config's batches cost alike: both agree there."""
    times_ms, n = np.asarray(times_ms, dtype=float), max(n_batches, 1)
    if times_ms.size and times_ms.size % n == 0:  # whole passes: one row per pass, one column per batch
        return float(np.median(np.median(times_ms.reshape(-1, n), axis=0)))
    return float(np.median([np.median(times_ms[k::n]) for k in range(min(n, times_ms.size))]))


def figures(times_ms: np.ndarray, batch_size: int, n_batches: int = 1) -> dict:
    """The timed figures of pooled repetitions (ms per batch) that cycled through n_batches batches in
    order: p50 by typical_ms; p90, p99 and throughput over every call (the tail is the noise's too)."""
    p90, p99 = np.percentile(times_ms, [90, 99])
    return {
        P50: typical_ms(times_ms, n_batches),
        P90: float(p90),
        P99: float(p99),
        THROUGHPUT: batch_size * 1e3 / float(times_ms.mean()),
    }


def bootstrap_intervals(rounds_ms: Sequence[np.ndarray], batch_size: int, seed: int = 0,
                        resamples: int = BOOTSTRAP, n_batches: int = 1) -> dict:  # fmt: skip
    """{NAME_ci_low: ..., NAME_ci_high: ...} for every timed figure, by a percentile bootstrap over rounds
    (each round's calls are whole passes through n_batches batches, so that a resample's pool stays in order).

    A resample is how many times it draws each round (resample_counts); its figures are those of `figures`
    on the pool of the drawn rounds, computed from the counts as weights (_weighted_percentiles) for all
    resamples at once: the same numbers (tests/test_interleaved.py), without building a thousand pools per
    config, nine medians each."""
    counts = resample_counts(len(rounds_ms), resamples, seed)
    n = max(n_batches, 1)
    rounds_ms = [np.asarray(t, dtype=float) for t in rounds_ms]
    calls, owner = _sorted_calls(rounds_ms, slice(None))
    per_batch = [_sorted_calls(rounds_ms, slice(k, None, n)) for k in range(n)]
    per_batch = [(v, o) for v, o in per_batch if v.size]
    draws: dict = {name: [] for name in TIMED}
    for chunk in np.array_split(counts, max(1, math.ceil(len(counts) / CHUNK))):
        weights = chunk[:, owner]
        p90, p99 = _weighted_percentiles(calls, weights, (90, 99))
        medians = np.stack([_weighted_percentiles(v, chunk[:, o], (50,))[0] for v, o in per_batch], axis=1)
        draws[P50].append(np.median(medians, axis=1))
        draws[P90].append(p90)
        draws[P99].append(p99)
        draws[THROUGHPUT].append(batch_size * 1e3 * weights.sum(axis=1) / (weights @ calls))
    out = {}
    for name, values in draws.items():
        low, high = interval_columns(name)
        out[low], out[high] = (float(v) for v in np.percentile(np.concatenate(values), [2.5, 97.5]))
    return out


def resample_counts(rounds: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, rounds): how many times each bootstrap resample draws each round (rounds draws with
    replacement, seeded)."""
    drawn = np.random.default_rng(seed).integers(0, rounds, size=(resamples, rounds))
    counts = np.zeros((resamples, rounds), dtype=np.int64)
    np.add.at(counts, (np.arange(resamples)[:, None], drawn), 1)
    return counts


def _sorted_calls(rounds_ms: Sequence[np.ndarray], which: slice) -> tuple:
    """(the calls `which` picks from every round, ascending; the round each came from)."""
    picked = [t[which] for t in rounds_ms]
    values = np.concatenate(picked) if picked else np.array([])
    owner = np.concatenate([np.full(len(t), r) for r, t in enumerate(picked)]) if picked else np.array([], int)
    order = np.argsort(values, kind="stable")
    return values[order], owner[order]


def _weighted_percentiles(values: np.ndarray, weights: np.ndarray, qs) -> list:
    """For each row of weights, the percentiles qs (numpy's default, linear) of the multiset that holds
    values[j] weights[row, j] times; values ascending. Per q: an array with one figure per row."""
    cum = np.cumsum(weights, axis=1)
    n = cum[:, -1]
    out = []
    for q in qs:
        pos = q / 100 * (n - 1)
        lo = np.floor(pos)
        j_lo = (cum > lo[:, None]).argmax(axis=1)  # the expanded multiset's element lo is values[j_lo]
        j_hi = (cum > np.minimum(lo + 1, n - 1)[:, None]).argmax(axis=1)
        out.append(values[j_lo] + (pos - lo) * (values[j_hi] - values[j_lo]))
    return out


def time_interleaved(
    run_fns: Sequence,
    batches: Sequence[torch.Tensor],
    *,
    sync,
    budget_s: float,
    rounds: int | None = None,
    warmup: int = 1,
    min_reps: int = 2,
    seed: int = 0,
    clock=None,
    stop=None,
) -> list:
    """Per run_fn (one per config): {figures..., intervals..., "latency_reps": n, ROUND_FIGURES: {...}}.
    Each of `rounds` rounds visits every config once in a fresh random order; a visit warms up, then
    times whole passes through `batches` for about budget_s / rounds seconds (_visit). Without `rounds`,
    rounds_for chooses them from the median config's call (each config's mean call over one pass through
    the batches, after a warm-up call: _call_ms), and the session stops early, after ROUNDS rounds at
    least, once it has taken OVERRUN times its budget: calls that turn slow after that probe (another
    process takes a core) would otherwise stretch every visit's whole passes far past its share. A run on
    12-07 with one core kept busy spent over 18 minutes where it was meant to spend about 6.

    stop(rounds done, {index: {figure name: [its value in each round so far, None where not visited]}}) ->
    the indices of configs to visit no more, asked after the rounds in stop_checks: a race that drops the
    configs already decided (search/front/finalists.py). A stopped config's figures and intervals are those
    of the rounds it was visited in; its ROUND_FIGURES hold None in the rest, which no pair shares, and
    STOPPED says when it stopped. Configs already stopped are not asked about again."""
    import time

    clock = clock or time.perf_counter
    batch_size = batches[0].shape[0]
    cap_s = math.inf
    if rounds is None:
        rounds = rounds_for(budget_s, float(np.median([_call_ms(fn, batches, sync, clock) for fn in run_fns])))
        cap_s = OVERRUN * budget_s * len(run_fns)
    samples = [[None] * rounds for _ in run_fns]
    per_round = [[None] * rounds for _ in run_fns]  # each visit's figures, as soon as it is taken
    share = budget_s / rounds
    checks, stopped = stop_checks(rounds) if stop else set(), {}
    began = clock()
    with torch.inference_mode():
        for r, visit in enumerate(round_robin_order(len(run_fns), rounds, seed)):
            if r >= ROUNDS and clock() - began > cap_s:
                samples, per_round = [s[:r] for s in samples], [f[:r] for f in per_round]  # whole rounds: paired
                break
            if r in checks:
                for i in stop(r, {i: _by_name(per_round[i][:r]) for i in range(len(run_fns)) if i not in stopped}):
                    stopped.setdefault(i, r)
            for i in visit:
                if i in stopped:
                    continue
                fn = run_fns[i]
                for w in range(warmup):
                    fn(batches[w % len(batches)])
                sync()
                samples[i][r] = _visit(fn, batches, sync, clock, share, min_reps)
                per_round[i][r] = figures(np.array(samples[i][r]), batch_size, len(batches))
    out = []
    for i, visits in enumerate(samples):
        rounds_ms = [np.array(t) for t in visits if t is not None]
        pooled = np.concatenate(rounds_ms)
        intervals = bootstrap_intervals(rounds_ms, batch_size, seed=seed + i, n_batches=len(batches))
        out.append({**figures(pooled, batch_size, len(batches)), **intervals,
                    "latency_reps": int(pooled.size), ROUND_FIGURES: _by_name(per_round[i]),
                    **({STOPPED: [stopped[i], len(visits)]} if i in stopped else {})})  # fmt: skip
    _to_whole_session(out, samples, stopped, batch_size, len(batches))
    return out


def _to_whole_session(out: list, samples: list, stopped: dict, batch_size: int, n_batches: int) -> None:
    """Scale each stopped config's figures and intervals (in out) to the whole session: by the median, over
    the configs visited in every round, of each one's whole figure over its figure from only the rounds the
    stopped config was visited in. The machine's speed moves within a session, and a config stopped after
    its first rounds would otherwise carry those rounds' speed in its figures: paired comparisons cancel it,
    the figures a user reads and the latency model's check (engine: model) do not. tests/test_interleaved.py
    checks it on a machine that runs twice as slow in the first half of the rounds."""
    whole = [i for i in range(len(out)) if i not in stopped]
    for done in set(stopped.values()) if whole else ():
        ratios = {name: [] for name in TIMED}
        for i in whole:
            part = figures(np.concatenate([np.array(t) for t in samples[i][:done]]), batch_size, n_batches)
            for name in TIMED:
                ratios[name].append(out[i][name] / part[name])
        for i in (i for i, d in stopped.items() if d == done):
            for name in TIMED:
                factor = float(np.median(ratios[name]))
                for column in (name, *interval_columns(name)):
                    out[i][column] *= factor


def stop_checks(rounds: int) -> set:
    """After which rounds time_interleaved asks its `stop`: at STOP_CHECKS of the session, and never before
    STOP_MIN_ROUNDS rounds are done (fewer pair too loosely to call anything decided)."""
    return {k for k in (max(STOP_MIN_ROUNDS, int(rounds * f)) for f in STOP_CHECKS) if k < rounds}


def _by_name(per_round: list) -> dict:
    """{figure name: [its value in each round, None where the config was not visited]}."""
    return {name: [None if f is None else f[name] for f in per_round] for name in TIMED}


def _visit(fn, batches: Sequence[torch.Tensor], sync, clock, share: float, min_reps: int) -> list:
    """One visit's timed calls (ms): whole passes through `batches`, as many as the first pass says fit in
    `share` seconds, one at least, and min_reps calls at least. Whole passes, because an early-exit config's
    time depends on its images: a visit that timed only the batches it had time for would give a figure
    that moves with which batches those were (or, started at the first batch every time, one that leaves
    the last batches out), and a slow config's short visits would hold only a few."""
    times: list = []
    passes, start = None, clock()
    while passes is None or len(times) < passes * len(batches):
        times += [_timed_call(fn, batch, sync, clock) for batch in batches]
        if passes is None:
            fit = round(share / (clock() - start)) if clock() > start else 1
            passes = max(1, fit, math.ceil(min_reps / len(batches)))
    return times


def _timed_call(fn, batch: torch.Tensor, sync, clock) -> float:
    """One call of fn, in ms, synchronised before and after (the device's queued work is not counted in it)."""
    sync()
    start = clock()
    fn(batch)
    sync()
    return (clock() - start) * 1e3


def _call_ms(fn, batches: Sequence[torch.Tensor], sync, clock) -> float:
    """fn's mean call over one pass through `batches` (what a visit times), after one warm-up call, in ms.

    Not one call of the first batch: an early-exit config's first image can run every block while most
    stop after one, and when that holds for many configs the median config's call comes out several times
    its p50, so a session gets a fraction of the rounds its budget fits, and paired intervals narrow with
    rounds. tests/test_interleaved.py times such configs on a fake clock."""
    with torch.inference_mode():
        fn(batches[0])
        return float(np.mean([_timed_call(fn, batch, sync, clock) for batch in batches]))
