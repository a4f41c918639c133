"""`fdn-tsne`: FDN's expert-feature accessor, the separation measures, and a tiny end-to-end run
(report, figure, the same bytes from the same seed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from experiments import base, fdn_tsne, regression, report
from trainer import config as C, models

TINY = dataclasses.replace(
    fdn_tsne.SCALES["quick"],
    seeds=2,
    rows=80,
    dimension=3,
    epochs=1,
    batch_size=32,
    expert_units=(5, 4),
    pairs=2,
    samples=8,
)


def _fdn(dimension=3, pairs=2, units=(5, 4)):
    spec = regression.numeric_spec(dimension)
    network = models.build(
        spec.to_dict(), dataclasses.asdict(C.ModelConfig(name="fdn", embedding_dim=2, expert_units=units, pairs=pairs))
    )
    network(regression.as_features(np.zeros((2, dimension), np.float32), spec))
    return network


def test_expert_features_are_each_pairs_expert_outputs_and_what_forward_reads():
    network = _fdn()
    rng = np.random.default_rng(0)
    for layer in (network.pairs.specific, network.pairs.shared):  # non-zero biases, so their layout is tested too
        for bias in layer.bias_vars:
            bias.assign(rng.normal(size=bias.shape).astype(np.float32))
    x = rng.normal(size=(7, 3)).astype(np.float32)
    specific, shared = fdn_tsne.expert_features(network, x)
    assert specific.shape == shared.shape == (7, 2, 2, 4)

    def by_hand(layer, expert):
        # Numeric-only inputs reach the experts as they are; each expert is a ReLU MLP.
        h = x
        for kernel, bias in zip(layer.kernel_vars, layer.bias_vars):
            h = np.maximum(h @ np.asarray(kernel)[expert] + np.asarray(bias)[expert], 0.0)
        return h

    for task in range(2):
        for pair in range(2):
            expert = task * 2 + pair
            np.testing.assert_allclose(
                specific[:, task, pair], by_hand(network.pairs.specific, expert), rtol=1e-5, atol=1e-6
            )
            np.testing.assert_allclose(
                shared[:, task, pair], by_hand(network.pairs.shared, expert), rtol=1e-5, atol=1e-6
            )
    _, extras = network.forward(regression.as_features(x, regression.numeric_spec(3)))
    np.testing.assert_array_equal(np.asarray(extras["specific"]), specific.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(extras["shared"]), shared.astype(np.float32))


def test_points_kinds_cosine_and_zero_vectors():
    specific = np.zeros((2, 2, 1, 3))
    shared = np.zeros((2, 2, 1, 3))
    specific[:, :, 0, 0] = 1.0  # specific features on unit 0
    shared[:, 0, 0, 1] = 2.0  # task 1's shared expert on unit 1: orthogonal to its specific one
    shared[0, 1, 0] = [1.0, 0.0, 1.0]  # task 2's, row 0: cosine 1/sqrt(2); row 1: all zero
    measured = fdn_tsne.cosine_and_zeros(specific, shared)
    assert measured["cosine"] == pytest.approx((0 + 0 + 2**-0.5) / 3)
    assert (measured["zero_specific_pct"], measured["zero_shared_pct"]) == (0.0, 25.0)
    x, kinds, experts = fdn_tsne.points(specific, shared)
    assert x.shape == (8, 3)
    assert kinds.tolist() == [0, 1, 0, 1, 2, 2, 2, 2] and experts.tolist() == [0, 1, 0, 1, 2, 3, 2, 3]
    np.testing.assert_array_equal(x[5], shared[0, 1, 0])


def test_tiny_run_writes_table_claims_and_figure_and_reruns_identically(tmp_path, eager_functions):
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        base.run(fdn_tsne.EXPERIMENT, "tiny", None, str(out), log=lambda line: None, settings=TINY)
    for name in ("report.md", "metrics.csv", "figures/tsne.png"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    text = (first / "report.md").read_text()
    assert "| FDN without L_orth |" in text and "| FDN |" in text
    assert "![t-SNE of the specific and shared features, with and without L_orth](figures/tsne.png)" in text
    claims = [line for line in text[text.index("## Claims") :].splitlines() if line[:1].isdigit()]
    assert len(claims) == 2
    assert all(
        any(f"**{verdict}**" in claim for verdict in (report.REPRODUCED, report.INCONCLUSIVE, report.NOT_REPRODUCED))
        for claim in claims
    )
    rows = (first / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4
    header = rows[0].split(",")
    for metric in (
        "silhouette_features",
        "silhouette_tsne",
        "silhouette_experts",
        "silhouette_features_nonzero",
        "cosine",
        "mse_1",
        "train_orth",
    ):
        assert metric in header
    # The arm without L_orth trains no orthogonality term.
    without = [r for r in rows[1:] if ",aux," in r]
    assert len(without) == 2 and all(r.split(",")[header.index("train_orth")] == "" for r in without)
    saved = np.load(first / "runs" / fdn_tsne.cells(TINY, [0])[0].key / "tsne.npz")
    assert saved["points"].shape == (TINY.samples * 2 * 2 * TINY.pairs, 2)
