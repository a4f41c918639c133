"""`negative-transfer` (beyond the papers): where each architecture suffers negative transfer.

On the MMoE paper's synthetic regression (`synth.mmoe`) the cosine rho (the paper's p)
between the two tasks' weight vectors sets how related the tasks are. For each rho, single-task, shared-bottom,
MMoE, PLE and FDN are trained on both tasks; a multi-task model that does worse than the
single-task networks at some rho suffers negative transfer there. For one seed, every rho draws the
same inputs, sine parameters and u1, u2: only w2 = c (p u1 + sqrt(1 - p^2) u2) changes.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from experiments import base, figures, regression, report, stats
from experiments.grid import Cell, make_cells
from synth import mmoe

NAME = "negative-transfer"


@dataclasses.dataclass(frozen=True)
class Settings:
    seeds: int
    correlations: tuple = (1.0, 0.9, 0.5, 0.0, -0.5)  # must hold 1.0 and 0.0 (the claims compare them)
    rows: int = 40_000  # at 10,000 rows every model overfit (test MSE 2-3x its training MSE)
    dimension: int = 100  # the MMoE paper's d
    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 1e-3
    embedding_dim: int = 16  # no effect: every input is numeric
    expert_units: tuple = (64, 32)  # each expert; the shared bottom and each single-task network too
    tower_units: tuple = (16,)
    num_experts: int = 4  # MMoE
    specific_experts: int = 1  # PLE: per task and level, with 2 shared: 4 experts a level, as MMoE
    shared_experts: int = 2
    levels: int = 2
    pairs: int = 2  # FDN: 2 pairs per task, 8 experts
    aux_weight: float = 0.1
    orth_weight: float = 0.01
    aux_reduction: str = "mean"
    orth_normalized: bool = True
    preset: str = "project"  # experiments.presets (beyond the papers: no `paper` preset)


SCALES = {
    "quick": Settings(seeds=3),
    "full": Settings(
        seeds=10,
        correlations=(1.0, 0.9, 0.8, 0.7, 0.5, 0.3, 0.0, -0.3, -0.5, -0.9),
        rows=200_000,
        epochs=10,
        expert_units=(128, 64),
        tower_units=(32,),
        num_experts=8,
        specific_experts=2,
        shared_experts=4,
        pairs=4,
    ),
}

MODELS = {"single_task": "Single-task", "shared_bottom": "Shared-bottom", "mmoe": "MMoE", "ple": "PLE", "fdn": "FDN"}
MULTI_TASK = ("shared_bottom", "mmoe", "ple", "fdn")
REGULARIZER = {"fdn": "aux_orth"}


def cells(settings: Settings, seeds: list) -> list[Cell]:
    return make_cells(
        [(m, REGULARIZER.get(m, "none")) for m in MODELS],
        seeds,
        settings=[(("correlation", float(p)),) for p in settings.correlations],
    )


def _synth_config(settings: Settings, correlation: float, seed: int) -> mmoe.MmoeSynthConfig:
    return mmoe.MmoeSynthConfig(correlation=correlation, rows=settings.rows, dimension=settings.dimension, seed=seed)


@functools.lru_cache(maxsize=2)
def _generated(config: tuple):
    return mmoe.make(mmoe.MmoeSynthConfig(*config))


def data(settings: Settings, correlation: float, seed: int) -> tuple[regression.Data, regression.Data]:
    """(train, test), split as `mtrank synth mmoe` writes it (test: the first 20% of rows)."""
    config = _synth_config(settings, correlation, seed)
    x, y1, y2, _, _ = _generated(dataclasses.astuple(config))
    n_test = int(round(config.rows * config.test_fraction))
    y = np.stack([y1, y2], 1)
    return regression.Data(x[n_test:], y[n_test:]), regression.Data(x[:n_test], y[:n_test])


def _trainer_config(cell: Cell, settings: Settings):
    return regression.trainer_config(cell.variant, cell.seed, settings, regularized=cell.regularizer == "aux_orth")


def cell_config(cell: Cell, settings: Settings) -> dict:
    return {
        "trainer": _trainer_config(cell, settings).to_dict(),
        "data": {
            "generator": "mmoe",
            **dataclasses.asdict(_synth_config(settings, cell.get("correlation"), cell.seed)),
        },
        "tasks": [1, 2],
    }


def run_cell(cell: Cell, settings: Settings) -> dict:
    train, test = data(settings, cell.get("correlation"), cell.seed)
    return regression.train(_trainer_config(cell, settings), (0, 1), train, test)


# --- the report --------------------------------------------------------------------------------


def _values(records) -> dict:
    """(model, correlation) -> {metric: {seed: value}}, with "mse_mean": the two tasks' mean MSE."""
    values = {}
    for record in records:
        entry = values.setdefault((record.cell.variant, record.cell.get("correlation")), {})
        metrics = {**record.metrics, "mse_mean": (record.metrics["mse_1"] + record.metrics["mse_2"]) / 2}
        for metric, value in metrics.items():
            entry.setdefault(metric, {})[record.cell.seed] = value
    return values


def _all_seeds(values: dict, metric: str) -> list:
    """Every run's value of `metric`, in a fixed order."""
    return [
        entry[metric][seed] for _, entry in sorted(values.items()) if metric in entry for seed in sorted(entry[metric])
    ]


def _heading(p: float) -> str:
    return f"ρ = {p:g}"


def loss_table(values: dict, correlations, metric: str) -> report.Table:
    columns = tuple(report.Column(_heading(p)) for p in correlations)
    rows = [
        report.Row(
            label,
            {_heading(p): values.get((model, p), {}).get(metric, {}) for p in correlations},
            baseline=None if model == "single_task" else MODELS["single_task"],
        )
        for model, label in MODELS.items()
    ]
    return report.Table(columns, tuple(rows))


def transfer_summary(values: dict, correlations) -> str:
    """Per multi-task model, the correlations where its mean MSE is significantly above or below
    single-task's (paired t-test, p < 0.05)."""
    lines = []
    for model in MULTI_TASK:
        worse, better = [], []
        for p in correlations:
            own = values.get((model, p), {}).get("mse_mean", {})
            single = values.get(("single_task", p), {}).get("mse_mean", {})
            a, b = stats.paired(own, single)
            if stats.paired_p_value(a, b) < stats.SIGNIFICANT:
                (worse if a.mean() > b.mean() else better).append(f"{p:g}")
        lines.append(
            f"- {MODELS[model]}: negative transfer at {_correlations(worse)}; "
            f"positive transfer at {_correlations(better)}."
        )
    return "\n".join(
        [
            "Mean of the two tasks' test MSE against single-task's at the same ρ: negative transfer where "
            "it is significantly higher, positive where significantly lower (paired t-test, p < 0.05).",
            "",
        ]
        + lines
    )


def _correlations(values: list) -> str:
    return "ρ = " + ", ".join(values) if values else "no ρ"


def _spread(values: dict, model: str, high: float, low: float) -> dict:
    """{seed: mean MSE at correlation `low` - at `high`}: how much the lower correlation costs."""
    at_high = values.get((model, high), {}).get("mse_mean", {})
    at_low = values.get((model, low), {}).get("mse_mean", {})
    return {s: at_low[s] - at_high[s] for s in sorted(set(at_high) & set(at_low))}


def claims(values: dict, correlations) -> list[report.Claim]:
    high, low = max(correlations), 0.0
    low_ones = [p for p in correlations if 0.0 <= p <= 0.5]

    def loss(model, p):
        return values.get((model, p), {}).get("mse_mean", {})

    source = "MMoE paper, synthetic data"
    return [
        report.Claim(
            source,
            f"Shared-bottom's loss (mean test MSE of the two tasks) grows as the tasks' correlation "
            f"falls: it is lower at ρ = {high:g} than at ρ = {low:g}.",
            (
                report.Comparison(
                    f"Shared-bottom ρ={high:g}",
                    f"Shared-bottom ρ={low:g}",
                    loss("shared_bottom", high),
                    loss("shared_bottom", low),
                ),
            ),
        ),
        report.Claim(
            source,
            "MMoE does better than shared-bottom when the tasks are less related "
            f"(ρ = {', '.join(f'{p:g}' for p in low_ones)}).",
            tuple(
                report.Comparison(f"MMoE ρ={p:g}", f"Shared-bottom ρ={p:g}", loss("mmoe", p), loss("shared_bottom", p))
                for p in low_ones
            ),
        ),
        report.Claim(
            source,
            f"MMoE is hurt less than shared-bottom by low correlation: its loss rises less from "
            f"ρ = {high:g} to ρ = {low:g}.",
            (
                report.Comparison(
                    "MMoE rise",
                    "Shared-bottom rise",
                    _spread(values, "mmoe", high, low),
                    _spread(values, "shared_bottom", high, low),
                ),
            ),
        ),
        report.Claim(
            "FDN paper's thesis, tested beyond its paper",
            f"FDN suffers less negative transfer than MMoE and PLE: at ρ = {low:g} its loss is lower.",
            tuple(
                report.Comparison(f"FDN ρ={low:g}", f"{MODELS[m]} ρ={low:g}", loss("fdn", low), loss(m, low))
                for m in ("mmoe", "ple")
            ),
        ),
    ]


def _figure(out: str, values: dict, correlations) -> str:
    x = sorted(correlations)
    panels = {
        f"task {t}": {
            label: [values.get((model, p), {}).get(f"mse_{t}", {}) for p in x] for model, label in MODELS.items()
        }
        for t in (1, 2)
    }
    return figures.lines_by_panel(
        out,
        "loss_vs_correlation.png",
        x,
        panels,
        "task correlation ρ = cos(w1, w2)",
        "test MSE",
        "MMoE synthetic data: test MSE against task correlation",
    )


def write_report(out: str, settings: Settings, scale: str, seeds: list, records) -> None:
    values = _values(records)
    correlations = list(settings.correlations)
    figure = _figure(out, values, correlations)
    note = report.significance_note("single-task", len(seeds))
    markdown = "\n\n".join(
        [
            f"# {NAME}: test loss against task correlation (MMoE synthetic data)",
            "Beyond the papers. The MMoE paper's two-task regression with ρ, the cosine between the tasks' weight "
            "vectors (the paper's p), swept; every model is trained on both tasks and scored by test MSE per task. "
            "A multi-task model worse than the single-task networks at some ρ suffers negative transfer there. For "
            "one seed, every ρ shares the inputs and sine parameters; only task 2's weights change.",
            f"Scale `{scale}`: {len(seeds)} seeds ({', '.join(map(str, seeds))}), {settings.rows:,} rows (80% train), "
            f"d = {settings.dimension}, {settings.epochs} epochs, batch {settings.batch_size}, Adam "
            f"{settings.learning_rate:g}, experts/bottom {list(settings.expert_units)}, towers "
            f"{list(settings.tower_units)}, MMoE {settings.num_experts} experts, PLE {settings.levels} levels of "
            f"{settings.specific_experts} task-specific + {settings.shared_experts} shared experts, FDN "
            f"{settings.pairs} pairs per task.",
            "## Task 1: test MSE",
            report.render_table(loss_table(values, correlations, "mse_1")),
            note,
            "## Task 2: test MSE",
            report.render_table(loss_table(values, correlations, "mse_2")),
            note,
            "## Mean of the two tasks' test MSE",
            report.render_table(loss_table(values, correlations, "mse_mean")),
            note,
            "## Where each model suffers negative transfer",
            transfer_summary(values, correlations),
            f"![test MSE against task correlation]({figure})",
            report.render_claims(claims(values, correlations), scale, len(seeds)),
            "## Notes",
            "- Inputs are the d columns as numeric fields, appended to the network's input as they are, so the "
            "embedding size has no effect. The two network outputs are the two regression predictions, trained "
            f"with MSE; FDN adds its auxiliary heads (weight {settings.aux_weight:g}) and orthogonality loss "
            f"(weight {settings.orth_weight:g}).\n"
            "- Test-label variance, the MSE of predicting the mean (over seeds and ρ): "
            + ", ".join(f"task {t} {stats.format_mean_std(_all_seeds(values, f'label_var_{t}'))}" for t in (1, 2))
            + ".\n"
            "- The MMoE paper's claims are about its own settings (model sizes, training length); these are ours.",
            "## Settings",
            report.settings_table(settings, seeds),
        ]
    )
    report.write(out, markdown, records)


EXPERIMENT = base.Experiment(
    NAME,
    "beyond the papers: each model's test loss against task correlation (MMoE data)",
    SCALES,
    cells,
    run_cell,
    cell_config,
    write_report,
)
