"""What makes the models generalise, against numpy: the touched-rows embedding L2, the per-group
optimiser, the learning-rate schedule, the logit biases' prior, the hash dropout, the logistic
model and the wide part."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import blocks, config as C, models, optimizers, regularizers
from trainer.training_model import TrainingModel
from tests.test_models import SPEC, _batch, _labels, _model_config


def _network(name="mmoe", **changes):
    network = models.build(SPEC.to_dict(), _model_config(name, **changes))
    network(_batch())
    return network


def test_touched_rows_l2_is_the_dense_l2_of_the_rows_the_batch_reads():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(12, 3)).astype("float32")
    rows = np.array([[0, 3, 3], [3, 7, 11], [5, 0, 2]], "int32")
    present = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 0]], "float32")  # row 11 and row 2 are only padding
    read = np.unique(rows[present == 1])
    expected = float((table[read] ** 2).sum())
    variable = tf.Variable(table)
    with tf.GradientTape() as tape:
        value = regularizers.touched_rows_l2(variable, rows, present)
    assert float(value) == pytest.approx(expected, rel=1e-6)
    gradient = tf.convert_to_tensor(tape.gradient(value, variable)).numpy()
    dense = np.zeros_like(table)
    dense[read] = 2 * table[read]  # d/dw of sum ||w_r||^2 over the rows read, and nothing elsewhere
    np.testing.assert_allclose(gradient, dense, rtol=1e-6, atol=1e-7)
    fast = tf.function(regularizers.touched_rows_l2, jit_compile=True)
    assert float(fast(variable, rows, present)) == pytest.approx(expected, rel=1e-6)


def test_field_embedding_row_ids_name_the_table_rows_it_reads():
    layer = _network().embed
    batch = _batch()
    rows, present = (keras.ops.convert_to_numpy(t) for t in layer.row_ids(batch))
    table = keras.ops.convert_to_numpy(layer.table)
    # Categorical fields first, then each bag's positions, offset into the one table.
    np.testing.assert_array_equal(rows[:, 0], batch["f101"])
    np.testing.assert_array_equal(rows[:, 1], batch["f205"] + 7)
    np.testing.assert_array_equal(rows[:, 2:], batch["f109_14"] + 12)
    np.testing.assert_array_equal(present[:, 2:], (batch["f109_14_weight"] != 0).astype("float32"))
    embedded = keras.ops.convert_to_numpy(layer(batch))
    np.testing.assert_allclose(embedded[:, :4], table[rows[:, 0]], rtol=1e-6)


def test_the_embedding_l2_term_joins_the_loss_only_when_asked():
    def trainee(**training):
        config = C.from_dict(
            {
                "model": {k: list(v) if isinstance(v, tuple) else v for k, v in _model_config("mmoe").items()},
                "training": training,
            }
        )
        network = models.build(SPEC.to_dict(), dataclasses.asdict(config.model))
        return TrainingModel(network, SPEC, config)

    assert "embedding_l2_loss" not in trainee(embedding_l2=0.0).trackers
    with pytest.raises(ValueError, match="training.embedding_l2_rows"):
        trainee(embedding_l2=0.5)  # unresolved
    batch = _batch()
    regularised = trainee(embedding_l2=0.5, embedding_l2_rows="touched")
    terms = regularised.loss_terms(_labels(), regularised(batch, training=True))
    table = regularised.network.embed.table.numpy()
    rows, present = (np.asarray(t) for t in regularised.network.embed.row_ids(batch))
    read = np.unique(rows[present == 1])
    assert 0 < len(read) < len(table)  # the batch reads some rows, not all
    touched = 0.5 * float(np.sum(table[read] ** 2))
    assert float(terms["embedding_l2_loss"]) == pytest.approx(touched, rel=1e-5)
    assert "embedding_l2" not in regularised(batch, training=False)  # inference computes no penalty
    whole = trainee(embedding_l2=0.5, embedding_l2_rows="table")
    whole.network.embed.table.assign(table)
    terms = whole.loss_terms(_labels(), whole(batch, training=True))
    assert float(terms["embedding_l2_loss"]) == pytest.approx(0.5 * float(np.sum(table**2)), rel=1e-5)


def test_per_group_optimizer_steps_tables_and_dense_layers_with_their_own_rules():
    network = _network()
    training = C.TrainingConfig(learning_rate=1e-3, embedding_optimizer="adagrad", embedding_learning_rate=0.1)
    grouped = optimizers.for_model(network, training)
    assert isinstance(grouped, optimizers.PerGroupOptimizer)
    assert isinstance(
        optimizers.for_model(network, C.TrainingConfig(embedding_learning_rate=1e-3)), keras.optimizers.Adam
    )
    with pytest.raises(ValueError, match="training.embedding_learning_rate"):
        optimizers.for_model(network, C.TrainingConfig())  # unresolved
    variables = network.trainable_variables
    start = [v.numpy().copy() for v in variables]
    grads = [tf.ones_like(v) for v in variables]
    grouped.build(variables)
    grouped.apply(grads, variables)
    table = network.embed.table
    for variable, before in zip(variables, start):
        moved = before - variable.numpy()
        if variable.path == table.path:
            # Adagrad: lr * g / sqrt(accumulator 0.1 + g^2)
            np.testing.assert_allclose(moved, 0.1 / np.sqrt(1.1), rtol=1e-5)
        else:  # Adam's first step: lr * sign(g)
            np.testing.assert_allclose(moved, 1e-3, rtol=1e-3)
    assert int(grouped.iterations.numpy()) == 1
    assert len(grouped.variables) > len(grouped.dense_optimizer.variables)  # both groups' slots checkpoint


def test_a_large_split_steps_the_tables_with_adam_at_eight_times_the_dense_rate():
    network = _network()
    small = C.resolve(C.TrainerConfig(), 100_000)[0].training
    assert isinstance(optimizers.for_model(network, small), keras.optimizers.Adam)  # one Adam for all
    large = C.resolve(C.TrainerConfig(), 600_000)[0].training
    grouped = optimizers.for_model(network, large)
    assert isinstance(grouped.embedding_optimizer, keras.optimizers.Adam)
    variables = network.trainable_variables
    start = [v.numpy().copy() for v in variables]
    grouped.build(variables)
    grouped.apply([tf.ones_like(v) for v in variables], variables)
    for variable, before in zip(variables, start):
        moved = before - variable.numpy()  # Adam's first step: lr * sign(g)
        np.testing.assert_allclose(moved, 8e-3 if variable.path == network.embed.table.path else 1e-3, rtol=1e-3)


def test_warm_up_and_cosine_decay_follow_their_formula_and_reach_both_groups():
    rates = optimizers.WarmupCosine(1e-2, warmup_steps=4, decay_steps=10, floor=0.2)
    steps = np.arange(20)
    expected = (
        1e-2
        * np.minimum(1.0, (steps + 1) / 4)
        * (0.2 + 0.8 * 0.5 * (1 + np.cos(np.pi * np.clip((steps - 4) / 10, 0, 1))))
    )
    got = [float(rates(step)) for step in steps]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got[-1] == pytest.approx(2e-3)  # held at the floor after the decay
    assert optimizers.WarmupCosine.from_config(rates.get_config()).get_config() == rates.get_config()

    training = C.TrainingConfig(
        warmup_steps=2, decay_steps=15, embedding_optimizer="adagrad", embedding_learning_rate=0.1
    )
    grouped = optimizers.for_model(_network(), training)
    for optimizer, peak in ((grouped.dense_optimizer, 1e-3), (grouped.embedding_optimizer, 0.1)):
        schedule = optimizer._learning_rate
        assert (schedule.peak, schedule.warmup_steps, schedule.decay_steps) == (peak, 2, 15)
    assert not isinstance(
        optimizers.for_model(
            _network(), C.TrainingConfig(decay_steps=None, embedding_learning_rate=1e-3)
        )._learning_rate,
        keras.optimizers.schedules.LearningRateSchedule,
    )  # no schedule by default
    assert C.from_dict({"training": {"decay_steps": None}}).training.decay_steps is None  # a constant rate
    for bad in ({"warmup_steps": -1}, {"warmup_steps": 1.5}, {"decay_steps": 0}, {"decay_floor": 2}):
        with pytest.raises(ValueError, match="training." + next(iter(bad))):
            C.from_dict({"training": bad})


def test_logit_biases_start_at_the_labels_log_odds():
    network = _network("mmoe")
    network.set_prior((0.04, 0.25))
    bias = network.logit_bias.numpy()
    np.testing.assert_allclose(bias, [np.log(0.04 / 0.96), np.log(0.25 / 0.75)], rtol=1e-5)
    logistic = _network("logistic")  # zero id weights: every row scores the prior
    logistic.set_prior((0.04, 0.25))
    out = {k: keras.ops.convert_to_numpy(v) for k, v in logistic(_batch()).items()}
    np.testing.assert_allclose(out["ctr"], 0.04, rtol=1e-5)
    np.testing.assert_allclose(out["ctcvr"], 0.01, rtol=1e-5)


def test_logistic_is_a_linear_model_of_the_ids_and_numerics():
    network = _network("logistic")
    linear = network.linear
    rng = np.random.default_rng(1)
    table = rng.normal(size=tuple(linear.weights_by_id.table.shape)).astype("float32")
    numeric = rng.normal(size=tuple(linear.numeric_weights.shape)).astype("float32")
    linear.weights_by_id.table.assign(table)
    linear.numeric_weights.assign(numeric)
    batch = _batch()
    bag = (table[batch["f109_14"] + 12] * batch["f109_14_weight"][..., None]).sum(1)
    expected = table[batch["f101"]] + table[batch["f205"] + 7] + bag + batch["numerical_1"][:, None] * numeric
    logits, _ = network.forward(batch)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logits), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no task towers"):
        network.tower_kernels()


def test_the_wide_part_adds_a_linear_models_logits():
    deep = _network("mmoe")
    wide = _network("mmoe", wide=True)
    assert len(wide.embedding_layers()) == 2 and len(deep.embedding_layers()) == 1
    for source, target in zip(deep.weights, [w for w in wide.weights if "wide" not in w.path]):
        target.assign(source)
    batch = _batch()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(wide.forward(batch)[0]),
        keras.ops.convert_to_numpy(deep.forward(batch)[0]),
        rtol=1e-6,
    )  # zero wide weights
    wide.wide.bias.assign([1.0, -2.0])
    shift = keras.ops.convert_to_numpy(wide.forward(batch)[0] - deep.forward(batch)[0])
    np.testing.assert_allclose(shift, np.tile([1.0, -2.0], (16, 1)), rtol=1e-5)


def test_hash_dropout_drops_its_rate_scales_the_rest_and_repeats_with_a_seed():
    x = tf.ones([512, 64])
    layer = blocks.Dropout(0.3, seed=7)
    out = layer(x, training=True).numpy()
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(out[kept], 1 / 0.7, rtol=1e-6)
    second = layer(x, training=True).numpy()
    assert (second != 0).mean() == pytest.approx(0.7, abs=0.01) and not np.array_equal(kept, second != 0)
    np.testing.assert_array_equal(blocks.Dropout(0.3, seed=7)(x, training=True).numpy(), out)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    # Neighbouring elements are independent: no pattern along rows or columns.
    assert abs(np.corrcoef(kept[:, :-1].ravel(), kept[:, 1:].ravel())[0, 1]) < 0.05
    compiled = tf.function(lambda t: layer(t, training=True), jit_compile=True)
    assert abs((compiled(x).numpy() != 0).mean() - 0.7) < 0.01
