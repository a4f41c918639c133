"""What an experiment is, and running one into its output folder.

An experiment module builds an `Experiment`: its scales (`quick`, `full`: a frozen dataclass of
settings each), the grid of cells for a scale and seeds, how one cell runs, and the report.
`run` checks that OUT belongs to this experiment and scale, runs the grid (resuming), and
writes the report. OUT/experiment.json names the experiment, scale, seeds and settings;
OUT/timing.json holds the wall times (kept out of report.md so reruns give the same report): this
invocation's, and each cell's as recorded when it ran.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import typing
from typing import Callable

from experiments import grid, presets

SCALES = ("quick", "full")


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    summary: str  # one line, for --help
    scales: dict  # scale -> settings (a frozen dataclass with a `seeds` field: the default count)
    cells: Callable  # (settings, seeds: list[int]) -> list[grid.Cell]
    run_cell: Callable  # (cell, settings[, prepared]) -> {metric: number}
    cell_config: Callable  # (cell, settings) -> the JSON config the cell runs with
    write_report: Callable  # (out, settings, scale, seeds, records) -> None
    # Experiments on a data folder (--data): (settings, data folder or None) -> the settings with
    # the data bound, checked without reading it (DataError if unusable), so experiment.json and
    # every cell's config record which data they ran on. None: the experiment makes its own data.
    bind_data: Callable | None = None
    # (settings, out, log) -> what run_cell takes as its third argument: what every cell shares and
    # is costly to make (the data pipelines), made into OUT so a resumed run reuses it.
    # None: run_cell(cell, settings).
    prepare: Callable | None = None
    # `--preset paper`: (settings, scale) -> the paper's settings (experiments.presets); None: the experiment
    # goes beyond the papers and has only the project's.
    paper_preset: Callable | None = None


class DataError(ValueError):
    """A --data folder an experiment cannot use; the message names the folder and the problem."""


def settings_json(settings) -> dict:
    """Settings as JSON (`settings_from_dict` reads them back)."""
    return json.loads(json.dumps(dataclasses.asdict(settings)))


def _settings_dict(settings) -> dict:
    """Settings as JSON, without the seed count (a rerun with more seeds extends the same run)."""
    payload = settings_json(settings)
    payload.pop("seeds", None)
    return payload


def claim_folder(out: str, experiment: Experiment, scale: str, settings) -> None:
    """Writes OUT/experiment.json, or checks that the one there is this experiment's."""
    path = os.path.join(out, "experiment.json")
    identity = {"experiment": experiment.name, "scale": scale, "settings": _settings_dict(settings)}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        held = f"{out} holds the {saved.get('experiment')} experiment at scale {saved.get('scale')}"
        if (saved.get("experiment"), saved.get("scale")) != (experiment.name, scale):
            raise grid.GridError(f"{held}; use another --out")
        if saved.get("settings") != identity["settings"]:
            raise grid.GridError(f"{held} with other settings (changed since it ran); use another --out")
    os.makedirs(out, exist_ok=True)
    grid.write_json(path, identity)


def resolve(experiment: Experiment, scale: str, settings=None, data: str | None = None, preset: str | None = None):
    """The settings a run uses: the scale's (or `settings` given directly, e.g. by tests), with the
    preset applied (`paper` or `project`; default: `paper` at the full scale where the experiment
    has one, else `project`) and the --data folder bound (ignored by experiments that make their own)."""
    if settings is None:
        if scale not in experiment.scales:
            raise ValueError(f"unknown scale {scale!r}; known: {', '.join(experiment.scales)}")
        settings = experiment.scales[scale]
    if preset is None:
        preset = presets.default_preset(scale) if experiment.paper_preset else presets.PROJECT
    if preset not in presets.PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(presets.PRESETS)}")
    if preset == presets.PAPER:
        if experiment.paper_preset is None:
            raise DataError(f"{experiment.name} goes beyond the papers: it has no `paper` preset")
        settings = experiment.paper_preset(settings, scale)
    if experiment.bind_data is not None:
        settings = experiment.bind_data(settings, data)
    return settings


def settings_from_dict(settings_class, payload: dict):
    """Settings back from their JSON (`dataclasses.asdict`): nested settings rebuilt, lists as tuples."""
    hints = typing.get_type_hints(settings_class)
    values = {}
    for field in dataclasses.fields(settings_class):
        if field.name not in payload:
            continue
        value = payload[field.name]
        if dataclasses.is_dataclass(hints[field.name]):
            value = settings_from_dict(hints[field.name], value)
        elif isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    return settings_class(**values)


def seed_list(settings, seeds: int | None) -> list[int]:
    count = settings.seeds if seeds is None else seeds
    if count < 1:
        raise ValueError(f"--seeds must be at least 1, got {count}")
    return list(range(count))


def run(
    experiment: Experiment,
    scale: str,
    seeds: int | None,
    out: str,
    log=print,
    settings=None,
    data: str | None = None,
    preset: str | None = None,
) -> dict:
    """Runs `experiment` at `scale` over seeds 0..seeds-1 (default: the scale's), writing into
    `out`; `settings`, `data`, `preset`: as `resolve` takes them. Returns {"cells", "seconds"}."""
    settings = resolve(experiment, scale, settings, data, preset)
    seeds = seed_list(settings, seeds)
    claim_folder(out, experiment, scale, settings)
    began = time.perf_counter()
    cells = experiment.cells(settings, seeds)
    if experiment.prepare is None:
        run_cell = functools.partial(experiment.run_cell, settings=settings)
    else:
        run_cell = functools.partial(
            experiment.run_cell, settings=settings, prepared=experiment.prepare(settings, out, log)
        )
    records = grid.run_grid(
        cells,
        run_cell,
        lambda cell: {"experiment": experiment.name, "scale": scale, **experiment.cell_config(cell, settings)},
        out,
        log,
        title=experiment.name,
    )
    experiment.write_report(out, settings, scale, seeds, records)
    seconds = time.perf_counter() - began
    cell_seconds = {r.cell.key: r.seconds for r in records}
    # This invocation's wall time (a resumed run's covers only what it ran) and every cell's own.
    timing = {
        "wall_seconds_this_run": seconds,
        "cells": len(records),
        "cell_seconds_total": sum(cell_seconds.values()),
        "cell_seconds": cell_seconds,
    }
    grid.write_json(os.path.join(out, "timing.json"), timing)
    log(f"{experiment.name}: report in {os.path.join(out, 'report.md')} ({grid.format_duration(seconds)})")
    return {"cells": len(records), "seconds": seconds}
