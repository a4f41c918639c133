"""An experiment's grid as a Kubeflow pipeline: `mtrank compile --experiment NAME`.

    Prepare data -> ParallelFor(cell) { Cell } -> Report

The grid's cells are fixed when the pipeline is compiled (the experiment, scale, preset, seeds and
the resolved settings are baked in as constants, so the YAML says exactly what it runs). Each
iteration of the ParallelFor runs one cell in its own pod, so a cluster runs 10 seeds x every arm
at once; the report step gathers every cell's folder (`dsl.Collected`) and writes the same report
folder `mtrank experiment` writes. A cell's output is the cell folder of `experiments.grid`
(config.json, metrics.json, timing.json, and the ranking experiments' trainer.json).

Prepare data makes what every cell shares once: for the ranking experiments ExampleGen and one
Transform per noise level (`experiments.ranking.Prepared`); the synthetic experiments draw their
own data in each cell and prepare only the folder's experiment.json.

The component bodies import this module (KFP ships only each function's source) and run in the
project's image (`Dockerfile`); `gpu=True` asks each cell for one NVIDIA GPU, for an image built
with the `gpu` extra.
"""

# No `from __future__ import annotations`: KFP reads the components' annotations as types.
import json
import os
import shutil
from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from experiments import base, grid

PIPELINE_PREFIX = "mtrank-experiment-"


# --- what the components do -------------------------------------------------------------------


def _experiment(name: str) -> base.Experiment:
    import importlib

    from experiments import cli

    return importlib.import_module(cli.EXPERIMENTS[name][0]).EXPERIMENT


def _settings(experiment: base.Experiment, settings_json: str):
    settings_class = type(next(iter(experiment.scales.values())))
    return base.settings_from_dict(settings_class, json.loads(settings_json))


def _cells(experiment: base.Experiment, settings, seeds: int) -> list[grid.Cell]:
    return experiment.cells(settings, list(range(seeds)))


def prepare_data(name: str, scale: str, settings_json: str, seeds: int, folder: str, log=print) -> None:
    """Makes what the cells share into `folder` (its experiment.json, and OUT/data/ of the ranking
    experiments: every noise level's Transform, and the ceiling read)."""
    from experiments import ranking

    experiment = _experiment(name)
    settings = _settings(experiment, settings_json)
    base.claim_folder(folder, experiment, scale, settings)
    if experiment.prepare is None:
        return
    prepared = experiment.prepare(settings, folder, log)
    if isinstance(prepared, ranking.Prepared):
        noise_levels = sorted({cell.noise for cell in _cells(experiment, settings, seeds)})
        prepared.transform_all(noise_levels)
        for noise in noise_levels:
            prepared.transformed(noise)
        prepared.ceiling()


def run_cell(
    name: str, scale: str, settings_json: str, seeds: int, key: str, data: str, folder: str, log=print
) -> dict:
    """Runs the cell named `key` into `folder`/runs/`key`/, on the data `prepare_data` made in
    `data`; returns its metrics."""
    from experiments import ranking

    experiment = _experiment(name)
    settings = _settings(experiment, settings_json)
    cells = [cell for cell in _cells(experiment, settings, seeds) if cell.key == key]
    if not cells:
        raise ValueError(f"{name} has no cell {key!r} at these settings")
    if experiment.prepare is None:
        run = lambda cell: experiment.run_cell(cell, settings)  # noqa: E731
    else:
        noise = cells[0].noise
        transformed, ceiling = ranking.made(settings, data, noise)
        prepared = ranking.Prepared(settings, folder, log, transformed={noise: transformed}, ceiling=ceiling)
        run = lambda cell: experiment.run_cell(cell, settings, prepared=prepared)  # noqa: E731
    config_of = lambda cell: {"experiment": name, "scale": scale, **experiment.cell_config(cell, settings)}  # noqa: E731
    [record] = grid.run_grid(cells, run, config_of, folder, log, title=name)
    return record.metrics


def write_report(name: str, scale: str, settings_json: str, seeds: int, cell_folders: list, folder: str) -> None:
    """Gathers every cell's folder into `folder`/runs/ and writes the report there."""
    experiment = _experiment(name)
    settings = _settings(experiment, settings_json)
    base.claim_folder(folder, experiment, scale, settings)
    for cell_folder in cell_folders:
        shutil.copytree(os.path.join(cell_folder, "runs"), os.path.join(folder, "runs"), dirs_exist_ok=True)
    cells = _cells(experiment, settings, seeds)

    def missing(cell):
        raise grid.GridError(f"cell {cell.key} did not finish: no metrics.json among the gathered cells")

    config_of = lambda cell: {"experiment": name, "scale": scale, **experiment.cell_config(cell, settings)}  # noqa: E731
    records = grid.run_grid(cells, missing, config_of, folder, log=lambda line: None, title=name)
    experiment.write_report(folder, settings, scale, list(range(seeds)), records)


# --- the components: self-contained bodies calling the functions above ------------------------


def prepare_component(name: str, scale: str, settings_json: str, seeds: int, prepared: Output[Artifact]):
    from experiments import kubeflow

    kubeflow.prepare_data(name, scale, settings_json, seeds, prepared.path)


def cell_component(
    name: str, scale: str, settings_json: str, seeds: int, key: str, prepared: Input[Artifact], cell: Output[Artifact]
):
    from experiments import kubeflow

    kubeflow.run_cell(name, scale, settings_json, seeds, key, prepared.path, cell.path)


def report_component(
    name: str, scale: str, settings_json: str, seeds: int, cells: Input[List[Artifact]], report: Output[Artifact]
):
    from experiments import kubeflow

    kubeflow.write_report(name, scale, settings_json, seeds, [c.path for c in cells], report.path)


# --- the pipeline -------------------------------------------------------------------------------


def build(
    name: str,
    scale: str = "quick",
    preset: str | None = None,
    seeds: int | None = None,
    data: str | None = None,
    image: str | None = None,
    gpu: bool = False,
    settings=None,
):
    """The pipeline function of experiment `name`'s grid; `settings` (tests) replaces the scale's."""
    from pipeline import IMAGE

    experiment = _experiment(name)
    resolved = base.resolve(experiment, scale, settings, data, preset)
    seed_count = len(base.seed_list(resolved, seeds))
    settings_json = json.dumps(base.settings_json(resolved), sort_keys=True)
    keys = [cell.key for cell in _cells(experiment, resolved, seed_count)]
    steps = {
        f.__name__: dsl.component(f, base_image=image or IMAGE, install_kfp_package=False)
        for f in (prepare_component, cell_component, report_component)
    }
    constants = {"name": name, "scale": scale, "settings_json": settings_json, "seeds": seed_count}

    @dsl.pipeline(
        name=PIPELINE_PREFIX + name,
        description=f"{name}, scale {scale}, preset {resolved.preset}: {len(keys)} cells in parallel, then the report",
    )
    def experiment_grid() -> Artifact:
        prepare = steps["prepare_component"](**constants).set_display_name("Prepare data")
        prepare.set_cpu_request("2").set_memory_request("8G")
        with dsl.ParallelFor(keys) as key:
            cell = steps["cell_component"](**constants, key=key, prepared=prepare.outputs["prepared"])
            cell.set_display_name("Cell").set_cpu_request("2").set_memory_request("8G")
            if gpu:
                cell.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        report = steps["report_component"](**constants, cells=dsl.Collected(cell.outputs["cell"]))
        report.set_display_name("Report")
        for task in (prepare, cell, report):
            task.set_caching_options(False)
        return report.outputs["report"]

    return experiment_grid, len(keys)


def compile_pipeline(path: str, name: str, **options) -> int:
    """Writes the grid's pipeline (KFP v2 YAML) to `path`; returns its number of cells."""
    from kfp import compiler

    pipeline, cells = build(name, **options)
    compiler.Compiler().compile(pipeline, package_path=path)
    return cells


def run_local(name: str, out: str, **options) -> str:
    """The grid through KFP's local subprocess runner (each component a process of this
    environment), its report copied to `out`; returns `out`."""
    from pipeline import kubeflow

    kubeflow.init_local(os.path.abspath(os.path.join(out, "kfp")))
    pipeline, _ = build(name, **options)
    task = pipeline()
    shutil.copytree(task.output.path, out, dirs_exist_ok=True)
    return out
