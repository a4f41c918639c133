"""The Trainer end to end on synthetic Ali-CCP: every model learns, runs repeat with a seed, a
killed run resumes, and the export serves what was trained."""

from __future__ import annotations

import json
import math
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from trainer import callbacks, export, inputs, models, train
from trainer.config import MODEL_NAMES
from transform import features as F
from tests import raw_examples

SMALL = {"embedding_dim": 8, "expert_units": [32, 16], "tower_units": [16], "num_experts": 4}
# The default embedding L2 (1e-3) is tuned for real vocabularies, where a batch reads a small share
# of the rows; here every batch reads nearly all of them, at 5x the default learning rate, and
# Adam's normalised steps then shrink PLE's embeddings to zero (its ReLUs die) within an epoch.
# A constant rate: the default decay is counted for 2,048-row batches over 1M rows, and would spend
# most of these few hundred steps at a falling rate.
FAST = {
    "batch_size": 512,
    "epochs": 3,
    "eval_batch_size": 4096,
    "learning_rate": 0.005,
    "embedding_l2": 1e-4,
    "decay_steps": None,
}


def _config(model="mmoe", xla=False, training=None, **sections) -> dict:
    return {
        "model": {"name": model, **SMALL},
        "training": {**FAST, **(training or {})},
        "hardware": {"xla": xla},
        **sections,
    }


def _auc_floor(positives: int, negatives: int) -> float:
    """0.5 plus three standard errors of a constant predictor's AUC (Hanley-McNeil at AUC 0.5)."""
    return 0.5 + 3 * math.sqrt((positives + negatives + 1) / (12 * positives * negatives))


def _check_beats_constant(metrics: dict):
    clicks, conversions, rows = metrics["clicks"], metrics["conversions"], metrics["rows"]
    assert metrics["ctr_auc"] > _auc_floor(clicks, rows - clicks), metrics
    assert metrics["cvr_auc"] > _auc_floor(conversions, clicks - conversions), metrics
    assert metrics["ctcvr_auc"] > _auc_floor(conversions, rows - conversions), metrics


ZOO = [(name, {}) for name in MODEL_NAMES] + [
    (
        "ple+mtn-experts-depth",
        {"model": {"name": "ple", **SMALL, "levels": 2}, "mtn": {"target": "experts", "depth": 1}},
    ),
    ("fdn-authors-no-aux", {"fdn": {"orth_variant": "authors", "aux": False}}),
    ("fdn-no-shared", {"model": {"name": "fdn", **SMALL, "shared_features": False}}),
]


@pytest.mark.parametrize("name, changes", ZOO, ids=[z[0] for z in ZOO])
def test_every_model_beats_a_constant_predictor(tmp_path, trainable_synthetic, name, changes):
    # Known and open: at FAST's 5x learning rate, under the `both` loss convention, PLE's stacked
    # ReLU experts die within the first epoch on this tiny data (every AUC 0.5); 2x trains.
    training = {"epochs": 2, **({"learning_rate": 0.002} if name.startswith("ple") else {})}
    config = {**_config(name.split("+")[0].split("-")[0], training=training), **changes}
    result = train.train(str(trainable_synthetic[0]), str(tmp_path), config)
    _check_beats_constant(result["eval"])
    _check_beats_constant(result["test"])
    if name == "logistic":  # solved to convergence, not trained in rounds
        assert result["history"] == [] and all(p["converged"] for p in result["solver"]["path"]["ctr"])
        return
    losses = [epoch["loss"] for epoch in result["history"]]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    if "mtn" in changes:
        alphas = np.array(result["mtn_alphas"])
        np.testing.assert_allclose(alphas.sum(1), 1.0, rtol=1e-5)
        assert np.all(alphas >= 0.5 / 3 - 1e-6)  # the floor keeps every mode in the norm


@pytest.fixture(scope="session")
def trained_mmoe(tmp_path_factory, trainable_synthetic):
    """MMoE with MTN, XLA on, 2 epochs of 2 evaluation rounds each, seed 5: (output folder, result)."""
    out = tmp_path_factory.mktemp("trained_mmoe")
    config = _config("mmoe", xla=True, training={"epochs": 2, "evals_per_epoch": 2, "seed": 5}, mtn={"lam": 1e-4})
    return out, train.train(str(trainable_synthetic[0]), str(out), config), config


def _monitored(entry: dict) -> float:
    return -(entry["val_ctr_logloss"] + entry["val_cvr_logloss"] + entry["val_ctcvr_logloss"])


def test_a_run_writes_its_config_metrics_checkpoints_and_tensorboard_logs(trained_mmoe):
    out, result, config = trained_mmoe
    _check_beats_constant(result["eval"])  # MMoE + MTN with XLA: the zoo test's MTN case
    _check_beats_constant(result["test"])
    assert np.all(np.array(result["mtn_alphas"]) >= 0.5 / 3 - 1e-6)
    run = out / "model"
    saved = json.loads((run / "config.json").read_text())
    assert saved["trainer"]["training"]["seed"] == 5 and saved["trainer"]["mtn"]["lam"] == 1e-4
    assert {"tensorflow", "keras", "tensorflow_transform"} <= set(saved["packages"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["evals_done"] == 4 and metrics["epochs_done"] == 2.0 and len(metrics["history"]) == 4
    steps = metrics["rows"]["train"] // FAST["batch_size"] // 2
    # FAST sets the batch and the L2; patience is left to its rule, rounds spanning 200 steps, and a
    # small split's tables learn at the dense rate.
    rules = {
        "training.patience": -(-200 // steps),
        "training.embedding_learning_rate": FAST["learning_rate"],
        "training.embedding_l2_rows": "touched",
    }
    assert saved["resolved"] == metrics["resolved"] == rules
    assert saved["trainer"]["training"]["patience"] == -(-200 // steps)
    assert [(e["eval"], e["epoch"], e["step"]) for e in metrics["history"]] == [
        (i, i / 2, i * steps) for i in range(1, 5)
    ]
    for entry in metrics["history"]:
        assert {
            "loss",
            "ctr_loss",
            "ctcvr_loss",
            "mtn_loss",
            "val_ctr_auc",
            "val_cvr_auc",
            "val_ctcvr_auc",
            "val_ctr_logloss",
            "val_cvr_logloss",
            "val_ctcvr_logloss",
        } <= set(entry)
    # The default monitor: the eval CTR + CTCVR log loss; its best round's weights are restored.
    best = max(metrics["history"], key=_monitored)
    assert metrics["monitor"] == "logloss" and metrics["best_eval"] == best["eval"]
    assert metrics["best_epoch"] == best["epoch"] and metrics["best_step"] == best["step"]
    assert metrics["eval"]["ctr_logloss"] == pytest.approx(best["val_ctr_logloss"], abs=1e-9)
    assert metrics["eval"]["cvr_auc"] == pytest.approx(best["val_cvr_auc"], abs=1e-9)
    assert metrics["params"]["total"] == metrics["params"]["exported"] + metrics["params"]["regularizer_only"]
    assert metrics["params"]["regularizer_only"] == 2 * 3  # MTN's alphas: 2 tower depths x 3 modes
    assert sorted(p.name for p in (run / "checkpoints").glob("*.index")) == ["ckpt-3.index", "ckpt-4.index"]
    assert list((run / "logs").rglob("events.out.tfevents.*"))


def test_early_stopping_on_eval_cvr_auc_with_patience(tmp_path, trainable_synthetic):
    """The MTN paper's rule, as a named option: eval CVR AUC once per epoch, patience 2."""
    # A learning rate this high overfits the tiny data within an epoch or two.
    config = _config(
        "mmoe",
        training={"epochs": 12, "patience": 2, "learning_rate": 0.05, "monitor": "cvr_auc", "evals_per_epoch": 1},
    )
    result = train.train(str(trainable_synthetic[0]), str(tmp_path), config)
    history = [e["val_cvr_auc"] for e in result["history"]]
    assert result["stopped_early"] and len(history) < 12
    best = int(np.argmax(history))
    assert len(history) == best + 1 + 2  # stopped after 2 epochs without a better CVR AUC
    assert result["best_epoch"] == best + 1


def test_early_stopping_within_an_epoch_on_the_eval_log_loss(tmp_path, trainable_synthetic):
    config = _config("mmoe", training={"epochs": 12, "patience": 3, "learning_rate": 0.05, "evals_per_epoch": 3})
    result = train.train(str(trainable_synthetic[0]), str(tmp_path), config)
    history = result["history"]
    assert result["stopped_early"] and len(history) < 36
    best = int(np.argmax([_monitored(e) for e in history]))
    assert len(history) == best + 1 + 3  # stopped after 3 rounds without a lower log loss
    assert result["best_eval"] == best + 1 and result["best_epoch"] == pytest.approx((best + 1) / 3)
    assert result["eval"]["ctcvr_logloss"] == pytest.approx(history[best]["val_ctcvr_logloss"], abs=1e-9)


def _mtrank(*args) -> list[str]:
    return [sys.executable, "-m", "mtrank.cli", *args]


def test_a_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path, trained_mmoe, trainable_synthetic):
    """Same seed and config as `trained_mmoe`: killed after an evaluation round (mid-epoch or at an
    epoch's end) and resumed, the run
    ends with the very metrics of the uninterrupted run (so runs also repeat with a seed)."""
    _, uninterrupted, config = trained_mmoe
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    out = tmp_path / "out"
    command = _mtrank(
        "train", "--transformed", str(trainable_synthetic[0]), "--output", str(out), "--config", str(config_file)
    )
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = out / "model" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if state.exists() and json.loads(state.read_text())["evals_done"] >= 1:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    done = json.loads(state.read_text())["evals_done"]
    assert process.returncode == -signal.SIGKILL and 1 <= done < 4, process.stdout.read().decode()[-2000:]

    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {out / 'model'} after evaluation round {done}" in resumed.stderr
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    assert [e["eval"] for e in metrics["history"]] == [1, 2, 3, 4]
    for key in ("val_ctr_auc", "val_cvr_auc", "val_ctcvr_auc", "loss"):
        assert [e[key] for e in metrics["history"]] == [e[key] for e in uninterrupted["history"]], key
    assert metrics["eval"] == uninterrupted["eval"]


def test_resuming_with_a_different_config_is_refused(tmp_path, trained_mmoe, trainable_synthetic):
    out, _, config = trained_mmoe
    changed = {**config, "model": {**config["model"], "num_experts": 2}}
    with pytest.raises(train.TrainingError, match="different config .*model.num_experts.*--overwrite"):
        train.train(str(trainable_synthetic[0]), str(out), changed)


def _raw_examples(transformed: pathlib.Path, split: str) -> list[bytes]:
    return raw_examples.records(transformed, split)


def _sample_ids(records) -> list[bytes]:
    spec = {F.SAMPLE_ID: tf.io.FixedLenFeature([], tf.string)}
    return [s.numpy() for s in tf.io.parse_example(tf.constant(records), spec)[F.SAMPLE_ID]]


def _in_memory_network(run_dir: pathlib.Path):
    saved = json.loads((run_dir / "config.json").read_text())
    spec = inputs.InputSpec.from_dict(saved["input_spec"])
    network = models.build(spec.to_dict(), saved["trainer"]["model"])
    network(__import__("trainer.training_model", fromlist=["dummy_batch"]).dummy_batch(spec))
    network.load_weights(str(run_dir / "best.weights.h5"))
    return network, spec


def test_saved_model_scores_equal_the_in_memory_model(trained_mmoe, trainable_synthetic):
    out, result, _ = trained_mmoe
    transformed = trainable_synthetic[0]
    network, spec = _in_memory_network(out / "model")
    import tensorflow_transform as tft

    from transform.preprocessing import categorical_cardinalities

    tft_output = tft.TFTransformOutput(str(transformed / "transform_graph"))
    files = [str(transformed / "transformed" / "test" / "*")]
    split = inputs.load(
        files, tft_output.transformed_feature_spec(), spec, categorical_cardinalities(tft_output), 32, 8, "test"
    )
    in_memory, _ = callbacks.predict(network, split, 4096, xla=False)
    ids = _sample_ids([r.numpy() for r in inputs.read_records(inputs.expand(files))])
    by_id = {i: n for n, i in enumerate(ids)}

    raw = _raw_examples(transformed, "test")
    serve = tf.saved_model.load(str(out / "model" / "serving")).signatures["serving_default"]
    served = {k: v.numpy() for k, v in serve(examples=tf.constant(raw)).items()}
    order = [by_id[i] for i in _sample_ids(raw)]
    assert len(raw) == len(ids) == 6_000
    for key in ("ctr", "cvr", "ctcvr"):
        np.testing.assert_allclose(served[key], in_memory[key][order], rtol=1e-5, atol=1e-7)
    assert result["test"]["ctr_auc"] > 0.6


def test_predict_signature_takes_named_raw_tensors_and_agrees(trained_mmoe, trainable_synthetic):
    out, _, _ = trained_mmoe
    loaded = tf.saved_model.load(str(out / "model" / "serving"))
    assert set(loaded.signatures) == {"serving_default", "predict"}
    predict = loaded.signatures["predict"]
    specs = predict.structured_input_signature[1]
    assert specs["f101"].shape.as_list() == [None] and specs["f101"].dtype == tf.int64
    assert specs["f109_14"].shape.as_list() == [None, None] and specs["f109_14_weight"].dtype == tf.float32
    assert not set(specs) & (set(F.LABELS) | set(F.METADATA))
    raw = _raw_examples(trainable_synthetic[0], "test")[:500]
    by_examples = loaded.signatures["serving_default"](examples=tf.constant(raw))
    by_tensors = predict(**export.predict_inputs(predict, raw))
    assert set(by_tensors) == {"ctr", "cvr", "ctcvr"}
    for key in by_tensors:
        np.testing.assert_allclose(by_tensors[key].numpy(), by_examples[key].numpy(), rtol=1e-5, atol=1e-7)


def test_predict_skips_padding_anywhere_in_a_bag(trained_mmoe, trainable_synthetic):
    out, _, _ = trained_mmoe
    predict = tf.saved_model.load(str(out / "model" / "serving")).signatures["predict"]
    tensors = export.predict_inputs(predict, _raw_examples(trainable_synthetic[0], "test")[:200])
    padded = dict(tensors)
    for key in ("f109_14", "f109_14_weight"):  # a padding column in front of every bag
        pad = -1 if key == "f109_14" else 0.0
        padded[key] = tf.concat([tf.fill([200, 1], tf.cast(pad, tensors[key].dtype)), tensors[key]], axis=1)
    for key, value in predict(**tensors).items():
        np.testing.assert_allclose(predict(**padded)[key].numpy(), value.numpy(), rtol=1e-6)


def test_missing_and_unseen_fields_fall_back_instead_of_failing(trained_mmoe, trainable_synthetic):
    out, _, _ = trained_mmoe
    serve = tf.saved_model.load(str(out / "model" / "serving")).signatures["serving_default"]
    empty = tf.train.Example().SerializeToString()
    unseen = tf.train.Example()
    unseen.features.feature["f205"].int64_list.value.append(987_654_321_987)  # no vocabulary holds it
    unseen.features.feature["f109_14"].int64_list.value.extend([1, 2])  # weights missing too
    scores = serve(examples=tf.constant([empty, unseen.SerializeToString()]))
    for value in scores.values():
        assert np.all(np.isfinite(value.numpy())) and value.shape == (2,)
    # An absent single-valued field and the explicit missing id are the same input.
    missing = tf.train.Example()
    missing.features.feature["f101"].int64_list.value.append(F.MISSING_ID)
    again = serve(examples=tf.constant([missing.SerializeToString()]))
    np.testing.assert_allclose(again["ctr"].numpy(), scores["ctr"].numpy()[:1], rtol=1e-6)


@pytest.fixture(scope="session")
def trained_fdn_with_mtn(tmp_path_factory, trainable_synthetic):
    out = tmp_path_factory.mktemp("trained_fdn")
    config = _config("fdn", training={"epochs": 1}, mtn={"target": "experts"})
    return out, train.train(str(trainable_synthetic[0]), str(out), config)


def test_saved_model_holds_no_regulariser_parameters(trained_mmoe, trained_fdn_with_mtn):
    for out, result in (trained_mmoe[:2], trained_fdn_with_mtn):
        serving = str(out / "model" / "serving")
        names = export.saved_variables(serving)
        network, _ = _in_memory_network(out / "model")
        assert export.saved_params(serving) == network.count_params() == result["params"]["exported"]
        assert result["params"]["regularizer_only"] > 0
        assert not [n for n in names if any(w in n.lower() for w in ("aux", "alpha", "mtn", "optimizer"))], names
    fdn = trained_fdn_with_mtn[1]["params"]
    # aux heads: k x M x (u + 1); MTN alphas: 2 expert depths x 3 modes
    assert fdn["regularizer_only"] == 2 * 2 * (16 + 1) + 2 * 3


@pytest.mark.parametrize(
    "monitor, expected",
    [("logloss", -0.6), ("ctr_ctcvr_logloss", -0.2), ("cvr_auc", 0.7), ("ctcvr_auc", 0.8)],
)
def test_each_monitor_ranks_rounds_by_its_own_eval_value(monitor, expected):
    metrics = {"ctr_logloss": 0.15, "cvr_logloss": 0.4, "ctcvr_logloss": 0.05, "cvr_auc": 0.7, "ctcvr_auc": 0.8}
    assert callbacks.monitor_value(metrics, monitor) == pytest.approx(expected)
    # An eval split without clicked rows has no CVR log loss: the three-term sum keeps the other two.
    assert callbacks.monitor_value({**metrics, "cvr_logloss": float("nan")}, "logloss") == pytest.approx(-0.2)
