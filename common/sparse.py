"""SparseTensor helpers shared by the Transform graph and the served model."""

from __future__ import annotations

import tensorflow as tf


def leading(values: tf.SparseTensor, length: int, default=0) -> tf.Tensor:
    """[B, length]: each row's first `length` values, padded with `default`. `values` is row-major
    with each row's values in columns 0, 1, ... (as tf.io.parse_example makes them). Three ops, where
    RaggedTensor.from_sparse and to_tensor take about thirty: the served graph runs them per request."""
    shape = tf.stack([tf.shape(values, out_type=tf.int64)[0], tf.constant(length, tf.int64)])
    kept = tf.sparse.slice(values, tf.zeros([2], tf.int64), shape)
    return tf.sparse.to_dense(tf.SparseTensor(kept.indices, kept.values, shape), default_value=default)
