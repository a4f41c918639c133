"""How ExampleGen writes: tf.Example bytes, TFRecord framing, and rejected/ lines.

A tf.Example is its one field, a serialized `tf.train.Features` map, behind a tag and a length,
so the single-file layouts build the map and wrap it without a second message. Ali-CCP raw
lines are encoded in batches by `example_gen.formats.aliccp_examples`.
"""

from __future__ import annotations

import json
import struct
from typing import Mapping, Sequence

import google_crc32c

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def rejection(path: str, line_no: int, reason: str, detail: str, raw: bytes) -> str:
    """One JSON line of rejected/: where the line was, why, and the line itself."""
    return json.dumps(
        {
            "file": path,
            "line": line_no,
            "reason": reason,
            "detail": detail,
            "text": raw.decode("utf-8", "backslashreplace"),
        },
        ensure_ascii=False,
    )


def _declare_example_messages():
    """tf.train.Example's messages, declared here with the same field numbers (so the same wire
    format) so that ExampleGen workers need not import TensorFlow (~700 MB each)."""
    f = descriptor_pb2.FileDescriptorProto(name="mtrank/example.proto", package="mtrank", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto
    repeated, optional = T.LABEL_REPEATED, T.LABEL_OPTIONAL

    def message(name, *fields, parent=None):
        m = (parent.nested_type if parent else f.message_type).add(name=name)
        for number, field_name, label, type_, type_name, oneof in fields:
            field = m.field.add(name=field_name, number=number, label=label, type=type_)
            if type_name:
                field.type_name = type_name
            if oneof is not None:
                field.oneof_index = oneof
        return m

    message("BytesList", (1, "value", repeated, T.TYPE_BYTES, None, None))
    message("FloatList", (1, "value", repeated, T.TYPE_FLOAT, None, None))
    message("Int64List", (1, "value", repeated, T.TYPE_INT64, None, None))
    feature = message(
        "Feature",
        (1, "bytes_list", optional, T.TYPE_MESSAGE, ".mtrank.BytesList", 0),
        (2, "float_list", optional, T.TYPE_MESSAGE, ".mtrank.FloatList", 0),
        (3, "int64_list", optional, T.TYPE_MESSAGE, ".mtrank.Int64List", 0),
    )
    feature.oneof_decl.add(name="kind")
    features = message("Features", (1, "feature", repeated, T.TYPE_MESSAGE, ".mtrank.Features.FeatureEntry", None))
    entry = message(
        "FeatureEntry",
        (1, "key", optional, T.TYPE_STRING, None, None),
        (2, "value", optional, T.TYPE_MESSAGE, ".mtrank.Feature", None),
        parent=features,
    )
    entry.options.map_entry = True
    message("Example", (1, "features", optional, T.TYPE_MESSAGE, ".mtrank.Features", None))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"mtrank.{name}"))
        for name in ("Features", "Example")
    }


_MESSAGES = _declare_example_messages()
Features, Example = _MESSAGES["Features"], _MESSAGES["Example"]


def encode_features(
    int64s: Mapping[str, Sequence[int]] = {},
    floats: Mapping[str, Sequence[float]] = {},
    strings: Mapping[str, bytes] = {},
) -> bytes:
    """A serialized `tf.train.Features` map."""
    features = Features()
    feature = features.feature
    for key, values in int64s.items():
        feature[key].int64_list.value[:] = values
    for key, values in floats.items():
        feature[key].float_list.value[:] = values
    for key, value in strings.items():
        feature[key].bytes_list.value.append(value)
    return features.SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# tf.train.Example has one field, `features` (number 1, length-delimited): tag byte 0x0A.
_EXAMPLE_FEATURES_TAG = b"\x0a"


def example_from_features(features: bytes) -> bytes:
    """A serialized tf.train.Example of a serialized tf.train.Features map."""
    return _EXAMPLE_FEATURES_TAG + _varint(len(features)) + features


def parse_example(serialized: bytes) -> dict[str, list]:
    """A tf.Example as {key: list of values}; for tests and tools, not hot paths."""
    example = Example.FromString(serialized)
    out = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[key] = list(getattr(feature, kind).value) if kind else []
    return out


def _masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(record: bytes) -> bytes:
    """One record in TFRecord framing: length, masked CRC32C of the length, data, masked CRC32C
    of the data. Framing in the DoFn lets a whole batch of records leave as one element."""
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", _masked_crc32c(length)) + record + struct.pack("<I", _masked_crc32c(record))
