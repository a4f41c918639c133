"""Offline checks of the Kubernetes manifests under k8s/: no cluster, no network, no TensorFlow.

Every YAML document under k8s/ (kustomization.yaml aside) is a core Kubernetes object, validated
strictly (unknown fields are errors) against the JSON schemas that kubernetes-validate bundles for
one fixed Kubernetes version, or a custom resource (KServe's InferenceService, the Training
Operator's TFJob), checked as far as its CRD allows offline, with its inlined Kubernetes types
validated against the same schemas. TF Serving's config files inside the ConfigMap are parsed as the
text protos they are, the `mtrank` arguments of the CronJob and the TFJob are parsed by the real
command-line parser, and the objects are cross-checked against one another (ports, claims, mounts,
paths, labels, names, images).

`tensorflow_serving.config.model_server_config_pb2` and `mtrank.cli.build_parser` import neither
TensorFlow nor Beam (a test below keeps it so), which keeps this file to about a second of its own.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import zoneinfo

import jsonschema
import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from kubernetes_validate.utils import all_versions, major_minor
from referencing import Registry, Resource
from tensorflow_serving.config import model_server_config_pb2

from mtrank import cli
from serving import config as serving_config

REPO = pathlib.Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"

# One fixed Kubernetes version whose schemas kubernetes-validate bundles (checked below).
K8S_VERSION = "1.33"

# Custom resources: their schemas are not among the bundled ones; checked by the tests further down.
CRD_GROUPS = {"serving.kserve.io", "kubeflow.org"}

MODEL_NAME = "mtrank"

# The project's image (Dockerfile) as the manifests name it: kustomize's `images:` may retag it.
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
IMAGE = f"mtrank:{PYPROJECT['project']['version']}"
IMAGE_UID = 1000  # the Dockerfile's USER (tests/test_dockerfile.py checks that side)


# --- loading --------------------------------------------------------------------------------------


def _manifest_files() -> list[pathlib.Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml")


def _load_documents() -> list[tuple[str, dict]]:
    """(id, document) for every non-empty YAML document under k8s/ but kustomization.yaml."""
    found = []
    for path in _manifest_files():
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is None:
                continue
            assert isinstance(doc, dict), f"{path}: document {index} is not a mapping"
            name = (doc.get("metadata") or {}).get("name")
            found.append((f"{path.relative_to(K8S)}#{index}:{doc.get('kind')}/{name}", doc))
    return found


DOCUMENTS = _load_documents()


def _group(doc: dict) -> str:
    api_version = doc.get("apiVersion", "")
    return api_version.split("/")[0] if "/" in api_version else ""


CORE = [(i, d) for i, d in DOCUMENTS if _group(d) not in CRD_GROUPS]
CUSTOM = [(i, d) for i, d in DOCUMENTS if _group(d) in CRD_GROUPS]


def _one(kind: str, group: str | None = None, folder: str = "tfserving") -> dict:
    """The one object of a kind in k8s/<folder>/ (other folders may hold objects of the same kind)."""
    matches = [
        d
        for i, d in DOCUMENTS
        if i.startswith(folder + "/") and d["kind"] == kind and (group is None or _group(d) == group)
    ]
    assert len(matches) == 1, f"expected one {kind} in k8s/{folder}, found {len(matches)}"
    return matches[0]


def _deployment() -> dict:
    return _one("Deployment", "apps")


def _container() -> dict:
    containers = _deployment()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _args(container: dict) -> dict:
    """{flag: value} of --flag=value arguments; a bare --flag is True."""
    parsed = {}
    for arg in container.get("args", []):
        assert arg.startswith("--"), f"argument {arg!r} is not a --flag"
        name, sep, value = arg[2:].partition("=")
        assert name not in parsed, f"--{name} given twice"
        parsed[name] = value if sep else True
    return parsed


def _config_text(key: str) -> str:
    return _one("ConfigMap")["data"][key]


def _schema_dir() -> pathlib.Path:
    return pathlib.Path(
        str(
            importlib.resources.files("kubernetes_validate").joinpath(
                "kubernetes-json-schema", f"v{K8S_VERSION}.0-local-strict"
            )
        )
    )


@functools.cache
def _definitions() -> dict:
    return json.loads((_schema_dir() / "_definitions.json").read_text())


# --- the schema version and the documents found ----------------------------------------------------


def test_kubernetes_version_is_bundled():
    assert K8S_VERSION in {major_minor(v) for v in all_versions()}
    assert (_schema_dir() / "deployment-apps-v1.json").is_file()


def test_documents_found():
    kinds = {d["kind"] for _, d in DOCUMENTS}
    assert {
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "InferenceService",
        "CronJob",
        "TFJob",
    } <= kinds
    for doc_id, doc in DOCUMENTS:
        name = doc.get("metadata", {}).get("name", "")
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, doc_id


def test_names_are_unique_per_kind():
    keys = [(d["kind"], d["metadata"]["name"]) for _, d in DOCUMENTS]
    assert len(keys) == len(set(keys))


# --- core objects: strict schema validation -------------------------------------------------------


@pytest.mark.parametrize("doc", [d for _, d in CORE], ids=[i for i, _ in CORE])
def test_core_object_validates(doc):
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION


def _misspelled_probe(dep):
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")


def _string_port(dep):
    dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8500"


def _boolean_annotation(dep):
    dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] = True


def _misspelled_spec_field(dep):
    dep["spec"]["replica"] = 2


@pytest.mark.parametrize(
    "breakage, validator, path_tail, words",
    [
        (_misspelled_probe, "additionalProperties", ["containers", 0], "'readinesProbe' was unexpected"),
        (_string_port, "type", ["ports", 0, "containerPort"], "is not of type 'integer'"),
        (_boolean_annotation, "type", ["annotations", "prometheus.io/scrape"], "is not of type 'string'"),
        (_misspelled_spec_field, "additionalProperties", ["spec"], "'replica' was unexpected"),
    ],
    ids=["misspelled-field", "string-containerPort", "boolean-annotation", "misspelled-spec-field"],
)
def test_broken_copy_fails_validation(breakage, validator, path_tail, words):
    """The validation is not vacuous: a broken Deployment fails, at the broken field, for that reason."""
    broken = copy.deepcopy(_deployment())
    breakage(broken)
    with pytest.raises(kubernetes_validate.ValidationError) as caught:
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    error = caught.value
    assert error.validator == validator
    assert list(error.path)[-len(path_tail) :] == path_tail
    assert words in error.message


# --- kustomization --------------------------------------------------------------------------------

KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))

KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "metadata",
    "resources",
    "namespace",
    "namePrefix",
    "nameSuffix",
    "labels",
    "commonLabels",
    "commonAnnotations",
    "images",
    "patches",
    "replicas",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "components",
}


def test_kustomizations_found():
    folders = ("tfserving", "retraining", "training")
    assert {K8S / folder / "kustomization.yaml" for folder in folders} <= set(KUSTOMIZATIONS)


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=[str(p.relative_to(K8S)) for p in KUSTOMIZATIONS])
def test_kustomization_lists_its_folder(path):
    kustomization = yaml.safe_load(path.read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= KUSTOMIZATION_KEYS, set(kustomization) - KUSTOMIZATION_KEYS
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), "a resource is listed twice"
    for resource in resources:
        assert (path.parent / resource).is_file(), f"{path}: {resource} does not exist"
    here = {p.name for p in path.parent.iterdir() if p.suffix in (".yaml", ".yml") and p.name != path.name}
    assert here == set(resources), f"{path}: not listed {here - set(resources)}, missing {set(resources) - here}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=[str(p.relative_to(K8S)) for p in KUSTOMIZATIONS])
def test_kustomize_builds(path):
    """`kubectl kustomize` (offline) builds the folder into exactly its manifests' objects."""
    built = subprocess.run(["kubectl", "kustomize", str(path.parent)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    objects = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(built.stdout) if d)
    folder = sorted(
        (d["kind"], d["metadata"]["name"]) for i, d in DOCUMENTS if (K8S / i.split("#")[0]).parent == path.parent
    )
    assert objects == folder


# --- the KServe InferenceService ------------------------------------------------------------------

# KServe v1beta1: PredictorExtensionSpec's own fields (the rest of a framework spec such as
# `tensorflow` is an inlined core/v1 Container), and PredictorSpec's framework keys and
# ComponentExtensionSpec fields (the rest of a predictor is an inlined core/v1 PodSpec).
KSERVE_EXTENSION_KEYS = {"storageUri", "runtimeVersion", "protocolVersion", "storage"}
KSERVE_PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
KSERVE_FRAMEWORKS = {
    "sklearn",
    "xgboost",
    "tensorflow",
    "pytorch",
    "triton",
    "onnx",
    "huggingface",
    "pmml",
    "lightgbm",
    "paddle",
    "model",
}
KSERVE_COMPONENT_KEYS = {
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
    "storageUris",
    "workerSpec",
}
KSERVE_CONTAINER_NAME = "kserve-container"  # what KServe's defaulting names the predictor container


def _inference_service() -> dict:
    return _one("InferenceService", "serving.kserve.io", folder="kserve")


def _container_validator() -> jsonschema.Draft202012Validator:
    definitions = _definitions()
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": definitions["$id"] + "#/$defs/io.k8s.api.core.v1.Container",
    }
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _container_part(tensorflow: dict) -> dict:
    part = {k: v for k, v in tensorflow.items() if k not in KSERVE_EXTENSION_KEYS}
    part.setdefault("name", KSERVE_CONTAINER_NAME)
    return part


def test_custom_resources_are_known():
    assert sorted((_group(d), d["kind"]) for _, d in CUSTOM) == [
        ("kubeflow.org", "TFJob"),
        ("serving.kserve.io", "InferenceService"),
    ]


def test_inference_service_header():
    isvc = _inference_service()
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert set(isvc) <= {"apiVersion", "kind", "metadata", "spec"}
    # The metadata is an ordinary ObjectMeta: validate it against the core schema.
    definitions = _definitions()
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    meta_schema = {"$ref": definitions["$id"] + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    jsonschema.Draft202012Validator(meta_schema, registry=registry).validate(isvc["metadata"])
    assert set(isvc["spec"]) <= {"predictor", "transformer", "explainer"}


def test_inference_service_predictor():
    """The predictor's keys against KServe v1beta1's PredictorSpec and PredictorExtensionSpec, and the
    container-like part of `tensorflow` (all but the KServe-only keys) against core/v1 Container.

    This is as far as offline validation of a CRD goes without vendoring KServe's CRD: field names
    and the inlined Kubernetes types are checked; KServe's own defaulting and webhook rules are not.
    """
    predictor = _inference_service()["spec"]["predictor"]
    pod_spec_keys = set(_definitions()["$defs"]["io.k8s.api.core.v1.PodSpec"]["properties"])
    unknown = set(predictor) - KSERVE_FRAMEWORKS - KSERVE_COMPONENT_KEYS - pod_spec_keys
    assert not unknown, f"unknown predictor keys {unknown}"
    assert [k for k in predictor if k in KSERVE_FRAMEWORKS] == ["tensorflow"]
    assert isinstance(predictor["minReplicas"], int) and isinstance(predictor["maxReplicas"], int)
    hpa = _one("HorizontalPodAutoscaler")["spec"]  # KServe scales like the plain Deployment's HPA
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (hpa["minReplicas"], hpa["maxReplicas"])

    tensorflow = predictor["tensorflow"]
    assert isinstance(tensorflow["storageUri"], str)
    assert isinstance(tensorflow["runtimeVersion"], str), "quote the runtimeVersion: YAML reads 2.21 as a number"
    assert tensorflow.get("protocolVersion", "v1") in KSERVE_PROTOCOLS
    container_keys = set(_definitions()["$defs"]["io.k8s.api.core.v1.Container"]["properties"])
    assert set(tensorflow) - KSERVE_EXTENSION_KEYS <= container_keys
    _container_validator().validate(_container_part(tensorflow))
    assert "resources" in tensorflow


@pytest.mark.parametrize(
    "breakage, words",
    [
        (lambda t: t.__setitem__("resource", t.pop("resources")), "'resource' was unexpected"),
        (lambda t: t["resources"].__setitem__("limits", ["2"]), "is not of type 'object'"),
    ],
    ids=["misspelled-resources", "limits-as-list"],
)
def test_broken_predictor_container_fails(breakage, words):
    tensorflow = copy.deepcopy(_inference_service()["spec"]["predictor"]["tensorflow"])
    breakage(tensorflow)
    with pytest.raises(jsonschema.ValidationError) as caught:
        _container_validator().validate(_container_part(tensorflow))
    assert words in caught.value.message


# --- TF Serving's config files --------------------------------------------------------------------


def _model_server_config() -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(_config_text("models.config"), model_server_config_pb2.ModelServerConfig())


def test_proto_module_does_not_import_tensorflow():
    code = (
        "import sys; import tensorflow_serving.config.model_server_config_pb2; "
        "from mtrank import cli; cli.build_parser(); "
        "sys.exit(bool({'tensorflow', 'apache_beam', 'keras'} & set(sys.modules)))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0


def test_models_config():
    config = _model_server_config()
    assert config.WhichOneof("config") == "model_config_list"
    (model,) = config.model_config_list.config
    assert model.name == MODEL_NAME
    assert model.base_path == f"/models/{MODEL_NAME}"
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 2
    assert not model.version_labels, "labels must name loaded versions; keep them as a comment"


def test_models_config_label_example_parses():
    """The commented version_labels example is valid once uncommented."""
    text = _config_text("models.config")
    examples = re.findall(r"^\s*#\s*(version_labels\s*\{.*\})\s*$", text, flags=re.M)
    assert examples, "models.config lost its commented version_labels example"
    uncommented = text.replace('model_platform: "tensorflow"', 'model_platform: "tensorflow"\n' + "\n".join(examples))
    (model,) = text_format.Parse(uncommented, model_server_config_pb2.ModelServerConfig()).model_config_list.config
    assert len(model.version_labels) == len(examples)


def test_models_config_typo_fails():
    text = _config_text("models.config").replace("base_path:", "base_pth:")
    with pytest.raises(text_format.ParseError, match="base_pth"):
        text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


class ProtoTextError(ValueError):
    pass


_TOKEN = re.compile(r'\s+|#[^\n]*|(?P<tok>[{}:\[\],]|"(?:[^"\\]|\\.)*"|[A-Za-z0-9_.+-]+)')


def _tokens(text: str) -> list[str]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            raise ProtoTextError(f"cannot read {text[position : position + 20]!r}")
        if match.group("tok"):
            tokens.append(match.group("tok"))
        position = match.end()
    return tokens


def _scalar(token: str, kind: type, where: str):
    if kind is bool:
        if token not in ("true", "false"):
            raise ProtoTextError(f"{where}: expected true or false, got {token!r}")
        return token == "true"
    if kind is int:
        if not re.fullmatch(r"-?\d+", token):
            raise ProtoTextError(f"{where}: expected an integer, got {token!r}")
        return int(token)
    if not (token.startswith('"') and token.endswith('"') and len(token) >= 2):
        raise ProtoTextError(f"{where}: expected a quoted string, got {token!r}")
    return token[1:-1]


def parse_proto_text(text: str, schema: dict) -> dict:
    """A strict reader of the protobuf text format's `name { ... }` and `name: value` entries for a
    message described by `schema` ({field: int | bool | str | [scalar type] | {nested schema}}).
    Unknown fields, a scalar where a message belongs (or the reverse), a wrong value type and a
    repeated singular field are errors."""
    tokens = _tokens(text)
    position = 0

    def take() -> str:
        nonlocal position
        if position >= len(tokens):
            raise ProtoTextError("unexpected end of text")
        position += 1
        return tokens[position - 1]

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def message(fields: dict, where: str, closing: str | None) -> dict:
        values: dict = {}
        while peek() != closing:
            name = take()
            here = f"{where}{name}"
            if name not in fields:
                raise ProtoTextError(f"unknown field {here!r}")
            spec = fields[name]
            colon = peek() == ":"
            if colon:
                take()
            if isinstance(spec, dict):
                if take() != "{":
                    raise ProtoTextError(f"{here} is a message: write {name} {{ ... }}")
                value = message(spec, here + ".", "}")
                take()
            elif not colon:
                raise ProtoTextError(f"{here} is a scalar: write {name}: value")
            elif isinstance(spec, list):
                if peek() == "[":
                    take()
                    value = []
                    while peek() != "]":
                        value.append(_scalar(take(), spec[0], here))
                        if peek() == ",":
                            take()
                    take()
                else:
                    value = [_scalar(take(), spec[0], here)]
                values.setdefault(name, [])
                values[name] += value
                continue
            else:
                value = _scalar(take(), spec, here)
            if name in values:
                raise ProtoTextError(f"{here} given twice")
            values[name] = value
        return values

    return message(schema, "", None)


# tensorflow_serving/servables/tensorflow/session_bundle_config.proto: BatchingParameters, whose
# numbers are google.protobuf wrappers (`name { value: N }`).
_INT64_VALUE = {"value": int}
BATCHING_SCHEMA = {
    "max_batch_size": _INT64_VALUE,
    "batch_timeout_micros": _INT64_VALUE,
    "max_enqueued_batches": _INT64_VALUE,
    "num_batch_threads": _INT64_VALUE,
    "thread_pool_name": {"value": str},
    "allowed_batch_sizes": [int],
    "pad_variable_length_inputs": bool,
    "enable_large_batch_splitting": bool,
    "max_execution_batch_size": _INT64_VALUE,
}
# tensorflow_serving/config/monitoring_config.proto: MonitoringConfig.
MONITORING_SCHEMA = {"prometheus_config": {"enable": bool, "path": str}}


def test_batching_config():
    batching = parse_proto_text(_config_text("batching.config"), BATCHING_SCHEMA)
    assert batching["max_batch_size"]["value"] >= 1
    assert batching["batch_timeout_micros"]["value"] >= 0
    assert batching["num_batch_threads"]["value"] >= 1
    assert batching["max_enqueued_batches"]["value"] >= 1
    assert "pad_variable_length_inputs" not in batching, "TF Serving's padding would change bag scores"
    local = serving_config.parse_batching_parameters(_config_text("batching.config"))  # `mtrank serve` reads it too
    assert local["max_request_rows"] >= 1000, "`mtrank score` sends 1,000-row requests"
    assert local["max_batch_size"] == batching["max_execution_batch_size"]["value"]
    sizes = batching.get("allowed_batch_sizes")
    if sizes:
        assert sizes == sorted(sizes) and sizes[-1] == batching["max_batch_size"]["value"]


def test_monitoring_config():
    monitoring = parse_proto_text(_config_text("monitoring.config"), MONITORING_SCHEMA)
    assert monitoring == {"prometheus_config": {"enable": True, "path": "/monitoring/prometheus/metrics"}}


@pytest.mark.parametrize(
    "key, schema, old, new, words",
    [
        ("batching.config", BATCHING_SCHEMA, "max_batch_size {", "max_batch_sise {", "unknown field 'max_batch_sise'"),
        (
            "batching.config",
            BATCHING_SCHEMA,
            "{ value: 4096 }",
            "{ valeu: 4096 }",
            "unknown field 'max_batch_size.valeu'",
        ),
        ("batching.config", BATCHING_SCHEMA, "max_batch_size { value: 4096 }", "max_batch_size: 4096", "is a message"),
        (
            "batching.config",
            BATCHING_SCHEMA,
            "enable_large_batch_splitting: true",
            "enable_large_batch_splitting: yes",
            "expected true or false",
        ),
        (
            "batching.config",
            BATCHING_SCHEMA,
            "num_batch_threads { value: 2 }",
            "num_batch_threads { value: 2 }\nnum_batch_threads { value: 4 }",
            "given twice",
        ),
        (
            "monitoring.config",
            MONITORING_SCHEMA,
            "enable: true",
            "enabled: true",
            "unknown field 'prometheus_config.enabled'",
        ),
        (
            "monitoring.config",
            MONITORING_SCHEMA,
            '"/monitoring/prometheus/metrics"',
            "metrics",
            "expected a quoted string",
        ),
    ],
    ids=["field", "wrapper-field", "scalar-for-message", "bool", "twice", "monitoring-field", "unquoted"],
)
def test_proto_text_typo_fails(key, schema, old, new, words):
    text = _config_text(key)
    assert old in text
    with pytest.raises(ProtoTextError, match=re.escape(words)):
        parse_proto_text(text.replace(old, new, 1), schema)


# --- cross-checks ---------------------------------------------------------------------------------


def _port_number(container: dict, port) -> int:
    """A probe's or Service's target port (number or name) as the container's port number."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in by_name, f"port name {port!r} is not one of the container's {sorted(by_name)}"
    return by_name[port]


def _mounts(container: dict) -> dict:
    return {m["name"]: m for m in container.get("volumeMounts", [])}


def _volumes() -> dict:
    return {v["name"]: v for v in _deployment()["spec"]["template"]["spec"]["volumes"]}


def test_server_arguments():
    container = _container()
    args = _args(container)
    assert container["command"] == ["/usr/bin/tensorflow_model_server"]
    assert args["port"] == "8500" and args["rest_api_port"] == "8501"
    assert args["model_config_file_poll_wait_seconds"] == "60"
    assert args["file_system_poll_wait_seconds"] == "10"
    assert args["enable_batching"] is True
    assert {"model_config_file", "batching_parameters_file", "monitoring_config_file"} <= set(args)
    assert "model_name" not in args and "model_base_path" not in args, "the model comes from models.config"


def test_container_ports_match_arguments():
    container = _container()
    args = _args(container)
    assert _port_number(container, "grpc") == int(args["port"])
    assert _port_number(container, "http") == int(args["rest_api_port"])


def test_probes_query_the_model_on_the_rest_port():
    container = _container()
    rest_port = int(_args(container)["rest_api_port"])
    (model,) = _model_server_config().model_config_list.config
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert _port_number(container, get["port"]) == rest_port, probe
        assert get["path"].startswith(f"/v1/models/{model.name}"), probe
    # Ready only once a version is AVAILABLE: the metadata call needs a loaded version.
    assert container["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{model.name}/metadata"


def test_config_files_come_from_the_config_map():
    container = _container()
    args = _args(container)
    config_map = _one("ConfigMap")
    (volume,) = [v for v in _volumes().values() if "configMap" in v]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    mount = _mounts(container)[volume["name"]]
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        path = pathlib.PurePosixPath(args[flag])
        assert str(path.parent) == mount["mountPath"], flag
        assert path.name in config_map["data"], flag


def test_model_volume_is_the_claim():
    container = _container()
    claim = _one("PersistentVolumeClaim")
    (volume,) = [v for v in _volumes().values() if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert volume["persistentVolumeClaim"].get("readOnly") is True
    mount = _mounts(container)[volume["name"]]
    assert mount.get("readOnly") is True
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (model,) = _model_server_config().model_config_list.config
    base = pathlib.PurePosixPath(model.base_path)
    assert base.is_relative_to(mount["mountPath"]) and base != pathlib.PurePosixPath(mount["mountPath"])


def test_labels_and_selectors_match():
    deployment = _deployment()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert set(deployment["spec"]["selector"]) == {"matchLabels"}
    service = _one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_service_targets_the_server_ports():
    container = _container()
    args = _args(container)
    service = _one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"grpc", "http"}
    assert ports["grpc"]["port"] == 8500 and ports["http"]["port"] == 8501
    assert _port_number(container, ports["grpc"]["targetPort"]) == int(args["port"])
    assert _port_number(container, ports["http"]["targetPort"]) == int(args["rest_api_port"])


def test_prometheus_annotations():
    container = _container()
    annotations = _deployment()["spec"]["template"]["metadata"]["annotations"]
    monitoring = parse_proto_text(_config_text("monitoring.config"), MONITORING_SCHEMA)
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == int(_args(container)["rest_api_port"])
    assert annotations["prometheus.io/path"] == monitoring["prometheus_config"]["path"]


def test_autoscaler_targets_the_deployment():
    hpa = _one("HorizontalPodAutoscaler")
    deployment = _deployment()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0
    # Utilisation is measured against the request, and a fixed replica count would fight the HPA.
    assert "cpu" in _container()["resources"]["requests"]
    assert "replicas" not in deployment["spec"]


def _tensorflow_version() -> str:
    lock = (REPO / "requirements.lock").read_text()
    match = re.search(r"^tensorflow==(\d+\.\d+)\.", lock, flags=re.M)
    assert match, "tensorflow is not pinned in requirements.lock"
    return match.group(1)


def test_serving_images_match_tensorflow():
    """TF Serving must be at least the TensorFlow that exports the SavedModels; both manifests pin the
    same TF Serving, of the TensorFlow minor version in requirements.lock."""
    image, _, tag = _container()["image"].partition(":")
    assert image == "tensorflow/serving"
    runtime_version = _inference_service()["spec"]["predictor"]["tensorflow"]["runtimeVersion"]
    assert tag == runtime_version
    assert major_minor(tag) == _tensorflow_version()


def test_inference_service_uses_the_same_model_folder():
    """KServe mounts pvc://<claim>/<folder> at /mnt/models and names the model after the
    InferenceService: the same claim and folder as the Deployment's, and the same model name."""
    isvc = _inference_service()
    uri = isvc["spec"]["predictor"]["tensorflow"]["storageUri"]
    match = re.fullmatch(r"pvc://([a-z0-9-]+)/(.+?)/?", uri)
    assert match, f"{uri} is not pvc://<claim>/<folder>"
    claim, folder = match.groups()
    assert claim == _one("PersistentVolumeClaim")["metadata"]["name"]
    (volume,) = [v for v in _volumes().values() if "persistentVolumeClaim" in v]
    mount_path = _mounts(_container())[volume["name"]]["mountPath"]
    (model,) = _model_server_config().model_config_list.config
    assert pathlib.PurePosixPath(mount_path, folder) == pathlib.PurePosixPath(model.base_path)
    assert isvc["metadata"]["name"] == model.name


# --- every pod template: volumes, claims, the project's image ---------------------------------------


def _pod_templates() -> list[tuple[str, dict]]:
    """(where, pod template) of every workload under k8s/ (custom resources included)."""
    found = []
    for doc_id, doc in DOCUMENTS:
        kind, spec = doc["kind"], doc.get("spec", {})
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            found.append((doc_id, spec["template"]))
        elif kind == "CronJob":
            found.append((doc_id, spec["jobTemplate"]["spec"]["template"]))
        elif kind == "TFJob":
            found += [(f"{doc_id}/{rtype}", replica["template"]) for rtype, replica in spec["tfReplicaSpecs"].items()]
    return found


POD_TEMPLATES = _pod_templates()


def _claims() -> dict:
    return {d["metadata"]["name"]: d for _, d in DOCUMENTS if d["kind"] == "PersistentVolumeClaim"}


def _pod_volumes(template: dict) -> dict:
    return {v["name"]: v for v in template["spec"].get("volumes", [])}


def _check_pod_volumes(template: dict) -> None:
    volumes = _pod_volumes(template)
    assert len(volumes) == len(template["spec"].get("volumes", [])), "a volume name is used twice"
    mounted = set()
    for container in template["spec"]["containers"] + template["spec"].get("initContainers", []):
        paths = [m["mountPath"] for m in container.get("volumeMounts", [])]
        assert len(paths) == len(set(paths)), f"{container['name']}: a mount path is used twice"
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, (
                f"{container['name']} mounts {mount['name']!r}, which is not a volume of the pod"
            )
            mounted.add(mount["name"])
            claim = volumes[mount["name"]].get("persistentVolumeClaim")
            if claim and claim.get("readOnly"):
                assert mount.get("readOnly") is True, (
                    f"{mount['name']}: the claim is read-only, say so at the mount too"
                )
    assert mounted == set(volumes), f"volumes never mounted: {set(volumes) - mounted}"
    for volume in volumes.values():
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in _claims(), (
                f"claim {volume['persistentVolumeClaim']['claimName']!r} is not among the manifests"
            )


def test_pod_templates_found():
    kinds = [where.split("#")[1].split(":")[1].split("/")[0] for where, _ in POD_TEMPLATES]
    assert sorted(kinds) == ["CronJob", "Deployment", "TFJob", "TFJob"]


@pytest.mark.parametrize("template", [t for _, t in POD_TEMPLATES], ids=[w for w, _ in POD_TEMPLATES])
def test_mounts_reference_declared_volumes_and_claims(template):
    _check_pod_volumes(template)


@pytest.mark.parametrize(
    "breakage, words",
    [
        (lambda spec: spec["containers"][0]["volumeMounts"][0].__setitem__("name", "modles"), "which is not a volume"),
        (
            lambda spec: spec["volumes"][0]["persistentVolumeClaim"].__setitem__("claimName", "mtrank-model"),
            "is not among the manifests",
        ),
        (lambda spec: spec["containers"][0]["volumeMounts"].pop(0), "never mounted"),
    ],
    ids=["unknown-volume", "unknown-claim", "unmounted-volume"],
)
def test_broken_mounts_fail(breakage, words):
    template = copy.deepcopy(_cronjob()["spec"]["jobTemplate"]["spec"]["template"])
    breakage(template["spec"])
    with pytest.raises(AssertionError, match=words):
        _check_pod_volumes(template)


def test_claims_shared_across_nodes_are_read_write_many():
    """A claim that pods of more than one replica or workload mount at once must be ReadWriteMany:
    a ReadWriteOnce volume attaches to one node, and a second pod elsewhere never starts."""
    users: dict[str, int] = {}
    for where, template in POD_TEMPLATES:
        doc = next(d for i, d in DOCUMENTS if where.startswith(i))
        if doc["kind"] == "TFJob":
            replicas = doc["spec"]["tfReplicaSpecs"][where.rsplit("/", 1)[1]].get("replicas", 1)
        elif doc["kind"] == "Deployment":
            replicas = doc["spec"].get("replicas", 2)  # the HPA's minimum
        else:
            replicas = 1
        for volume in _pod_volumes(template).values():
            if "persistentVolumeClaim" in volume:
                name = volume["persistentVolumeClaim"]["claimName"]
                users[name] = users.get(name, 0) + replicas
    assert set(users) == set(_claims()), f"claims no workload mounts: {set(_claims()) - set(users)}"
    for name, count in users.items():
        if count > 1:
            assert _claims()[name]["spec"]["accessModes"] == ["ReadWriteMany"], name


def _mtrank_containers() -> list[tuple[str, dict]]:
    return [
        (where, c)
        for where, t in POD_TEMPLATES
        for c in t["spec"]["containers"]
        if not c["image"].startswith("tensorflow/serving:")
    ]


def test_project_image_everywhere():
    """Every container but TF Serving's runs the project's image, tagged with pyproject's version, as
    the Dockerfile's uid, non-root."""
    found = _mtrank_containers()
    assert len(found) == 3
    for where, container in found:
        assert container["image"] == IMAGE, where
        assert container.get("imagePullPolicy") == "IfNotPresent", (
            f"{where}: a versioned tag needs no re-pull, and an image loaded into the node is used as it is"
        )
    for where, template in POD_TEMPLATES:
        security = template["spec"].get("securityContext", {})
        assert security.get("runAsNonRoot") is True, where
        assert security.get("runAsUser") == IMAGE_UID, where
        writes = any(
            not m.get("readOnly") and "persistentVolumeClaim" in _pod_volumes(template)[m["name"]]
            for c in template["spec"]["containers"]
            for m in c.get("volumeMounts", [])
        )
        if writes:
            assert security.get("fsGroup") == IMAGE_UID, f"{where}: writes a claim, so the volume must be its group's"


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' expansion of $(VAR) in a container's args: a defined VAR is replaced, $$ escapes,
    an undefined reference is left as it stands."""

    def one(text: str) -> str:
        return re.sub(
            r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
            lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
            text,
        )

    return [one(a) for a in args]


def _parse_mtrank(container: dict, env_values: dict[str, str] | None = None):
    """The container's arguments, expanded as Kubernetes would, through `mtrank`'s own parser."""
    assert "command" not in container, "the image's ENTRYPOINT is mtrank; give only args"
    env = {e["name"]: (env_values or {}).get(e["name"], e.get("value", "")) for e in container.get("env", [])}
    args = _expand(container["args"], env)
    unresolved = [a for a in args if re.search(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", a)]
    assert not unresolved, f"{unresolved}: no such env var, Kubernetes would pass it literally"
    try:
        return cli.build_parser().parse_args(args)
    except cli.UsageError as e:
        raise AssertionError(f"mtrank rejects {args}: {e}") from None


def _under(path: str, mount: dict) -> bool:
    return pathlib.PurePosixPath(path).is_relative_to(mount["mountPath"])


# --- the retraining CronJob ------------------------------------------------------------------------


def _cronjob() -> dict:
    return _one("CronJob", "batch", folder="retraining")


def _cron_pod(cronjob: dict) -> dict:
    return cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]


RUN_ID = "mtrank-retrain-29000000"  # what the Job controller's label holds: <CronJob>-<minutes since the epoch>
PER_RUN_FIELDS = {
    "metadata.labels['batch.kubernetes.io/job-name']",
    "metadata.labels['job-name']",
    "metadata.name",
    "metadata.uid",
}


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())  # empty without tz data: the zone is then not checked


def _check_cronjob(cronjob: dict):
    """The CronJob's own rules; returns its parsed `mtrank` arguments."""
    spec = cronjob["spec"]
    fields = spec["schedule"].split()
    assert len(fields) == 5, f"{spec['schedule']!r}: Kubernetes cron has five fields (KFP's has six, seconds first)"
    minute, hour, *rest = fields
    assert (minute, hour, rest) == ("0", "2", ["*", "*", "*"]), "daily at 02:00"
    zones = _time_zones()
    assert not zones or spec.get("timeZone") in zones, f"unknown timeZone {spec.get('timeZone')!r}"
    assert spec["concurrencyPolicy"] == "Forbid"
    # Small: a missed run is skipped, not caught up hours later; at least the controller's 10 s period.
    assert 10 <= spec["startingDeadlineSeconds"] <= 3600
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert 0 <= job["backoffLimit"] <= 5
    assert job["activeDeadlineSeconds"] < 24 * 3600, "a stuck run would block every later one (Forbid)"
    pod = _cron_pod(cronjob)
    (container,) = pod["containers"]
    if "podFailurePolicy" in job:
        assert pod["restartPolicy"] == "Never", "podFailurePolicy needs restartPolicy Never"
        for rule in job["podFailurePolicy"]["rules"]:
            if "onExitCodes" in rule:
                assert rule["onExitCodes"].get("containerName") in (None, container["name"])
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    assert container["image"] == IMAGE

    env = {e["name"]: e for e in container.get("env", [])}
    assert "RUN_ID" in env, "each run needs its own --output folder"
    assert env["RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"] in PER_RUN_FIELDS
    args = _parse_mtrank(container, {"RUN_ID": RUN_ID})
    assert args.command == "run"
    output = container["args"][container["args"].index("--output") + 1]
    assert "$(RUN_ID)" in output, f"--output {output}: the same folder for every run"
    assert (args.format, args.no_serve, args.warm_start) == ("aliccp-raw", True, True)
    assert args.data is not None, "without --data the run trains on synthetic data"

    volumes, mounts = _pod_volumes({"spec": pod}), _mounts(container)
    by_path = sorted(((m["mountPath"], m) for m in mounts.values()), key=lambda pm: -len(pm[0]))

    def mount_of(path: str) -> dict:
        found = [m for p, m in by_path if _under(path, m)]
        assert found, f"{path} is on no mounted volume: it would be lost with the pod"
        return found[0]

    data, models, runs = mount_of(args.data), mount_of(args.serving_base), mount_of(args.output)
    assert len({data["name"], models["name"], runs["name"]}) == 3
    assert data.get("readOnly") is True, "the job never writes its input"
    assert not models.get("readOnly") and not runs.get("readOnly"), "the Pusher and the run write there"
    assert args.output != runs["mountPath"], "the run's folder, not the whole volume"
    for mount in (data, models, runs):
        assert "subPath" not in mount
        assert "persistentVolumeClaim" in volumes[mount["name"]], f"{mount['name']} must outlive the pod"
    return args


def test_cronjob():
    _check_cronjob(_cronjob())


def test_cronjob_runs_get_their_own_folders():
    """Two runs (two Jobs) write two folders: --output depends on RUN_ID."""
    container = _cron_pod(_cronjob())["containers"][0]
    outputs = {_parse_mtrank(container, {"RUN_ID": run}).output for run in (RUN_ID, "mtrank-retrain-29001440")}
    assert len(outputs) == 2


def test_cronjob_pushes_where_tf_serving_reads():
    """The Pusher writes <serving-base>/<model-name>/<version>/ on the claim TF Serving mounts, at the
    place in that claim where models.config's base_path looks."""
    cronjob = _cronjob()
    pod = _cron_pod(cronjob)
    args = _parse_mtrank(pod["containers"][0], {"RUN_ID": RUN_ID})
    cron_mount = next(m for m in _mounts(pod["containers"][0]).values() if _under(args.serving_base, m))
    cron_claim = _pod_volumes({"spec": pod})[cron_mount["name"]]["persistentVolumeClaim"]["claimName"]
    (serving_volume,) = [v for v in _volumes().values() if "persistentVolumeClaim" in v]
    serving_mount = _mounts(_container())[serving_volume["name"]]
    assert cron_claim == serving_volume["persistentVolumeClaim"]["claimName"]
    (model,) = _model_server_config().model_config_list.config
    pushed = pathlib.PurePosixPath(args.serving_base, args.model_name).relative_to(cron_mount["mountPath"])
    served = pathlib.PurePosixPath(model.base_path).relative_to(serving_mount["mountPath"])
    assert pushed == served
    assert args.model_name == model.name


def test_cronjob_resources():
    container = _cron_pod(_cronjob())["containers"][0]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert float(requests["cpu"]) >= 2
    assert requests["memory"] == limits["memory"], "a long job should not be evicted for memory the node overcommitted"
    assert float(limits["cpu"]) >= float(requests["cpu"])


def _without(path: list, key: str):
    def breakage(doc):
        node = doc
        for step in path:
            node = node[step]
        node.pop(key)

    return breakage


def _set(path: list, value):
    def breakage(doc):
        node = doc
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return breakage


_CRON_CONTAINER = ["spec", "jobTemplate", "spec", "template", "spec", "containers", 0]


@pytest.mark.parametrize(
    "breakage, words",
    [
        (_set(["spec", "schedule"], "0 0 2 * * *"), "five fields"),
        (_set(["spec", "concurrencyPolicy"], "Allow"), "Forbid"),
        (_without(_CRON_CONTAINER, "env"), "RUN_ID"),
        (_set(_CRON_CONTAINER + ["env", 0, "name"], "RUNID"), "RUN_ID"),
        (_set(_CRON_CONTAINER + ["args", 6], "/runs/$(RUNID)"), "no such env var"),
        (_set(_CRON_CONTAINER + ["args", 6], "/runs/latest"), "the same folder for every run"),
        (_set(_CRON_CONTAINER + ["args", 10], "--warmstart"), "mtrank rejects"),
        (_set(_CRON_CONTAINER + ["args", 8], "runs/serving"), "on no mounted volume"),
        (_set(_CRON_CONTAINER + ["volumeMounts", 0, "readOnly"], False), "never writes its input"),
    ],
    ids=[
        "kfp-cron",
        "allow",
        "no-env",
        "env-renamed",
        "undefined-var",
        "fixed-output",
        "misspelled-flag",
        "unmounted-serving-base",
        "writable-data",
    ],
)
def test_broken_cronjob_fails(breakage, words):
    broken = copy.deepcopy(_cronjob())
    breakage(broken)
    with pytest.raises(AssertionError, match=words):
        _check_cronjob(broken)


@pytest.mark.parametrize(
    "breakage, words",
    [
        (_set(["spec", "concurrencypolicy"], "Forbid"), "'concurrencypolicy' was unexpected"),
        (_set(["spec", "startingDeadlineSeconds"], "600"), "is not of type 'integer'"),
        (_set(_CRON_CONTAINER + ["env", 0, "valueFrom", "fieldRef", "path"], "metadata.name"), "'path' was unexpected"),
    ],
    ids=["misspelled-field", "string-deadline", "misspelled-fieldRef"],
)
def test_broken_cronjob_fails_validation(breakage, words):
    broken = copy.deepcopy(_cronjob())
    breakage(broken)
    with pytest.raises(kubernetes_validate.ValidationError, match=re.escape(words)):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


# --- the TFJob (Kubeflow Training Operator, kubeflow.org/v1) ---------------------------------------

# The Training Operator's kubeflow.org/v1 types (not vendored): TFJobSpec, RunPolicy, ReplicaSpec.
TFJOB_SPEC_KEYS = {"runPolicy", "successPolicy", "tfReplicaSpecs", "enableDynamicWorker"}
RUN_POLICY_KEYS = {
    "cleanPodPolicy",
    "ttlSecondsAfterFinished",
    "activeDeadlineSeconds",
    "backoffLimit",
    "schedulingPolicy",
    "suspend",
    "managedBy",
}
CLEAN_POD_POLICIES = {"All", "Running", "None"}
REPLICA_SPEC_KEYS = {"replicas", "template", "restartPolicy"}
RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}
TF_CONTAINER = "tensorflow"  # the operator sets TF_CONFIG in, and takes the port of, this container
TF_PORT_NAME = "tfjob-port"


def _tfjob() -> dict:
    return _one("TFJob", "kubeflow.org", folder="training")


@functools.cache
def _core_validator(definition: str) -> jsonschema.Draft202012Validator:
    """A strict validator (the bundled *-strict schemas forbid unknown fields) for one core type."""
    definitions = _definitions()
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator({"$ref": definitions["$id"] + "#/$defs/" + definition}, registry=registry)


def _check_tfjob(tfjob: dict) -> dict:
    """The TFJob against the operator's types and its validation; returns {replica type: parsed args}."""
    assert tfjob["apiVersion"] == "kubeflow.org/v1" and tfjob["kind"] == "TFJob"
    assert set(tfjob) <= {"apiVersion", "kind", "metadata", "spec"}
    _core_validator("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta").validate(tfjob["metadata"])
    # The operator's own rule: a TFJob's name is a DNS-1035 label.
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", tfjob["metadata"]["name"]), "name is not a DNS-1035 label"
    spec = tfjob["spec"]
    assert set(spec) <= TFJOB_SPEC_KEYS, f"unknown TFJob spec keys {set(spec) - TFJOB_SPEC_KEYS}"
    run_policy = spec["runPolicy"]
    assert set(run_policy) <= RUN_POLICY_KEYS, f"unknown runPolicy keys {set(run_policy) - RUN_POLICY_KEYS}"
    assert run_policy["cleanPodPolicy"] in CLEAN_POD_POLICIES, f"cleanPodPolicy {run_policy['cleanPodPolicy']!r}"
    assert isinstance(run_policy["backoffLimit"], int) and run_policy["backoffLimit"] >= 1
    assert spec.get("successPolicy", "") in ("", "AllWorkers")

    replicas = spec["tfReplicaSpecs"]
    assert list(replicas) == ["Chief", "Worker"], f"replica types {list(replicas)}: expected Chief and Worker"
    parsed = {}
    for rtype, replica in replicas.items():
        assert set(replica) <= REPLICA_SPEC_KEYS, f"{rtype}: unknown keys {set(replica) - REPLICA_SPEC_KEYS}"
        assert isinstance(replica["replicas"], int), rtype
        assert replica["restartPolicy"] in RESTART_POLICIES, f"{rtype}: restartPolicy {replica['restartPolicy']!r}"
        template = replica["template"]
        _core_validator("io.k8s.api.core.v1.PodTemplateSpec").validate(template)
        pod = template["spec"]
        assert "restartPolicy" not in pod, f"{rtype}: the replica's restartPolicy overrides the pod's; set it there"
        named = [c for c in pod["containers"] if c["name"] == TF_CONTAINER]
        assert len(named) == 1, f"{rtype}: needs one container named {TF_CONTAINER!r}"
        (container,) = named
        assert container["image"] == IMAGE, f"{rtype}: image {container['image']}"
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        assert TF_PORT_NAME in ports, f"{rtype}: the operator puts the port named {TF_PORT_NAME!r} in TF_CONFIG"
        _check_pod_volumes(template)
        args = _parse_mtrank(container)
        assert args.command == "train", f"{rtype}: {args.command}"
        for path in (args.transformed, args.output or args.transformed):
            assert any(
                _under(path, m) and "persistentVolumeClaim" in _pod_volumes(template)[m["name"]]
                for m in _mounts(container).values()
            ), f"{rtype}: {path} is on no claim"
        parsed[rtype] = args
    assert replicas["Chief"]["replicas"] == 1, "one chief"
    assert replicas["Worker"]["replicas"] >= 1, "with no worker the chief trains alone, not multi-worker"
    return parsed


def test_tfjob():
    _check_tfjob(_tfjob())


def test_tfjob_policies():
    spec = _tfjob()["spec"]
    assert spec["runPolicy"]["cleanPodPolicy"] in ("None", "Running"), "keep finished pods for their logs"
    assert {r["restartPolicy"] for r in spec["tfReplicaSpecs"].values()} == {"OnFailure"}


def test_tfjob_replicas_run_the_same_program():
    """MultiWorkerMirroredStrategy runs one program on every replica: the same image, arguments,
    resources, mounts and volumes; only the pod labels differ."""
    chief, worker = (r["template"]["spec"] for r in _tfjob()["spec"]["tfReplicaSpecs"].values())
    assert chief == worker


def test_tfjob_trains_on_the_runs_claim():
    """The replicas read Transform's output from, and write the model to, the claim where the
    retraining runs write theirs, mounted at the same path (so /runs/<run> names the same folder)."""
    chief = _tfjob()["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]
    (volume,) = chief["volumes"]
    (mount,) = chief["containers"][0]["volumeMounts"]
    cron = _cron_pod(_cronjob())
    output = _parse_mtrank(cron["containers"][0], {"RUN_ID": RUN_ID}).output
    cron_mount = next(m for m in _mounts(cron["containers"][0]).values() if _under(output, m))
    cron_volume = _pod_volumes({"spec": cron})[cron_mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == cron_volume["persistentVolumeClaim"]["claimName"]
    assert mount["mountPath"] == cron_mount["mountPath"] and not mount.get("readOnly")


_CHIEF = ["spec", "tfReplicaSpecs", "Chief"]
_CHIEF_CONTAINER = _CHIEF + ["template", "spec", "containers", 0]


def _rename_replica(old: str, new: str):
    def breakage(doc):
        specs = doc["spec"]["tfReplicaSpecs"]
        doc["spec"]["tfReplicaSpecs"] = {new if k == old else k: v for k, v in specs.items()}

    return breakage


@pytest.mark.parametrize(
    "breakage, error, words",
    [
        (_rename_replica("Chief", "Chef"), AssertionError, "expected Chief and Worker"),
        (_set(_CHIEF + ["restartPolicy"], "Sometimes"), AssertionError, "restartPolicy 'Sometimes'"),
        (_set(_CHIEF + ["replica"], 1), AssertionError, "unknown keys {'replica'}"),
        (_set(_CHIEF_CONTAINER + ["name"], "trainer"), AssertionError, "named 'tensorflow'"),
        (_set(_CHIEF_CONTAINER + ["image"], "mtrank:latest"), AssertionError, "image mtrank:latest"),
        (_set(_CHIEF_CONTAINER + ["args", 0], "fit"), AssertionError, "mtrank rejects"),
        (_set(_CHIEF_CONTAINER + ["args", 2], "/data/current"), AssertionError, "is on no claim"),
        (_set(["spec", "runPolicy", "cleanPodPolicy"], "Finished"), AssertionError, "cleanPodPolicy"),
        (_set(["spec", "runPolicy", "backofLimit"], 3), AssertionError, "unknown runPolicy keys"),
        (_set(["metadata", "name"], "1-train"), AssertionError, "DNS-1035"),
        (_set(_CHIEF_CONTAINER + ["resource"], {}), jsonschema.ValidationError, "'resource' was unexpected"),
        (
            _set(_CHIEF_CONTAINER + ["ports", 0, "containerPort"], "2222"),
            jsonschema.ValidationError,
            "is not of type 'integer'",
        ),
        (
            _set(_CHIEF + ["template", "spec", "volumes", 0, "persistentVolumeClaim", "claim"], "x"),
            jsonschema.ValidationError,
            "'claim' was unexpected",
        ),
        (
            _set(_CHIEF + ["template", "metadata", "labels", "app.kubernetes.io/name"], 7),
            jsonschema.ValidationError,
            "is not of type 'string'",
        ),
    ],
    ids=[
        "replica-type",
        "restart-policy",
        "replica-key",
        "container-name",
        "image",
        "subcommand",
        "path-off-claim",
        "clean-pod-policy",
        "run-policy-key",
        "name",
        "container-field",
        "string-port",
        "volume-field",
        "label-type",
    ],
)
def test_broken_tfjob_fails(breakage, error, words):
    """The TFJob checks are not vacuous: each broken copy fails, for that reason."""
    broken = copy.deepcopy(_tfjob())
    breakage(broken)
    with pytest.raises(error) as caught:
        _check_tfjob(broken)
    assert words in str(caught.value)


# --- retagging the image with kustomize -------------------------------------------------------------


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_images_retags_every_project_container(tmp_path):
    """k8s/README.md's `images:` overlay reaches every container of the project's image, the
    CronJob's and the TFJob's (a custom resource) included, and leaves TF Serving's alone."""
    shutil.copytree(K8S, tmp_path / "k8s")
    overlay = tmp_path / "k8s" / "overlay"
    overlay.mkdir()
    name = IMAGE.split(":")[0]
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../tfserving", "../retraining", "../training"],
                "images": [{"name": name, "newName": f"registry.example.com/ml/{name}", "newTag": "9.9.9"}],
            }
        )
    )
    built = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    images = re.findall(r"^\s*image: (\S+)$", built.stdout, flags=re.M)
    assert sorted(images) == sorted([f"registry.example.com/ml/{name}:9.9.9"] * 3 + [_container()["image"]])
