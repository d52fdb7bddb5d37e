"""Exact binomial (Clopper-Pearson) confidence intervals for accuracies, without scipy.

An accuracy measured on n samples is k successes of n Bernoulli trials; Carlini et al. (2019) ask for its
uncertainty. The Clopper-Pearson interval inverts the binomial tails: its bounds are Beta quantiles, found here by
bisection on the regularised incomplete beta function (a continued fraction, Numerical Recipes' ``betacf``).
"""

from __future__ import annotations

import math
from functools import lru_cache

CONFIDENCE = 0.95


def _betacf(a: float, b: float, x: float, iterations: int = 10000, tiny: float = 1e-300) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, iterations + 1):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def beta_quantile(q: float, a: float, b: float) -> float:
    """The x with I_x(a, b) = q (bisection: I_x is increasing in x)."""
    low, high = 0.0, 1.0
    for _ in range(100):
        mid = (low + high) / 2
        if betainc(a, b, mid) < q:
            low = mid
        else:
            high = mid
        if high - low < 1e-12:
            break
    return (low + high) / 2


@lru_cache(maxsize=4096)
def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact ``confidence`` interval of a proportion from ``k`` successes in ``n`` trials (``(0, 1)`` for n=0)."""
    k, n = int(k), int(n)
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"k = {k} successes out of n = {n} trials is impossible")
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else beta_quantile(alpha / 2, k, n - k + 1)
    high = 1.0 if k == n else beta_quantile(1 - alpha / 2, k + 1, n - k)
    return low, high


def interval(fraction: float, n: int, confidence: float = CONFIDENCE) -> list[float]:
    """``[low, high]`` of an accuracy given as a fraction of ``n`` samples (the count is recovered by rounding)."""
    return list(clopper_pearson(round(fraction * n), n, confidence))


def format_interval(value: float, bounds: list[float] | tuple[float, float] | None, digits: int = 1) -> str:
    """``"61.0 [54.2, 67.5]"``: a percentage and its interval (just the percentage when there is none)."""
    if not bounds:
        return f"{100 * value:.{digits}f}"
    low, high = bounds
    return f"{100 * value:.{digits}f} [{100 * low:.{digits}f}, {100 * high:.{digits}f}]"


__all__ = ["CONFIDENCE", "beta_quantile", "betainc", "clopper_pearson", "format_interval", "interval"]
