"""TF Serving's REST predict bodies to tensors and back.

Row form: `{"signature_name": S, "instances": [row, ...]}` answers `{"predictions": [...]}`.
Columnar form: `{"signature_name": S, "inputs": {name: batch} | batch}` answers `{"outputs": ...}`.
A row is `{input name: value}`, or the bare value when the signature has one input. Binary
strings travel as `{"b64": "..."}`. Every input of the signature must be given, every row must
have the same shape, and a value must fit its input's dtype and rank: otherwise `BadRequest`
names the input and the problem (HTTP 400, gRPC INVALID_ARGUMENT).
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np
import orjson
import tensorflow as tf

ROW, COLUMNAR = "instances", "inputs"


class BadRequest(ValueError):
    """A request that cannot be run: HTTP 400 with the message."""


def parse_body(body: bytes) -> tuple[str | None, str, object]:
    """(signature_name, form, payload) of a predict request body."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"JSON Parse error: {e}") from None
    if not isinstance(request, dict):
        raise BadRequest(f"JSON Value: the request body must be a JSON object, got {type(request).__name__}")
    unknown = set(request) - {"signature_name", ROW, COLUMNAR}
    if unknown:
        raise BadRequest(
            f"unknown key(s) {', '.join(sorted(map(repr, unknown)))}: a predict request has "
            "'signature_name' and one of 'instances' or 'inputs'"
        )
    if (ROW in request) == (COLUMNAR in request):
        raise BadRequest(
            "Missing 'inputs' or 'instances' key"
            if ROW not in request
            else "Not both 'inputs' and 'instances' can be set"
        )
    signature = request.get("signature_name")
    if signature is not None and not isinstance(signature, str):
        raise BadRequest(f"'signature_name' must be a string, got {json.dumps(signature)[:40]}")
    form = ROW if ROW in request else COLUMNAR
    return signature, form, request[form]


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _decode_strings(values, name: str):
    """Nested lists of strings or {"b64": ...} to nested lists of bytes."""
    if isinstance(values, list):
        return [_decode_strings(v, name) for v in values]
    if _is_b64(values):
        if not isinstance(values["b64"], str):
            raise BadRequest(f"input '{name}': a b64 value must be a string")
        try:
            return base64.b64decode(values["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"input '{name}': {values['b64'][:40]!r} is not valid base64") from None
    if isinstance(values, str):
        return values.encode()
    raise BadRequest(f"input '{name}' expects strings (or {{\"b64\": ...}}), got {json.dumps(values)[:40]}")


def _numeric(values, dtype: tf.DType, name: str, rows_in: str) -> np.ndarray:
    try:
        array = np.array(values)
    except ValueError:
        array = np.array(None, dtype=object)
    if array.dtype == object and _all_numbers(values):
        raise BadRequest(
            f"input '{name}': a value does not fit {dtype.name}"
            if _flat_ok(values)
            else f"input '{name}': {rows_in} have different shapes (pad lists to one length)"
        )
    kind = array.dtype.kind
    fits = kind in "iu" or (kind == "f" and (dtype.is_floating or np.all(np.mod(array, 1) == 0)))
    if array.size and not fits:
        raise BadRequest(f"input '{name}' expects {dtype.name} values, got {_first_misfit(values, dtype)}")
    info = np.iinfo(dtype.as_numpy_dtype) if dtype.is_integer else None
    if info is not None and array.size and (array.max() > info.max or array.min() < info.min):
        raise BadRequest(f"input '{name}': a value does not fit {dtype.name}")
    with np.errstate(over="ignore"):
        converted = array.astype(dtype.as_numpy_dtype)
    if info is None and array.size and np.isinf(converted).sum() > np.isinf(array).sum():
        raise BadRequest(f"input '{name}': a value does not fit {dtype.name}")
    return converted


def _all_numbers(values) -> bool:
    if isinstance(values, list):
        return all(_all_numbers(v) for v in values)
    return isinstance(values, (int, float)) and not isinstance(values, bool)


def _flat_ok(values) -> bool:
    """True when nested lists are rectangular (so an object array came from a huge integer)."""
    try:
        np.array(values, dtype=float)
        return True
    except ValueError:
        return False


def _first_misfit(values, dtype: tf.DType) -> str:
    stack = [values]
    while stack:
        value = stack.pop(0)
        if isinstance(value, list):
            stack[:0] = value
        elif (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (dtype.is_integer and not float(value).is_integer())
        ):
            return json.dumps(value)[:40]
    return "a non-number"


def _array(values, spec: tf.TensorSpec, name: str, rows_in: str) -> np.ndarray:
    """One input's batch as an array of the spec's dtype and rank; BadRequest when it isn't one."""
    try:
        return _checked_array(values, spec, name, rows_in)
    except RecursionError:
        raise BadRequest(
            f"input '{name}' is nested too deeply: the signature expects rank {spec.shape.rank - 1} per row"
        ) from None


def _checked_array(values, spec: tf.TensorSpec, name: str, rows_in: str) -> np.ndarray:
    if spec.dtype == tf.string:
        strings = _decode_strings(values, name)
        try:
            array = np.array(strings, dtype=object)
        except ValueError:
            raise BadRequest(f"input '{name}': {rows_in} have different shapes") from None
        if array.ndim and any(not isinstance(v, bytes) for v in array.ravel()):
            raise BadRequest(f"input '{name}': {rows_in} have different shapes")
    else:
        array = _numeric(values, spec.dtype, name, rows_in)
    expected = spec.shape
    if array.ndim != expected.rank:
        raise BadRequest(
            f"input '{name}' has rank {array.ndim - 1} per row, the signature expects "
            f"{expected.rank - 1} (shape {expected.as_list()[1:]})"
        )
    for axis, size in enumerate(expected.as_list()[1:], start=1):
        if size is not None and array.shape[axis] != size:
            raise BadRequest(f"input '{name}': dimension {axis} is {array.shape[axis]}, the signature expects {size}")
    return array


def to_tensors(form: str, payload, inputs: dict) -> tuple[dict, int]:
    """({input: np.ndarray}, rows) for a parsed request and the signature's {name: TensorSpec}."""
    names = sorted(inputs)
    single = names[0] if len(names) == 1 else None
    if form == ROW:
        if not isinstance(payload, list):
            raise BadRequest(f"'instances' must be a list of rows, got {type(payload).__name__}")
        if not payload:
            raise BadRequest("'instances' is empty: send at least one row")
        named = all(isinstance(row, dict) and not _is_b64(row) for row in payload)
        if single is not None and not named:
            columns = {single: payload}
        elif not named:
            raise BadRequest(f"every instance must be an object of named inputs ({', '.join(names)})")
        else:
            _check_names(set().union(*map(set, payload)), inputs, "instances")
            for i, row in enumerate(payload):
                if len(row) != len(names):
                    missing = sorted(set(names) - set(row))
                    raise BadRequest(f"instances[{i}] is missing input(s) {', '.join(map(repr, missing))}")
            columns = {name: [row[name] for row in payload] for name in names}
        rows_in = "instances"
    else:
        if isinstance(payload, dict) and not _is_b64(payload):
            _check_names(set(payload), inputs, "inputs")
            missing = sorted(set(names) - set(payload))
            if missing:
                raise BadRequest(f"'inputs' is missing input(s) {', '.join(map(repr, missing))}")
            columns = payload
        elif single is not None:
            columns = {single: payload}
        else:
            raise BadRequest(f"'inputs' must be an object of named inputs ({', '.join(names)})")
        rows_in = "the rows of 'inputs'"
    tensors = {name: _array(columns[name], inputs[name], name, rows_in) for name in names}
    sizes = {name: (t.shape[0] if t.ndim else None) for name, t in tensors.items()}
    if None in sizes.values():
        raise BadRequest(f"input '{min(n for n, s in sizes.items() if s is None)}' needs a batch dimension")
    if len(set(sizes.values())) != 1:
        raise BadRequest(f"inputs have different batch sizes: {dict(sorted(sizes.items()))}")
    rows = next(iter(sizes.values()))
    if rows == 0:
        raise BadRequest(f"'{form}' holds no rows: send at least one row")
    return tensors, rows


def check_tensors(tensors: dict, inputs: dict) -> int:
    """The batch size of already-typed tensors (gRPC), after checking them against the signature."""
    _check_names(set(tensors), inputs, "inputs")
    missing = sorted(set(inputs) - set(tensors))
    if missing:
        raise BadRequest(f"inputs: missing input(s) {', '.join(map(repr, missing))}")
    sizes = set()
    for name, array in tensors.items():
        spec = inputs[name]
        expected = spec.dtype.as_numpy_dtype if spec.dtype != tf.string else object
        if array.dtype != expected and not (spec.dtype == tf.string and array.dtype.kind == "S"):
            raise BadRequest(f"input '{name}' is {array.dtype}, the signature expects {spec.dtype.name}")
        if array.ndim != spec.shape.rank or not spec.shape.is_compatible_with(array.shape):
            raise BadRequest(
                f"input '{name}' has shape {list(array.shape)}, the signature expects {spec.shape.as_list()}"
            )
        sizes.add(array.shape[0])
    if len(sizes) != 1:
        raise BadRequest(f"inputs have different batch sizes: {sorted(sizes)}")
    rows = sizes.pop()
    if rows == 0:
        raise BadRequest("inputs hold no rows")
    return rows


def _check_names(given: set, inputs: dict, where: str) -> None:
    unknown = sorted(given - set(inputs))
    if unknown:
        raise BadRequest(
            f"{where}: unknown input(s) {', '.join(map(repr, unknown[:5]))}; the signature takes "
            f"{', '.join(sorted(inputs))}"
        )


def encode_response(form: str, outputs: dict) -> bytes:
    """The response body for {output: np.ndarray}: `predictions` (one entry per row) or `outputs`."""
    if form == ROW:
        if len(outputs) == 1:
            body = {"predictions": next(iter(outputs.values()))}
        else:
            names = sorted(outputs)
            lists = [outputs[n].tolist() for n in names]
            body = {"predictions": [dict(zip(names, row)) for row in zip(*lists)]}
    else:
        body = {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
