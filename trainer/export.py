"""The serving export: the inference network wrapped with the tf.Transform graph.

`ServingModule` (a tf.Module) holds the network and tf.Transform's layer and nothing else: no
optimizer, no MTN alphas, no auxiliary heads. Its two signatures take raw features, so the
served model applies the very transformation the training data got:

- `serving_default`: `examples`, string [B], serialized raw tf.Examples as ExampleGen writes
  them. A missing field parses as empty and becomes what Transform makes of an absent field
  (the missing token's index, or its OOV bucket; 0.0 for numerics).
- `predict`: one tensor per raw field, for JSON requests: a single-valued categorical field
  int64 [B]; a multi-valued one int64 [B, L] padded with `features.MISSING_ID` (-1), with its
  weights float32 [B, L] under `<key>_weight` where the layout has weights; a numeric field
  float32 [B]. -1 means "absent" everywhere.
Both output `ctr`, `cvr` and `ctcvr`: float32 [B].
"""

from __future__ import annotations

import functools
import json
import os
import time

import numpy as np
import tensorflow as tf

from trainer import inputs
from transform import features as F

_READ_BATCH = 8192
NETWORK_FILE = "network.json"  # in assets.extra/: the network's input spec and model config


def serving_raw_spec(tft_output) -> dict:
    """The raw feature spec without labels and metadata: what a request carries."""
    spec = tft_output.raw_feature_spec()
    return {k: v for k, v in spec.items() if k not in F.LABELS and k not in F.METADATA}


def _sparse(dense, keep):
    """[B, L] dense and a [B, L] bool mask -> SparseTensor [B, L] of the kept entries, in order,
    each row's in columns 0, 1, ... as parsed tf.Examples have them (padding inside a bag is skipped)."""
    indices = tf.where(keep)
    columns = tf.gather_nd(tf.cumsum(tf.cast(keep, tf.int64), axis=1, exclusive=True), indices)
    return tf.SparseTensor(
        tf.stack([indices[:, 0], columns], axis=1), tf.gather_nd(dense, indices), tf.shape(dense, out_type=tf.int64)
    )


class ServingModule(tf.Module):
    def __init__(self, network, tft_output, spec: inputs.InputSpec):
        super().__init__()
        self.network = network
        self.transform_layer = tft_output.transform_features_layer()
        self._raw_spec = serving_raw_spec(tft_output)
        self._spec = spec
        self._fields = {f.key: f for f in F.fields_in(self._raw_spec)}

    def _score(self, raw: dict) -> dict:
        transformed = self.transform_layer(raw)
        return self.network(inputs.densify(transformed, self._spec), training=False)

    def serve_examples(self, examples):
        return self._score(tf.io.parse_example(examples, self._raw_spec))

    def predict_features(self, features: dict):
        raw = {}
        for key, value in features.items():
            if key.endswith("_weight"):
                continue
            field = self._fields[key]
            if field.multivalent:
                keep = tf.not_equal(value, F.MISSING_ID)
                raw[key] = _sparse(value, keep)
                if f"{key}_weight" in features:
                    raw[f"{key}_weight"] = _sparse(features[f"{key}_weight"], keep)
            else:
                column = tf.expand_dims(value, 1)
                raw[key] = _sparse(column, tf.ones_like(column, tf.bool))
        return self._score(raw)

    def predict_signature(self) -> dict:
        """{key: TensorSpec} of the `predict` signature."""
        specs = {}
        for key, feature in self._raw_spec.items():
            owner = self._fields.get(key[: -len("_weight")]) if key.endswith("_weight") else None
            field = owner or self._fields[key]
            shape = [None, None] if field.multivalent else [None]
            specs[key] = tf.TensorSpec(shape, feature.dtype, key)
        return specs


def predict_inputs(signature, records) -> dict:
    """The `predict` signature's tensors for serialized raw tf.Examples: what a JSON client sends
    (bags padded with -1, an absent single value as -1, an absent numeric as 0.0)."""
    specs = signature.structured_input_signature[1]
    parsed = tf.io.parse_example(tf.constant(records), {k: tf.io.VarLenFeature(s.dtype) for k, s in specs.items()})
    out = {}
    for key, s in specs.items():
        padding = tf.cast(0.0 if s.dtype == tf.float32 else F.MISSING_ID, s.dtype)
        dense = tf.sparse.to_dense(parsed[key], default_value=padding)
        if s.shape.rank == 1:
            dense = dense[:, 0] if dense.shape[1] else tf.fill([len(records)], padding)
        out[key] = dense
    return out


def export(network, tft_output, spec: inputs.InputSpec, serving_model_dir: str) -> dict:
    """Saves the SavedModel (atomically: written beside, then renamed); returns {"params": n}."""
    module = ServingModule(network, tft_output, spec)
    serving_default = tf.function(
        module.serve_examples, input_signature=[tf.TensorSpec([None], tf.string, "examples")]
    ).get_concrete_function()
    predict = tf.function(module.predict_features).get_concrete_function(module.predict_signature())
    tmp = serving_model_dir.rstrip("/") + ".tmp"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    tf.saved_model.save(module, tmp, signatures={"serving_default": serving_default, "predict": predict})
    # How to rebuild the network (for warm starts); assets.extra/ is ignored by TF Serving's loader.
    tf.io.gfile.makedirs(os.path.join(tmp, "assets.extra"))
    with tf.io.gfile.GFile(os.path.join(tmp, "assets.extra", NETWORK_FILE), "w") as f:
        f.write(json.dumps({"spec": network.spec, "config": network.config}, indent=2))
    if tf.io.gfile.exists(serving_model_dir):
        tf.io.gfile.rmtree(serving_model_dir)
    tf.io.gfile.rename(tmp, serving_model_dir)
    return {"params": saved_params(serving_model_dir)}


def saved_variables(saved_model_dir: str) -> dict:
    """{checkpoint key: shape} of every variable a SavedModel holds."""
    path = os.path.join(saved_model_dir, "variables", "variables")
    return {name: shape for name, shape in tf.train.list_variables(path) if not name.startswith("_CHECKPOINTABLE")}


def saved_params(saved_model_dir: str) -> int:
    return int(sum(np.prod(shape) for shape in saved_variables(saved_model_dir).values()))


@functools.lru_cache(maxsize=4)
def _loaded(saved_model_dir: str, stamp: tuple):
    del stamp  # part of the cache key only: a model rewritten in place is loaded again
    return tf.saved_model.load(saved_model_dir)


def load_serving_default(saved_model_dir: str):
    """The SavedModel's serving_default. Loading one takes seconds (the tf.Transform graph), and the
    Evaluator scores the same baseline run after run, so the last few loads are kept."""
    path = os.path.abspath(saved_model_dir)
    pb = os.path.join(path, "saved_model.pb")
    info = os.stat(pb) if os.path.exists(pb) else None
    stamp = (info.st_mtime_ns, info.st_size, info.st_ino) if info else (time.time_ns(),)
    return _loaded(path, stamp).signatures["serving_default"]


def score_examples(saved_model_dir: str, files, batch_size: int = _READ_BATCH, columns=()) -> tuple[dict, dict]:
    """Scores raw tf.Example files with a SavedModel's serving_default: ({ctr, cvr, ctcvr},
    {click, conversion, and each single-valued int64 feature of `columns`, -1 where absent})."""
    serve = load_serving_default(saved_model_dir)
    label_spec = {label: tf.io.FixedLenFeature([], tf.int64) for label in F.LABELS}
    label_spec.update({key: tf.io.FixedLenFeature([], tf.int64, default_value=F.MISSING_ID) for key in columns})
    scores, labels = {}, {}
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch_size):
        for key, value in serve(examples=batch).items():
            scores.setdefault(key, []).append(value.numpy())
        for key, value in tf.io.parse_example(batch, label_spec).items():
            labels.setdefault(key, []).append(value.numpy())
    return {k: np.concatenate(v) for k, v in scores.items()}, {k: np.concatenate(v) for k, v in labels.items()}
