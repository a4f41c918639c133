"""`mtrank score`: raw rows in a file, scored by a TF Serving (or `mtrank serve`) REST endpoint.

Input: a single-file ingest layout (Ali-CCP torch-rechub, AITM or key-value CSV; AliExpress CSV;
detected from the first line), or JSON lines of `{raw feature key: value or list of ids}` with the
keys of the model's `predict` signature (e.g. "f101", "f109_14", "f109_14_weight"; an optional
"sample_id"). Rows go as serialized tf.Examples through `serving_default`, so an absent field is
simply absent. Output: CSV `line,sample_id,ctr,cvr,ctcvr,error`, one line per input row; a row
that cannot be read keeps its line with empty scores and the reason in `error`.
"""

from __future__ import annotations

import csv
import dataclasses
import json

from common import records
from example_gen import formats
from example_gen.reasons import Malformed
from serving.client import OUTPUTS, RestClient

_JSON_DTYPES = {"DT_INT64": "int64", "DT_FLOAT": "float"}
_FLOAT32_MAX = 3.4028234663852886e38


@dataclasses.dataclass
class Row:
    line: int
    sample_id: str
    example: bytes | None
    error: str = ""


def _json_row(text: str, line: int, dtypes: dict) -> Row:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        return Row(line, "", None, f"not JSON: {e}")
    if not isinstance(values, dict):
        return Row(line, "", None, "a JSON line must be an object of raw features")
    sample_id = str(values.pop("sample_id", ""))
    int64s, floats = {}, {}
    for key, value in values.items():
        if key not in dtypes:
            return Row(line, sample_id, None, f"unknown field {key!r}; the model takes {', '.join(sorted(dtypes))}")
        items = value if isinstance(value, list) else [value]
        if dtypes[key] == "int64":
            if not all(isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63 for v in items):
                return Row(line, sample_id, None, f"field {key!r} takes int64 ids, got {json.dumps(value)[:40]}")
            int64s[key] = items
        else:
            if not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= _FLOAT32_MAX for v in items
            ):
                return Row(line, sample_id, None, f"field {key!r} takes float32 numbers, got {json.dumps(value)[:40]}")
            floats[key] = items
    return Row(line, sample_id, records.example_from_features(records.encode_features(int64s, floats)))


def _csv_parser(first_line: str):
    errors = []
    for detect in (formats.detect_aliccp_csv, formats.detect_aliexpress):
        try:
            return detect(first_line)
        except ValueError as e:
            errors.append(str(e))
    raise ValueError("the input is neither JSON lines nor a known CSV layout: " + "; ".join(errors))


def read_rows(path: str, dtypes: dict):
    """Rows of `path`; `dtypes` is {feature key: "int64" | "float"} of the model's `predict` signature.
    The layout is checked at once (ValueError), the rows are read as they are iterated."""
    with open(path, encoding="utf-8-sig") as f:
        first = f.readline()
    is_json = first.lstrip().startswith("{")
    parser = None if is_json or not first.strip() else _csv_parser(first)
    if parser is not None and dtypes and not {f.key for f in parser.schema.fields} & set(dtypes):
        raise ValueError(f"its layout ({parser.schema.name}) shares no feature with the served model")
    return _rows(path, parser, dtypes)


def _rows(path: str, parser, dtypes: dict):
    with open(path, encoding="utf-8-sig") as f:
        if parser is not None and parser.has_header:
            f.readline()
        for number, text in enumerate(f, start=2 if parser is not None and parser.has_header else 1):
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            if parser is None:
                yield _json_row(text, number, dtypes)
                continue
            try:
                parsed = parser.parse(text, "")
                yield Row(number, parsed.sample_id, parsed.example)
            except Malformed as e:
                yield Row(number, "", None, str(e))


def signature_dtypes(client: RestClient) -> dict:
    """{input: "int64" | "float"} of the served model's `predict` signature."""
    definitions = client.metadata()["metadata"]["signature_def"]["signature_def"]
    if "predict" not in definitions:
        return {}
    return {
        name: _JSON_DTYPES.get(spec["dtype"], spec["dtype"]) for name, spec in definitions["predict"]["inputs"].items()
    }


def score(client: RestClient, path: str, out, batch_size: int = 1000, progress=None) -> dict:
    """Writes the scores CSV to `out`; returns {"rows": n, "scored": n, "rejected": n}."""
    rows = read_rows(path, signature_dtypes(client))
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["line", "sample_id", *OUTPUTS, "error"])
    counts = {"rows": 0, "scored": 0, "rejected": 0}
    batch: list[Row] = []

    def flush():
        good = [row for row in batch if row.example is not None]
        scores = client.predict_examples([row.example for row in good]) if good else {}
        position = {id(row): i for i, row in enumerate(good)}
        for row in batch:
            if row.example is None:
                writer.writerow([row.line, row.sample_id, "", "", "", row.error])
            else:
                i = position[id(row)]
                writer.writerow([row.line, row.sample_id, *(f"{scores[k][i]:.6g}" for k in OUTPUTS), ""])
        counts["scored"] += len(good)
        counts["rejected"] += len(batch) - len(good)
        if progress:
            progress(counts)
        batch.clear()

    for row in rows:
        counts["rows"] += 1
        batch.append(row)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return counts
