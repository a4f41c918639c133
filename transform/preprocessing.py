"""tf.Transform's `preprocessing_fn`: raw tf.Example features to model inputs.

`preprocessing_fn(inputs, custom_config=None)` has TFX's signature, so this file drops into a
TFX Transform component as its module file. It finds the fields in `inputs` by their keys in
`transform.features`, so one function serves every dataset layout.

Outputs (B = batch size):
- single-valued categorical field `k`: int64 [B], its vocabulary index. An absent field is the
  token `features.MISSING_ID`, so "missing" learns its own embedding when it is frequent
  enough. Only the first id is kept: the real data never holds more, and `transform.features`
  says which fields may.
- multi-valued categorical field `k`: int64 SparseTensor [B, None] of vocabulary indices, every
  id kept in order; weighted fields also give `k_weight`, float32 SparseTensor with the same
  indices, so the trainer pools ids with their weights.
- numeric field `k`: float32 [B] (absent: 0.0), then the field's configured ops.
- labels (`click`, `conversion`): int64 [B], passed through untouched and never an input of a
  feature; `sample_id`: string [B], passed through for tracing, never a model input.

Vocabularies: one per field, named by its key, computed on the data the analyzer sees (the
training split), with `frequency_threshold`, and `num_oov_buckets` buckets after the
vocabulary for ids it does not hold. Each vocabulary file stores its counts ("count token"
lines), which noise injection samples from. Embedding tables are sized from the transform
output (`categorical_cardinalities`), never from constants.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from common import sparse
from transform import features as F
from transform.options import NUMERIC_OP_NAMES, Options


def signed_log1p(x):
    """sign(x) * log(1 + |x|): log1p for counts, and defined for any real input."""
    return tf.sign(x) * tf.math.log1p(tf.abs(x))


NUMERIC_OPS = dict(zip(NUMERIC_OP_NAMES, (signed_log1p, tft.scale_to_z_score)))


def raw_feature_spec(schema: F.Schema) -> dict:
    """How ExampleGen's tf.Examples of `schema` parse: every field may be absent or repeated."""
    spec = {}
    for field in schema.fields:
        dtype = tf.int64 if field.kind is F.Kind.CATEGORICAL else tf.float32
        spec[field.key] = tf.io.VarLenFeature(dtype)
        if field.source in schema.weighted and field.multivalent:
            spec[F.weight_key(field)] = tf.io.VarLenFeature(tf.float32)
    for label in F.LABELS:
        spec[label] = tf.io.FixedLenFeature([], tf.int64)
    spec[F.SAMPLE_ID] = tf.io.FixedLenFeature([], tf.string)
    return spec


def _first(values: tf.SparseTensor, default) -> tf.Tensor:
    """[B]: each row's first value, `default` where the row is empty."""
    return sparse.leading(values, 1, default)[:, 0]


def _unit_weights(ids) -> tf.Tensor:
    """Weight 1 per id. Unweighted vocabularies send every id occurrence through Beam as its own
    element; weighted ones count each batch's unique ids in the graph first, with the same counts."""
    return tf.ones_like(ids.values if isinstance(ids, tf.SparseTensor) else ids, dtype=tf.float32)


def preprocessing_fn(inputs: dict, custom_config: dict | None = None) -> dict:
    options = Options.from_config(custom_config)
    outputs = {}
    for field in F.fields_in(inputs):
        raw = inputs[field.key]
        if field.kind is F.Kind.NUMERIC:
            value = _first(raw, 0.0)
            for op in options.ops_for(field):
                value = NUMERIC_OPS[op](value)
            outputs[field.key] = value
            continue
        ids = raw if field.multivalent else _first(raw, tf.constant(F.MISSING_ID, tf.int64))
        outputs[field.key] = tft.compute_and_apply_vocabulary(
            ids,
            frequency_threshold=options.frequency_threshold if options.frequency_threshold > 1 else None,
            num_oov_buckets=options.num_oov_buckets,
            weights=_unit_weights(ids),
            vocab_filename=field.key,
            store_frequency=True,
            name=f"vocabulary_{field.key}",
        )
        if field.multivalent and F.weight_key(field) in inputs:
            outputs[F.weight_key(field)] = inputs[F.weight_key(field)]
    for key in (*F.LABELS, F.SAMPLE_ID):
        outputs[key] = inputs[key]
    return outputs


def categorical_cardinalities(tf_transform_output) -> dict:
    """{field key: number of indices (vocabulary + OOV buckets)} from the transform output's
    schema, where tf.Transform records each vocabulary output's int domain after analysis."""
    return {
        f.name: f.int_domain.max + 1
        for f in tf_transform_output.transformed_metadata.schema.feature
        if f.HasField("int_domain") and f.int_domain.is_categorical
    }
