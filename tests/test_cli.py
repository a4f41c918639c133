"""`mtrank`: subcommands with --help, one-line errors with a non-zero status, and a real run."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

MTRANK = str(pathlib.Path(sys.executable).parent / "mtrank")


def run(*args, check=False):
    return subprocess.run([MTRANK, *args], capture_output=True, text=True, timeout=300, check=check)


def test_help_lists_the_subcommands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("run", "ingest", "transform", "train", "synth"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "command",
    [
        ["run"],
        ["ingest"],
        ["transform"],
        ["train"],
        ["synth"],
        ["synth", "aliccp"],
        ["synth", "fdn"],
        ["synth", "mmoe"],
    ],
)
def test_every_subcommand_has_help(command):
    result = run(*command, "--help")
    assert result.returncode == 0 and "usage: mtrank" in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["ingest", "--format", "parquet", "--input", "x", "--output", "y"], "invalid choice"),
        (["ingest", "--format", "aliexpress", "--input", "/no/such/folder", "--output", "/tmp/y"], "does not exist"),
        (
            ["ingest", "--format", "aliccp-csv", "--input", "x", "--output", "y", "--eval-fraction", "1.5"],
            "not in [0, 1)",
        ),
        (["synth", "aliccp", "--rows", "-3", "--out", "/tmp/x"], "not a positive integer"),
        (["synth", "mmoe", "--correlation", "2", "--out", "/tmp/mmoe-bad"], "must be in [-1, 1]"),
        (["run", "--data", "/tmp"], "--data needs --format"),
        (["frobnicate"], "invalid choice"),
        (["transform", "--examples", "/no/such/folder", "--output", "/tmp/y"], "is not ExampleGen output"),
        (["transform", "--examples", "x", "--output", "y", "--noise-proportion", "1.5"], "not in [0, 1]"),
        (["transform", "--examples", "x", "--output", "y", "--oov-buckets", "0"], "not a positive integer"),
        (["transform", "--examples", "x", "--output", "y", "--config", "/no/such.json"], "--config /no/such.json"),
        (["train", "--transformed", "/no/such/folder"], "has no transform_graph/"),
        (["train", "--transformed", "x", "--model", "xgboost"], "invalid choice"),
        (["train", "--transformed", "x", "--epochs", "0"], "not a positive integer"),
        (["run", "--model", "mmoe", "--mtn", "-1"], "mtn.lam must be >= 0"),
    ],
)
def test_bad_arguments_fail_with_one_line(args, message):
    result = run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: mtrank") and message in lines[0]


def test_an_output_that_is_a_file_is_one_line(tmp_path, shared_data):
    (tmp_path / "a_file").write_text("")
    result = run(
        "ingest",
        "--format",
        "aliccp-csv",
        "--input",
        str(shared_data / "ali_ccp" / "aitm_csv"),
        "--output",
        str(tmp_path / "a_file"),
    )
    assert (
        result.returncode == 2
        and len(result.stderr.strip().splitlines()) == 1
        and "not a writable folder" in result.stderr
    )


def test_missing_raw_files_are_named(tmp_path):
    (tmp_path / "sample_skeleton_train.csv").write_text("")
    result = run("ingest", "--format", "aliccp-raw", "--input", str(tmp_path), "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and "common_features_train.csv" in result.stderr


@pytest.mark.e2e
def test_synth_then_ingest(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    run("synth", "aliccp", "--rows", "400", "--seed", "1", "--out", str(raw), "--malformed-rate", "0.05", check=True)
    result = run("ingest", "--format", "aliccp-raw", "--input", str(raw), "--output", str(out), check=True)
    stats = json.loads((out / "stats.json").read_text())
    manifest = json.loads((raw / "synth.json").read_text())
    assert stats["samples"]["rejected"] == manifest["malformed"]["samples"]
    assert sum(stats["samples"]["written"].values()) == 400
    assert "written" in result.stdout
    again = run("ingest", "--format", "aliccp-raw", "--input", str(raw), "--output", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_transform_options_from_a_config_file_are_checked(tmp_path):
    config = tmp_path / "preprocessing.json"
    config.write_text(json.dumps({"numeric": {"numerical_1": ["cube_root"]}}))
    result = run("transform", "--examples", str(tmp_path), "--output", str(tmp_path / "out"), "--config", str(config))
    assert result.returncode == 2 and "numerical_1" in result.stderr and "cube_root" in result.stderr


def test_a_bad_trainer_config_names_the_key(tmp_path):
    config = tmp_path / "trainer.json"
    config.write_text(json.dumps({"model": {"name": "mmoe", "num_experts": "eight"}}))
    (tmp_path / "transform_graph").mkdir()
    result = run("train", "--transformed", str(tmp_path), "--config", str(config))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "model.num_experts must be a number" in result.stderr


@pytest.mark.parametrize(
    "section, message",
    [
        ({"frequency_threshold": 0}, "transform.frequency_threshold must be an integer >= 1"),
        ({"noise_feature_prob": 1.5}, "transform.noise_feature_prob must be a number in [0, 1]"),
        ({"oov": 2}, "unknown keys ['oov']"),
    ],
)
def test_a_bad_transform_section_of_run_names_the_key_before_anything_runs(tmp_path, section, message):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"transform": section}))
    result = run("run", "--output", str(tmp_path / "out"), "--config", str(config), "--no-serve")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_config_that_is_not_an_object_is_one_line(tmp_path):
    config = tmp_path / "list.json"
    config.write_text("[1, 2]")
    result = run(
        "transform",
        "--examples",
        str(tmp_path),
        "--output",
        str(tmp_path / "out"),
        "--config",
        str(config),
        "--oov-buckets",
        "2",
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "JSON object" in result.stderr


def test_examples_of_an_unknown_layout_are_one_line(tmp_path):
    (tmp_path / "stats.json").write_text(json.dumps({"format": "aliccp-csv", "layouts": {"a.csv": "mystery"}}))
    result = run("transform", "--examples", str(tmp_path), "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "does not name a known layout" in result.stderr and "mystery" in result.stderr


def test_serve_listens_on_this_machine_only_unless_told():
    from mtrank.cli import build_parser
    from serving.config import server_config

    parser = build_parser()
    local = server_config(parser.parse_args(["serve", "--model-base-path", "base"]))
    assert local.host == "127.0.0.1"
    every = server_config(parser.parse_args(["serve", "--model-base-path", "base", "--host", "0.0.0.0"]))
    assert every.host == "0.0.0.0"
