"""Summaries over seeds and the paired t-test the tables mark, as the MTN paper marks them.

Values per seed travel as {seed: value} dicts, so two rows are compared on the seeds they share
and a pair is always the same seed (same data draw, same initialisation) under two arms.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

SIGNIFICANT = 0.05  # `*`
HIGHLY_SIGNIFICANT = 0.01  # `**`


def paired(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray]:
    """The values of the seeds both hold, in seed order: ([n], [n])."""
    seeds = sorted(set(a) & set(b))
    return np.array([a[s] for s in seeds], float), np.array([b[s] for s in seeds], float)


def paired_p_value(a, b) -> float:
    """Two-sided p-value of the paired t-test of two equal-length sequences; NaN when it is not
    defined: fewer than two pairs, or no spread in the differences (every pair differs by the
    same amount, zero included), where the t statistic divides by zero."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    difference = a - b
    if len(a) < 2 or not np.all(np.isfinite(difference)) or np.ptp(difference) == 0.0:
        return math.nan
    return float(stats.ttest_rel(a, b).pvalue)


def marker(p: float) -> str:
    """`**` for p < 0.01, `*` for p < 0.05, nothing otherwise (NaN included)."""
    if not p < SIGNIFICANT:
        return ""
    return "**" if p < HIGHLY_SIGNIFICANT else "*"


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for one value) over seeds."""
    values = np.asarray(list(values), float)
    if len(values) == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def format_mean_std(values, digits: int = 4, suffix: str = "", signed: bool = False) -> str:
    """ "1.2345 ± 0.0123" (one value: "1.2345"; none: "–"). `suffix` follows both numbers
    ("%"); `signed` writes a "+" on positive means (gaps)."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "–"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    if math.isnan(std):
        return text + suffix
    return f"{text}{suffix} ± {std:.{digits}f}{suffix}"


def format_p(p: float) -> str:
    if math.isnan(p):
        return "p undefined"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


POWER = 0.8  # the minimum detectable effect's power


@dataclasses.dataclass(frozen=True)
class Pooled:
    """A one-sample t-test of per-seed effects (positive: the claimed direction) against 0.

    `mde`: the smallest true mean effect this test would find significant (two-sided, at
    SIGNIFICANT) with probability POWER, at these seeds and this seed-to-seed spread."""

    seeds: int
    mean: float
    p: float
    ci_low: float
    ci_high: float
    mde: float


def pooled_test(effects) -> Pooled:
    """The test of `effects` ([n], one per seed). With no spread (every seed the same effect) a
    non-zero mean is certain (p 0) and a zero one is not (p 1); under two seeds, p is NaN."""
    effects = np.asarray(list(effects), float)
    n = len(effects)
    if n == 0:
        return Pooled(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    mean = float(effects.mean())
    if n < 2 or not np.all(np.isfinite(effects)):
        return Pooled(n, mean, math.nan, math.nan, math.nan, math.nan)
    se = float(effects.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        return Pooled(n, mean, 0.0 if mean != 0.0 else 1.0, mean, mean, 0.0)
    t_crit = float(stats.t.ppf(1 - SIGNIFICANT / 2, n - 1))
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    mde = (t_crit + float(stats.t.ppf(POWER, n - 1))) * se
    return Pooled(n, mean, p, mean - t_crit * se, mean + t_crit * se, mde)
