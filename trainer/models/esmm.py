"""ESMM (Ma et al., SIGIR 2018): shared embeddings, a CTR and a CVR network, CTCVR = CTR x CVR.

Its point is the loss over the entire space (CTR and CTCVR on every impression), which is this
model's default loss convention.
"""

from __future__ import annotations

import keras

from trainer.blocks import TaskTowers
from trainer.models.base import MultiTaskModel


@keras.saving.register_keras_serializable("mtrank")
class ESMM(MultiTaskModel):
    def __init__(self, spec, config, **kwargs):
        super().__init__(spec, config, **kwargs)
        self.embed = self.embedding()
        self.towers = TaskTowers(
            self.num_tasks,
            tuple(config["expert_units"]) + tuple(config["tower_units"]),
            config["dropout"],
            name="towers",
        )

    def task_logits(self, features, training=False):
        return self.towers(self.embed(features), training=training), {}

    def tower_kernels(self):
        return self.towers.kernels
