"""ExampleGen as a Beam pipeline: raw files in, examples/{train,eval,test}, rejected/, stats.json out.

Every line read ends in exactly one place: an example of one split, a rejection (with file, line
number, reason and the line itself), or a counted drop; stats.json proves read = written +
rejected + dropped. Ali-CCP's raw join is a GroupByKey on common_feature_index, so no worker
holds the common-features table, and repeated sample ids are found with one global combine
over per-bundle arrays of id hashes, so only one shuffle carries the rows.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import hashlib
import json
import logging
import posixpath
import re
import struct
import time
import zlib

import apache_beam as beam
import numpy as np
import zstandard
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from common.beam import (
    IN_PROCESS,
    CountingDoFn,
    FramedRecordSink,
    InputError,
    check_writable,
    clear_outputs,
    counters,
    pipeline_options,
)
from common.layout import EXAMPLES, REJECTED, SPLITS, STATS
from example_gen import FORMATS, formats
from example_gen import reasons as r
from common import records
from example_gen.lines import DEFAULT_RANGE_BYTES, UTF8_BOM, ReadNumberedLines

_LOG = logging.getLogger(__name__)

ALICCP_RAW_FILES = {
    "sample_skeleton_train.csv": ("skeleton", "train"),
    "common_features_train.csv": ("common", "train"),
    "sample_skeleton_test.csv": ("skeleton", "test"),
    "common_features_test.csv": ("common", "test"),
}
ALIEXPRESS_FILES = {"train.csv": "train", "test.csv": "test"}
_NAMESPACE = "examplegen"


@dataclasses.dataclass
class IngestConfig:
    format: str
    input: str
    output: str
    eval_fraction: float = 0.1
    runner: str = IN_PROCESS
    overwrite: bool = False
    range_bytes: int = DEFAULT_RANGE_BYTES
    beam_args: list = dataclasses.field(default_factory=list)


def split_of(role: str, sample_id: str, eval_fraction: float) -> str:
    """train/eval by a hash of the sample id (stable across runs and runners); test stays test."""
    if role != "train":
        return role
    return "eval" if zlib.crc32(sample_id.encode()) % 10_000 < eval_fraction * 10_000 else "train"


class _Counting(CountingDoFn):
    NAMESPACE = _NAMESPACE

    def reject(self, kind, path, line_no, reason, detail, raw):
        self._counts[f"rejected/{kind}/{reason}"] += 1
        return beam.pvalue.TaggedOutput("rejected", records.rejection(path, line_no, reason, detail, raw))

    def write(self, split, framed_records: bytes, n: int = 1):
        """Sends n TFRecord-framed examples (concatenated) to the split's files."""
        self._counts[f"written/{split}"] += n
        return beam.pvalue.TaggedOutput(split, framed_records)


class _ParseRows(_Counting):
    """Single-file layouts: a line becomes an example of its split, a rejection or a drop."""

    def __init__(self, parsers: dict, roles: dict, eval_fraction: float):
        self._parsers, self._roles, self._eval_fraction = parsers, roles, eval_fraction

    def process(self, element):
        path, line_no, raw = element
        self._counts["lines/samples"] += 1
        parser = self._parsers[path]
        if line_no == 1 and parser.has_header:
            self._counts[f"dropped/{r.HEADER}"] += 1
            return
        try:
            row = parser.parse(formats.decode_line(raw), f"{posixpath.basename(path)}:{line_no}")
        except r.Malformed as e:
            yield self.reject("samples", path, line_no, e.reason, e.detail, raw)
            return
        if row.conversion and not row.click:
            self._counts[f"dropped/{r.CONVERSION_WITHOUT_CLICK}"] += 1
            return
        role = self._roles[path]
        yield self.write(split_of(role, row.sample_id, self._eval_fraction), records.tfrecord_frame(row.example))


# Values grouped by (role, common_feature_index) carry their kind first, so one grouping joins them.
_COMMON, _SAMPLE = 0, 1


def sample_id_digest(role: str, sample_id: str) -> bytes:
    """A 128-bit hash of a sample id, equal on every worker (Python's hash() is salted per
    process); at 42M ids the chance of any collision is about 1e-23."""
    return hashlib.blake2b(f"{role}\x00{sample_id}".encode(), digest_size=16).digest()


_POSITION = np.dtype([("low", "<u8"), ("high", "<u8"), ("file", "<u4"), ("line", "<u8")])
_MAX_RUN_LINES = 10_000
_PROGRESS_EVERY = 250_000
_JOIN_BATCH = 4096
_POSITIONS_PER_OUTPUT = 1 << 20
# Repeated ids are found per shard of the digest space, so no worker gathers every sample's
# position (28 bytes each: 1.2 GB at 42M rows).
_SHARD_BITS = 6
# Raw lines cross the join's shuffle Zstandard-compressed at this level. Beam's in-process runner
# keeps a shuffle's every value in memory twice over (decoded, then re-encoded before the grouped
# read), and with one sample per user the 700-byte common lines are most of it: 2M samples peaked
# at 6.7 GB with raw lines and 2.9 GB compressed. zstd at level 1 packs these lines as tightly as
# zlib at level 1 (a third of their size) in half the time.
_SHUFFLE_ZSTD_LEVEL = 1


class _ParseRawLines(_Counting):
    """Parses Ali-CCP raw lines of `files` (paths travel as their index in that list)."""

    def __init__(self, files: list, roles: dict):
        self._files, self._roles, self._parser = files, roles, None

    def setup(self):
        self._parser = formats.AliccpRawParser()
        self._index = {path: i for i, path in enumerate(self._files)}
        self._compress = zstandard.ZstdCompressor(level=_SHUFFLE_ZSTD_LEVEL).compress


class _ParseSkeleton(_ParseRawLines):
    """Validates sample_skeleton lines (encoding waits for the join); keyed by common_feature_index.

    A shuffle costs per element, and Ali-CCP keeps a session's samples on consecutive lines, so
    each run of consecutive valid lines with one key leaves as one element: (kind, file, first
    line number, the lines joined by newlines and compressed). Also emits arrays of (sample id
    digest, file, line) ("positions"), per shard of the digest space, from which the few repeated
    ids are found without shuffling every row by sample id.
    """

    def start_bundle(self):
        super().start_bundle()
        self._digests, self._position_files, self._position_lines = bytearray(), array.array("I"), array.array("Q")
        self._run_key, self._run_file, self._run_first, self._run = None, -1, 0, []

    def _run_element(self):
        lines = self._compress(b"\n".join(self._run))
        element = self._run_key, (_SAMPLE, self._run_file, self._run_first, lines)
        self._run_key, self._run = None, []
        return element

    def _positions(self):
        """The buffered positions as (shard, array) pairs: equal digests share a shard."""
        positions = np.empty(len(self._position_lines), _POSITION)
        digests = np.frombuffer(bytes(self._digests), dtype=[("low", "<u8"), ("high", "<u8")])
        positions["low"], positions["high"] = digests["low"], digests["high"]
        positions["file"], positions["line"] = self._position_files, self._position_lines
        self._digests, self._position_files, self._position_lines = bytearray(), array.array("I"), array.array("Q")
        shards = positions["high"] >> np.uint64(64 - _SHARD_BITS)
        return [(int(shard), positions[shards == shard]) for shard in np.unique(shards)]

    def finish_bundle(self):
        super().finish_bundle()
        if self._run:
            yield GlobalWindows.windowed_value(self._run_element())
        if self._position_lines:
            for shard in self._positions():
                yield beam.pvalue.TaggedOutput("positions", GlobalWindows.windowed_value(shard))

    def process(self, element):
        path, line_no, raw = element
        self._counts["lines/samples"] += 1
        try:
            sample_id, click, conversion, common_index = self._parser.skeleton(formats.decode_line(raw))
        except r.Malformed as e:
            yield self.reject("samples", path, line_no, e.reason, e.detail, raw)
            return
        if conversion and not click:
            self._counts[f"dropped/{r.CONVERSION_WITHOUT_CLICK}"] += 1
            return
        role, file = self._roles[path], self._index[path]
        self._digests += sample_id_digest(role, sample_id)
        self._position_files.append(file)
        self._position_lines.append(line_no)
        if len(self._position_lines) >= _POSITIONS_PER_OUTPUT:
            for shard in self._positions():
                yield beam.pvalue.TaggedOutput("positions", shard)
        key = (role, common_index)
        continues = (
            key == self._run_key
            and file == self._run_file
            and line_no == self._run_first + len(self._run)
            and len(self._run) < _MAX_RUN_LINES
        )
        if not continues:
            if self._run:
                yield self._run_element()
            self._run_key, self._run_file, self._run_first = key, file, line_no
        self._run.append(raw)


class _FirstOfRepeatedIds(beam.CombineFn):
    """{digest: (file, line) of its first line} for the sample-id digests of one shard seen more
    than once."""

    def create_accumulator(self):
        return []

    def add_input(self, accumulator, positions):
        accumulator.append(positions)
        return accumulator

    def merge_accumulators(self, accumulators):
        return [positions for accumulator in accumulators for positions in accumulator]

    def extract_output(self, accumulator):
        positions = np.concatenate(accumulator) if accumulator else np.zeros(0, _POSITION)
        positions = positions[np.lexsort((positions["line"], positions["file"], positions["low"], positions["high"]))]
        same_as_previous = (positions["low"][1:] == positions["low"][:-1]) & (
            positions["high"][1:] == positions["high"][:-1]
        )
        firsts = positions[:-1][same_as_previous & ~np.concatenate([[False], same_as_previous[:-1]])]
        return {struct.pack("<QQ", p["low"], p["high"]): (int(p["file"]), int(p["line"])) for p in firsts}


def _merge_dicts(dicts) -> dict:
    merged = {}
    for d in dicts:
        merged.update(d)
    return merged


class _ParseCommon(_ParseRawLines):
    def process(self, element):
        path, line_no, raw = element
        self._counts["lines/common"] += 1
        try:
            common_index = self._parser.common(formats.decode_line(raw))
        except r.Malformed as e:
            yield self.reject("common", path, line_no, e.reason, e.detail, raw)
            return
        yield (self._roles[path], common_index), (_COMMON, self._index[path], line_no, self._compress(raw))


class _Join(_Counting):
    """One common_feature_index: its common line (the first, if repeated) joined to its samples.

    A sample whose id was seen before (by file and line, anywhere) is rejected as a duplicate.
    Joined lines wait in a batch of about `_JOIN_BATCH` samples, encoded together
    (`formats.aliccp_examples`).
    """

    def __init__(self, files: list, eval_fraction: float):
        self._files, self._eval_fraction = files, eval_fraction

    def setup(self):
        self._decompress = zstandard.ZstdDecompressor().decompress
        self._joined = 0

    def start_bundle(self):
        super().start_bundle()
        self._commons, self._samples, self._common_of_sample, self._splits = [], [], [], []

    def process(self, element, first_of_repeated):
        (role, common_index), values = element
        commons, samples = [], []
        for value in values:
            (commons if value[0] == _COMMON else samples).append(value)
        commons.sort()
        commons = [(kind, file, line_no, self._decompress(raw)) for kind, file, line_no, raw in commons]
        files = self._files
        for _, file, line_no, raw in commons[1:]:
            yield self.reject(
                "common",
                files[file],
                line_no,
                r.DUPLICATE_COMMON_FEATURE_INDEX,
                f"{common_index} first seen at {files[commons[0][1]]}:{commons[0][2]}",
                raw,
            )
        samples = [
            (file, first + i, raw)
            for _, file, first, run in samples
            for i, raw in enumerate(self._decompress(run).split(b"\n"))
        ]
        if not commons:
            for file, line_no, raw in samples:
                yield self.reject(
                    "samples",
                    files[file],
                    line_no,
                    r.UNKNOWN_COMMON_FEATURE_INDEX,
                    f"no common_features line has index {common_index!r}",
                    raw,
                )
            return
        self._counts["common/joined" if samples else "common/unreferenced"] += 1
        if not samples:
            return
        common_row = len(self._commons)
        self._commons.append(commons[0][3])
        for file, line_no, raw in samples:
            sample_id = raw.split(b",", 1)[0].decode("utf-8")
            if first_of_repeated:
                first = first_of_repeated.get(sample_id_digest(role, sample_id), (file, line_no))
                if first != (file, line_no):
                    yield self.reject(
                        "samples",
                        files[file],
                        line_no,
                        r.DUPLICATE_SAMPLE_ID,
                        f"sample_id {sample_id} first seen at {files[first[0]]}:{first[1]}",
                        raw,
                    )
                    continue
            self._samples.append(raw)
            self._common_of_sample.append(common_row)
            self._splits.append(split_of(role, sample_id, self._eval_fraction))
        if len(self._samples) >= _JOIN_BATCH:
            yield from self._encode()

    def finish_bundle(self):
        for output in self._encode():
            yield beam.pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
        super().finish_bundle()

    def _encode(self):
        """The waiting samples' examples, written to their splits."""
        examples = formats.aliccp_examples(self._commons, self._samples, self._common_of_sample)
        framed = collections.defaultdict(list)
        for split, example in zip(self._splits, examples):
            framed[split].append(records.tfrecord_frame(example))
        self._commons, self._samples, self._common_of_sample, self._splits = [], [], [], []
        for split, split_records in framed.items():
            yield self.write(split, b"".join(split_records), len(split_records))
        before, self._joined = self._joined, self._joined + len(examples)
        if before // _PROGRESS_EVERY != self._joined // _PROGRESS_EVERY:
            _LOG.info("joined %s samples with their common features", f"{self._joined:,}")


def _discover(config: IngestConfig) -> tuple[dict, dict]:
    """{path: role} and {path: parser or kind} for the format; InputError if paths or layouts are wrong."""
    source = config.input
    if config.format not in FORMATS:
        raise InputError(f"--format {config.format!r} is not one of {', '.join(FORMATS)}")
    if not FileSystems.exists(source):
        raise InputError(f"--input {source} does not exist")
    listing = FileSystems.match([FileSystems.join(source, "*")])[0].metadata_list
    is_dir = bool(listing)
    if config.format == "aliccp-raw":
        if not is_dir:
            raise InputError(f"--input {source} must be a folder holding {', '.join(ALICCP_RAW_FILES)}")
        found = {
            FileSystems.join(source, n): v
            for n, v in ALICCP_RAW_FILES.items()
            if FileSystems.exists(FileSystems.join(source, n))
        }
        missing = [n for n in ALICCP_RAW_FILES if FileSystems.join(source, n) not in found]
        if missing:
            raise InputError(f"--input {source} lacks {', '.join(missing)} (aliccp-raw needs all four files)")
        return {p: role for p, (_, role) in found.items()}, {p: kind for p, (kind, _) in found.items()}
    if config.format == "aliexpress":
        if not is_dir:
            raise InputError(f"--input {source} must be a folder holding train.csv and test.csv")
        paths = {FileSystems.join(source, n): role for n, role in ALIEXPRESS_FILES.items()}
        missing = [posixpath.basename(p) for p in paths if not FileSystems.exists(p)]
        if missing:
            raise InputError(f"--input {source} lacks {', '.join(missing)}")
        return paths, {p: _detect(p, formats.detect_aliexpress) for p in paths}
    paths = sorted(m.path for m in listing) if is_dir else [source]
    paths = [p for p in paths if p.endswith((".csv", ".txt"))]
    if not paths:
        raise InputError(f"--input {source} holds no .csv or .txt file")
    roles = {p: _role_from_name(p) for p in paths}
    return roles, {p: _detect(p, formats.detect_aliccp_csv) for p in paths}


def _role_from_name(path: str) -> str:
    """test or eval when a word of the file name says so (`x_test_1.csv`, `val.csv`), else train."""
    words = set(re.split(r"[^a-z0-9]+", posixpath.basename(path).lower()))
    if "test" in words:
        return "test"
    if words & {"val", "valid", "validation", "eval"}:
        return "eval"
    return "train"


def _detect(path: str, detect, lines_to_try: int = 5):
    """The layout of a file from its first line, or from the next ones if that is malformed."""
    with FileSystems.open(path, compression_type="uncompressed") as f:
        lines = [f.readline() for _ in range(lines_to_try)]
    lines = [line.removeprefix(UTF8_BOM).decode("utf-8", "replace") for line in lines]
    errors = []
    for line in (line for line in lines if line.strip()):
        try:
            return detect(line)
        except ValueError as e:
            errors.append(str(e))
    raise InputError(f"{path}: {errors[0] if errors else 'the file has no line to tell its layout from'}")


def build(p: beam.Pipeline, config: IngestConfig, roles: dict, kinds: dict) -> None:
    outputs = list(SPLITS) + [REJECTED]
    if config.format == "aliccp-raw":
        files = list(kinds)
        skeleton = [path for path in files if kinds[path] == "skeleton"]
        common = [path for path in files if kinds[path] == "common"]
        samples = (
            p
            | "ReadSamples" >> ReadNumberedLines(skeleton, config.range_bytes)
            | "ParseSamples"
            >> beam.ParDo(_ParseSkeleton(files, roles)).with_outputs("rejected", "positions", main="ok")
        )
        first_of_repeated = (
            samples.positions
            | "RepeatedIdsPerShard" >> beam.CombinePerKey(_FirstOfRepeatedIds())
            | "DropShard" >> beam.Values()
            | "RepeatedIds" >> beam.CombineGlobally(_merge_dicts)
        )
        commons = (
            p
            | "ReadCommon" >> ReadNumberedLines(common, config.range_bytes)
            | "ParseCommon" >> beam.ParDo(_ParseCommon(files, roles)).with_outputs("rejected", main="ok")
        )
        joined = (
            (commons.ok, samples.ok)
            | "CommonAndSamples" >> beam.Flatten()
            | "ByCommonIndex" >> beam.GroupByKey()
            | "Join"
            >> beam.ParDo(_Join(files, config.eval_fraction), beam.pvalue.AsSingleton(first_of_repeated)).with_outputs(
                *outputs
            )
        )
        rejected = (samples.rejected, commons.rejected, joined.rejected)
        examples = {split: joined[split] for split in SPLITS}
    else:
        parsed = (
            p
            | "Read" >> ReadNumberedLines(list(roles), config.range_bytes)
            | "Parse" >> beam.ParDo(_ParseRows(kinds, roles, config.eval_fraction)).with_outputs(*outputs)
        )
        rejected = (parsed.rejected,)
        examples = {split: parsed[split] for split in SPLITS}
    for split in SPLITS:
        _ = examples[split] | f"Write{split.title()}" >> beam.io.Write(
            FramedRecordSink(FileSystems.join(config.output, EXAMPLES, split, "data"))
        )
    _ = (
        rejected
        | "AllRejected" >> beam.Flatten()
        | "WriteRejected"
        >> beam.io.WriteToText(FileSystems.join(config.output, REJECTED, "rejected"), file_name_suffix=".jsonl")
    )


def stats_from_counters(counters: dict[str, int], config: IngestConfig, layouts: dict) -> dict:
    def under(prefix):
        return {k[len(prefix) :]: v for k, v in sorted(counters.items()) if k.startswith(prefix)}

    samples = {
        "lines_read": counters.get("lines/samples", 0),
        "written": {split: counters.get(f"written/{split}", 0) for split in SPLITS},
        "rejected": under("rejected/samples/"),
        "dropped": under("dropped/"),
    }
    stats = {
        "format": config.format,
        "input": config.input,
        "eval_fraction": config.eval_fraction,
        "layouts": layouts,
        "samples": samples,
    }
    if config.format == "aliccp-raw":
        stats["common_features"] = {
            "lines_read": counters.get("lines/common", 0),
            "joined": counters.get("common/joined", 0),
            "unreferenced": counters.get("common/unreferenced", 0),
            "rejected": under("rejected/common/"),
        }
    stats["lines_read"] = samples["lines_read"] + stats.get("common_features", {}).get("lines_read", 0)
    stats["written"] = sum(samples["written"].values())
    stats["rejected"] = sum(samples["rejected"].values()) + sum(
        stats.get("common_features", {}).get("rejected", {}).values()
    )
    stats["dropped"] = sum(samples["dropped"].values())
    return stats


def check_accounting(stats: dict) -> list[str]:
    """Lines that the counts do not account for (empty when read = written + rejected + dropped)."""
    problems = []
    s = stats["samples"]
    accounted = sum(s["written"].values()) + sum(s["rejected"].values()) + sum(s["dropped"].values())
    if s["lines_read"] != accounted:
        problems.append(f"sample lines read {s['lines_read']} != written + rejected + dropped {accounted}")
    if "common_features" in stats:
        c = stats["common_features"]
        accounted = c["joined"] + c["unreferenced"] + sum(c["rejected"].values())
        if c["lines_read"] != accounted:
            problems.append(f"common lines read {c['lines_read']} != joined + unreferenced + rejected {accounted}")
    return problems


def discover(config: IngestConfig) -> tuple[dict, dict]:
    """({path: split role}, {path: parser or kind}) of the input files for the format, from their
    names and first lines only; InputError naming what is wrong. No pipeline starts."""
    try:
        return _discover(config)
    except (BeamIOError, OSError) as e:
        raise InputError(f"--input {config.input}: {e}") from None


def run(config: IngestConfig) -> dict:
    """Runs ExampleGen; returns the stats also written to <output>/stats.json."""
    if not 0.0 <= config.eval_fraction < 1.0:
        raise InputError(f"--eval-fraction {config.eval_fraction} must be in [0, 1)")
    roles, kinds = discover(config)
    options = pipeline_options(config.runner, config.beam_args)
    check_writable(config.output)
    layouts = {posixpath.basename(p): (k if isinstance(k, str) else k.schema.name) for p, k in kinds.items()}
    clear_outputs(config.output, (EXAMPLES, REJECTED, STATS), "ExampleGen", config.overwrite)
    size = sum(FileSystems.match([p])[0].metadata_list[0].size_in_bytes for p in roles)
    _LOG.info("ExampleGen: %s, %d files, %.1f MB -> %s", config.format, len(roles), size / 1e6, config.output)
    started = time.perf_counter()
    p = beam.Pipeline(options=options)
    build(p, config, roles, kinds)
    result = p.run()
    result.wait_until_finish()
    stats = stats_from_counters(counters(result, _NAMESPACE), config, layouts)
    stats["seconds"] = round(time.perf_counter() - started, 2)
    problems = check_accounting(stats)
    if problems:
        raise RuntimeError("ExampleGen lost track of lines: " + "; ".join(problems))
    with FileSystems.create(FileSystems.join(config.output, STATS)) as f:
        f.write(json.dumps(stats, indent=2).encode())
    return stats
