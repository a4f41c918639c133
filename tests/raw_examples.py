"""The raw tf.Examples behind a Transform output folder, for tests that score what serving sees.

The Trainer reads only Transform's folder; following `transformed/stats.json` back to ExampleGen's
folder is a convenience of a single machine's tests, so it lives here and not in `trainer/`."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from trainer import export
from common.metrics import task_metrics
from transform import features as F


def examples_dir(transformed) -> str:
    """ExampleGen's output folder that Transform read, from Transform's stats.json."""
    with open(os.path.join(str(transformed), "transformed", "stats.json")) as f:
        return json.load(f)["config"]["examples"]


def files(transformed, split: str) -> list[str]:
    return sorted(tf.io.gfile.glob(os.path.join(examples_dir(transformed), "examples", split, "*.tfrecord.gz")))


def records(transformed, split: str, rows: int = -1) -> list[bytes]:
    """The split's serialized raw examples (the first `rows`; -1: all)."""
    return [r.numpy() for r in tf.data.TFRecordDataset(files(transformed, split), compression_type="GZIP").take(rows)]


def saved_model_metrics(saved_model_dir: str, transformed, split: str) -> dict:
    """The task metrics of an exported model on a split of raw examples."""
    scores, labels = export.score_examples(saved_model_dir, files(transformed, split))
    return task_metrics(labels[F.CLICK], labels[F.CONVERSION], scores["ctr"], scores["cvr"], scores["ctcvr"])
