"""Evaluator and Pusher on two differently initialised exports (no training): metrics equal the
Trainer's metric math on the SavedModel's own scores, blessing follows thresholds and the last
pushed model, a NOT_BLESSED model is never pushed, and concurrent pushes get distinct versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipeline import evaluator, pusher
from trainer import export
from common.metrics import task_metrics
from tests import raw_examples

OPEN = {"ctr_auc": 0.0, "cvr_auc": None, "ctcvr_auc": None}


@pytest.fixture(scope="module")
def ranked(serving_versions):
    """(examples folder, worse model, better model) by CTR AUC on the test split."""
    transformed, saved = serving_versions
    examples = raw_examples.examples_dir(transformed)
    aucs = {v: raw_examples.saved_model_metrics(str(path), transformed, "test")["ctr_auc"] for v, path in saved.items()}
    worse, better = sorted(saved, key=aucs.get)
    assert aucs[better] - aucs[worse] > 0.01, aucs  # the two random models must differ for the test to mean anything
    return examples, str(saved[worse]), str(saved[better])


def test_metrics_and_slices_are_the_saved_models(tmp_path, ranked):
    examples, model, _ = ranked
    config = evaluator.EvalConfig(thresholds=OPEN)
    result = evaluator.evaluate(model, examples, str(tmp_path), config)
    files = sorted(tf.io.gfile.glob(os.path.join(examples, "examples", "test", "*.tfrecord.gz")))
    scores, labels = export.score_examples(model, files, columns=("f301",))
    want = task_metrics(labels["click"], labels["conversion"], scores["ctr"], scores["cvr"], scores["ctcvr"])
    assert result["overall"]["ctr_auc"] == pytest.approx(want["ctr_auc"])
    assert result["overall"]["rows"] == len(labels["click"])
    slices = result["slices"]["f301"]
    assert sum(m["rows"] for m in slices.values()) == len(labels["click"])
    value, metrics = next(iter(slices.items()))
    mask = labels["f301"] == int(value)
    assert metrics["ctr_auc"] == pytest.approx(
        task_metrics(
            labels["click"][mask],
            labels["conversion"][mask],
            scores["ctr"][mask],
            scores["cvr"][mask],
            scores["ctcvr"][mask],
        )["ctr_auc"],
        nan_ok=True,
    )
    assert result["blessed"] and (tmp_path / "evaluation" / "BLESSED").exists()
    saved = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert saved["overall"]["rows"] == result["overall"]["rows"] and "| overall |" in evaluator.table(result)


def test_the_reference_is_shown_with_the_lift_over_it_and_gates_only_when_asked(tmp_path, ranked):
    examples, worse, better = ranked
    config = evaluator.EvalConfig(thresholds=OPEN, tolerance=0.0)
    result = evaluator.evaluate(worse, examples, str(tmp_path), config, reference_model=better)
    alone = evaluator.evaluate(better, examples, str(tmp_path / "alone"), config)
    assert result["reference"]["overall"] == alone["overall"]  # the reference scored on the same rows
    lift = result["reference"]["lift"]
    assert (
        lift["ctr_auc"] == pytest.approx(result["overall"]["ctr_auc"] - alone["overall"]["ctr_auc"])
        and lift["ctr_auc"] < -0.01
    )
    assert result["blessed"]  # a model below its reference is still judged by thresholds and baseline only
    table = evaluator.table(result)
    assert f"| {alone['overall']['ctr_auc']:.4f} |" in table.split("linear reference (logistic)")[0].splitlines()[-1]
    assert f"lift over the linear reference: CTR AUC {lift['ctr_auc']:+.4f}" in table
    assert json.loads((tmp_path / "evaluation" / "metrics.json").read_text())["reference"]["model"] == better
    # One line says the model does not beat the reference, naming the gated AUC; CVR and CTCVR are not gated here.
    short = result["reference"]["shortfall"]
    assert short == (
        f"the model does not beat the linear reference on CTR AUC {result['overall']['ctr_auc']:.4f} "
        f"against {alone['overall']['ctr_auc']:.4f}"
    )
    assert table.splitlines()[-1] == short
    required = evaluator.EvalConfig.from_dict({"thresholds": OPEN, "require_lift": True})
    withheld = evaluator.evaluate(worse, examples, str(tmp_path / "required"), required, reference_model=better)
    assert not withheld["blessed"] and withheld["reasons"] == [short]
    assert (tmp_path / "required" / "evaluation" / "NOT_BLESSED").read_text().strip() == short
    beats = evaluator.evaluate(better, examples, str(tmp_path / "beats"), required, reference_model=worse)
    assert beats["blessed"] and beats["reference"]["shortfall"] is None
    with pytest.raises(ValueError, match="evaluator.require_lift must be true or false"):
        evaluator.EvalConfig.from_dict({"require_lift": "yes"})


def test_thresholds_and_the_baseline_decide_the_blessing(tmp_path, ranked):
    examples, worse, better = ranked
    strict = evaluator.EvalConfig(thresholds={"ctr_auc": 0.99, "cvr_auc": None, "ctcvr_auc": None})
    result = evaluator.evaluate(better, examples, str(tmp_path / "a"), strict)
    assert not result["blessed"] and "ctr_auc" in result["reasons"][0] and "threshold 0.99" in result["reasons"][0]
    assert "threshold 0.99" in (tmp_path / "a" / "evaluation" / "NOT_BLESSED").read_text()
    config = evaluator.EvalConfig(thresholds=OPEN, tolerance=0.0)
    against_better = evaluator.evaluate(worse, examples, str(tmp_path / "b"), config, baseline_model=better)
    assert not against_better["blessed"] and "worse than the last pushed model" in " ".join(against_better["reasons"])
    against_worse = evaluator.evaluate(better, examples, str(tmp_path / "c"), config, baseline_model=worse)
    assert against_worse["blessed"] and (tmp_path / "c" / "evaluation" / "BLESSED").exists()
    assert not (tmp_path / "c" / "evaluation" / "NOT_BLESSED").exists()


def test_only_blessed_models_are_pushed_as_the_next_version(tmp_path, ranked):
    examples, worse, better = ranked
    base = tmp_path / "serving"
    config = evaluator.EvalConfig(thresholds=OPEN, tolerance=0.0)
    first = tmp_path / "run1"
    evaluator.evaluate(worse, examples, str(first), config, baseline_model=pusher.latest(str(base / "mtrank")))
    assert pusher.push(worse, str(first), str(base))["version"] == 1
    second = tmp_path / "run2"  # retrained, better: version 2
    evaluator.evaluate(better, examples, str(second), config, baseline_model=pusher.latest(str(base / "mtrank")))
    pushed = pusher.push(better, str(second), str(base))
    assert pushed["version"] == 2 and pusher.latest(str(base / "mtrank")) == pushed["path"]
    assert json.loads((base / "mtrank" / "2" / "push.json").read_text())["run"] == str(second)
    third = tmp_path / "run3"  # worse than what is served: not blessed, never pushed
    evaluator.evaluate(worse, examples, str(third), config, baseline_model=pusher.latest(str(base / "mtrank")))
    with pytest.raises(pusher.NotBlessed, match="worse than the last pushed model"):
        pusher.push(worse, str(third), str(base))
    with pytest.raises(pusher.NotBlessed, match="no evaluation"):
        pusher.push(worse, str(tmp_path / "never_evaluated"), str(base))
    assert pusher.versions(str(base / "mtrank")) == [1, 2]
    served = tf.saved_model.load(str(base / "mtrank" / "2")).signatures["serving_default"]
    original = tf.saved_model.load(better).signatures["serving_default"]
    record = tf.constant([b""])
    np.testing.assert_allclose(served(examples=record)["ctr"].numpy(), original(examples=record)["ctr"].numpy())


def test_concurrent_pushes_get_distinct_complete_versions(tmp_path, ranked):
    examples, model, _ = ranked
    run = tmp_path / "run"
    evaluator.evaluate(model, examples, str(run), evaluator.EvalConfig(thresholds=OPEN))
    code = (
        "import sys; from pipeline import pusher; print(pusher.push(sys.argv[1], sys.argv[2], sys.argv[3])['version'])"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, model, str(run), str(tmp_path / "serving")], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    versions = sorted(int(p.communicate()[0]) for p in procs)
    assert versions == [1, 2, 3, 4]
    base = tmp_path / "serving" / "mtrank"
    assert sorted(n for n in os.listdir(base) if not n.startswith(".")) == ["1", "2", "3", "4"]
    for v in versions:
        assert sorted(os.listdir(base / str(v))) == sorted(os.listdir(model) + ["push.json"])
