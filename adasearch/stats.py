"""The statistics behind "how sure is this number?", written out (scipy's distributions only).

- Accuracy on n held-out images: a Clopper-Pearson (exact binomial) 95 % interval.
- A config against the full model on the same images: the paired difference of accuracies,
  (b - c) / n, where b counts images the full model gets right and the config wrong and c the reverse
  (the discordant pairs). Its interval is exact conditional on the b + c discordant pairs: b ~
  Binomial(b + c, p), a Clopper-Pearson interval for p maps to (b + c)(2p - 1) / n. Significance is
  the exact McNemar test (two-sided binomial test of b against (b + c) / 2).
- Certified constraints (Learn-then-Test, Angelopoulos et al. 2021; Pareto Testing, Laufer-Goldshtein
  et al. 2023): for a loss in [0, 1] with empirical risk r on n images, the Hoeffding-Bentkus p-value of
  "risk > alpha" is min(exp(-n h(min(r, alpha), alpha)), e * P(Binomial(n, alpha) <= ceil(n r))), with
  h(a, b) = a log(a / b) + (1 - a) log((1 - a) / (1 - b)). Configs are tested in a fixed sequence at
  level epsilon = 1 - confidence, stopping at the first that fails; every config before it is certified,
  and the family-wise error is at most epsilon.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.stats import beta, binom


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact interval for a binomial proportion with k successes in n trials."""
    if n <= 0:
        return 0.0, 1.0
    a = 1 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return low, high


def paired_difference(b: int, c: int, n: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """(difference, low, high) of two accuracies on the same n images, from the discordant counts:
    b = first right, second wrong; c = first wrong, second right. difference = (b - c) / n."""
    m = b + c
    if m == 0:
        return 0.0, 0.0, 0.0
    p_low, p_high = clopper_pearson(b, m, confidence)
    return (b - c) / n, m * (2 * p_low - 1) / n, m * (2 * p_high - 1) / n


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: is b different from c beyond chance?"""
    m = b + c
    if m == 0:
        return 1.0
    return min(1.0, 2 * float(binom.cdf(min(b, c), m, 0.5)))


def _h1(a: float, b: float) -> float:
    first = 0.0 if a == 0 else a * math.log(a / b)
    return first + (1 - a) * math.log((1 - a) / (1 - b))


def hb_p_value(risk: float, alpha: float, n: int) -> float:
    """Hoeffding-Bentkus p-value of the null "true risk > alpha", for a [0, 1] loss with empirical
    risk `risk` over n samples."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} must be in (0, 1)")
    hoeffding = math.exp(-n * _h1(min(risk, alpha), alpha))
    bentkus = math.e * float(binom.cdf(math.ceil(n * risk - 1e-9), n, alpha))
    return min(1.0, hoeffding, bentkus)


def fixed_sequence(p_values: Sequence[float], epsilon: float) -> int:
    """How many hypotheses, tested in the given order at level epsilon, are rejected before the first
    that is not (fixed-sequence testing controls the family-wise error at epsilon)."""
    accepted = 0
    for p in p_values:
        if p > epsilon:
            break
        accepted += 1
    return accepted
