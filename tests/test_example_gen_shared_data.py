"""Every real sample in ../shared/data ingests, with the counts SOURCES.md documents, and the
examples hold exactly the values of their lines."""

from __future__ import annotations

import csv

import pytest

from conftest import allowed_keys, read_examples
from transform import features as F

# (rows, clicks, conversions) per split, from ../shared/data/SOURCES.md.
EXPECTED = {
    "torchrechub_aliccp": {"train+eval": (150, 10, 2), "test": (50, 2, 1), "headers": 3},
    "aitm": {"train+eval": (49, 3, 0), "test": (50, 3, 0), "headers": 1},
    "kv": {"train+eval": (16, 1, 0), "test": (0, 0, 0), "headers": 0},
    "aliexpress_fuxictr": {"train+eval": (1000, 29, 10), "test": (1000, 43, 10), "headers": 2},
    "aliexpress_torchrechub": {"train+eval": (100, 60, 2), "test": (20, 10, 0), "headers": 2},
    "aliexpress_torchrechub_edited": {"train+eval": (100, 60, 2), "test": (20, 10, 2), "headers": 2},
}


def _totals(examples):
    return len(examples), sum(e[F.CLICK][0] for e in examples), sum(e[F.CONVERSION][0] for e in examples)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts_and_labels(ingested_shared, name):
    output, stats = ingested_shared[name]
    expected = EXPECTED[name]
    samples = stats["samples"]
    assert samples["rejected"] == {}
    assert samples["dropped"] == ({"header": expected["headers"]} if expected["headers"] else {})
    written = samples["written"]
    assert written["train"] + written["eval"] == expected["train+eval"][0]
    assert written["test"] == expected["test"][0]
    assert samples["lines_read"] == sum(written.values()) + expected["headers"]
    train_eval = read_examples(output, "train") + read_examples(output, "eval")
    assert _totals(train_eval) == expected["train+eval"]
    assert _totals(read_examples(output, "test")) == expected["test"]


def test_torchrechub_values_round_trip(ingested_shared, shared_data):
    output, _ = ingested_shared["torchrechub_aliccp"]
    examples = {
        e[F.SAMPLE_ID][0].decode(): e for split in ("train", "eval", "test") for e in read_examples(output, split)
    }
    path = shared_data / "ali_ccp" / "preprocessed_csv" / "torchrechub_ali_ccp_val_sample.csv"
    with open(path) as f:
        for line_no, row in enumerate(csv.DictReader(f), start=2):
            example = examples[f"{path.name}:{line_no}"]
            assert example[F.CLICK] == [int(row["click"])] and example[F.CONVERSION] == [int(row["purchase"])]
            for field in F.ALICCP_FIELDS:
                assert example[field.key] == [int(row[field.source])]
            for source in F.ALICCP_BEHAVIOUR + F.ALICCP_CROSSES:
                assert example[f"f{source}_weight"] == pytest.approx([float(row[f"D{source}"])], rel=1e-6)
            assert set(example) <= allowed_keys(F.ALICCP_TORCHRECHUB)  # "purchase" became the label only


def test_aitm_layout_keeps_its_18_fields(ingested_shared):
    output, stats = ingested_shared["aitm"]
    assert set(stats["layouts"].values()) == {"aliccp-aitm"}
    example = read_examples(output, "test")[0]
    assert {k for k in example if k.startswith("f")} == {f.key for f in F.ALICCP_AITM.fields}


def test_key_value_files_keep_every_id(ingested_shared, shared_data):
    """PaddleRec's repeated keys and FDN's `#`-joined ids (973 ids in one 110_14) are all kept."""
    output, stats = ingested_shared["kv"]
    assert set(stats["layouts"].values()) == {"aliccp-kv"}
    examples = {e[F.SAMPLE_ID][0].decode(): e for split in ("train", "eval") for e in read_examples(output, split)}
    longest = 0
    for name in ("paddlerec_esmm_small.txt", "fdn_aliccp_joined_rawids.csv"):
        for line in (shared_data / "ali_ccp" / "kv_format" / name).read_text().splitlines():
            sample_id, click, purchase, *entries = line.split(",")
            expected: dict[str, list[int]] = {}
            for entry in entries:
                field, ids = entry.split(":")
                expected.setdefault(f"f{field}", []).extend(int(i) for i in ids.split("#"))
            example = examples[sample_id]
            assert {k: v for k, v in example.items() if k.startswith("f")} == expected
            assert example[F.CLICK] == [int(click)] and example[F.CONVERSION] == [int(purchase)]
            longest = max(longest, len(expected.get("f110_14", [])))
    assert longest == 973


def test_aliexpress_values_round_trip(ingested_shared, aliexpress_folders):
    output, _ = ingested_shared["aliexpress_fuxictr"]
    examples = {e[F.SAMPLE_ID][0].decode(): e for e in read_examples(output, "test")}
    with open(aliexpress_folders["fuxictr"] / "test.csv") as f:
        for line_no, row in enumerate(csv.DictReader(f), start=2):
            example = examples[f"test.csv:{line_no}"]
            assert example[F.SEARCH_ID] == [int(row["search_id"])]
            for field in F.ALIEXPRESS.fields:
                if field.kind is F.Kind.CATEGORICAL:
                    assert example[field.key] == [int(row[field.source])]
                else:
                    assert example[field.key] == pytest.approx([float(row[field.source])], rel=1e-6, abs=1e-7)
            assert (example[F.CLICK], example[F.CONVERSION]) == ([int(row["click"])], [int(row["conversion"])])
            assert set(example) == {f.key for f in F.ALIEXPRESS.fields} | set(F.LABELS) | {F.SAMPLE_ID, F.SEARCH_ID}


def test_file_roles_come_from_words_of_the_name():
    from example_gen.beam_pipeline import _role_from_name

    assert _role_from_name("gs://b/x/paddlerec_aitm_test_sample_noheader.csv") == "test"
    assert _role_from_name("torchrechub_ali_ccp_val_sample.csv") == "eval"
    assert _role_from_name("latest_train.csv") == "train"  # "latest" holds "test" but is not the word
    assert _role_from_name("contest.csv") == "train"


def test_a_bom_and_crlf_file_ingests_like_the_plain_one(tmp_path, shared_data, ingested_shared):
    source = shared_data / "ali_ccp" / "aitm_csv" / "paddlerec_aitm_train_sample.csv"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "train.csv").write_bytes(b"\xef\xbb\xbf" + source.read_bytes().replace(b"\n", b"\r\n"))
    from conftest import ingest

    output, stats = ingest(tmp_path, "out", "aliccp-csv", tmp_path / "in")
    assert stats["samples"]["rejected"] == {} and stats["samples"]["dropped"] == {"header": 1}
    assert sum(stats["samples"]["written"].values()) == 49
