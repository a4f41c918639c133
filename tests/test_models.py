"""The model zoo and its blocks: shapes, the math of the shared blocks, losses, and that every
model learns the synthetic Ali-CCP data."""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import pytest

from trainer import blocks, config as C, models
from trainer.inputs import BAG, CATEGORICAL, NUMERIC, InputField, InputSpec
from trainer.training_model import TrainingModel, dummy_batch

SPEC = InputSpec(
    (
        InputField("f101", CATEGORICAL, 7),
        InputField("f205", CATEGORICAL, 5),
        InputField("f109_14", BAG, 6, bag_length=3, weighted=True),
        InputField("numerical_1", NUMERIC),
    )
)


def _batch(rows=16, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    weights = rng.random((rows, 3)).astype("float32")
    weights[:, 2] = 0.0  # a padded position
    return {
        "f101": rng.integers(0, 7, rows).astype("int32"),
        "f205": rng.integers(0, 5, rows).astype("int32"),
        "f109_14": rng.integers(0, 6, (rows, 3)).astype("int32"),
        "f109_14_weight": weights,
        "numerical_1": rng.normal(size=rows).astype("float32"),
    }


def _model_config(name, **changes) -> dict:
    return dataclasses.asdict(
        C.ModelConfig(name=name, embedding_dim=4, expert_units=(8, 6), tower_units=(5,), num_experts=3, **changes)
    )


def test_field_embedding_pools_bags_by_weight_and_appends_numerics():
    layer = blocks.FieldEmbedding(SPEC.to_dict(), dim=4, pooling="mean")
    batch = _batch()
    out = keras.ops.convert_to_numpy(layer(batch))
    table = keras.ops.convert_to_numpy(layer.table)
    assert out.shape == (16, 3 * 4 + 1)
    np.testing.assert_allclose(out[:, :4], table[batch["f101"]], rtol=1e-6)
    np.testing.assert_allclose(out[:, 4:8], table[7 + batch["f205"]], rtol=1e-6)  # the field's own rows
    w = batch["f109_14_weight"]
    bag = (table[12 + batch["f109_14"]] * w[..., None]).sum(1)
    np.testing.assert_allclose(out[:, 8:12], bag / 2, rtol=1e-5)  # two ids present, one padded
    np.testing.assert_allclose(out[:, 12], batch["numerical_1"])
    summed = blocks.FieldEmbedding(SPEC.to_dict(), dim=4, pooling="sum")
    summed.build()
    summed.table.assign(layer.table)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(summed(batch))[:, 8:12], bag, rtol=1e-5)


def test_field_embedding_pools_each_of_several_bags_over_its_own_positions():
    lengths = {"a": 2, "b": 2, "c": 3, "d": 1}  # runs of equal lengths pool together
    spec = InputSpec(tuple(InputField(k, BAG, 5, bag_length=n, weighted=True) for k, n in lengths.items()))
    rng = np.random.default_rng(2)
    batch = {}
    for key, length in lengths.items():
        batch[key] = rng.integers(0, 5, (6, length)).astype("int32")
        batch[f"{key}_weight"] = (rng.random((6, length)) * (rng.random((6, length)) > 0.3)).astype("float32")
    for pooling in ("sum", "mean"):
        layer = blocks.FieldEmbedding(spec.to_dict(), dim=3, pooling=pooling)
        out = keras.ops.convert_to_numpy(layer(batch))
        table = keras.ops.convert_to_numpy(layer.table)
        for j, key in enumerate(lengths):
            weights = batch[f"{key}_weight"]
            expected = (table[5 * j + batch[key]] * weights[..., None]).sum(1)
            if pooling == "mean":
                expected /= np.maximum((weights != 0).sum(1, keepdims=True), 1)
            np.testing.assert_allclose(out[:, 3 * j : 3 * j + 3], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_parallel_mlp_equals_separate_dense_networks(training):
    # The two modes compute the product differently (batched matmuls for inference graphs,
    # einsum for XLA's training step): both must be the per-network MLPs.
    x = np.random.default_rng(1).normal(size=(5, 7)).astype("float32")
    towers = blocks.TaskTowers(3, (4,))
    logits = keras.ops.convert_to_numpy(towers(x, training=training))
    assert logits.shape == (5, 3)
    k0, k1 = (keras.ops.convert_to_numpy(k) for k in towers.kernels)
    b0, b1 = (keras.ops.convert_to_numpy(b) for b in towers.bias_vars)
    for t in range(3):
        hidden = np.maximum(x @ k0[t] + b0[t], 0)
        np.testing.assert_allclose(logits[:, t], (hidden @ k1[t] + b1[t])[:, 0], rtol=1e-5, atol=1e-6)
    per_task = np.stack([x, 2 * x, -x], axis=1)  # [B, k, d]: one input per tower
    own_inputs = keras.ops.convert_to_numpy(towers(per_task, training=training))
    for t in range(3):
        hidden = np.maximum(per_task[:, t] @ k0[t] + b0[t], 0)
        np.testing.assert_allclose(own_inputs[:, t], (hidden @ k1[t] + b1[t])[:, 0], rtol=1e-5, atol=1e-6)


def test_gate_mixes_experts_with_softmax_weights():
    gate = blocks.Gate(3)
    x = np.random.default_rng(2).normal(size=(4, 5)).astype("float32")
    experts = np.random.default_rng(3).normal(size=(4, 3, 2)).astype("float32")
    mixed = keras.ops.convert_to_numpy(gate(x, experts))
    weights = keras.ops.convert_to_numpy(gate.dense(x))
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mixed, np.einsum("be,bed->bd", weights, experts), rtol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [
        blocks.FieldEmbedding(SPEC.to_dict(), 4, "sum"),
        blocks.MLP((3, 2), 0.1),
        blocks.Experts(3, (4, 2)),
        blocks.TaskTowers(2, (4,), logits=False),
        blocks.Gate(3),
        blocks.ExtractionLevel(2, 1, 2, (4,), last=False),
        blocks.DecompositionPairs(2, 3, (4,), shared_features=False),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_blocks_round_trip_their_config(layer):
    config = layer.get_config()
    again = type(layer).from_config(config)
    assert again.get_config() == config


@pytest.mark.parametrize("name", C.MODEL_NAMES)
def test_every_model_outputs_three_probabilities_and_round_trips(name):
    model = models.build(SPEC.to_dict(), _model_config(name))
    out = {k: keras.ops.convert_to_numpy(v) for k, v in model(_batch()).items()}
    assert set(out) == {"ctr", "cvr", "ctcvr"}
    assert all(v.shape == (16,) and np.all((v > 0) & (v < 1)) for v in out.values())
    np.testing.assert_allclose(out["ctcvr"], out["ctr"] * out["cvr"], rtol=1e-6)
    again = type(model).from_config(model.get_config())
    again(_batch())
    assert again.count_params() == model.count_params()


def test_ple_stacks_levels_and_cgc_is_one_level():
    ple = models.build(SPEC.to_dict(), _model_config("ple", levels=3, specific_experts=1, shared_experts=2))
    cgc = models.build(SPEC.to_dict(), _model_config("cgc", levels=3, specific_experts=1, shared_experts=2))
    ple(_batch()), cgc(_batch())
    assert len(ple.extraction) == 3 and len(cgc.extraction) == 1
    assert [level.shared_gate is None for level in ple.extraction] == [False, False, True]
    assert len(ple.expert_kernels()) == 3 * 2  # levels x expert depths, each stacking 2 tasks x 1 + 2 shared
    assert all(k.shape[0] == 4 for k in ple.expert_kernels())


def test_fdn_fuses_own_specific_and_all_shared_features():
    fdn = models.build(SPEC.to_dict(), _model_config("fdn", pairs=2))
    logits, extras = fdn.forward(_batch())
    assert tuple(extras["specific"].shape) == (16, 2, 2, 6) and tuple(extras["shared"].shape) == (16, 2, 2, 6)
    # prediction kernel [k, M*u + k*M*u, 1]: own specific features then every task's shared ones
    assert tuple(fdn.prediction.kernels[0].shape) == (2, 2 * 6 + 2 * 2 * 6, 1)
    without = models.build(SPEC.to_dict(), _model_config("fdn", pairs=2, shared_features=False))
    _, extras = without.forward(_batch())
    assert extras["shared"] is None and tuple(without.prediction.kernels[0].shape) == (2, 12, 1)
    with pytest.raises(ValueError, match="no task towers"):
        fdn.tower_kernels()


def _trainee(name="mmoe", **sections) -> TrainingModel:
    config = C.from_dict(
        {"model": {k: list(v) if isinstance(v, tuple) else v for k, v in _model_config(name).items()}, **sections}
    )
    network = models.build(SPEC.to_dict(), config.network_config())
    return TrainingModel(network, SPEC, C.resolve(config, train_rows=100_000)[0])


def _labels(rows=16, seed=4):
    rng = np.random.default_rng(seed)
    click = (rng.random(rows) < 0.5).astype("float32")
    return {"click": click, "conversion": click * (rng.random(rows) < 0.5).astype("float32")}


def _bce(label, p):
    return -(label * np.log(p) + (1 - label) * np.log(1 - p))


def test_clicked_convention_is_ctr_on_all_rows_and_cvr_on_clicked_rows():
    trainee = _trainee("mmoe", loss={"convention": "clicked", "weights": {"ctr": 1.0, "cvr": 0.5}})
    batch, y = _batch(), _labels()
    y_pred = trainee(batch)
    terms = {k: float(v) for k, v in trainee.loss_terms(y, y_pred).items()}
    out = {k: keras.ops.convert_to_numpy(v) for k, v in trainee.network(batch).items()}
    clicked = y["click"] == 1
    assert terms["ctr_loss"] == pytest.approx(_bce(y["click"], out["ctr"]).mean(), rel=1e-4)
    assert terms["cvr_loss"] == pytest.approx(0.5 * _bce(y["conversion"], out["cvr"])[clicked].mean(), rel=1e-4)
    y["conversion"] = np.where(clicked, y["conversion"], 1.0 - y["conversion"])  # unclicked rows' labels
    assert float(trainee.loss_terms(y, y_pred)["cvr_loss"]) == pytest.approx(terms["cvr_loss"], rel=1e-6)


def test_esmm_convention_is_ctr_and_ctcvr_over_all_impressions():
    trainee = _trainee("esmm", loss={"convention": "esmm"})
    assert trainee.convention == "esmm"
    batch, y = _batch(), _labels()
    terms = {k: float(v) for k, v in trainee.loss_terms(y, trainee(batch)).items()}
    out = {k: keras.ops.convert_to_numpy(v) for k, v in trainee.network(batch).items()}
    assert set(terms) == {"ctr_loss", "ctcvr_loss"}
    assert terms["ctcvr_loss"] == pytest.approx(_bce(y["click"] * y["conversion"], out["ctcvr"]).mean(), rel=1e-4)


def test_impressions_convention_trains_the_second_head_as_ctcvr_and_serves_cvr_as_their_ratio():
    trainee = _trainee("mmoe", loss={"convention": "impressions"})
    assert trainee.network.second_head == "ctcvr" and trainee.config.network_config()["second_head"] == "ctcvr"
    batch, y = _batch(), _labels()
    y_pred = trainee(batch)
    terms = {k: float(v) for k, v in trainee.loss_terms(y, y_pred).items()}
    assert set(terms) == {"ctr_loss", "ctcvr_loss"}  # embedding L2 is a training-time term
    logits = keras.ops.convert_to_numpy(y_pred["logits"])
    out = {k: keras.ops.convert_to_numpy(v) for k, v in trainee.network(batch).items()}
    second = 1 / (1 + np.exp(-logits[:, 1]))
    np.testing.assert_allclose(out["ctcvr"], second, rtol=1e-5)
    np.testing.assert_allclose(out["cvr"], np.minimum(second / out["ctr"], 1.0), rtol=1e-5)
    assert terms["ctcvr_loss"] == pytest.approx(_bce(y["click"] * y["conversion"], second).mean(), rel=1e-4)
    # a conversion label on an unclicked row is no conversion: the label is click x conversion
    y["conversion"] = np.where(y["click"] == 1, y["conversion"], 1.0)
    assert float(trainee.loss_terms(y, y_pred)["ctcvr_loss"]) == pytest.approx(terms["ctcvr_loss"], rel=1e-6)
    trainee.network.set_prior((0.2, 0.05))  # CTR, CVR given click: CTCVR 0.01
    bias = keras.ops.convert_to_numpy(trainee.network.logit_bias)
    np.testing.assert_allclose(bias, np.log([0.25, 0.01 / 0.99]), rtol=1e-5)
    # FDN's second task's auxiliary heads learn over all impressions too
    fdn = _trainee("fdn", loss={"convention": "impressions"}, fdn={"orth": False})
    aux = keras.ops.convert_to_numpy(fdn.aux_heads(fdn(batch)["specific"]))  # [B, k, M]
    label = y["click"] * y["conversion"]
    expected = _bce(y["click"][:, None], 1 / (1 + np.exp(-aux[:, 0]))).mean(axis=1).mean()
    expected += _bce(label[:, None], 1 / (1 + np.exp(-aux[:, 1]))).mean(axis=1).mean()
    got = float(fdn.loss_terms(y, fdn(batch))["aux_loss"])
    assert got == pytest.approx(fdn.config.fdn.aux_weight * expected, rel=1e-4)
    with pytest.raises(ValueError, match="second_head must be one of"):
        models.build(SPEC.to_dict(), {**_model_config("mmoe"), "second_head": "cvr_given_click"})


def test_both_convention_weighs_clicked_cvr_and_ctcvr_apart():
    batch, y = _batch(), _labels()
    equal = _trainee("mmoe", loss={"convention": "both", "weights": {"ctr": 1, "cvr": 1, "ctcvr": 1}})
    apart = _trainee("mmoe", loss={"convention": "both", "weights": {"cvr": 0.3, "ctcvr": 2.0}})
    apart.set_weights(equal.get_weights())
    same = {k: float(v) for k, v in equal.loss_terms(y, equal(batch)).items()}
    weighed = {k: float(v) for k, v in apart.loss_terms(y, apart(batch)).items()}
    assert weighed["ctr_loss"] == pytest.approx(same["ctr_loss"], rel=1e-6)
    assert weighed["cvr_loss"] == pytest.approx(0.3 * same["cvr_loss"], rel=1e-5)
    assert weighed["ctcvr_loss"] == pytest.approx(2.0 * same["ctcvr_loss"], rel=1e-5)


def test_fdn_loss_terms_follow_the_ablation_switches():
    assert set(_trainee("fdn").trackers) == {
        "ctr_loss",
        "cvr_loss",
        "ctcvr_loss",
        "embedding_l2_loss",
        "aux_loss",
        "orth_loss",
    }
    assert set(_trainee("fdn", fdn={"aux": False}).trackers) == {
        "ctr_loss",
        "cvr_loss",
        "ctcvr_loss",
        "embedding_l2_loss",
        "orth_loss",
    }
    assert set(_trainee("fdn", fdn={"orth": False}).trackers) == {
        "ctr_loss",
        "cvr_loss",
        "ctcvr_loss",
        "embedding_l2_loss",
        "aux_loss",
    }
    no_shared = _trainee(
        "fdn",
        model={
            **{k: list(v) if isinstance(v, tuple) else v for k, v in _model_config("fdn").items()},
            "shared_features": False,
        },
    )
    assert set(no_shared.trackers) == {"ctr_loss", "cvr_loss", "ctcvr_loss", "embedding_l2_loss", "aux_loss"}
    terms = _trainee("fdn").loss_terms(_labels(), _trainee("fdn")(_batch()))
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in terms.values())


def test_fdn_s_aux_loss_is_the_mean_over_its_heads_or_the_paper_s_sum():
    batch, y = _batch(), _labels()
    mean = _trainee("fdn", fdn={"aux_weight": 1.0})
    total = _trainee("fdn", fdn={"aux_weight": 1.0, "aux_reduction": "sum"})
    total.set_weights(mean.get_weights())
    pairs = mean.config.model.pairs
    assert pairs > 1
    mean_aux = float(mean.loss_terms(y, mean(batch))["aux_loss"])
    assert float(total.loss_terms(y, total(batch))["aux_loss"]) == pytest.approx(pairs * mean_aux, rel=1e-5)
    unnormalized = _trainee("fdn", fdn={"orth_normalized": False})
    unnormalized.set_weights(mean.get_weights())
    rows = len(y["click"])
    assert float(unnormalized.loss_terms(y, unnormalized(batch))["orth_loss"]) == pytest.approx(
        rows**2 * float(mean.loss_terms(y, mean(batch))["orth_loss"]), rel=1e-4
    )


def test_mtn_attaches_to_towers_or_experts_without_changing_the_network():
    plain = _trainee("mmoe")
    with_mtn = _trainee("mmoe", mtn={"lam": 1e-3})
    assert with_mtn.network.count_params() == plain.network.count_params()
    assert with_mtn.mtn is not None and with_mtn.regularizer_params > 0 and plain.regularizer_params == 0
    assert float(with_mtn.loss_terms(_labels(), with_mtn(_batch()))["mtn_loss"]) > 0
    assert with_mtn.mtn.num_depths == 2  # tower [5] + logit
    paper = _trainee("mmoe", mtn={"lam": 1e-3, "subsets": "all", "alpha_floor": 0.0})
    assert paper.mtn.alphas.shape == (2, 7) and float(paper.loss_terms(_labels(), paper(_batch()))["mtn_loss"]) > 0
    with pytest.raises(ValueError, match=r"mtn.subsets must be one of \['modes', 'all'\]"):
        C.from_dict({"mtn": {"subsets": "seven"}})
    with pytest.raises(ValueError, match=r"fdn.aux_reduction must be one of \['mean', 'sum'\]"):
        C.from_dict({"fdn": {"aux_reduction": "max"}})
    assert _trainee("mmoe", mtn={"target": "experts", "depth": 1}).mtn.num_depths == 1
    with pytest.raises(ValueError, match="mtn.depth 5"):
        _trainee("mmoe", mtn={"depth": 5})
    with pytest.raises(ValueError, match="no task towers"):
        _trainee("fdn", mtn={})


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"model": {"name": "mmoe2"}}, "model.name must be one of"),
        ({"model": {"num_expert": 3}}, r"model: unknown keys \['num_expert'\]"),
        ({"model": {"expert_units": [128, 0]}}, "model.expert_units must be a non-empty list of positive integers"),
        ({"training": {"epochs": 0}}, "training.epochs must be positive"),
        ({"training": {"batch_size": 1.5}}, "training.batch_size must be an integer"),
        ({"mtn": {"alpha_floor": 2}}, r"mtn.alpha_floor must be in \[0, 1\]"),
        ({"loss": {"weights": {"click": 1}}}, "loss.weights must map some of ctr, cvr and ctcvr"),
        ({"fdn": {"orth_variant": "mine"}}, "fdn.orth_variant must be one of"),
        ({"hardware": {"xla": "yes"}}, "hardware.xla must be true or false"),
        ({"optimizer": {}}, r"unknown sections \['optimizer'\]"),
    ],
)
def test_config_errors_name_the_key(bad, message):
    with pytest.raises(ValueError, match=message):
        C.from_dict(bad)


def test_config_defaults_and_loss_convention():
    config = C.from_dict({"model": {"name": "esmm"}, "mtn": {}})
    assert config.loss_convention == "both" and config.mtn.lam == 1e-5
    assert C.from_dict({}).loss_convention == "both" and C.from_dict({}).mtn is None
    assert C.from_dict({}).loss_weights == C.BOTH_WEIGHTS
    assert C.from_dict({"loss": {"weights": {"cvr": 1}}}).loss_weights == {"ctr": 1.0, "cvr": 1.0, "ctcvr": 1.0}
    assert C.from_dict({"model": {"name": "single_task"}}).loss_weights == {"ctr": 1.0, "cvr": 1.0, "ctcvr": 1.0}
    for apart in ("logistic", "single_task"):  # tasks trained apart: CVR on clicked rows
        assert C.from_dict({"model": {"name": apart}}).loss_convention == "clicked"
    assert C.from_dict({"model": {"name": "esmm"}, "loss": {"convention": "clicked"}}).loss_convention == "clicked"


def test_ple_defaults_to_one_layer_of_64_and_one_shared_expert_and_explicit_values_win():
    assert C.from_dict({"model": {"name": "ple"}}).model.shared_experts == 1
    assert C.from_dict({"model": {"name": "cgc"}}).model.shared_experts == 4
    assert C.from_dict({"model": {"name": "ple", "shared_experts": None}}).model.shared_experts == 1
    assert C.from_dict({"model": {"name": "ple", "shared_experts": 4}}).model.shared_experts == 4
    assert C.TrainerConfig().replace(model={"name": "ple"}).model.shared_experts == 1
    assert C.from_dict({"model": {"name": "ple"}}).replace(model={"name": "cgc"}).model.shared_experts == 4
    assert C.from_dict({"model": {"name": "ple"}}).replace(model={"levels": 3}).model.shared_experts == 1
    with pytest.raises(ValueError, match="model.shared_experts must be positive"):
        C.from_dict({"model": {"name": "ple", "shared_experts": 0}})
    assert C.from_dict({"model": {"name": "ple"}}).model.expert_units == (64,)
    assert C.from_dict({"model": {"name": "ple", "expert_units": None}}).model.expert_units == (64,)
    assert C.from_dict({"model": {"name": "mmoe"}}).model.expert_units == (128, 64)
    assert C.from_dict({"model": {"name": "ple", "expert_units": [128, 64]}}).model.expert_units == (128, 64)
    assert C.TrainerConfig().replace(model={"name": "ple"}).model.expert_units == (64,)
    assert C.from_dict({"model": {"name": "ple"}}).replace(model={"levels": 3}).model.expert_units == (64,)
    ple = models.build(SPEC.to_dict(), dataclasses.asdict(C.from_dict({"model": {"name": "ple"}}).model))
    ple(_batch())
    assert [tuple(k.shape)[1:] for k in ple.expert_kernels()] == [(ple.embed.output_dim, 64), (64, 64)]
    assert [k.shape[0] for k in ple.expert_kernels()] == [2 * 2 + 1, 2 * 2 + 1]  # per level: 2 per task, 1 shared


def test_dummy_batch_matches_the_spec():
    batch = dummy_batch(SPEC, rows=3)
    assert batch["f109_14"].shape == (3, 3) and batch["f109_14"].dtype == np.int32
    assert batch["numerical_1"].dtype == np.float32 and batch["f101"].shape == (3,)


def test_fdn_with_two_pairs_has_fewer_parameters_than_ple_at_the_paper_settings():
    def params(**changes):
        model = models.build(
            SPEC.to_dict(), dataclasses.asdict(C.ModelConfig(embedding_dim=32, expert_units=(128, 64), **changes))
        )
        model(_batch())
        return model.count_params()

    ple = params(name="ple", shared_experts=4)  # the paper's: 2 task-specific + 4 shared experts per level
    assert params(name="fdn", pairs=2) < ple and params(name="fdn", pairs=4) > ple


def test_mtn_s_own_step_under_mixed_precision_moves_the_weights_as_keras_own_step_does():
    """Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer, which unscales the
    gradients it applies; MTN's step (outside Keras' train_step) must hand it scaled ones. With
    lambda 0, MTN's step and Keras' own step (no MTN) make the same update."""
    batch, y = _batch(), _labels()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        deltas = {}
        for name, sections in (("keras", {}), ("mtn", {"mtn": {"lam": 0.0}})):
            keras.utils.set_random_seed(3)
            trainee = _trainee("mmoe", hardware={"mixed_precision": True}, **sections)
            trainee.compile_for_training(keras.optimizers.SGD(0.5), xla=False)
            assert type(trainee.optimizer).__name__ == "LossScaleOptimizer"
            assert (trainee._compiled_step is not None) == (name == "mtn")  # MTN takes its own step
            before = [keras.ops.convert_to_numpy(v) for v in trainee.network.trainable_variables]
            trainee.train_on_batch(batch, y)
            after = [keras.ops.convert_to_numpy(v) for v in trainee.network.trainable_variables]
            deltas[name] = np.concatenate([(a - b).ravel() for a, b in zip(after, before)])
    finally:
        keras.config.set_dtype_policy("float32")
    assert np.abs(deltas["keras"]).max() > 1e-3  # the step moved the weights
    np.testing.assert_allclose(deltas["mtn"], deltas["keras"], atol=2e-3 * np.abs(deltas["keras"]).max())
