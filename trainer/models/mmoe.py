"""MMoE (Ma et al., KDD 2018): shared experts, a softmax gate per task over them, a tower per task."""

from __future__ import annotations

import keras
from keras import ops

from trainer.blocks import Experts, Gate, TaskTowers
from trainer.models.base import MultiTaskModel


@keras.saving.register_keras_serializable("mtrank")
class MMoE(MultiTaskModel):
    def __init__(self, spec, config, **kwargs):
        super().__init__(spec, config, **kwargs)
        self.embed = self.embedding()
        self.experts = Experts(config["num_experts"], config["expert_units"], config["dropout"], name="experts")
        self.gates = [Gate(config["num_experts"], name=f"gate_{t}") for t in range(self.num_tasks)]
        self.towers = TaskTowers(self.num_tasks, config["tower_units"], config["dropout"], name="towers")

    def task_logits(self, features, training=False):
        x = self.embed(features)
        experts = self.experts(x, training=training)
        mixed = ops.stack([gate(x, experts) for gate in self.gates], axis=1)  # [B, k, u]
        return self.towers(mixed, training=training), {"experts": experts}

    def tower_kernels(self):
        return self.towers.kernels

    def expert_kernels(self):
        return self.experts.kernels
