"""Pareto sets, hypervolume, and which trials get re-timed."""

import pytest

from adasearch import DeploymentConfig
from adasearch.search.front.finalists import NEAR, candidates, near_front, proxy_front
from adasearch.search.front.pareto import dominates, hypervolume, pareto_front
from adasearch.search.trials import TrialRecord
from adasearch.spec import RunSpec

MAXMIN = ["maximize", "minimize"]


def test_front_with_mixed_directions():
    pts = [(0.9, 5.0), (0.95, 7.0), (0.9, 6.0), (0.8, 1.0), (0.95, 7.0)]
    assert pareto_front(pts, MAXMIN) == [0, 1, 3]  # (0.9,6) dominated; the repeated (0.95,7) kept once
    assert dominates((0.9, 5.0), (0.9, 6.0), MAXMIN) and not dominates((0.9, 5.0), (0.9, 5.0), MAXMIN)


def test_hypervolume_2d_and_3d():
    # minimise both: points (1,3), (2,2), (3,1) with reference (4,4): 3 + 2 + 1 = 6
    assert hypervolume([(1, 3), (2, 2), (3, 1)], ["minimize"] * 2, (4, 4)) == pytest.approx(6)
    assert hypervolume([(3, 1)], MAXMIN, (0, 4)) == pytest.approx(9)  # maximise the first
    # a unit cube corner: (0,0,0) with reference (1,1,1) = 1; adding a dominated point changes nothing
    assert hypervolume([(0, 0, 0), (0.5, 0.5, 0.5)], ["minimize"] * 3, (1, 1, 1)) == pytest.approx(1)
    assert hypervolume([(0, 0.5, 0.5), (0.5, 0, 0.5)], ["minimize"] * 3, (1, 1, 1)) == pytest.approx(0.375)


def _rec(n, acc, lat):
    return TrialRecord(
        n, DeploymentConfig(depth=n % 6 + 1), {}, {"accuracy": acc, "latency_p50_ms": lat, "gmacs": lat}, True, {}
    )


def test_candidates_for_retiming():
    recs = [_rec(0, 0.9, 1.0), _rec(1, 0.95, 2.0), _rec(2, 0.89, 1.1), _rec(3, 0.94, 2.1), _rec(4, 0.5, 9.0)]
    timed = RunSpec(objectives=["accuracy", "latency_p50_ms"])
    assert [r.number for r in candidates(recs, timed)] == [0, 1, 2, 3]  # front + the next layer
    untimed = RunSpec(objectives=["accuracy", "gmacs"])
    assert [r.number for r in candidates(recs, untimed)] == [0, 1]  # deterministic: the front is exact


def test_configs_a_timing_error_of_near_could_put_on_the_front_are_re_timed_too():
    """A prediction or a brief timing that is off by up to NEAR (15 %) can move a config on or off the
    front, so the configs no rival beats by more than that are candidates, closest first."""

    def rec(n, acc, lat):  # a config of its own per trial
        return TrialRecord(n, DeploymentConfig(num_tokens=n + 1), {}, {"accuracy": acc, "latency_p50_ms": lat,
                                                                        "gmacs": lat}, True, {})  # fmt: skip

    recs = [rec(0, 0.90, 1.00), rec(1, 0.95, 2.00), rec(2, 0.89, 1.05), rec(3, 0.94, 2.10),
            rec(4, 0.88, 1.10),  # beaten by 0 by 10 %: near
            rec(5, 0.88, 1.30),  # beaten by 0 by 30 %: not
            rec(6, 0.93, 2.25)]  # beaten by 1 by 12.5 %: near, farther than 4  # fmt: skip
    spec = RunSpec(objectives=["accuracy", "latency_p50_ms"])
    assert NEAR == 0.15
    assert [r.number for r in candidates(recs, spec)] == [0, 1, 2, 3, 4, 6]  # front, next layer, near ones
    assert [r.number for r in near_front(recs, spec, chosen=recs[:4], limit=1)] == [4]
    assert near_front(recs, RunSpec(objectives=["accuracy", "gmacs"]), chosen=recs[:2], limit=9) == []  # untimed


def test_near_misses_of_a_timed_constraint_are_re_timed_too():
    """A brief timing can push a config over a latency bound; if it would be on the front within the
    bound, it is worth re-timing. Misses of untimed constraints, and dominated misses, are not."""
    from adasearch.search.trials import violations

    spec = RunSpec(
        objectives=["accuracy", "latency_p50_ms"],
        constraints={"latency_p50_ms": {"max": 2.0}, "accuracy": {"min": 0.8}},
    )

    def rec(n, acc, lat):
        metrics = {"accuracy": acc, "latency_p50_ms": lat}
        viol = violations(spec, metrics)
        return TrialRecord(n, DeploymentConfig(depth=n % 6 + 1), {}, metrics, not viol, viol)

    recs = [
        rec(0, 0.90, 1.0),
        rec(1, 0.95, 1.9),  # the feasible front
        rec(2, 0.97, 2.2),  # 10 % over the bound, would top the front: a near miss
        rec(3, 0.99, 9.0),  # 350 % over: a near miss too, but farther
        rec(4, 0.70, 0.5),  # breaks accuracy, which timing cannot fix
        rec(5, 0.94, 2.5),
    ]  # over the bound and dominated by trial 1 anyway
    assert [r.number for r in candidates(recs, spec)] == [0, 1, 2, 3]
    assert [r.number for r in candidates(recs[:2] + recs[2:4][::-1], spec)] == [0, 1, 2, 3]  # closest first


def test_closest_measures_a_violation_against_the_bound_it_broke():
    """With latency bounded on both sides, 0.1 ms is 90 % under its 1 ms minimum: farther off than an
    accuracy 5.6 % under its minimum, although 0.9 ms is tiny next to the 100 ms maximum."""
    from adasearch.config import DeploymentConfig
    from adasearch.search.results import closest
    from adasearch.search.trials import TrialRecord, violations

    spec = RunSpec(
        objectives=["accuracy", "latency_p90_ms"],
        constraints={"latency_p90_ms": {"min": 1, "max": 100}, "accuracy": {"min": 0.9}},
    )
    recs = []
    for number, metrics in enumerate(
        [{"accuracy": 0.95, "latency_p90_ms": 0.1}, {"accuracy": 0.85, "latency_p90_ms": 10.0}]
    ):
        viol = violations(spec, metrics)
        recs.append(TrialRecord(number, DeploymentConfig(depth=number + 1), {}, metrics, not viol, viol))
    assert [r.number for r in closest(recs, spec)] == [1, 0]


def test_a_config_sampled_twice_is_a_single_candidate():
    twice = [_rec(0, 0.9, 1.0), _rec(6, 0.9, 1.0), _rec(1, 0.95, 2.0)]  # trial 6 repeats trial 0's config
    assert twice[0].config == twice[1].config
    timed = RunSpec(objectives=["accuracy", "latency_p50_ms"])
    assert [r.number for r in candidates(twice, timed)] == [0, 1]


def test_the_macs_proxy_front_is_re_timed_whatever_the_brief_timings_said():
    """Brief timings decide the front and its next layer; the front with MACs in place of latency does
    not depend on them, so its configs are candidates on every run."""
    spec = RunSpec(objectives=["accuracy", "latency_p50_ms"])

    def rec(n, acc, lat, macs):
        return TrialRecord(n, DeploymentConfig(depth=n + 1), {}, {"accuracy": acc, "latency_p50_ms": lat, "macs": macs},
                           True, {})  # fmt: skip

    fast_by_noise = rec(0, 0.95, 1.0, 300)
    cheap_but_slow_briefly = rec(1, 0.95, 9.0, 100)  # fewer MACs, unlucky brief timing
    accurate = rec(2, 0.97, 2.0, 400)
    dominated = rec(3, 0.90, 8.0, 500)
    second_layer = rec(4, 0.95, 5.0, 350)  # dominates 1 and 3 by brief timing: the next layer is itself alone
    recs = [fast_by_noise, cheap_but_slow_briefly, accurate, dominated, second_layer]
    assert [r.number for r in candidates(recs, spec)] == [0, 2, 4, 1]  # 1 only through the MACs proxy
    assert [r.number for r in proxy_front(recs, spec)] == [1, 2]


def test_timing_twins_are_folded_into_the_best_of_them_before_choosing_candidates():
    """Configs with one timing trace run the same operations on the timing images: only those no twin beats
    on accuracy stay (equal ones: the fewest MACs, then the first label); configs of other traces, and twins
    that break another untimed constraint, are untouched."""
    from adasearch.search.front.finalists import fold_twins

    def rec(n, acc, lat, macs, violations=()):
        metrics = {"accuracy": acc, "latency_p50_ms": lat, "macs": macs}
        return TrialRecord(n, DeploymentConfig(num_tokens=n + 1), {}, metrics, not violations,
                           {v: 1.0 for v in violations})  # fmt: skip

    recs = [rec(0, 0.95, 1.0, 300), rec(1, 0.97, 1.1, 400), rec(2, 0.97, 0.9, 200), rec(3, 0.97, 0.8, 200),
            rec(4, 0.90, 0.7, 100), rec(5, 0.99, 0.5, 50, violations=("macs",))]  # fmt: skip
    trace = {r.config: "same" for r in recs} | {recs[4].config: "other"}
    spec = RunSpec(objectives=["accuracy", "latency_p50_ms"])
    # 0: beaten on accuracy by 1, 2, 3; 1: equal to 2 and 3, more MACs; 3: equal MACs, label N4 after N3 (2)
    assert [r.number for r in fold_twins(recs, spec, trace.get)] == [2, 4, 5]
    # candidates fold first: the slower twin 2 stands for the point even though 3's figure is faster
    assert [r.number for r in candidates(recs, spec, trace.get)] == [2, 4]
    assert 3 in [r.number for r in candidates(recs, spec)]  # without the traces, 3 would be re-timed
    unknown = {**trace, recs[0].config: None, recs[1].config: None}  # no trace without a pass: twins of none
    assert [r.number for r in fold_twins(recs, spec, unknown.get)] == [0, 1, 2, 4, 5]
