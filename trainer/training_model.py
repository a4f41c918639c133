"""The model as trained: the inference network plus every loss term.

`TrainingModel` wraps a zoo model without changing it. It adds the task losses of the chosen
convention and the regularisers of `trainer.regularizers` (MTN on the network's stacked tower or
expert weights; FDN's orthogonality loss and auxiliary heads), and tracks each term as a metric.
The regularisers' own parameters (MTN's alphas, the auxiliary heads) belong to this wrapper, not
to the network, so exporting the network leaves them out.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from trainer import regularizers
from trainer.config import TrainerConfig
from trainer.inputs import InputSpec
from trainer.models import MultiTaskModel
from transform import features as F


def dummy_batch(spec: InputSpec, rows: int = 2) -> dict:
    """Zeros shaped like a batch of inputs: builds a model's weights before training or restoring."""
    return {key: np.zeros([rows] + list(s.shape[1:]), s.dtype.as_numpy_dtype) for key, s in spec.tensor_specs().items()}


def _bce_with_logits(labels, logits):
    """Per-row binary cross-entropy, stable for any logit."""
    return ops.maximum(logits, 0.0) - logits * labels + ops.log1p(ops.exp(-ops.abs(logits)))


def _masked_mean(values, mask, mask_total=None, replicas: int = 1):
    """Mean of `values` where `mask` is 1. `mask_total`: the mask's sum over the global batch when
    this is one of `replicas` shares of it; then the replicas' results, averaged, make the global
    batch's masked mean (each share's own mean would weigh its rows by its share's mask count)."""
    if mask_total is None:
        return ops.sum(values * mask) / ops.maximum(ops.sum(mask), 1.0)
    return ops.sum(values * mask) * replicas / ops.maximum(mask_total, 1.0)


def mtn_stacks(network: MultiTaskModel, target: str, depth: int | None) -> list:
    """The weight stacks MTN regularises: per depth [n, d_in, d_out], all depths or one."""
    stacks = network.tower_kernels() if target == "towers" else network.expert_kernels()
    if depth is not None:
        if depth >= len(stacks):
            raise ValueError(
                f"mtn.depth {depth}: {network.name} has {len(stacks)} {target} depths (0 to {len(stacks) - 1})"
            )
        stacks = [stacks[depth]]
    return stacks


def _per_replica(value):
    """A loss or gradient divided by the replicas in sync: the optimizer sums the replicas' gradients,
    so their sum is the gradient of the global batch's mean loss (unchanged on one replica)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value if replicas == 1 else value / replicas


def _is_mtn_input(variable, trainee) -> bool:
    """Whether MTN's term depends on the variable: the regularised kernels and MTN's own alphas."""
    return id(variable) in trainee.mtn_variable_ids


class TrainingModel(keras.Model):
    """call(features) -> {"logits": [B, 2], extras...}; `compute_loss` adds every term."""

    def __init__(self, network: MultiTaskModel, spec: InputSpec, config: TrainerConfig, **kwargs):
        super().__init__(**kwargs)
        self.network, self.config, self.spec = network, config, spec
        self.convention = config.loss_convention
        network(dummy_batch(spec))
        mtn, fdn = config.mtn, config.fdn
        self.mtn = None
        if mtn is not None:
            depths = len(mtn_stacks(network, mtn.target, mtn.depth))
            self.mtn = regularizers.TensorTraceNorm(
                depths, lam=mtn.lam, alpha_floor=mtn.alpha_floor, subsets=mtn.subsets, name="mtn"
            )
        is_fdn = config.model.name == "fdn"
        self.aux_heads = (
            regularizers.AuxiliaryHeads(network.num_tasks, config.model.pairs, name="aux_heads")
            if is_fdn and fdn.aux
            else None
        )
        self.orth = is_fdn and fdn.orth and config.model.shared_features
        self.mtn_variable_ids = set()
        self._compiled_step = self._compiled_gradients = None
        self.multi_worker = False
        names = ["ctr_loss"] + ["cvr_loss"] * (self.convention in ("clicked", "both"))
        names += ["ctcvr_loss"] * (self.convention in ("esmm", "both", "impressions"))
        names += ["mtn_loss"] * (self.mtn is not None) + ["aux_loss"] * (self.aux_heads is not None)
        names += ["orth_loss"] * self.orth
        self.embedding_l2 = config.training.embedding_l2
        self.embedding_l2_rows = config.training.embedding_l2_rows
        if self.embedding_l2 is None:
            raise ValueError(
                "training.embedding_l2 is null, which the training split's rule decides: resolve the config "
                "for it first (trainer.config.resolve)"
            )
        if self.embedding_l2 > 0 and self.embedding_l2_rows is None:
            raise ValueError(
                "training.embedding_l2_rows is null, which the training split's rule decides: resolve the "
                "config for it first (trainer.config.resolve)"
            )
        names += ["embedding_l2_loss"] * (self.embedding_l2 > 0)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        if self.mtn is not None:
            self.mtn(mtn_stacks(network, mtn.target, mtn.depth))  # builds the alphas
            variables = network.trainable_variables + self.mtn.trainable_variables

            def depends():
                with tf.GradientTape() as tape:
                    loss = self.mtn(mtn_stacks(network, mtn.target, mtn.depth))
                return tf.constant([g is not None for g in tape.gradient(loss, variables)])

            # Under a strategy a tape watches distributed variables in a replica's context only.
            strategy = tf.distribute.get_strategy()
            found = (
                strategy.experimental_local_results(strategy.run(depends))[0]
                if tf.distribute.has_strategy()
                else depends()
            )
            self.mtn_variable_ids = {id(v) for v, used in zip(variables, found.numpy()) if used}
        self(dummy_batch(spec))  # builds the auxiliary heads, so checkpoints restore into built weights
        if self.aux_heads is not None:
            self.aux_heads(self(dummy_batch(spec))["specific"])

    def build(self, input_shape=None):
        pass  # everything is built in __init__, from a dummy batch

    def call(self, features, training=False):
        logits, extras = self.network.forward(features, training=training)
        if self.embedding_l2 > 0 and training:
            whole = self.embedding_l2_rows == "table"
            extras["embedding_l2"] = sum(
                regularizers.table_l2(layer.table)
                if whole
                else regularizers.touched_rows_l2(layer.table, *layer.row_ids(features))
                for layer in self.network.embedding_layers()
            )
        return {"logits": logits, **{k: v for k, v in extras.items() if v is not None}}

    def loss_terms(self, y, y_pred, include_mtn: bool = True, clicks=None) -> dict:
        """{name: weighted scalar} of every term for a batch. `clicks`: the clicked rows of the
        global batch when `y` is one replica's share of it (see `_masked_mean`)."""
        logits = ops.cast(y_pred["logits"], "float32")
        click, conversion = y[F.CLICK], y[F.CONVERSION]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        weights = self.config.loss_weights
        terms = {"ctr_loss": weights["ctr"] * ops.mean(_bce_with_logits(click, logits[:, 0]))}
        if self.convention in ("clicked", "both"):
            terms["cvr_loss"] = weights["cvr"] * _masked_mean(
                _bce_with_logits(conversion, logits[:, 1]), click, clicks, replicas
            )
        if self.convention in ("esmm", "both"):
            ctcvr = ops.clip(ops.sigmoid(logits[:, 0]) * ops.sigmoid(logits[:, 1]), 1e-7, 1 - 1e-7)
            label = click * conversion
            terms["ctcvr_loss"] = weights["ctcvr"] * -ops.mean(
                label * ops.log(ctcvr) + (1 - label) * ops.log(1 - ctcvr)
            )
        if self.convention == "impressions":
            terms["ctcvr_loss"] = weights["ctcvr"] * ops.mean(_bce_with_logits(click * conversion, logits[:, 1]))
        if self.mtn is not None and include_mtn:
            terms["mtn_loss"] = self.mtn(mtn_stacks(self.network, self.config.mtn.target, self.config.mtn.depth))
        if self.aux_heads is not None:
            aux = ops.cast(self.aux_heads(y_pred["specific"]), "float32")  # [B, k, M]
            # per row, the mean over the heads (ours) or their sum (the paper's)
            over_heads = ops.sum if self.config.fdn.aux_reduction == "sum" else ops.mean
            ctr_aux = ops.mean(over_heads(_bce_with_logits(click[:, None], aux[:, 0]), axis=1))
            if self.convention == "impressions":  # the second task's heads learn what its head does
                cvr_aux = ops.mean(over_heads(_bce_with_logits((click * conversion)[:, None], aux[:, 1]), axis=1))
            else:
                cvr_aux = _masked_mean(
                    over_heads(_bce_with_logits(conversion[:, None], aux[:, 1]), axis=1), click, clicks, replicas
                )
            terms["aux_loss"] = self.config.fdn.aux_weight * (ctr_aux + cvr_aux)
        if "embedding_l2" in y_pred:
            terms["embedding_l2_loss"] = self.embedding_l2 * y_pred["embedding_l2"]
        if self.orth:
            terms["orth_loss"] = self.config.fdn.orth_weight * regularizers.orthogonality_loss(
                y_pred["specific"], y_pred["shared"], self.config.fdn.orth_variant, self.config.fdn.orth_normalized
            )
        return terms

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = self.loss_terms(y, y_pred)
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return _per_replica(sum(terms.values()))  # Keras unscales it for the loss it logs

    def compile_for_training(self, optimizer, xla: bool, multi_worker: bool = False) -> None:
        """Compiles, keeping MTN's SVDs out of XLA: XLA's CPU SVD takes ~100 ms where the
        TensorFlow kernel takes ~3 ms, which made MTN cost 4x the step. With MTN, the step runs
        outside XLA and jit-compiles everything but the MTN term (see `train_step`).

        `multi_worker` (MultiWorkerMirroredStrategy): XLA cannot compile the gradients' cross-worker
        all-reduce on CPU ("Collectives are not yet implemented for CPU devices when compiling
        with XLA"), so the step runs outside XLA, jit-compiles the forward and backward pass only,
        and sums the gradients and updates the weights outside it (see `_multi_worker_step`)."""
        self.multi_worker = multi_worker
        if multi_worker:
            self.compile(optimizer=optimizer, jit_compile=False)
            self._compiled_step = None
            self._compiled_gradients = tf.function(self._gradients, jit_compile=xla)
            return
        self.compile(optimizer=optimizer, jit_compile=xla and self.mtn is None)
        self._compiled_step = tf.function(self._gradient_step, jit_compile=xla) if self.mtn is not None else None

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3 builds a model made under a strategy from a first batch that it averages over the
        # replicas, which fails under MultiWorkerMirroredStrategy; everything is built already, so
        # a dummy batch does (and no batch is taken from the iterator).
        labels = {label: np.zeros([2], np.float32) for label in F.LABELS}
        return super()._maybe_symbolic_build(data_batch=(dummy_batch(self.spec), labels))

    def _mtn_gradients(self):
        """(MTN's loss, its gradients for the variables it depends on, in `trainable_variables` order)."""
        stack_variables = [v for v in self.trainable_variables if _is_mtn_input(v, self)]
        with tf.GradientTape() as tape:
            mtn_loss = self.mtn(mtn_stacks(self.network, self.config.mtn.target, self.config.mtn.depth))
        return mtn_loss, tape.gradient(mtn_loss, stack_variables)

    def train_step(self, data):
        if self.multi_worker:
            return self._multi_worker_step(data)
        if self._compiled_step is None:
            return super().train_step(data)
        x, y = data[0], data[1]
        mtn_loss, mtn_grads = self._mtn_gradients()
        self.trackers["mtn_loss"].update_state(mtn_loss)
        loss = self._compiled_step(x, y, mtn_grads)
        self._loss_tracker.update_state(loss + mtn_loss)
        return self.get_metrics_result()

    def _multi_worker_step(self, data):
        """One step under MultiWorkerMirroredStrategy: MTN's gradients (eager kernels), the other
        terms' forward and backward pass (XLA when on), then the optimizer sums the gradients over
        the workers and applies them, outside XLA."""
        x, y = data[0], data[1]
        mtn_loss, mtn_grads = self._mtn_gradients() if self.mtn is not None else (0.0, [])
        if self.mtn is not None:
            self.trackers["mtn_loss"].update_state(mtn_loss)
        # The masked CVR means need the global batch's clicked rows: one scalar all-reduce, outside XLA.
        clicks = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, ops.sum(y[F.CLICK]))
        loss, terms, grads = self._compiled_gradients(x, y, mtn_grads, clicks)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        self._loss_tracker.update_state(loss + mtn_loss)
        # Keras 3 averages each logged value over the workers along axis 0, which a scalar lacks.
        return {name: tf.reshape(value, [1]) for name, value in self.get_metrics_result().items()}

    def _gradients(self, x, y, mtn_grads, clicks=None):
        """(loss, {term: value}, gradients): the task and FDN terms, and the gradients of their sum
        plus MTN's (computed outside), divided by the replicas in sync, whose gradients the
        optimizer sums. `clicks`: see `loss_terms`.

        The gradients are of the optimizer's scaled loss, as in Keras' own train step: under
        mixed_float16 the optimizer is a LossScaleOptimizer, whose `apply_gradients` divides them
        by its loss scale (unscaled gradients would shrink by that factor, 2^15 at first)."""
        with tf.GradientTape() as tape:
            terms = self.loss_terms(y, self(x, training=True), include_mtn=False, clicks=clicks)
            loss = sum(terms.values())
            scaled = self.optimizer.scale_loss(_per_replica(loss))
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        extra = iter(mtn_grads)  # in the order of `variables`
        for i, variable in enumerate(variables):
            if _is_mtn_input(variable, self):
                mtn_grad = self.optimizer.scale_loss(_per_replica(next(extra)))  # the scale is linear
                grads[i] = mtn_grad if grads[i] is None else grads[i] + mtn_grad
        return loss, terms, grads

    def _gradient_step(self, x, y, mtn_grads):
        """Task and FDN terms, their gradients plus MTN's (computed outside), one optimizer step."""
        loss, terms, grads = self._gradients(x, y, mtn_grads)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return loss

    @property
    def regularizer_params(self) -> int:
        return sum(int(np.prod(v.shape)) for v in self.weights) - self.network.count_params()
