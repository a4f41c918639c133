"""Synthetic AliExpress in MTReclib's CSV layout, with labels drawn from a known model.

Writes `train.csv` and `test.csv` (`search_id, categorical_1..16, numerical_1..63, click,
conversion`, with a header, as MTReclib's `AliExpress_XX/` folders hold them) and synth.json.

Rows come in searches of about `rows_per_search` impressions. The query side (categorical 1-8,
numerical 1-31) is constant within a search; the item side (categorical 9-16, numerical 32-63)
belongs to the item shown. Categorical ids follow Zipf-like frequencies. Numerical values lie in
[0, 1]: each is a squashed mix of its side's hidden factors and its own noise, and a third of them
are zero on about half the rows, as many of the real columns are.

Ground truth: logit_ctr = a + categorical effects + g_ctr(numerics) and logit_cvr = b +
0.6 * shared + own terms, where the numerical part has linear terms, bumps (sin), thresholds and
query x item products, so a linear model on the raw values sees only part of the signal. a and b
are solved for the target CTR and CVR; the Bayes-optimal AUCs (true probabilities as scores) are
written to synth.json.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pyarrow as pa
from pyarrow import csv

from common.metrics import roc_auc
from synth.aliccp import solve_offset, sigmoid, zipf_probs

CATEGORICAL, NUMERICAL = 16, 63
QUERY_CATEGORICAL, QUERY_NUMERICAL = 8, 31  # the first columns of each kind are the query side
CARDINALITIES = (3, 5, 10, 30, 100, 300, 1000, 3000, 2, 8, 20, 60, 200, 800, 2500, 8000)
FACTORS = 4  # hidden factors per side that the numerical columns mix
FILES = {"train": "train.csv", "test": "test.csv"}


@dataclasses.dataclass
class AliexpressSynthConfig:
    rows: int = 100_000
    seed: int = 0
    test_fraction: float = 0.2
    rows_per_search: float = 10.0
    ctr: float = 0.03
    cvr: float = 0.03  # conversions per click


class _Side:
    """One side (query or item): per entity, categorical ids and numerical values in [0, 1]."""

    def __init__(self, rng, n: int, cardinalities, numerical: int):
        self.categorical = np.stack(
            [rng.permutation(c)[rng.choice(c, n, p=zipf_probs(c, 1.0))] for c in cardinalities], 1
        )
        self.factors = rng.standard_normal((n, FACTORS))
        mix = rng.standard_normal((FACTORS, numerical)) / np.sqrt(FACTORS)
        raw = self.factors @ mix + 0.5 * rng.standard_normal((n, numerical)) + rng.normal(0, 0.5, numerical)
        values = sigmoid(1.5 * raw)
        sparse = rng.random(numerical) < 1 / 3
        values[:, sparse] *= rng.random((n, int(sparse.sum()))) < 0.5
        self.numerical = np.round(values, 6)


class _Truth:
    """The label model's parameters."""

    def __init__(self, rng):
        self.effects = [rng.normal(0, 0.3, c) for c in CARDINALITIES]
        self.cvr_effects = [rng.normal(0, 0.3, c) for c in CARDINALITIES]
        self.linear = rng.normal(0, 0.5, NUMERICAL) * (rng.random(NUMERICAL) < 0.4)
        self.cvr_linear = rng.normal(0, 0.5, NUMERICAL) * (rng.random(NUMERICAL) < 0.4)
        self.bumps = rng.choice(NUMERICAL, 6, replace=False)
        self.thresholds = rng.choice(NUMERICAL, 6, replace=False)
        self.products = rng.choice(QUERY_NUMERICAL, 6), QUERY_NUMERICAL + rng.choice(NUMERICAL - QUERY_NUMERICAL, 6)

    def logits(self, categorical, numerical):
        """(shared, ctr_only, cvr_only) logit parts per row."""
        ctr_fields, cvr_fields = (0, 2, 4, 6, 9, 11, 13, 15), (1, 3, 5, 7, 8, 10, 12, 14)
        ctr_only = sum(self.effects[k][categorical[:, k]] for k in ctr_fields)
        cvr_only = sum(self.cvr_effects[k][categorical[:, k]] for k in cvr_fields)
        query, item = self.products
        shared = (
            numerical @ self.linear
            + 0.5 * np.sin(2 * np.pi * numerical[:, self.bumps]).sum(1)
            + (numerical[:, query] * numerical[:, item]).sum(1)
        )
        ctr_only = ctr_only + 0.5 * (numerical[:, self.thresholds] > 0.7).sum(1)
        cvr_only = cvr_only + numerical @ self.cvr_linear
        return shared - shared.mean(), ctr_only, cvr_only


def generate(config: AliexpressSynthConfig, out_dir: str, truth: dict | None = None) -> dict:
    """Writes train.csv, test.csv and synth.json into out_dir; returns what synth.json holds.
    `truth`, when given, receives {split: (p_ctr, p_cvr)} per row, in file order."""
    if config.rows < 10:
        raise ValueError(f"--rows {config.rows} is too small: at least 10")
    rng = np.random.default_rng(config.seed)
    searches = max(2, int(config.rows / config.rows_per_search))
    query = _Side(rng, searches, CARDINALITIES[:QUERY_CATEGORICAL], QUERY_NUMERICAL)
    items = _Side(rng, max(100, config.rows // 10), CARDINALITIES[QUERY_CATEGORICAL:], NUMERICAL - QUERY_NUMERICAL)
    model = _Truth(rng)
    search_of_row = np.sort(rng.integers(0, searches, config.rows))
    item_of_row = rng.choice(len(items.numerical), config.rows, p=zipf_probs(len(items.numerical), 0.8))
    categorical = np.concatenate([query.categorical[search_of_row], items.categorical[item_of_row]], 1)
    numerical = np.concatenate([query.numerical[search_of_row], items.numerical[item_of_row]], 1)
    shared, ctr_only, cvr_only = model.logits(categorical, numerical)
    ctr_logit, cvr_logit = shared + ctr_only, 0.6 * shared + cvr_only
    # Whole searches go to one split, as MTReclib's files keep a search together.
    test_search = rng.random(searches) < config.test_fraction
    is_test = test_search[search_of_row]
    train = ~is_test
    a = solve_offset(config.ctr, lambda o: sigmoid(ctr_logit[train] + o).mean())
    p_click = sigmoid(ctr_logit[train] + a)
    b = solve_offset(config.cvr, lambda o: (p_click * sigmoid(cvr_logit[train] + o)).sum() / p_click.sum())
    p_ctr, p_cvr = sigmoid(ctr_logit + a), sigmoid(cvr_logit + b)
    click = (rng.random(config.rows) < p_ctr).astype(np.int64)
    conversion = click * (rng.random(config.rows) < p_cvr)
    manifest = {
        "generator": "aliexpress",
        "config": dataclasses.asdict(config),
        "samples": {},
        "label_rates": {},
        "bayes_auc": {},
        "files": {},
    }
    os.makedirs(out_dir, exist_ok=True)
    header = ",".join(
        ["search_id"]
        + [f"categorical_{i}" for i in range(1, CATEGORICAL + 1)]
        + [f"numerical_{i}" for i in range(1, NUMERICAL + 1)]
        + ["click", "conversion"]
    )
    for split, rows in (("train", train), ("test", is_test)):
        c, v = click[rows], conversion[rows]
        manifest["samples"][split] = int(rows.sum())
        manifest["label_rates"][split] = {
            "ctr": float(c.mean()),
            "cvr": float(v.sum() / max(c.sum(), 1)),
            "ctcvr": float(v.mean()),
        }
        manifest["bayes_auc"][split] = {
            "ctr": roc_auc(c, p_ctr[rows]),
            "cvr": roc_auc(v[c == 1], p_cvr[rows][c == 1]),
            "ctcvr": roc_auc(v, (p_ctr * p_cvr)[rows]),
        }
        if truth is not None:
            truth[split] = (p_ctr[rows], p_cvr[rows])
        columns = [search_of_row[rows], *categorical[rows].T, *numerical[rows].T, c, v]
        table = pa.table(columns, names=header.split(","))
        with open(os.path.join(out_dir, FILES[split]), "wb") as f:
            f.write(header.encode() + b"\n")
            csv.write_csv(table, f, csv.WriteOptions(include_header=False, quoting_style="none"))
        manifest["files"][FILES[split]] = int(rows.sum()) + 1
    with open(os.path.join(out_dir, "synth.json"), "w") as f:
        json.dump(manifest, f, indent=2, default=float)
    return manifest
