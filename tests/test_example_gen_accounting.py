"""ExampleGen on synthetic raw Ali-CCP with malformed lines of every kind: every line is
accounted for, each rejection is the generator's, and rejected/ holds the lines themselves."""

from __future__ import annotations

import collections
import pathlib

from conftest import allowed_keys, read_examples, read_rejected
from example_gen import beam_pipeline
from transform import features as F


def test_rejections_and_drops_match_the_generator(synthetic_raw, ingested_synthetic):
    _, manifest = synthetic_raw
    _, stats = ingested_synthetic
    assert stats["samples"]["rejected"] == manifest["malformed"]["samples"]
    assert stats["common_features"]["rejected"] == manifest["malformed"]["common"]
    assert stats["samples"]["dropped"] == manifest["dropped"]
    # Every kind of defect was made and caught.
    assert len(manifest["malformed"]["samples"]) == 12 and len(manifest["malformed"]["common"]) == 9


def test_read_equals_written_plus_rejected_plus_dropped(synthetic_raw, ingested_synthetic):
    _, manifest = synthetic_raw
    _, stats = ingested_synthetic
    s = stats["samples"]
    skeleton_lines = manifest["files"]["sample_skeleton_train.csv"] + manifest["files"]["sample_skeleton_test.csv"]
    assert s["lines_read"] == skeleton_lines
    assert s["lines_read"] == sum(s["written"].values()) + sum(s["rejected"].values()) + sum(s["dropped"].values())
    assert s["written"]["train"] + s["written"]["eval"] == manifest["samples"]["train"]
    assert s["written"]["test"] == manifest["samples"]["test"]


def test_accounting_check_catches_a_lost_line(ingested_synthetic):
    _, stats = ingested_synthetic
    broken = {**stats, "samples": {**stats["samples"], "lines_read": stats["samples"]["lines_read"] + 1}}
    assert beam_pipeline.check_accounting(broken)


def test_rejected_lines_are_kept_with_file_line_and_reason(synthetic_raw, ingested_synthetic):
    folder, _ = synthetic_raw
    output, stats = ingested_synthetic
    rejected = read_rejected(output)
    counted = sum(stats["samples"]["rejected"].values()) + sum(stats["common_features"]["rejected"].values())
    assert len(rejected) == counted
    by_reason = collections.Counter(r["reason"] for r in rejected)
    assert by_reason == collections.Counter(stats["samples"]["rejected"]) + collections.Counter(
        stats["common_features"]["rejected"]
    )
    files = {}
    for row in rejected:
        path = pathlib.Path(row["file"])
        assert path.parent == folder
        lines = files.setdefault(path, path.read_bytes().split(b"\n"))
        assert row["text"] == lines[row["line"] - 1].decode("utf-8", "backslashreplace")
        assert row["detail"] or row["reason"] == "empty_line"


def test_split_hash_is_pinned():
    """The same ids land in the same split on every run, process and runner (not Python's hash())."""
    assert [beam_pipeline.split_of("train", str(i), 0.1) for i in range(30, 40)] == [
        "train",
        "train",
        "eval",
        "eval",
        "train",
        "train",
        "train",
        "eval",
        "eval",
        "train",
    ]
    assert beam_pipeline.split_of("test", "32", 0.1) == "test"


def test_split_is_a_stable_hash_of_the_sample_id(ingested_synthetic):
    output, stats = ingested_synthetic
    written = stats["samples"]["written"]
    share = written["eval"] / (written["train"] + written["eval"])
    assert abs(share - 0.1) < 4 * (0.1 * 0.9 / (written["train"] + written["eval"])) ** 0.5
    for split in ("train", "eval"):
        for example in read_examples(output, split)[:200]:
            assert beam_pipeline.split_of("train", example[F.SAMPLE_ID][0].decode(), 0.1) == split


def test_examples_join_user_and_ad_fields_and_hold_labels_only_as_labels(ingested_synthetic):
    output, _ = ingested_synthetic
    user = {f.key for f in F.ALICCP_USER_FIELDS}
    for example in read_examples(output, "test")[:300]:
        assert user <= set(example)
        assert {"f205", "f206", "f301"} <= set(example)
        assert set(example) <= allowed_keys(F.ALICCP_RAW) - {F.SEARCH_ID}
        assert example[F.CLICK][0] in (0, 1) and example[F.CONVERSION][0] <= example[F.CLICK][0]
        for field in F.ALICCP_RAW.fields:
            if field.key in example:
                assert len(example[F.weight_key(field)]) == len(example[field.key])


def test_repeated_ids_point_to_their_first_line():
    import numpy as np

    ids = ["a", "b", "a", "c", "b", "a"]
    positions = np.zeros(len(ids), beam_pipeline._POSITION)
    for i, sample_id in enumerate(ids):
        digest = np.frombuffer(
            beam_pipeline.sample_id_digest("train", sample_id), dtype=[("low", "<u8"), ("high", "<u8")]
        )[0]
        positions[i] = (digest["low"], digest["high"], i % 2, 10 - i)  # (file, line)
    combine = beam_pipeline._FirstOfRepeatedIds()
    halves = [combine.add_input(combine.create_accumulator(), part) for part in (positions[:3], positions[3:])]
    firsts = combine.extract_output(combine.merge_accumulators(halves))
    digest = {s: beam_pipeline.sample_id_digest("train", s) for s in set(ids)}
    assert firsts == {digest["a"]: (0, 8), digest["b"]: (0, 6)}  # "c" is not repeated
