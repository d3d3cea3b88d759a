"""The deadline-aware choice, driven by a fake clock and an injected latency predictor: deterministic."""

import math

import pytest

from adasearch import load_model
from adasearch.config import DeploymentConfig
from adasearch.measure.latency_model import LatencyModel, part_keys
from adasearch.serving.deployment import Entry
from adasearch.serving.scheduler import STATIC, FigurePredictor, NoCertifiedConfig, Pending, Scheduler


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def certified(max_drop: float) -> dict:
    return {"metric": "accuracy_drop", "max": max_drop, "confidence": 0.9, "samples": 500, "method": "LTT"}


# Three front configs: the more accurate, the slower. Per-batch latency grows with the batch size.
FRONT = [
    Entry("fast", DeploymentConfig(depth=1), {"accuracy": 0.90, "latency_p90_ms": 1.0}),
    Entry("mid", DeploymentConfig(depth=3), {"accuracy": 0.95, "latency_p90_ms": 2.0}, certified(0.05)),
    Entry("best", DeploymentConfig(depth=6), {"accuracy": 0.98, "latency_p90_ms": 4.0}, certified(0.01)),
]


class Linear:
    """ms(config, b) = p90 at batch 1 x (1 + (b - 1) / 4): batching helps, but a batch still costs more."""

    def predict_ms(self, entry, batch_size):
        return entry.metrics["latency_p90_ms"] * (1 + (batch_size - 1) / 4)


def queue_of(n: int, deadline: float, max_drop=None) -> list:
    return [Pending(1, deadline, max_drop) for _ in range(n)]


def test_the_choice_shifts_cheaper_as_the_queue_grows():
    clock = Clock()
    s = Scheduler(FRONT, Linear(), max_batch=16, clock=clock)
    # All requests arrived at t=0 with a 20 ms budget. Hand-computed: best at b=1 takes 4 ms, at b=8 11 ms,
    # at b=16 19 ms; mid at b=16 9.5 ms; fast at b=16 4.75 ms.
    assert (s.plan(queue_of(1, 0.020)).entry.name, len(s.plan(queue_of(1, 0.020)).take)) == ("best", 1)
    assert s.plan(queue_of(8, 0.020)).entry.name == "best"  # 11 ms <= 20
    plan = s.plan(queue_of(16, 0.020))
    assert (plan.entry.name, len(plan.take), plan.predicted_ms) == ("best", 16, 19.0)
    clock.now = 0.005  # the same 16 requests, 5 ms later: 15 ms left; best needs 19, mid 9.5
    plan = s.plan(queue_of(16, 0.020))
    assert (plan.entry.name, len(plan.take), plan.predicted_ms) == ("mid", 16, 9.5)
    clock.now = 0.012  # 8 ms left: mid at 16 needs 9.5, fast 4.75
    assert s.plan(queue_of(16, 0.020)).entry.name == "fast"
    clock.now = 0.0172  # 2.8 ms left: fast at 16 needs 4.75; the batch shrinks until it fits (b=8: 2.75 ms)
    plan = s.plan(queue_of(16, 0.020))
    assert (plan.entry.name, len(plan.take), plan.late) == ("fast", 8, ())
    clock.now = 0.0195  # 0.5 ms left: not even fast alone (1 ms); every request is late, none is taken
    plan = s.plan(queue_of(16, 0.020))
    assert plan.entry is None and len(plan.late) == 16 and plan.take == ()


def test_never_outside_the_requested_max_drop():
    clock = Clock()
    s = Scheduler(FRONT, Linear(), max_batch=16, clock=clock)
    chosen = []
    for now in (0.0, 0.005, 0.0121, 0.0141):  # ever more queued time, as above
        clock.now = now
        plan = s.plan(queue_of(16, 0.020, max_drop=0.05))
        chosen.append((plan.entry.name, len(plan.take)))
        assert plan.entry.covers(0.05)
    # mid at b=16 needs 9.5 ms: with 7.9 ms left the batch shrinks to 12 (7.5 ms), with 5.9 ms to 8 (5.5 ms)
    assert chosen == [("best", 16), ("mid", 16), ("mid", 12), ("mid", 8)]
    clock.now = 0.0185  # 1.5 ms left: mid alone needs 2 ms; fast would make it, but it is not certified
    plan = s.plan(queue_of(4, 0.020, max_drop=0.05))
    assert plan.entry is None and len(plan.late) == 4
    # one request with a tighter max_drop limits its whole batch to configs certified for it
    clock.now = 0.0
    mixed = queue_of(3, 0.020) + queue_of(1, 0.020, max_drop=0.01)
    assert s.plan(mixed).entry.name == "best"
    with pytest.raises(NoCertifiedConfig, match="max_drop=0.001"):
        s.eligible(0.001)


def test_admission_sheds_what_no_config_can_drain_in_time():
    clock = Clock()
    s = Scheduler(FRONT, Linear(), max_batch=16, clock=clock)
    request = Pending(1, 0.020)
    # 40 samples ahead + this one: 2 full batches of fast (4.75 ms each) and one of 9 (3 ms) = 12.5 ms
    assert s.admit(request, samples_ahead=40, busy_until=0.0) is None
    assert s.admit(request, samples_ahead=40, busy_until=0.008) is not None  # a forward running until 8 ms
    assert "after its deadline" in s.admit(request, samples_ahead=70, busy_until=0.0)  # 4 x 4.75 + 1.75 = 20.75
    assert s.admit(Pending(1, math.inf), samples_ahead=10_000, busy_until=1.0) is None  # no deadline: the queue bound
    static = Scheduler(FRONT, Linear(), max_batch=16, policy=STATIC, clock=clock)
    assert static.admit(request, samples_ahead=70, busy_until=0.0) is None
    clock.now = 0.019
    plan = static.plan(queue_of(16, 0.020))  # static never sheds late: the most accurate, knowingly late
    assert plan.entry.name == "best" and not plan.within_deadline and plan.late == ()


def test_figure_predictor_scales_the_run_figures():
    p = FigurePredictor(batch_size=2)
    best = FRONT[2]
    assert p.predict_ms(best, 2) == 4.0  # the run's own batch size: its p90
    assert p.predict_ms(best, 1) == 4.0 and p.predict_ms(best, 8) == 16.0  # the stated rule
    p.record_warm_up("best", 2, [1.0, 0.9, 1.1])
    p.record_warm_up("best", 8, [2.5, 2.4, 9.0])
    assert p.predict_ms(best, 8) == 10.0  # p90 x the medians of the forwards timed at warm-up, 2.5 / 1.0
    assert p.predict_ms(Entry("untimed", best.config, {"accuracy": 0.99}), 2) is None
    warm = FigurePredictor(batch_size=2, source="warm-up")
    warm.record_warm_up("best", 8, [float(t) for t in range(10, 0, -1)])
    assert warm.predict_ms(best, 8) == 9.0  # the p90 of 1..10 ms, nearest rank
    assert warm.predict_ms(best, 4) == 8.0  # not timed at 4: the run's figure and the rule


def test_figure_predictor_uses_a_latency_model_profiled_at_that_batch_size():
    model = load_model("demo")
    entry = Entry("d3", DeploymentConfig(num_tokens=8, depth=3), {"accuracy": 0.9, "latency_p90_ms": 3.0})
    plan = model.plan(**entry.config.to_dict())
    keys = part_keys(plan, 1) + part_keys(plan, 4)
    parts = {k: (0.5 if k.endswith(":b4") else 0.25) for k in keys}
    lm = LatencyModel({"batch_size": 1}, 1, parts, [[0.0, 1.0], [100.0, 1.0]], [], [1.0])
    p = FigurePredictor(batch_size=1, latency_model=lm, model=model)
    # at b=4: embedding+read, 3 blocks and the readout, 0.5 ms each (calibration 1, noise 1)
    assert p.predict_ms(entry, 4) == pytest.approx(0.5 * len(part_keys(plan, 4)))
    assert p.predict_ms(entry, 8) == 24.0  # not profiled at 8: the rule, 3.0 x 8
