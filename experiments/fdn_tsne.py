"""`fdn-tsne`: the FDN paper's Figure 3, a t-SNE of the task-specific and task-shared features.

FDN is trained on Dataset-I of the FDN synthetic data (`fdn-synthetic`'s data and model settings)
with its orthogonality loss L_orth and, as the comparison the paper's credit to L_orth calls for,
without it (L_aux on in both). On the test split, each decomposition pair's f^p and f^s outputs
are the points: a test row gives k * M task-specific and k * M task-shared feature vectors, of
three kinds (task-1 specific, task-2 specific, shared). The figure is a t-SNE of a subsample of
them; the numbers the claim is judged by are computed per seed:

- the silhouette of the kind labels in the feature space (Euclidean; t-SNE distorts distances and
  cluster sizes, so this is the fairer measure of separation) and in the t-SNE embedding;
- the mean |cosine| between the shared and the specific feature vector of the same pair and row,
  which L_orth pushes to 0 (ReLU features are non-negative, so a zero cosine means disjoint
  active units); vectors that are all zero have no cosine and are counted apart, since L_orth can
  also be met by switching experts off.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import threadpoolctl
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score

from experiments import base, fdn_synthetic, figures, presets, regression, report
from experiments.grid import Cell, make_cells

NAME = "fdn-tsne"


@dataclasses.dataclass(frozen=True)
class Settings(fdn_synthetic.Settings):
    # The points of one cell are samples * 2kM feature vectors (16 per row at 2 tasks and 4 pairs);
    # t-SNE and the silhouette grow with their square.
    samples: int = 150  # test rows embedded
    perplexity: float = 30.0  # scikit-learn's default
    # One data draw at the paper's spread, and a fixed 5 epochs (no validation split: `patience`
    # and `validation_fraction` are unused here); the figure shows features, not a score.
    x_stds: tuple = (0.1,)
    epochs: int = 5


SCALES = {"quick": Settings(seeds=8), "full": Settings(seeds=20, samples=1000)}

# regulariser -> (label, L_orth on). L_aux stays on in both: only L_orth is compared.
ARMS = {"aux_orth": ("FDN", True), "aux": ("FDN without L_orth", False)}
WITH, WITHOUT = "aux_orth", "aux"
KINDS = ("task-1 specific", "task-2 specific", "shared")
_EMBEDDING = "tsne.npz"


def cells(settings: Settings, seeds: list) -> list[Cell]:
    return make_cells([("fdn", arm) for arm in ARMS], seeds)


def _trainer_config(cell: Cell, settings: Settings):
    config = regression.trainer_config("fdn", cell.seed, settings)
    return dataclasses.replace(config, fdn=dataclasses.replace(config.fdn, orth=ARMS[cell.regularizer][1]))


def cell_config(cell: Cell, settings: Settings) -> dict:
    return {
        "trainer": _trainer_config(cell, settings).to_dict(),
        "data": {"generator": "fdn", **dataclasses.asdict(fdn_synthetic.synth_config(settings, settings.x_stds[0]))},
        "dataset": "dataset_i",
        "tasks": [1, 2],
        "embedding": {"samples": settings.samples, "perplexity": settings.perplexity},
    }


def prepare(settings: Settings, out: str, log) -> str:
    """The report folder: each cell saves its t-SNE points beside its metrics, for the figure."""
    return out


def expert_features(network, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, d] -> (specific, shared), [N, k, M, u] each (inference mode)."""
    specific, shared = network.expert_features(
        regression.as_features(x.astype(np.float32), regression.numeric_spec(x.shape[1]))
    )
    return np.asarray(specific, np.float64), np.asarray(shared, np.float64)


def points(specific: np.ndarray, shared: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every feature vector as a point [n, u], its kind [n] (task k's specific ones k, the shared
    ones of every task's pairs k_tasks) and its expert [n] (0..2kM-1)."""
    rows, tasks, pairs, units = specific.shape
    task_of = np.broadcast_to(np.arange(tasks)[None, :, None], (rows, tasks, pairs)).reshape(-1)
    expert_of = np.tile(np.arange(2 * tasks * pairs).reshape(2, 1, tasks * pairs), (1, rows, 1)).reshape(-1)
    return (
        np.concatenate([specific.reshape(-1, units), shared.reshape(-1, units)]),
        np.concatenate([task_of, np.full(rows * tasks * pairs, tasks)]),
        expert_of,
    )


def cosine_and_zeros(specific: np.ndarray, shared: np.ndarray) -> dict:
    """Mean |cosine| between each pair's shared and specific vector of a row (over the vectors both
    non-zero; NaN if none), and the percentage of all-zero specific and shared vectors."""
    norm_p, norm_s = np.linalg.norm(specific, axis=-1), np.linalg.norm(shared, axis=-1)
    live = (norm_p > 0) & (norm_s > 0)
    cosine = np.abs(np.sum(specific * shared, -1)[live] / (norm_p * norm_s)[live])
    return {
        "cosine": float(cosine.mean()) if cosine.size else float("nan"),
        "zero_specific_pct": 100.0 * float(np.mean(norm_p == 0)),
        "zero_shared_pct": 100.0 * float(np.mean(norm_s == 0)),
    }


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """The labels' silhouette (Euclidean); NaN where it is undefined: every point the same, or
    fewer than 2 labels or fewer points than labels + 1."""
    count = len(np.unique(labels))
    defined = len(x) > 0 and np.ptp(x) > 0 and 2 <= count <= len(x) - 1
    return float(silhouette_score(x, labels)) if defined else float("nan")


def embed(x: np.ndarray, settings: Settings, seed: int) -> np.ndarray:
    """[n, u] -> [n, 2] t-SNE, seeded. One OpenMP thread: Barnes-Hut's parallel reductions may add
    the threads' partial sums in any order, and the report must not depend on that (or on the
    machine's core count)."""
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        tsne = TSNE(2, perplexity=min(settings.perplexity, (len(x) - 1) / 3), init="pca", random_state=seed)
        return tsne.fit_transform(x)


def run_cell(cell: Cell, settings: Settings, prepared: str) -> dict:
    config = _trainer_config(cell, settings)
    train, test = fdn_synthetic.datasets(settings, settings.x_stds[0], "dataset_i")
    network, last_epoch = regression.fit(config, (0, 1), train)
    metrics = {**regression.evaluate(network, config, (0, 1), test), **last_epoch}
    specific, shared = expert_features(network, test.x)
    metrics.update(cosine_and_zeros(specific, shared))
    rows = np.sort(
        np.random.default_rng(cell.seed).choice(len(test.x), min(settings.samples, len(test.x)), replace=False)
    )
    x, kinds, experts = points(specific[rows], shared[rows])
    embedding = embed(x, settings, cell.seed)
    metrics["silhouette_features"] = silhouette(x, kinds)
    # Whether the points cluster by expert rather than by kind (they do in the first runs' figures).
    metrics["silhouette_experts"] = silhouette(x, experts)
    # All-zero vectors (experts switched off for a row) all sit at the origin, one tight cluster that
    # can raise the silhouette with no separation among the live features.
    live = np.linalg.norm(x, axis=1) > 0
    metrics["silhouette_features_nonzero"] = silhouette(x[live], kinds[live])
    metrics["silhouette_tsne"] = silhouette(embedding, kinds)
    np.savez(_embedding_path(prepared, cell), points=embedding.astype(np.float32), kinds=kinds.astype(np.int8))
    return metrics


def _embedding_path(out: str, cell: Cell) -> str:
    return os.path.join(out, "runs", cell.key, _EMBEDDING)


# --- the report --------------------------------------------------------------------------------

COLUMNS = (
    ("silhouette_features", report.Column("silhouette, features")),
    ("silhouette_tsne", report.Column("silhouette, t-SNE")),
    ("cosine", report.Column("mean abs. cosine, shared vs specific")),
    ("silhouette_features_nonzero", report.Column("silhouette, features, non-zero vectors")),
    ("silhouette_experts", report.Column("silhouette of the experts, features")),
    ("zero_specific_pct", report.Column("all-zero specific vectors", 1, "%")),
    ("zero_shared_pct", report.Column("all-zero shared vectors", 1, "%")),
    ("mse_1", report.Column("task 1 MSE")),
    ("mse_2", report.Column("task 2 MSE")),
)


def _by_arm(records) -> dict:
    """arm -> {metric: {seed: value}}."""
    table = {}
    for record in records:
        for metric, value in record.metrics.items():
            table.setdefault(record.cell.regularizer, {}).setdefault(metric, {})[record.cell.seed] = value
    return table


def table(values: dict) -> report.Table:
    rows = [report.Row(ARMS[WITHOUT][0], {c.title: values.get(WITHOUT, {}).get(m, {}) for m, c in COLUMNS})]
    rows.append(
        report.Row(
            ARMS[WITH][0], {c.title: values.get(WITH, {}).get(m, {}) for m, c in COLUMNS}, baseline=rows[0].label
        )
    )
    return report.Table(tuple(c for _, c in COLUMNS), tuple(rows))


def claims(values: dict) -> list[report.Claim]:
    def compare(metric, higher_is_better):
        title = dict(COLUMNS)[metric].title
        return report.Comparison(
            f"{ARMS[WITH][0]} ({title})",
            f"{ARMS[WITHOUT][0]} ({title})",
            values.get(WITH, {}).get(metric, {}),
            values.get(WITHOUT, {}).get(metric, {}),
            higher_is_better,
        )

    return [
        report.Claim(
            "FDN paper, Figure 3",
            "With L_orth, the task-specific and task-shared features form separate clusters: the kind labels' "
            "silhouette is higher than without L_orth, in the feature space and in the t-SNE embedding.",
            (compare("silhouette_features", True), compare("silhouette_tsne", True)),
        ),
        report.Claim(
            "FDN paper, L_orth",
            "L_orth makes each pair's shared and specific features orthogonal: their mean absolute cosine is "
            "lower than without L_orth.",
            (compare("cosine", False),),
        ),
    ]


def _figure(out: str, seed: int, records) -> str:
    """The first seed's t-SNE, one panel per arm."""
    panels = {}
    for record in records:
        if record.cell.seed == seed:
            with np.load(_embedding_path(out, record.cell)) as saved:
                panels[ARMS[record.cell.regularizer][0]] = (saved["points"], saved["kinds"])
    return figures.scatter_panels(
        out, "tsne.png", panels, list(KINDS), f"t-SNE of FDN's expert features on the test split (seed {seed})"
    )


def write_report(out: str, settings: Settings, scale: str, seeds: list, records) -> None:
    values = _by_arm(records)
    figure = _figure(out, seeds[0], records)
    pairs = 2 * settings.pairs
    markdown = "\n\n".join(
        [
            f"# {NAME}: the FDN paper's Figure 3, task-specific and task-shared features",
            "FDN trained on Dataset-I of the FDN synthetic data, with its orthogonality loss L_orth and without it "
            "(the auxiliary loss on in both). Each test row gives one feature vector per decomposition pair's "
            f"task-specific expert f^p and task-shared expert f^s: {pairs} specific ({settings.pairs} per task) and "
            f"{pairs} shared. Their kinds are task-1 specific, task-2 specific and shared.",
            f"Scale `{scale}`: {len(seeds)} seeds ({', '.join(map(str, seeds))}), {settings.rows:,} rows, "
            f"d = {settings.dimension}, {settings.epochs} epochs, batch {settings.batch_size}, Adam "
            f"{settings.learning_rate:g}, experts {list(settings.expert_units)}, {settings.pairs} pairs per task, "
            f"L_aux weight {settings.aux_weight:g}, L_orth weight {settings.orth_weight:g}. t-SNE and silhouettes on "
            f"{settings.samples} test rows ({settings.samples * 2 * pairs:,} points), drawn per seed; the cosine and "
            "the all-zero shares on the whole test split.",
            "## Separation of the specific and shared features",
            report.render_table(table(values)),
            report.significance_note("FDN without L_orth", len(seeds)),
            "Silhouette of the three kind labels, in [-1, 1]: near 1 when every kind is a tight cluster apart from the "
            "others, near 0 when they overlap. Features: Euclidean, on the experts' outputs as they are. Mean abs. "
            "cosine: between the shared and the specific vector of the same pair and row, over the pairs where "
            "neither is all zero (ReLU outputs, so 0 means no active unit in common). Silhouette of the experts: the "
            f"same points labelled by which of the {2 * pairs} experts made them, a diagnostic (not a claim) of "
            "whether they cluster by expert rather than by kind. Non-zero vectors: the kinds' silhouette without the "
            "all-zero vectors, which all sit at the origin and form a tight cluster of their own. All-zero vectors: "
            "experts that output nothing for a row.",
            f"![t-SNE of the specific and shared features, with and without L_orth]({figure})",
            report.render_claims(claims(values), scale, len(seeds)),
            "## Notes",
            "- t-SNE: scikit-learn's `TSNE` (Barnes-Hut, PCA initialisation, perplexity "
            f"{settings.perplexity:g}), seeded with the run's seed, on one thread so that it is reproducible. Its "
            "distances and cluster sizes are not faithful, so the feature-space silhouette is the measure to trust.\n"
            "- The figure shows the first seed only; the table is over every seed.",
            "## Settings",
            report.settings_table(settings, seeds),
        ]
    )
    report.write(out, markdown, records)


EXPERIMENT = base.Experiment(
    NAME,
    "FDN paper Figure 3: t-SNE of FDN's task-specific and shared features, with and without L_orth",
    SCALES,
    cells,
    run_cell,
    cell_config,
    write_report,
    prepare=prepare,
    paper_preset=presets.fdn_paper,
)
