"""The Trainer's Keras callbacks (throughput, the evaluation rounds with early stopping) and the
scoring they share with the Trainer's final evaluation."""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
import weakref

import keras
import numpy as np
import tensorflow as tf

from common.metrics import task_metrics
from trainer import distribute, inputs
from trainer.run_state import chief_says, write_json
from transform import features as F

_LOG = logging.getLogger(__name__)

# One compiled scoring function per network and XLA flag, so each evaluation round (and the test
# split) reuses the first round's trace and XLA compilation instead of building its own.
_SCORERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _scorer(network, xla: bool):
    scorers = _SCORERS.setdefault(network, {})
    if xla not in scorers:
        scorers[xla] = tf.function(
            lambda features: network(features, training=False), jit_compile=xla, reduce_retracing=True
        )
    return scorers[xla]


def _padded(features: dict, rows: int) -> dict:
    """Each feature's batch padded with zeros to `rows` rows: the last, short batch of a split
    takes the full batches' shape, and so their compiled function."""
    return {k: tf.pad(v, [[0, rows - tf.shape(v)[0]]] + [[0, 0]] * (len(v.shape) - 1)) for k, v in features.items()}


def _file_order_batches(split: inputs.Split, batch_size: int):
    """(features, labels) batches in file order; a split in memory is sliced as numpy views, without
    the shuffling dataset's Python generator, which cost more than the network per batch."""
    if not split.in_memory:
        yield from split.dataset(batch_size)[0]
        return
    for start in range(0, split.rows, batch_size):
        window = slice(start, start + batch_size)
        yield {k: v[window] for k, v in split.features.items()}, {k: v[window] for k, v in split.labels.items()}


def predict(network, split: inputs.Split, batch_size: int, xla: bool, steps: int | None = None) -> tuple[dict, dict]:
    """({ctr, cvr, ctcvr}: numpy [N], labels: numpy [N]) over a split, in file order."""
    score = _scorer(network, xla)
    outputs, labels = {}, {}
    for features, batch_labels in itertools.islice(_file_order_batches(split, batch_size), steps):
        rows = int(next(iter(batch_labels.values())).shape[0])
        for key, value in score(features if rows == batch_size else _padded(features, batch_size)).items():
            outputs.setdefault(key, []).append(value.numpy()[:rows])
        for key, value in batch_labels.items():
            labels.setdefault(key, []).append(np.asarray(value))
    return {k: np.concatenate(v) for k, v in outputs.items()}, {k: np.concatenate(v) for k, v in labels.items()}


def evaluate(network, split: inputs.Split, batch_size: int, xla: bool, steps: int | None = None) -> dict:
    scores, labels = predict(network, split, batch_size, xla, steps)
    return task_metrics(labels[F.CLICK], labels[F.CONVERSION], scores["ctr"], scores["cvr"], scores["ctcvr"])


class Throughput(keras.callbacks.Callback):
    """Training examples/s after the first `warmup` steps (tracing, XLA compilation), input
    pipeline included, eval between epochs excluded."""

    def __init__(self, batch_size: int, warmup: int = 20):
        super().__init__()
        self.batch_size, self.warmup = batch_size, warmup
        self.steps, self.counted, self.seconds, self.last = 0, 0, 0.0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.steps += 1
        if self.steps > self.warmup:
            self.counted += 1
            self.seconds += now - self.last
        self.last = now

    @property
    def examples_per_second(self) -> float | None:
        return self.counted * self.batch_size / self.seconds if self.counted else None


def monitor_value(metrics: dict, monitor: str) -> float:
    """The eval value `training.monitor` ranks by, higher is better: minus the summed log losses of
    the three served scores, each on the rows it is defined on (CTR and CTCVR on every row, CVR on
    clicked rows; a split without clicked rows sums the other two), CTR's and CTCVR's alone
    ("ctr_ctcvr_logloss"), or the CVR or CTCVR AUC. nan when the eval split cannot tell."""
    if monitor in ("cvr_auc", "ctcvr_auc"):
        return metrics[monitor]
    cvr = metrics["cvr_logloss"] if monitor == "logloss" else math.nan
    return -(metrics["ctr_logloss"] + metrics["ctcvr_logloss"] + (0.0 if math.isnan(cvr) else cvr))


class Evaluation(keras.callbacks.Callback):
    """Eval metrics, the best weights, a checkpoint and the run state after every evaluation round
    (a Keras epoch of `steps_per_eval` steps: `training.evals_per_epoch` of them per pass over the
    training split); stops after `patience` rounds without a better monitor value.

    With several workers the chief alone evaluates and decides, and hands every worker the new
    state, so all stop at the same round; every worker saves a checkpoint (saving is collective)."""

    def __init__(
        self,
        run_dir,
        state,
        evaluate_fn,
        network,
        manager,
        workers: distribute.Workers,
        config,
        steps_per_eval: int | None,
        evals_per_epoch: int,
    ):
        super().__init__()
        self.run_dir, self.state, self.evaluate_fn = run_dir, state, evaluate_fn
        self.network, self.manager, self.workers = network, manager, workers
        self.patience, self.monitor = config.training.patience, config.training.monitor
        self.steps_per_eval, self.evals_per_epoch = steps_per_eval, evals_per_epoch

    def _decide(self, round_index, logs) -> dict:
        metrics = self.evaluate_fn()
        logs = {**logs, **{f"val_{k}": v for k, v in metrics.items() if k.endswith(("auc", "logloss"))}}
        state = self.state
        value, best = monitor_value(metrics, self.monitor), state["best"]
        # An eval split without clicked conversions has no CVR AUC; then the latest round counts as best.
        improved = best is None or not math.isfinite(value) or not math.isfinite(best) or value > best
        done = round_index + 1
        epoch = done / self.evals_per_epoch
        if improved:
            self.network.save_weights(os.path.join(self.run_dir, "best.weights.h5"))
            state.update(best=value, best_eval=done, best_epoch=epoch, wait=0)
        else:
            state["wait"] += 1
        entry = {"eval": done, "epoch": epoch}
        if self.steps_per_eval:
            entry["step"] = done * self.steps_per_eval
        state["history"].append({**entry, **{k: float(v) for k, v in logs.items()}})
        state["evals_done"] = done
        if state["wait"] >= self.patience:
            state["stopped_early"] = True
        return {"state": state, "metrics": {k: float(v) for k, v in metrics.items()}, "improved": improved}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        started = time.time()
        decided = chief_says(self.workers, lambda: self._decide(epoch, logs))
        state, metrics = self.state, decided["metrics"]
        if not self.workers.is_chief:
            state.clear()
            state.update(decided["state"])
        logs.update({k: v for k, v in state["history"][-1].items() if k.startswith("val_")})
        self.manager.save(checkpoint_number=epoch + 1)
        if state["stopped_early"]:
            self.model.stop_training = True
        if self.workers.is_chief:
            write_json(os.path.join(self.run_dir, "state.json"), state)
        _LOG.info(
            "eval %d (epoch %.2f): CTR AUC %.4f  CVR AUC %.4f  CTCVR AUC %.4f  log loss CTR %.4f  CVR %.4f  "
            "(train loss %.4f, eval %.1f s)%s",
            epoch + 1,
            (epoch + 1) / self.evals_per_epoch,
            metrics["ctr_auc"],
            metrics["cvr_auc"],
            metrics["ctcvr_auc"],
            metrics["ctr_logloss"],
            metrics["cvr_logloss"],
            logs.get("loss", float("nan")),
            time.time() - started,
            "  best" if decided["improved"] else f"  no better for {state['wait']}",
        )
