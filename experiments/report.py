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
import os

import numpy as np

from experiments import stats
from experiments.grid import Record

REPRODUCED = "reproduced"
NOT_REPRODUCED = "did not reproduce"
INCONCLUSIVE = "inconclusive"


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
    """The claim that `better` beats `worse` on a metric; values are {seed: value}."""

    better: str
    worse: str
    better_values: dict
    worse_values: dict
    higher_is_better: bool = False

    @property
    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        return stats.paired(self.better_values, self.worse_values)

    @property
    def holds(self) -> bool:
        """Whether the means over the shared seeds go the claimed way (a tie does not)."""
        better, worse = self.pairs
        if len(better) == 0:
            return False
        return better.mean() > worse.mean() if self.higher_is_better else better.mean() < worse.mean()

    @property
    def p(self) -> float:
        return stats.paired_p_value(*self.pairs)

    def describe(self, digits: int) -> str:
        better, worse = self.pairs
        if len(better) == 0:
            return f"{self.better} vs {self.worse}: no seeds in common"
        b, w = better.mean(), worse.mean()
        sign = ">" if b > w else "<" if b < w else "="
        change = f", {100 * (b - w) / abs(w):+.1f}%" if w else ""
        return (
            f"{self.better} {b:.{digits}f} {sign} {self.worse} {w:.{digits}f}{change}, "
            f"{stats.format_p(self.p)} over {len(better)} seeds"
        )


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim of a paper, as the comparisons that make it true."""

    source: str
    text: str
    comparisons: tuple
    digits: int = 4

    @property
    def verdict(self) -> str:
        """`did not reproduce` if any comparison goes the other way on the means; `reproduced` if
        all go the claimed way with p < 0.05; `inconclusive` otherwise."""
        if not self.comparisons or not all(c.holds for c in self.comparisons):
            return NOT_REPRODUCED
        return REPRODUCED if all(c.p < stats.SIGNIFICANT for c in self.comparisons) else INCONCLUSIVE


def render_claims(claims, scale: str, seeds: int) -> str:
    lines = [
        "## Claims",
        "",
        f"Checked at the `{scale}` scale over {seeds} seeds. A claim **{REPRODUCED}** when every comparison "
        f"it rests on goes the paper's way with p < 0.05 (paired t-test over the seeds), **{NOT_REPRODUCED}** "
        f"when any goes the other way (means over the seeds), and is **{INCONCLUSIVE}** when all go the "
        "paper's way but not all significantly.",
        "",
    ]
    for i, claim in enumerate(claims, 1):
        lines.append(f"{i}. **{claim.verdict}**: {claim.text} ({claim.source})")
        lines += [f"   - {comparison.describe(claim.digits)}" for comparison in claim.comparisons]
    return "\n".join(lines)


def settings_table(settings) -> str:
    """The settings of the run (a dataclass or a dict), one per line, values as JSON."""
    payload = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else settings
    return "\n".join(
        ["| setting | value |", "|---|---|"]
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
