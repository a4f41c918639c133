"""Scheduled retraining end to end, the way a team runs it:

1. the README's main job (`mtrank run`, local runner) pushes version 1 and serves it;
2. a second run on new data, through Kubeflow Pipelines' local runner, warm-starts from version 1
   and pushes version 2, which an already running server picks up without a restart;
3. a worse model goes through the same Evaluator and Pusher and is not pushed.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import export_untrained
from pipeline import dag, pusher
from synth import aliccp

MTRANK = str(pathlib.Path(sys.executable).parent / "mtrank")
# 1,500 synthetic rows hold ~14 test clicks: too few to gate CVR/CTCVR AUCs; CTR is gated, and
# compared with the baseline.
OPEN = {"evaluator": {"thresholds": {"ctr_auc": 0.0, "cvr_auc": None, "ctcvr_auc": None}}}


def mtrank(*args):
    result = subprocess.run([MTRANK, *args], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="module")
def open_config(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("config") / "run.json"
    path.write_text(json.dumps(OPEN))
    return path


@pytest.fixture(scope="module")
def main_job(tmp_path_factory, base, open_config):
    out = tmp_path_factory.mktemp("run1")
    return out, mtrank(
        "run", "--rows", "1500", "--output", str(out), "--serving-base", str(base), "--config", str(open_config)
    )


def test_run_is_the_main_job_end_to_end(main_job, base):
    out, result = main_job
    assert "[3/8] Transform" in result.stdout and "[4/8] Trainer" in result.stdout
    assert "[5/8] Trainer: the linear reference (logistic)" in result.stdout
    assert "[6/8] Evaluator" in result.stdout and "| overall |" in result.stdout and "f301 = " in result.stdout
    assert "| linear reference (logistic) |" in result.stdout and "lift over the linear reference" in result.stdout
    assert "BLESSED" in result.stdout and "pushed version 1" in result.stdout
    assert (base / "mtrank" / "1" / "saved_model.pb").exists() and (out / "evaluation" / "BLESSED").exists()
    served = [line for line in result.stdout.splitlines() if line.startswith("  | ") and line[4].isdigit()]
    assert "serves version 1" in result.stdout and len(served) == 5
    written = json.loads((out / "stats.json").read_text())["samples"]["written"]
    assert all(0 < float(x) < 1 for line in served for x in line.strip("| ").split(" | ")[1:])
    evaluation = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert evaluation["blessed"] and evaluation["overall"]["rows"] == written["test"]
    reference = evaluation["reference"]
    assert reference["model"] == str(out / "reference" / "model" / "serving")
    assert reference["overall"]["rows"] == written["test"]
    assert reference["lift"]["ctr_auc"] == pytest.approx(
        evaluation["overall"]["ctr_auc"] - reference["overall"]["ctr_auc"]
    )
    reference_config = json.loads((out / "reference" / "model" / "config.json").read_text())["trainer"]
    assert reference_config["model"]["name"] == "logistic"
    record = json.loads((out / "run.json").read_text())
    assert record["lineage"]["pushed"]["version"] == 1 and record["packages"]["tensorflow"].startswith("2.21")
    assert record["data"]["fingerprint"]["files"] == 5 and len(record["data"]["fingerprint"]["sha256"]) == 64
    assert record["arguments"]["rows"] == 1500 and record["metrics"]["test"]["rows"] == written["test"]
    transformed = json.loads((out / "transformed" / "stats.json").read_text())
    assert transformed["rows"] == written
    assert (out / "transform_graph" / "transform_fn" / "saved_model.pb").exists()
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    assert metrics["model"] == "mmoe" and metrics["test"]["rows"] == written["test"]
    assert (out / "model" / "serving" / "saved_model.pb").exists() and "test AUC" in result.stdout


@pytest.fixture(scope="module")
def retrained(main_job, base, open_config, tmp_path_factory):
    """Run 2 on new data (more rows, more clicks: a clearly better model) through the KFP local
    runner, warm-started from version 1, while a server is serving version 1."""
    from serving import config as serving_config
    from serving.client import RestClient
    from serving.server import ServerThread

    root = tmp_path_factory.mktemp("run2")
    aliccp.generate(aliccp.AliccpSynthConfig(rows=12_000, seed=21, ctr=0.2, cvr=0.3), str(root / "raw"), progress=False)
    model_base = str(base / "mtrank")
    config = serving_config.ServerConfig(
        models=(serving_config.ModelSpec("mtrank", model_base),),
        rest_port=0,
        grpc_port=0,
        host="127.0.0.1",
        poll_seconds=0.5,
    )
    with ServerThread(config) as server:
        client = RestClient(server.rest_url, "mtrank")
        before = [s["version"] for s in client.status()["model_version_status"]]
        result = mtrank(
            "run",
            "--runner",
            "kfp-local",
            "--data",
            str(root / "raw"),
            "--format",
            "aliccp-raw",
            "--output",
            str(root / "out"),
            "--serving-base",
            str(base),
            "--warm-start",
            "--epochs",
            "3",
            "--config",
            str(open_config),
            "--no-serve",
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            after = [s["version"] for s in client.status()["model_version_status"] if s["state"] == "AVAILABLE"]
            if after == ["2"]:
                break
            time.sleep(0.5)
        record = json.loads((root / "out" / "run.json").read_text())
        files = sorted(tf.io.gfile.glob(os.path.join(record["lineage"]["examples"], "examples", "test", "*")))
        examples = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(20)]
        served = client.predict_examples(examples)
    return {
        "root": root,
        "result": result,
        "record": record,
        "before": before,
        "after": after,
        "examples": examples,
        "served": served,
    }


def test_retraining_pushes_version_2_and_the_running_server_picks_it_up(retrained, base):
    record, result = retrained["record"], retrained["result"]
    assert retrained["before"] == ["1"] and retrained["after"] == ["2"]
    assert "Kubeflow Pipelines local runner" in result.stdout and "pushed version 2" in result.stdout
    assert record["lineage"]["pushed"]["version"] == 2 and record["lineage"]["blessed"]
    assert record["lineage"]["baseline"] == str(base / "mtrank" / "1")
    assert record["arguments"]["runner"] == "kfp-local" and record["arguments"]["warm_start"]
    for artifact in ("examples", "transform_graph", "model", "evaluation"):
        assert pathlib.Path(record["lineage"][artifact]).is_relative_to(retrained["root"] / "out" / "kfp"), artifact
    own = tf.saved_model.load(str(base / "mtrank" / "2")).signatures["serving_default"]
    want = own(examples=tf.constant(retrained["examples"]))
    np.testing.assert_allclose(retrained["served"]["ctr"], want["ctr"].numpy(), rtol=1e-5)


def test_retraining_warm_starts_from_the_last_pushed_version(retrained, base):
    warm = retrained["record"]["warm_start"]
    assert warm["from"] == str(base / "mtrank" / "1")
    # Same architecture: every variable carries over; the new data shares many ids with the old.
    assert warm["copied"] == warm["variables"] and 0 < warm["embedding_rows"] < warm["embedding_rows_total"]
    assert "warm start" in retrained["result"].stdout


def test_a_worse_model_is_evaluated_and_not_pushed(retrained, base, tmp_path):
    lineage = retrained["record"]["lineage"]
    untrained = export_untrained(pathlib.Path(lineage["transform_graph"]).parent, seed=5, out=tmp_path / "untrained")
    config = dag.eval_config({**OPEN["evaluator"], "tolerance": 0.005})
    result = dag.evaluator(
        str(untrained), lineage["examples"], str(tmp_path), config, pusher.latest(str(base / "mtrank"))
    )
    assert not result["blessed"] and "worse than the last pushed model" in " ".join(result["reasons"])
    assert dag.pusher(str(untrained), str(tmp_path), str(base), "mtrank") is None
    assert pusher.versions(str(base / "mtrank")) == [1, 2]
