"""`mtrank`: the project's one command, and its composition root: each command group lives in
its own module here, and only this package imports from every layer. Heavy modules are imported
inside the commands so `mtrank --help` answers at once."""

from __future__ import annotations

import argparse
import os
import sys

from experiments import cli as experiment_cli
from mtrank import kubeflow_commands, serving_commands, stage_commands, synth_commands
from mtrank.args import Parser, UsageError


def _experiment(args, beam_args) -> None:
    try:
        experiment_cli.command(args, beam_args)
    except experiment_cli.ExperimentError as e:
        raise UsageError(f"mtrank experiment: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mtrank",
        description="Multi-task ranking pipeline: ExampleGen, Transform, Trainer, Evaluator, Pusher, serving, "
        "experiments.",
        epilog="Arguments after `--` go to Apache Beam (e.g. -- --project=P --region=R).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log Beam's own messages too")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    # The order of `mtrank --help`'s list.
    stage_commands.add_run(commands)
    stage_commands.add_train(commands)
    p = commands.add_parser("experiment", help=experiment_cli.HELP)
    experiment_cli.add_arguments(p)
    p.set_defaults(func=_experiment)  # experiments raise their own error; _experiment makes it a usage error
    kubeflow_commands.add_compile(commands)
    kubeflow_commands.add_schedule(commands)
    serving_commands.add_serve(commands)
    serving_commands.add_score(commands)
    stage_commands.add_transform(commands)
    stage_commands.add_ingest(commands)
    synth_commands.add_synth(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    beam_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    try:
        args = build_parser().parse_args(argv)
        from pipeline.dag import configure_logging

        configure_logging(args.verbose)
        args.func(args, beam_args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mtrank score ... | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
