"""Versions of each model under its base path: found, loaded, served and unloaded as TF Serving does.

`<base_path>/<integer version>/saved_model.pb` is a version. A poll thread lists the base path
every `poll_seconds`; the version policy picks the versions to serve. A new version is loaded and
warmed up before it becomes visible, and an old one is dropped from the table afterwards: a
request that already holds it finishes on it. A version folder that does not load (still being
copied, say) is not served and is tried again at the next poll.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
import time

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving.config import ModelSpec

_LOG = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"


class NotFound(LookupError):
    """An unknown model, version, label or signature: HTTP 404, gRPC NOT_FOUND."""


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: the batcher keys on it
class Signature:
    name: str
    function: object
    inputs: dict  # {name: tf.TensorSpec}
    outputs: tuple[str, ...]

    def run(self, tensors: dict) -> dict:
        """{output: np.ndarray} for {input: np.ndarray}."""
        result = self.function(**{k: tf.constant(v, self.inputs[k].dtype) for k, v in tensors.items()})
        return {k: result[k].numpy() for k in self.outputs}


@dataclasses.dataclass(frozen=True)
class Servable:
    model: str
    version: int
    path: str
    signatures: dict  # {name: Signature}
    signature_defs: object  # the SavedModel's {name: SignatureDef} proto map, for metadata
    loaded: object  # keeps the SavedModel's resources alive while the Servable is referenced

    def signature(self, name: str | None) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise NotFound(
                f'Serving signature name: "{name}" not found in signature def '
                f"(model {self.model} version {self.version} has {', '.join(sorted(self.signatures))})"
            )
        return self.signatures[name]


def _warm_up_input(spec: tf.TensorSpec) -> np.ndarray:
    shape = [1 if d is None else d for d in spec.shape.as_list()]
    if spec.dtype == tf.string:
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, spec.dtype.as_numpy_dtype)


def load(model: str, version: int, path: str) -> Servable:
    """Loads and warms up one version; raises on an incomplete or broken SavedModel."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    meta_graph: meta_graph_pb2.MetaGraphDef = proto.meta_graphs[0]
    loaded = tf.saved_model.load(path)
    signatures = {}
    for name, function in loaded.signatures.items():
        inputs = dict(function.structured_input_signature[1])
        signature = Signature(name, function, inputs, tuple(sorted(function.structured_outputs)))
        signature.run({k: _warm_up_input(s) for k, s in inputs.items()})
        signatures[name] = signature
    return Servable(model, version, path, signatures, meta_graph.signature_def, loaded)


def complete_versions(base_path: str) -> list[int]:
    """Integer-named folders of `base_path` that hold a saved_model.pb and, when they have
    variables, the variables' index (written last by tf.saved_model.save)."""
    try:
        names = os.listdir(base_path)
    except FileNotFoundError:
        return []
    versions = []
    for name in names:
        if not name.isdigit():
            continue
        folder = os.path.join(base_path, name)
        if not os.path.isfile(os.path.join(folder, "saved_model.pb")):
            continue
        variables = os.path.join(folder, "variables")
        if os.path.isdir(variables) and not os.path.isfile(os.path.join(variables, "variables.index")):
            continue
        versions.append(int(name))
    return versions


def _fingerprint(folder: str) -> tuple | None:
    """(path, size, mtime) of every file under `folder`: changes while a copy is under way
    (None when a file vanished during the walk, i.e. it is changing now)."""
    entries = []
    try:
        for root, _, files in os.walk(folder):
            for name in files:
                stat = os.stat(os.path.join(root, name))
                entries.append((os.path.relpath(os.path.join(root, name), folder), stat.st_size, stat.st_mtime_ns))
    except OSError:
        return None
    return tuple(sorted(entries))


# Dropped versions stay referenced by requests still running on them; their reference cycles
# are collected this long after the drop.
_COLLECT_AFTER_SECONDS = 5.0


class ModelManager:
    """The served versions of every model, kept in line with their base paths by `poll()`."""

    def __init__(self, specs, loader=load):
        self._specs = {spec.name: spec for spec in specs}
        self._served: dict[str, dict[int, Servable]] = {name: {} for name in self._specs}
        self._failed: dict[tuple[str, int], tuple | None] = {}
        self._loader = loader
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._dropped_at: float | None = None

    @property
    def model_names(self) -> list[str]:
        return list(self._specs)

    def poll(self) -> None:
        """Loads the versions the policy wants that have appeared, then unloads the rest. A
        version that fails to load drops out of the choice (and is tried once per poll), so
        `latest` falls back to the next; a version whose folder is gone is unloaded."""
        for name, spec in self._specs.items():
            failed: set[int] = set()
            while True:
                on_disk = complete_versions(spec.base_path)
                candidates = [v for v in on_disk if v not in failed and not self._still_broken(spec, v)]
                wanted = spec.policy.select(candidates)
                failures = {v for v in wanted if v not in self._served[name] and not self._load(spec, v)}
                if not failures:
                    break
                failed |= failures
            served = self._served[name]
            # Until a wanted version loads, keep serving the old ones whose folders still exist.
            keep = set(wanted) if wanted else set(served) & set(on_disk)
            dropped = [v for v in served if v not in keep]
            if dropped:
                with self._lock:
                    self._served[name] = {v: s for v, s in served.items() if v in keep}
                for version in dropped:
                    _LOG.info("unloaded %s version %d", name, version)
                self._dropped_at = time.monotonic()
        if self._dropped_at is not None and time.monotonic() - self._dropped_at > _COLLECT_AFTER_SECONDS:
            self._dropped_at = None
            gc.unfreeze()  # let the collector reach the dropped versions' cycles, then freeze the rest again
            gc.collect()
            gc.freeze()

    def _still_broken(self, spec: ModelSpec, version: int) -> bool:
        key = (spec.name, version)
        return key in self._failed and self._failed[key] == _fingerprint(os.path.join(spec.base_path, str(version)))

    def _load(self, spec: ModelSpec, version: int) -> bool:
        path = os.path.join(spec.base_path, str(version))
        fingerprint = _fingerprint(path)
        try:
            servable = self._loader(spec.name, version, path)
        except Exception as e:  # noqa: BLE001 - a broken version must not stop the others
            self._failed[(spec.name, version)] = fingerprint
            _LOG.warning(
                "%s version %d at %s did not load (tried again when it changes): %s",
                spec.name,
                version,
                path,
                str(e).splitlines()[0] if str(e) else type(e).__name__,
            )
            return False
        self._failed.pop((spec.name, version), None)
        with self._lock:
            self._served[spec.name] = {**self._served[spec.name], version: servable}
        _LOG.info("serving %s version %d from %s", spec.name, version, path)
        # A loaded SavedModel is millions of long-lived Python objects. Frozen, the collector no
        # longer walks them; it did, in ~400 ms pauses every few large requests.
        gc.collect()
        gc.freeze()
        return True

    def start(self, poll_seconds: float) -> None:
        """Polls in a background thread until `stop()`."""

        def loop():
            while not self._stop.wait(poll_seconds):
                try:
                    self.poll()
                except Exception:  # noqa: BLE001 - the server outlives a failed poll
                    _LOG.exception("polling the model base paths failed")

        self._thread = threading.Thread(target=loop, name="version-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def versions(self, model: str) -> dict[int, Servable]:
        if model not in self._specs:
            raise NotFound(f"Servable not found for request: Latest({model})")
        return self._served[model]

    def find(self, model: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a request names: the latest version, a version, or a labelled version."""
        served = self.versions(model)
        if label is not None:
            labels = dict(self._specs[model].labels)
            if label not in labels:
                raise NotFound(f"Unrecognized servable version label: {label}")
            version = labels[label]
        if version is None:
            if not served:
                raise NotFound(f"Servable not found for request: Latest({model}) (no version loaded yet)")
            return served[max(served)]
        if version not in served:
            raise NotFound(f"Servable not found for request: Specific({model}, {version})")
        return served[version]
