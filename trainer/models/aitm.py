"""AITM (Xi et al., KDD 2021): task towers on shared embeddings; an attention transfer unit
passes what the click tower learned to the conversion tower.

The conversion head predicts CVR, so CTCVR = CTR x CVR never exceeds CTR: the paper's
calibrator constraint holds by construction and needs no loss of its own. Trained with the
ESMM convention by default (click and click-and-convert labels over all impressions).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from trainer.blocks import TaskTowers
from trainer.models.base import MultiTaskModel


@keras.saving.register_keras_serializable("mtrank")
class AttentionTransfer(keras.layers.Layer):
    """([B, u] previous task's vector, [B, u] this task's) -> [B, u]: self-attention over the two,
    after mapping the previous one through the transfer layer."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.transfer = keras.layers.Dense(units, activation="relu", name="transfer")
        self.query, self.key, self.value = (keras.layers.Dense(units, name=n) for n in ("query", "key", "value"))

    def call(self, previous, current):
        items = ops.stack([self.transfer(previous), current], axis=1)  # [B, 2, u]
        scores = ops.sum(self.query(items) * self.key(items), axis=-1) / math.sqrt(self.units)  # [B, 2]
        return ops.einsum("bi,biu->bu", ops.softmax(scores, axis=-1), self.value(items))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable("mtrank")
class AITM(MultiTaskModel):
    def __init__(self, spec, config, **kwargs):
        super().__init__(spec, config, **kwargs)
        units = tuple(config["expert_units"]) + tuple(config["tower_units"])
        self.embed = self.embedding()
        self.towers = TaskTowers(self.num_tasks, units, config["dropout"], logits=False, name="towers")
        self.attention = AttentionTransfer(units[-1], name="attention_transfer")
        self.heads = [keras.layers.Dense(1, name=f"head_{t}") for t in range(self.num_tasks)]

    def task_logits(self, features, training=False):
        towers = self.towers(self.embed(features), training=training)  # [B, 2, u]
        click, conversion = towers[:, 0], towers[:, 1]
        conversion = self.attention(click, conversion)
        logits = ops.concatenate([self.heads[0](click), self.heads[1](conversion)], axis=1)
        return logits, {}

    def tower_kernels(self):
        return self.towers.kernels
