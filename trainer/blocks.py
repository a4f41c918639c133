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
from keras import ops

from trainer.inputs import BAG, CATEGORICAL, NUMERIC, InputSpec


@keras.saving.register_keras_serializable("mtrank")
class FieldEmbedding(keras.layers.Layer):
    """Per-field embeddings, concatenated: [B, (F_categorical + F_bag) * D + F_numeric].

    Every categorical field has its own rows in one [sum of cardinalities, D] table (an offset per
    field), so all fields take one gather. A multi-valued field pools its ids' embeddings scaled
    by their weights: "sum" adds them, "mean" divides the sum by the number of ids. Neither
    normalises the weights away: Ali-CCP's weights are counts, and a cross field's single id
    carries its signal in its weight. Numeric fields are appended as they are.
    """

    def __init__(self, spec: dict, dim: int, pooling: str = "sum", **kwargs):
        super().__init__(**kwargs)
        self.spec, self.dim, self.pooling = spec, dim, pooling
        fields = InputSpec.from_dict(spec)
        self.categorical = fields.of_kind(CATEGORICAL)
        self.bags = fields.of_kind(BAG)
        self.numeric = fields.of_kind(NUMERIC)
        offsets = np.cumsum([0] + [f.cardinality for f in self.categorical + self.bags])
        self.rows = int(offsets[-1])
        self.categorical_offsets = offsets[: len(self.categorical)].astype("int32")
        bag_offsets = offsets[len(self.categorical):-1]
        self.bag_offsets = np.concatenate(
            [np.full(f.bag_length, o, "int32") for f, o in zip(self.bags, bag_offsets)]) if self.bags else None
        # [sum of bag lengths, F_bag]: 1 where a bag position belongs to the field; pools all bags in one matmul.
        self.bag_pooling = np.zeros((sum(f.bag_length for f in self.bags), len(self.bags)), "float32")
        start = 0
        for j, f in enumerate(self.bags):
            self.bag_pooling[start:start + f.bag_length, j] = 1.0
            start += f.bag_length

    def build(self, input_shape=None):
        self.table = self.add_weight(shape=(max(self.rows, 1), self.dim), initializer="uniform", name="table")

    @property
    def output_dim(self) -> int:
        return (len(self.categorical) + len(self.bags)) * self.dim + len(self.numeric)

    def call(self, features):
        parts = []
        if self.categorical:
            ids = ops.stack([features[f.key] for f in self.categorical], axis=1) + self.categorical_offsets
            parts.append(ops.reshape(ops.take(self.table, ids, axis=0), (-1, len(self.categorical) * self.dim)))
        if self.bags:
            ids = ops.concatenate([features[f.key] for f in self.bags], axis=1) + self.bag_offsets
            weights = ops.concatenate([features[f.weight_key] for f in self.bags], axis=1)
            vectors = ops.take(self.table, ids, axis=0) * ops.expand_dims(ops.cast(weights, self.compute_dtype), -1)
            pooled = ops.einsum("bld,lf->bfd", vectors, ops.cast(self.bag_pooling, self.compute_dtype))
            if self.pooling == "mean":
                present = ops.cast(ops.not_equal(weights, 0), self.compute_dtype)
                count = ops.matmul(present, ops.cast(self.bag_pooling, self.compute_dtype))
                pooled = pooled / ops.expand_dims(ops.maximum(count, 1.0), -1)
            parts.append(ops.reshape(pooled, (-1, len(self.bags) * self.dim)))
        if self.numeric:
            parts.append(ops.cast(ops.stack([features[f.key] for f in self.numeric], axis=1), self.compute_dtype))
        return ops.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def get_config(self):
        return {**super().get_config(), "spec": self.spec, "dim": self.dim, "pooling": self.pooling}


@keras.saving.register_keras_serializable("mtrank")
class MLP(keras.layers.Layer):
    """Dense layers with ReLU (and dropout): [B, d] -> [B, units[-1]]."""

    def __init__(self, units, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.units, self.dropout = tuple(units), dropout
        self.dense = [keras.layers.Dense(u, activation="relu", name=f"dense_{i}") for i, u in enumerate(self.units)]
        self.drop = [keras.layers.Dropout(dropout) for _ in self.units] if dropout else []

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
        self.drop = [keras.layers.Dropout(dropout) for _ in self.units] if dropout else []

    def build(self, input_shape):
        d_in = input_shape[-1]
        self.kernel_vars, self.bias_vars = [], []
        for i, d_out in enumerate(self.units):
            limit = math.sqrt(6.0 / (d_in + d_out))
            self.kernel_vars.append(self.add_weight(
                shape=(self.n, d_in, d_out), initializer=keras.initializers.RandomUniform(-limit, limit), name=f"kernel_{i}"))
            self.bias_vars.append(self.add_weight(shape=(self.n, d_out), initializer="zeros", name=f"bias_{i}"))
            d_in = d_out

    @property
    def kernels(self) -> list:
        return list(self.kernel_vars)

    def call(self, x, training=False):
        shared_input = len(x.shape) == 2
        for i, (kernel, bias) in enumerate(zip(self.kernel_vars, self.bias_vars)):
            equation = "bd,nde->bne" if shared_input and i == 0 else "bnd,nde->bne"
            x = ops.einsum(equation, x, kernel) + bias
            if i < len(self.units) - 1 or not self.linear_output:
                x = ops.relu(x)
                if self.drop:
                    x = self.drop[i](x, training=training)
        return x

    def get_config(self):
        return {**super().get_config(), "n": self.n, "units": list(self.units), "dropout": self.dropout,
                "linear_output": self.linear_output}


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

    def __init__(self, num_tasks: int, specific_experts: int, shared_experts: int, units, last: bool,
                 dropout: float = 0.0, **kwargs):
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
        return ([e(x, training=training) for e, x in zip(self.specific, inputs[:-1])],
                self.shared(inputs[-1], training=training))

    def call(self, inputs, training=False):
        specific, shared = self.experts_output(inputs, training)
        outputs = [gate(x, ops.concatenate([own, shared], axis=1))
                   for gate, x, own in zip(self.task_gates, inputs[:-1], specific)]
        if self.shared_gate is not None:
            outputs.append(self.shared_gate(inputs[-1], ops.concatenate(specific + [shared], axis=1)))
        return outputs

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks, "specific_experts": self.specific_experts,
                "shared_experts": self.shared_experts, "units": list(self.units), "last": self.last,
                "dropout": self.dropout}


@keras.saving.register_keras_serializable("mtrank")
class DecompositionPairs(keras.layers.Layer):
    """FDN's decomposition pairs: per task, M pairs of a task-specific expert f^p and a task-shared
    expert f^s on the same input. [B, d] -> (specific [B, k, M, u], shared [B, k, M, u]).

    Without shared features (the paper's ablation) only the specific experts exist and `shared`
    is None.
    """

    def __init__(self, num_tasks: int, pairs: int, units, shared_features: bool = True, dropout: float = 0.0,
                 **kwargs):
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
        return {**super().get_config(), "num_tasks": self.num_tasks, "pairs": self.pairs, "units": list(self.units),
                "shared_features": self.shared_features, "dropout": self.dropout}
