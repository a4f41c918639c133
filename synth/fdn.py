"""The FDN paper's synthetic two-task regression (FDN appendix; constants it leaves open follow
the authors' public generator and are named in FdnSynthConfig and the README).

Unit vectors u1, u2, us in R^d; per sample x1 ~ N(-1, s), x2 ~ N(1, s), xs ~ N(0, 1) in R^d
(s = task_input_std). Labels, with one shared set of sine parameters alpha, beta (m terms):
    y_k = ws.xs + wk.xk + sum_j sin(alpha_j ws.xs + beta_j) + sum_j sin(alpha_j wk.xk + beta_j) + eps
with w = c u and eps ~ N(0, label_noise_std^2). Features, element-wise with delta, gamma ~ N(0, 1)
and a per-sample offset e ~ N(0, feature_noise_std^2) (eq. 9-11):
    X_1i = g(u1_i x1_i + us_i xs_i),  X_2i = g(u2_i x2_i + us_i xs_i),
    X_i  = g(u1_i x1_i + u2_i x2_i + us_i xs_i),   g(a) = sin(delta_i a + gamma_i) + cos(delta_i a + gamma_i) + e
Dataset-A is (X_1, y1) and Dataset-B is (X_2, y2): each sees only its own task's inputs, the
oracles' setting. Dataset-I is (X, y1, y2): one feature set mixing both tasks.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from synth.mmoe import write_table


@dataclasses.dataclass
class FdnSynthConfig:
    rows: int = 10_000
    dimension: int = 100  # d; the authors' generator uses 512
    sine_terms: int = 10  # m
    scale: float = 1.0  # c
    task_input_std: float = 0.1  # the paper's N(+-1, 0.1); the authors' code draws with std 1
    feature_noise_std: float = 1.0
    label_noise_std: float = 0.01
    test_fraction: float = 0.3
    seed: int = 0


def _unit(rng, d):
    u = rng.standard_normal(d)
    return u / np.linalg.norm(u)


def make(config: FdnSynthConfig) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(config.seed)
    d, n = config.dimension, config.rows
    u1, u2, us = _unit(rng, d), _unit(rng, d), _unit(rng, d)
    alpha, beta = rng.standard_normal(config.sine_terms), rng.standard_normal(config.sine_terms)
    delta, gamma = rng.standard_normal(d), rng.standard_normal(d)
    x1 = rng.normal(-1.0, config.task_input_std, (n, d))
    x2 = rng.normal(1.0, config.task_input_std, (n, d))
    xs = rng.normal(0.0, 1.0, (n, d))
    offset = rng.normal(0.0, config.feature_noise_std, (n, 1))

    def sines(projection):
        return np.sin(np.outer(projection, alpha) + beta).sum(1)

    shared = config.scale * xs @ us
    labels = {}
    for name, u, x in (("y1", u1, x1), ("y2", u2, x2)):
        own = config.scale * x @ u
        labels[name] = shared + own + sines(shared) + sines(own) + rng.normal(0, config.label_noise_std, n)

    def g(argument):
        return np.sin(delta * argument + gamma) + np.cos(delta * argument + gamma) + offset

    return {
        "X_1": g(u1 * x1 + us * xs),
        "X_2": g(u2 * x2 + us * xs),
        "X": g(u1 * x1 + u2 * x2 + us * xs),
        **labels,
    }


DATASETS = {"dataset_a": ("X_1", ("y1",)), "dataset_b": ("X_2", ("y2",)), "dataset_i": ("X", ("y1", "y2"))}


def generate(config: FdnSynthConfig, out_dir: str) -> dict:
    """Writes dataset_{a,b,i}_{train,test}.csv (x_1..x_d, labels) and synth.json; the three
    datasets share their samples and their train/test split."""
    data = make(config)
    os.makedirs(out_dir, exist_ok=True)
    n_test = int(round(config.rows * config.test_fraction))
    files = []
    for dataset, (features, labels) in DATASETS.items():
        for split, rows in (("train", slice(n_test, None)), ("test", slice(0, n_test))):
            name = f"{dataset}_{split}.csv"
            write_table(os.path.join(out_dir, name), {"x": data[features][rows], **{y: data[y][rows] for y in labels}})
            files.append(name)
    manifest = {
        "generator": "fdn",
        "config": dataclasses.asdict(config),
        "files": files,
        "label_correlation": float(np.corrcoef(data["y1"], data["y2"])[0, 1]),
    }
    with open(os.path.join(out_dir, "synth.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest
