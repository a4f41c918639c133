"""What every model shares: inputs, the three outputs, and where MTN finds stacked weights.

A model maps the dense inputs of `trainer.inputs` to two logits, CTR and CVR, and outputs
probabilities `ctr`, `cvr` and `ctcvr = ctr * cvr` ([B] float32 each). `forward` also returns
what loss terms need besides the logits (FDN's expert features); those terms and any of their
parameters live in `trainer.regularizers`, outside the model, so the export holds none of them.
"""

from __future__ import annotations

import keras
from keras import ops

from trainer.blocks import FieldEmbedding

TASKS = ("ctr", "cvr")


def outputs_from_logits(logits) -> dict:
    """[B, 2] logits (CTR, CVR) -> {ctr, cvr, ctcvr}: [B] float32 probabilities."""
    probabilities = ops.sigmoid(ops.cast(logits, "float32"))
    ctr, cvr = probabilities[:, 0], probabilities[:, 1]
    return {"ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr}


class MultiTaskModel(keras.Model):
    """Base class. Subclasses build their layers in __init__ and implement `task_logits`."""

    default_loss_convention = "clicked"

    def __init__(self, spec: dict, config: dict, **kwargs):
        super().__init__(**kwargs)
        self.spec, self.config = spec, dict(config)
        self.num_tasks = len(TASKS)

    def embedding(self, name="embedding") -> FieldEmbedding:
        return FieldEmbedding(self.spec, self.config["embedding_dim"], self.config["pooling"], name=name)

    def forward(self, features, training=False) -> tuple:
        """(logits [B, 2], extras: dict of tensors for loss terms)."""
        raise NotImplementedError

    def call(self, features, training=False):
        logits, _ = self.forward(features, training)
        return outputs_from_logits(logits)

    def tower_kernels(self) -> list:
        """Per tower depth, the k tasks' weights stacked: [k, d_in, d_out]."""
        raise ValueError(f"{self.name} has no task towers for MTN to regularise")

    def expert_kernels(self) -> list:
        """Per expert depth, the experts' weights stacked: [E, d_in, d_out]."""
        raise ValueError(f"{self.name} has no experts for MTN to regularise")

    def get_config(self):
        return {"spec": self.spec, "config": self.config, "name": self.name}

    @property
    def _default_save_signature(self):
        # Keras would trace a float32 signature of its own when the export saves this model
        # inside `trainer.export.ServingModule`; the module's signatures are the only ones.
        return None
