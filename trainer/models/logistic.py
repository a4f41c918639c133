"""Logistic regression per task: the linear baseline every deep model must beat (DESIGN.md).

One weight per id of every field and a bias, per task (`LinearLogits`); CTR is trained on all
rows and CVR on clicked rows (the "clicked" convention), and ctcvr = ctr x cvr as for every model.
"""

from __future__ import annotations

import keras

from trainer.blocks import LinearLogits
from trainer.models.base import MultiTaskModel


@keras.saving.register_keras_serializable("mtrank")
class Logistic(MultiTaskModel):
    def __init__(self, spec, config, **kwargs):
        super().__init__(spec, {**config, "wide": False}, **kwargs)
        self.linear = LinearLogits(spec, self.num_tasks, name="linear")

    def task_logits(self, features, training=False):
        return self.linear(features), {}
