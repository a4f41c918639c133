"""`mtn` (MTN paper, Table 1): MMoE, ESMM and Shared-bottom, each trained with and without MTN on
its task towers (every depth), scored by test CTR, CVR and CTCVR AUC.

The paper's claim is that MTN improves every model on every task. A seed pairs the two arms of a
model: same data, same initialisation seed and batch order, so the paired t-test sees MTN's effect
and not the seed's.
"""

from __future__ import annotations


from experiments import base, presets, ranking, report
from experiments.grid import Cell, make_cells

NAME = "mtn"
MTN = {"target": "towers", "depth": None}  # the method as proposed: every tower depth
ARMS = tuple((model, regularizer) for model in ranking.MODELS for regularizer in ("none", "mtn"))

SCALES = {
    "quick": ranking.QUICK,
    "full": ranking.FULL,
}


def has_mtn(cell: Cell) -> bool:
    return cell.regularizer == "mtn"


def cells(settings: ranking.Settings, seeds: list) -> list[Cell]:
    return ranking.with_lambdas(make_cells(ARMS + (ranking.REFERENCE,), seeds), settings, has_mtn)


def _mtn(cell: Cell) -> dict | None:
    return ranking.cell_mtn(cell, MTN if has_mtn(cell) else None)


def cell_config(cell: Cell, settings: ranking.Settings) -> dict:
    return ranking.cell_config(cell, settings, _mtn(cell))


def run_cell(cell: Cell, settings: ranking.Settings, prepared: ranking.Prepared) -> dict:
    return ranking.train_cell(cell, settings, prepared, _mtn(cell))


# --- the report --------------------------------------------------------------------------------


def label(model: str, regularizer: str) -> str:
    return ranking.MODELS[model] + (" + MTN" if regularizer == "mtn" else "")


def auc_table(values: dict, records) -> report.Table:
    rows = ranking.ceiling_row(records, lambda task: [ranking.TASK_TITLES[task]])
    rows += ranking.reference_row(records, lambda task, noise: [ranking.TASK_TITLES[task]])
    for model, regularizer in ARMS:
        entry = values.get((model, regularizer), {})
        rows.append(
            report.Row(
                label(model, regularizer),
                {ranking.TASK_TITLES[t]: entry.get(f"{t}_auc", {}) for t in ranking.TASKS},
                baseline=label(model, "none") if regularizer == "mtn" else None,
            )
        )
    return report.Table(ranking.auc_columns(), tuple(rows))


def gain(values: dict, model: str, task: str) -> dict:
    """{seed: AUC with MTN - AUC without} of a model on a task."""
    with_mtn = values.get((model, "mtn"), {}).get(f"{task}_auc", {})
    without = values.get((model, "none"), {}).get(f"{task}_auc", {})
    return {s: with_mtn[s] - without[s] for s in sorted(set(with_mtn) & set(without))}


def gain_table(values: dict) -> report.Table:
    columns = tuple(report.Column(f"Δ {ranking.TASK_TITLES[t]}", signed=True, tested=False) for t in ranking.TASKS)
    rows = [
        report.Row(
            ranking.MODELS[model], {f"Δ {ranking.TASK_TITLES[t]}": gain(values, model, t) for t in ranking.TASKS}
        )
        for model in ranking.MODELS
    ]
    return report.Table(columns, tuple(rows))


def claims(values: dict, records=(), tasks=ranking.TASKS) -> list[report.Claim]:
    def auc(model, regularizer, task):
        return values.get((model, regularizer), {}).get(f"{task}_auc", {})

    return [
        report.Claim(
            "MTN paper, Table 1",
            f"MTN improves {name}'s test AUC on every task ({ranking.tasks_phrase(tasks)}).",
            tuple(
                report.Comparison(
                    f"{name} + MTN {task.upper()}",
                    f"{name} {task.upper()}",
                    auc(model, "mtn", task),
                    auc(model, "none", task),
                    higher_is_better=True,
                    reference_values=ranking.reference_auc(records, task),
                )
                for task in tasks
            ),
        )
        for model, name in ranking.MODELS.items()
    ]


def write_report(out: str, settings: ranking.Settings, scale: str, seeds: list, all_records) -> None:
    records, chosen = ranking.select_lambda(all_records)
    values = ranking.values(records, lambda cell: (cell.variant, cell.regularizer))
    markdown = "\n\n".join(
        [
            f"# {NAME}: MMoE, ESMM and Shared-bottom with and without MTN (MTN paper, Table 1)",
            "Each model is trained by the project's Trainer with and without MTN, the tensor trace norm of its "
            "task towers' stacked weights at every depth (lambda x mean over depths of R_i), and the exported "
            "model is scored on the test split: CTR AUC on all rows, CVR AUC on clicked rows, CTCVR AUC on all rows.",
            ranking.data_description(settings, records),
            f"Scale `{scale}`: {len(seeds)} seeds ({', '.join(map(str, seeds))}); embedding {settings.embedding_dim}, "
            f"experts and bottom {list(settings.expert_units)}, towers {list(settings.tower_units)}, MMoE "
            f"{settings.num_experts} experts; {ranking.training_note(settings)}; MTN alpha floor "
            f"{settings.alpha_floor:g}, subsets `{settings.subsets}`.",
            "## Table 1: test AUC",
            report.render_table(auc_table(values, records)),
            report.significance_note("the same model without MTN", len(seeds)),
            "## MTN's gain: AUC with MTN minus without, per seed",
            report.render_table(gain_table(values)),
            report.render_claims(claims(values, records, ranking.claim_tasks(settings)), scale, len(seeds)),
            "## Notes",
            "- " + ranking.mtn_scale_note(records) + " " + ranking.lambda_note(settings, chosen) + "\n"
            "- " + ranking.loss_note(settings),
            "## Settings",
            report.settings_table(settings, seeds),
        ]
    )
    report.write(out, markdown, all_records)


EXPERIMENT = base.Experiment(
    NAME,
    "MTN paper Table 1: MMoE, ESMM and Shared-bottom with and without MTN (AUCs)",
    SCALES,
    cells,
    run_cell,
    cell_config,
    write_report,
    bind_data=ranking.bind_data,
    prepare=ranking.prepare,
    paper_preset=presets.mtn_paper,
)
