"""Latency timing, peak memory and the recorded environment.

Timing logic is tested against a fake clock that each call advances by a known amount, so the
assertions are exact and never depend on how busy the machine is. Real-clock runs only check
structure (ordering, counts, consistency), never a speed.
"""
import json
import socket

import numpy as np
import pytest
import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from adasearch import DeploymentConfig, UserError
from adasearch.measure import latency
from adasearch.measure.environment import environment, resolve_device, set_threads
from adasearch.measure.latency import time_config, time_forward
from adasearch.measure.memory import MIB, LiveTensorBytes, peak_memory_mb
from tests.conftest import random_model

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
    r = time_forward(fake_fn(clock, seen), ms_batches(1, 2, 3), device=CPU, min_reps=1, max_reps=7,
                     budget_s=1e9, warmup=2)
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
    r = time_forward(fake_fn(clock), ms_batches(*durations, batch_size=4), device=CPU, min_reps=100,
                     max_reps=100, budget_s=0.0, warmup=0)
    assert (r.p50_ms, r.p90_ms, r.p99_ms) == pytest.approx(tuple(np.percentile(durations, [50, 90, 99])))
    assert r.p50_ms <= r.p90_ms <= r.p99_ms
    assert r.mean_ms == pytest.approx(50.5)
    assert r.batch_size == 4
    assert r.throughput == pytest.approx(4 * 100 / (sum(durations) / 1e3))


@pytest.mark.parametrize("kwargs", [dict(min_reps=0), dict(min_reps=5, max_reps=4), dict(budget_s=-1),
                                    dict(warmup=-1)])
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


# ----------------------------------------------------------------------------- environment and devices


def test_environment_records_software_and_threads_without_hostname():
    env = environment("cpu", None)
    assert env["torch"] == torch.__version__
    assert env["threads"] == torch.get_num_threads() and env["threads_requested"] is None
    assert env["device"] == "cpu" and env["device_name"]
    assert env["python"] and env["os"]
    assert socket.gethostname() not in json.dumps(env)


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="not known; allowed here: auto, cpu"):
        resolve_device("bogus")
    with pytest.raises(UserError, match="cuda:99"):
        resolve_device("cuda:99")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_resolve_device_refuses_missing_cuda():
    with pytest.raises(UserError, match=r"torch.cuda.is_available\(\) is False\); allowed here: auto, cpu"):
        resolve_device("cuda")


def test_set_threads():
    before = torch.get_num_threads()
    try:
        set_threads(None)
        assert torch.get_num_threads() == before
        set_threads(1)
        assert torch.get_num_threads() == 1
        for bad in (0, -2, 1.5, True):
            with pytest.raises(UserError, match="positive integer"):
                set_threads(bad)
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- peak memory on CPU


class Scratch(nn.Module):
    """A forward whose only big tensors are `n_big` temporary 4 MB vectors, each reduced and dropped."""

    def __init__(self, n_big):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.n_big = n_big

    def run(self, x, config):
        for _ in range(self.n_big):
            x = x + torch.ones(1_000_000).sum()  # 4 MB alive only on this line
        return self.lin(x)


def model_bytes(model, batch):
    return sum(t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers(), batch])


def test_cpu_peak_sees_a_temporary_and_its_release():
    batch = torch.randn(2, 8)
    one = peak_memory_mb(Scratch(1), None, batch, "cpu")
    assert one["method"].startswith("cpu: parameters + peak live tensor bytes")
    base = model_bytes(Scratch(1), batch)
    assert one["peak_mb"] * MIB >= base + 4_000_000
    assert one["peak_mb"] * MIB < base + 4_000_000 + 4096  # nothing else big is invented
    # Three temporaries one after another: each is freed before the next, so they never add up.
    assert peak_memory_mb(Scratch(3), None, batch, "cpu")["peak_mb"] * MIB < base + 4_000_000 + 4096


def test_cpu_peak_grows_with_tokens(images):
    model = random_model()
    small = peak_memory_mb(model, DeploymentConfig(num_tokens=4), images, "cpu")["peak_mb"]
    large = peak_memory_mb(model, DeploymentConfig(num_tokens=64), images, "cpu")["peak_mb"]
    assert large > small > model_bytes(model, images) / MIB


class StoragePoller(TorchDispatchMode):
    """Reference tracker: after each op, asks the C++ storages themselves whether they are still alive.
    It also sees references held only by C++, which Python weakrefs on tensor objects could miss."""

    def __init__(self, pinned):
        super().__init__()
        self.pinned = {t.untyped_storage().data_ptr() for t in pinned}
        self.alive, self.peak = {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.alive = {ref: n for ref, n in self.alive.items() if not ref.expired()}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                s = t.untyped_storage()
                if s.nbytes() and s.data_ptr() not in self.pinned:
                    self.alive[StorageWeakRef(s)] = s.nbytes()
        self.peak = max(self.peak, sum(self.alive.values()))
        return out


@pytest.mark.parametrize("config", [DeploymentConfig(), DeploymentConfig(num_tokens=64, mat_dim=16),
                                    DeploymentConfig(num_tokens=[16, 8, 8, 4], depth_tau=0.3)])
def test_weakref_tracker_agrees_with_storage_liveness(config, images):
    model = random_model()
    pinned = [*model.parameters(), *model.buffers(), images]
    peaks = []
    for tracker in (LiveTensorBytes(pinned), StoragePoller(pinned)):
        with torch.no_grad(), tracker:
            model.run(images, config)
        peaks.append(tracker.peak)
    assert peaks[0] == peaks[1] > 0
