"""What every model shares: inputs, the three outputs, and where MTN finds stacked weights.

A model maps the dense inputs of `trainer.inputs` to two logits, CTR and CVR, and outputs
probabilities `ctr`, `cvr` and `ctcvr = ctr * cvr` ([B] float32 each). A model trained under the
"impressions" loss convention (`config["second_head"] == "ctcvr"`) has CTCVR as its second logit
instead, and serves `cvr = min(ctcvr / ctr, 1)`. `forward` also returns
what loss terms need besides the logits (FDN's expert features); those terms and any of their
parameters live in `trainer.regularizers`, outside the model, so the export holds none of them.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from trainer.blocks import FieldEmbedding, LinearLogits

TASKS = ("ctr", "cvr")


SECOND_HEADS = ("cvr", "ctcvr")


def outputs_from_logits(logits, second_head: str = "cvr") -> dict:
    """[B, 2] logits (CTR, then CVR or CTCVR per `second_head`) -> {ctr, cvr, ctcvr}: [B] float32
    probabilities."""
    probabilities = ops.sigmoid(ops.cast(logits, "float32"))
    ctr, second = probabilities[:, 0], probabilities[:, 1]
    if second_head == "ctcvr":
        # Trained apart, the two heads may put CTCVR above CTR; the served CVR stays a probability.
        return {"ctr": ctr, "cvr": ops.minimum(second / ops.maximum(ctr, 1e-7), 1.0), "ctcvr": second}
    return {"ctr": ctr, "cvr": second, "ctcvr": ctr * second}


class MultiTaskModel(keras.Model):
    """Base class. Subclasses build their layers in __init__ and implement `task_logits`.

    With `config["wide"]` a linear part (`LinearLogits`, Wide & Deep's wide part) adds its logits
    to the model's own. Every model's logits end with a bias per task, `logit_bias`, which the
    Trainer starts at the training labels' log-odds (`set_prior`): at a 4% CTR, a zero bias costs
    Adam thousands of steps to undo, and while it does the embeddings of frequent ids absorb the
    shift, which ranks popular items last."""

    def __init__(self, spec: dict, config: dict, **kwargs):
        super().__init__(**kwargs)
        self.spec, self.config = spec, dict(config)
        self.second_head = self.config.get("second_head", "cvr")
        if self.second_head not in SECOND_HEADS:
            raise ValueError(f"second_head must be one of {SECOND_HEADS}, got {self.second_head!r}")
        self.num_tasks = len(TASKS)
        self.wide = LinearLogits(spec, self.num_tasks, name="wide") if config.get("wide") else None
        self.logit_bias = self.add_weight(shape=(self.num_tasks,), initializer="zeros", name="logit_bias")

    def set_prior(self, rates) -> None:
        """Starts the logit biases at the log-odds of each head's positive rate, from `rates` (CTR,
        CVR given click): with CTCVR as the second head, its rate is their product."""
        ctr, cvr = rates
        rates = np.clip(
            np.asarray([ctr, ctr * cvr if self.second_head == "ctcvr" else cvr], np.float64), 1e-6, 1 - 1e-6
        )
        self.logit_bias.assign(np.log(rates / (1 - rates)).astype("float32"))

    def embedding(self, name="embedding") -> FieldEmbedding:
        return FieldEmbedding(self.spec, self.config["embedding_dim"], self.config["pooling"], name=name)

    def embedding_layers(self) -> list[FieldEmbedding]:
        """The model's embedding tables (regularisers read the rows a batch touches)."""
        return [
            layer
            for layer in self._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, FieldEmbedding)
        ]

    def task_logits(self, features, training=False) -> tuple:
        """(logits [B, 2], extras: dict of tensors for loss terms) of the model itself."""
        raise NotImplementedError

    def forward(self, features, training=False) -> tuple:
        """(logits [B, 2], extras): the model's logits, plus the wide part's when it has one."""
        logits, extras = self.task_logits(features, training)
        logits = logits + ops.cast(self.logit_bias, logits.dtype)
        if self.wide is not None:
            logits = logits + ops.cast(self.wide(features), logits.dtype)
        return logits, extras

    def call(self, features, training=False):
        logits, _ = self.forward(features, training)
        return outputs_from_logits(logits, self.second_head)

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
