"""Numbered lines read in byte ranges: every line once, with its true number, whatever the cut."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from example_gen.lines import ReadNumberedLines, iter_lines, plan_ranges

CONTENT = b"first\r\nsecond\n\nfourth line is longer\nfifth\nno newline at the end"
EXPECTED = [b"first", b"second", b"", b"fourth line is longer", b"fifth", b"no newline at the end"]


@pytest.mark.parametrize("range_bytes", [1, 2, 3, 5, 7, 11, 64, 1 << 20])
def test_ranges_cover_every_line_once(tmp_path, range_bytes):
    path = tmp_path / "f.txt"
    path.write_bytes(CONTENT)
    ranges = plan_ranges([str(path)], range_bytes)
    assert [line for r in ranges for line in iter_lines(r)] == EXPECTED


def test_a_byte_order_mark_and_a_final_carriage_return_are_not_content(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfa,b\r\nc\r")
    for range_bytes in (1, 2, 4, 64):
        assert [line for r in plan_ranges([str(path)], range_bytes) for line in iter_lines(r)] == [b"a,b", b"c"]


def test_empty_file_has_no_lines(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    assert [line for r in plan_ranges([str(path)]) for line in iter_lines(r)] == []


def test_beam_transform_numbers_lines_across_ranges(tmp_path):
    paths = []
    for name, content in (("a.txt", CONTENT), ("b.txt", b"x\ny\n")):
        (tmp_path / name).write_bytes(content)
        paths.append(str(tmp_path / name))
    expected = [(paths[0], i + 1, line) for i, line in enumerate(EXPECTED)] + [(paths[1], 1, b"x"), (paths[1], 2, b"y")]
    with beam.Pipeline("apache_beam.runners.portability.fn_api_runner.FnApiRunner") as p:
        assert_that(p | ReadNumberedLines(paths, range_bytes=4), equal_to(expected))
