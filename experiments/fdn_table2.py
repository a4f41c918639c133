"""`fdn-table2` (FDN paper, Table 2): Single-task, MMoE, CGC, PLE and FDN on Ali-CCP-like ranking
data (`experiments.ranking`), test CTR and CVR AUC (and CTCVR), and each served network's
parameters, at the paper's model settings: MMoE and CGC 8 experts, PLE 2 levels of 8 (16
experts), FDN 2 decomposition pairs per task (8 experts), experts [128, 64], embedding 32.

The paper's claims: FDN has the best AUCs, and the fewest parameters of the multi-expert models.
A seed pairs every model (same data, initialisation seed and batch order); the `logistic`
reference trained beside them gates the AUC claims (`report.Comparison`).
"""

from __future__ import annotations

import dataclasses
import json
import os

from common import layout
from experiments import base, fdn_ablation, presets, ranking, report
from experiments.grid import Cell, make_cells

NAME = "fdn-table2"
MODELS = {"single_task": "Single-task", "mmoe": "MMoE", "cgc": "CGC", "ple": "PLE", "fdn": "FDN"}
BASELINES = ("single_task", "mmoe", "cgc", "ple")
EXPERTS = ("mmoe", "cgc", "ple")  # the multi-expert models FDN's parameter count is compared with


@dataclasses.dataclass(frozen=True)
class Settings(ranking.Settings):
    # The FDN paper's model sizes as `bench/run.py`'s parameter counts take them.
    embedding_dim: int = 32
    expert_units: tuple = (128, 64)
    tower_units: tuple = (64,)
    num_experts: int = 8  # MMoE
    specific_experts: int = 2  # CGC, PLE: per task and level; with 4 shared, 8 experts a level
    shared_experts: int = 4
    levels: int = 2  # PLE: 16 experts
    pairs: int = 2  # FDN: "2 DCPs for each task"
    aux_weight: float = 0.1  # trainer.config's defaults (the `paper` preset: 1, 1, sum, unnormalised)
    orth_weight: float = 0.01
    aux_reduction: str = "mean"
    orth_normalized: bool = True


# Quick: `ranking.QUICK` (models trained to early stopping at the Trainer's defaults on 200,000
# rows) at the paper's sizes.
SCALES = {
    "quick": ranking.quick_scale(Settings, embedding_dim=32),
    "full": ranking.full_scale(Settings, seeds=10, embedding_dim=32, expert_units=(128, 64)),
}


# Ours at the quick scale: 4 seeds, as FDN under the paper's loss trains longer (5 seeds: 16-17
# minutes here).
PAPER_PRESET = presets.at_quick_scale(presets.fdn_paper, seeds=4)


def overrides(settings: Settings) -> dict:
    """The Trainer config sections beyond `ranking.trainer_config`'s: `fdn-ablation`'s, with no arm
    removed (ignored by the models without them)."""
    return fdn_ablation.overrides("fdn", None, settings)


def cells(settings: Settings, seeds: list) -> list[Cell]:
    return make_cells([(model, "none") for model in MODELS] + [ranking.REFERENCE], seeds)


def cell_config(cell: Cell, settings: Settings) -> dict:
    if ranking.is_reference(cell):
        return ranking.cell_config(cell, settings, None)
    return ranking.cell_config(cell, settings, None, overrides(settings))


def run_cell(cell: Cell, settings: Settings, prepared: ranking.Prepared) -> dict:
    if ranking.is_reference(cell):
        return ranking.train_cell(cell, settings, prepared, None)
    return ranking.train_cell(cell, settings, prepared, None, after=_parameters, overrides=overrides(settings))


def _parameters(run_dir: str, transformed: str) -> dict:
    """The served network's parameters and those of its embedding tables, as the Trainer built it."""
    from trainer import models
    from trainer.config import from_dict
    from trainer.inputs import InputSpec
    from trainer.training_model import dummy_batch

    with open(os.path.join(run_dir, "config.json")) as f:
        saved = json.load(f)
    config = from_dict(saved["trainer"])
    network = models.build(saved["input_spec"], config.network_config())
    network(dummy_batch(InputSpec.from_dict(saved["input_spec"])))
    with open(os.path.join(run_dir, layout.METRICS)) as f:
        trained = json.load(f)["params"]
    embedding = sum(layer.count_params() for layer in network.embedding_layers())
    return {
        "params": network.count_params(),
        "params_embedding": embedding,
        "params_trained_network": trained["total"] - trained["regularizer_only"],
    }


# --- the report --------------------------------------------------------------------------------


def auc(values: dict, model: str, task: str) -> dict:
    return values.get(model, {}).get(f"{task}_auc", {})


def table(values: dict, records) -> report.Table:
    columns = ranking.auc_columns() + (
        report.Column("parameters (served)", digits=0, tested=False),
        report.Column("without embeddings", digits=0, tested=False),
    )
    rows = ranking.ceiling_row(records, lambda task: [ranking.TASK_TITLES[task]])
    rows += ranking.reference_row(records, lambda task, noise: [ranking.TASK_TITLES[task]])
    for model, title in MODELS.items():
        entry = values.get(model, {})
        row = {ranking.TASK_TITLES[t]: auc(values, model, t) for t in ranking.TASKS}
        params, embedding = entry.get("params", {}), entry.get("params_embedding", {})
        if params:
            row["parameters (served)"] = _one(params)
            row["without embeddings"] = _one({s: params[s] - embedding[s] for s in params if s in embedding})
        rows.append(report.Row(title, row, baseline=None if model == "fdn" else "FDN"))
    return report.Table(columns, tuple(rows))


def _one(counts: dict) -> dict:
    """Counts do not depend on the seed: one value shows it; a spread (a bug) would show as ± std."""
    return {min(counts): counts[min(counts)]} if len(set(counts.values())) == 1 else counts


def claims(values: dict, records=()) -> list[report.Claim]:
    source = "FDN paper, Table 2"

    def beats(task):
        return tuple(
            report.Comparison(
                f"FDN {task.upper()}",
                f"{MODELS[model]} {task.upper()}",
                auc(values, "fdn", task),
                auc(values, model, task),
                higher_is_better=True,
                reference_values=ranking.reference_auc(records, task),
            )
            for model in BASELINES
        )

    def params(model):
        entry = values.get(model, {})
        return {s: v - entry["params_embedding"][s] for s, v in entry.get("params", {}).items()}

    return [
        report.Claim(source, "FDN has a higher test CTR AUC than Single-task, MMoE, CGC and PLE.", beats("ctr")),
        report.Claim(source, "FDN has a higher test CVR AUC than Single-task, MMoE, CGC and PLE.", beats("cvr")),
        report.Claim(
            source,
            "FDN has fewer parameters than MMoE, CGC and PLE (without the embedding tables, which every model "
            "shares in size).",
            tuple(report.Comparison("FDN", MODELS[m], params("fdn"), params(m)) for m in EXPERTS),
            digits=0,
        ),
    ]


def write_report(out: str, settings: Settings, scale: str, seeds: list, records) -> None:
    values = ranking.values(records, lambda cell: cell.variant)
    markdown = "\n\n".join(
        [
            f"# {NAME}: Single-task, MMoE, CGC, PLE and FDN (FDN paper, Table 2)",
            "Each model is trained by the project's Trainer and its best epoch's network scored on the test split: "
            "CTR AUC on all rows, CVR AUC on clicked rows, CTCVR AUC on all rows. Parameters: the served network "
            "(the embedding tables included, whose size follows the data's vocabularies; and without them), "
            "counted with Keras' `count_params()` on the network the Trainer built; FDN's auxiliary heads are "
            "trained, not served, and not counted.",
            ranking.data_description(settings, records),
            f"Scale `{scale}`: {len(seeds)} seeds ({', '.join(map(str, seeds))}); embedding {settings.embedding_dim}, "
            f"experts {list(settings.expert_units)}; MMoE {settings.num_experts} experts; CGC and PLE "
            f"{settings.specific_experts} task-specific + {settings.shared_experts} shared experts per level, PLE "
            f"{settings.levels} levels; FDN {settings.pairs} pairs per task; towers {list(settings.tower_units)} "
            f"(FDN has none); {ranking.training_note(settings)}.",
            "## Table 2: test AUC and parameters",
            report.render_table(table(values, records)),
            report.significance_note("FDN", len(seeds)),
            report.render_claims(claims(values, records), scale, len(seeds)),
            "## Settings",
            report.settings_table(settings, seeds),
        ]
    )
    report.write(out, markdown, records)


EXPERIMENT = base.Experiment(
    NAME,
    "FDN paper Table 2: Single-task, MMoE, CGC, PLE and FDN (AUCs and parameters)",
    SCALES,
    cells,
    run_cell,
    cell_config,
    write_report,
    bind_data=ranking.bind_data,
    prepare=ranking.prepare,
    paper_preset=PAPER_PRESET,
)
