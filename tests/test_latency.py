"""Latency timing.

Timing logic is tested against a fake clock that each call advances by a known amount, so the
assertions are exact and never depend on how busy the machine is. Real-clock runs only check
structure (ordering, counts, consistency), never a speed.
"""

import numpy as np
import pytest
import torch

from adasearch import DeploymentConfig, UserError
from adasearch.measure import latency
from adasearch.measure.latency import time_config, time_forward
from tests.helpers import random_model

CPU = torch.device("cpu")


class FakeClock:
    """Stands in for the `time` module in latency.py; only `advance` moves it."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(latency, "time", fake)
    return fake


def ms_batches(*durations_ms, batch_size=2):
    """Batches that tell the fake fn how long they take: every entry is the duration in ms."""
    return [torch.full((batch_size, 1), float(d)) for d in durations_ms]


def fake_fn(clock, seen=None):
    def fn(batch):
        if seen is not None:
            seen.append(batch[0, 0].item())
        clock.advance(batch[0, 0].item() / 1e3)

    return fn


# ----------------------------------------------------------------------------- time_forward, fake clock


def test_warmup_then_reps_cycle_through_every_batch(clock):
    seen = []
    r = time_forward(
        fake_fn(clock, seen), ms_batches(1, 2, 3), device=CPU, min_reps=1, max_reps=7, budget_s=1e9, warmup=2
    )
    assert r.reps == 7 and r.warmup == 2
    assert len(seen) == 2 + 7  # every warm-up call happened, untimed
    assert seen == [1, 2] + [1, 2, 3, 1, 2, 3, 1]  # timed reps start again at the first batch


def test_huge_budget_stops_at_max_reps(clock):
    r = time_forward(fake_fn(clock), ms_batches(5), device=CPU, min_reps=3, max_reps=40, budget_s=1e9)
    assert r.reps == 40


def test_tiny_budget_stops_at_min_reps(clock):
    r = time_forward(fake_fn(clock), ms_batches(5), device=CPU, min_reps=12, max_reps=1000, budget_s=0.0)
    assert r.reps == 12


def test_budget_stops_the_first_rep_that_reaches_it(clock):
    # 10 ms per rep, 95 ms budget: after 9 reps 90 ms have passed, the 10th crosses the budget.
    r = time_forward(fake_fn(clock), ms_batches(10), device=CPU, min_reps=1, max_reps=1000, budget_s=0.095)
    assert r.reps == 10


def test_percentiles_mean_and_throughput_are_exact(clock):
    durations = list(range(1, 101))
    r = time_forward(
        fake_fn(clock),
        ms_batches(*durations, batch_size=4),
        device=CPU,
        min_reps=100,
        max_reps=100,
        budget_s=0.0,
        warmup=0,
    )
    assert (r.p50_ms, r.p90_ms, r.p99_ms) == pytest.approx(tuple(np.percentile(durations, [50, 90, 99])))
    assert r.p50_ms <= r.p90_ms <= r.p99_ms
    assert r.mean_ms == pytest.approx(50.5)
    assert r.batch_size == 4
    assert r.throughput == pytest.approx(4 * 100 / (sum(durations) / 1e3))


@pytest.mark.parametrize("kwargs", [dict(min_reps=0), dict(min_reps=5, max_reps=4), dict(budget_s=-1), dict(warmup=-1)])
def test_bad_repetition_arguments_are_refused(kwargs):
    with pytest.raises(UserError):
        time_forward(lambda x: x, ms_batches(1), device=CPU, **kwargs)


def test_batches_must_exist_and_share_one_size():
    with pytest.raises(UserError, match="at least one batch"):
        time_forward(lambda x: x, [], device=CPU)
    with pytest.raises(UserError, match="one batch size"):
        time_forward(lambda x: x, [torch.zeros(4, 1), torch.zeros(3, 1)], device=CPU)


# ----------------------------------------------------------------------------- time_config, real clock


def test_time_config_runs_the_config_on_every_batch(images):
    model = random_model()
    config = DeploymentConfig(num_tokens=8, depth_tau=0.5)
    calls = []
    run = model.run
    model.run = lambda x, c: calls.append((x, c)) or run(x, c)
    batches = [images[:3], images[3:]]
    r = time_config(model, config, batches, device="cpu", min_reps=4, max_reps=4, warmup=1)
    assert len(calls) == 1 + 4
    assert all(c is config for _, c in calls)
    assert [torch.equal(x, batches[i % 2]) for i, (x, _) in enumerate(calls[1:])] == [True] * 4
    assert r.reps == 4 and r.batch_size == 3
    assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms
    assert r.throughput == pytest.approx(r.batch_size * 1e3 / r.mean_ms, rel=1e-6)
    assert r.env["torch"] == torch.__version__ and r.env["device"] == "cpu"


def test_time_config_refuses_a_model_in_another_dtype(images):
    with pytest.raises(ValueError, match="move it first"):
        time_config(random_model(), DeploymentConfig(), [images], device="cpu", dtype=torch.float64)
