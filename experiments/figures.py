"""PNG figures with matplotlib's Agg backend (no display; the same data draws the same file)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from experiments import stats  # noqa: E402

FIGURES = "figures"
_DPI = 120
# No timestamp or version in the file, so a rerun writes the same bytes.
_METADATA = {"Software": None}


def _save(figure, out: str, name: str) -> str:
    """Saves into OUT/figures/NAME and returns the path relative to OUT (for report.md)."""
    os.makedirs(os.path.join(out, FIGURES), exist_ok=True)
    relative = f"{FIGURES}/{name}"
    figure.savefig(os.path.join(out, relative), dpi=_DPI, metadata=_METADATA)
    plt.close(figure)
    return relative


def _mean_and_std(values: dict) -> tuple[float, float]:
    mean, std = stats.mean_std([values[s] for s in sorted(values)])
    return mean, 0.0 if np.isnan(std) else std


def grouped_bars(out: str, name: str, groups: list, series: dict, ylabel: str, title: str) -> str:
    """Bars per group (x axis) and series (colours), with ±1 std error bars.
    `series`: label -> [{seed: value} per group] (an empty dict leaves a gap)."""
    figure, axis = plt.subplots(figsize=(1.2 + 1.3 * len(groups), 4))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (label, per_group) in enumerate(series.items()):
        means, stds = zip(*[_mean_and_std(v) if v else (np.nan, 0.0) for v in per_group])
        axis.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=label)
    axis.set_xticks(x, groups)
    axis.axhline(0.0, color="black", linewidth=0.8)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    return _save(figure, out, name)


def lines_by_panel(out: str, name: str, x: list, panels: dict, xlabel: str, ylabel: str, title: str) -> str:
    """One panel per key of `panels`, one line per series with ±1 std error bars.
    `panels`: panel title -> {series label: [{seed: value} per x]}."""
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, (panel, series) in zip(axes[0], panels.items()):
        for label, per_x in series.items():
            means, stds = zip(*[_mean_and_std(v) if v else (np.nan, 0.0) for v in per_x])
            axis.errorbar(x, means, yerr=stds, marker="o", capsize=3, label=label)
        axis.set_title(panel)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
    # One legend under the panels, where it hides no line.
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(figure, out, name)


def scatter_panels(out: str, name: str, panels: dict, classes: list, title: str) -> str:
    """One scatter panel per key of `panels` (title -> (points [n, 2], class index [n])), points
    coloured by class (`classes`: the legend's names, by index). Unitless axes: for embeddings
    such as t-SNE, whose coordinates mean nothing on their own."""
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    for axis, (panel, (points, labels)) in zip(axes[0], panels.items()):
        for index, label in enumerate(classes):
            chosen = np.asarray(labels) == index
            axis.scatter(points[chosen, 0], points[chosen, 1], s=4, alpha=0.6, label=label, color=f"C{index}")
        axis.set_title(panel)
        axis.set_xticks([])
        axis.set_yticks([])
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, markerscale=3)
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(figure, out, name)


def heatmaps(out: str, name: str, panels: dict, axis_label: str, colour_label: str, title: str) -> str:
    """One heatmap panel per key of `panels` (title -> square matrix), the value written in each
    cell. One colour scale for every panel, so equal colours are equal values across panels."""
    matrices = [np.asarray(m, float) for m in panels.values()]
    low = min(float(m.min()) for m in matrices) if matrices else 0.0
    high = max(float(m.max()) for m in matrices) if matrices else 1.0
    figure, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.5 * max(len(panels), 1) + 1, 4.3), squeeze=False)
    image = None
    for axis, (panel, matrix) in zip(axes[0], zip(panels, matrices)):
        image = axis.imshow(matrix, vmin=low, vmax=high, cmap="viridis")
        for (i, j), value in np.ndenumerate(matrix):
            axis.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if value < (low + high) / 2 else "black",
            )
        axis.set_title(panel, fontsize=10)
        axis.set_xlabel(axis_label)
        axis.set_ylabel(axis_label)
        axis.set_xticks(range(len(matrix)))
        axis.set_yticks(range(len(matrix)))
    if image is not None:
        figure.colorbar(image, ax=axes[0].tolist(), label=colour_label, shrink=0.85)
    figure.suptitle(title)
    return _save(figure, out, name)
