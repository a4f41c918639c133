"""The experiments' framework: the t-test markers, the table layout, the claims, the grid runner
(records, resume after a kill, the same report from the same seeds) and the command's arguments.

The end-to-end grid trains the real zoo models on a few rows, with tf.functions run eagerly:
each cell would otherwise spend about a second tracing its training step. One test trains in
graph mode to check that the compiled step is deterministic too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments import base, cli, fdn_synthetic, grid, mtn_placement, negative_transfer, regression, report, stats

TINY = dataclasses.replace(
    fdn_synthetic.SCALES["quick"],
    seeds=2,
    rows=60,
    dimension=3,
    x_stds=(0.1,),
    epochs=1,
    patience=1,
    validation_fraction=0.25,
    batch_size=32,
    expert_units=(4,),
    tower_units=(2,),
    num_experts=2,
    specific_experts=1,
    shared_experts=1,
    levels=2,
    pairs=1,
)


# --- statistics and tables ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "differences, expected",
    [
        ([0.5, -0.4, 0.3, -0.2], ""),
        ([0.1, 0.3, 0.2, 0.4], "*"),
        ([1.0, 1.1, 0.9, 1.05], "**"),
    ],
)
def test_paired_t_test_and_its_markers_follow_scipy(differences, expected):
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = a + np.array(differences)
    p = scipy_stats.ttest_rel(a, b).pvalue
    assert stats.paired_p_value(a, b) == pytest.approx(p, rel=1e-12)
    assert stats.marker(stats.paired_p_value(a, b)) == expected
    assert stats.paired_p_value(b, a) == pytest.approx(p, rel=1e-12)  # two-sided


def test_markers_at_the_thresholds_and_undefined_tests():
    assert [stats.marker(p) for p in (0.05, 0.0499, 0.01, 0.0099, 0.0, math.nan)] == ["", "*", "*", "**", "**", ""]
    assert math.isnan(stats.paired_p_value([1.0, 2.0], [1.0, 2.0]))  # no differences
    assert math.isnan(stats.paired_p_value([1.0, 2.0], [1.5, 2.5]))  # constant difference: t divides by zero
    assert math.isnan(stats.paired_p_value([1.0], [2.0]))  # one pair
    a, b = stats.paired({0: 1.0, 1: 2.0, 3: 5.0}, {1: 2.5, 0: 1.5, 2: 9.0})  # seeds 0 and 1 only, in order
    assert a.tolist() == [1.0, 2.0] and b.tolist() == [1.5, 2.5]


def test_table_gives_mean_and_std_per_column_and_marks_rows_against_their_baseline():
    baseline = {0: 0.70, 1: 0.71, 2: 0.72}
    better = {0: 0.75, 1: 0.76, 2: 0.775}
    gaps = {s: 100 * (better[s] - baseline[s]) / baseline[s] for s in better}
    table = report.Table(
        (report.Column("AUC"), report.Column("gap", digits=1, suffix="%", signed=True, tested=False)),
        (report.Row("Base", {"AUC": baseline}), report.Row("Better", {"AUC": better, "gap": gaps}, baseline="Base")),
    )
    lines = report.render_table(table).splitlines()
    p = scipy_stats.ttest_rel(list(better.values()), list(baseline.values())).pvalue
    assert p < 0.01
    values, gap_values = np.array(list(better.values())), np.array(list(gaps.values()))
    assert lines == [
        "| model | AUC | gap |",
        "|---|---:|---:|",
        "| Base | 0.7100 ± 0.0100 | – |",
        f"| Better | {values.mean():.4f} ± {values.std(ddof=1):.4f}** | "
        f"{gap_values.mean():+.1f}% ± {gap_values.std(ddof=1):.1f}% |",
    ]
    assert stats.format_mean_std([2.0]) == "2.0000"  # one seed: no spread to give


def test_claim_verdicts_follow_the_numbers():
    def claim(better, worse):
        return report.Claim("paper", "A beats B", (report.Comparison("A", "B", better, worse),))

    seeds = range(5)
    clearly_lower = claim({s: 1.0 + 0.01 * s for s in seeds}, {s: 2.0 + 0.02 * s for s in seeds})
    assert clearly_lower.verdict == report.REPRODUCED
    assert claim({s: 2.0 + 0.01 * s for s in seeds}, {s: 1.0 for s in seeds}).verdict == report.NOT_REPRODUCED
    noisy = claim({0: 1.0, 1: 3.0, 2: 1.0}, {0: 2.0, 1: 2.0, 2: 2.0})  # lower on average, not significantly
    assert noisy.verdict == report.INCONCLUSIVE
    assert claim({}, {}).verdict == report.INCONCLUSIVE  # nothing measured: no verdict either way


def test_a_claim_is_judged_on_its_pooled_effect_not_on_its_worst_comparison():
    seeds = range(5)
    lift = {s: 0.01 + 0.001 * s for s in seeds}  # the paper's way, steadily
    base = {s: 0.70 for s in seeds}
    comparisons = [
        report.Comparison("A", "B", {s: base[s] + lift[s] for s in seeds}, base, higher_is_better=True)
        for _ in range(3)
    ]
    # one comparison goes the other way by a little, as one of nine does by chance under a small true effect
    comparisons.append(
        report.Comparison("A", "B", {s: 0.70 - 0.002 - 0.0005 * (s % 2) for s in seeds}, base, higher_is_better=True)
    )
    claim = report.Claim("paper", "A beats B", tuple(comparisons))
    assert not comparisons[-1].holds  # the old rule's "did not reproduce"
    effects = [(3 * lift[s] - 0.002 - 0.0005 * (s % 2)) / 4 for s in seeds]
    assert claim.seed_effects == pytest.approx(dict(zip(seeds, effects)))
    pooled = claim.pooled
    assert claim.verdict == report.REPRODUCED and pooled.p < 0.05 and pooled.mean == pytest.approx(np.mean(effects))
    se = np.std(effects, ddof=1) / np.sqrt(5)
    t_crit, t_power = scipy_stats.t.ppf(0.975, 4), scipy_stats.t.ppf(0.8, 4)
    assert pooled.ci_low == pytest.approx(np.mean(effects) - t_crit * se)
    assert pooled.mde == pytest.approx((t_crit + t_power) * se)
    text = report.render_claims([claim], "quick", 5)
    assert f"minimum detectable effect {pooled.mde:.4f}" in text and "the paper's effect is not recorded" in text


def test_a_claim_does_not_reproduce_when_its_interval_lies_below_the_paper_s_effect():
    seeds = range(5)
    tiny = {s: 0.7 + 0.0001 * (1 + s % 2) for s in seeds}  # the paper's way, far below the paper's effect
    base = {s: 0.7 for s in seeds}
    comparison = report.Comparison("A", "B", {s: tiny[s] + 0.00001 * s for s in seeds}, base, higher_is_better=True)
    small = report.Claim("paper", "A beats B", (comparison,), paper_effect=0.01)
    assert small.pooled.ci_high < 0.01 and small.verdict == report.NOT_REPRODUCED
    noisy = report.Comparison("A", "B", {0: 0.72, 1: 0.69, 2: 0.71}, {0: 0.70, 1: 0.70, 2: 0.70}, True)
    assert report.Claim("paper", "A beats B", (noisy,), paper_effect=0.01).verdict == report.INCONCLUSIVE
    assert "the paper's effect +0.0100" in report.Claim("paper", "x", (noisy,), paper_effect=0.01).describe_pooled()


def test_a_comparison_whose_baseline_arm_does_not_beat_the_reference_is_not_judged():
    seeds = range(4)
    better = {s: 0.66 + 0.01 * s for s in seeds}
    worse = {s: 0.60 + 0.005 * s for s in seeds}
    logistic = {s: 0.64 for s in seeds}
    gated = report.Comparison("MMoE + MTN", "MMoE", better, worse, True, reference_values=logistic)
    claim = report.Claim("paper", "MTN helps", (gated,))
    assert gated.trained is False and claim.verdict == report.UNDER_TRAINED
    assert "under-trained: MMoE does not beat logistic (0.6400)" in report.render_claims([claim], "quick", 4)
    trained = dataclasses.replace(gated, reference_values={s: 0.55 for s in seeds})
    assert trained.trained is True and report.Claim("paper", "MTN helps", (trained,)).verdict == report.REPRODUCED


def _record(variant: str, seed: int, metrics: dict, setting=(("x_std", 0.1),)) -> grid.Record:
    regularizer = "aux_orth" if variant == "fdn" else "none"
    return grid.Record(grid.Cell(variant, regularizer, seed=seed, setting=setting), {}, metrics, 1.0)


def _claims_section(path) -> list[str]:
    text = path.read_text()
    return [line for line in text[text.index("## Claims") :].splitlines() if line[:1].isdigit()]


def test_fdn_synthetic_report_says_did_not_reproduce_when_the_numbers_say_so(tmp_path):
    seeds = [0, 1, 2]
    mse = {"mmoe": 1.20, "cgc": 1.10, "ple": 1.15, "fdn": 1.50}  # FDN worst of the multi-task models
    spread = {"oracle_a": 1, "oracle_b": 1, "mmoe": 2, "cgc": 3, "ple": 4, "fdn": 5}  # differences vary by seed
    records = []
    for seed in seeds:
        records += [
            _record("oracle_a", seed, {"mse_1": 1.0 + 0.01 * seed}),
            _record("oracle_b", seed, {"mse_2": 1.0 + 0.01 * seed}),
        ]
        records += [
            _record(v, seed, {"mse_1": m + 0.01 * seed * spread[v], "mse_2": m + 0.01 * seed * spread[v]})
            for v, m in mse.items()
        ]
    fdn_synthetic.write_report(str(tmp_path), TINY, "quick", seeds, records)
    claims = _claims_section(tmp_path / "report.md")
    assert "1. **" in claims[0] and "FDN paper, Table 1 (x std 0.1)" in (tmp_path / "report.md").read_text()
    assert claims[0].startswith(f"1. **{report.REPRODUCED}**: Trained on Dataset-I")  # every baseline above the oracle
    assert claims[1].startswith(f"2. **{report.NOT_REPRODUCED}**: FDN has the lowest task-1")
    assert claims[2].startswith(f"3. **{report.NOT_REPRODUCED}**: FDN has the lowest task-2")
    text = (tmp_path / "report.md").read_text()
    assert "   - FDN 1.5500 > MMoE 1.2200, +27.0%, p = 0.003 over 3 seeds" in text
    assert "| FDN (Dataset-I) | 1.5500 ± 0.0500** | +53.4% ± 3.4% | 1.5500 ± 0.0500** |" in text
    assert (tmp_path / "figures" / "gap_to_oracle_xstd0.1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_negative_transfer_report_says_did_not_reproduce_when_the_numbers_say_so(tmp_path):
    settings = dataclasses.replace(negative_transfer.SCALES["quick"], correlations=(1.0, 0.0))
    loss = {("shared_bottom", 1.0): 1.5, ("shared_bottom", 0.0): 1.0}  # shared-bottom better at low correlation
    records = [
        _record(
            model,
            seed,
            {
                "mse_1": loss.get((model, p), 1.2) + 0.01 * seed * (i + 1),
                "mse_2": loss.get((model, p), 1.2) - 0.02 * seed * (i + 1),
            },
            setting=(("correlation", p),),
        )
        for seed in (0, 1, 2)
        for p in (1.0, 0.0)
        for i, model in enumerate(negative_transfer.MODELS)
    ]
    negative_transfer.write_report(str(tmp_path), settings, "quick", [0, 1, 2], records)
    claims = _claims_section(tmp_path / "report.md")
    assert claims[0].startswith(f"1. **{report.NOT_REPRODUCED}**: Shared-bottom's loss")
    text = (tmp_path / "report.md").read_text()
    assert "| model | ρ = 1 | ρ = 0 |" in text
    assert "- Shared-bottom: negative transfer at ρ = 1; positive transfer at ρ = 0." in text
    assert (tmp_path / "figures" / "loss_vs_correlation.png").exists()


# --- the grid runner ---------------------------------------------------------------------------


def test_grid_records_each_cell_skips_finished_ones_and_refuses_another_config(tmp_path):
    cells = grid.make_cells([("a", "none"), ("b", "mtn")], seeds=[0, 1], settings=[(("correlation", 0.5),)])
    assert [c.key for c in cells[:2]] == [
        "a__none__noise0__correlation0.5__seed0",
        "b__mtn__noise0__correlation0.5__seed0",
    ]
    lines, ran = [], []

    def run_cell(cell):
        ran.append(cell.key)
        return {"loss": float(cell.seed)}

    records = grid.run_grid(cells, run_cell, lambda cell: {"lr": 0.1}, str(tmp_path), lines.append)
    assert ran == [c.key for c in cells] and [r.metrics for r in records] == [{"loss": 0.0}] * 2 + [{"loss": 1.0}] * 2
    folder = tmp_path / "runs" / cells[0].key
    assert json.loads((folder / "config.json").read_text()) == {"cell": cells[0].as_dict(), "seed": 0, "lr": 0.1}
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "metrics.json", "timing.json"]
    assert lines[1].startswith("[1/4] a correlation=0.5 seed=0: ") and "ETA" in lines[1]

    ran.clear()
    again = grid.run_grid(cells, run_cell, lambda cell: {"lr": 0.1}, str(tmp_path), lines.append)
    assert ran == [] and [r.metrics for r in again] == [r.metrics for r in records]
    with pytest.raises(grid.GridError, match="another configuration"):
        grid.run_grid(cells, run_cell, lambda cell: {"lr": 0.2}, str(tmp_path), lines.append)


def test_tiny_grid_writes_the_report_resumes_after_a_kill_and_reruns_identically(tmp_path, eager_functions):
    experiment = fdn_synthetic.EXPERIMENT
    keys = [c.key for c in experiment.cells(TINY, [0, 1])]
    ran = []

    def killed_after_five(cell, settings):
        if len(ran) == 5:
            raise KeyboardInterrupt  # the kill, in the middle of the sixth cell
        ran.append(cell.key)
        return fdn_synthetic.run_cell(cell, settings)

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        base.run(
            dataclasses.replace(experiment, run_cell=killed_after_five),
            "tiny",
            None,
            str(resumed),
            log=lambda line: None,
            settings=TINY,
        )
    assert (resumed / "runs" / keys[5] / "config.json").exists()
    assert not (resumed / "runs" / keys[5] / "metrics.json").exists()

    ran.clear()
    lines = []

    def counted(cell, settings):
        ran.append(cell.key)
        return fdn_synthetic.run_cell(cell, settings)

    base.run(
        dataclasses.replace(experiment, run_cell=counted), "tiny", None, str(resumed), log=lines.append, settings=TINY
    )
    assert ran == keys[5:]
    assert sum("finished before, skipped" in line for line in lines) == 5

    fresh = tmp_path / "fresh"
    base.run(experiment, "tiny", None, str(fresh), log=lambda line: None, settings=TINY)
    for name in ("report.md", "metrics.csv", "figures/gap_to_oracle_xstd0.1.png"):
        assert (resumed / name).read_bytes() == (fresh / name).read_bytes(), name
    rows = (fresh / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("cell,variant,regularizer,noise,x_std,seed,") and len(rows) == 1 + len(keys)
    report_text = (fresh / "report.md").read_text()
    figure = "![gap to the oracle per model and task, x std 0.1](figures/gap_to_oracle_xstd0.1.png)"
    for heading in ("## Table 1, x std 0.1", "## Claims", figure):
        assert heading in report_text
    for label in ("Oracle", "MMoE (Dataset-I)", "CGC (Dataset-I)", "PLE (Dataset-I)", "FDN (Dataset-I)"):
        assert f"| {label}" in report_text

    def must_not_run(cell, settings):
        raise AssertionError(f"{cell.key} ran again")

    base.run(
        dataclasses.replace(experiment, run_cell=must_not_run),
        "tiny",
        None,
        str(fresh),
        log=lambda line: None,
        settings=TINY,
    )
    assert (fresh / "report.md").read_text() == report_text
    with pytest.raises(grid.GridError, match="other settings"):
        base.run(experiment, "tiny", None, str(fresh), settings=dataclasses.replace(TINY, epochs=2))


def test_compiled_training_is_deterministic_for_a_seed():
    train, test = fdn_synthetic.datasets(TINY, 0.1, "dataset_i")

    def metrics(seed):
        config = regression.trainer_config("fdn", seed, TINY)
        return regression.train(config, (0, 1), train, test)

    first = metrics(0)
    assert set(first) >= {"mse_1", "mse_2", "label_var_1", "train_aux", "train_orth", "params"}
    assert metrics(0) == first


def test_one_data_draw_per_spread_and_seeds_vary_only_the_models():
    settings = dataclasses.replace(TINY, x_stds=(0.1, 1.0))
    cells = fdn_synthetic.cells(settings, [0, 1])
    data = {(c.get("x_std"), c.seed): fdn_synthetic.cell_config(c, settings)["data"] for c in cells}
    assert data[(0.1, 0)] == data[(0.1, 1)] and data[(1.0, 0)] == data[(1.0, 1)]
    assert data[(0.1, 0)]["task_input_std"] == 0.1 and data[(1.0, 0)]["task_input_std"] == 1.0
    narrow, _ = fdn_synthetic.datasets(settings, 0.1, "dataset_i")
    wide, _ = fdn_synthetic.datasets(settings, 1.0, "dataset_i")
    # the two tasks' labels share less at the authors' spread: more task-specific signal
    assert np.corrcoef(wide.y.T)[0, 1] < np.corrcoef(narrow.y.T)[0, 1]


def test_early_stopping_on_validation_keeps_the_best_epoch(eager_functions):
    settings = dataclasses.replace(TINY, rows=400, learning_rate=0.05, expert_units=(16,))
    train, test = fdn_synthetic.datasets(settings, 1.0, "dataset_i")
    train, validation = regression.split_validation(train, 0.25)
    assert (len(train.x), len(validation.x)) == (210, 70)
    config = regression.trainer_config("mmoe", 0, dataclasses.replace(settings, epochs=60), patience=3)
    network, fitted = regression.fit(config, (0, 1), train, validation)
    assert fitted["epochs_done"] < 60 and fitted["epochs_done"] - fitted["best_epoch"] == 3
    scored = regression.evaluate(network, config, (0, 1), validation)
    assert scored["mse_1"] + scored["mse_2"] == pytest.approx(fitted["val_mse"], rel=1e-5)  # the best weights, restored
    with pytest.raises(ValueError, match="leaves no rows"):
        regression.split_validation(train, 0.0)


# --- the command -------------------------------------------------------------------------------


def test_command_arguments_and_bad_input(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["negative-transfer", "--scale", "full", "--seeds", "4", "--out", "o", "--data", "d"])
    assert (args.name, args.scale, args.seeds, args.out, args.data) == ("negative-transfer", "full", 4, "o", "d")
    assert args.func is cli.command
    assert "ignore" in parser.format_help()
    assert cli.main_experiment("no-such-experiment", "quick", 1, str(tmp_path)) == 2
    assert "unknown experiment 'no-such-experiment'" in capsys.readouterr().err

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "experiment.json").write_text(json.dumps({"experiment": "negative-transfer", "scale": "quick"}))
    assert cli.main_experiment("fdn-synthetic", "quick", 1, str(taken)) == 2
    assert "holds the negative-transfer experiment" in capsys.readouterr().err


def test_the_paper_preset_sets_what_the_papers_state_and_is_the_full_scale_default(tmp_path):
    from experiments import fdn_ablation, mtn, presets, ranking

    fdn = presets.fdn_paper(fdn_synthetic.SCALES["quick"])
    config = regression.trainer_config("fdn", 0, fdn)
    assert (config.model.pairs, config.fdn.aux_weight, config.fdn.orth_weight) == (2, 1.0, 1.0)
    assert config.fdn.aux_reduction == "sum" and config.fdn.orth_normalized is False
    project = regression.trainer_config("fdn", 0, fdn_synthetic.SCALES["quick"])
    assert project.fdn.aux_reduction == "mean" and project.fdn.orth_normalized and project.model.pairs == 4
    ablation = presets.fdn_paper(fdn_ablation.SCALES["quick"])
    overrides = fdn_ablation.overrides("fdn", "full", ablation)
    assert overrides["model"]["pairs"] == 2 and overrides["fdn"]["aux_reduction"] == "sum"

    paper = presets.mtn_paper(mtn.SCALES["quick"])
    trainer = ranking.trainer_config("mmoe", 0, paper, mtn.MTN)
    assert trainer["mtn"]["subsets"] == "all" and trainer["mtn"]["alpha_floor"] == 0.0
    assert trainer["model"]["embedding_dim"] == 128 and tuple(trainer["model"]["expert_units"]) == (512, 256)
    assert tuple(trainer["model"]["tower_units"]) == (128, 64) and trainer["training"]["patience"] == 3
    assert paper.data.eval_fraction == 0.2 and paper.seeds == 10 and paper.preset == "paper"
    assert paper.lams == (1e-6, 1e-5, 1e-4) and (paper.monitor, paper.evals_per_epoch) == ("ctcvr_auc", 1)
    # conversion over all impressions for MMoE and Shared-bottom, ESMM its own loss, logistic apart
    conventions = {m: ranking.trainer_config(m, 0, paper)["loss"]["convention"] for m in ranking.MODELS}
    assert conventions == {"mmoe": "impressions", "esmm": "esmm", "shared_bottom": "impressions"}
    assert ranking.trainer_config("logistic", 0, paper)["loss"]["convention"] == "clicked"
    assert ranking.trainer_config("mmoe", 0, mtn.SCALES["quick"])["loss"]["convention"] == "esmm"
    # judged on the paper's two tasks: CVR on clicked rows is then a ratio of two heads trained apart
    assert ranking.claim_tasks(paper) == ("ctr", "ctcvr") and ranking.claim_tasks(mtn.SCALES["quick"]) == ranking.TASKS
    judged = mtn.claims({}, (), ranking.claim_tasks(paper))[0]
    assert [c.better for c in judged.comparisons] == ["MMoE + MTN CTR", "MMoE + MTN CTCVR"]
    assert "MTReclib's loss" in ranking.loss_note(paper)
    assert "`esmm` loss" in ranking.loss_note(mtn.SCALES["quick"])
    # an experiment's own quick-scale changes apply over the paper preset, at the quick scale only
    placement = base.resolve(mtn_placement.EXPERIMENT, "quick", preset="paper")
    assert (placement.data.rows, placement.data.eval_fraction, placement.seeds) == (100_000, 0.2, 2)
    assert base.resolve(mtn_placement.EXPERIMENT, "full", preset="paper").data.rows == 1_000_000
    quick = presets.mtn_paper(mtn.SCALES["quick"], "quick")
    assert quick.seeds == 2 and quick.expert_units == mtn.SCALES["quick"].expert_units and quick.lams == paper.lams
    assert "conversion trained on its label over all impressions" in report.settings_table(paper)
    assert "Preset `project`" in report.settings_table(mtn.SCALES["quick"])
    assert "2 decomposition pairs per task" in report.settings_table(ablation)

    assert presets.default_preset("full") == "paper" and presets.default_preset("quick") == "project"
    with pytest.raises(base.DataError, match="negative-transfer goes beyond the papers"):
        base.run(negative_transfer.EXPERIMENT, "quick", 1, str(tmp_path / "nt"), preset="paper")
    with pytest.raises(ValueError, match="unknown preset 'exact'"):
        base.run(negative_transfer.EXPERIMENT, "quick", 1, str(tmp_path / "nt"), preset="exact")
