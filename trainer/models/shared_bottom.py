"""Shared-bottom (Caruana, 1997): one MLP shared by the tasks, then a tower per task."""

from __future__ import annotations

import keras

from trainer.blocks import MLP, TaskTowers
from trainer.models.base import MultiTaskModel


@keras.saving.register_keras_serializable("mtrank")
class SharedBottom(MultiTaskModel):
    def __init__(self, spec, config, **kwargs):
        super().__init__(spec, config, **kwargs)
        self.embed = self.embedding()
        self.bottom = MLP(config["expert_units"], config["dropout"], name="bottom")
        self.towers = TaskTowers(self.num_tasks, config["tower_units"], config["dropout"], name="towers")

    def task_logits(self, features, training=False):
        shared = self.bottom(self.embed(features), training=training)
        return self.towers(shared, training=training), {}

    def tower_kernels(self):
        return self.towers.kernels
