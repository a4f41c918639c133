"""The MMoE paper's synthetic two-task regression (Ma et al., KDD 2018, section 3.2).

u1, u2 are orthogonal unit vectors in R^d; w1 = c u1 and w2 = c (p u1 + sqrt(1 - p^2) u2), so
cos(w1, w2) = p; x ~ N(0, I_d); y_k = w_k^T x + sum_{i=1..m} sin(alpha_i w_k^T x + beta_i) + eps_k,
eps_k ~ N(0, 0.01). The sine terms make the tasks' relation non-linear, so the label correlation
is a monotone function of p but not p itself; synth.json reports the measured Pearson value.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np


@dataclasses.dataclass
class MmoeSynthConfig:
    correlation: float  # p = cos(w1, w2)
    rows: int = 10_000
    dimension: int = 100  # d
    sine_terms: int = 10  # m
    scale: float = 1.0  # c
    noise_std: float = 0.1  # eps ~ N(0, 0.01)
    test_fraction: float = 0.2
    seed: int = 0


def orthonormal_vectors(rng: np.random.Generator, dimension: int, count: int) -> np.ndarray:
    """`count` orthogonal unit vectors in R^dimension, as rows."""
    q, _ = np.linalg.qr(rng.standard_normal((dimension, count)))
    return q.T


def sine_regression(x, w, alpha, beta, noise_std, rng):
    """w^T x + sum_i sin(alpha_i w^T x + beta_i) + N(0, noise_std^2), per row of x."""
    projection = x @ w
    return projection + np.sin(np.outer(projection, alpha) + beta).sum(1) + rng.normal(0, noise_std, len(x))


def make(config: MmoeSynthConfig):
    """(x, y1, y2, w1, w2) for the config."""
    if not -1.0 <= config.correlation <= 1.0:
        raise ValueError(f"--correlation {config.correlation} must be in [-1, 1]")
    rng = np.random.default_rng(config.seed)
    u1, u2 = orthonormal_vectors(rng, config.dimension, 2)
    p = config.correlation
    w1 = config.scale * u1
    w2 = config.scale * (p * u1 + np.sqrt(1 - p * p) * u2)
    alpha = rng.standard_normal(config.sine_terms)
    beta = rng.standard_normal(config.sine_terms)
    x = rng.standard_normal((config.rows, config.dimension))
    y1 = sine_regression(x, w1, alpha, beta, config.noise_std, rng)
    y2 = sine_regression(x, w2, alpha, beta, config.noise_std, rng)
    return x, y1, y2, w1, w2


def write_table(path: str, columns: dict[str, np.ndarray]) -> None:
    """A CSV with a header, one column per named array (2-D arrays expand to name_1..name_k)."""
    names, blocks = [], []
    for name, values in columns.items():
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 1:
            names.append(name)
            blocks.append(values[:, None])
        else:
            names += [f"{name}_{i}" for i in range(1, values.shape[1] + 1)]
            blocks.append(values)
    np.savetxt(path, np.hstack(blocks), delimiter=",", header=",".join(names), comments="", fmt="%.6g")


def generate(config: MmoeSynthConfig, out_dir: str) -> dict:
    """Writes train.csv and test.csv (x_1..x_d, y1, y2) and synth.json into out_dir."""
    x, y1, y2, w1, w2 = make(config)
    os.makedirs(out_dir, exist_ok=True)
    n_test = int(round(config.rows * config.test_fraction))
    files = {"train.csv": slice(n_test, None), "test.csv": slice(0, n_test)}
    for name, rows in files.items():
        write_table(os.path.join(out_dir, name), {"x": x[rows], "y1": y1[rows], "y2": y2[rows]})
    manifest = {
        "generator": "mmoe",
        "config": dataclasses.asdict(config),
        "files": list(files),
        "weights_cosine": float(w1 @ w2 / (np.linalg.norm(w1) * np.linalg.norm(w2))),
        "label_correlation": float(np.corrcoef(y1, y2)[0, 1]),
    }
    with open(os.path.join(out_dir, "synth.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest
