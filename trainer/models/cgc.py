"""CGC (Tang et al., RecSys 2020): PLE's single extraction level, task-specific and shared experts."""

from __future__ import annotations

import keras

from trainer.models.ple import PLE


@keras.saving.register_keras_serializable("mtrank")
class CGC(PLE):
    @property
    def levels(self) -> int:
        return 1
