"""`fdn-table2`: its report (AUCs, parameters, the claims, the logistic gate) from given per-run
metrics, and one tiny grid trained end to end by the real Trainer on the session's Transform
output, whose parameter counts must be the trained networks' own."""

from __future__ import annotations

import dataclasses
import json

from experiments import base, cli, fdn_table2 as t2, grid, ranking, report

SEEDS = [0, 1, 2]
# model -> (AUC offset per seed, served parameters, embedding parameters)
MODELS = {
    "single_task": ([-0.010, -0.012, -0.011], 5000, 800),
    "mmoe": ([-0.004, -0.006, -0.003], 4000, 400),
    "cgc": ([-0.002, 0.001, -0.001], 4100, 400),
    "ple": ([-0.003, -0.005, -0.004], 4300, 400),
    "fdn": ([0.0, 0.0, 0.0], 3900, 400),
}


def _records(reference_auc: float = 0.60) -> list[grid.Record]:
    records = []
    for seed in SEEDS:
        for model, (offset, params, embedding) in MODELS.items():
            metrics = {f"{t}_auc": 0.70 + 0.01 * seed + offset[seed] for t in ranking.TASKS}
            metrics.update(params=params, params_embedding=embedding, test_rows=1000, test_clicks=100)
            metrics["test_conversions"] = 20
            records.append(grid.Record(grid.Cell(model, "none", seed=seed), {}, metrics, 1.0))
        reference = {f"{t}_auc": reference_auc for t in ranking.TASKS}
        records.append(grid.Record(grid.Cell(*ranking.REFERENCE, seed=seed), {}, reference, 1.0))
    return records


def _claims(text: str) -> list[str]:
    return [line for line in text[text.index("## Claims") :].splitlines() if line[:1].isdigit()]


def test_report_has_every_model_its_parameters_and_claims(tmp_path):
    t2.write_report(str(tmp_path), t2.SCALES["quick"], "quick", SEEDS, _records())
    text = (tmp_path / "report.md").read_text()
    assert "| model | CTR AUC | CVR AUC | CTCVR AUC | parameters (served) | without embeddings |" in text
    for model, (_, params, embedding) in MODELS.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {t2.MODELS[model]} |"))
        assert row.rstrip(" |").endswith(f"| {params} | {params - embedding}"), row
    assert f"| {ranking.REFERENCE_LABEL} |" in text
    claims = _claims(text)
    assert claims[0].startswith(f"1. **{report.REPRODUCED}**: FDN has a higher test CTR AUC")
    # FDN 3,500 without embeddings against MMoE 3,600, CGC 3,700, PLE 3,900: the same on every seed
    assert claims[2].startswith(f"3. **{report.REPRODUCED}**: FDN has fewer parameters")
    assert "FDN 3500 < MMoE 3600" in text


def test_models_below_the_logistic_reference_get_no_verdict(tmp_path):
    t2.write_report(str(tmp_path), t2.SCALES["quick"], "quick", SEEDS, _records(reference_auc=0.75))
    claims = _claims((tmp_path / "report.md").read_text())
    assert claims[0].startswith(f"1. **{report.UNDER_TRAINED}**") and claims[1].startswith(
        f"2. **{report.UNDER_TRAINED}**"
    )
    assert claims[2].startswith(f"3. **{report.REPRODUCED}**")  # parameters need no training


def test_it_is_a_ranking_experiment_at_the_paper_s_model_sizes():
    assert "fdn-table2" in cli.RANKING
    quick = t2.SCALES["quick"]
    assert (quick.num_experts, quick.specific_experts * 2 + quick.shared_experts, quick.levels) == (8, 8, 2)
    assert quick.pairs == 2 and quick.embedding_dim == 32 and tuple(quick.expert_units) == (128, 64)
    training = t2.cell_config(grid.Cell("fdn", "none"), quick)["trainer"]["training"]
    assert (training["monitor"], training["evals_per_epoch"], training["learning_rate"]) == ("logloss", 4, 1e-3)
    config = t2.cell_config(grid.Cell("ple", "none"), quick)["trainer"]
    assert config["model"]["shared_experts"] == 4 and config["model"]["specific_experts"] == 2


TINY = dataclasses.replace(
    t2.SCALES["quick"],
    seeds=1,
    embedding_dim=4,
    expert_units=(8,),
    tower_units=(4,),
    epochs=1,
    batch_size=512,
    patience=1,
    evals_per_epoch=1,
    xla=False,
)


def test_tiny_grid_trains_every_model_and_counts_the_trained_networks(tmp_path, transformed_synthetic, synthetic_raw):
    transformed, manifest = str(transformed_synthetic[0]), synthetic_raw[1]

    def given_data(settings, out, log):
        return ranking.Prepared(
            settings, out, log, transformed={0.0: transformed}, ceiling=manifest["bayes_auc"]["test"]
        )

    experiment = dataclasses.replace(t2.EXPERIMENT, prepare=given_data)
    out = tmp_path / "run"
    base.run(experiment, "tiny", None, str(out), log=lambda line: None, settings=TINY)
    for model in t2.MODELS:
        metrics = json.loads((out / "runs" / grid.Cell(model, "none").key / "metrics.json").read_text())
        assert 0.0 < metrics["ctr_auc"] < 1.0, model
        assert metrics["params"] == metrics["params_trained_network"] > metrics["params_embedding"] > 0, model
    reference = json.loads((out / "runs" / grid.Cell(*ranking.REFERENCE).key / "metrics.json").read_text())
    assert 0.0 < reference["ctr_auc"] < 1.0
    text = (out / "report.md").read_text()
    for label in [ranking.CEILING_LABEL, ranking.REFERENCE_LABEL] + list(t2.MODELS.values()):
        assert f"| {label} |" in text
