"""The grid runner: every cell of (model variant x regulariser x noise level x setting x seed)
run once, recorded, and skipped when run already.

A cell's folder `OUT/runs/<cell key>/` holds
    config.json    the cell (its seed included) and the full config it ran with, written first
    metrics.json   its metrics, written last and atomically: its presence means "finished"
    timing.json    its wall time in seconds (apart, so metrics.json is the same on every rerun)
so a killed experiment resumes at the first unfinished cell. A finished cell whose config.json
differs from what the cell would run now (another scale, changed code defaults) is an error,
never silently mixed into a table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable

SECONDS_PER_MINUTE = 60


class GridError(Exception):
    """An output folder that holds runs of another configuration."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run. `setting`: the experiment's own axes as ((name, value), ...), e.g.
    (("correlation", 0.5),)."""

    variant: str
    regularizer: str = "none"
    noise: float = 0.0
    seed: int = 0
    setting: tuple = ()

    @property
    def key(self) -> str:
        """The folder name: `mmoe__none__noise0__correlation0.5__seed1`."""
        axes = [f"noise{_number(self.noise)}"] + [f"{name}{_number(value)}" for name, value in self.setting]
        return "__".join([self.variant, self.regularizer] + axes + [f"seed{self.seed}"])

    def get(self, name: str):
        return dict(self.setting)[name]

    def as_dict(self) -> dict:
        return {
            "variant": self.variant,
            "regularizer": self.regularizer,
            "noise": self.noise,
            **dict(self.setting),
            "seed": self.seed,
        }

    @property
    def label(self) -> str:
        """For progress lines: `mmoe correlation=0.5 seed=1` (default axes left out)."""
        parts = [self.variant] + ([self.regularizer] if self.regularizer != "none" else [])
        parts += [f"noise={_number(self.noise)}"] if self.noise else []
        parts += [f"{name}={_number(value)}" for name, value in self.setting] + [f"seed={self.seed}"]
        return " ".join(parts)


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def make_cells(arms, seeds, noise_levels=(0.0,), settings=((),)) -> list[Cell]:
    """The grid: arms ((variant, regulariser) pairs; not every regulariser fits every model) x
    noise levels x settings x seeds. Seeds are the outer loop, so an interrupted run has whole
    seeds to compare."""
    return [
        Cell(variant, regularizer, float(noise), int(seed), tuple(setting))
        for seed in seeds
        for setting in settings
        for noise in noise_levels
        for variant, regularizer in arms
    ]


@dataclasses.dataclass(frozen=True)
class Record:
    cell: Cell
    config: dict
    metrics: dict
    seconds: float


def write_json(path: str, payload) -> None:
    """Atomic: a kill leaves the old file or the new one, never half of one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _normalised(payload) -> object:
    """As it reads back from JSON (tuples become lists), for comparing with a saved config."""
    return json.loads(json.dumps(payload, sort_keys=True))


def format_duration(seconds: float) -> str:
    if seconds < SECONDS_PER_MINUTE:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), SECONDS_PER_MINUTE)
    return f"{minutes} min {rest:02d} s"


def _finished(folder: str, config: dict) -> tuple | None:
    """(config, metrics, seconds) of a cell finished before with this config; None when it has not."""
    if not os.path.exists(os.path.join(folder, "metrics.json")):
        return None
    saved = _read_json(os.path.join(folder, "config.json"))
    if saved != _normalised(config):
        raise GridError(
            f"{folder} holds a finished run of another configuration; use another output folder or delete that one"
        )
    timing = os.path.join(folder, "timing.json")
    seconds = _read_json(timing)["seconds"] if os.path.exists(timing) else math.nan
    return saved, _read_json(os.path.join(folder, "metrics.json")), seconds


def run_grid(
    cells: list[Cell],
    run_cell: Callable[[Cell], dict],
    config_of: Callable[[Cell], dict],
    out: str,
    log: Callable[[str], None] = print,
    title: str = "",
) -> list[Record]:
    """Runs every cell not finished in `out` and returns every cell's record, in `cells` order.

    `run_cell(cell)` -> {metric: number}; `config_of(cell)` -> the JSON config the cell runs with
    (the cell and its seed are added). One progress line per cell: its time, the time so far and
    an estimate of the time left (the mean time of the cells run so far, times those left).
    """
    keys = [cell.key for cell in cells]
    if len(set(keys)) != len(keys):
        raise ValueError("the grid holds the same cell twice")
    folders = [os.path.join(out, "runs", key) for key in keys]
    configs = [{"cell": cell.as_dict(), "seed": cell.seed, **config_of(cell)} for cell in cells]
    done = [_finished(folder, config) for folder, config in zip(folders, configs)]
    to_run = sum(d is None for d in done)
    prefix = f"{title} " if title else ""
    log(f"{prefix}{len(cells)} cells: {len(cells) - to_run} finished before, {to_run} to run")
    start, run_seconds, records = time.perf_counter(), [], []
    width = len(str(len(cells)))
    for i, (cell, folder, config, finished) in enumerate(zip(cells, folders, configs, done), 1):
        position = f"[{i:>{width}}/{len(cells)}]"
        if finished is not None:
            saved, metrics, seconds = finished
            records.append(Record(cell, saved, metrics, seconds))
            log(f"{position} {prefix}{cell.label}: finished before, skipped")
            continue
        os.makedirs(folder, exist_ok=True)
        write_json(os.path.join(folder, "config.json"), config)
        began = time.perf_counter()
        metrics = run_cell(cell)
        seconds = time.perf_counter() - began
        write_json(os.path.join(folder, "timing.json"), {"seconds": seconds})
        write_json(os.path.join(folder, "metrics.json"), metrics)
        records.append(Record(cell, _normalised(config), _normalised(metrics), seconds))
        run_seconds.append(seconds)
        left = to_run - len(run_seconds)
        eta = sum(run_seconds) / len(run_seconds) * left
        log(
            f"{position} {prefix}{cell.label}: {format_duration(seconds)}; "
            f"elapsed {format_duration(time.perf_counter() - start)}, ETA {format_duration(eta)}"
        )
    return records
