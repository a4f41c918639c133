"""The Trainer: `run_fn(fn_args)` with TFX's contract, and `train` behind `mtrank train`.

A run folder (`fn_args.model_run_dir`, `OUTPUT/model` for `mtrank train`) holds:
    config.json             the full trainer config, the input spec and package versions
    checkpoints/            the model and optimizer after every evaluation round (tf.train.Checkpoint)
    state.json              rounds done, each round's metrics, the best round so far, early-stopping count
    best.weights.h5         the network's weights at the best eval value of `training.monitor`
    logs/                   TensorBoard
    metrics.json            the history, the best round's eval metrics, test metrics, parameter counts
and the SavedModel goes to `fn_args.serving_model_dir` (`OUTPUT/model/serving`).

Under MultiWorkerMirroredStrategy (TF_CONFIG naming a cluster: `trainer.distribute`) every worker
runs `run_fn`; only the chief writes the run folder. The others keep their checkpoints (saving is
collective, so every worker saves) in a local temporary folder, deleted at the end, write nothing
else, and return the chief's result.

Training is evaluated `training.evals_per_epoch` times per pass over the training split (deep CTR
models often peak within their first pass); each evaluation round is a Keras epoch of its own.
Running again on a folder whose run was killed resumes after the last finished round, with
the batches an uninterrupted run would have seen; on a finished run it only exports again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from trainer import distribute, export, inputs, linear, models, optimizers, warm_start
from trainer.config import TrainerConfig, from_dict, resolve
from common import layout
from trainer.callbacks import Evaluation, Throughput, evaluate
from trainer.run_state import TrainingError, chief_says, start_state, step_of, write_json
from trainer.training_model import TrainingModel
from transform import features as F

_LOG = logging.getLogger(__name__)


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


def _strategy(config: TrainerConfig) -> distribute.Workers:
    """The strategy of `hardware.distribute` and this process's part in it (`trainer.distribute`):
    MultiWorkerMirroredStrategy for a TF_CONFIG cluster, MirroredStrategy for 2+ local GPUs, else
    the default. It must be the run's first TensorFlow op (MultiWorkerMirroredStrategy's rule)."""
    try:
        return distribute.create(config.hardware.distribute)
    except distribute.ClusterError as e:
        raise TrainingError(str(e)) from None


def _keras_verbosity() -> int:
    """Keras' own per-epoch line, unless our round lines are shown and other libraries' INFO is not
    (`mtrank` without --verbose: ours already says what Keras would, with the eval metrics)."""
    if _LOG.isEnabledFor(logging.INFO) and not logging.getLogger().isEnabledFor(logging.INFO):
        return 0
    return 1 if sys.stderr.isatty() else 2


def run_fn(fn_args) -> dict:
    """Trains the configured model on Transform's output and exports it; returns the run's metrics."""
    return _run(fn_args)


def _run(fn_args, after_export=None) -> dict:
    """run_fn; `after_export(result, network)` -> result runs on the chief after the export, before the
    other workers are released (`train` scores the test split there)."""
    config = from_dict(fn_args.custom_config)
    workers = _strategy(config)  # first: MultiWorkerMirroredStrategy must precede every other TensorFlow op
    if workers.is_chief:
        return _train_into(fn_args.model_run_dir, fn_args, config, workers, after_export)
    # The chief writes the run folder; this worker's checkpoints go to a local folder of its own.
    scratch = tempfile.mkdtemp(prefix=f"mtrank-worker{workers.role.index}-")
    try:
        return _train_into(scratch, fn_args, config, workers, after_export)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train_into(run_dir: str, fn_args, config: TrainerConfig, workers: distribute.Workers, after_export) -> dict:
    import tensorflow_transform as tft

    from transform.preprocessing import categorical_cardinalities

    training, hardware = config.training, config.hardware
    chief = workers.is_chief
    tf.io.gfile.makedirs(run_dir)
    keras.utils.set_random_seed(training.seed)

    started = time.time()
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    feature_spec = tft_output.transformed_feature_spec()
    cardinalities = categorical_cardinalities(tft_output)
    train_split = inputs.load(
        fn_args.train_files,
        feature_spec,
        None,
        cardinalities,
        training.max_bag_length,
        training.memory_budget_gb,
        "train",
    )
    spec = train_split.spec
    eval_split = (
        inputs.load(
            fn_args.eval_files,
            feature_spec,
            spec,
            cardinalities,
            training.max_bag_length,
            training.memory_budget_gb,
            "eval",
        )
        if chief
        else None
    )  # the chief alone evaluates
    load_seconds = time.time() - started
    config, resolved = resolve(config, train_split.rows)
    training = config.training
    if resolved and config.model.name != "logistic":  # the solved reference uses none of them
        _LOG.info(
            "defaults by the training split (%s rows): %s",
            f"{train_split.rows:,}" if train_split.in_memory else "streamed",
            ", ".join(f"{key} {v if isinstance(v, str) else format(v, 'g')}" for key, v in resolved.items()),
        )

    # The chief's folder holds the run: every worker starts from its state (and, below, its weights).
    start = chief_says(
        workers,
        lambda: {
            "state": start_state(run_dir, config, spec, fn_args, resolved),
            "sync_weights": bool(fn_args.base_model),
        },
    )
    state = start["state"]

    batch_size = min(training.batch_size, train_split.rows or training.batch_size)
    replicas = workers.strategy.num_replicas_in_sync
    if workers.multi_worker and batch_size % replicas:
        _LOG.warning(
            "training.batch_size %d is not a multiple of the %d replicas: their batches differ in size",
            batch_size,
            replicas,
        )
    # Training runs in evaluation rounds: Keras epochs of `steps_per_eval` steps over one stream of
    # shuffled passes. A streamed split (its length unknown) is evaluated once per pass.
    full_pass = train_split.rows // batch_size if train_split.in_memory else None
    per_epoch = training.steps_per_epoch or full_pass
    evals_per_epoch = min(training.evals_per_epoch, per_epoch) if per_epoch else 1
    steps_per_eval = max(1, per_epoch // evals_per_epoch) if per_epoch else None
    rounds = training.epochs * evals_per_epoch
    if fn_args.train_steps and steps_per_eval:
        rounds = min(rounds, math.ceil(fn_args.train_steps / steps_per_eval))

    policy = keras.config.dtype_policy()
    strategy = workers.strategy
    try:
        if hardware.mixed_precision:
            keras.config.set_dtype_policy("mixed_float16")
        with strategy.scope():
            network = models.build(spec.to_dict(), config.network_config())
            trainee = TrainingModel(network, spec, config)
            optimizer = optimizers.for_model(network, training)
            trainee.compile_for_training(optimizer, hardware.xla, multi_worker=workers.multi_worker)
            optimizer.build(trainee.trainable_variables)
    finally:
        keras.config.set_dtype_policy(policy)
    if config.model.name == "logistic":
        return _solve_linear(
            run_dir,
            fn_args,
            config,
            network,
            trainee,
            tft_output,
            spec,
            train_split,
            eval_split,
            workers,
            load_seconds,
            resolved,
            after_export,
        )
    if workers.multi_worker and hardware.xla:
        _LOG.info(
            "XLA compiles the forward and backward pass only: it cannot compile the workers' gradient "
            "all-reduce on CPU, which runs outside it with the optimizer's update"
        )

    checkpoint = tf.train.Checkpoint(model=trainee, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(run_dir, "checkpoints"), max_to_keep=2)
    first_round = state["evals_done"]
    if not first_round:
        network.set_prior(_label_rates(train_split, batch_size))
    if chief and first_round:
        path = os.path.join(run_dir, "checkpoints", f"ckpt-{first_round}")
        checkpoint.restore(path).assert_existing_objects_matched()
        _LOG.info("resuming %s after evaluation round %d", run_dir, first_round)
    elif chief and fn_args.base_model:
        state["warm_start"] = warm_start.warm_start(network, tft_output, fn_args.base_model)
    if first_round or start["sync_weights"]:  # the others take the chief's restored or warm-started weights
        workers.broadcast_variables(_state_variables(trainee, optimizer))

    train_seconds = 0.0
    throughput = Throughput(batch_size)
    finished = state["stopped_early"] or first_round >= rounds
    if not finished:
        if full_pass:
            # The stream a run from the start would read, from the batch after the rounds done.
            position = first_round * steps_per_eval
            needed = (rounds - first_round) * steps_per_eval
            first_pass, offset = divmod(position, full_pass)
            passes = range(first_pass, first_pass + math.ceil((offset + needed) / full_pass))
            dataset, _ = train_split.dataset(batch_size, training.seed, passes, drop_remainder=True)
            dataset = dataset.skip(offset)
        else:
            dataset, _ = train_split.dataset(batch_size, training.seed, range(first_round, rounds), drop_remainder=True)
        if workers.multi_worker:
            # Each global batch is split across the workers: every worker builds the same batches
            # and keeps its share of each (sharding by file would need a file per worker).
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
            dataset = dataset.with_options(options)
        callbacks = [
            Evaluation(
                run_dir,
                state,
                lambda: evaluate(network, eval_split, training.eval_batch_size, hardware.xla, fn_args.eval_steps),
                network,
                manager,
                workers,
                config,
                steps_per_eval,
                evals_per_epoch,
            ),
            throughput,
        ]
        if chief:
            callbacks.insert(
                1, keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False, profile_batch=0)
            )
        _LOG.info(
            "training %s for %d evaluation rounds (%d to %d) of %s steps of %d, %d rounds per epoch%s",
            config.model.name,
            rounds - first_round,
            first_round + 1,
            rounds,
            steps_per_eval or "all",
            batch_size,
            evals_per_epoch,
            f" ({batch_size // workers.count} per worker)" if workers.multi_worker else "",
        )
        started = time.time()
        trainee.fit(
            dataset,
            epochs=rounds,
            initial_epoch=first_round,
            steps_per_epoch=steps_per_eval,
            callbacks=callbacks,
            shuffle=False,
            verbose=_keras_verbosity(),
        )
        train_seconds = time.time() - started

    # The final weights' digest on every worker: workers that trained one model agree.
    digest = distribute.weights_digest(_state_variables(trainee, optimizer))
    digests = workers.gather(digest)
    distribution = {
        "strategy": workers.name,
        "workers": workers.count,
        "global_batch_size": batch_size,
        "optimizer_steps": int(optimizer.iterations.numpy()),
        "final_weights_digest": digest,
        "workers_agree": len(set(digests)) == 1,
    }
    if workers.multi_worker:
        if distribution["workers_agree"]:
            _LOG.info("final weights digest %s, the same on all %d workers", digest, workers.count)
        else:
            _LOG.error("the workers' final weights differ (digests %s): report this as a bug", digests)
    if not chief:
        _LOG.info("worker %d done; waiting for the chief to export", workers.role.index)
    return chief_says(
        workers,
        lambda: _finish(
            run_dir,
            fn_args,
            config,
            network,
            trainee,
            tft_output,
            spec,
            eval_split,
            state,
            {
                "train_rows": train_split.rows,
                "load_seconds": load_seconds,
                "train_seconds": train_seconds,
                "throughput": throughput.examples_per_second,
                "distribute": distribution,
                "resolved": resolved,
            },
            after_export,
        ),
    )


def _solve_linear(
    run_dir,
    fn_args,
    config,
    network,
    trainee,
    tft_output,
    spec,
    train_split,
    eval_split,
    workers,
    load_seconds,
    resolved,
    after_export,
) -> dict:
    """The `logistic` reference, solved to convergence on the whole training split (`trainer.linear`)
    instead of trained by minibatches; the `training` section's optimisation keys do not apply."""
    if workers.multi_worker:
        raise TrainingError('the logistic reference is solved in one process: set hardware.distribute to "none"')
    state = start_state(run_dir, config, spec, fn_args, resolved)
    started = time.time()
    solved = linear.solve(network, network.linear, train_split, eval_split, config.training.memory_budget_gb)
    network.save_weights(os.path.join(run_dir, "best.weights.h5"))
    state = {**state, "evals_done": 0, "history": [], "best_eval": None, "best_epoch": None, "stopped_early": False}
    write_json(os.path.join(run_dir, "state.json"), state)
    distribution = {"strategy": workers.name, "workers": 1, "optimizer_steps": 0}
    run = {
        "train_rows": train_split.rows,
        "load_seconds": load_seconds,
        "train_seconds": time.time() - started,
        "throughput": None,
        "distribute": distribution,
        "resolved": resolved,
    }

    def with_solver(result, network):
        result["solver"] = solved
        write_json(os.path.join(run_dir, layout.METRICS), result)
        return after_export(result, network) if after_export else result

    return _finish(run_dir, fn_args, config, network, trainee, tft_output, spec, eval_split, state, run, with_solver)


def _label_rates(split: inputs.Split, batch_size: int, stream_batches: int = 50) -> tuple[float, float]:
    """(clicks per row, conversions per click) of the training labels (of its first batches when
    the split streams)."""
    if split.in_memory:
        click, conversion = split.labels[F.CLICK], split.labels[F.CONVERSION]
    else:
        batches = [labels for _, labels in split.dataset(batch_size)[0].take(stream_batches)]
        click = np.concatenate([b[F.CLICK].numpy() for b in batches])
        conversion = np.concatenate([b[F.CONVERSION].numpy() for b in batches])
    clicks = float(np.sum(click))
    return clicks / max(len(click), 1), float(np.sum(conversion * click)) / max(clicks, 1.0)


def _state_variables(trainee, optimizer) -> list:
    """The model's and optimizer's variables: what a checkpoint restores (metrics aside)."""
    return list(trainee.trainable_variables) + list(trainee.non_trainable_variables) + list(optimizer.variables)


def _finish(run_dir, fn_args, config, network, trainee, tft_output, spec, eval_split, state, run, after_export):
    """The chief's end of a run: the best weights, their eval metrics, the export, metrics.json."""
    training, hardware = config.training, config.hardware
    best_weights = os.path.join(run_dir, "best.weights.h5")
    if tf.io.gfile.exists(best_weights):
        network.load_weights(best_weights)
    best_metrics = evaluate(network, eval_split, training.eval_batch_size, hardware.xla, fn_args.eval_steps)
    # No serving_model_dir: `train(export_model=False)`, for grids of small runs.
    exported = (
        export.export(network, tft_output, spec, fn_args.serving_model_dir)
        if fn_args.serving_model_dir
        else {"params": None}
    )
    result = {
        "model": config.model.name,
        "seed": training.seed,
        "evals_done": state["evals_done"],
        "epochs_done": state["history"][-1]["epoch"] if state["history"] else 0,
        "best_eval": state["best_eval"],
        "best_epoch": state["best_epoch"],
        "best_step": step_of(state, state["best_eval"]),
        "stopped_early": state["stopped_early"],
        "monitor": training.monitor,
        "eval": best_metrics,
        "history": state["history"],
        "params": {
            "total": trainee.count_params(),
            "exported": exported["params"],
            "regularizer_only": trainee.regularizer_params,
        },
        "rows": {"train": run["train_rows"], "eval": eval_split.rows},
        "seconds": {"load": run["load_seconds"], "train": run["train_seconds"]},
        "train_examples_per_second": run["throughput"],
        "serving_model_dir": fn_args.serving_model_dir,
        "distribute": run["distribute"],
        "resolved": run["resolved"],
    }
    if state.get("warm_start"):
        result["warm_start"] = state["warm_start"]
    if trainee.mtn is not None:
        result["mtn_alphas"] = np.asarray(trainee.mtn.alphas).tolist()
    write_json(os.path.join(run_dir, layout.METRICS), result)
    return after_export(result, network) if after_export else result


def _evaluate_network(network, transform_graph_path: str, files: str, config: TrainerConfig) -> dict:
    """The task metrics of the network on a split of Transform's output."""
    import tensorflow_transform as tft

    from transform.preprocessing import categorical_cardinalities

    tft_output = tft.TFTransformOutput(transform_graph_path)
    training = config.training
    split = inputs.load(
        [files],
        tft_output.transformed_feature_spec(),
        inputs.InputSpec.from_dict(network.spec),
        categorical_cardinalities(tft_output),
        training.max_bag_length,
        training.memory_budget_gb,
        "test",
    )
    return evaluate(network, split, training.eval_batch_size, config.hardware.xla)


def train(
    transformed: str,
    output: str,
    config: dict | None = None,
    overwrite: bool = False,
    base_model: str | None = None,
    export_model: bool = True,
) -> dict:
    """`mtrank train`: run_fn on `transformed`'s Transform output, into `output`/model; also scores the
    best network on Transform's test split when there is one. `base_model`: a SavedModel to
    warm-start from.

    The Trainer reads Transform's folder only (on Kubeflow it is the one artifact its pod gets);
    scoring the exported SavedModel on ExampleGen's raw examples is the Evaluator's. With
    `export_model=False` (grids of small runs, experiments/) no SavedModel is written."""
    run_dir = os.path.join(output, layout.MODEL)
    checked = from_dict(config or {})
    try:  # read without TensorFlow: the strategy must come first
        role = distribute.role_of(checked.hardware.distribute)
    except distribute.ClusterError as e:
        raise TrainingError(str(e)) from None
    if overwrite and role.is_chief and tf.io.gfile.exists(run_dir):  # other workers write no run folder
        tf.io.gfile.rmtree(run_dir)
    splits = os.path.join(transformed, layout.TRANSFORMED)
    fn_args = FnArgs(
        train_files=[os.path.join(splits, "train", layout.RECORDS)],
        eval_files=[os.path.join(splits, "eval", layout.RECORDS)],
        transform_graph_path=os.path.join(transformed, layout.TRANSFORM_GRAPH),
        serving_model_dir=os.path.join(run_dir, layout.SERVING) if export_model else None,
        model_run_dir=run_dir,
        custom_config=config or {},
        working_dir=output,
        base_model=base_model,
    )

    def score_test_split(result: dict, network) -> dict:
        test_files = os.path.join(splits, "test", layout.RECORDS)
        if tf.io.gfile.glob(test_files):
            result["test"] = _evaluate_network(network, fn_args.transform_graph_path, test_files, checked)
            write_json(os.path.join(run_dir, layout.METRICS), result)
        return result

    return _run(fn_args, after_export=score_test_split)
