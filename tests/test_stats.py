"""The statistics, against values computed by hand (independently of scipy)."""

import math
import random

import pytest

from adasearch.stats import clopper_pearson, fixed_sequence, hb_p_value, mcnemar_p, paired_difference


def test_clopper_pearson_known_values():
    # 0 of 10: the upper end solves (1 - p)^10 = 0.025
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)))
    # 10 of 10: the lower end solves p^10 = 0.025
    assert clopper_pearson(10, 10) == pytest.approx((0.025 ** (1 / 10), 1.0))
    # 5 of 10: the textbook interval
    assert clopper_pearson(5, 10) == pytest.approx((0.1871, 0.8129), abs=1e-4)


def test_intervals_cover_their_point_estimates():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 500)
        k = rng.randint(0, n)
        low, high = clopper_pearson(k, n)
        assert low <= k / n <= high
        b, c = rng.randint(0, n // 2), rng.randint(0, n // 2)
        diff, low, high = paired_difference(b, c, n)
        assert low <= diff <= high and diff == (b - c) / n


def test_paired_difference_from_discordant_pairs():
    # b = 6, c = 2 of n = 100: conditional on 8 discordant pairs, p = 6/8 with its exact interval
    diff, low, high = paired_difference(6, 2, 100)
    p_low, p_high = clopper_pearson(6, 8)
    assert diff == 0.04
    assert (low, high) == pytest.approx((8 * (2 * p_low - 1) / 100, 8 * (2 * p_high - 1) / 100))
    assert paired_difference(0, 0, 100) == (0.0, 0.0, 0.0)


def test_mcnemar_exact_p_value():
    # 2 * P(Binomial(8, 1/2) <= 2) = 2 * (1 + 8 + 28) / 256
    assert mcnemar_p(6, 2) == pytest.approx(2 * (1 + 8 + 28) / 256)
    assert mcnemar_p(3, 3) == 1.0 and mcnemar_p(0, 0) == 1.0


def test_hoeffding_bentkus_p_value_by_hand():
    n, alpha, risk = 100, 0.1, 0.05
    h = risk * math.log(risk / alpha) + (1 - risk) * math.log((1 - risk) / (1 - alpha))
    hoeffding = math.exp(-n * h)  # 0.1881
    bentkus = math.e * sum(math.comb(n, k) * alpha**k * (1 - alpha) ** (n - k) for k in range(6))  # 0.1565
    assert hoeffding == pytest.approx(0.18812, abs=1e-5) and bentkus == pytest.approx(0.15651, abs=1e-5)
    assert hb_p_value(risk, alpha, n) == pytest.approx(min(hoeffding, bentkus))
    # no loss at all on 225 images: Hoeffding's (1 - alpha)^n is the smaller
    assert hb_p_value(0.0, 0.02, 225) == pytest.approx(0.98**225)
    # an empirical risk above alpha can never be certified
    assert hb_p_value(0.2, 0.1, 1000) > 0.5
    with pytest.raises(ValueError):
        hb_p_value(0.1, 1.0, 10)


def test_fixed_sequence_stops_at_the_first_failure():
    assert fixed_sequence([0.01, 0.02, 0.5, 0.01], epsilon=0.1) == 2  # the 4th passes but is never reached
    assert fixed_sequence([0.2, 0.01], epsilon=0.1) == 0
    assert fixed_sequence([0.05, 0.1], epsilon=0.1) == 2  # p <= epsilon rejects
    assert fixed_sequence([], epsilon=0.1) == 0
