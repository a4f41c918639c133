"""`mtrank experiment NAME [--scale quick|full] [--preset paper|project] [--seeds N] [--out DIR] [--data DIR]`.

`add_arguments` sets the subcommand's `func(args, beam_args)`, which raises ExperimentError for
bad input; the command line above this package turns it into its usage error (one line on
stderr, exit status 2, as every subcommand), so nothing here imports the command line. Programs
call `main_experiment(name, scale, seeds, out, data)` instead, which returns an exit status.

Nothing heavy is imported here, so `mtrank --help` stays fast: an experiment's module (and
TensorFlow) loads only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

HELP = "reproduce a paper's table or figure: a grid over models and seeds, written up as a report"
# name -> (module, summary); the module's EXPERIMENT is loaded when the experiment runs.
EXPERIMENTS = {
    "fdn-synthetic": (
        "experiments.fdn_synthetic",
        "FDN paper Table 1: single-task oracles vs MMoE, CGC, PLE and FDN on the FDN synthetic data",
    ),
    "negative-transfer": (
        "experiments.negative_transfer",
        "beyond the papers: each model's test loss against task correlation on the MMoE data",
    ),
    "fdn-tsne": (
        "experiments.fdn_tsne",
        "FDN paper Figure 3: t-SNE of FDN's task-specific and shared features, with and without L_orth",
    ),
    "mtn": ("experiments.mtn", "MTN paper Table 1: MMoE, ESMM and Shared-bottom with and without MTN (AUCs)"),
    "mtn-noise": ("experiments.mtn_noise", "MTN paper Table 2 and Figure 1: the mtn grid at noise proportions 0-15%"),
    "mtn-placement": (
        "experiments.mtn_placement",
        "MTN paper Analysis 3 and Figure 3: MTN on towers or experts, one depth or all (MMoE)",
    ),
    "fdn-ablation": (
        "experiments.fdn_ablation",
        "FDN paper Table 3 and Table 2's parameters: FDN without L_aux, L_orth or shared features",
    ),
    "fdn-table2": (
        "experiments.fdn_table2",
        "FDN paper Table 2: Single-task, MMoE, CGC, PLE and FDN (AUCs and parameters)",
    ),
}
SCALES = ("quick", "full")
# Experiments that train on Ali-CCP-like ranking data: synthetic by default, or the --data folder.
RANKING = frozenset({"mtn", "mtn-noise", "mtn-placement", "fdn-ablation", "fdn-table2"})
# Experiments that generate their own data and ignore --data.
SYNTHETIC = frozenset(EXPERIMENTS) - RANKING


class ExperimentError(Exception):
    """Bad input to an experiment: reported on one line."""


def default_out(name: str, scale: str) -> str:
    return os.path.join("runs", "experiments", f"{name}-{scale}")


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's arguments and its `func(args, beam_args)`."""
    listing = "; ".join(f"{name}: {summary}" for name, (_, summary) in EXPERIMENTS.items())
    parser.description = f"{HELP}. Experiments: {listing}."
    parser.add_argument(
        "name", choices=sorted(EXPERIMENTS), metavar="NAME", help=f"the experiment: {', '.join(sorted(EXPERIMENTS))}"
    )
    parser.add_argument(
        "--scale",
        choices=SCALES,
        default="quick",
        help="quick: at most 15 minutes on 2 CPU cores, every row and column of the tables; full: "
        "more seeds and larger runs, for a GPU (experiments/README.md; default: %(default)s)",
    )
    parser.add_argument(
        "--seeds",
        type=_positive,
        metavar="N",
        help="run seeds 0..N-1 (default: the scale's); more seeds than a finished run had only adds the new ones",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="the report folder; a killed run resumes in it (default: runs/experiments/NAME-SCALE)",
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="a folder of real data for the ranking experiments ("
        + ", ".join(sorted(RANKING))
        + "): full Ali-CCP raw files, Ali-CCP CSV samples or an AliExpress train.csv/test.csv "
        "folder, its format told from its files (default: synthetic Ali-CCP); the other "
        "experiments generate their own data and ignore it",
    )
    parser.add_argument(
        "--preset",
        choices=("paper", "project"),
        help="paper: the papers' settings as they state them; project: the project's own choices "
        "(experiments/README.md; default: paper at --scale full, project at quick)",
    )
    parser.set_defaults(func=command)


def command(args, beam_args=None) -> None:
    """The subcommand's function; ExperimentError for bad input."""
    run(args.name, args.scale, args.seeds, args.out, args.data, preset=args.preset)


def run(
    name: str,
    scale: str = "quick",
    seeds: int | None = None,
    out: str | None = None,
    data: str | None = None,
    log=print,
    preset: str | None = None,
) -> dict:
    """Runs experiment `name`; ExperimentError for bad input. Returns {"cells", "seconds"}."""
    if name not in EXPERIMENTS:
        raise ExperimentError(f"unknown experiment {name!r}; known: {', '.join(sorted(EXPERIMENTS))}")
    if scale not in SCALES:
        raise ExperimentError(f"unknown scale {scale!r}; known: {', '.join(SCALES)}")
    if seeds is not None and seeds < 1:
        raise ExperimentError(f"--seeds must be a positive integer, got {seeds}")
    if data is not None and name in SYNTHETIC:
        log(f"{name} generates its own data: --data {data} is ignored")
    from experiments import base, grid

    # Each cell traces its own tf.function, which TensorFlow warns about after a few cells.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)

    experiment = importlib.import_module(EXPERIMENTS[name][0]).EXPERIMENT
    try:
        return base.run(experiment, scale, seeds, out or default_out(name, scale), log=log, data=data, preset=preset)
    except (grid.GridError, base.DataError) as e:
        raise ExperimentError(str(e)) from None


def main_experiment(
    name: str,
    scale: str = "quick",
    seeds: int | None = None,
    out: str | None = None,
    data: str | None = None,
    preset: str | None = None,
) -> int:
    """Runs an experiment; 0 when its report is written, 2 (with `error: ...` on stderr) for bad
    input such as an unknown name or an output folder holding another experiment's runs."""
    try:
        run(name, scale, seeds, out, data, log=lambda line: print(line, flush=True), preset=preset)
    except ExperimentError as e:
        print(f"error: mtrank experiment: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m experiments NAME ...`: the same arguments as `mtrank experiment`."""
    parser = argparse.ArgumentParser(prog="python -m experiments", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return main_experiment(args.name, args.scale, args.seeds, args.out, args.data, args.preset)
