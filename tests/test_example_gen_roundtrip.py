"""Hand-written raw Ali-CCP lines: the examples hold exactly their ids and weights, multi-valued
fields included, with the user's common features joined in."""

from __future__ import annotations

import pytest

from conftest import read_examples
from transform import features as F

S, E, V = "\x01", "\x02", "\x03"


def _entries(*triples):
    return S.join(f"{field}{E}{id_}{V}{weight}" for field, id_, weight in triples)


SKELETON_TRAIN = [
    f"1,1,0,cfiA,4,{_entries(('205', 100, '1.0'), ('210', 501, '0.5'), ('210', 502, '1.5'), ('508', 900, '2.302585'))}",
    f"2,0,0,cfiA,1,{_entries(('205', 101, '1'))}",
    f"3,1,1,cfiB,2,{_entries(('205', 102, '1'), ('301', 9351665, '1'))}",
]
COMMON_TRAIN = [
    "cfiA,5,"
    + _entries(
        ("101", 7, "1"), ("109_14", 11, "1.386294"), ("109_14", 12, "0.693147"), ("109_14", 13, "2"), ("124", 1, "1")
    ),
    # 205 also on the user side: merged with the sample's, user values first.
    f"cfiB,2,{_entries(('101', 8, '1'), ('205', 999, '0.25'))}",
]
SKELETON_TEST = [f"1,0,0,cfiT,1,{_entries(('216', 5, '1'))}"]
COMMON_TEST = ["cfiT,0,"]


def _ingest(raw, output) -> dict:
    """{(split, sample_id): example} of ExampleGen run on the hand-written lines."""
    for name, lines in (
        ("sample_skeleton_train.csv", SKELETON_TRAIN),
        ("common_features_train.csv", COMMON_TRAIN),
        ("sample_skeleton_test.csv", SKELETON_TEST),
        ("common_features_test.csv", COMMON_TEST),
    ):
        (raw / name).write_text("\n".join(lines) + "\n")
    from example_gen import beam_pipeline

    stats = beam_pipeline.run(
        beam_pipeline.IngestConfig("aliccp-raw", str(raw), str(output), eval_fraction=0.0, overwrite=True)
    )
    assert stats["rejected"] == 0 and stats["written"] == 4
    return {(split, e[F.SAMPLE_ID][0].decode()): e for split in ("train", "test") for e in read_examples(output, split)}


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return _ingest(tmp_path_factory.mktemp("handmade"), tmp_path_factory.mktemp("handmade_out"))


def test_a_join_batch_full_before_the_bundle_ends_writes_the_same_examples(examples, tmp_path, monkeypatch):
    """The join encodes a batch as soon as it holds _JOIN_BATCH samples, and the rest when its
    bundle ends: with batches of one sample, every example is written from a full batch."""
    from example_gen import beam_pipeline

    monkeypatch.setattr(beam_pipeline, "_JOIN_BATCH", 1)
    (tmp_path / "raw").mkdir()
    assert _ingest(tmp_path / "raw", tmp_path / "out") == examples


def _features(example):
    return {k: v for k, v in example.items() if k.startswith("f")}


def test_multi_valued_fields_keep_every_id_and_weight(examples):
    first = examples[("train", "1")]
    assert _features(first) == {
        "f205": [100],
        "f205_weight": [1.0],
        "f210": [501, 502],
        "f210_weight": [0.5, 1.5],
        "f508": [900],
        "f508_weight": pytest.approx([2.302585]),
        "f101": [7],
        "f101_weight": [1.0],
        "f109_14": [11, 12, 13],
        "f109_14_weight": pytest.approx([1.386294, 0.693147, 2.0]),
        "f124": [1],
        "f124_weight": [1.0],
    }
    assert (first[F.CLICK], first[F.CONVERSION]) == ([1], [0])
    assert first[F.COMMON_FEATURE_INDEX] == [b"cfiA"]


def test_common_features_are_shared_by_their_samples(examples):
    assert _features(examples[("train", "2")])["f109_14"] == [11, 12, 13]
    assert _features(examples[("train", "2")])["f205"] == [101]


def test_a_field_on_both_sides_keeps_both_values(examples):
    third = _features(examples[("train", "3")])
    assert third["f205"] == [999, 102] and third["f205_weight"] == [0.25, 1.0]
    assert third["f301"] == [9351665]
    assert examples[("train", "3")][F.CONVERSION] == [1]


def test_test_files_go_to_test_and_an_empty_common_list_is_valid(examples):
    only = examples[("test", "1")]
    assert _features(only) == {"f216": [5], "f216_weight": [1.0]}
