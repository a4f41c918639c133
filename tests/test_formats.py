"""Line parsers: each malformation gets its reason, and the fast paths agree with the exact parser."""

from __future__ import annotations

import random

import numpy as np
import pytest

from common import records
from example_gen import formats, reasons as r
from synth.aliccp import SAMPLE_DEFECTS, corrupt

VALID = "7,1,0,abcd,3,205\x02100\x031.0\x01210\x02501\x030.5\x01210\x02502\x031.5"
COMMON = "abcd,2,101\x027\x031\x01109_14\x0211\x031.386294"


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"", r.EMPTY_LINE),
        (b"   ", r.EMPTY_LINE),
        (b"7,1,0,abcd,1,205\x02100\x03\xff", r.BAD_ENCODING),
        (b"7,1,0,abcd,205\x02100\x031.0", r.WRONG_COLUMN_COUNT),
        (b"7,2,0,abcd,1,205\x02100\x031.0", r.BAD_LABEL),
        (b"7,1,x,abcd,1,205\x02100\x031.0", r.BAD_LABEL),
        (b",1,0,abcd,1,205\x02100\x031.0", r.BAD_SAMPLE_ID),
        (b"7,1,0,abcd,2,205\x02100\x031.0", r.FEATURE_NUM_MISMATCH),
        (b"7,1,0,abcd,two,205\x02100\x031.0", r.FEATURE_NUM_MISMATCH),
        (b"7,1,0,abcd,1,205\x021001.0", r.MALFORMED_ENTRY),
        (b"7,1,0,abcd,1,205\x03100\x021.0", r.MALFORMED_ENTRY),
        (b"7,1,0,abcd,1,999\x02100\x031.0", r.UNKNOWN_FIELD),
        (b"7,1,0,abcd,1,205\x0210a\x031.0", r.UNPARSABLE_ID),
        (b"7,1,0,abcd,1,205\x0299999999999999999999\x031.0", r.UNPARSABLE_ID),
        (b"7,1,0,abcd,1,205\x02100\x03one", r.UNPARSABLE_WEIGHT),
        (b"7,1,0,abcd,1,205\x02100\x03nan", r.UNPARSABLE_WEIGHT),
        (b"7,1,0,abcd,1,205\x02100\x031e999", r.UNPARSABLE_WEIGHT),
        # int() and float() would take these; the data never holds them, so they are errors.
        (b"7,1,0,abcd,1,205\x021_4\x031.0", r.UNPARSABLE_ID),
        (b"7,1,0,abcd,1,205\x02 12 \x031.0", r.UNPARSABLE_ID),
        ("7,1,0,abcd,1,205\x02١٢\x031.0".encode(), r.UNPARSABLE_ID),
        (b"7,1,0,abcd,1,205\x0212\x031_0", r.UNPARSABLE_WEIGHT),
        (b"7,1,0,abcd, 1 ,205\x0212\x031.0", r.FEATURE_NUM_MISMATCH),
    ],
)
@pytest.mark.parametrize("exact", [True, False])
def test_each_malformation_has_its_reason(raw, reason, exact):
    with pytest.raises(r.Malformed) as caught:
        formats.AliccpRawParser().skeleton(formats.decode_line(raw), exact=exact)
    assert caught.value.reason == reason


def test_the_generator_makes_each_defect_it_names():
    parser = formats.AliccpRawParser()
    needs_other_lines = {r.DUPLICATE_SAMPLE_ID, r.UNKNOWN_COMMON_FEATURE_INDEX, r.CONVERSION_WITHOUT_CLICK}
    for defect in set(SAMPLE_DEFECTS) - needs_other_lines:
        with pytest.raises(r.Malformed) as caught:
            parser.skeleton(formats.decode_line(corrupt(VALID, defect, fresh_id="99")))
        assert caught.value.reason == defect


def test_the_regex_and_the_exact_check_accept_the_same_lines():
    """The fast path (a regex) never accepts a line that the entry-by-entry check rejects."""
    parser = formats.AliccpRawParser()
    rng = random.Random(3)
    alphabet = [
        "205",
        "210",
        "999",
        "\x01",
        "\x02",
        "\x03",
        "1",
        "0",
        ".",
        "-",
        "e",
        "5",
        "nan",
        "_",
        " ",
        "1e99",
        "1e400",
    ]
    for _ in range(3000):
        feature_list = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        line = f"1,0,0,c,{feature_list.count(chr(1)) + 1},{feature_list}"
        outcomes = []
        for exact in (False, True):
            try:
                parser.skeleton(line, exact=exact)
                outcomes.append("ok")
            except r.Malformed as e:
                outcomes.append(e.reason)
        assert outcomes[0] == outcomes[1], line


def test_skeleton_and_common_lines_make_one_example():
    parser = formats.AliccpRawParser()
    assert parser.skeleton(VALID) == ("7", 1, 0, "abcd")
    assert parser.common(COMMON) == "abcd"
    (example,) = formats.aliccp_examples([COMMON.encode()], [VALID.encode()], [0])
    assert records.parse_example(example) == {
        "f205": [100],
        "f205_weight": [1.0],
        "f210": [501, 502],
        "f210_weight": [0.5, 1.5],
        "f101": [7],
        "f101_weight": [1.0],
        "f109_14": [11],
        "f109_14_weight": [pytest.approx(1.386294)],
        "click": [1],
        "conversion": [0],
        "sample_id": [b"7"],
        "common_feature_index": [b"abcd"],
    }


def _expected_example(common: str, sample: str) -> dict:
    """The joined example, written out line by line: every entry in order, common line first."""
    sample_id, click, conversion, _, _, sample_list = sample.split(",")
    common_index, _, common_list = common.split(",")
    expected = {
        "click": [int(click)],
        "conversion": [int(conversion)],
        "sample_id": [sample_id.encode()],
        "common_feature_index": [common_index.encode()],
    }
    for entry in [e for e in (common_list.split("\x01") if common_list else [])] + (
        sample_list.split("\x01") if sample_list else []
    ):
        field, rest = entry.split("\x02")
        id_text, weight_text = rest.split("\x03")
        expected.setdefault(f"f{field}", []).append(int(id_text))
        expected.setdefault(f"f{field}_weight", []).append(float(np.float32(float(weight_text))))
    return expected


def test_joined_examples_hold_every_entry_of_both_lines_in_order():
    """Many samples at once, as the join encodes them: commons shared by several samples, a field
    on both lines (common values first), empty lists, and samples whose fields differ (a field
    on neither line stays absent), each against its example written out by hand."""
    rng = random.Random(5)
    sources = {"common": ["101", "109_14", "124", "205"], "sample": ["205", "206", "210", "508"]}

    def feature_list(kind):
        entries = [
            f"{rng.choice(sources[kind])}\x02{rng.randint(-5, 2**40)}\x03{rng.choice(['1', '0.1', '2.302585', '1e-3'])}"
            for _ in range(rng.choice([0, 1, 3, 6]))
        ]
        return f"{len(entries)},{chr(1).join(entries)}"

    commons = [f"c{i},{feature_list('common')}" for i in range(40)]
    common_of_sample = [rng.randrange(len(commons)) for _ in range(300)]
    samples = [f"{i},{i % 2},0,c{c},{feature_list('sample')}" for i, c in enumerate(common_of_sample)]
    parser = formats.AliccpRawParser()
    for line in commons:
        parser.common(line, exact=True)
    for line in samples:
        parser.skeleton(line, exact=True)
    examples = formats.aliccp_examples([c.encode() for c in commons], [s.encode() for s in samples], common_of_sample)
    assert len(examples) == len(samples)
    for example, sample, c in zip(examples, samples, common_of_sample):
        assert records.parse_example(example) == _expected_example(commons[c], sample), sample


def test_tfrecord_framing_is_what_tensorflow_reads(tmp_path):
    import tensorflow as tf

    payloads = [b"", b"x", bytes(range(256)) * 40]
    path = tmp_path / "framed.tfrecord"
    path.write_bytes(b"".join(records.tfrecord_frame(p) for p in payloads))
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == payloads


@pytest.mark.parametrize(
    "first_line,expected",
    [
        ("click,purchase,101,121", None),
        ("0,0,x,1", None),
        (",".join(["0"] * 21), None),
        ("1,0,0,205:1,206:2", "aliccp-kv"),
        (",".join(["0"] * 20), "aliccp-aitm"),
        (",".join(["0"] * 33), "aliccp-torchrechub"),
        (",".join(formats.AITM_COLUMNS), "aliccp-aitm"),
    ],
)
def test_aliccp_csv_layout_detection(first_line, expected):
    if expected is None:
        with pytest.raises(ValueError):
            formats.detect_aliccp_csv(first_line)
    else:
        assert formats.detect_aliccp_csv(first_line).schema.name == expected


def test_a_reordered_header_maps_columns_by_name():
    columns = ("101",) + tuple(c for c in formats.AITM_COLUMNS if c != "101")
    parser = formats.detect_aliccp_csv(",".join(columns))
    assert parser.has_header
    values = {name: str(i + 2) for i, name in enumerate(columns)} | {"click": "1", "purchase": "0"}
    example = records.parse_example(parser.parse(",".join(values[c] for c in columns), "x:2").example)
    assert (
        example["f101"] == [int(values["101"])] and example["click"] == [1] and example["f301"] == [int(values["301"])]
    )
