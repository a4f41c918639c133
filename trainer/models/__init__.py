"""The model zoo: one file per model, all built from `trainer.blocks`."""

from __future__ import annotations

from trainer.models.aitm import AITM
from trainer.models.base import MultiTaskModel
from trainer.models.cgc import CGC
from trainer.models.esmm import ESMM
from trainer.models.fdn import FDN
from trainer.models.logistic import Logistic
from trainer.models.mmoe import MMoE
from trainer.models.omoe import OMoE
from trainer.models.ple import PLE
from trainer.models.shared_bottom import SharedBottom
from trainer.models.single_task import SingleTask

MODELS = {
    "logistic": Logistic,
    "single_task": SingleTask,
    "shared_bottom": SharedBottom,
    "omoe": OMoE,
    "mmoe": MMoE,
    "cgc": CGC,
    "ple": PLE,
    "esmm": ESMM,
    "aitm": AITM,
    "fdn": FDN,
}


def build(spec: dict, config: dict) -> MultiTaskModel:
    """The model `config["name"]` (a ModelConfig as a dict) for inputs `spec` (an InputSpec as a dict)."""
    return MODELS[config["name"]](spec, config, name=config["name"])
