"""OMoE: a mixture of experts with one gate shared by all tasks, then a tower per task."""

from __future__ import annotations

import keras

from trainer.blocks import Experts, Gate, TaskTowers
from trainer.models.base import MultiTaskModel


@keras.saving.register_keras_serializable("mtrank")
class OMoE(MultiTaskModel):
    def __init__(self, spec, config, **kwargs):
        super().__init__(spec, config, **kwargs)
        self.embed = self.embedding()
        self.experts = Experts(config["num_experts"], config["expert_units"], config["dropout"], name="experts")
        self.gate = Gate(config["num_experts"], name="gate")
        self.towers = TaskTowers(self.num_tasks, config["tower_units"], config["dropout"], name="towers")

    def task_logits(self, features, training=False):
        x = self.embed(features)
        experts = self.experts(x, training=training)
        return self.towers(self.gate(x, experts), training=training), {"experts": experts}

    def tower_kernels(self):
        return self.towers.kernels

    def expert_kernels(self):
        return self.experts.kernels
