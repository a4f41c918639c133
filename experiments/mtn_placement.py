"""`mtn-placement` (MTN paper, Analysis 3 and Figure 3): where MTN goes on MMoE.

MTN on the task towers (as proposed) against MTN on the experts (`mtn.target`), and on every
depth against the first depth only (`mtn.depth`). For Figure 3, each trained MMoE's experts are
run on the test rows: the heatmap shows the mean over rows of ||e_i(x) - e_j(x)|| for every pair
of experts, without MTN, with MTN on the towers and with MTN on the experts (the paper's three
panels; it shows MTN on the experts making them alike).
The experts' outputs come from the network's `forward` (its extras hold them, [B, E, units]), on
the best epoch's weights the Trainer saved.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from common import layout
from experiments import base, figures, presets, ranking, report
from experiments.grid import Cell, make_cells

NAME = "mtn-placement"
MODEL = "mmoe"
# regulariser -> MTN's target and depth (None: every depth); "none": no MTN.
PLACEMENTS = {
    "none": None,
    "towers": {"target": "towers", "depth": None},
    "towers_depth0": {"target": "towers", "depth": 0},
    "experts": {"target": "experts", "depth": None},
    "experts_depth0": {"target": "experts", "depth": 0},
}
LABELS = {
    "none": "MMoE",
    "towers": "MMoE + MTN on towers, all depths",
    "towers_depth0": "MMoE + MTN on towers, depth 0",
    "experts": "MMoE + MTN on experts, all depths",
    "experts_depth0": "MMoE + MTN on experts, depth 0",
}

SCALES = {
    # MTN on the experts costs about 50 s a cell here (the experts' unfoldings are the largest SVDs):
    # 4 seeds fit in 15 minutes.
    "quick": dataclasses.replace(ranking.QUICK, seeds=4),
    "full": ranking.FULL,
}


# Ours at the quick scale: 100,000 rows, as choosing lambda triples the four MTN arms (28 runs,
# the experts' at about 50 s each at 200,000).
PAPER_PRESET = presets.at_quick_scale(presets.mtn_paper, data=lambda data: dataclasses.replace(data, rows=100_000))


def _mtn(cell: Cell) -> dict | None:
    return ranking.cell_mtn(cell, PLACEMENTS.get(cell.regularizer))


def cells(settings: ranking.Settings, seeds: list) -> list[Cell]:
    arms = make_cells([(MODEL, placement) for placement in PLACEMENTS] + [ranking.REFERENCE], seeds)
    return ranking.with_lambdas(arms, settings, lambda cell: _mtn(cell) is not None)


def cell_config(cell: Cell, settings: ranking.Settings) -> dict:
    return ranking.cell_config(cell, settings, _mtn(cell))


def run_cell(cell: Cell, settings: ranking.Settings, prepared: ranking.Prepared) -> dict:
    if ranking.is_reference(cell):
        return ranking.train_cell(cell, settings, prepared, None)
    return ranking.train_cell(cell, settings, prepared, _mtn(cell), after=expert_metrics)


def expert_outputs(run_dir: str, transformed: str):
    """Batches of the trained MMoE's expert outputs on the test split: numpy [B, E, units] each."""
    import tensorflow_transform as tft

    from trainer import inputs, models
    from trainer.config import from_dict
    from trainer.training_model import dummy_batch
    from transform.preprocessing import categorical_cardinalities

    with open(os.path.join(run_dir, "config.json")) as f:
        saved = json.load(f)
    config = from_dict(saved["trainer"])
    spec = inputs.InputSpec.from_dict(saved["input_spec"])
    network = models.build(spec.to_dict(), config.network_config())
    network(dummy_batch(spec))
    network.load_weights(os.path.join(run_dir, "best.weights.h5"))
    tft_output = tft.TFTransformOutput(os.path.join(transformed, layout.TRANSFORM_GRAPH))
    split = inputs.load(
        [os.path.join(transformed, layout.TRANSFORMED, "test", layout.RECORDS)],
        tft_output.transformed_feature_spec(),
        spec,
        categorical_cardinalities(tft_output),
        config.training.max_bag_length,
        config.training.memory_budget_gb,
        "test",
    )
    dataset, _ = split.dataset(config.training.eval_batch_size)
    for features, _ in dataset:
        yield np.asarray(network.forward(features)[1]["experts"], np.float64)


def expert_metrics(run_dir: str, transformed: str) -> dict:
    """`expert_distance_i_j` (i < j): the mean over test rows of ||e_i(x) - e_j(x)||; and
    `expert_norm`: the mean ||e_i(x)|| over rows and experts, the scale the distances compare with."""
    distances, norms, rows = 0.0, 0.0, 0
    for experts in expert_outputs(run_dir, transformed):
        distances = distances + np.linalg.norm(experts[:, :, None] - experts[:, None], axis=-1).sum(0)
        norms += np.linalg.norm(experts, axis=-1).mean(1).sum()
        rows += len(experts)
    distances = distances / rows
    n = len(distances)
    return {
        **{f"expert_distance_{i}_{j}": float(distances[i, j]) for i in range(n) for j in range(i + 1, n)},
        "expert_norm": float(norms / rows),
    }


# --- the report --------------------------------------------------------------------------------


def distance_matrix(metrics: dict) -> np.ndarray:
    pairs = {tuple(map(int, k.split("_")[2:])): v for k, v in metrics.items() if k.startswith("expert_distance_")}
    n = 1 + max(j for _, j in pairs)
    matrix = np.zeros((n, n))
    for (i, j), value in pairs.items():
        matrix[i, j] = matrix[j, i] = value
    return matrix


def mean_distance(values: dict, placement: str) -> dict:
    """{seed: mean distance over the pairs of experts}."""
    entry = values.get(placement, {})
    keys = [k for k in entry if k.startswith("expert_distance_")]
    seeds = sorted(set.intersection(*[set(entry[k]) for k in keys])) if keys else []
    return {s: float(np.mean([entry[k][s] for k in keys])) for s in seeds}


def relative_distance(values: dict, placement: str) -> dict:
    """{seed: mean distance / mean expert output norm}: the distance with the outputs' scale taken out."""
    distance, norm = mean_distance(values, placement), values.get(placement, {}).get("expert_norm", {})
    return {s: distance[s] / norm[s] for s in distance if norm.get(s)}


def auc_table(values: dict, records) -> report.Table:
    columns = ranking.auc_columns() + (
        report.Column("mean expert distance"),
        report.Column("distance / expert norm", digits=3),
    )
    rows = ranking.ceiling_row(records, lambda task: [ranking.TASK_TITLES[task]])
    rows += ranking.reference_row(records, lambda task, noise: [ranking.TASK_TITLES[task]])
    for placement in PLACEMENTS:
        entry = values.get(placement, {})
        row = {ranking.TASK_TITLES[t]: entry.get(f"{t}_auc", {}) for t in ranking.TASKS}
        row.update(
            {
                "mean expert distance": mean_distance(values, placement),
                "distance / expert norm": relative_distance(values, placement),
            }
        )
        rows.append(report.Row(LABELS[placement], row, baseline=None if placement == "none" else LABELS["none"]))
    return report.Table(columns, tuple(rows), first_column="model")


def claims(values: dict, records=(), tasks=ranking.TASKS) -> list[report.Claim]:
    def auc(placement, task):
        return values.get(placement, {}).get(f"{task}_auc", {})

    def beats(better, worse):
        return tuple(
            report.Comparison(
                f"{LABELS[better]} {t.upper()}",
                f"{LABELS[worse]} {t.upper()}",
                auc(better, t),
                auc(worse, t),
                higher_is_better=True,
                reference_values=ranking.reference_auc(records, t),
            )
            for t in tasks
        )

    source = "MTN paper, Analysis 3"
    return [
        report.Claim(
            source,
            f"MTN on the towers (the method's placement) beats MTN on the experts, on every task "
            f"({ranking.tasks_phrase(tasks)}).",
            beats("towers", "experts"),
        ),
        report.Claim(
            source,
            "MTN on every depth (the method's multi-layer norm) beats MTN on the first depth only, "
            f"on towers and on experts, on every task ({ranking.tasks_phrase(tasks)}).",
            beats("towers", "towers_depth0") + beats("experts", "experts_depth0"),
        ),
        report.Claim(
            "MTN paper, Figure 3",
            "MTN on the experts makes the experts' outputs more alike: their mean "
            "pairwise distance on the test rows is smaller than without MTN.",
            (
                report.Comparison(
                    LABELS["experts"], LABELS["none"], mean_distance(values, "experts"), mean_distance(values, "none")
                ),
            ),
        ),
    ]


def _heatmap(out: str, records) -> str:
    """Mean over seeds of the distance matrices, as the paper's Figure 3: without MTN, with MTN on
    the towers, with MTN on the experts (all depths)."""
    panels = {}
    for placement in ("none", "towers", "experts"):
        matrices = [distance_matrix(r.metrics) for r in records if r.cell.regularizer == placement]
        if matrices:
            panels[LABELS[placement]] = np.mean(matrices, axis=0)
    return figures.heatmaps(
        out,
        "expert_distances.png",
        panels,
        "expert",
        "mean ||e_i(x) - e_j(x)|| over test rows",
        "Distances between MMoE's experts' outputs (MTN paper, Figure 3)",
    )


def write_report(out: str, settings: ranking.Settings, scale: str, seeds: list, all_records) -> None:
    records, chosen = ranking.select_lambda(all_records)
    values = ranking.values(records, lambda cell: cell.regularizer)
    figure = _heatmap(out, records)
    markdown = "\n\n".join(
        [
            f"# {NAME}: where MTN goes on MMoE (MTN paper, Analysis 3 and Figure 3)",
            "MMoE trained by the project's Trainer without MTN and with MTN on its task towers or its experts, on "
            "every depth or the first only (`mtn.target`, `mtn.depth`); the exported model is scored on the test "
            "split. "
            "The two distance columns are the mean over test rows and expert pairs of ||e_i(x) - e_j(x)||, and that "
            "distance over the mean norm of an expert's output (MTN's Frobenius term also shrinks the weights, "
            "which alone makes outputs, and their distances, smaller).",
            ranking.data_description(settings, records),
            f"Scale `{scale}`: {len(seeds)} seeds ({', '.join(map(str, seeds))}); embedding {settings.embedding_dim}, "
            f"{settings.num_experts} experts {list(settings.expert_units)}, towers {list(settings.tower_units)} (and "
            f"the logit layer: {len(settings.tower_units) + 1} tower depths); {ranking.training_note(settings)}.",
            "## Test AUC and expert distances",
            report.render_table(auc_table(values, records)),
            report.significance_note("MMoE without MTN", len(seeds)),
            f"![distances between the experts' outputs]({figure})",
            report.render_claims(claims(values, records, ranking.claim_tasks(settings)), scale, len(seeds)),
            "## Notes",
            "- " + ranking.mtn_scale_note(records) + " " + ranking.lambda_note(settings, chosen),
            "- " + ranking.loss_note(settings),
            "## Settings",
            report.settings_table(settings, seeds),
        ]
    )
    report.write(out, markdown, all_records)


EXPERIMENT = base.Experiment(
    NAME,
    "MTN paper Analysis 3 and Figure 3: MTN on towers or experts, one depth or all",
    SCALES,
    cells,
    run_cell,
    cell_config,
    write_report,
    bind_data=ranking.bind_data,
    prepare=ranking.prepare,
    paper_preset=PAPER_PRESET,
)
