"""Evaluator: the exported SavedModel (the one that would be served) on the raw test split.

Metrics: CTR AUC and log loss on all rows, CVR on clicked rows only, CTCVR on all rows, overall
and per value of each slicing feature (e.g. Ali-CCP's 301, the scenario). The model is blessed
only if every AUC passes its absolute threshold and, when a baseline (the last pushed model) is
given, no AUC falls below the baseline's on the same rows by more than the tolerance. A reference
model (the run's `logistic`, solved to convergence: the linear baseline every deep model must beat)
is scored on the same rows and shown beside the model with each AUC's lift over it. An AUC at or
below the reference's is said in one line (`shortfall`); with `require_lift` it also withholds the
blessing. Writes
OUTPUT/evaluation/{metrics.json, BLESSED | NOT_BLESSED}; NOT_BLESSED holds the reasons.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import numpy as np

from common.layout import BLESSED, EVALUATION, EXAMPLES, METRICS, NOT_BLESSED, RECORDS
from common.metrics import task_metrics

_LOG = logging.getLogger(__name__)

AUCS = ("ctr_auc", "cvr_auc", "ctcvr_auc")
_MAX_SLICES = 20


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    slice_features: tuple[str, ...] = ("f301",)
    thresholds: dict = dataclasses.field(default_factory=lambda: {name: 0.55 for name in AUCS})
    tolerance: float = 0.005  # the largest AUC drop against the baseline that still blesses
    # Withhold the blessing when a gated AUC (one with a threshold) is not above the linear reference's.
    require_lift: bool = False

    @classmethod
    def from_dict(cls, raw: dict) -> "EvalConfig":
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(
                f"evaluator: unknown key(s) {sorted(unknown)}; known: "
                f"{', '.join(f.name for f in dataclasses.fields(cls))}"
            )
        require_lift = raw.get("require_lift", cls.require_lift)
        if not isinstance(require_lift, bool):
            raise ValueError(f"evaluator.require_lift must be true or false, got {require_lift!r}")
        thresholds = raw.get("thresholds", {})
        if (
            not isinstance(thresholds, dict)
            or set(thresholds) - set(AUCS)
            or not all(v is None or isinstance(v, (int, float)) for v in thresholds.values())
        ):
            raise ValueError(f"evaluator.thresholds must map some of {', '.join(AUCS)} to numbers (or null: not gated)")
        return cls(
            slice_features=tuple(raw.get("slice_features", cls.slice_features)),
            thresholds={**cls().thresholds, **thresholds},
            tolerance=float(raw.get("tolerance", cls.tolerance)),
            require_lift=require_lift,
        )


def _sliced(scores: dict, labels: dict, feature: str) -> dict:
    """{value: metrics} for the most frequent values of a feature (-1: absent), the rest as "other"."""
    values, counts = np.unique(labels[feature], return_counts=True)
    top = values[np.argsort(-counts, kind="stable")][:_MAX_SLICES]
    out = {}
    for value in top:
        mask = labels[feature] == value
        out[str(int(value))] = _metrics(scores, labels, mask)
    rest = ~np.isin(labels[feature], top)
    if rest.any():
        out["other"] = _metrics(scores, labels, rest)
    return out


def _metrics(scores: dict, labels: dict, mask=None) -> dict:
    pick = (lambda a: a) if mask is None else (lambda a: a[mask])
    return task_metrics(
        pick(labels["click"]),
        pick(labels["conversion"]),
        pick(scores["ctr"]),
        pick(scores["cvr"]),
        pick(scores["ctcvr"]),
    )


def shortfall(metrics: dict, reference: dict, config: EvalConfig) -> str | None:
    """One line naming each gated AUC at or below the linear reference's on the same rows, or None."""
    short = [
        f"{name.removesuffix('_auc').upper()} AUC {metrics[name]:.4f} against {reference[name]:.4f}"
        for name in AUCS
        if config.thresholds[name] is not None and not metrics[name] > reference[name]
    ]
    return f"the model does not beat the linear reference on {', '.join(short)}" if short else None


def _judge(metrics: dict, baseline: dict | None, config: EvalConfig, short: str | None = None) -> list[str]:
    """The reasons not to bless (none: blessed); `short`: the shortfall against the reference."""
    reasons = [short] if short and config.require_lift else []
    for name in AUCS:
        value = metrics[name]
        if config.thresholds[name] is None:  # not gated (e.g. too few conversions for an AUC)
            continue
        if math.isnan(value) or value < config.thresholds[name]:
            reasons.append(f"{name} {value:.4f} is below the threshold {config.thresholds[name]}")
        if baseline is not None and not math.isnan(baseline[name]) and value < baseline[name] - config.tolerance:
            reasons.append(
                f"{name} {value:.4f} is worse than the last pushed model's {baseline[name]:.4f} "
                f"by more than {config.tolerance}"
            )
    return reasons


def evaluate(
    saved_model: str,
    examples: str,
    output: str,
    config: EvalConfig = EvalConfig(),
    baseline_model: str | None = None,
    reference_model: str | None = None,
) -> dict:
    """Evaluates `saved_model` on `examples`/examples/test (ExampleGen's raw output) against
    thresholds and `baseline_model`, beside `reference_model`; writes OUTPUT/evaluation/ and
    returns its metrics.json."""
    from trainer.export import score_examples
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(os.path.join(examples, EXAMPLES, "test", RECORDS)))
    if not files:
        raise ValueError(f"{examples}/examples/test holds no examples to evaluate on")
    scores, labels = score_examples(saved_model, files, columns=config.slice_features)
    result = {
        "model": saved_model,
        "examples": files,
        "config": dataclasses.asdict(config),
        "overall": _metrics(scores, labels),
        "slices": {feature: _sliced(scores, labels, feature) for feature in config.slice_features},
    }
    baseline = None
    if baseline_model is not None:
        base_scores, base_labels = score_examples(baseline_model, files)
        baseline = _metrics(base_scores, base_labels)
        result["baseline"] = {"model": baseline_model, "overall": baseline}
    if reference_model is not None:
        reference = _metrics(*score_examples(reference_model, files))
        lift = {name: result["overall"][name] - reference[name] for name in AUCS}
        short = shortfall(result["overall"], reference, config)
        result["reference"] = {"model": reference_model, "overall": reference, "lift": lift, "shortfall": short}
    reasons = _judge(result["overall"], baseline, config, result.get("reference", {}).get("shortfall"))
    result["blessed"], result["reasons"] = not reasons, reasons
    folder = os.path.join(output, EVALUATION)
    os.makedirs(folder, exist_ok=True)
    for name in (BLESSED, NOT_BLESSED):
        if os.path.exists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    with open(os.path.join(folder, METRICS), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(folder, BLESSED if not reasons else NOT_BLESSED), "w") as f:
        f.write("\n".join(reasons) + ("\n" if reasons else ""))
    return result


def is_blessed(output: str) -> bool:
    return os.path.exists(os.path.join(output, EVALUATION, BLESSED))


def table(result: dict) -> str:
    """The evaluation as a Markdown table: overall, baseline, reference, then each slice; below it,
    the lift over the reference."""
    rows = [("overall", result["overall"])]
    if "baseline" in result:
        rows.append(("last pushed model", result["baseline"]["overall"]))
    if "reference" in result:
        rows.append(("linear reference (logistic)", result["reference"]["overall"]))
    for feature, slices in result["slices"].items():
        rows.extend((f"{feature} = {value}", m) for value, m in slices.items())
    lines = [
        "| rows | CTR AUC | CVR AUC | CTCVR AUC | CTR logloss | CVR logloss | slice |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, m in rows:
        lines.append(
            f"| {m['rows']:,} | {m['ctr_auc']:.4f} | {m['cvr_auc']:.4f} | {m['ctcvr_auc']:.4f} "
            f"| {m['ctr_logloss']:.4f} | {m['cvr_logloss']:.4f} | {name} |"
        )
    if "reference" in result:
        lift = result["reference"]["lift"]
        lines.append(
            f"lift over the linear reference: CTR AUC {lift['ctr_auc']:+.4f}  CVR AUC {lift['cvr_auc']:+.4f}  "
            f"CTCVR AUC {lift['ctcvr_auc']:+.4f}"
        )
        if result["reference"]["shortfall"]:
            lines.append(result["reference"]["shortfall"])
    return "\n".join(lines)
