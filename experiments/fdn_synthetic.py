"""`fdn-synthetic`: the FDN paper's Table 1 on its synthetic data (`synth.fdn`).

Oracles: a single-task network trained on Dataset-A (X_1, y1) and one on Dataset-B (X_2, y2),
each seeing only its own task's inputs. Against them, MMoE, CGC, PLE and FDN trained on
Dataset-I (X, y1, y2), whose features mix both tasks' inputs. The table gives each task's test
MSE and the gap to the oracle, (MSE - oracle MSE) / oracle MSE in percent, per seed and then
averaged. Each seed draws its own data (the generator's seed) and initialisation, so the t-test
pairs runs on the same data.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from experiments import base, figures, presets, regression, report, stats
from experiments.grid import Cell, make_cells
from synth import fdn

NAME = "fdn-synthetic"


@dataclasses.dataclass(frozen=True)
class Settings:
    seeds: int  # the default number of seeds
    rows: int = 10_000  # the authors' generator's default sample size
    dimension: int = 100
    epochs: int = 5
    batch_size: int = 64  # not in the paper's text as we have it
    learning_rate: float = 1e-3  # likewise
    embedding_dim: int = 32  # no effect here: every input is numeric (see the README)
    expert_units: tuple = (128, 64)
    tower_units: tuple = (64,)
    num_experts: int = 8  # MMoE
    specific_experts: int = 2  # CGC, PLE: per task and level; with 4 shared, 8 experts a level
    shared_experts: int = 4
    levels: int = 2  # PLE
    pairs: int = 4  # FDN: decomposition pairs per task
    aux_weight: float = 0.1  # the Trainer's defaults (trainer.config.FdnConfig)
    orth_weight: float = 0.01
    aux_reduction: str = "mean"
    orth_normalized: bool = True
    preset: str = "project"  # experiments.presets


# The paper's settings at both scales: a cell takes 5-15 s on 2 cores, so `quick` differs only
# in its number of seeds.
SCALES = {"quick": Settings(seeds=5), "full": Settings(seeds=10)}


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str
    model: str  # a zoo model
    dataset: str  # a key of synth.fdn.DATASETS
    tasks: tuple  # trained outputs: 0 is y1, 1 is y2


VARIANTS = {
    "oracle_a": Variant("Oracle A", "single_task", "dataset_a", (0,)),
    "oracle_b": Variant("Oracle B", "single_task", "dataset_b", (1,)),
    "mmoe": Variant("MMoE", "mmoe", "dataset_i", (0, 1)),
    "cgc": Variant("CGC", "cgc", "dataset_i", (0, 1)),
    "ple": Variant("PLE", "ple", "dataset_i", (0, 1)),
    "fdn": Variant("FDN", "fdn", "dataset_i", (0, 1)),
}
MULTI_TASK = ("mmoe", "cgc", "ple", "fdn")
BASELINES = ("mmoe", "cgc", "ple")
REGULARIZER = {"fdn": "aux_orth"}  # FDN with L_aux and L_orth; the others have none


def cells(settings: Settings, seeds: list) -> list[Cell]:
    return make_cells([(v, REGULARIZER.get(v, "none")) for v in VARIANTS], seeds)


def synth_config(settings: Settings, seed: int) -> fdn.FdnSynthConfig:
    return fdn.FdnSynthConfig(rows=settings.rows, dimension=settings.dimension, seed=seed)


@functools.lru_cache(maxsize=2)
def _generated(config: tuple) -> dict:
    return fdn.make(fdn.FdnSynthConfig(*config))


def datasets(settings: Settings, seed: int, dataset: str) -> tuple[regression.Data, regression.Data]:
    """(train, test) of a dataset, split as `mtrank synth fdn` writes it (test: the first rows);
    a task the dataset has no label for is NaN."""
    config = synth_config(settings, seed)
    data = _generated(dataclasses.astuple(config))
    features, labels = fdn.DATASETS[dataset]
    y = np.stack([data[name] if name in labels else np.full(config.rows, np.nan) for name in ("y1", "y2")], 1)
    n_test = int(round(config.rows * config.test_fraction))
    x = data[features]
    return regression.Data(x[n_test:], y[n_test:]), regression.Data(x[:n_test], y[:n_test])


def _trainer_config(cell: Cell, settings: Settings):
    return regression.trainer_config(
        VARIANTS[cell.variant].model, cell.seed, settings, regularized=cell.regularizer == "aux_orth"
    )


def cell_config(cell: Cell, settings: Settings) -> dict:
    variant = VARIANTS[cell.variant]
    return {
        "trainer": _trainer_config(cell, settings).to_dict(),
        "data": {"generator": "fdn", **dataclasses.asdict(synth_config(settings, cell.seed))},
        "dataset": variant.dataset,
        "tasks": [t + 1 for t in variant.tasks],
    }


def run_cell(cell: Cell, settings: Settings) -> dict:
    variant = VARIANTS[cell.variant]
    train, test = datasets(settings, cell.seed, variant.dataset)
    return regression.train(_trainer_config(cell, settings), variant.tasks, train, test)


# --- the report --------------------------------------------------------------------------------


def _by_variant(records) -> dict:
    """variant -> {metric: {seed: value}}."""
    table = {}
    for record in records:
        for metric, value in record.metrics.items():
            table.setdefault(record.cell.variant, {}).setdefault(metric, {})[record.cell.seed] = value
    return table


def oracle_mse(values: dict, task: int) -> dict:
    """{seed: MSE} of the oracle of task 1 (A) or 2 (B)."""
    return values.get("oracle_a" if task == 1 else "oracle_b", {}).get(f"mse_{task}", {})


def gaps(mse: dict, oracle: dict) -> dict:
    """{seed: 100 * (MSE - oracle MSE) / oracle MSE} on the seeds both have."""
    return {s: 100.0 * (mse[s] - oracle[s]) / oracle[s] for s in sorted(set(mse) & set(oracle))}


def table_1(values: dict) -> report.Table:
    columns = (
        report.Column("task 1 MSE"),
        report.Column("task 1 gap to oracle", 1, "%", True),
        report.Column("task 2 MSE"),
        report.Column("task 2 gap to oracle", 1, "%", True),
    )
    oracle = {1: oracle_mse(values, 1), 2: oracle_mse(values, 2)}
    rows = [report.Row("Oracle (A: Dataset-A, B: Dataset-B)", {"task 1 MSE": oracle[1], "task 2 MSE": oracle[2]})]
    for variant in MULTI_TASK:
        row = {}
        for task in (1, 2):
            mse = values.get(variant, {}).get(f"mse_{task}", {})
            row[f"task {task} MSE"] = mse
            row[f"task {task} gap to oracle"] = gaps(mse, oracle[task])
        rows.append(report.Row(f"{VARIANTS[variant].label} (Dataset-I)", row, baseline=rows[0].label))
    return report.Table(columns, tuple(rows))


def claims(values: dict) -> list[report.Claim]:
    def mse(variant, task):
        return values.get(variant, {}).get(f"mse_{task}", {})

    def label(variant):
        return VARIANTS[variant].label

    found = [
        report.Claim(
            "FDN paper, Table 1",
            "Trained on Dataset-I, the multi-task baselines MMoE, CGC and PLE have a higher test MSE than the "
            "oracles on both tasks: mixed features cost them accuracy (negative transfer).",
            tuple(
                report.Comparison(
                    f"Oracle (task {task})", f"{label(v)} (task {task})", oracle_mse(values, task), mse(v, task)
                )
                for task in (1, 2)
                for v in BASELINES
            ),
        )
    ]
    for task in (1, 2):
        found.append(
            report.Claim(
                "FDN paper, Table 1",
                f"FDN has the lowest task-{task} test MSE, hence the smallest gap to the oracle, "
                "of MMoE, CGC, PLE and FDN.",
                tuple(report.Comparison("FDN", label(v), mse("fdn", task), mse(v, task)) for v in BASELINES),
            )
        )
    return found


def seeds_without_learning(values: dict) -> list:
    """Seeds on which no model beat predicting the test mean (MSE >= the test labels' variance)
    on any task: there the table compares networks that learned nothing."""
    found = []
    for seed in sorted(values.get("oracle_a", {}).get("label_var_1", {})):
        scores = [
            (values[v].get(f"mse_{t}", {}).get(seed), values[v].get(f"label_var_{t}", {}).get(seed))
            for v in values
            for t in (1, 2)
        ]
        if all(mse >= variance for mse, variance in scores if mse is not None and variance is not None):
            found.append(seed)
    return found


def _figure(out: str, values: dict) -> str:
    """The gap to the oracle per model and task: per seed, so seeds of different difficulty
    (label variances from 0.4 to 5) compare on one scale."""
    labels = [VARIANTS[v].label for v in MULTI_TASK]

    def per_task(task):
        return [gaps(values.get(v, {}).get(f"mse_{task}", {}), oracle_mse(values, task)) for v in MULTI_TASK]

    return figures.grouped_bars(
        out,
        "gap_to_oracle.png",
        labels,
        {"task 1": per_task(1), "task 2": per_task(2)},
        "test MSE gap to the oracle (%)",
        "FDN synthetic data: gap to the oracle (mean ± std over seeds)",
    )


def write_report(out: str, settings: Settings, scale: str, seeds: list, records) -> None:
    values = _by_variant(records)
    figure = _figure(out, values)
    params = {
        VARIANTS[v].label: int(next(iter(values[v]["params"].values())))
        for v in VARIANTS
        if "params" in values.get(v, {})
    }
    idle = seeds_without_learning(values)
    variances = {
        task: values.get("oracle_a" if task == 1 else "oracle_b", {}).get(f"label_var_{task}", {}) for task in (1, 2)
    }
    markdown = "\n\n".join(
        [
            f"# {NAME}: the FDN paper's Table 1 on its synthetic data",
            "Oracles: a single-task network trained on Dataset-A (its inputs X_1, label y1) and one on Dataset-B "
            "(X_2, y2). MMoE, CGC, PLE and FDN are trained on Dataset-I (features X mixing both tasks' inputs; "
            "labels y1 and y2). Test MSE per task on the 30% test split; the gap is (MSE - oracle MSE) / "
            "oracle MSE per seed, in percent. Each seed draws its own data set and initialisation.",
            f"Scale `{scale}`: {len(seeds)} seeds ({', '.join(map(str, seeds))}), {settings.rows:,} rows, "
            f"d = {settings.dimension}, {settings.epochs} epochs, batch {settings.batch_size}, Adam "
            f"{settings.learning_rate:g}, experts {list(settings.expert_units)}, MMoE {settings.num_experts} experts, "
            f"CGC/PLE {settings.specific_experts} task-specific + {settings.shared_experts} shared experts, "
            f"FDN {settings.pairs} pairs per task.",
            "## Table 1: test MSE and the gap to the oracle",
            report.render_table(table_1(values)),
            report.significance_note("the oracle of the task", len(seeds)),
            f"![gap to the oracle per model and task]({figure})",
            report.render_claims(claims(values), scale, len(seeds)),
            "## Notes",
            "- Inputs are the d feature columns as numeric fields, appended to the network's input as they are, "
            f"so the embedding size ({settings.embedding_dim}) has no effect on these runs.\n"
            "- The two network outputs are the two regression predictions (no sigmoid), trained with MSE; FDN adds "
            f"its auxiliary heads (MSE on each task-specific expert, weight {settings.aux_weight:g}) and its "
            f"orthogonality loss (weight {settings.orth_weight:g}).\n"
            "- Batch size and learning rate are not given in the paper as we have it; they are the same for every "
            "model.\n"
            "- Test-label variance, the MSE of predicting the mean: "
            + ", ".join(f"task {t} {stats.format_mean_std(v[s] for s in sorted(v))}" for t, v in variances.items())
            + f". Seeds on which no model beat it on any task: {', '.join(map(str, idle)) or 'none'}.\n"
            "- Parameters of the inference network (an oracle is a single-task model holding both tasks' networks, "
            "of which it trains one): " + ", ".join(f"{k} {v:,}" for k, v in params.items()) + ".",
            "## Settings",
            report.settings_table(settings, seeds),
        ]
    )
    report.write(out, markdown, records)


EXPERIMENT = base.Experiment(
    NAME,
    "FDN paper Table 1: oracles vs MMoE, CGC, PLE, FDN on the FDN synthetic data",
    SCALES,
    cells,
    run_cell,
    cell_config,
    write_report,
    paper_preset=presets.fdn_paper,
)
