"""The converged linear reference (`trainer.linear`) against scikit-learn's exact fit of the same
columns, and the `Logistic` network it writes into."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from common.metrics import log_loss
from trainer import inputs, linear, models
from trainer.inputs import BAG, CATEGORICAL, NUMERIC, InputField, InputSpec
from tests.test_models import _model_config

SPEC = InputSpec(
    (
        InputField("f101", CATEGORICAL, 40),
        InputField("f205", CATEGORICAL, 12),
        InputField("f109_14", BAG, 9, bag_length=3, weighted=True),
        InputField("numerical_1", NUMERIC),
        InputField("numerical_2", NUMERIC),
    )
)


def _split(rows: int, seed: int) -> inputs.Split:
    """Rows whose labels follow a known linear model of the ids, the bag and the numerics; id 39 of
    f101 appears once at most (below MIN_COUNT)."""
    rng = np.random.default_rng(seed)
    f101 = rng.integers(0, 39, rows)
    f101[0] = 39
    f205 = rng.integers(0, 12, rows)
    bag = rng.integers(0, 9, (rows, 3))
    weights = rng.random((rows, 3)) * (rng.random((rows, 3)) < 0.7)
    numerical = np.stack([rng.normal(5.0, 3.0, rows), rng.random(rows)], 1)
    truth = np.linspace(-1, 1, 40)[f101] + np.linspace(1, -1, 12)[f205] + (np.linspace(-1, 1, 9)[bag] * weights).sum(1)
    logit = -1.0 + truth + 0.3 * numerical[:, 0] - 2.0 * numerical[:, 1]
    click = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype("float32")
    conversion = click * (rng.random(rows) < 1 / (1 + np.exp(-(0.5 - truth)))).astype("float32")
    features = {
        "f101": f101.astype("int32"),
        "f205": f205.astype("int32"),
        "f109_14": np.where(weights != 0, bag, 0).astype("int32"),
        "f109_14_weight": weights.astype("float32"),
        "numerical_1": numerical[:, 0].astype("float32"),
        "numerical_2": numerical[:, 1].astype("float32"),
    }
    return inputs.Split(SPEC, [], {}, features, {"click": click, "conversion": conversion})


def _columns(split: inputs.Split, kept_rows: dict, mean: np.ndarray, std: np.ndarray) -> sp.csr_matrix:
    """The one-hot design written out by hand: a column per kept (field, index), then the
    standardised numerics."""
    f = split.features
    n = split.rows
    blocks = []
    for key in ("f101", "f205"):
        block = np.zeros((n, len(kept_rows[key])))
        for column, index in enumerate(kept_rows[key]):
            block[:, column] = f[key] == index
        blocks.append(block)
    block = np.zeros((n, len(kept_rows["f109_14"])))
    for column, index in enumerate(kept_rows["f109_14"]):
        block[:, column] = ((f["f109_14"] == index) * f["f109_14_weight"]).sum(1)
    blocks.append(block)
    numeric = np.stack([f["numerical_1"], f["numerical_2"]], 1).astype(np.float64)
    blocks.append((numeric - mean) / std)
    return sp.csr_matrix(np.concatenate(blocks, 1))


def test_the_solve_matches_scikit_learn_and_the_network_scores_it():
    train, evaluation = _split(3_000, 0), _split(1_000, 1)
    fitted = linear.fit(train, evaluation, SPEC, memory_budget_gb=1.0)
    design = fitted["design"]
    # MIN_COUNT: f101's index 39, read once, has no column; every other index read twice or more has one.
    assert design.kept[39] == -1 and (design.kept[:39] >= 0).all()
    f = train.features
    kept_rows = {
        "f101": [i for i in range(40) if (f["f101"] == i).sum() >= 2],
        "f205": [i for i in range(12) if (f["f205"] == i).sum() >= 2],
        "f109_14": [i for i in range(9) if ((f["f109_14"] == i) & (f["f109_14_weight"] != 0)).sum() >= 2],
    }
    numeric = np.stack([f["numerical_1"], f["numerical_2"]], 1).astype(np.float64)
    x = _columns(train, kept_rows, numeric.mean(0), numeric.std(0))
    x_eval = _columns(evaluation, kept_rows, numeric.mean(0), numeric.std(0))
    clicked = train.labels["click"] == 1
    for task, rows, labels in (
        ("ctr", slice(None), train.labels["click"]),
        ("cvr", clicked, train.labels["conversion"][clicked]),
    ):
        ours = fitted[task]
        # C is the grid's value of the lowest eval log loss along the path.
        assert ours.c == min(ours.path, key=lambda p: p["eval_logloss"])["C"]
        reference = LogisticRegression(C=ours.c, solver="lbfgs", tol=1e-10, max_iter=10_000).fit(x[rows], labels)
        np.testing.assert_allclose(ours.coef, reference.coef_[0], atol=2e-3)
        assert ours.intercept == pytest.approx(reference.intercept_[0], abs=2e-3)
        ours_p = 1 / (1 + np.exp(-(x_eval @ ours.coef + ours.intercept)))
        np.testing.assert_allclose(ours_p, reference.predict_proba(x_eval)[:, 1], atol=1e-4)
    assert fitted["ctr"].path[0]["C"] == linear.C_GRID[0] and len(fitted["ctr"].path) >= 2

    network = models.build(SPEC.to_dict(), _model_config("logistic"))
    network(evaluation.features)
    linear.assign(network.linear, fitted)
    scores = {k: keras.ops.convert_to_numpy(v) for k, v in network(evaluation.features).items()}
    expected_ctr = 1 / (1 + np.exp(-(x_eval @ fitted["ctr"].coef + fitted["ctr"].intercept)))
    expected_cvr = 1 / (1 + np.exp(-(x_eval @ fitted["cvr"].coef + fitted["cvr"].intercept)))
    np.testing.assert_allclose(scores["ctr"], expected_ctr, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(scores["cvr"], expected_cvr, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(scores["ctcvr"], expected_ctr * expected_cvr, rtol=5e-4, atol=1e-7)


def test_the_fit_recovers_a_known_model_better_than_its_prior():
    train, evaluation = _split(20_000, 2), _split(5_000, 3)
    fitted = linear.fit(train, evaluation, SPEC, memory_budget_gb=1.0)
    best = min(p["eval_logloss"] for p in fitted["ctr"].path)
    rate = train.labels["click"].mean()
    assert best < log_loss(evaluation.labels["click"], np.full(evaluation.rows, rate)) - 0.05
    # Numerics back on their raw scale: the true model's 0.3 and -2.0 per unit.
    network = models.build(SPEC.to_dict(), _model_config("logistic"))
    network(evaluation.features)
    linear.assign(network.linear, fitted)
    numeric = network.linear.numeric_weights.numpy()[:, 0]
    assert numeric[0] == pytest.approx(0.3, abs=0.08) and numeric[1] == pytest.approx(-2.0, abs=0.4)
