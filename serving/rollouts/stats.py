"""The statistics of an A/B test: quality metrics with intervals, tests, effect sizes, power.

Accuracy (classifiers) has a Wilson 95% interval and is compared by a two-proportion z-test (the
same as a 2x2 chi-square without correction); MAE (regressors) has a t-based 95% interval and is
compared by Welch's t-test on absolute errors. `needed_per_group` says how many labelled
predictions per variant a test with 80% power needs at the observed effect (Cohen's h or d).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.80


@dataclass(frozen=True)
class Metric:
    """A quality metric of one variant over its labelled predictions."""

    name: str  # "accuracy" | "mae"
    n: int
    value: float
    low: float | None
    high: float | None
    samples: np.ndarray  # 1.0/0.0 per labelled row (accuracy) or absolute errors (mae)

    def to_dict(self) -> dict[str, Any]:
        ci = None if self.low is None else [finite_or_none(self.low), finite_or_none(self.high)]
        return {
            "metric": self.name,
            "labelled": self.n,
            "value": finite_or_none(self.value),
            "ci95": ci,
        }


@dataclass(frozen=True)
class Comparison:
    """A challenger against the primary version."""

    variant: str
    against: str
    test: str
    difference: float  # challenger minus primary, in the metric's unit
    statistic: float
    p_value: float
    alpha: float
    better: str | None  # the variant with the better metric when significant
    effect_size: float  # Cohen's h or d, absolute
    needed_per_variant: int | None  # labelled predictions each, for 80% power at this effect
    more_per_variant: int | None

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {
            "against": self.against,
            "test": self.test,
            "difference": finite_or_none(self.difference),
            "statistic": finite_or_none(self.statistic),
            "p_value": finite_or_none(self.p_value),
            "alpha": self.alpha,
            "significant": self.significant,
            "better": self.better,
            "effect_size": finite_or_none(self.effect_size),
            "needed_per_variant": self.needed_per_variant,
            "more_per_variant": self.more_per_variant,
        }


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sound near 0 and 1, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy(pairs: Sequence[tuple[Any, Any]]) -> Metric | None:
    """Share of (predicted, truth) pairs that match; None without pairs."""
    if not pairs:
        return None
    hits = np.array([1.0 if same_label(p, t) else 0.0 for p, t in pairs])
    n, k = len(hits), int(hits.sum())
    low, high = wilson_interval(k, n)
    return Metric("accuracy", n, k / n, low, high, hits)


def mean_absolute_error(pairs: Sequence[tuple[Any, Any]]) -> Metric | None:
    """MAE of numeric (predicted, truth) pairs with a t-based 95% interval (n >= 2)."""
    errors = np.array([abs(float(p) - float(t)) for p, t in pairs if is_number(p, t)])
    if errors.size == 0:
        return None
    mae = float(errors.mean())
    if errors.size < 2:
        return Metric("mae", 1, mae, None, None, errors)
    half = float(stats.t.ppf(0.975, errors.size - 1)) * float(errors.std(ddof=1))
    half /= math.sqrt(errors.size)
    return Metric("mae", int(errors.size), mae, max(0.0, mae - half), mae + half, errors)


def same_label(predicted: Any, truth: Any) -> bool:
    """Labels match as values, or as text when one side is a string ("1" and 1)."""
    if isinstance(predicted, str) != isinstance(truth, str):
        return str(predicted) == str(truth)
    return bool(predicted == truth)


def needed_per_group(effect: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Observations per group for a two-sided two-sample test to detect `effect` (h or d)."""
    if not effect > 0 or not math.isfinite(effect):
        return None
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    return math.ceil(2 * (z / effect) ** 2)


def two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p) of the pooled two-proportion z-test (= chi-square 2x2, no correction)."""
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return (0.0, 1.0)  # both all right or all wrong: nothing differs
    z = (k2 / n2 - k1 / n1) / se
    return (z, float(2 * stats.norm.sf(abs(z))))


def welch_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(t, two-sided p) of Welch's t-test of mean(b) - mean(a) (unequal variances)."""
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    diff = float(b.mean() - a.mean())
    if va + vb == 0:
        return (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    return (t, float(2 * stats.t.sf(abs(t), df)))


def compare(
    primary: Metric, challenger: Metric, names: tuple[str, str], alpha: float
) -> Comparison:
    """Test a challenger's metric against the primary's; names are (primary, challenger)."""
    if primary.name == "accuracy":
        k1, k2 = int(primary.samples.sum()), int(challenger.samples.sum())
        statistic, p = two_proportion_test(k1, primary.n, k2, challenger.n)
        effect = abs(arcsine(challenger.value) - arcsine(primary.value))
        test, higher_is_better = "two-proportion z-test", True
    else:
        statistic, p = welch_test(primary.samples, challenger.samples)
        spread = math.sqrt((primary.samples.var(ddof=1) + challenger.samples.var(ddof=1)) / 2)
        gap = abs(challenger.value - primary.value)
        effect = gap / spread if spread > 0 else (math.inf if gap > 0 else 0.0)
        test, higher_is_better = "Welch t-test on absolute errors", False
    difference = challenger.value - primary.value
    better = None
    if p < alpha and difference != 0:
        better = names[1] if (difference > 0) == higher_is_better else names[0]
    needed = needed_per_group(effect, alpha)
    more = None if needed is None else max(1, needed - min(primary.n, challenger.n))
    return Comparison(
        names[1], names[0], test, difference, statistic, p, alpha, better, effect, needed, more
    )


def arcsine(p: float) -> float:
    return 2 * math.asin(math.sqrt(p))


def is_number(*values: Any) -> bool:
    return all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )


def finite_or_none(value: Any) -> float | None:
    """A float for JSON: None for NaN and infinities."""
    value = float(value)
    return value if math.isfinite(value) else None
