"""The Trainer: `run_fn(fn_args)` with TFX's contract, and `train` behind `mtrank train`.

A run folder (`fn_args.model_run_dir`, `OUTPUT/model` for `mtrank train`) holds:
    config.json             the full trainer config, the input spec and package versions
    checkpoints/            the model and optimizer after every epoch (tf.train.Checkpoint)
    state.json              epochs done, per-epoch metrics, the best epoch so far, early-stopping count
    best.weights.h5         the network's weights at the best eval CVR AUC
    logs/                   TensorBoard
    metrics.json            the history, the best epoch's eval metrics, test metrics, parameter counts
and the SavedModel goes to `fn_args.serving_model_dir` (`OUTPUT/model/serving`).

Running again on a folder whose run was killed resumes after the last finished epoch, with
the batches an uninterrupted run would have seen; on a finished run it only exports again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from trainer import export, inputs, models
from trainer.config import TrainerConfig, from_dict
from trainer.metrics import task_metrics
from trainer.training_model import TrainingModel
from transform import features as F

_LOG = logging.getLogger(__name__)
MONITOR = "cvr_auc"  # early stopping and the best epoch: eval CVR AUC on clicked rows (the MTN paper's rule)
_RESUMABLE_CHANGES = {("training", "epochs"), ("training", "patience")}


@dataclasses.dataclass
class FnArgs:
    """The fields of TFX's `tfx.components.trainer.fn_args_utils.FnArgs` that a run_fn reads.

    TFX itself does not install on our machines (DESIGN.md), so this mirrors its names;
    `run_fn` reads only attributes, so TFX's own FnArgs works unchanged."""

    train_files: list
    eval_files: list
    transform_graph_path: str
    serving_model_dir: str
    model_run_dir: str
    train_steps: int | None = None  # TFX: total training steps; None: `training.epochs` passes
    eval_steps: int | None = None  # eval batches per epoch; None: the whole eval split
    custom_config: dict | None = None  # the trainer config (`trainer.config`)
    working_dir: str | None = None
    base_model: str | None = None
    schema_path: str | None = None
    hyperparameters: dict | None = None

    @property
    def transform_output(self) -> str:
        return self.transform_graph_path


class TrainingError(Exception):
    """A run that cannot start or resume as asked (its message says why and what to do)."""


def _write_json(path: str, payload: dict) -> None:
    """Atomic: a kill leaves the old file or the new one, never half of one."""
    tmp = f"{path}.tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(payload, indent=2, default=float))
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _read_json(path: str) -> dict | None:
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def package_versions() -> dict:
    import tensorflow_transform as tft

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "tensorflow_transform": tft.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0]}


def _strategy(config: TrainerConfig) -> tf.distribute.Strategy:
    gpus = tf.config.list_physical_devices("GPU")
    if config.hardware.distribute == "auto" and len(gpus) > 1:
        _LOG.info("training on %d GPUs with MirroredStrategy", len(gpus))
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _check_resumable(saved: dict, config: TrainerConfig, run_dir: str) -> None:
    now = json.loads(json.dumps(config.to_dict()))  # as saved: tuples become lists
    changed = sorted(f"{section}.{key}" for section in set(saved) | set(now)
                     for key in set(saved.get(section) or {}) | set(now.get(section) or {})
                     if (saved.get(section) or {}).get(key) != (now.get(section) or {}).get(key)
                     and (section, key) not in _RESUMABLE_CHANGES)
    if changed:
        raise TrainingError(f"{run_dir} holds a run with a different config ({', '.join(changed)}); "
                            "train into a new folder, or pass --overwrite to start again")


def predict(network, split: inputs.Split, batch_size: int, xla: bool, steps: int | None = None) -> tuple[dict, dict]:
    """({ctr, cvr, ctcvr}: numpy [N], labels: numpy [N]) over a split, in file order."""
    score = tf.function(lambda features: network(features, training=False), jit_compile=xla, reduce_retracing=True)
    dataset, _ = split.dataset(batch_size)
    if steps is not None:
        dataset = dataset.take(steps)
    outputs, labels = {}, {}
    for features, batch_labels in dataset:
        for key, value in score(features).items():
            outputs.setdefault(key, []).append(value.numpy())
        for key, value in batch_labels.items():
            labels.setdefault(key, []).append(value.numpy())
    return {k: np.concatenate(v) for k, v in outputs.items()}, {k: np.concatenate(v) for k, v in labels.items()}


def evaluate(network, split: inputs.Split, batch_size: int, xla: bool, steps: int | None = None) -> dict:
    scores, labels = predict(network, split, batch_size, xla, steps)
    return task_metrics(labels[F.CLICK], labels[F.CONVERSION], scores["ctr"], scores["cvr"], scores["ctcvr"])


class _Throughput(keras.callbacks.Callback):
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


class _EpochEnd(keras.callbacks.Callback):
    """Eval metrics, the best weights, a checkpoint and the run state after every epoch; stops early."""

    def __init__(self, run_dir, state, evaluate_fn, network, manager, patience):
        super().__init__()
        self.run_dir, self.state, self.evaluate_fn = run_dir, state, evaluate_fn
        self.network, self.manager, self.patience = network, manager, patience

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        started = time.time()
        metrics = self.evaluate_fn()
        logs.update({f"val_{k}": v for k, v in metrics.items() if k.endswith(("auc", "logloss"))})
        state = self.state
        value, best = metrics[MONITOR], state["best"]
        # An eval split without clicked conversions has no CVR AUC; then the latest epoch counts as best.
        improved = best is None or not math.isfinite(value) or not math.isfinite(best) or value > best
        if improved:
            self.network.save_weights(os.path.join(self.run_dir, "best.weights.h5"))
            state.update(best=value, best_epoch=epoch + 1, wait=0)
        else:
            state["wait"] += 1
        state["history"].append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
        state["epochs_done"] = epoch + 1
        self.manager.save(checkpoint_number=epoch + 1)
        if state["wait"] >= self.patience:
            state["stopped_early"] = True
            self.model.stop_training = True
        _write_json(os.path.join(self.run_dir, "state.json"), state)
        _LOG.info("epoch %d: eval CTR AUC %.4f  CVR AUC %.4f  CTCVR AUC %.4f  (eval %.1f s)%s", epoch + 1,
                  metrics["ctr_auc"], metrics["cvr_auc"], metrics["ctcvr_auc"], time.time() - started,
                  "  best" if improved else f"  no better for {state['wait']}")


def run_fn(fn_args) -> dict:
    """Trains the configured model on Transform's output and exports it; returns the run's metrics."""
    import tensorflow_transform as tft

    from transform.preprocessing import categorical_cardinalities

    config = from_dict(fn_args.custom_config)
    training, hardware = config.training, config.hardware
    run_dir = fn_args.model_run_dir
    tf.io.gfile.makedirs(run_dir)
    keras.utils.set_random_seed(training.seed)

    started = time.time()
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    feature_spec = tft_output.transformed_feature_spec()
    cardinalities = categorical_cardinalities(tft_output)
    train_split = inputs.load(fn_args.train_files, feature_spec, None, cardinalities, training.max_bag_length,
                              training.memory_budget_gb, "train")
    spec = train_split.spec
    eval_split = inputs.load(fn_args.eval_files, feature_spec, spec, cardinalities, training.max_bag_length,
                             training.memory_budget_gb, "eval")
    load_seconds = time.time() - started

    state_path = os.path.join(run_dir, "state.json")
    state = _read_json(state_path)
    saved = _read_json(os.path.join(run_dir, "config.json"))
    if state is not None and saved is not None:
        _check_resumable(saved["trainer"], config, run_dir)
        if saved["input_spec"] != spec.to_dict():
            raise TrainingError(f"{run_dir} holds a run on different inputs; train into a new folder or pass --overwrite")
    else:
        state = {"epochs_done": 0, "best": None, "best_epoch": None, "wait": 0, "history": [], "stopped_early": False}
    _write_json(os.path.join(run_dir, "config.json"),
                {"trainer": config.to_dict(), "input_spec": spec.to_dict(), "packages": package_versions(),
                 "train_files": list(inputs.expand(fn_args.train_files)),
                 "eval_files": list(inputs.expand(fn_args.eval_files)),
                 "transform_graph_path": fn_args.transform_graph_path})

    batch_size = min(training.batch_size, train_split.rows or training.batch_size)
    epochs = training.epochs
    if fn_args.train_steps:
        per_epoch = training.steps_per_epoch or (train_split.rows // batch_size if train_split.in_memory else None)
        if per_epoch:
            epochs = min(epochs, math.ceil(fn_args.train_steps / per_epoch))

    policy = keras.config.dtype_policy()
    strategy = _strategy(config)
    try:
        if hardware.mixed_precision:
            keras.config.set_dtype_policy("mixed_float16")
        with strategy.scope():
            network = models.build(spec.to_dict(), dataclasses.asdict(config.model))
            trainee = TrainingModel(network, spec, config)
            optimizer = keras.optimizers.Adam(training.learning_rate)
            trainee.compile_for_training(optimizer, hardware.xla)
            optimizer.build(trainee.trainable_variables)
    finally:
        keras.config.set_dtype_policy(policy)

    checkpoint = tf.train.Checkpoint(model=trainee, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(run_dir, "checkpoints"), max_to_keep=2)
    first_epoch = state["epochs_done"]
    if first_epoch:
        path = os.path.join(run_dir, "checkpoints", f"ckpt-{first_epoch}")
        if not tf.io.gfile.exists(path + ".index"):
            raise TrainingError(f"{run_dir}: state.json says {first_epoch} epochs are done but {path} is missing; "
                                "pass --overwrite to start again")
        checkpoint.restore(path).assert_existing_objects_matched()
        _LOG.info("resuming %s after epoch %d", run_dir, first_epoch)

    train_seconds = 0.0
    throughput = _Throughput(batch_size)
    finished = state["stopped_early"] or first_epoch >= epochs
    if not finished:
        dataset, steps = train_split.dataset(batch_size, training.seed, range(first_epoch, epochs), drop_remainder=True)
        if training.steps_per_epoch:
            steps = training.steps_per_epoch
        if fn_args.train_steps and steps:
            steps = min(steps, fn_args.train_steps)
        callbacks = [
            _EpochEnd(run_dir, state,
                      lambda: evaluate(network, eval_split, training.eval_batch_size, hardware.xla, fn_args.eval_steps),
                      network, manager, training.patience),
            keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False, profile_batch=0),
            throughput,
        ]
        _LOG.info("training %s for epochs %d to %d, %s steps of %d", config.model.name, first_epoch + 1, epochs,
                  steps if steps else "all", batch_size)
        started = time.time()
        trainee.fit(dataset, epochs=epochs, initial_epoch=first_epoch, steps_per_epoch=steps, callbacks=callbacks, shuffle=False,
                    verbose=1 if sys.stderr.isatty() else 2)
        train_seconds = time.time() - started

    best_weights = os.path.join(run_dir, "best.weights.h5")
    if tf.io.gfile.exists(best_weights):
        network.load_weights(best_weights)
    best_metrics = evaluate(network, eval_split, training.eval_batch_size, hardware.xla, fn_args.eval_steps)
    exported = export.export(network, tft_output, spec, fn_args.serving_model_dir)
    result = {
        "model": config.model.name, "seed": training.seed, "epochs_done": state["epochs_done"],
        "best_epoch": state["best_epoch"], "stopped_early": state["stopped_early"], "eval": best_metrics,
        "history": state["history"],
        "params": {"total": trainee.count_params(), "exported": exported["params"],
                   "regularizer_only": trainee.regularizer_params},
        "rows": {"train": train_split.rows, "eval": eval_split.rows},
        "seconds": {"load": load_seconds, "train": train_seconds},
        "train_examples_per_second": throughput.examples_per_second,
        "serving_model_dir": fn_args.serving_model_dir,
    }
    if trainee.mtn is not None:
        result["mtn_alphas"] = np.asarray(trainee.mtn.alphas).tolist()
    _write_json(os.path.join(run_dir, "metrics.json"), result)
    return result


def train(transformed: str, output: str, config: dict | None = None, overwrite: bool = False) -> dict:
    """`mtrank train`: run_fn on `transformed`'s Transform output, into `output`/model; also scores the
    best model on the test split when there is one."""
    run_dir = os.path.join(output, "model")
    if overwrite and tf.io.gfile.exists(run_dir):
        tf.io.gfile.rmtree(run_dir)
    splits = os.path.join(transformed, "transformed")
    fn_args = FnArgs(
        train_files=[os.path.join(splits, "train", "*.tfrecord.gz")],
        eval_files=[os.path.join(splits, "eval", "*.tfrecord.gz")],
        transform_graph_path=os.path.join(transformed, "transform_graph"),
        serving_model_dir=os.path.join(run_dir, "serving"), model_run_dir=run_dir,
        custom_config=config or {}, working_dir=output,
    )
    result = run_fn(fn_args)
    test_files = os.path.join(splits, "test", "*.tfrecord.gz")
    if tf.io.gfile.glob(test_files):
        result["test"] = export.evaluate_saved_model(fn_args.serving_model_dir, transformed, "test")
        _write_json(os.path.join(run_dir, "metrics.json"), result)
    return result
