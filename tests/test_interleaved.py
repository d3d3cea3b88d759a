"""Interleaved re-timing (fake clock: exact and never flaky) and the deterministic tie rule."""

import numpy as np
import pytest
import torch

from adasearch.config import DeploymentConfig
from adasearch.measure.interleaved import bootstrap_intervals, figures, round_robin_order, time_interleaved
from adasearch.search.results import noise_ties
from adasearch.search.trials import TrialRecord
from adasearch.spec import RunSpec


def test_every_round_visits_every_config_once_in_a_fresh_seeded_order():
    order = round_robin_order(5, rounds=8, seed=3)
    assert len(order) == 8 and all(sorted(r) == list(range(5)) for r in order)
    assert len({tuple(r) for r in order}) > 1  # not the same order every round
    assert order == round_robin_order(5, rounds=8, seed=3) and order != round_robin_order(5, rounds=8, seed=4)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_configs_are_timed_round_robin_never_in_one_window():
    clock, calls = FakeClock(), []

    def make(i, ms):
        def run(x):
            calls.append(i)
            clock.now += ms / 1e3

        return run

    ms = [1000 * 2.0**-10, 1000 * 2.0**-9, 1000 * 2.0**-8]  # binary fractions of a second: exact sums
    fns = [make(i, t) for i, t in enumerate(ms)]
    out = time_interleaved(fns, [torch.zeros(1, 1)], sync=lambda: None, budget_s=4 * 2.0**-5, rounds=4, warmup=1,
                           min_reps=2, seed=0, clock=clock)  # fmt: skip
    # each visit: one warm-up call, then repetitions for budget/rounds = 1/32 s of fake time

    def runs(seq):  # consecutive calls of one config as one run
        return [c for i, c in enumerate(seq) if i == 0 or seq[i - 1] != c]

    planned = [i for visit in round_robin_order(3, rounds=4, seed=0) for i in visit]
    assert runs(calls) == runs(planned)  # the seeded shuffled rounds, in order
    assert all(runs(calls).count(i) >= 3 for i in range(3))  # each config's timing is spread over the run
    assert [o["latency_p50_ms"] for o in out] == pytest.approx(ms)
    assert [o["latency_reps"] for o in out] == [4 * 32, 4 * 16, 4 * 8]
    assert out[0]["throughput"] == pytest.approx(1024.0)
    for o in out:  # constant timings: the interval is the point
        assert (
            o["latency_p50_ms_ci_low"]
            == pytest.approx(o["latency_p50_ms"])
            == pytest.approx(o["latency_p50_ms_ci_high"])
        )


def test_bootstrap_intervals_cover_the_estimate_and_shrink_with_agreement():
    rng = np.random.default_rng(0)
    noisy = [rng.normal(1.0, 0.3, 20).clip(0.1) for _ in range(8)]
    steady = [rng.normal(1.0, 0.01, 20) for _ in range(8)]
    est = figures(np.concatenate(noisy), 1)
    ci = bootstrap_intervals(noisy, 1, seed=0)
    assert ci["latency_p50_ms_ci_low"] <= est["latency_p50_ms"] <= ci["latency_p50_ms_ci_high"]
    narrow = bootstrap_intervals(steady, 1, seed=0)
    width = lambda c: c["latency_p50_ms_ci_high"] - c["latency_p50_ms_ci_low"]  # noqa: E731
    assert width(narrow) < width(ci) / 5
    assert bootstrap_intervals(noisy, 1, seed=0) == ci  # seeded: the same run gives the same interval


def record(n, acc, p50, low, high, macs):
    m = {"accuracy": acc, "latency_p50_ms": p50, "latency_p50_ms_ci_low": low, "latency_p50_ms_ci_high": high,
         "macs": macs}  # fmt: skip
    return TrialRecord(n, DeploymentConfig(depth=n), {}, m, True, {})


def test_ties_within_noise_go_to_the_config_with_fewer_macs():
    spec = RunSpec(objectives=["accuracy", "latency_p50_ms"])
    a = record(1, 0.95, 1.00, 0.90, 1.10, macs=300)  # "faster" by noise
    b = record(2, 0.95, 1.05, 0.95, 1.15, macs=200)  # overlaps a: same group, fewer MACs -> stands for it
    c = record(3, 0.95, 2.00, 1.90, 2.10, macs=100)  # clearly slower: its own group
    d = record(4, 0.96, 1.02, 0.92, 1.12, macs=400)  # more accurate: never tied with a or b
    kept = noise_ties([a, b, c, d], spec)
    assert [r.number for r in kept] == [2, 3, 4]
    assert [r.number for r in noise_ties([b, a, d, c], spec)] == [2, 4, 3]  # order does not matter
    untimed = RunSpec(objectives=["accuracy", "gmacs"])
    assert noise_ties([a, b, c, d], untimed) == [a, b, c, d]  # deterministic objectives: nothing to tie
