"""An experiment's grid as a Kubeflow pipeline (`experiments.kubeflow`, `mtrank compile --experiment`):
the compiled YAML's ParallelFor over the cells, and a tiny grid run by KFP's local runner, each
cell in its own process, to the same report an in-process run writes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from experiments import base, fdn_synthetic, kubeflow, mtn, presets, ranking
from mtrank import cli
from tests.test_experiments import TINY


def _loop_items(path) -> list:
    """The ParallelFor's items in a compiled pipeline."""
    spec = yaml.safe_load(path.read_text())
    [loop] = [task for task in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in task]
    return json.loads(loop["parameterIterator"]["items"]["raw"])


def test_the_compiled_grid_runs_every_cell_of_the_paper_preset_in_a_parallel_for(tmp_path, capsys):
    out = tmp_path / "mtn.yaml"
    argv = ["compile", "--experiment", "mtn", "--preset", "paper", "--seeds", "2", "--gpu", "--output", str(out)]
    assert cli.main(argv) == 0
    settings = base.resolve(mtn.EXPERIMENT, "quick", preset="paper")
    keys = [cell.key for cell in mtn.cells(settings, [0, 1])]
    assert _loop_items(out) == keys and len(keys) == 2 * (3 * 3 + 3 + 1)  # lambda chosen on validation: 3 runs an arm
    text = out.read_text()
    assert "nvidia.com/gpu" in text and "mtrank-experiment-mtn" in text
    prepare = yaml.safe_load(text)["root"]["dag"]["tasks"]["prepare-component"]
    baked = json.loads(prepare["inputs"]["parameters"]["settings_json"]["runtimeValue"]["constant"])
    assert baked["preset"] == presets.PAPER and baked["lams"] == [1e-6, 1e-5, 1e-4]
    assert "26 cells in a ParallelFor, one GPU each" in capsys.readouterr().out

    assert cli.main(["compile", "--experiment", "nope", "--output", str(out)]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert cli.main(["compile", "--seeds", "2", "--output", str(out)]) == 2
    assert "go with --experiment" in capsys.readouterr().err


def test_a_tiny_grid_on_the_local_kfp_runner_writes_the_report_an_in_process_run_writes(tmp_path):
    settings = dataclasses.replace(TINY, seeds=1)
    local = tmp_path / "in-process"
    base.run(fdn_synthetic.EXPERIMENT, "quick", None, str(local), log=lambda line: None, settings=settings)
    on_kfp = kubeflow.run_local("fdn-synthetic", str(tmp_path / "kfp-report"), settings=settings)
    for name in ("report.md", "metrics.csv"):
        assert (tmp_path / "kfp-report" / name).read_bytes() == (local / name).read_bytes(), name
    assert on_kfp == str(tmp_path / "kfp-report")


def test_the_report_step_names_a_cell_that_did_not_finish(tmp_path):
    settings = dataclasses.replace(TINY, seeds=1)
    settings_json = json.dumps(base.settings_json(settings))
    with pytest.raises(Exception, match="did not finish"):
        kubeflow.write_report("fdn-synthetic", "quick", settings_json, 1, [], str(tmp_path / "report"))


def test_a_ranking_cell_runs_on_the_data_the_prepare_step_made_wherever_it_is_mounted(
    tmp_path, transformed_synthetic, synthetic_raw
):
    """What a Cell pod does: reads the Transform and the ceiling from the prepare step's folder (at
    another path than where they were made), trains its one cell into its own folder."""
    import shutil

    from tests.test_experiments_ranking import TINY as RANKING_TINY

    mounted = tmp_path / "prepared" / "data"
    shutil.copytree(transformed_synthetic[0], mounted / "transformed-noise0")
    (mounted / "transformed-noise0" / "done.json").write_text("{}")
    (mounted / "raw").mkdir()
    (mounted / "raw" / "synth.json").write_text(json.dumps(synthetic_raw[1]))
    settings = dataclasses.replace(RANKING_TINY, seeds=1)
    settings_json = json.dumps(base.settings_json(settings))
    key = mtn.cells(settings, [0])[1].key  # MMoE with MTN
    prepared, cell = str(tmp_path / "prepared"), str(tmp_path / "cell")
    metrics = kubeflow.run_cell("mtn", "quick", settings_json, 1, key, prepared, cell)
    assert 0.0 < metrics["ctr_auc"] < 1.0 and metrics["train_mtn_loss"] > 0
    assert metrics["bayes_ctr_auc"] == synthetic_raw[1]["bayes_auc"]["test"]["ctr"]
    saved = json.loads((tmp_path / "cell" / "runs" / key / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    with pytest.raises(base.DataError, match="no finished Transform at noise 0.05"):
        ranking.made(settings, prepared, 0.05)
