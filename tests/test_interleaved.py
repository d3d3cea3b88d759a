"""Interleaved re-timing (fake clock: exact and never flaky)."""

import numpy as np
import pytest
import torch

from adasearch.measure.interleaved import (
    MAX_ROUNDS,
    OVERRUN,
    ROUND_FIGURES,
    ROUNDS,
    STOP_MIN_ROUNDS,
    STOPPED,
    VISIT_CALLS,
    bootstrap_intervals,
    figures,
    resample_counts,
    round_robin_order,
    rounds_for,
    stop_checks,
    time_interleaved,
    typical_ms,
)


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
    # every round's own figures come back too, for the paired comparisons (measure/paired.py)
    assert [o[ROUND_FIGURES]["latency_p50_ms"] for o in out] == [pytest.approx([t] * 4) for t in ms]
    assert out[0][ROUND_FIGURES]["throughput"] == pytest.approx([1024.0] * 4)
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


def test_the_budget_is_split_into_as_many_rounds_as_keep_visit_calls_per_visit():
    assert VISIT_CALLS == 8 and (ROUNDS, MAX_ROUNDS) == (8, 128)
    assert rounds_for(1.0, 0.7) == 128  # the demo's sub-ms configs: 178 visits of 8 calls fit; capped
    assert rounds_for(0.32, 2.0) == 20  # 320 ms / (8 calls x 2 ms)
    assert rounds_for(0.5, 50.0) == 8  # too slow for 8 such visits: the fewest rounds
    assert rounds_for(1.0, 0.0) == 128


def test_without_rounds_the_median_configs_call_chooses_them_and_visits_time_whole_passes_of_the_batches():
    clock, seen = FakeClock(), {}

    def make(i, ms):
        def run(x):
            seen.setdefault(i, []).append(int(x.item()))
            clock.now += ms / 1e3

        return run

    fns = [make(0, 1000 * 2.0**-10), make(1, 1000 * 2.0**-9), make(2, 1000 * 2.0**-7)]  # binary fractions: exact
    batches = [torch.full((1, 1), float(b)) for b in range(8)]
    out = time_interleaved(fns, batches, sync=lambda: None, budget_s=0.3125, min_reps=1, clock=clock)
    # the median config decides: visits of 8 calls of 2**-9 s, 2**-6 s each, and 20 of them fill 0.3125 s
    assert [len(o[ROUND_FIGURES]["latency_p50_ms"]) for o in out] == [20, 20, 20]
    # a visit is whole passes through the 8 batches: two for the fast config, one for the median one, and
    # one for the slow one too, although that takes 4x its share: never a part of a pass
    assert [o["latency_reps"] for o in out] == [20 * 16, 20 * 8, 20 * 8]
    # so every batch is timed alike (batch 0 also takes the warm-up calls: one a visit, and two when the
    # rounds were chosen)
    assert [seen[2].count(b) for b in range(8)] == [20 + 20 + 2] + [20 + 1] * 7  # the probe's pass: + 1 each


def test_the_rounds_follow_a_whole_pass_not_the_first_batch_alone():
    """Early-exit configs whose first image runs every block (2**-7 s) while the other 7 stop early (2**-10 s):
    a pass's mean call is 15/8 x 2**-10 s, so 500 ms fits int(500 / (8 x 1.831)) = 34 visits of 8 calls. By the
    first batch's call alone it would be int(500 / (8 x 7.8125)) = 8."""
    clock = FakeClock()

    def run(x):
        clock.now += 2.0**-7 if x.item() == 0 else 2.0**-10

    batches = [torch.full((1, 1), float(b)) for b in range(8)]
    out = time_interleaved([run] * 3, batches, sync=lambda: None, budget_s=0.5, min_reps=1, clock=clock)
    assert [len(o[ROUND_FIGURES]["latency_p50_ms"]) for o in out] == [34, 34, 34]


def test_a_session_whose_calls_turn_slow_stops_once_it_took_overrun_times_its_budget():
    """The probe finds 2**-10 s calls (16 rounds fit 0.125 s), then every call takes 2**-6 s: each round of
    the two configs (a warm-up and 2 calls each) takes 0.09375 s. The session stops at the first round
    boundary past OVERRUN x 0.125 s x 2 configs = 0.75 s, after 9 whole rounds, not 16."""
    clock, calls = FakeClock(), [0]

    def run(x):
        calls[0] += 1
        clock.now += 2.0**-10 if calls[0] <= 4 else 2.0**-6  # the probes' 4 calls are fast

    assert OVERRUN == 3.0
    out = time_interleaved([run, run], [torch.zeros(1, 1)], sync=lambda: None, budget_s=0.125, clock=clock)
    assert [len(o[ROUND_FIGURES]["latency_p50_ms"]) for o in out] == [9, 9]
    assert [o["latency_reps"] for o in out] == [18, 18]


def test_stop_checks_come_at_fractions_of_the_session_never_before_the_minimum():
    assert STOP_MIN_ROUNDS == 16
    assert stop_checks(128) == {16, 32, 64, 96}
    assert stop_checks(40) == {16, 20, 30}  # 40 / 8 = 5 and 40 / 4 = 10: too few rounds yet, asked at 16
    assert stop_checks(16) == set() and stop_checks(8) == set()


def test_a_config_stop_names_is_visited_no_more_and_its_later_rounds_are_none():
    """Three configs, 32 rounds: stop is asked after rounds 16 and 24 (stop_checks) about the configs still
    timed, with their figures of the rounds so far; it stops config 1 at the first check."""
    clock, calls, asked = FakeClock(), [], []

    def make(i):
        def run(x):
            calls.append(i)
            clock.now += (i + 1) * 2.0**-10

        return run

    def stop(done, figures):
        asked.append((done, sorted(figures), {len(f["latency_p50_ms"]) for f in figures.values()}))
        return [1]

    out = time_interleaved([make(i) for i in range(3)], [torch.zeros(1, 1)], sync=lambda: None, budget_s=0.5,
                           rounds=32, warmup=1, min_reps=2, clock=clock, stop=stop)  # fmt: skip
    assert asked == [(16, [0, 1, 2], {16}), (24, [0, 2], {24})]
    stopped = out[1][ROUND_FIGURES]["latency_p50_ms"]
    assert all(x is not None for x in stopped[:16]) and stopped[16:] == [None] * 16
    assert out[1][STOPPED] == [16, 32] and STOPPED not in out[0] and STOPPED not in out[2]
    # 16 visits of a warm-up and 8 calls of 2**-9 s (its share, 0.5 s / 32 rounds, is 2**-6 s): half of 32
    assert out[1]["latency_reps"] == 16 * 8 and calls.count(1) == 16 * (1 + 8)
    assert out[0]["latency_reps"] == 32 * 16 and calls.count(0) == 32 * (1 + 16)
    assert out[1]["latency_p50_ms"] == pytest.approx(2 * 2.0**-10 * 1e3)  # from the rounds it was timed in
    assert out[1]["latency_p50_ms_ci_low"] == pytest.approx(out[1]["latency_p50_ms_ci_high"])


def test_a_stopped_configs_figures_are_scaled_to_the_whole_session():
    """The machine runs 2x slow in the first 16 of 32 rounds. Configs 0 and 2, timed every round: their p50 is
    the middle of 32 calls at 2x and 32 at 1x, 1.5x their time, and over the first 16 rounds alone 2x. Config
    1, stopped after round 16, was timed only at 2x: scaled by the others' 1.5 / 2, its p50 is 1.5x its time
    too, as if it had been timed with them throughout. Its rounds stay as they were timed."""
    clock, rounds_seen = FakeClock(), []
    ms = [2.0**-10, 2.0**-9, 2.0**-8]

    def make(i):
        def run(x):
            clock.now += ms[i] * (2 if len(rounds_seen) <= 16 else 1)

        return run

    def stop(done, figures):
        return [1]

    import adasearch.measure.interleaved as interleaved

    def visits(n, rounds, seed):  # the seeded rounds, counted as the timer reaches them (the clock reads them)
        for r, visit in enumerate(round_robin_order(n, rounds, seed)):
            rounds_seen.append(r)
            yield visit

    original = interleaved.round_robin_order
    interleaved.round_robin_order = visits
    try:
        # no budget: every visit is min_reps calls, so a config timed throughout has as many calls at 2x as at 1x
        out = time_interleaved([make(i) for i in range(3)], [torch.zeros(1, 1)], sync=lambda: None, budget_s=0.0,
                               rounds=32, warmup=1, min_reps=2, clock=clock, stop=stop)  # fmt: skip
    finally:
        interleaved.round_robin_order = original
    assert out[1][STOPPED] == [16, 32]
    assert [o["latency_p50_ms"] for o in out] == pytest.approx([1.5 * t * 1e3 for t in ms])
    assert out[1][ROUND_FIGURES]["latency_p50_ms"][:16] == pytest.approx([2 * ms[1] * 1e3] * 16)
    assert out[1]["latency_p50_ms_ci_low"] == pytest.approx(1.5 * ms[1] * 1e3)


def test_typical_ms_is_the_median_over_batches_of_each_batchs_median_by_hand():
    # Two passes through 4 batches (call j ran batch j % 4), the last batch an image that runs deeper.
    times = np.array([1.0, 1.2, 0.9, 3.0, 1.1, 1.0, 1.3, 3.2])
    # per batch: median(1.0, 1.1) = 1.05, median(1.2, 1.0) = 1.1, median(0.9, 1.3) = 1.1, median(3.0, 3.2) = 3.1
    assert typical_ms(times, 4) == pytest.approx(1.1)
    assert float(np.median(times)) == pytest.approx(1.15)  # the pooled median: (1.1 + 1.2) / 2
    assert figures(times, 1, 4)["latency_p50_ms"] == pytest.approx(1.1)
    assert figures(times, 1, 4)["latency_p90_ms"] == pytest.approx(np.percentile(times, 90))  # the tail: every call
    assert typical_ms(times, 1) == pytest.approx(1.15)  # one batch: the pooled median
    assert typical_ms(times[:3], 4) == pytest.approx(1.0)  # fewer calls than batches: the batches that ran


def test_typical_ms_of_an_exit_config_does_not_move_with_the_machines_noise():
    """5 of 8 images stop after one block (1 ms), 3 run on (2 ms): the pooled median is the light group's
    upper tail, so it grows with the per-call noise; the median over the batches' medians stays put."""
    rng = np.random.default_rng(0)
    cost = np.array([1.0, 2.0, 1.0, 1.0, 2.0, 1.0, 2.0, 1.0])
    passes = 200

    def timed(cv):
        return np.tile(cost, passes) * rng.lognormal(0.0, cv, size=cost.size * passes)

    quiet, noisy = timed(0.02), timed(0.25)
    assert typical_ms(noisy, 8) / typical_ms(quiet, 8) == pytest.approx(1.0, abs=0.03)
    assert np.median(noisy) / np.median(quiet) > 1.1  # 80th percentile of the 1 ms group: exp(0.84 x 0.25)


def test_the_bootstrap_gives_the_figures_of_each_resamples_pool_exactly():
    """Computed from counts as weights, all resamples at once: the same intervals as building every
    resample's pool of rounds and taking `figures` of it (rounds of one or two passes through 8 batches)."""
    rng = np.random.default_rng(1)
    cost = np.array([1.0, 1.0, 2.0, 1.0, 1.0, 2.0, 1.0, 2.0])
    rounds = []
    for _ in range(40):
        passes = int(rng.integers(1, 3))
        rounds.append(np.tile(cost, passes) * rng.lognormal(0.0, 0.2, size=8 * passes))
    got = bootstrap_intervals(rounds, 4, seed=5, resamples=300, n_batches=8)
    counts = resample_counts(len(rounds), 300, 5)
    assert counts.shape == (300, 40) and (counts.sum(axis=1) == 40).all()
    draws: dict = {}
    for row in counts:
        pooled = np.concatenate([rounds[r] for r in range(len(rounds)) for _ in range(row[r])])
        for name, value in figures(pooled, 4, 8).items():
            draws.setdefault(name, []).append(value)
    for name, values in draws.items():
        low, high = np.percentile(values, [2.5, 97.5])
        assert got[name + "_ci_low"] == pytest.approx(low, rel=1e-12)
        assert got[name + "_ci_high"] == pytest.approx(high, rel=1e-12)
