"""PLE (Tang et al., RecSys 2020): `levels` stacked extraction levels (CGC), then a tower per task."""

from __future__ import annotations

import keras
from keras import ops

from trainer.blocks import ExtractionLevel, TaskTowers
from trainer.models.base import MultiTaskModel


@keras.saving.register_keras_serializable("mtrank")
class PLE(MultiTaskModel):
    def __init__(self, spec, config, **kwargs):
        super().__init__(spec, config, **kwargs)
        self.embed = self.embedding()
        levels = self.levels
        self.extraction = [
            ExtractionLevel(
                self.num_tasks,
                config["specific_experts"],
                config["shared_experts"],
                config["expert_units"],
                last=i == levels - 1,
                dropout=config["dropout"],
                name=f"level_{i}",
            )
            for i in range(levels)
        ]
        self.towers = TaskTowers(self.num_tasks, config["tower_units"], config["dropout"], name="towers")

    @property
    def levels(self) -> int:
        return self.config["levels"]

    def task_logits(self, features, training=False):
        x = self.embed(features)
        inputs = [x] * (self.num_tasks + 1)
        for level in self.extraction:
            inputs = level(inputs, training=training)
        return self.towers(ops.stack(inputs, axis=1), training=training), {}

    def tower_kernels(self):
        return self.towers.kernels

    def expert_kernels(self):
        return [kernel for level in self.extraction for kernel in level.expert_kernels()]
