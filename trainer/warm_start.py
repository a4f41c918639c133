"""Warm start: a new network initialised from an exported one (in retraining, the last pushed version).

New data brings new vocabularies: an id's embedding row moves, new ids appear, old ones go. So
embedding tables are carried over row by row through the two vocabularies (the exported model's
assets and Transform's new ones), out-of-vocabulary buckets bucket by bucket when their number is
unchanged, and every other variable is copied when its shape is unchanged. New ids keep their
fresh initialisation. A model of another architecture, config or set of input fields is not
warm-started: the run says why and trains from scratch.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import tensorflow as tf

from trainer import models
from trainer.blocks import FieldEmbedding
from trainer.export import NETWORK_FILE
from trainer.inputs import InputSpec
from trainer.training_model import dummy_batch

_LOG = logging.getLogger(__name__)


def _skip(summary: dict, reason: str) -> dict:
    _LOG.warning("not warm-starting from %s: %s; training from scratch", summary["from"], reason)
    return {**summary, "skipped": reason}


def _read_vocabulary(path: str) -> list[str] | None:
    """Tokens in index order from a tf.Transform vocabulary file ("count token" lines, or bare tokens)."""
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as f:
        lines = f.read().decode("utf-8", "replace").splitlines()
    return [line.split(" ", 1)[1] if " " in line else line for line in lines]


def _blocks(layer: FieldEmbedding) -> dict:
    """{field key: (field, first row)} of an embedding table."""
    fields = layer.categorical + layer.bags
    starts = np.cumsum([0] + [f.cardinality for f in fields])
    return {f.key: (f, int(start)) for f, start in zip(fields, starts)}


def _row_pairs(new_layer, old_layer, new_vocabulary, old_vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """(rows of the new table, rows of the old table) that hold the same id or OOV bucket."""
    old_blocks = _blocks(old_layer)
    dst, src = [], []
    for key, (field, start) in _blocks(new_layer).items():
        if key not in old_blocks:
            continue
        old_field, old_start = old_blocks[key]
        new_tokens, old_tokens = new_vocabulary(key), old_vocabulary(key)
        if new_tokens is None or old_tokens is None:
            continue
        where = {token: i for i, token in enumerate(old_tokens)}
        for i, token in enumerate(new_tokens):
            if token in where:
                dst.append(start + i)
                src.append(old_start + where[token])
        buckets = field.cardinality - len(new_tokens)
        if buckets != old_field.cardinality - len(old_tokens):
            continue  # another number of OOV buckets hashes ids elsewhere: nothing to carry over
        for j in range(buckets):
            dst.append(start + len(new_tokens) + j)
            src.append(old_start + len(old_tokens) + j)
    return np.asarray(dst, "int64"), np.asarray(src, "int64")


def _layout(spec: dict) -> list:
    """The input fields without what new data changes and no weight depends on: cardinalities
    (new vocabularies) and bag lengths (the longest bags kept)."""
    return [(f["key"], f["kind"], f["weighted"]) for f in spec["fields"]]


def warm_start(network, tft_output, saved_model: str) -> dict:
    """Copies what carries over from `saved_model` (an export of `trainer.export`) into `network`
    (built); returns {"from", "variables", "copied", "embedding_rows", ...} or {"from", "skipped"}."""
    summary = {"from": saved_model}
    if not tf.io.gfile.exists(os.path.join(saved_model, "saved_model.pb")):
        raise ValueError(f"warm start: {saved_model} is not a SavedModel (no saved_model.pb)")
    described = os.path.join(saved_model, "assets.extra", NETWORK_FILE)
    if not tf.io.gfile.exists(described):
        return _skip(summary, f"it has no assets.extra/{NETWORK_FILE} (it was exported before warm starts)")
    with tf.io.gfile.GFile(described) as f:
        old_description = json.load(f)
    new_config = json.loads(json.dumps(network.config))
    changed = sorted(
        k
        for k in set(new_config) | set(old_description["config"])
        if new_config.get(k) != old_description["config"].get(k)
    )
    if changed:
        return _skip(summary, f"its model config differs in {', '.join(changed)}")
    if _layout(old_description["spec"]) != _layout(network.spec):
        return _skip(summary, "its input fields differ (names, kinds or weights)")

    old = models.build(old_description["spec"], old_description["config"])
    old(dummy_batch(InputSpec.from_dict(old_description["spec"])))
    tf.train.Checkpoint(network=old).read(
        os.path.join(saved_model, "variables", "variables")
    ).assert_existing_objects_matched().expect_partial()

    new_tables, old_tables = network.embedding_layers(), old.embedding_layers()
    assets = os.path.join(saved_model, "assets")
    rows, tables = 0, 0
    for new_layer, old_layer in zip(new_tables, old_tables):
        dst, src = _row_pairs(
            new_layer,
            old_layer,
            lambda key: _read_vocabulary(tft_output.vocabulary_file_by_name(key)),
            lambda key: _read_vocabulary(os.path.join(assets, key)),
        )
        if len(dst):
            table = new_layer.table.numpy()
            table[dst] = old_layer.table.numpy()[src]
            new_layer.table.assign(table)
            tables += 1
        rows += len(dst)

    table_ids = {id(layer.table) for layer in new_tables + old_tables}
    new_rest = [v for v in network.weights if id(v) not in table_ids]
    old_rest = [v for v in old.weights if id(v) not in table_ids]
    copied = 0
    if len(new_rest) == len(old_rest):
        for new, previous in zip(new_rest, old_rest):
            if tuple(new.shape) == tuple(previous.shape):
                new.assign(previous)
                copied += 1
    summary.update(
        variables=len(network.weights),
        copied=copied + tables,
        embedding_rows=rows,
        embedding_rows_total=sum(layer.rows for layer in new_tables),
    )
    _LOG.info(
        "warm start from %s: %d of %d variables copied, %d of %d embedding rows carried over",
        saved_model,
        summary["copied"],
        summary["variables"],
        rows,
        summary["embedding_rows_total"],
    )
    return summary
