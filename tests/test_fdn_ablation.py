"""`fdn-ablation`: its report (Table 3, the loss terms, Table 2's parameters, the claims) from given
per-run metrics; that each arm's Trainer config changes only what the arm is named after; and one
tiny grid trained end to end by the real Trainer, whose parameter counts must be the built
models' own.

No Beam pipeline starts here: the end-to-end test hands the experiment the `transformed_synthetic`
fixture's finished Transform output, as tests/test_experiments_ranking.py does.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from experiments import base, cli, fdn_ablation as fa, grid, ranking, report, stats

SEEDS = [0, 1, 2]
CEILING = {"ctr": 0.80, "cvr": 0.75, "ctcvr": 0.85}
# arm -> AUC change against full FDN per seed: no_aux clearly lower everywhere, no_orth mixed,
# no_shared higher on CVR.
CHANGE = {
    "full": [0.0, 0.0, 0.0],
    "no_aux": [-0.010, -0.012, -0.011],
    "no_orth": [0.006, -0.004, 0.002],
    "no_shared": [0.008, 0.010, 0.009],
}
PARAMS = {
    "mmoe": 1000,
    "cgc": 1100,
    "ple": 1300,
    "fdn_full": 1500,
    "fdn_no_aux": 1500,
    "fdn_no_orth": 1500,
    "fdn_no_shared": 900,
}


def _records() -> list[grid.Record]:
    records = []
    for seed in SEEDS:
        for arm in fa.ARMS:
            metrics = {
                f"{t}_auc": 0.70 + 0.01 * seed + 0.001 * i + CHANGE[arm][seed] for i, t in enumerate(ranking.TASKS)
            }
            metrics.update(
                {f"bayes_{t}_auc": v for t, v in CEILING.items()},
                train_task_loss=0.6 + 0.01 * seed,
                test_rows=1000,
                test_clicks=100,
                test_conversions=20,
            )
            if arm != "no_aux":
                metrics["train_aux_loss"] = 0.07
            if arm in ("full", "no_aux"):
                metrics["train_orth_loss"] = 0.003
            if arm == "full":
                for key, count in PARAMS.items():
                    metrics.update(
                        {
                            f"params_{key}": count,
                            f"params_{key}_embedding": 400,
                            f"params_{key}_regularizer_only": 24
                            if key in ("fdn_full", "fdn_no_orth", "fdn_no_shared")
                            else 0,
                        }
                    )
            records.append(grid.Record(grid.Cell("fdn", arm, seed=seed), {}, metrics, 1.0))
    return records


def _row(text: str, label: str, after: str = "") -> list[str]:
    """The cells of the first table row labelled `label` after the heading `after`."""
    line = next(line for line in text[text.index(after) :].splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_has_table_3_loss_terms_parameter_table_marks_and_claims(tmp_path):
    records = _records()
    fa.write_report(str(tmp_path), fa.SCALES["quick"], "quick", SEEDS, records)
    text = (tmp_path / "report.md").read_text()

    assert "## Table 3: test AUC" in text and "| variant | CTR AUC | CVR AUC | CTCVR AUC |" in text
    assert _row(text, ranking.CEILING_LABEL)[1:] == ["0.8000 ± 0.0000", "0.7500 ± 0.0000", "0.8500 ± 0.0000"]
    values = ranking.values(records, lambda cell: cell.regularizer)
    for arm in fa.ARMS:
        cells = _row(text, fa.label(arm), "## Table 3")
        for column, task in zip(cells[1:], ranking.TASKS):
            own = values[arm][f"{task}_auc"]
            expected = stats.format_mean_std([own[s] for s in SEEDS])
            if arm != "full":
                expected += stats.marker(stats.paired_p_value(*stats.paired(own, values["full"][f"{task}_auc"])))
            assert column == expected, (arm, task)
    assert _row(text, "FDN without L_aux", "## Table 3")[1].endswith("**")  # a steady drop
    assert not _row(text, "FDN without L_orth", "## Table 3")[1].endswith("*")  # a mixed one

    # The loss terms: each ablation lacks what it is named after.
    assert "| variant | task losses | L_aux (weighted) | L_orth (weighted) |" in text
    assert _row(text, "FDN without L_aux", "## The loss terms")[2] == "–"
    assert _row(text, "FDN without L_orth", "## The loss terms")[3] == "–"
    assert _row(text, "FDN without shared features", "## The loss terms")[3] == "–"

    assert "| model | parameters (served) | of which embedding tables | trained, not served |" in text
    labels = {**fa.BASELINES, **{f"fdn_{arm}": fa.label(arm) for arm in fa.ARMS}}
    for key, count in PARAMS.items():
        row = _row(text, labels[key], "## Table 2")
        assert row[1:3] == [str(count), "400"], key  # one number: the same on every seed

    claims = [line for line in text[text.index("## Claims") :].splitlines() if line[:1].isdigit()]
    assert len(claims) == 3
    assert claims[0].startswith(f"1. **{report.REPRODUCED}**: Removing the auxiliary heads")
    # mixed, the wrong way on average, not significantly
    assert claims[1].startswith(f"2. **{report.INCONCLUSIVE}**: Removing the orthogonality loss")
    # steadily the wrong way
    assert claims[2].startswith(f"3. **{report.NOT_REPRODUCED}**: Removing the shared features")
    assert "FDN CVR 0.7110 < FDN without shared features CVR 0.7200" in text
    assert (tmp_path / "figures" / "ablation_delta.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_arm_changes_only_what_it_is_named_after():
    settings = fa.SCALES["quick"]
    configs = {arm: fa.cell_config(grid.Cell("fdn", arm), settings)["trainer"] for arm in fa.ARMS}
    full = configs["full"]
    assert full["model"]["name"] == "fdn" and full["model"]["pairs"] == settings.pairs
    assert full["fdn"]["aux"] and full["fdn"]["orth"] and full["model"]["shared_features"] and full["mtn"] is None
    changed = {"no_aux": ("fdn", "aux"), "no_orth": ("fdn", "orth"), "no_shared": ("model", "shared_features")}
    for arm, (section, key) in changed.items():
        expected = {**full, section: {**full[section], key: False}}
        assert configs[arm] == expected, arm
    assert "fdn-ablation" in cli.EXPERIMENTS and "fdn-ablation" not in cli.SYNTHETIC  # it takes --data


# --- one tiny grid, trained ------------------------------------------------------------------------

TINY = fa.Settings(
    seeds=1,
    embedding_dim=4,
    expert_units=(8, 4),
    tower_units=(4,),
    num_experts=3,
    specific_experts=1,
    shared_experts=2,
    levels=2,
    pairs=2,
    epochs=1,
    batch_size=512,
    patience=1,
)


def _input_spec(transformed: str) -> dict:
    """The input spec the Trainer derives from the training split, derived here the same way."""
    import tensorflow_transform as tft

    from trainer import inputs
    from transform.preprocessing import categorical_cardinalities

    tft_output = tft.TFTransformOutput(os.path.join(transformed, "transform_graph"))
    training = fa.ranking.trainer_config("fdn", 0, TINY)["training"]
    split = inputs.load(
        [os.path.join(transformed, "transformed", "train", "*.tfrecord.gz")],
        tft_output.transformed_feature_spec(),
        None,
        categorical_cardinalities(tft_output),
        training["max_bag_length"],
        training["memory_budget_gb"],
        "train",
    )
    return split.spec.to_dict()


def test_tiny_grid_trains_each_arm_and_counts_the_built_models(tmp_path, transformed_synthetic, synthetic_raw):
    from trainer import models
    from trainer.training_model import dummy_batch
    from trainer.inputs import InputSpec

    transformed, manifest = str(transformed_synthetic[0]), synthetic_raw[1]

    def given_data(settings, out, log):
        return ranking.Prepared(
            settings, out, log, transformed={0.0: transformed}, ceiling=manifest["bayes_auc"]["test"]
        )

    experiment = dataclasses.replace(fa.EXPERIMENT, prepare=given_data)
    out = tmp_path / "run"
    base.run(experiment, "tiny", None, str(out), log=lambda line: None, settings=TINY)
    metrics = {
        arm: json.loads((out / "runs" / grid.Cell("fdn", arm).key / "metrics.json").read_text()) for arm in fa.ARMS
    }
    for arm, m in metrics.items():
        assert 0.0 < m["ctr_auc"] < 1.0 and m["train_task_loss"] > 0, arm
    # The loss terms the Trainer ran with: each ablation lacks the one it is named after.
    assert metrics["full"]["train_aux_loss"] > 0 and metrics["full"]["train_orth_loss"] > 0
    assert "train_aux_loss" not in metrics["no_aux"] and metrics["no_aux"]["train_orth_loss"] > 0
    assert "train_orth_loss" not in metrics["no_orth"] and metrics["no_orth"]["train_aux_loss"] > 0
    assert "train_orth_loss" not in metrics["no_shared"] and metrics["no_shared"]["train_aux_loss"] > 0

    # Every count is the built network's own, on the spec the Trainer used.
    spec = _input_spec(transformed)
    counts = metrics["full"]
    built = {}
    for key, model, arm in [(n, n, None) for n in fa.BASELINES] + [(f"fdn_{a}", "fdn", a) for a in fa.ARMS]:
        config = fa.ranking.trainer_config(model, 0, TINY, None, fa.overrides(model, arm, TINY))
        network = models.build(spec, config["model"])
        network(dummy_batch(InputSpec.from_dict(spec)))
        built[key] = network
        assert counts[f"params_{key}"] == network.count_params(), key
        assert counts[f"params_{key}_embedding"] == network.embed.count_params() > 0, key
    assert built["fdn_no_shared"].pairs.shared is None and built["fdn_full"].pairs.shared is not None
    assert counts["params_fdn_no_shared"] < counts["params_fdn_full"] == counts["params_fdn_no_aux"]
    # The aux heads (one logit per task-specific expert: k * M * (units + 1)) are trained, never served.
    assert counts["params_fdn_full_regularizer_only"] == 2 * TINY.pairs * (TINY.expert_units[-1] + 1)
    assert counts["params_fdn_no_aux_regularizer_only"] == counts["params_mmoe_regularizer_only"] == 0
    for arm in fa.ARMS:  # the trained networks have the counts of the freshly built ones
        assert metrics[arm]["params_trained_network"] == counts[f"params_fdn_{arm}"], arm

    text = (out / "report.md").read_text()
    for label in [ranking.CEILING_LABEL] + [fa.label(arm) for arm in fa.ARMS] + list(fa.BASELINES.values()):
        assert f"| {label} |" in text
    assert _row(text, "PLE", "## Table 2")[1] == str(counts["params_ple"])
    with pytest.raises(grid.GridError, match="other settings"):
        base.run(experiment, "tiny", None, str(out), settings=dataclasses.replace(TINY, pairs=3))
