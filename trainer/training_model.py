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


def _masked_mean(values, mask):
    return ops.sum(values * mask) / ops.maximum(ops.sum(mask), 1.0)


def mtn_stacks(network: MultiTaskModel, target: str, depth: int | None) -> list:
    """The weight stacks MTN regularises: per depth [n, d_in, d_out], all depths or one."""
    stacks = network.tower_kernels() if target == "towers" else network.expert_kernels()
    if depth is not None:
        if depth >= len(stacks):
            raise ValueError(f"mtn.depth {depth}: {network.name} has {len(stacks)} {target} depths (0 to {len(stacks) - 1})")
        stacks = [stacks[depth]]
    return stacks


def _is_mtn_input(variable, trainee) -> bool:
    """Whether MTN's term depends on the variable: the regularised kernels and MTN's own alphas."""
    return id(variable) in trainee.mtn_variable_ids


class TrainingModel(keras.Model):
    """call(features) -> {"logits": [B, 2], extras...}; `compute_loss` adds every term."""

    def __init__(self, network: MultiTaskModel, spec: InputSpec, config: TrainerConfig, **kwargs):
        super().__init__(**kwargs)
        self.network, self.config = network, config
        self.convention = config.loss_convention
        network(dummy_batch(spec))
        mtn, fdn = config.mtn, config.fdn
        self.mtn = None
        if mtn is not None:
            depths = len(mtn_stacks(network, mtn.target, mtn.depth))
            self.mtn = regularizers.TensorTraceNorm(depths, lam=mtn.lam, alpha_floor=mtn.alpha_floor, name="mtn")
        is_fdn = config.model.name == "fdn"
        self.aux_heads = (regularizers.AuxiliaryHeads(network.num_tasks, config.model.pairs, name="aux_heads")
                          if is_fdn and fdn.aux else None)
        self.orth = is_fdn and fdn.orth and config.model.shared_features
        self.mtn_variable_ids = set()
        self._compiled_step = None
        names = ["ctr_loss", "cvr_loss" if self.convention == "clicked" else "ctcvr_loss"]
        names += ["mtn_loss"] * (self.mtn is not None) + ["aux_loss"] * (self.aux_heads is not None)
        names += ["orth_loss"] * self.orth
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        if self.mtn is not None:
            with tf.GradientTape() as tape:
                loss = self.mtn(mtn_stacks(network, mtn.target, mtn.depth))
            variables = network.trainable_variables + self.mtn.trainable_variables
            self.mtn_variable_ids = {id(v) for v, g in zip(variables, tape.gradient(loss, variables)) if g is not None}
        self(dummy_batch(spec))  # builds the auxiliary heads, so checkpoints restore into built weights
        if self.aux_heads is not None:
            self.aux_heads(self(dummy_batch(spec))["specific"])

    def build(self, input_shape=None):
        pass  # everything is built in __init__, from a dummy batch

    def call(self, features, training=False):
        logits, extras = self.network.forward(features, training=training)
        return {"logits": logits, **{k: v for k, v in extras.items() if v is not None}}

    def loss_terms(self, y, y_pred, include_mtn: bool = True) -> dict:
        """{name: weighted scalar} of every term for a batch."""
        logits = ops.cast(y_pred["logits"], "float32")
        click, conversion = y[F.CLICK], y[F.CONVERSION]
        weights = self.config.loss.weights
        terms = {"ctr_loss": weights["ctr"] * ops.mean(_bce_with_logits(click, logits[:, 0]))}
        if self.convention == "clicked":
            terms["cvr_loss"] = weights["cvr"] * _masked_mean(_bce_with_logits(conversion, logits[:, 1]), click)
        else:
            ctcvr = ops.clip(ops.sigmoid(logits[:, 0]) * ops.sigmoid(logits[:, 1]), 1e-7, 1 - 1e-7)
            label = click * conversion
            terms["ctcvr_loss"] = weights["cvr"] * -ops.mean(label * ops.log(ctcvr) + (1 - label) * ops.log(1 - ctcvr))
        if self.mtn is not None and include_mtn:
            terms["mtn_loss"] = self.mtn(mtn_stacks(self.network, self.config.mtn.target, self.config.mtn.depth))
        if self.aux_heads is not None:
            aux = ops.cast(self.aux_heads(y_pred["specific"]), "float32")  # [B, k, M]
            ctr_aux = ops.mean(_bce_with_logits(click[:, None], aux[:, 0]))
            cvr_aux = _masked_mean(ops.mean(_bce_with_logits(conversion[:, None], aux[:, 1]), axis=1), click)
            terms["aux_loss"] = self.config.fdn.aux_weight * (ctr_aux + cvr_aux)
        if self.orth:
            terms["orth_loss"] = self.config.fdn.orth_weight * regularizers.orthogonality_loss(
                y_pred["specific"], y_pred["shared"], self.config.fdn.orth_variant)
        return terms

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = self.loss_terms(y, y_pred)
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return sum(terms.values())

    def compile_for_training(self, optimizer, xla: bool) -> None:
        """Compiles, keeping MTN's SVDs out of XLA: XLA's CPU SVD takes ~100 ms where the
        TensorFlow kernel takes ~3 ms, which made MTN cost 4x the step. With MTN, the step runs
        outside XLA and jit-compiles everything but the MTN term (see `train_step`)."""
        self.compile(optimizer=optimizer, jit_compile=xla and self.mtn is None)
        self._compiled_step = tf.function(self._gradient_step, jit_compile=xla) if self.mtn is not None else None

    def train_step(self, data):
        if self._compiled_step is None:
            return super().train_step(data)
        x, y = data[0], data[1]
        stack_variables = [v for v in self.trainable_variables if _is_mtn_input(v, self)]
        with tf.GradientTape() as tape:
            mtn_loss = self.mtn(mtn_stacks(self.network, self.config.mtn.target, self.config.mtn.depth))
        mtn_grads = tape.gradient(mtn_loss, stack_variables)
        self.trackers["mtn_loss"].update_state(mtn_loss)
        loss = self._compiled_step(x, y, mtn_grads)
        self._loss_tracker.update_state(loss + mtn_loss)
        return self.get_metrics_result()

    def _gradient_step(self, x, y, mtn_grads):
        """Task and FDN terms, their gradients plus MTN's (computed outside), one optimizer step."""
        with tf.GradientTape() as tape:
            terms = self.loss_terms(y, self(x, training=True), include_mtn=False)
            loss = sum(terms.values())
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        extra = iter(mtn_grads)  # in the order of `variables`
        for i, variable in enumerate(variables):
            if _is_mtn_input(variable, self):
                grads[i] = next(extra) if grads[i] is None else grads[i] + next(extra)
        self.optimizer.apply_gradients(zip(grads, variables))
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return loss

    @property
    def regularizer_params(self) -> int:
        return sum(int(np.prod(v.shape)) for v in self.weights) - self.network.count_params()
