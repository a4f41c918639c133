"""FDN (Feature Decomposition Network): per task, M decomposition pairs of a task-specific
expert f^p and a task-shared expert f^s; task k's prediction reads the concatenation of its own
specific features and every task's shared features. No towers.

The orthogonality loss between each pair and the auxiliary heads on the specific experts are
loss terms (`trainer.regularizers`), fed by the features `forward` returns; they are not part of
the model, so the serving export holds none of their parameters. `shared_features=False` is the
paper's "without shared features" ablation: no shared experts, fusion of the specific ones only.
"""

from __future__ import annotations

import keras
from keras import ops

from trainer.blocks import DecompositionPairs, TaskTowers
from trainer.models.base import MultiTaskModel


@keras.saving.register_keras_serializable("mtrank")
class FDN(MultiTaskModel):
    def __init__(self, spec, config, **kwargs):
        super().__init__(spec, config, **kwargs)
        self.embed = self.embedding()
        self.pairs = DecompositionPairs(
            self.num_tasks,
            config["pairs"],
            config["expert_units"],
            config["shared_features"],
            config["dropout"],
            name="decomposition_pairs",
        )
        self.prediction = TaskTowers(self.num_tasks, (), name="prediction")  # one linear logit per task

    def expert_features(self, features, training=False):
        """(specific, shared), [B, k, M, u] each: the outputs of each decomposition pair's f^p and
        f^s (pair m of task k at [:, k, m]), as the fusion, L_orth and L_aux read them; shared is
        None without shared features. Public for analyses of the decomposition (`fdn-tsne`)."""
        return self.pairs(self.embed(features), training=training)

    def task_logits(self, features, training=False):
        specific, shared = self.expert_features(features, training=training)
        batch = ops.shape(specific)[0]
        fused = ops.reshape(specific, (batch, self.num_tasks, -1))  # each task's own features
        if shared is not None:
            every_shared = ops.reshape(shared, (batch, 1, -1))
            fused = ops.concatenate([fused, ops.repeat(every_shared, self.num_tasks, axis=1)], axis=2)
        return self.prediction(fused, training=training), {"specific": specific, "shared": shared}

    def expert_kernels(self):
        experts = [self.pairs.specific] + ([self.pairs.shared] if self.pairs.shared is not None else [])
        return [ops.concatenate(ks, axis=0) for ks in zip(*(e.kernels for e in experts))]
