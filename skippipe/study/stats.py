"""Statistics of the study's seeds: mean and sample standard deviation, Student's t intervals and
the paired t-test (pairs: two variants trained with the same seed, so the same initial weights
and the same data order).

Student's t distribution with n degrees of freedom: P(|T| > t) = I_x(n/2, 1/2) with
x = n / (n + t^2), I the regularized incomplete beta function, evaluated by its continued
fraction (modified Lentz); the quantile by bisection on it.
"""

from __future__ import annotations

import math

CONFIDENCE = 0.95  # of the intervals the report prints
_TINY = 1e-300  # keeps the continued fraction away from division by zero
_EPS = 1e-14  # relative convergence of the continued fraction
_MAX_TERMS = 500


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (converges fast for x < (a + 1) / (a + b + 2))."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_TERMS):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    return incomplete_beta(df / 2, 0.5, df / (df + t * t))


def t_quantile(probability: float, df: int) -> float:
    """t with P(T <= t) = probability (0.5 < probability < 1)."""
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > 2 * (1 - probability):
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > 2 * (1 - probability) else (lo, mid)
    return (lo + hi) / 2


def interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student's t interval for the mean of `values` (at least two)."""
    m, sd = mean_sd(values)
    half = t_quantile(0.5 + confidence / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return m - half, m + half


def paired_test(a: list[float], b: list[float], confidence: float = CONFIDENCE) -> dict:
    """Paired t-test of a - b (same order: pair i is seed i): mean difference, its interval and
    the two-sided p-value of "no difference"."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("a paired test needs two equally long lists of at least two values")
    diff = [x - y for x, y in zip(a, b)]
    m, sd = mean_sd(diff)
    lo, hi = interval(diff, confidence)
    if sd == 0:
        p = 1.0 if m == 0 else 0.0
    else:
        p = t_two_sided_p(m / (sd / math.sqrt(len(diff))), len(diff) - 1)
    return {"pairs": len(diff), "mean": m, "sd": sd, "low": lo, "high": hi, "p": p, "confidence": confidence}
