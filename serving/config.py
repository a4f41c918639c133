"""What `mtrank serve` serves and how: TF Serving's model config and batching parameters.

The same text-proto files that configure the real TF Serving in `k8s/tfserving/` configure the
local server: `--model-config-file` (a ModelServerConfig: models, version policies, labels) and
`--batching-parameters-file` (BatchingParameters). No TensorFlow import here.
"""

from __future__ import annotations

import dataclasses
import os
import re

from google.protobuf import text_format

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_BATCH_TIMEOUT_MICROS = 1000
DEFAULT_NUM_BATCH_THREADS = 2
DEFAULT_MAX_REQUEST_ROWS = 100_000
POLICIES = ("latest", "all", "specific")


class ConfigError(ValueError):
    """A model config or batching parameters file that cannot be served; the message names the field."""


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's ServableVersionPolicy: the `latest` N versions (default 1), `all`, or `specific` ones."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in POLICIES:
            raise ConfigError(f"model_version_policy must be one of {', '.join(POLICIES)}, got {self.kind!r}")
        if self.kind == "latest" and self.num_versions < 1:
            raise ConfigError(f"model_version_policy.latest.num_versions must be >= 1, got {self.num_versions}")
        if self.kind == "specific" and not self.versions:
            raise ConfigError("model_version_policy.specific.versions is empty")

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among the complete ones on disk."""
        if self.kind == "all":
            return sorted(available)
        if self.kind == "specific":
            return sorted(set(available) & set(self.versions))
        return sorted(available)[-self.num_versions :]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    labels: tuple[tuple[str, int], ...] = ()

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name or ""):
            raise ConfigError(f"model name {self.name!r} must be letters, digits, '_', '.' or '-'")
        if not self.base_path:
            raise ConfigError(f"model {self.name!r}: base_path is empty")


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """Server-side batching of concurrent requests (TF Serving's --enable_batching)."""

    enabled: bool = True
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS
    num_batch_threads: int = DEFAULT_NUM_BATCH_THREADS

    def __post_init__(self):
        for name in ("max_batch_size", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"batching {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ConfigError(f"batching batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    models: tuple[ModelSpec, ...]
    rest_port: int = 8501
    grpc_port: int = 8500
    host: str = "127.0.0.1"  # this machine only: the server has no authentication
    poll_seconds: float = 1.0
    batching: BatchingConfig = BatchingConfig()
    max_request_mb: int = 64
    max_request_rows: int = DEFAULT_MAX_REQUEST_ROWS

    def __post_init__(self):
        names = [m.name for m in self.models]
        if not names:
            raise ConfigError("no model to serve: give --model-name and --model-base-path, or --model-config-file")
        if len(set(names)) != len(names):
            raise ConfigError(f"model names must be unique, got {names}")
        if self.poll_seconds <= 0:
            raise ConfigError(f"poll_seconds must be > 0, got {self.poll_seconds}")


def parse_model_config(text: str, source: str = "model config") -> tuple[ModelSpec, ...]:
    """ModelSpecs from a ModelServerConfig text proto, as TF Serving's --model_config_file reads it."""
    from tensorflow_serving.config import model_server_config_pb2

    message = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise ConfigError(f"{source}: {e}") from None
    if message.WhichOneof("config") != "model_config_list":
        raise ConfigError(f"{source}: needs a model_config_list")
    specs = []
    for model in message.model_config_list.config:
        where = f"{source}: model {model.name!r}"
        if model.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"{where}: model_platform {model.model_platform!r} is not 'tensorflow'")
        which = model.model_version_policy.WhichOneof("policy_choice") or "latest"
        policy_message = model.model_version_policy
        policy = VersionPolicy(
            kind=which,
            num_versions=(policy_message.latest.num_versions or 1) if which == "latest" else 1,
            versions=tuple(policy_message.specific.versions) if which == "specific" else (),
        )
        labels = tuple(sorted(model.version_labels.items()))
        specs.append(ModelSpec(model.name, model.base_path, policy, labels))
    return tuple(specs)


_BATCHING_INTEGERS = {"max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_execution_batch_size"}
_BATCHING_FLAGS = {"enable_large_batch_splitting", "pad_variable_length_inputs"}
# Fields of TF Serving's BatchingParameters this server accepts and does not need.
_BATCHING_IGNORED = {"max_enqueued_batches", "allowed_batch_sizes", "thread_pool_name"}
_BATCHING_ENTRY = re.compile(r"\s*(\w+)\s*(?:\{\s*value\s*:\s*([^\s}]+)\s*\}|:\s*(\S+))")


def parse_batching_parameters(text: str, source: str = "batching parameters") -> dict:
    """BatchingConfig fields, plus `max_request_rows`, from TF Serving's BatchingParameters text
    proto (its proto is not in the tensorflow-serving-api wheel, so the text is read here).

    As TF Serving reads them: without `enable_large_batch_splitting`, a request of more than
    `max_batch_size` rows is refused, so that is the request limit here too; with it, requests
    up to `max_batch_size` rows are accepted and run in batches of `max_execution_batch_size`."""
    values = {}
    body = re.sub(r"#[^\n]*", "", text)
    position = 0
    while body[position:].strip():
        match = _BATCHING_ENTRY.match(body, position)
        if not match:
            raise ConfigError(f"{source}: cannot read {body[position:].strip()[:40]!r}")
        name, value = match.group(1), match.group(2) or match.group(3)
        if name in _BATCHING_INTEGERS:
            try:
                values[name] = int(value)
            except ValueError:
                raise ConfigError(f"{source}: {name} must be an integer, got {value!r}") from None
        elif name in _BATCHING_FLAGS:
            if value not in ("true", "false"):
                raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
            values[name] = value == "true"
        elif name not in _BATCHING_IGNORED:
            raise ConfigError(f"{source}: unknown field {name!r}")
        position = match.end()
    out = {k: values[k] for k in ("batch_timeout_micros", "num_batch_threads") if k in values}
    if "max_batch_size" in values:
        out["max_request_rows"] = values["max_batch_size"]
        out["max_batch_size"] = values["max_batch_size"]
    if values.get("enable_large_batch_splitting") and "max_execution_batch_size" in values:
        out["max_batch_size"] = values["max_execution_batch_size"]
    return out


def server_config(args):
    """ServerConfig from `mtrank serve`'s flags (or a TF Serving model config file); ConfigError for bad ones."""
    try:
        if args.model_config_file:
            if args.model_base_path:
                raise ConfigError("give --model-config-file or --model-base-path, not both")
            with open(args.model_config_file) as f:
                models = parse_model_config(f.read(), args.model_config_file)
        else:
            if not args.model_base_path:
                raise ConfigError(
                    "give --model-base-path (a folder of integer-named SavedModel versions) or --model-config-file"
                )
            policy = VersionPolicy(num_versions=args.num_versions)
            models = (ModelSpec(args.model_name, os.path.abspath(args.model_base_path), policy),)
        batching = {
            "max_batch_size": args.max_batch_size,
            "batch_timeout_micros": args.batch_timeout_micros,
            "num_batch_threads": args.num_batch_threads,
        }
        limits = {}
        if args.batching_parameters_file:
            with open(args.batching_parameters_file) as f:
                batching.update(parse_batching_parameters(f.read(), args.batching_parameters_file))
            limits["max_request_rows"] = batching.pop("max_request_rows", DEFAULT_MAX_REQUEST_ROWS)
        return ServerConfig(
            models=models,
            rest_port=args.rest_port,
            grpc_port=args.grpc_port,
            host=args.host,
            **limits,
            poll_seconds=args.poll_seconds,
            batching=BatchingConfig(enabled=not args.no_batching, **batching),
        )
    except OSError as e:
        raise ConfigError(f"cannot read {e.filename}: {e.strerror}") from None
