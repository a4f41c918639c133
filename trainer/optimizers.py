"""The Trainer's optimisers: Adam for the dense layers, and optionally another optimiser with its
own learning rate for the embedding tables, as production CTR systems train them.

An embedding row of a rare id gets a gradient in few steps. Adam's step is about its learning
rate whatever the gradient's size, so at 1e-3 a row seen a handful of times barely leaves its
initial values; Adagrad's (or FTRL's) per-coordinate rates at a larger learning rate move such
rows quickly and then settle as their squared gradients add up.
"""

from __future__ import annotations

import math

import keras
from keras import ops
from keras.src.utils import tracking

from trainer.config import EMBEDDING_OPTIMIZERS


@keras.saving.register_keras_serializable("mtrank")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """`peak` × min(1, step / warmup_steps), times a cosine from 1 down to `floor` over the
    `decay_steps` after the warm-up (0: no decay), constant after it.

    A linear warm-up keeps Adam's first steps, taken on second-moment estimates of a few batches,
    from throwing the gates and stacked experts into dead ReLUs; the decay lets the point where
    sparse CTR models peak (about the first epoch on large data) be reached with small steps."""

    def __init__(self, peak: float, warmup_steps: int = 0, decay_steps: int = 0, floor: float = 0.1):
        self.peak, self.warmup_steps, self.decay_steps, self.floor = peak, warmup_steps, decay_steps, floor

    def __call__(self, step):
        step = ops.cast(step, "float32")
        rate = ops.convert_to_tensor(self.peak, "float32")
        if self.warmup_steps:
            rate = rate * ops.minimum(1.0, (step + 1.0) / self.warmup_steps)
        if self.decay_steps:
            progress = ops.clip((step - self.warmup_steps) / self.decay_steps, 0.0, 1.0)
            rate = rate * (self.floor + (1.0 - self.floor) * 0.5 * (1.0 + ops.cos(math.pi * progress)))
        return rate

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "floor": self.floor,
        }


def make(name: str, learning_rate) -> keras.optimizers.Optimizer:
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adagrad":
        return keras.optimizers.Adagrad(learning_rate, initial_accumulator_value=0.1)
    if name == "ftrl":
        return keras.optimizers.Ftrl(learning_rate)
    raise ValueError(f"unknown optimizer {name!r}; known: {list(EMBEDDING_OPTIMIZERS)}")


class PerGroupOptimizer(keras.optimizers.Optimizer):
    """Applies `embedding_optimizer` to the variables in `embedding_paths` (Keras variable paths)
    and `dense_optimizer` to every other variable. Its `iterations` are the dense optimizer's;
    its `variables` are both optimizers' (so a checkpoint holds their slots)."""

    def __init__(self, embedding_optimizer, dense_optimizer, embedding_paths, name: str = "per_group"):
        super().__init__(learning_rate=0.0, name=name)
        self.embedding_optimizer, self.dense_optimizer = embedding_optimizer, dense_optimizer
        self.embedding_paths = frozenset(embedding_paths)

    def _split(self, values, variables):
        embedding, dense = ([], []), ([], [])
        for value, variable in zip(values, variables):
            group = embedding if variable.path in self.embedding_paths else dense
            group[0].append(value)
            group[1].append(variable)
        return embedding, dense

    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        (_, embedding), (_, dense) = self._split(var_list, var_list)
        self.embedding_optimizer.build(embedding)
        self.dense_optimizer.build(dense)
        super().build(var_list)

    @property
    def variables(self):
        return self._variables + self.embedding_optimizer.variables + self.dense_optimizer.variables

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        variables = list(trainable_variables) if trainable_variables is not None else self._trainable_variables
        (embedding_grads, embedding), (dense_grads, dense) = self._split(grads, variables)
        if embedding:
            self.embedding_optimizer.apply(embedding_grads, embedding)
        if dense:
            self.dense_optimizer.apply(dense_grads, dense)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        raise NotImplementedError("PerGroupOptimizer runs on the TensorFlow backend's stateful path only")

    @property
    def iterations(self):
        return self.dense_optimizer.iterations

    @property
    def learning_rate(self):
        return self.dense_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.dense_optimizer.learning_rate = learning_rate

    def get_config(self):
        return {
            "name": self.name,
            "embedding_optimizer": keras.optimizers.serialize(self.embedding_optimizer),
            "dense_optimizer": keras.optimizers.serialize(self.dense_optimizer),
            "embedding_paths": sorted(self.embedding_paths),
        }


def schedule(peak: float, training):
    """`peak`, or a WarmupCosine of it when the TrainingConfig asks for warm-up or decay."""
    if not training.warmup_steps and training.decay_steps is None:
        return peak
    return WarmupCosine(peak, training.warmup_steps, training.decay_steps or 0, training.decay_floor)


def for_model(network, training) -> keras.optimizers.Optimizer:
    """The optimizer of a TrainingConfig: Adam at `learning_rate` for every variable, or a
    PerGroupOptimizer with `embedding_optimizer` at `embedding_learning_rate` on the tables; both
    rates on the config's warm-up and decay (see `schedule`). `embedding_learning_rate` must be
    resolved (trainer.config.resolve), since its null means the training split's rule."""
    learning_rate = training.learning_rate
    embedding_learning_rate = training.embedding_learning_rate
    if embedding_learning_rate is None:
        raise ValueError(
            "training.embedding_learning_rate is null, which the training split's rule decides: resolve the "
            "config for it first (trainer.config.resolve)"
        )
    dense = keras.optimizers.Adam(schedule(learning_rate, training))
    if training.embedding_optimizer == "adam" and embedding_learning_rate == learning_rate:
        return dense
    tables = [layer.table.path for layer in network.embedding_layers()]
    return PerGroupOptimizer(
        make(training.embedding_optimizer, schedule(embedding_learning_rate, training)), dense, tables
    )
