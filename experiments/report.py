"""The report folder: `report.md` (tables laid out as in the papers, figures, the claims),
`metrics.csv` (one row per run) and the figures under `figures/`.

Tables show mean ± standard deviation over seeds. A row may name a baseline row: its tested
cells then carry `*` (p < 0.05) or `**` (p < 0.01) from a paired t-test against the baseline's
values on the same seeds, as the MTN paper marks significance. Nothing in report.md depends on
timing, so the same seeds give the same file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

import numpy as np

from experiments import presets, stats
from experiments.grid import Record

REPRODUCED = "reproduced"
NOT_REPRODUCED = "did not reproduce"
INCONCLUSIVE = "inconclusive"
UNDER_TRAINED = "under-trained"


@dataclasses.dataclass(frozen=True)
class Column:
    title: str
    digits: int = 4
    suffix: str = ""  # "%" for gaps
    signed: bool = False  # "+" on positive means
    tested: bool = True  # marked against the row's baseline


@dataclasses.dataclass(frozen=True)
class Row:
    """`values`: column title -> {seed: value}; `baseline`: the label of the row its tested
    columns are compared with (None: no marks)."""

    label: str
    values: dict
    baseline: str | None = None


@dataclasses.dataclass(frozen=True)
class Table:
    columns: tuple
    rows: tuple
    first_column: str = "model"


def _in_seed_order(values: dict) -> list:
    return [values[seed] for seed in sorted(values)]


def render_table(table: Table) -> str:
    """A Markdown table: one line per row, `mean ± std` per column, markers on tested cells of
    rows with a baseline."""
    by_label = {row.label: row for row in table.rows}
    lines = [
        "| " + " | ".join([table.first_column] + [c.title for c in table.columns]) + " |",
        "|---" + "|---:" * len(table.columns) + "|",
    ]
    for row in table.rows:
        cells = [row.label]
        for column in table.columns:
            values = row.values.get(column.title, {})
            text = stats.format_mean_std(_in_seed_order(values), column.digits, column.suffix, column.signed)
            if row.baseline is not None and column.tested and values:
                baseline = by_label[row.baseline].values.get(column.title, {})
                text += stats.marker(stats.paired_p_value(*stats.paired(values, baseline)))
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def significance_note(baseline: str, seeds: int) -> str:
    return (
        f"Mean ± standard deviation over {seeds} seeds. `*` p < 0.05, `**` p < 0.01: paired t-test "
        f"against {baseline} over the same seeds (same data draw and initialisation seed)."
    )


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The claim that `better` beats `worse` on a metric; values are {seed: value}.

    `reference_values` ({seed: value} of a reference on the same metric and data, e.g. the
    `logistic` baseline), when given, is a convergence gate: the comparison is judged only if its
    `worse` arm (the baseline arm) beats the reference on the means."""

    better: str
    worse: str
    better_values: dict
    worse_values: dict
    higher_is_better: bool = False
    reference: str = "logistic"
    reference_values: dict | None = None

    @property
    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        return stats.paired(self.better_values, self.worse_values)

    @property
    def effects(self) -> dict:
        """{seed: how far `better` beats `worse`} on the shared seeds (negative: the other way)."""
        sign = 1.0 if self.higher_is_better else -1.0
        seeds = sorted(set(self.better_values) & set(self.worse_values))
        return {s: sign * (self.better_values[s] - self.worse_values[s]) for s in seeds}

    @property
    def holds(self) -> bool:
        """Whether the means over the shared seeds go the claimed way (a tie does not)."""
        effects = list(self.effects.values())
        return bool(effects) and float(np.mean(effects)) > 0

    @property
    def p(self) -> float:
        return stats.paired_p_value(*self.pairs)

    @property
    def trained(self) -> bool | None:
        """Whether the baseline arm beats the reference (None: no reference to gate on)."""
        if self.reference_values is None:
            return None
        worse, reference = stats.paired(self.worse_values, self.reference_values)
        if len(worse) == 0:
            return False
        return bool(worse.mean() > reference.mean() if self.higher_is_better else worse.mean() < reference.mean())

    def describe(self, digits: int) -> str:
        better, worse = self.pairs
        if len(better) == 0:
            return f"{self.better} vs {self.worse}: no seeds in common"
        b, w = better.mean(), worse.mean()
        sign = ">" if b > w else "<" if b < w else "="
        change = f", {100 * (b - w) / abs(w):+.1f}%" if w else ""
        text = (
            f"{self.better} {b:.{digits}f} {sign} {self.worse} {w:.{digits}f}{change}, "
            f"{stats.format_p(self.p)} over {len(better)} seeds"
        )
        if self.trained is False:
            reference = np.mean(list(self.reference_values.values())) if self.reference_values else math.nan
            text += f"; under-trained: {self.worse} does not beat {self.reference} ({reference:.{digits}f})"
        return text


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim of a paper, as the comparisons that make it true.

    `paper_effect`: the paper's own effect in the comparisons' units, positive in its direction
    (the mean over the comparisons, as `pooled` measures it); None where it is not recorded."""

    source: str
    text: str
    comparisons: tuple
    digits: int = 4
    paper_effect: float | None = None

    @property
    def seed_effects(self) -> dict:
        """{seed: the mean over the comparisons of the effect in the claim's direction}, on the
        seeds every comparison has: a seed is one draw of everything, so it is the unit of the test."""
        effects = [c.effects for c in self.comparisons]
        seeds = sorted(set.intersection(*[set(e) for e in effects])) if effects else []
        return {s: float(np.mean([e[s] for e in effects])) for s in seeds}

    @property
    def pooled(self) -> stats.Pooled:
        return stats.pooled_test(self.seed_effects.values())

    @property
    def verdict(self) -> str:
        """`under-trained` when a comparison's baseline arm does not beat its reference; else
        `did not reproduce` when the pooled effect's 95% confidence interval lies below the paper's
        effect (a real but smaller effect included), or when it goes the other way with p < 0.05;
        `reproduced` when it goes the claimed way with p < 0.05; `inconclusive` otherwise (too few
        seeds included)."""
        if any(c.trained is False for c in self.comparisons):
            return UNDER_TRAINED
        pooled = self.pooled
        if self.paper_effect is not None and pooled.ci_high < self.paper_effect:
            return NOT_REPRODUCED
        if pooled.p < stats.SIGNIFICANT:
            return REPRODUCED if pooled.mean > 0 else NOT_REPRODUCED
        return INCONCLUSIVE

    def describe_pooled(self) -> str:
        pooled, d = self.pooled, self.digits
        paper = (
            f"the paper's effect {self.paper_effect:+.{d}f}"
            if self.paper_effect is not None
            else "the paper's effect is not recorded here"
        )
        if pooled.seeds < 2:
            return f"pooled: {pooled.seeds} seed(s) in common, too few to test; {paper}"
        return (
            f"pooled over {len(self.comparisons)} comparison(s) and {pooled.seeds} seeds: effect "
            f"{pooled.mean:+.{d}f} (95% CI {pooled.ci_low:+.{d}f} to {pooled.ci_high:+.{d}f}), "
            f"{stats.format_p(pooled.p)}; minimum detectable effect {pooled.mde:.{d}f}; {paper}"
        )


def render_claims(claims, scale: str, seeds: int) -> str:
    lines = [
        "## Claims",
        "",
        f"Checked at the `{scale}` scale over {seeds} seeds. Each comparison's effect (how far the "
        "claimed winner beats the other, positive the paper's way) is averaged over the claim's "
        "comparisons per seed, and the per-seed effects are tested against zero (one-sample t-test "
        f"over the seeds, two-sided). A claim **{NOT_REPRODUCED}** when that pooled effect's 95% "
        "confidence interval lies below the paper's effect (where the paper's effect is recorded), or "
        f"when it goes the other way with p < 0.05; it **{REPRODUCED}** when it goes the paper's way "
        f"with p < 0.05; it is **{INCONCLUSIVE}** otherwise. **{UNDER_TRAINED}**: a comparison's "
        "baseline arm does not beat the `logistic` baseline on the same data, so no verdict. The "
        "minimum detectable effect is the true effect the "
        f"test would find with {stats.POWER:.0%} power at these seeds and their spread: a paper's effect "
        "below it could not have been seen.",
        "",
    ]
    for i, claim in enumerate(claims, 1):
        lines.append(f"{i}. **{claim.verdict}**: {claim.text} ({claim.source})")
        lines.append(f"   - {claim.describe_pooled()}")
        lines += [f"   - {comparison.describe(claim.digits)}" for comparison in claim.comparisons]
    return "\n".join(lines)


def settings_table(settings, seeds: list | None = None) -> str:
    """The settings of the run (a dataclass or a dict), one per line, values as JSON. `seeds`: the
    seeds the run used, shown instead of the scale's default count (`--seeds` may change it)."""
    payload = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else dict(settings)
    if seeds is not None and "seeds" in payload:
        payload["seeds"] = list(seeds)
    preamble = [presets.describe(settings), ""] if hasattr(settings, "preset") else []
    return "\n".join(
        preamble
        + ["| setting | value |", "|---|---|"]
        + [f"| {key} | `{json.dumps(value)}` |" for key, value in sorted(payload.items())]
    )


def write_metrics_csv(path: str, records: list[Record]) -> None:
    """One row per run: the cell's axes and seed, then every metric (floats in repr, exact)."""
    axes, metrics = [], []
    for record in records:
        axes += [a for a in record.cell.as_dict() if a not in axes]
        metrics += [m for m in record.metrics if m not in metrics]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["cell"] + axes + sorted(metrics))
        for record in records:
            cell = record.cell.as_dict()
            writer.writerow(
                [record.cell.key]
                + [cell.get(a, "") for a in axes]
                + [repr(record.metrics[m]) if m in record.metrics else "" for m in sorted(metrics)]
            )


def write(out: str, markdown: str, records: list[Record]) -> None:
    """report.md and metrics.csv into `out` (figures are written by the experiment beforehand)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(markdown.rstrip() + "\n")
    write_metrics_csv(os.path.join(out, "metrics.csv"), records)
