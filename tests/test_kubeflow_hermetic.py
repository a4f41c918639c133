"""Each Kubeflow component runs as it would in its own pod: given copies of its declared input
artifacts in a fresh folder, with every other folder of the run (the raw data aside, which
ExampleGen and the Pusher name as a parameter) moved away first. The local KFP runner shares one
disk between the steps and cannot show a component that reads a folder it was not given."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

import pytest

from pipeline import kubeflow, pusher
from synth import aliccp

TRAINER = {
    "model": {"embedding_dim": 4, "expert_units": [8], "tower_units": [4], "num_experts": 2},
    "training": {"batch_size": 256, "evals_per_epoch": 1},
    "hardware": {"xla": False},
}
OPEN = {"thresholds": {"ctr_auc": 0.0, "cvr_auc": None, "ctcvr_auc": None}}
CLOSED = {"thresholds": {"ctr_auc": 0.999, "cvr_auc": None, "ctcvr_auc": None}}


@dataclasses.dataclass
class Artifact:
    """What a KFP component reads of an artifact: a local path, and the URI the lineage names."""

    path: str

    @property
    def uri(self) -> str:
        return self.path


class Pods:
    """One folder per component run. Its inputs are copies of earlier outputs, and every earlier
    folder of the run is moved away (into gone/) before the component starts."""

    KEPT = ("gone", "raw", "serving")  # the raw data and the serving base are parameters, not artifacts

    def __init__(self, root: pathlib.Path):
        self.root, self.gone = root, root / "gone"
        self.gone.mkdir()

    def output(self, name: str) -> pathlib.Path:
        """Where component `name`'s output is now."""
        here = self.root / name / "out"
        return here if here.exists() else self.gone / name / "out"

    def run(self, name: str, inputs: dict, body):
        """body({input name: Artifact}, output Artifact) in a fresh pod; `inputs`: {name: component}."""
        for earlier in self.root.iterdir():
            if earlier.name not in self.KEPT:
                earlier.rename(self.gone / earlier.name)
        pod = self.root / name
        given = {}
        for key, component in inputs.items():
            shutil.copytree(self.output(component), pod / "in" / key)
            given[key] = Artifact(str(pod / "in" / key))
        (pod / "out").mkdir(parents=True)
        return body(given, Artifact(str(pod / "out")))


@pytest.fixture(scope="module")
def pods(tmp_path_factory):
    root = tmp_path_factory.mktemp("pods")
    raw, serving = str(root / "raw"), str(root / "serving")
    aliccp.generate(aliccp.AliccpSynthConfig(rows=1500, seed=9, malformed_rate=0.002), raw, progress=False)
    pods = Pods(root)
    pods.fingerprint = pods.run(
        "example_gen", {}, lambda _, out: kubeflow.example_gen(raw, "aliccp-raw", "in-process", [], out)
    )
    pods.run(
        "transform",
        {"examples": "example_gen"},
        lambda given, out: kubeflow.transform(
            given["examples"], 0, 0.0, json.dumps({"frequency_threshold": 2}), "in-process", [], out
        ),
    )
    pods.run(
        "trainer",
        {"transform_graph": "transform"},
        lambda given, out: kubeflow.trainer(
            given["transform_graph"], json.dumps(TRAINER), "", 0.0, 1, False, serving, "mtrank", out
        ),
    )
    pods.run(
        "reference_trainer",
        {"transform_graph": "transform"},
        lambda given, out: kubeflow.reference_trainer(given["transform_graph"], json.dumps(TRAINER), 1, out),
    )
    pods.verdicts = {}
    for verdict, thresholds in (("blessed", OPEN), ("not_blessed", CLOSED)):
        blessed = pods.run(
            f"evaluator_{verdict}",
            {"model": "trainer", "reference": "reference_trainer", "examples": "example_gen"},
            lambda given, out: kubeflow.evaluator(
                given["model"], given["reference"], given["examples"], json.dumps(thresholds), serving, "mtrank", out
            ),
        )
        version = pods.run(
            f"pusher_{verdict}",
            {
                "model": "trainer",
                "evaluation": f"evaluator_{verdict}",
                "examples": "example_gen",
                "transform_graph": "transform",
            },
            lambda given, out: kubeflow.pusher(
                given["model"],
                given["evaluation"],
                given["examples"],
                given["transform_graph"],
                raw,
                "aliccp-raw",
                pods.fingerprint,
                serving,
                "mtrank",
                0.0,
                0,
                False,
                "in-process",
                [],
                "kubeflow",
                out,
            ),
        )
        record = json.loads((pods.output(f"pusher_{verdict}") / "run.json").read_text())
        pods.verdicts[verdict] = {"blessed": blessed, "version": version, "record": record}
    pods.serving = root / "serving" / "mtrank"
    return pods


def test_every_component_succeeds_with_only_its_declared_inputs(pods):
    assert (pods.output("example_gen") / "stats.json").exists()
    stats = json.loads((pods.output("transform") / "transformed" / "stats.json").read_text())
    assert stats["config"]["preprocessing"] == {"frequency_threshold": 2}  # the pipeline's transform section
    assert not pathlib.Path(stats["config"]["examples"]).exists()  # the folder Transform read is gone
    model = pods.output("trainer") / "model"
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["test"]["rows"] == stats["rows"]["test"] and 0.0 < metrics["test"]["ctr_auc"] < 1.0
    assert (model / "serving" / "saved_model.pb").exists()
    saved = json.loads((pods.output("reference_trainer") / "model" / "config.json").read_text())
    assert saved["trainer"]["model"]["name"] == "logistic"
    # solved with its own settings: the run's batch size (256 here) does not reach it
    assert "training.batch_size" in saved["resolved"]
    for verdict in ("blessed", "not_blessed"):
        evaluated = json.loads((pods.output(f"evaluator_{verdict}") / "evaluation" / "metrics.json").read_text())
        assert evaluated["reference"]["overall"]["rows"] == evaluated["overall"]["rows"]
        lift = evaluated["reference"]["lift"]["ctr_auc"]
        assert lift == pytest.approx(evaluated["overall"]["ctr_auc"] - evaluated["reference"]["overall"]["ctr_auc"])


def test_a_blessed_model_is_pushed_and_recorded(pods):
    blessed = pods.verdicts["blessed"]
    assert blessed["blessed"] is True and blessed["version"] == 1
    record = blessed["record"]
    assert record["lineage"]["blessed"] and record["lineage"]["pushed"]["version"] == 1
    assert record["arguments"]["runner"] == "kubeflow" and record["data"]["fingerprint"] == pods.fingerprint
    assert record["trainer_config"]["training"]["batch_size"] == 256 and record["metrics"]["test"]["rows"] > 0


def test_a_model_below_the_thresholds_is_not_pushed_and_recorded_so(pods):
    refused = pods.verdicts["not_blessed"]
    assert refused["blessed"] is False and refused["version"] == 0
    assert pusher.versions(str(pods.serving)) == [1]  # only the blessed run's version
    record = refused["record"]
    assert record["lineage"]["blessed"] is False and record["lineage"]["pushed"] is None
    assert record["evaluator_config"]["thresholds"]["ctr_auc"] == 0.999
