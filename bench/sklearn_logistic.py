"""The reference linear baseline of `bench/quality.py`: scikit-learn's logistic regression on
ExampleGen's raw tf.Examples, independent of the project's Transform and Trainer.

One one-hot column per (field, id) seen at least `min_count` times in the training split (the
id's weight as the value where the layout has weights, else 1); the rest are dropped. One column
per numeric field, standardised with the training split's mean and standard deviation. CTR is
fitted on all rows, CVR on clicked rows, CTCVR = CTR x CVR. Each task's C is chosen on the eval
split's log loss from `C_GRID`; test is scored once, with the chosen C.
Usage: python bench/sklearn_logistic.py EXAMPLES_DIR (ExampleGen's output folder)
"""

from __future__ import annotations

import collections
import glob
import json
import os
import sys

import numpy as np
import scipy.sparse as sp

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)


def read_split(examples_dir: str, split: str) -> tuple[dict, dict]:
    """({key: (rows, ids or None, values)}, labels {click, conversion}: numpy) of a split's raw
    tf.Examples: per field, each entry's row, id (None for a numeric field) and value."""
    import tensorflow as tf

    from transform import features as F

    files = sorted(glob.glob(os.path.join(examples_dir, "examples", split, "*.tfrecord.gz")))
    if not files:
        raise FileNotFoundError(f"no tf.Examples under {examples_dir}/examples/{split}")
    with open(os.path.join(examples_dir, "stats.json")) as f:
        fields = F.schema_of_examples(json.load(f)).fields
    spec = {label: tf.io.FixedLenFeature([], tf.int64) for label in F.LABELS}
    for field in fields:
        categorical = field.kind is F.Kind.CATEGORICAL
        spec[field.key] = tf.io.VarLenFeature(tf.int64 if categorical else tf.float32)
        if categorical:
            spec[F.weight_key(field)] = tf.io.VarLenFeature(tf.float32)
    parts, labels, offset = collections.defaultdict(list), collections.defaultdict(list), 0
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(8192):
        parsed = tf.io.parse_example(batch, spec)
        for field in fields:
            value = parsed[field.key]
            rows = value.indices[:, 0].numpy() + offset
            if field.kind is F.Kind.CATEGORICAL:
                weights = parsed[F.weight_key(field)].values.numpy()
                ids = value.values.numpy()
                parts[field.key].append((rows, ids, weights if len(weights) == len(ids) else np.ones(len(ids))))
            else:
                parts[field.key].append((rows, None, value.values.numpy()))
        for label in F.LABELS:
            labels[label].append(parsed[label].numpy())
        offset += len(parsed[F.CLICK])
    columns = {
        key: (
            np.concatenate([p[0] for p in chunks]),
            None if chunks[0][1] is None else np.concatenate([p[1] for p in chunks]),
            np.concatenate([p[2] for p in chunks]).astype(np.float64),
        )
        for key, chunks in parts.items()
    }
    return columns, {k: np.concatenate(v).astype(np.float64) for k, v in labels.items()}


def vocabulary(train_columns: dict, min_count: int) -> dict:
    """{key: sorted ids kept (None for a numeric field)}: the (field, id) columns of the one-hot matrix."""
    kept = {}
    for key, (_, ids, _) in train_columns.items():
        if ids is None:
            kept[key] = None
        else:
            unique, counts = np.unique(ids, return_counts=True)
            kept[key] = unique[counts >= min_count]
    return kept


def numeric_scale(train_columns: dict, rows: int) -> dict:
    """{numeric key: (mean, std)} over the training split (an absent value counts as 0, as Transform makes it)."""
    scale = {}
    for key, (entry_rows, ids, values) in train_columns.items():
        if ids is None:
            dense = np.zeros(rows)
            dense[entry_rows] = values
            scale[key] = (dense.mean(), dense.std() or 1.0)
    return scale


def one_hot(columns: dict, kept: dict, rows: int, scale: dict) -> sp.csr_matrix:
    """The split's one-hot matrix: a column per kept (field, id), the entry's value in it (weights
    of repeated ids summed), one standardised column per numeric field; other ids are dropped."""
    row_parts, column_parts, value_parts, start = [], [], [], 0
    for key in sorted(kept):
        entry_rows, ids, values = columns[key]
        if ids is None:
            mean, std = scale[key]
            dense = np.zeros(rows)
            dense[entry_rows] = values
            row_parts.append(np.arange(rows))
            column_parts.append(np.full(rows, start))
            value_parts.append((dense - mean) / std)
            start += 1
            continue
        vocab = kept[key]
        position = np.searchsorted(vocab, ids).clip(0, max(len(vocab) - 1, 0))
        found = (vocab[position] == ids) if len(vocab) else np.zeros(len(ids), bool)
        (
            row_parts.append(entry_rows[found]),
            column_parts.append(start + position[found]),
            value_parts.append(values[found]),
        )
        start += len(vocab)
    matrix = sp.coo_matrix(
        (np.concatenate(value_parts), (np.concatenate(row_parts), np.concatenate(column_parts))), shape=(rows, start)
    )
    return matrix.tocsr()


def fit_predict(examples_dir: str, min_count: int = 2) -> dict:
    """{"eval": {...}, "test": {...}, "C": {ctr, cvr}, "columns": n}: task metrics of the baseline."""
    from sklearn.linear_model import LogisticRegression

    from common.metrics import log_loss, task_metrics

    splits = {name: read_split(examples_dir, name) for name in ("train", "eval", "test")}
    kept = vocabulary(splits["train"][0], min_count)
    scale = numeric_scale(splits["train"][0], len(splits["train"][1]["click"]))
    matrices = {name: one_hot(columns, kept, len(labels["click"]), scale) for name, (columns, labels) in splits.items()}
    click = {name: labels["click"] for name, (_, labels) in splits.items()}
    conversion = {name: labels["conversion"] for name, (_, labels) in splits.items()}

    def best_model(x, y, x_eval, y_eval):
        fitted = []
        for c in C_GRID:
            model = LogisticRegression(C=c, solver="liblinear").fit(x, y)
            fitted.append((log_loss(y_eval, model.predict_proba(x_eval)[:, 1]), c, model))
        return min(fitted, key=lambda f: f[0])

    _, c_ctr, ctr_model = best_model(matrices["train"], click["train"], matrices["eval"], click["eval"])
    clicked = {name: click[name] == 1 for name in splits}
    _, c_cvr, cvr_model = best_model(
        matrices["train"][clicked["train"]],
        conversion["train"][clicked["train"]],
        matrices["eval"][clicked["eval"]],
        conversion["eval"][clicked["eval"]],
    )
    result = {"C": {"ctr": c_ctr, "cvr": c_cvr}, "columns": matrices["train"].shape[1]}
    for name in ("eval", "test"):
        ctr = ctr_model.predict_proba(matrices[name])[:, 1]
        cvr = cvr_model.predict_proba(matrices[name])[:, 1]
        result[name] = task_metrics(click[name], conversion[name], ctr, cvr, ctr * cvr)
    return result


if __name__ == "__main__":
    print(json.dumps(fit_predict(sys.argv[1])))
