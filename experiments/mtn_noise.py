"""`mtn-noise` (MTN paper, Table 2 and Figure 1): the `mtn` grid at several noise proportions.

Transform's noise injection (`transform/noise.py`) replaces features of a proportion P of the
training rows with other valid values of their fields; the eval and test splits stay clean. Each
P gets its own Transform run (one per experiment run), with the same vocabularies. The paper's
claim: MTN's advantage over the bare model holds as the noise grows (its Table 2 shows it growing).
"""

from __future__ import annotations

import dataclasses

from experiments import base, figures, mtn, presets, ranking, report
from experiments.grid import Cell, make_cells

NAME = "mtn-noise"


@dataclasses.dataclass(frozen=True)
class Settings(ranking.Settings):
    noise_levels: tuple = (0.0, 0.05, 0.10, 0.15)  # must start at 0: the claims compare with it


SCALES = {
    # 28 cells a seed (about 13 s each at 100,000 rows) and a Transform per noise level: 2 seeds fill
    # the 15 minutes, so the quick scale sees only large effects (each claim prints its MDE).
    "quick": ranking.quick_scale(Settings, seeds=2, data=dataclasses.replace(ranking.QUICK.data, rows=100_000)),
    "full": ranking.full_scale(Settings),
}


# Ours at the quick scale: the clean data and the highest noise level only, as choosing lambda
# triples every MTN arm (104 runs at the four levels, about 25 minutes here).
PAPER_PRESET = presets.at_quick_scale(presets.mtn_paper, noise_levels=(0.0, 0.15))


def prepare(settings: Settings, out: str, log=print) -> ranking.Prepared:
    prepared = ranking.prepare(settings, out, log)
    prepared.transform_all(settings.noise_levels)
    return prepared


def cells(settings: Settings, seeds: list) -> list[Cell]:
    return ranking.with_lambdas(
        make_cells(mtn.ARMS + (ranking.REFERENCE,), seeds, noise_levels=settings.noise_levels), settings, mtn.has_mtn
    )


def cell_config(cell: Cell, settings: Settings) -> dict:
    return mtn.cell_config(cell, settings)


def run_cell(cell: Cell, settings: Settings, prepared: ranking.Prepared) -> dict:
    return mtn.run_cell(cell, settings, prepared)


# --- the report --------------------------------------------------------------------------------


def _heading(noise: float) -> str:
    return f"noise {noise:.0%}"


def task_table(values: dict, records, noise_levels, task: str) -> report.Table:
    """One task: a row per model variant, a column per noise proportion."""
    columns = tuple(report.Column(_heading(p)) for p in noise_levels)
    rows = ranking.ceiling_row(records, lambda t: [_heading(p) for p in noise_levels] if t == task else [])
    rows += ranking.reference_row(records, lambda t, p: [_heading(p)] if t == task else [])
    for model, regularizer in mtn.ARMS:
        rows.append(
            report.Row(
                mtn.label(model, regularizer),
                {_heading(p): values.get((model, regularizer, p), {}).get(f"{task}_auc", {}) for p in noise_levels},
                baseline=mtn.label(model, "none") if regularizer == "mtn" else None,
            )
        )
    return report.Table(columns, tuple(rows))


def _gain(values: dict, model: str, noise: float, task: str) -> dict:
    at = {
        regularizer: values.get((model, regularizer, noise), {}).get(f"{task}_auc", {})
        for regularizer in ("none", "mtn")
    }
    return {s: at["mtn"][s] - at["none"][s] for s in sorted(set(at["mtn"]) & set(at["none"]))}


def claims(values: dict, noise_levels, records=(), tasks=ranking.TASKS) -> list[report.Claim]:
    low, high = min(noise_levels), max(noise_levels)
    source = "MTN paper, Table 2"
    holds = [
        report.Claim(
            source,
            f"With noise, MTN still improves {name} on every task ({ranking.tasks_phrase(tasks)}) at every noise "
            "proportion.",
            tuple(
                report.Comparison(
                    f"{name} + MTN {task.upper()} {_heading(p)}",
                    f"{name} {task.upper()} {_heading(p)}",
                    values.get((model, "mtn", p), {}).get(f"{task}_auc", {}),
                    values.get((model, "none", p), {}).get(f"{task}_auc", {}),
                    higher_is_better=True,
                    reference_values=ranking.reference_auc(records, task, p),
                )
                for p in noise_levels
                if p > 0
                for task in tasks
            ),
        )
        for model, name in ranking.MODELS.items()
    ]
    grows = report.Claim(
        source,
        f"MTN's gain (AUC with MTN minus without) is larger at {_heading(high)} than without noise, for "
        "every model and task.",
        tuple(
            report.Comparison(
                f"{name} {task.upper()} gain at {_heading(high)}",
                f"gain at {_heading(low)}",
                _gain(values, model, high, task),
                _gain(values, model, low, task),
                higher_is_better=True,
            )
            for model, name in ranking.MODELS.items()
            for task in tasks
        ),
    )
    return holds + [grows]


def _figure(out: str, values: dict, noise_levels) -> str:
    x = [100 * p for p in noise_levels]
    panels = {
        ranking.TASK_TITLES[task]: {
            mtn.label(model, regularizer): [
                values.get((model, regularizer, p), {}).get(f"{task}_auc", {}) for p in noise_levels
            ]
            for model, regularizer in mtn.ARMS
        }
        for task in ranking.TASKS
    }
    return figures.lines_by_panel(
        out,
        "auc_vs_noise.png",
        x,
        panels,
        "noise proportion (% of training rows)",
        "test AUC",
        "Test AUC against the noise proportion (MTN paper, Figure 1)",
    )


def write_report(out: str, settings: Settings, scale: str, seeds: list, all_records) -> None:
    records, chosen = ranking.select_lambda(all_records)
    values = ranking.values(records, lambda cell: (cell.variant, cell.regularizer, cell.noise))
    noise_levels = list(settings.noise_levels)
    figure = _figure(out, values, noise_levels)
    note = report.significance_note("the same model without MTN at the same noise proportion", len(seeds))
    sections = [
        f"# {NAME}: MTN under noisy training data (MTN paper, Table 2 and Figure 1)",
        "The `mtn` grid (MMoE, ESMM and Shared-bottom, each with and without MTN on its towers) at noise "
        f"proportions {', '.join(f'{p:.0%}' for p in noise_levels)}: that share of the training rows has each "
        f"feature replaced, with probability {settings.data.noise_feature_prob:g}, by another value of its field "
        "drawn from the clean training distribution (`transform/noise.py`). The eval and test splits are clean.",
        ranking.data_description(settings, records),
        f"Scale `{scale}`: {len(seeds)} seeds ({', '.join(map(str, seeds))}); embedding {settings.embedding_dim}, "
        f"experts and bottom {list(settings.expert_units)}, towers {list(settings.tower_units)}, MMoE "
        f"{settings.num_experts} experts; {ranking.training_note(settings)}.",
    ]
    for task in ranking.TASKS:
        sections += [
            f"## Table 2: test {ranking.TASK_TITLES[task]}",
            report.render_table(task_table(values, records, noise_levels, task)),
            note,
        ]
    sections += [
        f"![test AUC against the noise proportion]({figure})",
        report.render_claims(claims(values, noise_levels, records, ranking.claim_tasks(settings)), scale, len(seeds)),
        "## Notes",
        "- " + ranking.mtn_scale_note(records) + " " + ranking.lambda_note(settings, chosen),
        "- " + ranking.loss_note(settings),
        "## Settings",
        report.settings_table(settings, seeds),
    ]
    report.write(out, "\n\n".join(sections), all_records)


EXPERIMENT = base.Experiment(
    NAME,
    "MTN paper Table 2 and Figure 1: the mtn grid at noise proportions 0-15%",
    SCALES,
    cells,
    run_cell,
    cell_config,
    write_report,
    bind_data=ranking.bind_data,
    prepare=prepare,
    paper_preset=PAPER_PRESET,
)
