"""The Kubeflow pipeline as a cluster gets it: `mtrank compile`'s YAML loads back with kfp and wires
the five components, and `mtrank schedule` creates a recurring run (one at a time, no catch-up)
through the real KFP client against a stand-in for the KFP API server."""

from __future__ import annotations

import http.server
import json
import pathlib
import subprocess
import threading

import pytest
import yaml
from kfp import components

from pipeline import kubeflow

REPO = pathlib.Path(__file__).resolve().parents[1]
MTRANK = str(REPO / ".venv" / "bin" / "mtrank")
STAGES = ("example-gen", "transform", "trainer", "reference-trainer", "evaluator", "pusher")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    result = subprocess.run(
        [MTRANK, "compile", "--output", str(path), "--image", "registry.example/mtrank:7"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return path


def _documents(path: pathlib.Path) -> tuple[dict, dict]:
    spec, platform = list(yaml.safe_load_all(path.read_text()))
    return spec, platform


def test_the_compiled_pipeline_loads_back_and_names_every_component(compiled):
    loaded = components.load_component_from_file(str(compiled))
    assert loaded.name == "mtrank"
    assert {
        "data",
        "data_format",
        "model",
        "mtn_lambda",
        "noise_proportion",
        "serving_base",
        "warm_start",
        "trainer_config",
    } <= set(loaded.component_spec.inputs)
    spec, _ = _documents(compiled)
    assert set(spec["components"]) == {f"comp-{s}" for s in STAGES}
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == set(STAGES)
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"] == "registry.example/mtrank:7", name
        assert "pip install" not in " ".join(container["command"]), f"{name} installs packages at start-up"
        assert "from pipeline import dag" in container["command"][-1], name
    for name, task in tasks.items():
        assert task["cachingOptions"] == {}, f"{name} may be cached: a scheduled run would skip new data"


def test_artifacts_flow_between_the_steps_as_in_tfx(compiled):
    tasks = _documents(compiled)[0]["root"]["dag"]["tasks"]

    def producer(task: str, artifact: str) -> tuple[str, str]:
        source = tasks[task]["inputs"]["artifacts"][artifact]["taskOutputArtifact"]
        return source["producerTask"], source["outputArtifactKey"]

    assert producer("transform", "examples") == ("example-gen", "examples")
    assert producer("trainer", "transform_graph") == ("transform", "transform_graph")
    assert producer("evaluator", "model") == ("trainer", "model")
    assert producer("reference-trainer", "transform_graph") == ("transform", "transform_graph")
    assert producer("evaluator", "reference") == ("reference-trainer", "reference")
    assert producer("evaluator", "examples") == ("example-gen", "examples")
    assert producer("pusher", "evaluation") == ("evaluator", "evaluation")
    assert producer("pusher", "model") == ("trainer", "model")
    fingerprint = tasks["pusher"]["inputs"]["parameters"]["data_fingerprint"]["taskOutputParameter"]
    assert fingerprint["producerTask"] == "example-gen"  # the data as ExampleGen read it, not as it is at push time
    parameters = tasks["trainer"]["inputs"]["parameters"]
    assert parameters["model_choice"]["componentInputParameter"] == "model"
    assert parameters["mtn_lambda"]["componentInputParameter"] == "mtn_lambda"
    assert (
        tasks["transform"]["inputs"]["parameters"]["noise_proportion"]["componentInputParameter"] == "noise_proportion"
    )


def test_the_steps_mount_the_claims_the_manifests_declare(compiled):
    _, platform = _documents(compiled)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounts = {
        name.removeprefix("exec-"): {
            (m["pvcNameParameter"]["runtimeValue"]["constant"], m["mountPath"]) for m in e["pvcMount"]
        }
        for name, e in executors.items()
    }
    assert mounts["example-gen"] == {(kubeflow.DATA_CLAIM, kubeflow.DATA_MOUNT)}
    assert [s for s, m in mounts.items() if (kubeflow.DATA_CLAIM, kubeflow.DATA_MOUNT) in m] == ["example-gen"]
    for stage in ("trainer", "evaluator", "pusher"):  # warm start, baseline, push: the serving base
        assert (kubeflow.MODELS_CLAIM, kubeflow.MODELS_MOUNT) in mounts[stage]
    declared = {
        doc["metadata"]["name"]
        for file in (REPO / "k8s").rglob("*.yaml")
        for doc in yaml.safe_load_all(file.read_text())
        if doc and doc.get("kind") == "PersistentVolumeClaim"
    }
    assert {kubeflow.DATA_CLAIM, kubeflow.MODELS_CLAIM} <= declared


class _FakeKfpApi(http.server.BaseHTTPRequestHandler):
    """The few KFP v2beta1 endpoints `mtrank schedule` uses; records every request."""

    requests: list = []

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.requests.append(("GET", self.path, None))
        if self.path.startswith("/apis/v2beta1/healthz"):
            self._reply({"multi_user": False})
        elif self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiments": [], "total_size": 0})
        elif self.path.startswith("/apis/v2beta1/recurringruns"):
            made = [body for method, path, body in self.requests if path == "/apis/v2beta1/recurringruns"]
            self._reply(
                {"recurringRuns": [{**body, "recurring_run_id": "rr-1"} for body in made], "total_size": len(made)}
            )
        else:
            self.send_error(404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            self._reply({**body, "experiment_id": "exp-1"})
        elif self.path == "/apis/v2beta1/recurringruns":
            self._reply({**body, "recurring_run_id": "rr-1", "status": "ENABLED"})
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def test_schedule_creates_one_recurring_run_at_a_time_without_catch_up(compiled, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeKfpApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    parameters = tmp_path / "parameters.json"
    parameters.write_text(json.dumps({"data": "/data/latest", "model": "mmoe", "mtn_lambda": 1e-5}))
    command = [
        MTRANK,
        "schedule",
        "--host",
        f"http://127.0.0.1:{server.server_port}",
        "--pipeline",
        str(compiled),
        "--parameters",
        str(parameters),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert again.returncode == 2 and "already has a recurring run 'mtrank-retrain' (rr-1)" in again.stderr
    assert result.returncode == 0, result.stderr
    assert "rr-1" in result.stdout and "at most one run at a time" in result.stdout
    created = [body for method, path, body in _FakeKfpApi.requests if path == "/apis/v2beta1/recurringruns"]
    assert len(created) == 1
    run = created[0]
    assert run["max_concurrency"] in (1, "1") and run["no_catchup"] is True
    assert run["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *" and run["experiment_id"] == "exp-1"
    assert run["mode"] == "ENABLE" and run["display_name"] == "mtrank-retrain"
    sent = run["pipeline_spec"]  # the compiled spec, with its Kubernetes part (the claims)
    assert sent["pipeline_spec"]["pipelineInfo"]["name"] == "mtrank"
    assert "pvcMount" in json.dumps(sent["platform_spec"]["platforms"]["kubernetes"])
    assert run["runtime_config"]["parameters"] == {"data": "/data/latest", "model": "mmoe", "mtn_lambda": 1e-5}


def test_schedule_refuses_a_five_field_cron_and_a_missing_pipeline(compiled, tmp_path):
    five = subprocess.run(
        [MTRANK, "schedule", "--host", "http://127.0.0.1:9", "--pipeline", str(compiled), "--cron", "0 2 * * *"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert five.returncode == 2 and "has 5 fields" in five.stderr and "seconds first" in five.stderr
    missing = subprocess.run(
        [MTRANK, "schedule", "--host", "http://127.0.0.1:9", "--pipeline", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "mtrank compile" in missing.stderr
