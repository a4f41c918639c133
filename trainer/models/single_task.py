"""Single-task: one network per task (its own embeddings, MLP and logit); nothing is shared."""

from __future__ import annotations

import keras
from keras import ops

from trainer.blocks import TaskTowers
from trainer.models.base import TASKS, MultiTaskModel


@keras.saving.register_keras_serializable("mtrank")
class SingleTask(MultiTaskModel):
    def __init__(self, spec, config, **kwargs):
        super().__init__(spec, config, **kwargs)
        self.embeddings = [self.embedding(f"{task}_embedding") for task in TASKS]
        self.towers = TaskTowers(
            self.num_tasks,
            tuple(config["expert_units"]) + tuple(config["tower_units"]),
            config["dropout"],
            name="towers",
        )

    def task_logits(self, features, training=False):
        inputs = ops.stack([e(features) for e in self.embeddings], axis=1)  # [B, k, d]
        return self.towers(inputs, training=training), {}

    def tower_kernels(self):
        return self.towers.kernels
