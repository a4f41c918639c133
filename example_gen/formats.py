"""Parsers for one raw line of each input layout, which raise Malformed for a bad line; the
single-file layouts' return the line's tf.Example, Ali-CCP raw lines are encoded in batches after
the join (`aliccp_examples`).

Layouts:
- Ali-CCP raw: `sample_skeleton_*.csv` rows (sample_id, click, conversion,
  common_feature_index, feature_num, feature_list) and `common_features_*.csv` rows
  (common_feature_index, feature_num, feature_list); feature_list entries are separated by
  \\x01, each `field\\x02id\\x03weight`. Every entry is kept, in order, with its weight.
- Ali-CCP preprocessed CSV: torch-rechub's 33 columns (ids plus `D<field>` weights) and AITM's
  20 columns, each with or without a header line.
- Ali-CCP key-value: PaddleRec's ESMM sample (`row,click,purchase,field:id,...`, repeated keys)
  and FDN's joined sample (`sample_id,click,purchase,field:id#id#...`).
- AliExpress (MTReclib): search_id, categorical_1..16, numerical_1..63, click, conversion.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tfx_bsl.coders import example_coder

from example_gen import reasons as r
from common import records
from transform import features as F


def decode_line(raw: bytes) -> str:
    """The text of a line (without its end of line), or Malformed for an empty or non-UTF-8 line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise r.Malformed(r.BAD_ENCODING, f"byte {e.start} is not UTF-8") from None
    if not text.strip():
        raise r.Malformed(r.EMPTY_LINE)
    return text


def parse_label(text: str, name: str) -> int:
    if text == "0":
        return 0
    if text == "1":
        return 1
    raise r.Malformed(r.BAD_LABEL, f"{name} is {text!r}, not 0 or 1")


# Python's int() and float() also take spaces, underscores and non-ASCII digits: not in our data.
_INTEGER = "-?[0-9]+"
_DECIMAL = "-?(?:[0-9]+(?:\\.[0-9]*)?|\\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_INTEGER_RE, _DECIMAL_RE, _COUNT_RE = re.compile(_INTEGER), re.compile(_DECIMAL), re.compile("[0-9]+")


def parse_id(text: str, field: str) -> int:
    if not _INTEGER_RE.fullmatch(text):
        raise r.Malformed(r.UNPARSABLE_ID, f"field {field}: id {text!r} is not an integer")
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise r.Malformed(r.UNPARSABLE_ID, f"field {field}: id {text!r} does not fit in int64")
    return value


def parse_float(text: str, field: str, reason: str) -> float:
    if not _DECIMAL_RE.fullmatch(text):
        raise r.Malformed(reason, f"field {field}: {text!r} is not a decimal number")
    value = float(text)
    if not math.isfinite(value):
        raise r.Malformed(reason, f"field {field}: {text!r} is not finite")
    return value


class _FieldKeys:
    """The tf.Example key of each source field of a schema."""

    def __init__(self, schema: F.Schema):
        self.schema = schema
        self.keys = {f.source: f.key for f in schema.fields}

    def key_of(self, source: str) -> str:
        try:
            return self.keys[source]
        except KeyError:
            raise r.Malformed(r.UNKNOWN_FIELD, f"field {source!r} is not in {self.schema.name}") from None


def _entry_list(field: str, integer: str, decimal: str) -> re.Pattern:
    entry = f"{field}\x02{integer}\x03{decimal}"
    return re.compile(f"{entry}(?:\x01{entry})*")


# Entries whose ids and weights convert without error (range and finiteness still checked).
_WELL_FORMED = _entry_list("[^\x01\x02\x03]*", _INTEGER, _DECIMAL)
# Lines this matches are valid as they stand: known fields, ids of at most 18 digits (so
# int64), weights with at most 2-digit exponents (so finite). It lets validation skip conversion.
_SURELY_VALID = _entry_list(
    f"(?:{'|'.join(re.escape(f.source) for f in F.ALICCP_RAW.fields)})",
    "-?[0-9]{1,18}",
    "-?(?:[0-9]+(?:\\.[0-9]*)?|\\.[0-9]+)(?:[eE][-+]?[0-9]{1,2})?",
)


class AliccpRawParser:
    """Validates Ali-CCP raw lines; `aliccp_examples` encodes them once they are joined on
    common_feature_index."""

    def __init__(self):
        self._fields = _FieldKeys(F.ALICCP_RAW)

    def _check_feature_list(self, feature_num: str, feature_list: str, exact: bool) -> None:
        """Malformed unless the feature_list column holds `feature_num` valid entries. A regex
        accepts most valid lists at once; the others, and all with `exact`, are checked by
        converting their entries (see `_check_entries`)."""
        if not _COUNT_RE.fullmatch(feature_num):
            raise r.Malformed(r.FEATURE_NUM_MISMATCH, f"feature_num {feature_num!r} is not an integer")
        expected = int(feature_num)
        n_entries = feature_list.count("\x01") + 1 if feature_list else 0
        if n_entries != expected:
            raise r.Malformed(r.FEATURE_NUM_MISMATCH, f"feature_num is {expected} but the list has {n_entries} entries")
        if feature_list and (exact or not _SURELY_VALID.fullmatch(feature_list)):
            self._check_entries(feature_list)

    def _check_entries(self, feature_list: str) -> None:
        """Converts the ids and weights at C speed when the list is well formed, else entry by
        entry, so that the first bad entry names the reason."""
        if _WELL_FORMED.fullmatch(feature_list):
            flat = feature_list.replace("\x02", "\x01").replace("\x03", "\x01").split("\x01")
            ids, weights = list(map(int, flat[1::3])), list(map(float, flat[2::3]))
            if max(ids) < 2**63 and min(ids) >= -(2**63) and all(map(math.isfinite, weights)):
                for source in dict.fromkeys(flat[0::3]):
                    self._fields.key_of(source)
                return
        for entry in feature_list.split("\x01"):
            source, sep, rest = entry.partition("\x02")
            id_text, sep2, weight_text = rest.partition("\x03")
            if not sep or not sep2 or "\x02" in rest or "\x03" in weight_text:
                raise r.Malformed(r.MALFORMED_ENTRY, f"entry {entry!r} is not field\\x02id\\x03weight")
            self._fields.key_of(source)
            parse_id(id_text, source)
            parse_float(weight_text, source, r.UNPARSABLE_WEIGHT)

    def skeleton(self, text: str, exact: bool = False) -> tuple[str, int, int, str]:
        """(sample_id, click, conversion, common_feature_index) of a valid sample_skeleton line."""
        columns = text.split(",")
        if len(columns) != 6:
            raise r.Malformed(r.WRONG_COLUMN_COUNT, f"{len(columns)} columns, a sample_skeleton row has 6")
        sample_id, click, conversion, common_index, feature_num, feature_list = columns
        if not sample_id.strip():
            raise r.Malformed(r.BAD_SAMPLE_ID, "sample_id is empty")
        click_label = parse_label(click, F.CLICK)
        conversion_label = parse_label(conversion, F.CONVERSION)
        self._check_feature_list(feature_num, feature_list, exact)
        return sample_id, click_label, conversion_label, common_index

    def common(self, text: str, exact: bool = False) -> str:
        """The common_feature_index of a valid common_features line."""
        columns = text.split(",")
        if len(columns) != 3:
            raise r.Malformed(r.WRONG_COLUMN_COUNT, f"{len(columns)} columns, a common_features row has 3")
        common_index, feature_num, feature_list = columns
        if not common_index.strip():
            raise r.Malformed(r.WRONG_COLUMN_COUNT, "common_feature_index is empty")
        self._check_feature_list(feature_num, feature_list, exact)
        return common_index


def _entry_columns(lines: list[bytes], list_column: int, source_index: dict) -> tuple:
    """The entries of validated lines' feature_list (column `list_column`), in line order, as
    (line of each entry, field index, ids int64, weights float32), and the lines' columns."""
    columns = pc.split_pattern(pa.array(lines, pa.binary()), b",")
    feature_lists = pc.list_element(columns, list_column)
    empty = pc.equal(pc.binary_length(feature_lists), 0).to_numpy(zero_copy_only=False)
    counts = np.where(empty, 0, pc.count_substring(feature_lists, b"\x01").to_numpy() + 1)
    separated = pc.replace_substring(pc.replace_substring(feature_lists, b"\x02", b"\x01"), b"\x03", b"\x01")
    tokens = pc.list_flatten(pc.split_pattern(separated, b"\x01"))
    tokens = tokens.filter(pa.array(np.repeat(~empty, np.where(empty, 1, 3 * counts))))  # an empty list splits to [""]
    sources = pc.dictionary_encode(tokens[0::3])
    codes = np.array([source_index[s.decode()] for s in sources.dictionary.to_pylist()], np.int64)
    fields = codes[sources.indices.to_numpy(zero_copy_only=False)]
    ids = pc.cast(tokens[1::3].cast(pa.string()), pa.int64()).to_numpy(zero_copy_only=False)
    # through float64, as float() rounds the text before the float_list rounds it to float32
    weights = pc.cast(pc.cast(tokens[2::3].cast(pa.string()), pa.float64()), pa.float32())
    return (np.repeat(np.arange(len(lines)), counts), fields, ids, weights.to_numpy(zero_copy_only=False)), columns


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _runs(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions of runs of `lengths` consecutive places from `starts`, one run after another."""
    return np.arange(lengths.sum()) + np.repeat(starts - _offsets(lengths)[:-1], lengths)


def _list_array(offsets: np.ndarray, values: pa.Array) -> pa.LargeListArray:
    """A list per sample; 64-bit offsets, as one heavy user's values can pass 2**31 in a batch."""
    return pa.LargeListArray.from_arrays(pa.array(offsets), values)


def _fields_of_joined(common_lines: list[bytes], sample_lines: list[bytes], common_of_sample: np.ndarray):
    """([key], [list array of the samples], [whether each sample has the key]) of the fields, and
    the common and sample lines' columns."""
    fields = F.ALICCP_RAW.fields
    source_index = {f.source: i for i, f in enumerate(fields)}
    sides, columns = [], []
    for lines, list_column in ((common_lines, 2), (sample_lines, 5)):
        (rows, field_of, ids, weights), line_columns = _entry_columns(lines, list_column, source_index)
        order = np.argsort(field_of, kind="stable")  # by field, then line, then place in the line
        sides.append((rows[order], ids[order], weights[order], _offsets(np.bincount(field_of, minlength=len(fields)))))
        columns.append(line_columns)
    (c_rows, c_ids, c_weights, c_by_field), (s_rows, s_ids, s_weights, s_by_field) = sides
    keys, arrays, present = [], [], []
    for i, field in enumerate(fields):
        c, s = slice(c_by_field[i], c_by_field[i + 1]), slice(s_by_field[i], s_by_field[i + 1])
        if c.start == c.stop and s.start == s.stop:
            continue
        c_offsets = _offsets(np.bincount(c_rows[c], minlength=len(common_lines)))
        c_lengths = np.diff(c_offsets)[common_of_sample]
        taken = _runs(c_offsets[common_of_sample], c_lengths)
        s_lengths = np.bincount(s_rows[s], minlength=len(sample_lines))
        offsets = _offsets(c_lengths + s_lengths)
        # a sample's list: its common line's values, then its own
        to_common, to_sample = _runs(offsets[:-1], c_lengths), _runs(offsets[:-1] + c_lengths, s_lengths)
        for key, c_values, s_values in ((field.key, c_ids, s_ids), (F.weight_key(field), c_weights, s_weights)):
            values = np.empty(offsets[-1], c_values.dtype)
            values[to_common], values[to_sample] = c_values[c][taken], s_values[s]
            keys.append(key)
            arrays.append(_list_array(offsets, pa.array(values)))
            present.append(offsets[1:] > offsets[:-1])
    return keys, arrays, present, columns


def aliccp_examples(common_lines: list[bytes], sample_lines: list[bytes], common_of_sample) -> list[bytes]:
    """Serialized tf.Examples of validated sample_skeleton lines, each joined to its common_features
    line `common_lines[common_of_sample[i]]`: every entry of both lines in order under its field's
    key and weight key (a field on both lines: the common line's values first), the labels, the
    sample_id and the common_feature_index. A field on neither line is absent from the example.

    Built column by column (Arrow's string kernels, numpy, tfx-bsl's C++ encoder): one proto per
    line, built in Python, took about 3x as long, and was half of ExampleGen's time.
    """
    n = len(sample_lines)
    if not n:
        return []
    common_of_sample = np.asarray(common_of_sample, np.int64)
    keys, arrays, present, (common_columns, sample_columns) = _fields_of_joined(
        common_lines, sample_lines, common_of_sample
    )
    one_each = np.arange(n + 1)
    labels = [pc.cast(pc.list_element(sample_columns, i).cast(pa.string()), pa.int64()) for i in (1, 2)]
    always = {
        F.CLICK: labels[0],
        F.CONVERSION: labels[1],
        F.SAMPLE_ID: pc.list_element(sample_columns, 0),
        F.COMMON_FEATURE_INDEX: pc.list_element(common_columns, 0).take(pa.array(common_of_sample)),
    }
    table = pa.RecordBatch.from_arrays(
        arrays + [_list_array(one_each, values) for values in always.values()], keys + list(always)
    )
    # The encoder writes a null list as an empty Feature: samples with the same keys go together,
    # each group with only its keys.
    has = np.stack(present, axis=1) if present else np.zeros((n, 0), bool)
    _, group_of = np.unique(np.packbits(has, axis=1), axis=0, return_inverse=True)
    group_of = group_of.ravel()
    examples = [b""] * n
    order = np.argsort(group_of, kind="stable")
    for rows in np.split(order, np.flatnonzero(np.diff(group_of[order])) + 1):
        columns = table.select([*np.flatnonzero(has[rows[0]]).tolist(), *range(len(keys), len(keys) + len(always))])
        for row, example in zip(rows, example_coder.RecordBatchToExamples(columns.take(pa.array(rows)))):
            examples[row] = example
    return examples


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A well-formed row of a single-file layout."""

    sample_id: str
    click: int
    conversion: int
    example: bytes


_LABEL_NAMES = {"click": F.CLICK, "purchase": F.CONVERSION, "conversion": F.CONVERSION}


class ColumnParser:
    """A fixed-column CSV layout (Ali-CCP torch-rechub or AITM, AliExpress)."""

    def __init__(self, schema: F.Schema, columns: tuple[str, ...], has_header: bool):
        self.schema, self.columns, self.has_header = schema, columns, has_header
        by_source = schema.by_source
        self._labels, self._ids, self._numerics, self._weights = {}, [], [], []
        self._search_id = None
        for i, name in enumerate(columns):
            if name in _LABEL_NAMES:
                self._labels[_LABEL_NAMES[name]] = i
            elif name == F.SEARCH_ID:
                self._search_id = i
            elif name in by_source:
                field = by_source[name]
                target = self._ids if field.kind is F.Kind.CATEGORICAL else self._numerics
                target.append((i, name, field.key))
            elif name.startswith("D") and name[1:] in schema.weighted:
                self._weights.append((i, name[1:], F.weight_key(by_source[name[1:]])))
            else:
                raise ValueError(f"column {name!r} is not part of {schema.name}")
        if set(self._labels) != set(F.LABELS):
            raise ValueError(f"{schema.name} layout needs both label columns, got {columns}")

    def parse(self, text: str, sample_id: str) -> Parsed:
        values = text.split(",")
        if len(values) != len(self.columns):
            raise r.Malformed(
                r.WRONG_COLUMN_COUNT, f"{len(values)} columns, {self.schema.name} has {len(self.columns)}"
            )
        click = parse_label(values[self._labels[F.CLICK]], F.CLICK)
        conversion = parse_label(values[self._labels[F.CONVERSION]], F.CONVERSION)
        int64s = {key: [parse_id(values[i], name)] for i, name, key in self._ids}
        floats = {key: [parse_float(values[i], name, r.UNPARSABLE_NUMERIC)] for i, name, key in self._numerics}
        for i, name, key in self._weights:
            floats[key] = [parse_float(values[i], name, r.UNPARSABLE_WEIGHT)]
        int64s[F.CLICK], int64s[F.CONVERSION] = [click], [conversion]
        if self._search_id is not None:
            int64s[F.SEARCH_ID] = [parse_id(values[self._search_id], F.SEARCH_ID)]
        example = records.example_from_features(
            records.encode_features(int64s, floats, {F.SAMPLE_ID: sample_id.encode()})
        )
        return Parsed(sample_id, click, conversion, example)


class KeyValueParser:
    """`sample_id,click,purchase,field:id[#id...],...` (PaddleRec ESMM, FDN); repeated keys append."""

    schema = F.ALICCP_KV
    has_header = False

    def __init__(self):
        self._fields = _FieldKeys(self.schema)

    def parse(self, text: str, sample_id: str) -> Parsed:
        columns = text.split(",")
        if len(columns) < 4:
            raise r.Malformed(r.WRONG_COLUMN_COUNT, f"{len(columns)} columns, a key-value row has at least 4")
        own_id, click, conversion = columns[:3]
        if not own_id.strip():
            raise r.Malformed(r.BAD_SAMPLE_ID, "sample_id is empty")
        click_label = parse_label(click, F.CLICK)
        conversion_label = parse_label(conversion, F.CONVERSION)
        ids: dict[str, list[int]] = {}
        for entry in columns[3:]:
            source, sep, id_text = entry.partition(":")
            if not sep or not id_text:
                raise r.Malformed(r.MALFORMED_ENTRY, f"entry {entry!r} is not field:id")
            key = self._fields.key_of(source)
            ids.setdefault(key, []).extend(parse_id(t, source) for t in id_text.split("#"))
        ids[F.CLICK], ids[F.CONVERSION] = [click_label], [conversion_label]
        example = records.example_from_features(records.encode_features(ids, strings={F.SAMPLE_ID: own_id.encode()}))
        return Parsed(own_id, click_label, conversion_label, example)


TORCHRECHUB_COLUMNS = (
    ("click", "purchase")
    + tuple(f.source for f in F.ALICCP_FIELDS if f.source not in ("301",) + F.ALICCP_BEHAVIOUR)
    + ("301",)
    + F.ALICCP_BEHAVIOUR
    + tuple(f"D{s}" for s in F.ALICCP_BEHAVIOUR + F.ALICCP_CROSSES)
)
AITM_COLUMNS = ("click", "purchase") + tuple(f.source for f in F.ALICCP_AITM.fields)
ALIEXPRESS_COLUMNS = (F.SEARCH_ID,) + tuple(f.source for f in F.ALIEXPRESS.fields) + ("click", "conversion")


def _detect(first_line: str, layouts, name: str) -> ColumnParser:
    columns = tuple(first_line.rstrip("\r\n").split(","))
    for schema, layout in layouts:
        if set(columns) == set(layout):
            return ColumnParser(schema, columns, has_header=True)
    if not all(_DECIMAL_RE.fullmatch(c) for c in columns):
        raise ValueError(f"first line {first_line[:120]!r} is neither a {name} header nor a data line")
    for schema, layout in layouts:
        if len(columns) == len(layout):
            return ColumnParser(schema, layout, has_header=False)
    sizes = " or ".join(str(len(layout)) for _, layout in layouts)
    raise ValueError(f"a line of {len(columns)} columns is not the {name} layout ({sizes} columns)")


def detect_aliccp_csv(first_line: str):
    """The parser for an Ali-CCP preprocessed file, from a line of it; ValueError if unknown."""
    columns = first_line.rstrip("\r\n").split(",")
    if len(columns) > 3 and ":" in columns[3]:
        return KeyValueParser()
    layouts = ((F.ALICCP_TORCHRECHUB, TORCHRECHUB_COLUMNS), (F.ALICCP_AITM, AITM_COLUMNS))
    return _detect(first_line, layouts, "torch-rechub or AITM Ali-CCP")


def detect_aliexpress(first_line: str) -> ColumnParser:
    return _detect(first_line, ((F.ALIEXPRESS, ALIEXPRESS_COLUMNS),), "MTReclib AliExpress")
