"""Pareto sets, hypervolume, and which trials get re-timed."""
import pytest

from adasearch import DeploymentConfig
from adasearch.search.pareto import dominates, hypervolume, pareto_front
from adasearch.search.runner import candidates
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
    return TrialRecord(n, DeploymentConfig(depth=n % 6 + 1), {}, {"accuracy": acc, "latency_p50_ms": lat, "gmacs": lat},
                       True, {})


def test_candidates_for_retiming():
    recs = [_rec(0, 0.9, 1.0), _rec(1, 0.95, 2.0), _rec(2, 0.89, 1.1), _rec(3, 0.94, 2.1), _rec(4, 0.5, 9.0)]
    timed = RunSpec(objectives=["accuracy", "latency_p50_ms"])
    assert [r.number for r in candidates(recs, timed)] == [0, 1, 2, 3]  # front + the next layer
    untimed = RunSpec(objectives=["accuracy", "gmacs"])
    assert [r.number for r in candidates(recs, untimed)] == [0, 1]  # deterministic: the front is exact
