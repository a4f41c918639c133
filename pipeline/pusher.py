"""Pusher: a blessed SavedModel to `<base>/<name>/<next integer version>/`, atomically.

The model is copied into a dot-folder beside the versions (TF Serving and `mtrank serve` skip
names that are not integers), then renamed to its version: a reader sees no version or the whole
of it. An exclusive lock on `<base>/<name>/.push.lock` serialises pushes, so two runs pushing at
once get two different versions. A model whose evaluation is not BLESSED is never pushed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time

from common import layout
from pipeline import evaluator


class NotBlessed(RuntimeError):
    """The Evaluator did not bless the model; the message holds its reasons."""


def versions(model_base: str) -> list[int]:
    """The integer versions under `<base>/<name>`, ascending."""
    try:
        return sorted(int(n) for n in os.listdir(model_base) if n.isdigit())
    except FileNotFoundError:
        return []


def latest(model_base: str) -> str | None:
    """The folder of the highest version, or None."""
    found = versions(model_base)
    return os.path.join(model_base, str(found[-1])) if found else None


@contextlib.contextmanager
def _locked(model_base: str):
    os.makedirs(model_base, exist_ok=True)
    with open(os.path.join(model_base, ".push.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def push(saved_model: str, run_output: str, serving_base: str, model_name: str = "mtrank") -> dict:
    """Copies the run's blessed SavedModel as the next version; returns {"version", "path"}."""
    blessing = os.path.join(run_output, layout.EVALUATION)
    if not evaluator.is_blessed(run_output):
        reasons_file = os.path.join(blessing, layout.NOT_BLESSED)
        reasons = open(reasons_file).read().strip() if os.path.exists(reasons_file) else "no evaluation found"
        raise NotBlessed(f"{saved_model} is not blessed: {reasons}")
    model_base = os.path.join(serving_base, model_name)
    with _locked(model_base):
        version = (versions(model_base) or [0])[-1] + 1
        staging = os.path.join(model_base, f".incoming-{version}-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(saved_model, staging)
        with open(os.path.join(staging, "push.json"), "w") as f:
            json.dump(
                {
                    "version": version,
                    "model": os.path.abspath(saved_model),
                    "run": os.path.abspath(run_output),
                    "evaluation": os.path.abspath(os.path.join(blessing, layout.METRICS)),
                    "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                f,
                indent=2,
            )
        os.rename(staging, os.path.join(model_base, str(version)))
    return {"version": version, "path": os.path.join(model_base, str(version))}
