"""The Trainer's configuration (TFX's `custom_config`), checked without TensorFlow.

A JSON object with up to six sections, each optional; every key is checked by name and type:

    {"model":    {"name": "mmoe", "embedding_dim": 16, "expert_units": [128, 64], ...},
     "loss":     {"convention": "both", "weights": {"ctr": 1.0, "cvr": 0.3, "ctcvr": 1.0}},
     "fdn":      {"aux": true, "orth": true, "orth_variant": "paper", "aux_reduction": "mean", ...},
     "mtn":      {"lam": 1e-5, "target": "towers", "depth": null, "alpha_floor": 0.5, "subsets": "modes"},
     "training": {"epochs": 10, "batch_size": 2048, "seed": 0, ...},
     "hardware": {"xla": true, "mixed_precision": false, "distribute": "auto"}}

`mtn` absent or null means no MTN regulariser.
"""

from __future__ import annotations

import dataclasses
import typing

MODEL_NAMES = ("logistic", "single_task", "shared_bottom", "omoe", "mmoe", "cgc", "ple", "esmm", "aitm", "fdn")
# ESMM's: CTR and CTCVR losses over all impressions. Clicked: CTR over all rows, CVR on clicked rows only.
# Both: ESMM's two terms plus CVR on clicked rows. Impressions (MTReclib's, the MTN paper's): the second
# head predicts conversion over all impressions, so it is the served CTCVR and CVR is CTCVR / CTR.
LOSS_CONVENTIONS = ("esmm", "clicked", "both", "impressions")
# Under "both", CVR on the few clicked rows is a down-weighted helper of ESMM's two terms (the sweep).
BOTH_WEIGHTS = {"ctr": 1.0, "cvr": 0.3, "ctcvr": 1.0}
ORTH_VARIANTS = ("paper", "authors")
MTN_TARGETS = ("towers", "experts")
MTN_SUBSETS = ("modes", "all")
AUX_REDUCTIONS = ("mean", "sum")
MONITORS = ("logloss", "ctr_ctcvr_logloss", "cvr_auc", "ctcvr_auc")
EMBEDDING_OPTIMIZERS = ("adam", "adagrad", "ftrl")
EMBEDDING_L2_ROWS_CHOICES = ("touched", "table")
# The `model` keys that default to null resolve per model: `MODEL_DEFAULTS[name]`, else
# `GENERAL_DEFAULTS`. PLE stacks two extraction levels: at [128, 64] units per expert it overfits
# before its first pass ends, and with 4 shared experts per level its CVR falls behind. One layer of
# 64 units and 1 shared expert per level have the lower eval log loss at 200K and 1M rows (the
# README's PLE sweeps); CGC, one level, ties at 2 and 4 shared experts and keeps 4.
GENERAL_DEFAULTS = {"expert_units": (128, 64), "shared_experts": 4}
MODEL_DEFAULTS = {"ple": {"expert_units": (64,), "shared_experts": 1}}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = "mmoe"
    embedding_dim: int = 16
    pooling: str = "sum"  # multi-valued fields: "sum" or "mean" of their ids' weight-scaled embeddings
    # each expert; the shared bottom and single-task networks too. None: the model's default.
    expert_units: typing.Optional[tuple] = None
    tower_units: tuple = (64,)  # hidden layers of each task tower, before its logit
    num_experts: int = 8  # omoe, mmoe
    specific_experts: int = 2  # cgc, ple: per task, per level
    shared_experts: typing.Optional[int] = None  # cgc, ple: per level. None: the model's default.
    levels: int = 2  # ple
    pairs: int = 2  # fdn: decomposition pairs per task
    shared_features: bool = True  # fdn: False is the paper's "without shared features" ablation
    dropout: float = 0.0
    wide: bool = False  # add a linear part's logits (one weight per id per task), as in Wide & Deep

    def __post_init__(self):
        for key, general in GENERAL_DEFAULTS.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, MODEL_DEFAULTS.get(self.name, {}).get(key, general))


@dataclasses.dataclass(frozen=True)
class LossConfig:
    # None: "clicked" for the models whose tasks are trained apart (logistic, single_task), else
    # "both" (chosen on the eval split: the README's sweep).
    convention: typing.Optional[str] = None
    # Each term's weight: "ctr", "cvr" (the clicked-rows CVR term) and "ctcvr" (ESMM's product, or
    # under "impressions" the second head over all impressions); keys left out take
    # the convention's defaults, `BOTH_WEIGHTS` under "both" and 1 otherwise.
    weights: typing.Optional[dict] = None


@dataclasses.dataclass(frozen=True)
class FdnConfig:
    aux: bool = True  # one auxiliary head per task-specific expert
    aux_weight: float = 0.1
    orth: bool = True
    orth_weight: float = 0.01
    orth_variant: str = "paper"  # "authors": their public code's per-sample outer-product norm
    # Ours: L_orth / B^2, a scale that does not depend on the batch size. False: the paper's
    # unnormalised sum of squared cross-products (it grows with B^2).
    orth_normalized: bool = True
    # Ours: L_aux as the mean over the auxiliary heads. "sum": the paper's sum over them.
    aux_reduction: str = "mean"


@dataclasses.dataclass(frozen=True)
class MtnConfig:
    lam: float = 1e-5
    target: str = "towers"  # "experts": the paper's Analysis 3
    depth: typing.Optional[int] = None  # None: every depth; an index: that depth only
    alpha_floor: float = 0.5  # share of alpha spread uniformly over the subsets (see trainer.regularizers)
    # Ours: "modes", one alpha per mode unfolding. "all": the paper's 7 mode subsets, the full set's
    # alpha (on ||W||_F) included (trainer.regularizers.TensorTraceNorm).
    subsets: str = "modes"


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 10
    # null: by the training rows (`resolve`): 2,048, or fewer where a pass would have under 64 steps
    batch_size: typing.Optional[int] = None
    learning_rate: float = 1e-3
    # Early stopping and the weights kept: "logloss", the summed eval log loss of CTR and CTCVR (every
    # row) and CVR (clicked rows), "ctr_ctcvr_logloss", ESMM's two terms without the clicked-rows CVR
    # (docs/quality.md: a lead at 1M rows, not yet the default), "cvr_auc", the eval CVR AUC on clicked
    # rows, or "ctcvr_auc", the eval CTCVR AUC on every row (the MTN paper's rule: its conversion task
    # is over all impressions).
    monitor: str = "logloss"
    evals_per_epoch: int = 4  # evaluations per pass over the training split (one when it streams)
    # Evaluations without a better monitor value before stopping. null: by the round length (`resolve`):
    # the rounds of one pass, and enough of them to span 200 training steps.
    patience: typing.Optional[int] = None
    # L2 on the embedding rows (which rows: embedding_l2_rows; trainer.regularizers). null: by the
    # training rows (`resolve`): 180 / rows (1e-3 at 180,000 rows), and 1e-5 on a large split.
    embedding_l2: typing.Optional[float] = None
    # The rows embedding_l2 acts on each step: "touched", those the batch reads, or "table", every
    # row (DeepCTR's l2_reg_embedding). null: by the training rows (`resolve`): "table" on a large
    # split, else "touched".
    embedding_l2_rows: typing.Optional[str] = None
    embedding_optimizer: str = "adam"  # the embedding tables' optimizer (trainer.optimizers); dense layers: Adam
    # null: by the training rows (`resolve`): 8 x learning_rate on a large split with Adam on the
    # tables, else learning_rate
    embedding_learning_rate: typing.Optional[float] = None
    # Every learning rate rises linearly from 0 over `warmup_steps`, then (unless `decay_steps` is
    # null: a constant rate, the default) falls along a cosine to `decay_floor` of its value over the
    # next `decay_steps` steps, and stays there (trainer.optimizers.WarmupCosine).
    warmup_steps: int = 0
    decay_steps: typing.Optional[int] = None
    decay_floor: float = 0.1
    seed: int = 0
    max_bag_length: int = 32  # ids kept per multi-valued field (the first ones, in file order)
    memory_budget_gb: float = 8.0  # splits that fit are parsed once and kept in memory; larger ones stream
    eval_batch_size: int = 8192
    steps_per_epoch: typing.Optional[int] = None  # None: one pass over the training split


@dataclasses.dataclass(frozen=True)
class HardwareConfig:
    xla: bool = True  # jit-compile the train and predict steps
    mixed_precision: bool = False  # float16 compute on GPUs; the MTN SVD stays float32
    # "auto": MultiWorkerMirroredStrategy when TF_CONFIG names a cluster of 2+ chief/worker tasks,
    # else MirroredStrategy over the local GPUs when there are 2+ (trainer/distribute.py);
    # "none": one process, one device, whatever TF_CONFIG and the GPUs say
    distribute: str = "auto"


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    fdn: FdnConfig = FdnConfig()
    mtn: typing.Optional[MtnConfig] = None
    training: TrainingConfig = TrainingConfig()
    hardware: HardwareConfig = HardwareConfig()

    @property
    def loss_convention(self) -> str:
        if self.loss.convention is not None:
            return self.loss.convention
        return "clicked" if self.model.name in ("logistic", "single_task") else "both"

    def network_config(self) -> dict:
        """The model section as the network is built from it (`trainer.models.build`): under the
        "impressions" convention the second head is CTCVR, not CVR (`second_head`)."""
        config = dataclasses.asdict(self.model)
        return {**config, "second_head": "ctcvr"} if self.loss_convention == "impressions" else config

    @property
    def loss_weights(self) -> dict:
        """{"ctr", "cvr", "ctcvr": weight}: `loss.weights` over the convention's defaults."""
        defaults = BOTH_WEIGHTS if self.loss_convention == "both" else {"ctr": 1.0, "cvr": 1.0, "ctcvr": 1.0}
        return {**defaults, **(self.loss.weights or {})}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **sections) -> "TrainerConfig":
        """A copy with some sections' keys changed: replace(training={"epochs": 2}). A new model name
        takes that model's defaults of the keys it does not set (`MODEL_DEFAULTS`)."""
        merged = self.to_dict()
        if "name" in (sections.get("model") or {}):
            for key in GENERAL_DEFAULTS.keys() - sections["model"].keys():
                merged["model"][key] = None
        for section, values in sections.items():
            if values is None or merged.get(section) is None:
                merged[section] = values
            else:
                merged[section] = {**merged[section], **values}
        return from_dict(merged)


_SECTIONS = {
    "model": ModelConfig,
    "loss": LossConfig,
    "fdn": FdnConfig,
    "mtn": MtnConfig,
    "training": TrainingConfig,
    "hardware": HardwareConfig,
}
_CHOICES = {
    ("model", "name"): MODEL_NAMES,
    ("model", "pooling"): ("mean", "sum"),
    ("loss", "convention"): LOSS_CONVENTIONS + (None,),
    ("fdn", "orth_variant"): ORTH_VARIANTS,
    ("fdn", "aux_reduction"): AUX_REDUCTIONS,
    ("mtn", "target"): MTN_TARGETS,
    ("mtn", "subsets"): MTN_SUBSETS,
    ("training", "monitor"): MONITORS,
    ("training", "embedding_optimizer"): EMBEDDING_OPTIMIZERS,
    ("training", "embedding_l2_rows"): EMBEDDING_L2_ROWS_CHOICES + (None,),
    ("hardware", "distribute"): ("auto", "none"),
}
_NULLABLE = {
    "decay_steps",
    "batch_size",
    "patience",
    "embedding_l2",
    "embedding_learning_rate",
    "embedding_l2_rows",
    *GENERAL_DEFAULTS,
}  # keys whose default is set but may be null
_POSITIVE = {
    "embedding_dim",
    "num_experts",
    "specific_experts",
    "shared_experts",
    "levels",
    "pairs",
    "epochs",
    "batch_size",
    "patience",
    "evals_per_epoch",
    "max_bag_length",
    "eval_batch_size",
    "steps_per_epoch",
    "decay_steps",
}


def _check(section: str, key: str, value, default):
    where = f"{section}.{key}"
    if (section, key) in _CHOICES:
        if value not in _CHOICES[section, key]:
            raise ValueError(f"{where} must be one of {[c for c in _CHOICES[section, key] if c]}, got {value!r}")
        return value
    if isinstance(default, tuple):
        if value is None and key in _NULLABLE:
            return None
        if (
            not isinstance(value, (list, tuple))
            or not value
            or any(isinstance(u, bool) or not isinstance(u, int) or u <= 0 for u in value)
        ):
            raise ValueError(f"{where} must be a non-empty list of positive integers, got {value!r}")
        return tuple(value)
    if key == "weights":
        if value is None:
            return None
        if (
            not isinstance(value, dict)
            or set(value) - {"ctr", "cvr", "ctcvr"}
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in value.values())
        ):
            raise ValueError(f"{where} must map some of ctr, cvr and ctcvr to non-negative numbers, got {value!r}")
        return {k: float(v) for k, v in value.items()}
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if value is None and (default is None or key in _NULLABLE):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if isinstance(default, int) or key in _POSITIVE or key == "depth":
        if value != int(value):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        value = int(value)
    if key in _POSITIVE and value <= 0:
        raise ValueError(f"{where} must be positive, got {value!r}")
    if key == "depth" and value < 0:
        raise ValueError(f"{where} must be a depth index >= 0 or null, got {value!r}")
    if (
        key
        in (
            "lam",
            "aux_weight",
            "orth_weight",
            "dropout",
            "learning_rate",
            "memory_budget_gb",
            "embedding_l2",
            "embedding_learning_rate",
            "warmup_steps",
        )
        and value < 0
    ):
        raise ValueError(f"{where} must be >= 0, got {value!r}")
    if key in ("alpha_floor", "dropout", "decay_floor") and not 0 <= value <= 1:
        raise ValueError(f"{where} must be in [0, 1], got {value!r}")
    return value


def _section(name: str, values) -> object:
    cls = _SECTIONS[name]
    if not isinstance(values, dict):
        raise ValueError(f"{name} must be an object of options, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{name}: unknown keys {unknown}; known: {sorted(fields)}")
    defaults = cls()
    return cls(**{key: _check(name, key, value, getattr(defaults, key)) for key, value in values.items()})


def from_dict(config: dict | None) -> TrainerConfig:
    """The config of a JSON object; ValueError naming the key (`model.num_experts`) for anything wrong."""
    if config is None:
        return TrainerConfig()
    if not isinstance(config, dict):
        raise ValueError(f"the trainer config must be an object of sections, got {type(config).__name__}")
    unknown = sorted(set(config) - set(_SECTIONS))
    if unknown:
        raise ValueError(f"trainer config: unknown sections {unknown}; known: {sorted(_SECTIONS)}")
    sections = {
        name: None if values is None and name == "mtn" else _section(name, values) for name, values in config.items()
    }
    return TrainerConfig(**sections)


# The rules of the `training` keys that default to null (`resolve`), chosen on the eval split across
# the data regimes of `bench/quality.py` (docs/quality.md).
MAX_BATCH, MIN_BATCH, MIN_STEPS_PER_PASS = 2048, 256, 64
PATIENCE_ROUNDS, MIN_PATIENCE_STEPS = 4, 200
EMBEDDING_L2_ROWS, MAX_EMBEDDING_L2 = 180.0, 1e-2
# From this many training rows (and on a streamed split) the tables learn at 8 x the dense rate with
# a light L2 on every row: a lower eval log loss at 720,000 training rows on four regimes of five;
# the rate and a light L2 are worse at 144,000 in every regime and at 324,000 on latent factors. The
# switch sits near the geometric mean of 324,000 and 720,000 (docs/defaults.md).
LARGE_SPLIT_ROWS, LARGE_EMBEDDING_LR_FACTOR, LARGE_EMBEDDING_L2 = 500_000, 8.0, 1e-5


def resolve(config: TrainerConfig, train_rows: int | None) -> tuple:
    """(the config with its null rule-driven `training` keys set, {"training.KEY": value} of those
    set) for a training split of `train_rows` rows (None: it streams, its length unknown, so it is
    taken as large). Keys the config sets are kept as they are.

    - batch_size: 2,048; on a split so small that a pass would take fewer than 64 steps, the largest
      power of two that gives 64 (at least 256).
    - patience: the evaluation rounds of one pass, and enough to span 200 training steps, so a
      small split is not stopped before its models have moved.
    - embedding_l2: 180 / training rows, at most 1e-2 (2e-3 at 90,000 rows, 1e-3 at 180,000), as a
      penalty on the mean loss shrinks with the rows under a fixed prior; 1e-5 on a large split
      (500,000 rows or more, or streamed).
    - embedding_learning_rate: 8 x learning_rate on a large split when the tables train with Adam,
      else learning_rate.
    - embedding_l2_rows: "table" on a large split (the L2 acts on every row each step, so the rows
      of ids seen rarely are pulled back between their reads), else "touched".
    The large-split values were chosen together (docs/defaults.md)."""
    training, resolved = config.training, {}
    large = train_rows is None
    large_split = large or train_rows >= LARGE_SPLIT_ROWS
    batch = training.batch_size
    if batch is None:
        batch = MAX_BATCH
        while not large and batch > MIN_BATCH and train_rows // batch < MIN_STEPS_PER_PASS:
            batch //= 2
        resolved["batch_size"] = batch
    if training.patience is None:
        patience = PATIENCE_ROUNDS
        if not large:
            per_pass = training.steps_per_epoch or max(1, train_rows // min(batch, max(train_rows, 1)))
            rounds = min(training.evals_per_epoch, per_pass)
            patience = max(patience, rounds, -(-MIN_PATIENCE_STEPS // max(1, per_pass // rounds)))
        resolved["patience"] = patience
    if training.embedding_l2 is None:
        l2 = LARGE_EMBEDDING_L2 if large_split else min(MAX_EMBEDDING_L2, EMBEDDING_L2_ROWS / max(train_rows, 1))
        resolved["embedding_l2"] = l2
    if training.embedding_learning_rate is None:
        factor = LARGE_EMBEDDING_LR_FACTOR if large_split and training.embedding_optimizer == "adam" else 1.0
        resolved["embedding_learning_rate"] = factor * training.learning_rate
    if training.embedding_l2_rows is None:
        resolved["embedding_l2_rows"] = "table" if large_split else "touched"
    resolved_config = config.replace(training=resolved) if resolved else config
    return resolved_config, {f"training.{k}": v for k, v in resolved.items()}
