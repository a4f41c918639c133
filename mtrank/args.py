"""What every subcommand shares: the usage error and the argument types."""

from __future__ import annotations

import argparse
import json


class UsageError(Exception):
    """A bad argument or input path: reported on one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1)")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def nonnegative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a non-negative integer")
    return value


def run_stage(command: str, run, *args, **kwargs):
    """Runs a stage of `pipeline.dag`, turning bad input into a one-line usage error."""
    from pipeline.dag import StageError

    try:
        return run(*args, **kwargs)
    except StageError as e:
        raise UsageError(f"mtrank {command}: {e}") from None


def load_json_object(path: str, command: str, what: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"mtrank {command}: --config {path}: {e}") from None
    if not isinstance(value, dict):
        raise UsageError(f"mtrank {command}: --config {path} must hold a JSON object of {what}")
    return value


def config_sections(args, command: str) -> dict:
    return load_json_object(args.config, command, "config sections") if args.config else {}
