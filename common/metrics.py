"""Metric math on numpy arrays, shared by the data generators, the Trainer and the Evaluator."""

from __future__ import annotations

import numpy as np


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count one half); nan if one class is absent."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Average ranks over runs of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def log_loss(labels, probabilities, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; nan for no rows."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), eps, 1 - eps)
    if labels.size == 0:
        return float("nan")
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def task_metrics(click, conversion, ctr, cvr, ctcvr) -> dict:
    """The ranking metrics of the Trainer and the Evaluator: CTR AUC and log loss on all rows, CVR
    on clicked rows only (conversion given click), CTCVR (click and conversion) on all rows."""
    click = np.asarray(click).astype(bool).ravel()
    conversion = np.asarray(conversion).astype(bool).ravel()
    cvr = np.asarray(cvr).ravel()
    ctcvr_label = click & conversion
    return {
        "ctr_auc": roc_auc(click, ctr),
        "cvr_auc": roc_auc(conversion[click], cvr[click]),
        "ctcvr_auc": roc_auc(ctcvr_label, ctcvr),
        "ctr_logloss": log_loss(click, ctr),
        "cvr_logloss": log_loss(conversion[click], cvr[click]),
        "ctcvr_logloss": log_loss(ctcvr_label, ctcvr),
        "rows": int(click.size),
        "clicks": int(click.sum()),
        "conversions": int(ctcvr_label.sum()),
    }
