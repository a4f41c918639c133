"""Summaries over seeds and the paired t-test the tables mark, as the MTN paper marks them.

Values per seed travel as {seed: value} dicts, so two rows are compared on the seeds they share
and a pair is always the same seed (same data draw, same initialisation) under two arms.
"""

from __future__ import annotations

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
