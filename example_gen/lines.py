"""Read text files as (path, line number, line bytes), in parallel byte ranges.

A rejected line must name its line number, yet a 42M-row file must be read by many workers.
Each file is cut into byte ranges; a line belongs to the range its first byte is in. A cheap
first pass counts the lines of every range, so the second pass knows each range's first line
number without reading what comes before it. Works on any Beam filesystem (local, gs://, s3://).
"""

from __future__ import annotations

import logging
from typing import Iterator, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

_LOG = logging.getLogger(__name__)
DEFAULT_RANGE_BYTES = 32 << 20
_READ_BUFFER = 1 << 20
UTF8_BOM = b"\xef\xbb\xbf"


class ByteRange(NamedTuple):
    path: str
    start: int
    end: int
    index: int  # position among the file's ranges
    count: int  # number of ranges of the file


def plan_ranges(paths: list[str], range_bytes: int = DEFAULT_RANGE_BYTES) -> list[ByteRange]:
    ranges = []
    for path in paths:
        size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
        starts = list(range(0, size, range_bytes)) or [0]
        for i, start in enumerate(starts):
            ranges.append(ByteRange(path, start, min(start + range_bytes, size), i, len(starts)))
    return ranges


def iter_lines(byte_range: ByteRange) -> Iterator[bytes]:
    """The lines starting inside the range, without their line ending."""
    path, start, end = byte_range.path, byte_range.start, byte_range.end
    with FileSystems.open(path, compression_type="uncompressed") as f:
        position = start
        if start > 0:
            # The line that starts before the range belongs to the previous one: skip it.
            f.seek(start - 1)
            position = start - 1 + len(f.readline())
        buffered = _BufferedLines(f)
        while position < end:
            line = buffered.readline()
            if not line:
                return
            at_file_start, position = position == 0, position + len(line)
            if at_file_start and line.startswith(UTF8_BOM):
                line = line[len(UTF8_BOM) :]
            yield line.removesuffix(b"\n").removesuffix(b"\r")


class _BufferedLines:
    """readline() over large reads: remote filesystems' readline is slow per call."""

    def __init__(self, f):
        self._f, self._lines, self._tail = f, [], b""

    def readline(self) -> bytes:
        while not self._lines:
            chunk = self._f.read(_READ_BUFFER)
            if not chunk:
                line, self._tail = self._tail, b""
                return line
            parts = (self._tail + chunk).split(b"\n")
            self._tail = parts.pop()
            self._lines = [p + b"\n" for p in reversed(parts)]
        return self._lines.pop()


class _CountLines(beam.DoFn):
    def process(self, byte_range: ByteRange):
        yield (byte_range.path, byte_range.start), sum(1 for _ in iter_lines(byte_range))


class _NumberLines(beam.DoFn):
    def process(self, byte_range: ByteRange, counts: dict):
        path = byte_range.path
        first = 1 + sum(n for (p, start), n in counts.items() if p == path and start < byte_range.start)
        line_no = first
        for line_no, line in enumerate(iter_lines(byte_range), start=first):
            yield path, line_no, line
        _LOG.info("read %s lines %d-%d (part %d of %d)", path, first, line_no, byte_range.index + 1, byte_range.count)


class ReadNumberedLines(beam.PTransform):
    """PCollection of (path, 1-based line number, line bytes without its end of line)."""

    def __init__(self, paths: list[str], range_bytes: int = DEFAULT_RANGE_BYTES):
        super().__init__()
        self._ranges = plan_ranges(paths, range_bytes)

    def expand(self, pbegin):
        ranges = pbegin | "Ranges" >> beam.Create(self._ranges) | "Spread" >> beam.Reshuffle()
        counts = ranges | "Count" >> beam.ParDo(_CountLines())
        return ranges | "Number" >> beam.ParDo(_NumberLines(), counts=beam.pvalue.AsDict(counts))
