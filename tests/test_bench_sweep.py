"""bench/sweep.py's config merging and variant parsing (no training)."""

import argparse
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "bench"))
import sweep  # noqa: E402


def test_a_variant_merges_over_the_base_section_by_section_and_takes_the_seed():
    base = {"model": {"name": "ple", "levels": 2}, "training": {"seed": 7, "epochs": 3}}
    config = sweep.merged(base, {"model": {"expert_units": [64]}, "mtn": {}}, seed=2)
    assert config == {
        "model": {"name": "ple", "levels": 2, "expert_units": [64]},
        "training": {"seed": 2, "epochs": 3},
        "mtn": {},
    }
    assert base["training"]["seed"] == 7 and "expert_units" not in base["model"]


def test_the_eval_sum_is_the_three_served_scores_log_losses():
    run = {"eval": {"ctr_logloss": 0.1, "cvr_logloss": 0.2, "ctcvr_logloss": 0.03, "ctr_auc": 0.7}}
    assert sweep.eval_sum(run) == pytest.approx(0.33)


@pytest.mark.parametrize(
    "text, problem",
    [("e64", "LABEL=JSON"), ("e64={", "not JSON"), ("e64=[64]", "a JSON object"), ("=1", "LABEL=JSON")],
)
def test_a_bad_variant_is_a_clear_usage_error(text, problem):
    with pytest.raises(argparse.ArgumentTypeError, match=problem):
        sweep._variant(text)
