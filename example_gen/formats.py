"""Parsers for one raw line of each input layout; each returns tf.Example parts or raises Malformed.

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
    """Per-source tf.Example keys of a schema, looked up once per line."""

    def __init__(self, schema: F.Schema):
        self.schema = schema
        self.keys = {f.source: (f.key, F.weight_key(f), 1 << i) for i, f in enumerate(schema.fields)}

    def keys_of(self, source: str) -> tuple[str, str, int]:
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
    """Ali-CCP raw lines to (keys, Features bytes) parts, joined later on common_feature_index."""

    def __init__(self):
        self._fields = _FieldKeys(F.ALICCP_RAW)

    def _feature_list(self, feature_num: str, feature_list: str, encode: bool, validated: bool = False):
        """(bit mask of the fields present, {key: ids}, {weight key: weights}) of a feature_list
        column; with encode=False only validates, and returns (0, {}, {})."""
        if not _COUNT_RE.fullmatch(feature_num):
            raise r.Malformed(r.FEATURE_NUM_MISMATCH, f"feature_num {feature_num!r} is not an integer")
        expected = int(feature_num)
        n_entries = feature_list.count("\x01") + 1 if feature_list else 0
        if n_entries != expected:
            raise r.Malformed(r.FEATURE_NUM_MISMATCH, f"feature_num is {expected} but the list has {n_entries} entries")
        if not feature_list or (not encode and _SURELY_VALID.fullmatch(feature_list)):
            return 0, {}, {}
        grouped = self._group(*self._entries(feature_list, validated))
        return grouped if encode else (0, {}, {})

    def _entries(self, feature_list: str, validated: bool) -> tuple[list, list, list]:
        """(fields, ids, weights): converted at C speed when well formed (or `validated` before),
        else entry by entry so that the first bad entry names the reason."""
        if validated or _WELL_FORMED.fullmatch(feature_list):
            flat = feature_list.replace("\x02", "\x01").replace("\x03", "\x01").split("\x01")
            ids, weights = list(map(int, flat[1::3])), list(map(float, flat[2::3]))
            if max(ids) < 2**63 and min(ids) >= -(2**63) and all(map(math.isfinite, weights)):
                return flat[0::3], ids, weights
        sources, ids, weights = [], [], []
        for entry in feature_list.split("\x01"):
            source, sep, rest = entry.partition("\x02")
            id_text, sep2, weight_text = rest.partition("\x03")
            if not sep or not sep2 or "\x02" in rest or "\x03" in weight_text:
                raise r.Malformed(r.MALFORMED_ENTRY, f"entry {entry!r} is not field\\x02id\\x03weight")
            self._fields.keys_of(source)
            sources.append(source)
            ids.append(parse_id(id_text, source))
            weights.append(parse_float(weight_text, source, r.UNPARSABLE_WEIGHT))
        return sources, ids, weights

    def _group(self, sources, ids, weights) -> tuple[int, dict, dict]:
        by_key: dict[str, list[int]] = {}
        weights_by_key: dict[str, list[float]] = {}
        mask = 0
        keys = self._fields.keys
        for source, id_, weight in zip(sources, ids, weights):
            key, weight_key, bit = keys.get(source) or self._fields.keys_of(source)
            if key in by_key:
                by_key[key].append(id_)
                weights_by_key[weight_key].append(weight)
            else:
                by_key[key], weights_by_key[weight_key] = [id_], [weight]
                mask |= bit
        return mask, by_key, weights_by_key

    def skeleton(self, text: str, encode: bool = True, validated: bool = False):
        """(sample_id, click, conversion, common_feature_index, field mask, Features bytes), where
        the Features hold the labels, the sample id and this line's fields (b"" with encode=False)."""
        columns = text.split(",")
        if len(columns) != 6:
            raise r.Malformed(r.WRONG_COLUMN_COUNT, f"{len(columns)} columns, a sample_skeleton row has 6")
        sample_id, click, conversion, common_index, feature_num, feature_list = columns
        if not sample_id.strip():
            raise r.Malformed(r.BAD_SAMPLE_ID, "sample_id is empty")
        click_label = parse_label(click, F.CLICK)
        conversion_label = parse_label(conversion, F.CONVERSION)
        mask, ids, weights = self._feature_list(feature_num, feature_list, encode, validated)
        if not encode:
            return sample_id, click_label, conversion_label, common_index, mask, b""
        ids[F.CLICK], ids[F.CONVERSION] = [click_label], [conversion_label]
        part = records.encode_features(ids, weights, {F.SAMPLE_ID: sample_id.encode()})
        return sample_id, click_label, conversion_label, common_index, mask, part

    def common(self, text: str, encode: bool = True, validated: bool = False):
        """(common_feature_index, field mask, Features bytes with the index and this line's fields);
        (index, 0, b"") with encode=False."""
        columns = text.split(",")
        if len(columns) != 3:
            raise r.Malformed(r.WRONG_COLUMN_COUNT, f"{len(columns)} columns, a common_features row has 3")
        common_index, feature_num, feature_list = columns
        if not common_index.strip():
            raise r.Malformed(r.WRONG_COLUMN_COUNT, "common_feature_index is empty")
        mask, ids, weights = self._feature_list(feature_num, feature_list, encode, validated)
        if not encode:
            return common_index, 0, b""
        return (
            common_index,
            mask,
            records.encode_features(ids, weights, {F.COMMON_FEATURE_INDEX: common_index.encode()}),
        )


def aliccp_example(common: tuple[int, bytes], sample: tuple[int, bytes]) -> bytes:
    """The joined example of a common line's and a sample line's (field mask, Features bytes)."""
    (common_mask, common_part), (sample_mask, sample_part) = common, sample
    if common_mask & sample_mask:  # a field on both sides: merge its values
        return records.example_from_features(records.merge_features(common_part, sample_part))
    return records.example_from_features(common_part, sample_part)


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
            key, _, _ = self._fields.keys_of(source)
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
