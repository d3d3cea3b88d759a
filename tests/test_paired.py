"""Paired comparisons from interleaved rounds (measure/paired.py), against values worked out by hand."""

import math

import numpy as np
import pytest

from adasearch.measure.paired import (
    PRACTICAL,
    Comparison,
    bootstrap_medians,
    compare,
    median_interval,
    shared_rounds,
)

DRIFT = [1.0, 1.5, 3.0, 1.2, 0.9, 2.2, 1.1, 1.0]  # the machine's speed in 8 rounds: a burst in round 3


def test_a_constant_ratio_is_exact_however_the_machine_drifts():
    """b runs 10 % slower than a in every round; the rounds' speed moves both 3-fold. Each config's own
    spread (0.9-3.0 against 0.99-3.3) hides the difference; the per-round ratio is exactly 1/1.1."""
    a = DRIFT
    b = [1.1 * t for t in DRIFT]
    ab = compare(a, b)
    assert (ab.ratio, ab.low, ab.high, ab.rounds) == pytest.approx((1 / 1.1, 1 / 1.1, 1 / 1.1, 8))
    assert ab.separated and ab.sign == -1  # a's figure is smaller beyond noise
    assert compare(b, a).sign == 1 and ab.reversed().ratio == pytest.approx(1.1)
    assert max(a) > min(b)  # the two configs' own ranges overlap: not the test


def test_a_difference_within_the_practical_threshold_is_never_separated():
    """2 % slower in every round: certain, but under the 3 % threshold, so not separated; 4 % is."""
    assert PRACTICAL == 0.03
    assert compare(DRIFT, [1.02 * t for t in DRIFT]).sign == 0
    assert compare(DRIFT, [1.04 * t for t in DRIFT]).sign == -1


def test_settled_means_the_whole_interval_lies_within_the_threshold():
    """2 % in every round: the interval is the point 1.02, inside 1.03, settled. An interval from 0.98 to
    1.04 straddles 1.03: undecided (more rounds could separate it), and so is one beyond it, separated.
    The bounds 1/1.03 and 1.03 themselves count as within."""
    assert compare(DRIFT, [1.02 * t for t in DRIFT]).settled
    assert not Comparison(1.0, 0.98, 1.04, 8).settled and not Comparison(1.0, 0.98, 1.04, 8).separated
    assert not compare(DRIFT, [1.04 * t for t in DRIFT]).settled
    assert Comparison(1.0, 1 / 1.03, 1.03, 8).settled and Comparison(1.0, 1 / 1.03, 1.03, 8).reversed().settled


def test_the_bootstrap_distribution_of_a_median_of_three():
    """Resampling [0.1, 0.2, 0.3] three times with replacement: the median is 0.1 when 2 or 3 draws are
    0.1, probability 3 (1/3)^2 (2/3) + (1/3)^3 = 7/27; 0.3 likewise; 0.2 otherwise, 13/27."""
    medians = bootstrap_medians([0.1, 0.2, 0.3], seed=0, resamples=20000)
    shares = [float(np.mean(np.isclose(medians, v))) for v in (0.1, 0.2, 0.3)]
    assert shares == pytest.approx([7 / 27, 13 / 27, 7 / 27], abs=0.015)
    # 2.5 % and 97.5 % fall inside the masses at 0.1 and 0.3 (26 % each): the interval is [0.1, 0.3]
    assert median_interval([0.1, 0.2, 0.3], seed=0) == pytest.approx((0.2, 0.1, 0.3))


def test_the_bootstrap_of_a_median_of_two():
    """[0, 1] resampled twice: medians 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4."""
    medians = bootstrap_medians([0.0, 1.0], seed=1, resamples=20000)
    assert [float(np.mean(medians == v)) for v in (0.0, 0.5, 1.0)] == pytest.approx([0.25, 0.5, 0.25], abs=0.015)


def test_a_burst_in_one_round_of_eight_moves_neither_the_estimate_nor_the_interval():
    """a is 10 % slower in 7 rounds and 5x slower in one (a burst during its visit). The median of 8
    log-ratios averages the 4th and 5th: log 1.1. A resample's median moves only when 4 or more of its
    8 draws are the burst round: P = sum_k>=4 C(8,k) (1/8)^k (7/8)^(8-k) = 1.1 %, under the 2.5 % tail."""
    b = DRIFT
    a = [1.1 * t for t in DRIFT]
    a[5] = 5 * DRIFT[5]
    tail = sum(math.comb(8, k) * (1 / 8) ** k * (7 / 8) ** (8 - k) for k in range(4, 9))
    assert tail == pytest.approx(0.0113, abs=1e-4)
    ab = compare(a, b)
    assert (ab.ratio, ab.low, ab.high) == pytest.approx((1.1, 1.1, 1.1))
    assert ab.sign == 1


def test_only_rounds_of_sessions_both_configs_ran_in_pair_up():
    a = {"1": {"p": [1.0, 2.0]}, "2": {"p": [3.0]}, "3": {"p": [4.0, 4.0]}}
    b = {"2": {"p": [6.0]}, "3": {"p": [8.0, 8.0]}, "4": {"p": [1.0]}}
    assert shared_rounds(a, b, "p") == ([3.0, 4.0, 4.0], [6.0, 8.0, 8.0])
    assert shared_rounds(a, b, "q") == ([], [])
    with pytest.raises(ValueError):
        compare([1.0, 2.0], [1.0])
