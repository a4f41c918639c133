"""`fdn-ablation` (FDN paper, Table 3, and Table 2's parameter counts): FDN against FDN without
its auxiliary heads (`fdn.aux` false), without its orthogonality loss (`fdn.orth` false) and
without shared features (`model.shared_features` false: no task-shared experts, so no L_orth
either, as there is nothing for the specific features to be orthogonal to), each trained by the
project's Trainer on the ranking data (`experiments.ranking`) and scored by test CTR, CVR and
CTCVR AUC. The paper's claim is that every component helps: removing any one lowers AUC. A seed
pairs the four arms (same data, initialisation seed and batch order).

Parameter counts: each full-FDN cell builds MMoE, CGC, PLE and the four FDN variants at the
experiment's settings on the input spec the Trainer derived from this run's data, and counts
the built Keras networks' parameters (`count_params()`). The network is what `trainer.export`
serves (tests/test_training.py checks that a SavedModel's variables add up to
`network.count_params()`); FDN's auxiliary heads live in the Trainer's `TrainingModel`, are
trained but not exported, and are counted apart.
"""

from __future__ import annotations

import dataclasses
import json
import os

from common import layout
from experiments import base, figures, presets, ranking, report
from experiments.grid import Cell, make_cells

NAME = "fdn-ablation"
MODEL = "fdn"
FULL = "full"
# arm -> (label, the Trainer config sections it changes). The paper's Table 3 rows.
ARMS = {
    FULL: ("FDN", {}),
    "no_aux": ("FDN without L_aux", {"fdn": {"aux": False}}),
    "no_orth": ("FDN without L_orth", {"fdn": {"orth": False}}),
    "no_shared": ("FDN without shared features", {"model": {"shared_features": False}}),
}
ABLATIONS = tuple(arm for arm in ARMS if arm != FULL)
# Table 2's models; FDN's variants are counted too, as the ablation's cost side.
BASELINES = {"mmoe": "MMoE", "cgc": "CGC", "ple": "PLE"}


@dataclasses.dataclass(frozen=True)
class Settings(ranking.Settings):
    # `fdn-synthetic`'s model shapes (the FDN paper's): MMoE 8 experts, CGC and PLE 2 task-specific
    # + 4 shared experts per level, PLE 2 levels, FDN 4 pairs per task.
    num_experts: int = 8
    specific_experts: int = 2
    shared_experts: int = 4
    levels: int = 2
    pairs: int = 4
    aux_weight: float = 0.1  # trainer.config's defaults
    orth_weight: float = 0.01
    aux_reduction: str = "mean"
    orth_normalized: bool = True


SCALES = {
    "quick": ranking.quick_scale(Settings),  # 25 cells: 12 min 56 s here (2026-12-05)
    "full": ranking.full_scale(Settings, seeds=10),  # `mtn`'s full scale, with more seeds
}


def overrides(model: str, arm: str | None, settings: Settings) -> dict:
    """The Trainer config sections beyond `ranking.trainer_config`'s: the expert counts of CGC, PLE
    and FDN (ignored by the other models), FDN's loss weights, and the arm's change."""
    sections = {
        "model": {
            "specific_experts": settings.specific_experts,
            "shared_experts": settings.shared_experts,
            "levels": settings.levels,
            "pairs": settings.pairs,
        },
        "fdn": {
            "aux_weight": settings.aux_weight,
            "orth_weight": settings.orth_weight,
            "aux_reduction": settings.aux_reduction,
            "orth_normalized": settings.orth_normalized,
        },
    }
    for section, values in (ARMS[arm][1] if arm else {}).items():
        sections[section] = {**sections[section], **values}
    return sections


def cells(settings: Settings, seeds: list) -> list[Cell]:
    return make_cells([(MODEL, arm) for arm in ARMS] + [ranking.REFERENCE], seeds)


def cell_config(cell: Cell, settings: Settings) -> dict:
    if ranking.is_reference(cell):
        return ranking.cell_config(cell, settings, None)
    return ranking.cell_config(cell, settings, None, overrides(MODEL, cell.regularizer, settings))


def run_cell(cell: Cell, settings: Settings, prepared: ranking.Prepared) -> dict:
    if ranking.is_reference(cell):
        return ranking.train_cell(cell, settings, prepared, None)
    return ranking.train_cell(
        cell,
        settings,
        prepared,
        None,
        overrides=overrides(MODEL, cell.regularizer, settings),
        after=lambda run_dir, _: _read_run(cell, settings, run_dir),
    )


def _read_run(cell: Cell, settings: Settings, run_dir: str) -> dict:
    """The loss terms the arm trained with (last epoch's means; absent: the arm has no such term), its
    network's parameters as the Trainer counted them, and, in full-FDN cells, every model's counts."""
    with open(os.path.join(run_dir, layout.METRICS)) as f:
        trained = json.load(f)
    last, params = trained["history"][-1], trained["params"]
    metrics = {f"train_{term}": float(last[term]) for term in ("aux_loss", "orth_loss") if term in last}
    metrics.update(
        params_trained_network=params["total"] - params["regularizer_only"],
        params_trained_regularizer_only=params["regularizer_only"],
    )
    if params["exported"] is not None:
        metrics["params_trained_exported"] = params["exported"]
    if cell.regularizer == FULL:
        with open(os.path.join(run_dir, "config.json")) as f:
            metrics.update(parameter_counts(json.load(f)["input_spec"], settings))
    return metrics


def parameter_counts(spec: dict, settings: Settings) -> dict:
    """Per model (`mmoe`, `cgc`, `ple`, `fdn_<arm>`): `params_<model>`, the built network's
    parameters (what is served); `params_<model>_embedding`, those of its embedding tables; and
    `params_<model>_regularizer_only`, what the Trainer's TrainingModel adds for training only (FDN's
    auxiliary heads)."""
    from trainer import models
    from trainer.config import from_dict
    from trainer.inputs import InputSpec
    from trainer.training_model import TrainingModel

    counts = {}
    for key, model, arm in [(name, name, None) for name in BASELINES] + [(f"fdn_{arm}", MODEL, arm) for arm in ARMS]:
        config = from_dict(ranking.trainer_config(model, 0, settings, None, overrides(model, arm, settings)))
        network = models.build(spec, config.network_config())
        trainee = TrainingModel(network, InputSpec.from_dict(spec), config)  # builds the network and aux heads
        counts.update(
            {
                f"params_{key}": network.count_params(),
                f"params_{key}_embedding": network.embed.count_params(),
                f"params_{key}_regularizer_only": trainee.regularizer_params,
            }
        )
    return counts


# --- the report --------------------------------------------------------------------------------


def label(arm: str) -> str:
    return ARMS[arm][0]


def auc(values: dict, arm: str, task: str) -> dict:
    return values.get(arm, {}).get(f"{task}_auc", {})


def auc_table(values: dict, records) -> report.Table:
    rows = ranking.ceiling_row(records, lambda task: [ranking.TASK_TITLES[task]])
    rows += ranking.reference_row(records, lambda task, noise: [ranking.TASK_TITLES[task]])
    rows += [
        report.Row(
            label(arm),
            {ranking.TASK_TITLES[t]: auc(values, arm, t) for t in ranking.TASKS},
            baseline=None if arm == FULL else label(FULL),
        )
        for arm in ARMS
    ]
    return report.Table(ranking.auc_columns(), tuple(rows), first_column="variant")


def loss_table(values: dict) -> report.Table:
    """The terms each arm trained on: shows each ablation removed what it names."""
    titles = {
        "train_task_loss": "task losses",
        "train_aux_loss": "L_aux (weighted)",
        "train_orth_loss": "L_orth (weighted)",
    }
    columns = tuple(report.Column(title, tested=False) for title in titles.values())
    rows = [
        report.Row(label(arm), {title: values.get(arm, {}).get(metric, {}) for metric, title in titles.items()})
        for arm in ARMS
    ]
    return report.Table(columns, tuple(rows), first_column="variant")


def _one(counts: dict) -> dict:
    """Counts do not depend on the seed: one value shows it; a spread (a bug) would show as ± std."""
    return {min(counts): counts[min(counts)]} if len(set(counts.values())) == 1 else counts


PARAM_COLUMNS = ("parameters (served)", "of which embedding tables", "trained, not served")


def params_table(values: dict) -> report.Table:
    counts = values.get(FULL, {})
    rows = []
    for key, title in list(BASELINES.items()) + [(f"fdn_{arm}", label(arm)) for arm in ARMS]:
        metrics = (f"params_{key}", f"params_{key}_embedding", f"params_{key}_regularizer_only")
        rows.append(
            report.Row(
                title,
                {column: _one(counts[metric]) for column, metric in zip(PARAM_COLUMNS, metrics) if counts.get(metric)},
            )
        )
    return report.Table(tuple(report.Column(c, digits=0, tested=False) for c in PARAM_COLUMNS), tuple(rows))


def delta(values: dict, arm: str, task: str) -> dict:
    """{seed: AUC of the arm - AUC of full FDN}."""
    own, full = auc(values, arm, task), auc(values, FULL, task)
    return {s: own[s] - full[s] for s in sorted(set(own) & set(full))}


def claims(values: dict, records=()) -> list[report.Claim]:
    return [
        report.Claim(
            "FDN paper, Table 3",
            f"Removing {component} lowers FDN's test AUC on every task (CTR, CVR, CTCVR).",
            tuple(
                report.Comparison(
                    f"{label(FULL)} {t.upper()}",
                    f"{label(arm)} {t.upper()}",
                    auc(values, FULL, t),
                    auc(values, arm, t),
                    higher_is_better=True,
                    reference_values=ranking.reference_auc(records, t),
                )
                for t in ranking.TASKS
            ),
        )
        for arm, component in zip(
            ABLATIONS, ("the auxiliary heads (L_aux)", "the orthogonality loss (L_orth)", "the shared features")
        )
    ]


def _figure(out: str, values: dict) -> str:
    return figures.grouped_bars(
        out,
        "ablation_delta.png",
        [ranking.TASK_TITLES[t] for t in ranking.TASKS],
        {label(arm): [delta(values, arm, t) for t in ranking.TASKS] for arm in ABLATIONS},
        "test AUC minus full FDN's (mean ± std)",
        "FDN ablations against full FDN",
    )


def write_report(out: str, settings: Settings, scale: str, seeds: list, records) -> None:
    values = ranking.values(records, lambda cell: cell.regularizer)
    figure = _figure(out, values)
    markdown = "\n\n".join(
        [
            f"# {NAME}: FDN and its ablations (FDN paper, Table 3), and the models' sizes (Table 2)",
            "FDN is trained by the project's Trainer as proposed (task losses + L_aux + L_orth), and three times with "
            "one component removed: its auxiliary heads on the task-specific experts (`fdn.aux` false), its "
            "orthogonality loss (`fdn.orth` false), its task-shared experts (`model.shared_features` false; the fusion "
            "then reads the task's specific features only, and L_orth has nothing to act on). The best epoch's network "
            "is scored on the test split: CTR AUC on all rows, CVR AUC on clicked rows, CTCVR AUC on all rows.",
            ranking.data_description(settings, records),
            f"Scale `{scale}`: {len(seeds)} seeds ({', '.join(map(str, seeds))}); embedding {settings.embedding_dim}, "
            f"experts {list(settings.expert_units)}, FDN {settings.pairs} pairs per task, L_aux weight "
            f"{settings.aux_weight:g}, L_orth weight {settings.orth_weight:g} (the paper's form); "
            f"{ranking.training_note(settings)}.",
            "## Table 3: test AUC of FDN and its ablations",
            report.render_table(auc_table(values, records)),
            report.significance_note("full FDN", len(seeds)),
            f"![AUC change of each ablation against full FDN]({figure})",
            "## The loss terms each variant trained on (last epoch's mean over its batches)",
            report.render_table(loss_table(values)),
            "A dash: the variant has no such term.",
            "## Table 2, last column: parameters",
            report.render_table(params_table(values)),
            f"Each model built at this run's settings on its input spec (MMoE {settings.num_experts} experts; CGC and "
            f"PLE {settings.specific_experts} task-specific + {settings.shared_experts} shared experts per level, PLE "
            f"{settings.levels} levels; towers {list(settings.tower_units)}; FDN {settings.pairs} pairs per task, no "
            "towers) and counted with Keras' `count_params()`. *Served*: the inference network, which is all "
            "`trainer/export.py` saves beside the tf.Transform graph; it includes the embedding tables, whose size "
            "follows the data's vocabularies. *Trained, not served*: FDN's auxiliary heads, which live in the "
            "Trainer's training wrapper and are not exported. The trained networks of this run have the same counts "
            "(`params_trained_network` in metrics.csv).",
            report.render_claims(claims(values, records), scale, len(seeds)),
            "## Settings",
            report.settings_table(settings, seeds),
        ]
    )
    report.write(out, markdown, records)


EXPERIMENT = base.Experiment(
    NAME,
    "FDN paper Table 3: FDN without L_aux, L_orth or shared features (AUCs); Table 2's parameter counts",
    SCALES,
    cells,
    run_cell,
    cell_config,
    write_report,
    bind_data=ranking.bind_data,
    prepare=ranking.prepare,
    paper_preset=presets.fdn_paper,
)
