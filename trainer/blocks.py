"""The blocks every model is built from: embeddings, MLPs, experts, gates, towers, decomposition pairs.

Shapes: B batch, F fields, D embedding size, E experts, k tasks, M decomposition pairs per task.
Experts and towers are "parallel MLPs": n networks of the same shape whose depth-i weights are
one [n, d_in, d_out] kernel, so n experts cost one batched matmul per depth, and MTN reads a
depth's stacked weights as they are.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from trainer.inputs import BAG, CATEGORICAL, NUMERIC, InputSpec


@keras.saving.register_keras_serializable("mtrank")
class FieldEmbedding(keras.layers.Layer):
    """Per-field embeddings, concatenated: [B, (F_categorical + F_bag) * D + F_numeric].

    Every categorical field has its own rows in one [sum of cardinalities, D] table (an offset per
    field), so all fields take one gather. A multi-valued field pools its ids' embeddings scaled
    by their weights: "sum" adds them, "mean" divides the sum by the number of ids. Neither
    normalises the weights away: Ali-CCP's weights are counts, and a cross field's single id
    carries its signal in its weight. Numeric fields are appended as they are. Rows start uniform
    in [-init_scale, init_scale].
    """

    def __init__(self, spec: dict, dim: int, pooling: str = "sum", init_scale: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.spec, self.dim, self.pooling, self.init_scale = spec, dim, pooling, init_scale
        fields = InputSpec.from_dict(spec)
        self.categorical = fields.of_kind(CATEGORICAL)
        self.bags = fields.of_kind(BAG)
        self.numeric = fields.of_kind(NUMERIC)
        offsets = np.cumsum([0] + [f.cardinality for f in self.categorical + self.bags])
        self.rows = int(offsets[-1])
        self.categorical_offsets = offsets[: len(self.categorical)].astype("int32")
        bag_offsets = offsets[len(self.categorical) : -1]
        self.bag_offsets = (
            np.concatenate([np.full(f.bag_length, o, "int32") for f, o in zip(self.bags, bag_offsets)])
            if self.bags
            else None
        )
        # Consecutive bags of one length, as (bags, length) runs: each run pools with one reshape and sum.
        self.bag_runs = []
        for f in self.bags:
            if self.bag_runs and self.bag_runs[-1][1] == f.bag_length:
                self.bag_runs[-1][0] += 1
            else:
                self.bag_runs.append([1, f.bag_length])

    def build(self, input_shape=None):
        self.table = self.add_weight(
            shape=(max(self.rows, 1), self.dim),
            name="table",
            initializer=keras.initializers.RandomUniform(-self.init_scale, self.init_scale),
        )

    @property
    def output_dim(self) -> int:
        return (len(self.categorical) + len(self.bags)) * self.dim + len(self.numeric)

    def row_ids(self, features) -> tuple:
        """(rows [B, n] int32, present [B, n] float32): the table rows a batch reads, and 1 where a
        row is read (0 on a bag's padding)."""
        rows, present = [], []
        if self.categorical:
            ids = ops.stack([features[f.key] for f in self.categorical], axis=1) + self.categorical_offsets
            rows.append(ids)
            present.append(ops.ones_like(ids, "float32"))
        if self.bags:
            rows.append(ops.concatenate([features[f.key] for f in self.bags], axis=1) + self.bag_offsets)
            weights = ops.concatenate([features[f.weight_key] for f in self.bags], axis=1)
            present.append(ops.cast(ops.not_equal(weights, 0), "float32"))
        if not rows:
            batch = ops.shape(features[self.numeric[0].key])[0]
            return ops.zeros((batch, 0), "int32"), ops.zeros((batch, 0), "float32")
        return ops.concatenate(rows, axis=1), ops.concatenate(present, axis=1)

    def _rows(self, ids):
        # tf.gather, not ops.take: ids are never negative, and take's wrap-around costs three ops per lookup.
        return tf.gather(self.table, ids)

    def _pool(self, values):
        """[B, sum of bag lengths, d] -> [B, F_bag, d]: the sum over each bag's positions. A reshape
        and a sum per run of equal-length bags, which XLA and the plain executor both run fast
        (an einsum against a [positions, bags] indicator transposed [B, L, d] both ways)."""
        pooled, start = [], 0
        for bags, length in self.bag_runs:
            block = values[:, start : start + bags * length]
            pooled.append(ops.sum(ops.reshape(block, (-1, bags, length, values.shape[-1])), axis=2))
            start += bags * length
        return ops.concatenate(pooled, axis=1) if len(pooled) > 1 else pooled[0]

    def call(self, features):
        parts = []
        if self.categorical:
            ids = ops.stack([features[f.key] for f in self.categorical], axis=1) + self.categorical_offsets
            parts.append(ops.reshape(self._rows(ids), (-1, len(self.categorical) * self.dim)))
        if self.bags:
            ids = ops.concatenate([features[f.key] for f in self.bags], axis=1) + self.bag_offsets
            weights = ops.concatenate([features[f.weight_key] for f in self.bags], axis=1)
            vectors = self._rows(ids) * ops.expand_dims(ops.cast(weights, self.compute_dtype), -1)
            pooled = self._pool(vectors)
            if self.pooling == "mean":
                count = self._pool(ops.cast(ops.not_equal(weights, 0), self.compute_dtype)[..., None])
                pooled = pooled / ops.maximum(count, 1.0)
            parts.append(ops.reshape(pooled, (-1, len(self.bags) * self.dim)))
        if self.numeric:
            parts.append(ops.cast(ops.stack([features[f.key] for f in self.numeric], axis=1), self.compute_dtype))
        return ops.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def get_config(self):
        return {
            **super().get_config(),
            "spec": self.spec,
            "dim": self.dim,
            "pooling": self.pooling,
            "init_scale": self.init_scale,
        }


@keras.saving.register_keras_serializable("mtrank")
class LinearLogits(keras.layers.Layer):
    """A linear model per task: one weight per id of every categorical field (bags: the ids' weights
    times their weights, summed), one per numeric field, and a bias. Inputs -> [B, k] logits.

    The id weights are a FieldEmbedding of width k, so they share its one-gather lookup and its
    touched-rows regulariser; they start at zero, as a logistic regression does."""

    def __init__(self, spec: dict, num_tasks: int, **kwargs):
        super().__init__(**kwargs)
        self.spec, self.num_tasks = spec, num_tasks
        self.weights_by_id = FieldEmbedding(spec, num_tasks, "sum", 0.0, name="id_weights")
        self.fields = len(self.weights_by_id.categorical) + len(self.weights_by_id.bags)

    def build(self, input_shape=None):
        self.weights_by_id.build()
        numeric = len(self.weights_by_id.numeric)
        self.numeric_weights = (
            self.add_weight(shape=(numeric, self.num_tasks), initializer="zeros", name="numeric_weights")
            if numeric
            else None
        )
        self.bias = self.add_weight(shape=(self.num_tasks,), initializer="zeros", name="bias")

    def call(self, features):
        looked_up = self.weights_by_id(features)  # [B, fields * k + numeric]
        split = self.fields * self.num_tasks
        logits = self.bias + ops.sum(ops.reshape(looked_up[:, :split], (-1, self.fields, self.num_tasks)), axis=1)
        if self.numeric_weights is not None:
            logits = logits + ops.matmul(looked_up[:, split:], ops.cast(self.numeric_weights, looked_up.dtype))
        return logits

    def get_config(self):
        return {**super().get_config(), "spec": self.spec, "num_tasks": self.num_tasks}


@keras.saving.register_keras_serializable("mtrank")
class Dropout(keras.layers.Layer):
    """Inverted dropout, [...] -> [...], with its mask from an integer hash of each element's
    index and a per-call key (a murmur3 finaliser), not from Philox: XLA's CPU Philox kernel
    takes ~1.5 s for a [2048, 8, 128] mask that the hash makes in ~13 ms, which made a training
    step with dropout ~20x slower. Keys come from a SeedGenerator, so `keras.utils.set_random_seed`
    makes the masks repeat."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed = float(rate), seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="dropout_seed")

    @staticmethod
    def _mix(h):
        for shift, multiplier in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
            h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(shift, tf.uint32)))
            h = h * tf.constant(multiplier, tf.uint32)
        return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, tf.uint32)))

    def call(self, x, training=False):
        if not training or self.rate == 0:
            return x
        seed = tf.cast(self.seed_generator.next(), tf.uint32)
        key = self._mix(seed[0] * tf.constant(0x9E3779B1, tf.uint32) + seed[1])
        index = tf.cast(tf.range(tf.size(x)), tf.uint32)
        bits = self._mix(index * tf.constant(0x9E3779B1, tf.uint32) + key)
        keep = tf.reshape(bits >= tf.constant(min(int(self.rate * 2**32), 2**32 - 1), tf.uint32), tf.shape(x))
        return tf.where(keep, x / (1.0 - self.rate), tf.zeros_like(x))

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable("mtrank")
class MLP(keras.layers.Layer):
    """Dense layers with ReLU (and dropout): [B, d] -> [B, units[-1]]."""

    def __init__(self, units, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.units, self.dropout = tuple(units), dropout
        self.dense = [keras.layers.Dense(u, activation="relu", name=f"dense_{i}") for i, u in enumerate(self.units)]
        self.drop = [Dropout(dropout) for _ in self.units] if dropout else []

    def call(self, x, training=False):
        for i, layer in enumerate(self.dense):
            x = layer(x)
            if self.drop:
                x = self.drop[i](x, training=training)
        return x

    def get_config(self):
        return {**super().get_config(), "units": list(self.units), "dropout": self.dropout}


@keras.saving.register_keras_serializable("mtrank")
class ParallelMLP(keras.layers.Layer):
    """n MLPs of the same shape, computed together.

    Input [B, d] (every network sees it) or [B, n, d] (one input per network); output
    [B, n, units[-1]]. Depth i's weights are one kernel [n, d_in, d_out] (`kernels`), each slice
    initialised like a Glorot-uniform Dense layer. The last layer is linear when `linear_output`.
    """

    def __init__(self, n: int, units, dropout: float = 0.0, linear_output: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.n, self.units, self.dropout, self.linear_output = n, tuple(units), dropout, linear_output
        self.drop = [Dropout(dropout) for _ in self.units] if dropout else []

    def build(self, input_shape):
        d_in = input_shape[-1]
        self.kernel_vars, self.bias_vars = [], []
        for i, d_out in enumerate(self.units):
            limit = math.sqrt(6.0 / (d_in + d_out))
            self.kernel_vars.append(
                self.add_weight(
                    shape=(self.n, d_in, d_out),
                    initializer=keras.initializers.RandomUniform(-limit, limit),
                    name=f"kernel_{i}",
                )
            )
            self.bias_vars.append(self.add_weight(shape=(self.n, d_out), initializer="zeros", name=f"bias_{i}"))
            d_in = d_out

    @property
    def kernels(self) -> list:
        return list(self.kernel_vars)

    def call(self, x, training=False):
        if not training:
            return self._inference(x)
        shared_input = len(x.shape) == 2
        for i, (kernel, bias) in enumerate(zip(self.kernel_vars, self.bias_vars)):
            equation = "bd,nde->bne" if shared_input and i == 0 else "bnd,nde->bne"
            x = ops.einsum(equation, x, kernel) + bias
            if self._activated(i):
                x = ops.relu(x)
                if self.drop:
                    x = self.drop[i](x, training=training)
        return x

    def _inference(self, x):
        """The same product as batched matmuls, networks leading: [n, B, d]. Training steps run
        under XLA, where einsum is one dot and a broadcast batched matmul would copy the input once
        per network (a 10% slower step); inference graphs (the served model) run on oneDNN, whose
        einsum transposes each [n, d, e] kernel on every call: ~0.1 ms a layer even for one row,
        half of a one-row request's model time."""
        x = x[None] if len(x.shape) == 2 else tf.transpose(x, [1, 0, 2])
        for i, (kernel, bias) in enumerate(zip(self.kernel_vars, self.bias_vars)):
            x = tf.matmul(x, kernel) + bias[:, None, :]
            if self._activated(i):
                x = ops.relu(x)
        return tf.transpose(x, [1, 0, 2])

    def _activated(self, i: int) -> bool:
        return i < len(self.units) - 1 or not self.linear_output

    def get_config(self):
        return {
            **super().get_config(),
            "n": self.n,
            "units": list(self.units),
            "dropout": self.dropout,
            "linear_output": self.linear_output,
        }


@keras.saving.register_keras_serializable("mtrank")
class Experts(ParallelMLP):
    """E experts on one input: [B, d] -> [B, E, units[-1]]."""

    def __init__(self, num_experts: int, units, dropout: float = 0.0, **kwargs):
        kwargs.pop("n", None), kwargs.pop("linear_output", None)
        super().__init__(num_experts, units, dropout, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["num_experts"] = config.pop("n")
        config.pop("linear_output")
        return config


@keras.saving.register_keras_serializable("mtrank")
class TaskTowers(ParallelMLP):
    """One tower per task, each ending in a logit: [B, k, d] or [B, d] -> [B, k] logits.

    `units` are the hidden layers; with `logits=False` the towers end at the last hidden layer
    ([B, k, units[-1]]) for models that add their own heads.
    """

    def __init__(self, num_tasks: int, units, dropout: float = 0.0, logits: bool = True, **kwargs):
        kwargs.pop("n", None), kwargs.pop("linear_output", None)
        self.logits = logits
        super().__init__(num_tasks, tuple(units) + ((1,) if logits else ()), dropout, linear_output=logits, **kwargs)
        self.hidden_units = tuple(units)

    def call(self, x, training=False):
        out = super().call(x, training)
        return ops.squeeze(out, -1) if self.logits else out

    def get_config(self):
        config = super().get_config()
        config.update(num_tasks=config.pop("n"), units=list(self.hidden_units), logits=self.logits)
        config.pop("linear_output")
        return config


@keras.saving.register_keras_serializable("mtrank")
class Gate(keras.layers.Layer):
    """Softmax weights over E experts from the gate input, and the mix: ([B, d], [B, E, u]) -> [B, u]."""

    def __init__(self, num_experts: int, **kwargs):
        super().__init__(**kwargs)
        self.num_experts = num_experts
        self.dense = keras.layers.Dense(num_experts, activation="softmax", name="weights")

    def call(self, gate_input, experts):
        return ops.einsum("be,beu->bu", self.dense(gate_input), experts)

    def get_config(self):
        return {**super().get_config(), "num_experts": self.num_experts}


@keras.saving.register_keras_serializable("mtrank")
class ExtractionLevel(keras.layers.Layer):
    """One level of CGC / PLE: task-specific experts per task and shared experts, a gate per task
    over its own and the shared experts, and (below the last level) a shared gate over all experts.

    Inputs: a list of k + 1 tensors [B, d] (each task's input, then the shared input; the first
    level gets the embedding k + 1 times). Output: the same list at the next level, [B, units[-1]].
    """

    def __init__(
        self,
        num_tasks: int,
        specific_experts: int,
        shared_experts: int,
        units,
        last: bool,
        dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_tasks, self.specific_experts, self.shared_experts = num_tasks, specific_experts, shared_experts
        self.units, self.last, self.dropout = tuple(units), last, dropout
        self.specific = [Experts(specific_experts, units, dropout, name=f"task_{t}_experts") for t in range(num_tasks)]
        self.shared = Experts(shared_experts, units, dropout, name="shared_experts")
        self.task_gates = [Gate(specific_experts + shared_experts, name=f"task_{t}_gate") for t in range(num_tasks)]
        self.shared_gate = None if last else Gate(num_tasks * specific_experts + shared_experts, name="shared_gate")

    def expert_kernels(self) -> list:
        """Per depth, every expert's kernel of this level stacked: [E_level, d_in, d_out]."""
        return [ops.concatenate(ks, axis=0) for ks in zip(*(e.kernels for e in self.specific + [self.shared]))]

    def experts_output(self, inputs, training=False):
        """Each task's experts [B, specific, u] and the shared ones [B, shared, u]."""
        return (
            [e(x, training=training) for e, x in zip(self.specific, inputs[:-1])],
            self.shared(inputs[-1], training=training),
        )

    def call(self, inputs, training=False):
        specific, shared = self.experts_output(inputs, training)
        outputs = [
            gate(x, ops.concatenate([own, shared], axis=1))
            for gate, x, own in zip(self.task_gates, inputs[:-1], specific)
        ]
        if self.shared_gate is not None:
            outputs.append(self.shared_gate(inputs[-1], ops.concatenate(specific + [shared], axis=1)))
        return outputs

    def get_config(self):
        return {
            **super().get_config(),
            "num_tasks": self.num_tasks,
            "specific_experts": self.specific_experts,
            "shared_experts": self.shared_experts,
            "units": list(self.units),
            "last": self.last,
            "dropout": self.dropout,
        }


@keras.saving.register_keras_serializable("mtrank")
class DecompositionPairs(keras.layers.Layer):
    """FDN's decomposition pairs: per task, M pairs of a task-specific expert f^p and a task-shared
    expert f^s on the same input. [B, d] -> (specific [B, k, M, u], shared [B, k, M, u]).

    Without shared features (the paper's ablation) only the specific experts exist and `shared`
    is None.
    """

    def __init__(self, num_tasks: int, pairs: int, units, shared_features: bool = True, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_tasks, self.pairs, self.units = num_tasks, pairs, tuple(units)
        self.shared_features, self.dropout = shared_features, dropout
        self.specific = Experts(num_tasks * pairs, units, dropout, name="specific_experts")
        self.shared = Experts(num_tasks * pairs, units, dropout, name="shared_experts") if shared_features else None

    def call(self, x, training=False):
        shape = (-1, self.num_tasks, self.pairs, self.units[-1])
        specific = ops.reshape(self.specific(x, training=training), shape)
        shared = ops.reshape(self.shared(x, training=training), shape) if self.shared is not None else None
        return specific, shared

    def get_config(self):
        return {
            **super().get_config(),
            "num_tasks": self.num_tasks,
            "pairs": self.pairs,
            "units": list(self.units),
            "shared_features": self.shared_features,
            "dropout": self.dropout,
        }
