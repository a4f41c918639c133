"""A run folder's state: reading and writing it atomically, whether a killed run may resume, and
the chief's decisions handed to every worker."""

from __future__ import annotations

import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf

from trainer import distribute, inputs
from trainer.config import TrainerConfig

RESUMABLE_CHANGES = {("training", "epochs"), ("training", "patience")}


class TrainingError(Exception):
    """A run that cannot start or resume as asked (its message says why and what to do)."""


def write_json(path: str, payload: dict) -> None:
    """Atomic: a kill leaves the old file or the new one, never half of one."""
    tmp = f"{path}.tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(payload, indent=2, default=float))
    tf.io.gfile.rename(tmp, path, overwrite=True)


def read_json(path: str) -> dict | None:
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def package_versions() -> dict:
    import tensorflow_transform as tft

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tensorflow_transform": tft.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def chief_says(workers: distribute.Workers, work):
    """`work()` run by the chief alone, its JSON-able result handed to every worker. When it fails
    on the chief, the other workers stop too (TrainingError) instead of waiting for it."""
    payload = None
    if workers.is_chief:
        try:
            payload = {"ok": work()}
        except Exception as e:
            workers.broadcast({"error": f"{type(e).__name__}: {e}"})
            raise
    received = workers.broadcast(payload)
    if "error" in received:
        raise TrainingError(f"the chief (worker 0) stopped: {received['error']}")
    return received["ok"]


def check_resumable(saved: dict, config: TrainerConfig, run_dir: str) -> None:
    now = json.loads(json.dumps(config.to_dict()))  # as saved: tuples become lists
    changed = sorted(
        f"{section}.{key}"
        for section in set(saved) | set(now)
        for key in set(saved.get(section) or {}) | set(now.get(section) or {})
        if (saved.get(section) or {}).get(key) != (now.get(section) or {}).get(key)
        and (section, key) not in RESUMABLE_CHANGES
    )
    if changed:
        raise TrainingError(
            f"{run_dir} holds a run with a different config ({', '.join(changed)}); "
            "train into a new folder, or pass --overwrite to start again"
        )


def start_state(run_dir: str, config: TrainerConfig, spec: inputs.InputSpec, fn_args, resolved: dict) -> dict:
    """The run state to start from (a resumed run's, or a new one), after checking the folder's
    run can be resumed; writes config.json (`resolved`: the keys the training split's rules set)."""
    state = read_json(os.path.join(run_dir, "state.json"))
    saved = read_json(os.path.join(run_dir, "config.json"))
    if state is not None and saved is not None:
        check_resumable(saved["trainer"], config, run_dir)
        if saved["input_spec"] != spec.to_dict():
            raise TrainingError(
                f"{run_dir} holds a run on different inputs; train into a new folder or pass --overwrite"
            )
        done = state["evals_done"]
        path = os.path.join(run_dir, "checkpoints", f"ckpt-{done}")
        if done and not tf.io.gfile.exists(path + ".index"):
            raise TrainingError(
                f"{run_dir}: state.json says {done} evaluation rounds are done but {path} is missing; "
                "pass --overwrite to start again"
            )
    else:
        state = {
            "evals_done": 0,
            "best": None,
            "best_eval": None,
            "best_epoch": None,
            "wait": 0,
            "history": [],
            "stopped_early": False,
        }
    write_json(
        os.path.join(run_dir, "config.json"),
        {
            "trainer": config.to_dict(),
            "resolved": resolved,
            "input_spec": spec.to_dict(),
            "packages": package_versions(),
            "train_files": list(inputs.expand(fn_args.train_files)),
            "eval_files": list(inputs.expand(fn_args.eval_files)),
            "transform_graph_path": fn_args.transform_graph_path,
        },
    )
    return state


def step_of(state: dict, evaluation: int | None) -> int | None:
    """The training step of an evaluation round (None for a streamed split, whose rounds are passes)."""
    return next((e.get("step") for e in state["history"] if e["eval"] == evaluation), None)
