"""The converged linear reference: the `logistic` model solved, not trained.

Each task is an L2-regularised logistic regression on the whole training split (CTR on every row,
CVR on the clicked rows), solved to convergence with full-batch L-BFGS, as scikit-learn's
`LogisticRegression` solves it. Its columns are what `bench/sklearn_logistic.py` fits:
- one per table row (field, vocabulary index) read at least `MIN_COUNT` times in training, its
  value 1 for a single-valued field and the id's weight in a bag; rarer ids get no weight;
- one per numeric field, standardised with the training split's mean and standard deviation.
The penalty follows scikit-learn's parametrisation, loss sum + ||w||^2 / (2C), the intercept
unpenalised. C runs along `C_GRID` from the strongest penalty, each solve starting from the last,
and the C of the lowest eval log loss is kept, per task; the path stops once the eval loss has
risen once. The coefficients are written into the `Logistic` network's weights
(numerics back on their raw scale), so the export, serving and the Evaluator see the usual model.

Minibatch Adam with early stopping, as the deep models train, stops this model short of its
optimum (0.75 against scikit-learn's 0.81 test CTR AUC on 1M latent-factor rows), which made
every deep model's lift over it look larger than it is.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import scipy.optimize
import scipy.sparse as sp
from scipy.special import expit

from common.metrics import log_loss
from trainer import inputs
from transform import features as F

_LOG = logging.getLogger(__name__)
MIN_COUNT = 2  # an id read fewer times in training gets no weight (bench/sklearn_logistic.py: min_count)
C_GRID = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
MAX_ITERATIONS = 1000
_READ_BATCH = 65_536


@dataclasses.dataclass
class Design:
    """The columns of the linear model over a network's inputs: the kept table rows, then the numerics."""

    table_rows: int  # rows of the network's id-weight table (every field's vocabulary and OOV buckets)
    kept: np.ndarray  # [table_rows] int64: the column of each table row, -1 where it has none
    mean: np.ndarray  # [numeric] training means
    std: np.ndarray  # [numeric] training standard deviations (1 where a field is constant)

    @property
    def columns(self) -> int:
        return int(self.kept.max(initial=-1)) + 1 + len(self.mean)


def _entries(features: dict, spec: inputs.InputSpec, offsets: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row in the batch, table row, value) of every id a batch reads; bag padding (weight 0) left out."""
    rows, table, values = [], [], []
    batch = None
    for field in spec.fields:
        if field.kind == inputs.CATEGORICAL:
            ids = np.asarray(features[field.key], np.int64)
            batch = len(ids)
            rows.append(np.arange(batch))
            table.append(ids + offsets[field.key])
            values.append(np.ones(batch))
        elif field.kind == inputs.BAG:
            ids = np.asarray(features[field.key], np.int64)
            weights = np.asarray(features[field.weight_key], np.float64)
            batch = len(ids)
            present = weights != 0
            rows.append(np.nonzero(present)[0])
            table.append(ids[present] + offsets[field.key])
            values.append(weights[present])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(rows), np.concatenate(table), np.concatenate(values)


def _offsets(spec: inputs.InputSpec) -> tuple[dict, int]:
    """({field key: its first row in the id-weight table}, table rows), in `FieldEmbedding`'s order."""
    offsets, start = {}, 0
    for field in spec.of_kind(inputs.CATEGORICAL) + spec.of_kind(inputs.BAG):
        offsets[field.key] = start
        start += field.cardinality
    return offsets, start


class _Matrix:
    """A split read once as (sparse id columns by table row, numerics, labels)."""

    def __init__(self, split: inputs.Split, spec: inputs.InputSpec, max_entries: int):
        offsets, self.table_rows = _offsets(spec)
        numeric = spec.of_kind(inputs.NUMERIC)
        parts, numerics, clicks, conversions, start = [], [], [], [], 0
        self.truncated = False
        for features, labels in _batches(split):
            batch_rows, table, values = _entries(features, spec, offsets)
            parts.append((batch_rows + start, table, values))
            numerics.append(
                np.stack([np.asarray(features[f.key], np.float64) for f in numeric], 1)
                if numeric
                else np.zeros((len(labels[F.CLICK]), 0))
            )
            clicks.append(np.asarray(labels[F.CLICK], np.float64))
            conversions.append(np.asarray(labels[F.CONVERSION], np.float64))
            start += len(clicks[-1])
            if sum(len(p[1]) for p in parts) > max_entries:
                self.truncated = True
                break
        self.rows = start
        self.entry_rows = np.concatenate([p[0] for p in parts])
        self.entry_table = np.concatenate([p[1] for p in parts])
        self.entry_values = np.concatenate([p[2] for p in parts])
        self.numeric = np.concatenate(numerics)
        self.click = np.concatenate(clicks)
        self.conversion = np.concatenate(conversions)

    def design(self) -> Design:
        """The training split's columns: table rows read at least MIN_COUNT times, numerics' scale."""
        counts = np.bincount(self.entry_table, minlength=self.table_rows)
        keep = counts >= MIN_COUNT
        kept = np.where(keep, np.cumsum(keep) - 1, -1)
        std = self.numeric.std(0) if self.rows else np.ones(self.numeric.shape[1])
        return Design(self.table_rows, kept, self.numeric.mean(0), np.where(std > 0, std, 1.0))

    def matrix(self, design: Design, rows: np.ndarray | None = None) -> sp.csr_matrix:
        """[rows, design.columns]: the one-hot ids (repeated ids' values summed), then the standardised numerics."""
        column = design.kept[self.entry_table]
        found = column >= 0
        ids = sp.csr_matrix(
            (self.entry_values[found], (self.entry_rows[found], column[found])),
            shape=(self.rows, int(design.kept.max(initial=-1)) + 1),
        )
        numeric = sp.csr_matrix((self.numeric - design.mean) / design.std)
        matrix = sp.hstack([ids, numeric], format="csr")
        return matrix if rows is None else matrix[rows]


def _batches(split: inputs.Split):
    if split.in_memory:
        for start in range(0, split.rows, _READ_BATCH):
            window = slice(start, start + _READ_BATCH)
            yield {k: v[window] for k, v in split.features.items()}, {k: v[window] for k, v in split.labels.items()}
    else:
        for features, labels in split.dataset(_READ_BATCH)[0]:
            yield {k: v.numpy() for k, v in features.items()}, {k: v.numpy() for k, v in labels.items()}


def _loss_and_gradient(w: np.ndarray, x: sp.csr_matrix, y: np.ndarray, c: float) -> tuple[float, np.ndarray]:
    """C * sum of log losses + ||coef||^2 / 2 and its gradient; w = [coef..., intercept]."""
    z = x @ w[:-1] + w[-1]
    loss = c * float(np.sum(np.logaddexp(0.0, z) - y * z)) + 0.5 * float(w[:-1] @ w[:-1])
    residual = c * (expit(z) - y)
    gradient = np.empty_like(w)
    gradient[:-1] = x.T @ residual + w[:-1]
    gradient[-1] = residual.sum()
    return loss, gradient


@dataclasses.dataclass
class TaskFit:
    coef: np.ndarray  # [columns]
    intercept: float
    c: float
    path: list  # [{"C", "eval_logloss", "iterations"}] along the grid


def solve_task(x: sp.csr_matrix, y: np.ndarray, x_eval: sp.csr_matrix, y_eval: np.ndarray) -> TaskFit:
    """One task's regression along C_GRID, warm-started; the C of the lowest eval log loss."""
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6)) if len(y) else 0.5
    w = np.zeros(x.shape[1] + 1)
    w[-1] = np.log(rate / (1 - rate))
    best, path, rises = None, [], 0
    for c in C_GRID:
        result = scipy.optimize.minimize(
            _loss_and_gradient,
            w,
            args=(x, y, c),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": MAX_ITERATIONS, "ftol": 1e-10, "gtol": 1e-5},
        )
        w = result.x
        value = log_loss(y_eval, expit(x_eval @ w[:-1] + w[-1])) if len(y_eval) else float(result.fun)
        path.append({"C": c, "eval_logloss": value, "iterations": int(result.nit), "converged": bool(result.success)})
        if best is None or value < best[0]:
            best, rises = (value, c, w.copy()), 0
        else:
            rises += 1
            if rises == 1:
                break
    _, c, w = best
    return TaskFit(w[:-1], float(w[-1]), c, path)


def fit(
    train: inputs.Split,
    eval_split: inputs.Split,
    spec: inputs.InputSpec,
    memory_budget_gb: float,
    second_head: str = "cvr",
) -> dict:
    """{"design", "ctr", "cvr": TaskFit, "rows", "truncated"}: both tasks solved on the training split.
    The second task is CVR on the clicked rows, or with `second_head` "ctcvr" conversion over every
    row (the "impressions" loss convention's second head); it is stored under "cvr" either way."""
    # Each entry costs about 40 bytes across the entry arrays and the sparse matrices built from them.
    max_entries = int(memory_budget_gb * 1e9 / 40)
    matrices = {"train": _Matrix(train, spec, max_entries), "eval": _Matrix(eval_split, spec, max_entries)}
    if matrices["train"].truncated:
        _LOG.warning(
            "the linear reference is fitted on the first %d training rows: the rest exceed training.memory_budget_gb",
            matrices["train"].rows,
        )
    design = matrices["train"].design()
    train_m, eval_m = matrices["train"], matrices["eval"]
    x, x_eval = train_m.matrix(design), eval_m.matrix(design)
    clicked, clicked_eval = train_m.click == 1, eval_m.click == 1
    if second_head == "ctcvr":
        clicked, clicked_eval = np.ones_like(clicked), np.ones_like(clicked_eval)
    return {
        "design": design,
        "ctr": solve_task(x, train_m.click, x_eval, eval_m.click),
        "cvr": solve_task(
            x[clicked], train_m.conversion[clicked], x_eval[clicked_eval], eval_m.conversion[clicked_eval]
        ),
        "rows": train_m.rows,
        "truncated": train_m.truncated,
    }


def assign(linear, fitted: dict) -> None:
    """Writes both tasks' coefficients into a `LinearLogits` layer (`trainer.blocks`): the id weights
    by table row, the numerics' weights and the intercepts on their raw scale."""
    design = fitted["design"]
    ids = int(design.kept.max(initial=-1)) + 1
    table = np.zeros((design.table_rows, 2), np.float64)
    numeric = np.zeros((len(design.mean), 2), np.float64)
    bias = np.zeros(2, np.float64)
    has = design.kept >= 0
    for task, name in enumerate(("ctr", "cvr")):
        task_fit = fitted[name]
        table[has, task] = task_fit.coef[design.kept[has]]
        raw = task_fit.coef[ids:] / design.std
        numeric[:, task] = raw
        bias[task] = task_fit.intercept - float(raw @ design.mean)
    linear.weights_by_id.table.assign(table.astype("float32"))
    if linear.numeric_weights is not None:
        linear.numeric_weights.assign(numeric.astype("float32"))
    linear.bias.assign(bias.astype("float32"))


def solve(network, layer, train: inputs.Split, eval_split: inputs.Split, memory_budget_gb: float) -> dict:
    """Fits the network's tasks and writes them into `layer`, its `LinearLogits` (the `logistic`
    model's own, or another model's wide part), with the network's logit bias at zero (the layer
    holds the intercepts); returns what metrics.json records of the solve."""
    started = time.time()
    spec = inputs.InputSpec.from_dict(network.spec)
    fitted = fit(train, eval_split, spec, memory_budget_gb, network.second_head)
    assign(layer, fitted)
    network.logit_bias.assign(np.zeros(2, "float32"))
    summary = {
        "method": "L-BFGS, full batch, to convergence; C chosen on eval log loss",
        "columns": fitted["design"].columns,
        "rows_fitted": fitted["rows"],
        "min_count": MIN_COUNT,
        "C": {task: fitted[task].c for task in ("ctr", "cvr")},
        "path": {task: fitted[task].path for task in ("ctr", "cvr")},
        "seconds": time.time() - started,
    }
    _LOG.info(
        "linear model solved in %.1f s: %d columns, C %g (CTR) and %g (second task) chosen on eval",
        summary["seconds"],
        summary["columns"],
        summary["C"]["ctr"],
        summary["C"]["cvr"],
    )
    return summary
