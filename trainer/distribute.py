"""Which `tf.distribute` strategy a run trains under, and what its workers say to each other.

`hardware.distribute`:
- "auto": `MultiWorkerMirroredStrategy` when the `TF_CONFIG` environment variable names a cluster
  of more than one task among its `chief` and `worker` entries; else `MirroredStrategy` over the
  local GPUs when there are 2 or more; else TensorFlow's default strategy.
- "none": the default strategy, whatever TF_CONFIG and the GPUs say (each process trains alone).

Under MultiWorkerMirroredStrategy (MWMS) every worker runs the same program on the whole data;
each global batch (`training.batch_size`) is split across the workers, their gradients are summed
by a collective all-reduce, and every worker ends each step with the same weights. The chief
(the `chief` task, or worker 0 when there is none) is the only one that writes the run folder,
evaluates and exports; it tells the others what they need (`Workers.broadcast`).

TensorFlow requires MWMS to be created before anything initialises its runtime, so `workers()`
is the first TensorFlow call of a run; it reads TF_CONFIG itself, without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

_LOG = logging.getLogger(__name__)
MULTI_WORKER, MIRRORED, DEFAULT = "MultiWorkerMirroredStrategy", "MirroredStrategy", "default"


class ClusterError(ValueError):
    """TF_CONFIG that cannot be trained on (its message says why)."""


@dataclasses.dataclass(frozen=True)
class Role:
    """This process in its cluster: `index` 0 is the chief; `workers` counts chief and workers."""

    workers: int = 1
    index: int = 0
    task_type: str = "worker"
    task_id: int = 0

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    @property
    def name(self) -> str:
        return "chief" if self.is_chief else "worker"


def cluster_role(tf_config: str | None) -> Role | None:
    """This process's role when TF_CONFIG (its JSON text) names more than one chief/worker task,
    else None: no TF_CONFIG, or a cluster of one task (training then ignores TF_CONFIG)."""
    if not tf_config or not tf_config.strip():
        return None
    try:
        parsed = json.loads(tf_config)
    except ValueError as e:
        raise ClusterError(f"TF_CONFIG is not JSON: {e}") from None
    cluster = (parsed.get("cluster") or {}) if isinstance(parsed, dict) else None
    if not isinstance(cluster, dict):
        raise ClusterError("TF_CONFIG must be an object with a `cluster` object")
    chiefs, workers = list(cluster.get("chief") or []), list(cluster.get("worker") or [])
    if len(chiefs) + len(workers) <= 1:
        return None
    if len(chiefs) > 1:
        raise ClusterError(f"TF_CONFIG names {len(chiefs)} chief tasks; a cluster has at most one")
    task = parsed.get("task") or {}
    task_type, task_id = task.get("type"), task.get("index", 0)
    if task_type not in ("chief", "worker"):
        raise ClusterError(
            f"TF_CONFIG task type {task_type!r}: multi-worker training runs `chief` and `worker` "
            "tasks only (no `ps` or `evaluator`)"
        )
    tasks = chiefs if task_type == "chief" else workers
    if isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 <= task_id < len(tasks):
        raise ClusterError(f"TF_CONFIG task index {task_id!r} is not one of the {len(tasks)} {task_type} tasks")
    index = task_id if task_type == "chief" else len(chiefs) + task_id
    return Role(len(chiefs) + len(workers), index, task_type, task_id)


def choose(distribute: str, tf_config: str | None, gpus: int | None = None) -> tuple[str, Role]:
    """(strategy name, role) for `hardware.distribute`, TF_CONFIG's text and the local GPU count
    (None: counted only when needed)."""
    if distribute == "none":
        return DEFAULT, Role()
    role = cluster_role(tf_config)
    if role is not None:
        return MULTI_WORKER, role
    if gpus is None:
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))
    return (MIRRORED if gpus > 1 else DEFAULT), Role()


def role_of(distribute: str) -> Role:
    """This process's role for `hardware.distribute` and the environment's TF_CONFIG, without TensorFlow."""
    role = cluster_role(os.environ.get("TF_CONFIG")) if distribute != "none" else None
    return role or Role()


_CREATED: dict = {}  # MWMS can be created once per process: runs in one process share it


class Workers:
    """The strategy and this process's role; the messages between workers are collectives, so
    every worker must make the same calls in the same order (one worker: they return at once)."""

    def __init__(self, strategy, name: str, role: Role):
        self.strategy, self.name, self.role = strategy, name, role
        self._summed = None

    @property
    def count(self) -> int:
        return self.role.workers

    @property
    def is_chief(self) -> bool:
        return self.role.is_chief

    @property
    def multi_worker(self) -> bool:
        return self.name == MULTI_WORKER

    def _sum(self, values: list) -> list:
        """Sums each numpy array over the workers, counted once per worker whatever its local
        replicas (only its first replica contributes)."""
        import tensorflow as tf

        if self._summed is None:
            strategy = self.strategy
            first = self.role.index * len(strategy.extended.worker_devices)

            def contribute(tensors):
                ctx = tf.distribute.get_replica_context()
                mine = tf.equal(ctx.replica_id_in_sync_group, first)
                tensors = [tf.where(mine, t, tf.zeros_like(t)) for t in tensors]
                out = list(tensors)
                for dtype in {t.dtype for t in tensors}:  # one all-reduce per dtype: it packs its tensors
                    at = [i for i, t in enumerate(tensors) if t.dtype == dtype]
                    for i, summed in zip(at, ctx.all_reduce(tf.distribute.ReduceOp.SUM, [tensors[i] for i in at])):
                        out[i] = summed
                return out

            self._summed = tf.function(lambda tensors: strategy.run(contribute, args=(tensors,)), reduce_retracing=True)
        out = self._summed([tf.constant(v) for v in values])
        return [self.strategy.experimental_local_results(o)[0].numpy() for o in out]

    def gather(self, payload) -> list:
        """Every worker's JSON-able payload, in worker order (chief first), on every worker."""
        import numpy as np

        if not self.multi_worker:
            return [payload]
        data = np.frombuffer(json.dumps(payload, default=float).encode(), np.uint8).astype(np.int32)
        lengths = np.zeros(self.count, np.int32)
        lengths[self.role.index] = len(data)
        lengths = self._sum([lengths])[0]
        rows = np.zeros((self.count, int(lengths.max())), np.int32)
        rows[self.role.index, : len(data)] = data
        rows = self._sum([rows])[0]
        return [json.loads(rows[i, : lengths[i]].astype(np.uint8).tobytes()) for i in range(self.count)]

    def broadcast(self, payload):
        """The chief's JSON-able payload, on every worker (the others pass anything, e.g. None)."""
        if not self.multi_worker:
            return payload
        return self.gather(payload if self.is_chief else None)[0]

    def broadcast_variables(self, variables) -> None:
        """Sets each variable to the chief's value on every worker (e.g. after the chief restored a checkpoint)."""
        if not self.multi_worker or not variables:
            return
        import numpy as np

        mine = [v.numpy() for v in variables]
        values = self._sum(mine if self.is_chief else [np.zeros_like(v) for v in mine])
        for variable, value in zip(variables, values):
            variable.assign(value)


def create(distribute: str) -> Workers:
    """The strategy for `hardware.distribute` and this process; call it before any other TensorFlow op."""
    import tensorflow as tf

    name, role = choose(distribute, os.environ.get("TF_CONFIG"))
    if name in _CREATED:
        return _CREATED[name]
    if name == MULTI_WORKER:
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except RuntimeError as e:
            raise ClusterError(
                f"MultiWorkerMirroredStrategy: {e}: multi-worker training needs a process of its own "
                "that has run no TensorFlow before it (`mtrank train` on each worker)"
            ) from None
        resolver = strategy.cluster_resolver  # TensorFlow reads TF_CONFIG too: we must agree
        seen = strategy.num_replicas_in_sync // len(strategy.extended.worker_devices)
        if seen != role.workers or (resolver.task_type, resolver.task_id) != (role.task_type, role.task_id):
            raise ClusterError(
                f"TensorFlow sees task {resolver.task_type}:{resolver.task_id} of {seen} workers, TF_CONFIG says {role}"
            )
        _LOG.info(
            "training on %d workers with MultiWorkerMirroredStrategy (this is worker %d, %s)",
            role.workers,
            role.index,
            role.name,
        )
    elif name == MIRRORED:
        strategy = tf.distribute.MirroredStrategy()
        _LOG.info("training on %d GPUs with MirroredStrategy", strategy.num_replicas_in_sync)
    else:
        strategy = tf.distribute.get_strategy()
    workers = Workers(strategy, name, role)
    if name != DEFAULT:
        _CREATED[name] = workers
    return workers


def weights_digest(variables) -> str:
    """SHA-256 (first 16 hex digits) of the variables' bytes in order: equal on workers that agree."""
    digest = hashlib.sha256()
    for v in variables:
        digest.update(v.numpy().tobytes())
    return digest.hexdigest()[:16]
