"""Two-task regression with the model zoo: the synthetic experiments' training loop.

The zoo's models read categorical, bag and numeric fields (`trainer.inputs`) and end in two
logits. For the synthetic regressions every input column x_1..x_d is a numeric field (appended
to the network's input as it is, so `embedding_dim` plays no part) and the two outputs are read
as the two tasks' predictions under a mean squared error. FDN adds its regularisers from
`trainer.regularizers` (auxiliary heads on the task-specific experts, trained on the same MSE,
and the orthogonality loss between each pair's features).

This loop exists beside `trainer.training_model` rather than inside it because the Trainer's
losses are the click/conversion cross-entropies of the ranking tasks; a regression only needs
a plain step. Shapes: B batch, d input columns, k = 2 tasks, M decomposition pairs.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from trainer import models, regularizers
from trainer.config import PATIENCE_ROUNDS, TrainerConfig, from_dict
from trainer.inputs import NUMERIC, InputField, InputSpec

_PREDICT_BATCH = 4096


def set_seeds(seed: int) -> None:
    """Seeds Python's `random`, numpy's global generator, TensorFlow and Keras' global seed
    generator (keras.utils.set_random_seed does all four), so a cell's result depends on its
    seed only, not on which cells ran before it in the process."""
    keras.utils.set_random_seed(seed)


def trainer_config(
    model: str, seed: int, settings, regularized: bool = True, patience: int | None = None
) -> TrainerConfig:
    """The Trainer config of zoo model `model` at an experiment's settings, whose fields are named
    as in `trainer.config` (embedding_dim, expert_units, ..., epochs, batch_size, learning_rate,
    aux_weight, orth_weight). FDN's aux and orth terms are on when `regularized`. XLA is off: it
    compiles for about 8 s per model here, longer than these small runs train. `patience`: epochs
    without a better validation MSE before `fit` stops (None: the Trainer's fixed count,
    `PATIENCE_ROUNDS`). Numeric inputs only: no embedding table for `embedding_l2` to act on."""
    early_stopping = {"patience": PATIENCE_ROUNDS if patience is None else patience}
    return from_dict(
        {
            "model": {
                "name": model,
                "embedding_dim": settings.embedding_dim,
                "expert_units": list(settings.expert_units),
                "tower_units": list(settings.tower_units),
                "num_experts": settings.num_experts,
                "specific_experts": settings.specific_experts,
                "shared_experts": settings.shared_experts,
                "levels": settings.levels,
                "pairs": settings.pairs,
            },
            "fdn": {
                "aux": regularized,
                "orth": regularized,
                "aux_weight": settings.aux_weight,
                "orth_weight": settings.orth_weight,
                "aux_reduction": settings.aux_reduction,
                "orth_normalized": settings.orth_normalized,
            },
            "training": {
                "epochs": settings.epochs,
                "batch_size": settings.batch_size,
                "learning_rate": settings.learning_rate,
                "embedding_l2": 0.0,
                "seed": seed,
                **early_stopping,
            },
            "hardware": {"xla": False, "distribute": "none"},
        }
    )


def numeric_spec(dimension: int) -> InputSpec:
    """x_1..x_d, each a numeric field."""
    return InputSpec(tuple(InputField(f"x_{i}", NUMERIC) for i in range(1, dimension + 1)))


def as_features(x, spec: InputSpec) -> dict:
    """[B, d] -> {x_i: [B]}: the zoo's input dict (the network stacks the columns back)."""
    return {field.key: x[:, i] for i, field in enumerate(spec.fields)}


@dataclasses.dataclass(frozen=True)
class Data:
    """A split of a two-task regression: x [N, d] float32, y [N, 2] float32 (a task's column may
    be NaN where the dataset has no label for it, as the oracles' datasets have one task only)."""

    x: np.ndarray
    y: np.ndarray


@dataclasses.dataclass
class _Trainee:
    network: keras.Model
    aux_heads: regularizers.AuxiliaryHeads | None
    orth: bool

    @property
    def variables(self) -> list:
        return self.network.trainable_variables + (self.aux_heads.trainable_variables if self.aux_heads else [])


def _build(config: TrainerConfig, spec: InputSpec) -> _Trainee:
    network = models.build(spec.to_dict(), config.network_config())
    network(as_features(np.zeros((2, len(spec.fields)), np.float32), spec))  # builds every weight
    is_fdn = config.model.name == "fdn"
    aux_heads = (
        regularizers.AuxiliaryHeads(network.num_tasks, config.model.pairs, name="aux_heads")
        if is_fdn and config.fdn.aux
        else None
    )
    if aux_heads is not None:
        aux_heads.build((None, network.num_tasks, config.model.pairs, config.model.expert_units[-1]))
    return _Trainee(network, aux_heads, is_fdn and config.fdn.orth and config.model.shared_features)


def _loss_terms(trainee: _Trainee, config: TrainerConfig, tasks: tuple, x, y, spec: InputSpec) -> dict:
    """{term: scalar} for a batch: per-task MSE of the trained tasks, FDN's aux and orth terms."""
    predictions, extras = trainee.network.forward(as_features(x, spec), training=True)  # [B, 2]
    predictions = tf.cast(predictions, tf.float32)
    terms = {f"mse_{t + 1}": tf.reduce_mean(tf.square(y[:, t] - predictions[:, t])) for t in tasks}
    if trainee.aux_heads is not None:
        aux = trainee.aux_heads(extras["specific"])  # [B, k, M]: one prediction per task-specific expert
        over_heads = tf.reduce_sum if config.fdn.aux_reduction == "sum" else tf.reduce_mean
        terms["aux"] = config.fdn.aux_weight * tf.add_n(
            [tf.reduce_mean(over_heads(tf.square(y[:, t, None] - aux[:, t]), axis=1)) for t in tasks]
        )
    if trainee.orth:
        terms["orth"] = config.fdn.orth_weight * regularizers.orthogonality_loss(
            extras["specific"], extras["shared"], config.fdn.orth_variant, config.fdn.orth_normalized
        )
    return terms


def train(
    config: TrainerConfig, tasks: tuple, train_data: Data, test_data: Data, validation: Data | None = None
) -> dict:
    """Trains `config.model` on the trained `tasks` (0: y1, 1: y2) and returns test metrics:
    "mse_1", "mse_2" and the test labels' variances "label_var_1", "label_var_2" (the trained
    tasks'), the last epoch's mean training terms ("train_*"), and "params" (the inference
    network's weights). With `validation`: trained to early stopping on it (see `fit`), and
    "best_epoch", "epochs_done" and "val_mse" (the best epoch's summed validation MSE) too.

    Seeded by `config.training.seed` alone: initialisation and the batch order of each epoch
    (a permutation seeded with (seed, epoch)).
    """
    network, last_epoch = fit(config, tasks, train_data, validation)
    return {**evaluate(network, config, tasks, test_data), **last_epoch}


def fit(
    config: TrainerConfig, tasks: tuple, train_data: Data, validation: Data | None = None
) -> tuple[keras.Model, dict]:
    """`train` without the scoring, for experiments that inspect the trained network itself:
    (the inference network, the last epoch's mean training terms). With `validation`: at most
    `training.epochs` epochs, stopped after `training.patience` epochs without a lower summed
    validation MSE of the trained tasks, and the best epoch's weights restored."""
    # No keras.backend.clear_session(): it would also reset global settings (the dtype policy)
    # of whatever else runs in the process; Keras' per-name counters are all it keeps per model.
    set_seeds(config.training.seed)
    spec = numeric_spec(train_data.x.shape[1])
    trainee = _build(config, spec)
    return trainee.network, _fit(trainee, config, tasks, train_data, spec, validation)


def split_validation(data: Data, fraction: float) -> tuple[Data, Data]:
    """(train, validation): the last `fraction` of the rows held out (the rows are i.i.d.)."""
    held = int(round(len(data.x) * fraction))
    if not 0 < held < len(data.x):
        raise ValueError(f"validation fraction {fraction} of {len(data.x)} rows leaves no rows on one side")
    return Data(data.x[:-held], data.y[:-held]), Data(data.x[-held:], data.y[-held:])


def evaluate(network: keras.Model, config: TrainerConfig, tasks: tuple, test_data: Data) -> dict:
    """`train`'s test metrics of a trained network (every key but the training terms)."""
    predictions = predict(network, numeric_spec(test_data.x.shape[1]), test_data.x, config.hardware.xla)
    metrics = {f"mse_{t + 1}": float(np.mean((test_data.y[:, t] - predictions[:, t]) ** 2)) for t in tasks}
    # The MSE of predicting the test mean: what a network that learned nothing scores.
    variances = {f"label_var_{t + 1}": float(np.var(test_data.y[:, t])) for t in tasks}
    return {**metrics, **variances, "params": int(network.count_params())}


def _trained_variables(trainee: _Trainee, config: TrainerConfig, tasks: tuple, data: Data, spec: InputSpec) -> list:
    """The variables the loss reaches. An oracle trains one task: the other task's tower (and
    the unused embedding table of numeric-only inputs) gets no gradient, and Adam must not
    hold slots for it."""
    x = tf.constant(data.x[:2], tf.float32)
    y = tf.constant(np.nan_to_num(data.y[:2]), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.add_n(list(_loss_terms(trainee, config, tasks, x, y, spec).values()))
    return [v for v, g in zip(trainee.variables, tape.gradient(loss, trainee.variables)) if g is not None]


def _fit(
    trainee: _Trainee, config: TrainerConfig, tasks: tuple, data: Data, spec: InputSpec, validation: Data | None
) -> dict:
    """Adam over `config.training.epochs` epochs (with `validation`: to early stopping); the last
    epoch's mean of each loss term."""
    training = config.training
    variables = _trained_variables(trainee, config, tasks, data, spec)
    optimizer = keras.optimizers.Adam(training.learning_rate)
    optimizer.build(variables)
    # One trace per run: the batch dimension is left open for the last, partial batch.
    signature = [tf.TensorSpec([None, data.x.shape[1]], tf.float32), tf.TensorSpec([None, 2], tf.float32)]

    @tf.function(input_signature=signature, jit_compile=config.hardware.xla)
    def step(x, y):
        with tf.GradientTape() as tape:
            terms = _loss_terms(trainee, config, tasks, x, y, spec)
            loss = tf.add_n(list(terms.values()))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return terms

    x = data.x.astype(np.float32)
    y = np.nan_to_num(data.y).astype(np.float32)  # an untrained task's NaN labels are never read
    means, best, waited = {}, None, 0
    # traced once, not once an epoch
    forward = forward_fn(trainee.network, spec, config.hardware.xla) if validation is not None else None
    for epoch in range(training.epochs):
        order = np.random.default_rng([training.seed, epoch]).permutation(len(x))
        sums, steps = {}, 0
        for start in range(0, len(x), training.batch_size):
            index = order[start : start + training.batch_size]
            for name, value in step(tf.constant(x[index]), tf.constant(y[index])).items():
                sums[name] = sums.get(name, 0.0) + float(value)
            steps += 1
        means = {f"train_{name}": total / steps for name, total in sums.items()}
        if validation is None:
            continue
        predictions = predict(trainee.network, spec, validation.x, config.hardware.xla, forward)
        score = float(sum(np.mean((validation.y[:, t] - predictions[:, t]) ** 2) for t in tasks))
        if best is None or score < best["val_mse"]:
            best, waited = {"val_mse": score, "best_epoch": epoch + 1, "weights": trainee.network.get_weights()}, 0
        else:
            waited += 1
            if waited >= training.patience:
                break
    if best is None:
        return means
    trainee.network.set_weights(best.pop("weights"))
    return {**means, **best, "epochs_done": epoch + 1}


def forward_fn(network: keras.Model, spec: InputSpec, xla: bool):
    """The network's [B, d] -> [B, 2] predictions as one traced function, reusable across calls."""
    return tf.function(
        lambda batch: network.forward(as_features(batch, spec))[0],
        jit_compile=xla,
        input_signature=[tf.TensorSpec([None, len(spec.fields)], tf.float32)],
    )


def predict(network: keras.Model, spec: InputSpec, x: np.ndarray, xla: bool, forward=None) -> np.ndarray:
    """[N, d] -> [N, 2] predictions, in batches; `forward`: a `forward_fn` traced before."""
    forward = forward or forward_fn(network, spec, xla)
    x = x.astype(np.float32)
    return np.concatenate(
        [
            np.asarray(forward(tf.constant(x[i : i + _PREDICT_BATCH])), np.float64)
            for i in range(0, len(x), _PREDICT_BATCH)
        ]
    )
