"""Interleaved timing of many configs, with 95 % intervals: how finalists are re-timed.

Timing each config in its own window lets drift and bursts from other processes land on some configs
and not others, so configs with equal accuracy swap places on noise from run to run. Here the configs
are timed round-robin: ROUNDS rounds, each visiting every config once in a new random order (seeded),
with a warm-up after every config change and an equal share of the time budget per visit. Noise then
lands on all of them alike.

Each figure (p50, p90, p99 per batch, and throughput) pools the repetitions of all rounds. Its 95 %
interval is a percentile bootstrap over rounds: BOOTSTRAP resamples of the rounds with replacement
(seeded), the figure recomputed from each resample's pooled repetitions, and the 2.5th and 97.5th
percentiles of those. Rounds, not repetitions, are resampled because repetitions within one round
share that moment's load.

Each config's figures of every round are returned too (ROUND_FIGURES), so that two configs can be
compared round by round (measure/paired.py), which cancels the load they shared.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from adasearch.metrics import P50, P90, P99, THROUGHPUT, interval_columns

ROUNDS = 8
BOOTSTRAP = 1000
TIMED = (P50, P90, P99, THROUGHPUT)
ROUND_FIGURES = "round_figures"  # {figure name: [its value in each round]}, beside the pooled figures


def round_robin_order(n: int, rounds: int, seed: int) -> list:
    """[[config indices in round r's order] for each round]: every index once per round, shuffled anew."""
    rng = random.Random(seed)
    order = []
    for _ in range(rounds):
        visit = list(range(n))
        rng.shuffle(visit)
        order.append(visit)
    return order


def figures(times_ms: np.ndarray, batch_size: int) -> dict:
    """The timed figures of pooled repetitions (ms per batch)."""
    p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
    return {P50: float(p50), P90: float(p90), P99: float(p99), THROUGHPUT: batch_size * 1e3 / float(times_ms.mean())}


def bootstrap_intervals(rounds_ms: Sequence[np.ndarray], batch_size: int, seed: int = 0,
                        resamples: int = BOOTSTRAP) -> dict:  # fmt: skip
    """{NAME_ci_low: ..., NAME_ci_high: ...} for every timed figure, by a percentile bootstrap over rounds."""
    rng = np.random.default_rng(seed)
    k = len(rounds_ms)
    draws = {name: [] for name in TIMED}
    for _ in range(resamples):
        pooled = np.concatenate([rounds_ms[i] for i in rng.integers(0, k, size=k)])
        for name, value in figures(pooled, batch_size).items():
            draws[name].append(value)
    out = {}
    for name, values in draws.items():
        low, high = interval_columns(name)
        out[low], out[high] = (float(v) for v in np.percentile(values, [2.5, 97.5]))
    return out


def time_interleaved(
    run_fns: Sequence,
    batches: Sequence[torch.Tensor],
    *,
    sync,
    budget_s: float,
    rounds: int = ROUNDS,
    warmup: int = 1,
    min_reps: int = 2,
    seed: int = 0,
    clock=None,
) -> list:
    """Per run_fn (one per config): {figures..., intervals..., "latency_reps": n, ROUND_FIGURES: {...}}.
    Each of `rounds` rounds visits every config once in a fresh random order; a visit warms up, then
    times repetitions for budget_s / rounds seconds (at least min_reps)."""
    import time

    clock = clock or time.perf_counter
    batch_size = batches[0].shape[0]
    samples = [[[] for _ in range(rounds)] for _ in run_fns]
    share = budget_s / rounds
    with torch.inference_mode():
        for r, visit in enumerate(round_robin_order(len(run_fns), rounds, seed)):
            for i in visit:
                fn = run_fns[i]
                for w in range(warmup):
                    fn(batches[w % len(batches)])
                sync()
                start = clock()
                times = samples[i][r]
                while len(times) < min_reps or clock() - start < share:
                    batch = batches[len(times) % len(batches)]
                    sync()
                    t0 = clock()
                    fn(batch)
                    sync()
                    times.append((clock() - t0) * 1e3)
    out = []
    for i, per_round in enumerate(samples):
        rounds_ms = [np.array(t) for t in per_round]
        pooled = np.concatenate(rounds_ms)
        per_round = [figures(t, batch_size) for t in rounds_ms]
        out.append({**figures(pooled, batch_size), **bootstrap_intervals(rounds_ms, batch_size, seed=seed + i),
                    "latency_reps": int(pooled.size),
                    ROUND_FIGURES: {name: [f[name] for f in per_round] for name in TIMED}})  # fmt: skip
    return out
