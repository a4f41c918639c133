"""Synthetic data generators: deterministic for a seed, in the exact raw format, with the
documented label rates and properties."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest

from example_gen import formats
from common.metrics import roc_auc
from synth import aliccp, aliexpress, fdn, mmoe
from transform import features as F


@pytest.fixture(scope="module")
def clean_aliccp(tmp_path_factory):
    out = tmp_path_factory.mktemp("aliccp_clean")
    return out, aliccp.generate(aliccp.AliccpSynthConfig(rows=60_000, seed=3), str(out), progress=False)


def test_aliccp_same_seed_same_bytes(tmp_path, synthetic_raw):
    folder, manifest = synthetic_raw
    again = aliccp.generate(
        aliccp.AliccpSynthConfig(rows=5_000, seed=7, malformed_rate=0.01), str(tmp_path), progress=False
    )
    for name in aliccp.FILES["train"] + aliccp.FILES["test"] + ("synth.json",):
        assert filecmp.cmp(folder / name, tmp_path / name, shallow=False), name
    assert again == manifest


def test_aliccp_other_seed_other_data(tmp_path, synthetic_raw):
    folder, _ = synthetic_raw
    aliccp.generate(aliccp.AliccpSynthConfig(rows=5_000, seed=8, malformed_rate=0.01), str(tmp_path), progress=False)
    assert not filecmp.cmp(folder / "sample_skeleton_train.csv", tmp_path / "sample_skeleton_train.csv", shallow=False)


def test_aliccp_label_rates_and_bayes_aucs(clean_aliccp):
    _, manifest = clean_aliccp
    train = manifest["label_rates"]["train"]
    n = manifest["samples"]["train"]
    assert abs(train["ctr"] - 0.04) < 4 * (0.04 * 0.96 / n) ** 0.5
    clicks = train["ctr"] * n
    assert abs(train["cvr"] - 0.05) < 4 * (0.05 * 0.95 / clicks) ** 0.5
    for split in ("train", "test"):
        auc = manifest["bayes_auc"][split]
        assert 0.65 < auc["ctr"] < 0.95 and 0.6 < auc["cvr"] < 0.99 and auc["ctcvr"] > auc["ctr"] - 0.05


def test_aliccp_lines_are_valid_raw_ali_ccp(clean_aliccp):
    """Every line parses; user fields are in common_features, ad fields in the skeleton; each
    sample's cross 508 is present exactly when the item's category is among the user's 109_14."""
    folder, _ = clean_aliccp
    parser = formats.AliccpRawParser()
    behaviour = {}
    for line in (folder / "common_features_train.csv").read_text().splitlines():
        index = parser.common(line)
        entries = [e.split("\x02") for e in line.split(",")[2].split("\x01")]
        assert {f for f, _ in entries} <= {f.source for f in F.ALICCP_USER_FIELDS}
        behaviour[index] = {int(i.split("\x03")[0]) % 1_000_000 for f, i in entries if f == "109_14"}
    checked = 0
    for line in (folder / "sample_skeleton_train.csv").read_text().splitlines()[:5_000]:
        _, _, _, index = parser.skeleton(line)
        entries = {}
        for entry in line.split(",")[5].split("\x01"):
            field, rest = entry.split("\x02")
            entries.setdefault(field, []).append(int(rest.split("\x03")[0]) % 1_000_000)
        assert set(entries) <= {f.source for f in F.ALICCP_AD_FIELDS}
        category = entries["206"][0]
        assert ("508" in entries) == (category in behaviour[index])
        checked += "508" in entries
    assert checked > 500  # the match is common enough to be learnable


def _calibrated(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> None:
    """Labels drawn from the probabilities: in each decile of probability the positives' count is
    within 4.5 standard deviations of the probabilities' sum."""
    order = np.argsort(probabilities, kind="stable")
    for chunk in np.array_split(order, bins):
        expected, variance = probabilities[chunk].sum(), (probabilities[chunk] * (1 - probabilities[chunk])).sum()
        assert abs(labels[chunk].sum() - expected) <= 4.5 * np.sqrt(variance) + 1, (labels[chunk].sum(), expected)


def _skeleton_labels(path) -> tuple[np.ndarray, np.ndarray]:
    rows = [line.split(",", 3)[1:3] for line in path.read_text().splitlines()]
    return np.array([int(c) for c, _ in rows]), np.array([int(v) for _, v in rows])


@pytest.mark.parametrize("regime", sorted(aliccp.REGIMES))
def test_aliccp_regime_ceiling_is_the_auc_of_the_true_probabilities(tmp_path, regime):
    """The Bayes ceiling in synth.json is the AUC of the labels written to the files, scored by the
    probabilities they were drawn from; each regime has its documented rates and shape."""
    truth = {}
    manifest = aliccp.generate(aliccp.for_regime(regime, rows=40_000, seed=5), str(tmp_path), False, truth)
    assert manifest["config"]["regime"] == regime
    for split in ("train", "test"):
        click, conversion = _skeleton_labels(tmp_path / aliccp.FILES[split][0])
        p_ctr, p_cvr = truth[split]
        assert len(click) == len(p_ctr) == manifest["samples"][split]
        clicked = click == 1
        bayes = manifest["bayes_auc"][split]
        assert bayes["ctr"] == pytest.approx(roc_auc(click, p_ctr), abs=1e-12)
        assert bayes["cvr"] == pytest.approx(roc_auc(conversion[clicked], p_cvr[clicked]), abs=1e-12)
        assert bayes["ctcvr"] == pytest.approx(roc_auc(conversion, p_ctr * p_cvr), abs=1e-12)
        _calibrated(click, p_ctr)
        _calibrated(conversion[clicked], p_cvr[clicked])
    train, n = manifest["label_rates"]["train"], manifest["samples"]["train"]
    cvr = aliccp.REGIMES[regime].get("cvr", 0.05)
    assert abs(train["ctr"] - 0.04) < 4.5 * (0.04 * 0.96 / n) ** 0.5
    clicks = train["ctr"] * n
    assert abs(train["cvr"] - cvr) < 4.5 * (cvr * (1 - cvr) / clicks) ** 0.5 + 1 / clicks
    users = len((tmp_path / "common_features_train.csv").read_text().splitlines())
    rows_per_user = manifest["samples"]["train"] / users
    if regime == "cold-users":
        assert rows_per_user < 2.5
    else:
        assert rows_per_user > 8
    if regime == "latent":
        assert manifest["bayes_auc"]["test"]["ctr"] >= 0.95


def test_latent_regime_has_twenty_fields_of_one_id_split_by_side(tmp_path):
    aliccp.generate(aliccp.for_regime("latent", rows=2_000, seed=1), str(tmp_path), progress=False)
    parser = formats.AliccpRawParser()
    user_side = {f.source for f in F.ALICCP_USER_FIELDS}
    for line in (tmp_path / "common_features_train.csv").read_text().splitlines():
        parser.common(line)
        fields = [e.split("\x02")[0] for e in line.split(",")[2].split("\x01")]
        assert len(fields) == len(set(fields)) == 10 and set(fields) <= user_side
    for line in (tmp_path / "sample_skeleton_train.csv").read_text().splitlines()[:500]:
        parser.skeleton(line)
        fields = [e.split("\x02")[0] for e in line.split(",")[5].split("\x01")]
        assert len(fields) == len(set(fields)) == 10 and not set(fields) & user_side


def test_aliexpress_ceiling_layout_and_numerics(tmp_path):
    truth = {}
    config = aliexpress.AliexpressSynthConfig(rows=30_000, seed=4)
    manifest = aliexpress.generate(config, str(tmp_path), truth)
    for split, name in aliexpress.FILES.items():
        lines = (tmp_path / name).read_text().splitlines()
        parser = formats.detect_aliexpress(lines[0])
        table = np.array([line.split(",") for line in lines[1:]], dtype=np.float64)
        assert len(table) == manifest["samples"][split] == len(truth[split][0])
        for number, line in enumerate(lines[1:2_000]):
            parser.parse(line, str(number))  # raises on a malformed line
        click, conversion = table[:, -2].astype(int), table[:, -1].astype(int)
        numerical = table[:, 17:-2]
        assert numerical.shape[1] == 63 and numerical.min() >= 0 and numerical.max() <= 1
        assert (numerical == 0).mean() > 0.1  # zero-inflated columns, as in the real data
        p_ctr, p_cvr = truth[split]
        assert manifest["bayes_auc"][split]["ctr"] == pytest.approx(roc_auc(click, p_ctr), abs=1e-12)
        clicked = click == 1
        assert manifest["bayes_auc"][split]["cvr"] == pytest.approx(
            roc_auc(conversion[clicked], p_cvr[clicked]), abs=1e-12
        )
        _calibrated(click, p_ctr)
    # The numerics carry signal beyond a linear read: the true CTR logit is not linear in them.
    train = np.array([line.split(",") for line in (tmp_path / "train.csv").read_text().splitlines()[1:]], float)
    logit = np.log(truth["train"][0] / (1 - truth["train"][0]))
    design = np.column_stack([np.ones(len(train)), train[:, 17:-2]])
    residual = logit - design @ np.linalg.lstsq(design, logit, rcond=None)[0]
    assert residual.var() > 0.2 * logit.var()
    # Whole searches stay in one split.
    test_searches = set(np.loadtxt(tmp_path / "test.csv", delimiter=",", skiprows=1, usecols=0).astype(int))
    assert not test_searches & set(train[:, 0].astype(int))


def test_mmoe_label_correlation_follows_the_weights_cosine(tmp_path):
    correlations = []
    for p in (0.0, 0.5, 0.9, 1.0):
        manifest = mmoe.generate(mmoe.MmoeSynthConfig(correlation=p, rows=4_000, seed=1), str(tmp_path / str(p)))
        assert manifest["weights_cosine"] == pytest.approx(p, abs=1e-9)
        correlations.append(manifest["label_correlation"])
    assert correlations == sorted(correlations)
    assert abs(correlations[0]) < 0.1 and correlations[-1] > 0.95
    header = (tmp_path / "0.5" / "train.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["x_1", "x_2"] and header[-2:] == ["y1", "y2"] and len(header) == 102
    with pytest.raises(ValueError, match="correlation"):
        mmoe.make(mmoe.MmoeSynthConfig(correlation=1.5))


def test_fdn_datasets_share_samples_and_are_deterministic(tmp_path):
    config = fdn.FdnSynthConfig(rows=1_000, dimension=16, seed=2)
    manifest = fdn.generate(config, str(tmp_path / "a"))
    fdn.generate(config, str(tmp_path / "b"))
    for name in manifest["files"]:
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False)
    a = np.loadtxt(tmp_path / "a" / "dataset_a_train.csv", delimiter=",", skiprows=1)
    i = np.loadtxt(tmp_path / "a" / "dataset_i_train.csv", delimiter=",", skiprows=1)
    assert a.shape == (700, 17) and i.shape == (700, 18)
    np.testing.assert_allclose(a[:, -1], i[:, -2], rtol=1e-5)  # the same y1 for the same samples
    data = fdn.make(config)
    assert data["X"].shape == (1_000, 16) and np.isfinite(data["X"]).all()
    assert json.loads((tmp_path / "a" / "synth.json").read_text())["config"]["dimension"] == 16
