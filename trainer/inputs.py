"""Model inputs: Transform's output parsed into dense batches.

What a model receives (B = batch size), keyed as in `transform.features`:
- single-valued categorical field `k`: int32 [B], its vocabulary index;
- multi-valued field `k`: int32 [B, L_k] indices, first L_k ids in file order, padded with 0,
  and `k_weight`: float32 [B, L_k], the ids' weights (1 where the layout has none), 0 on padding;
- numeric field `k`: float32 [B].
Labels are float32 [B] under `click` and `conversion`.

Parsing tf.Examples costs more than a training step here, so a split that fits in
`memory_budget_gb` is parsed once, kept as numpy arrays and batched by index (a seeded permutation
per epoch, so a resumed run sees the batches it would have seen); a larger split streams from its
files with a seeded shuffle buffer. The same `densify` turns tf.Transform's sparse output into
the dense layout, in the input pipeline and in the serving export.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow as tf

from common.sparse import leading
from transform import features as F

_LOG = logging.getLogger(__name__)
BAG, CATEGORICAL, NUMERIC = "bag", "categorical", "numeric"
_PARSE_BATCH = 8192
_SHUFFLE_BUFFER = 100_000


@dataclasses.dataclass(frozen=True)
class InputField:
    key: str
    kind: str  # CATEGORICAL, BAG or NUMERIC
    cardinality: int = 0  # categorical and bag: vocabulary + OOV buckets
    bag_length: int = 0  # bag: ids kept per row
    weighted: bool = False  # bag: the data has a weight per id

    @property
    def weight_key(self) -> str:
        return f"{self.key}_weight"


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """The model's input fields, in schema order; saved with the model so serving densifies alike."""

    fields: tuple[InputField, ...]

    def of_kind(self, kind: str) -> tuple[InputField, ...]:
        return tuple(f for f in self.fields if f.kind == kind)

    def to_dict(self) -> dict:
        return {"fields": [dataclasses.asdict(f) for f in self.fields]}

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        return cls(tuple(InputField(**f) for f in d["fields"]))

    def tensor_specs(self, batch=None) -> dict:
        """{key: tf.TensorSpec} of a batch of model inputs."""
        specs = {}
        for f in self.fields:
            if f.kind == BAG:
                specs[f.key] = tf.TensorSpec([batch, f.bag_length], tf.int32, f.key)
                specs[f.weight_key] = tf.TensorSpec([batch, f.bag_length], tf.float32, f.weight_key)
            else:
                specs[f.key] = tf.TensorSpec([batch], tf.int32 if f.kind == CATEGORICAL else tf.float32, f.key)
        return specs


def label_specs(batch=None) -> dict:
    return {label: tf.TensorSpec([batch], tf.float32, label) for label in F.LABELS}


def model_fields(transformed_feature_spec: dict) -> list[F.Field]:
    """The declared fields among tf.Transform's outputs (labels, weights and metadata are not fields)."""
    return F.fields_in(transformed_feature_spec)


def densify(transformed: dict, spec: InputSpec) -> dict:
    """tf.Transform's outputs (bags as SparseTensors) to the model's dense inputs."""
    out = {}
    for f in spec.fields:
        value = transformed[f.key]
        if f.kind == BAG:
            out[f.key] = tf.cast(leading(value, f.bag_length), tf.int32)
            present = tf.SparseTensor(value.indices, tf.ones_like(value.values, tf.float32), value.dense_shape)
            weights = transformed[f.weight_key] if f.weighted else present
            out[f.weight_key] = tf.cast(leading(weights, f.bag_length, 0.0), tf.float32)
        elif f.kind == CATEGORICAL:
            out[f.key] = tf.cast(tf.reshape(value, [-1]), tf.int32)
        else:
            out[f.key] = tf.cast(tf.reshape(value, [-1]), tf.float32)
    return out


def _labels(parsed: dict) -> dict:
    return {label: tf.cast(parsed[label], tf.float32) for label in F.LABELS}


def read_records(files, parallel_reads=2) -> tf.data.Dataset:
    files = sorted(files)
    if not files:
        raise ValueError("no transformed files to read")
    compression = "GZIP" if files[0].endswith(".gz") else ""
    return tf.data.TFRecordDataset(files, compression_type=compression, num_parallel_reads=parallel_reads)


def expand(patterns) -> list[str]:
    """Files matching TFX-style file patterns (a list or a single pattern)."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(p)})
    if not files:
        raise ValueError(f"no files match {patterns}")
    return files


class _TooLarge(Exception):
    pass


@dataclasses.dataclass
class Split:
    """A split held in memory (`features`, `labels`: numpy arrays) or streamed from `files`."""

    spec: InputSpec
    files: list
    feature_spec: dict
    features: dict | None = None
    labels: dict | None = None

    @property
    def in_memory(self) -> bool:
        return self.features is not None

    @property
    def rows(self) -> int | None:
        return len(self.labels[F.CLICK]) if self.in_memory else None

    def dataset(
        self, batch_size: int, seed: int | None = None, epochs: range = range(1), drop_remainder: bool = False
    ) -> tuple[tf.data.Dataset, int | None]:
        """(dataset of (features, labels) batches, steps per epoch).

        In memory: the batches of `epochs` in a row, shuffled by a permutation seeded with
        (seed, epoch), so a run resumed at epoch e sees what it would have seen. Streamed: one
        epoch, reshuffled on each iteration by a seeded buffer (steps per epoch None: to its end).
        `seed` None keeps the file order.
        """
        if self.in_memory:
            return self._from_memory(batch_size, seed, epochs, drop_remainder)
        return self._streamed(batch_size, seed, epochs, drop_remainder), None

    def _from_memory(self, batch_size, seed, epochs, drop_remainder):
        features, labels, rows = self.features, self.labels, self.rows
        stop = rows - rows % batch_size if drop_remainder else rows

        def batches():
            for epoch in epochs:
                order = np.random.default_rng([seed, epoch]).permutation(rows) if seed is not None else None
                for start in range(0, stop, batch_size):
                    index = order[start : start + batch_size] if order is not None else slice(start, start + batch_size)
                    yield ({k: v[index] for k, v in features.items()}, {k: v[index] for k, v in labels.items()})

        batch = batch_size if drop_remainder else None
        signature = (self.spec.tensor_specs(batch), label_specs(batch))
        steps = -(-stop // batch_size)
        return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2), steps

    def _streamed(self, batch_size, seed, epochs, drop_remainder):
        spec, feature_spec = self.spec, self.feature_spec

        def parse(serialized):
            parsed = tf.io.parse_example(serialized, feature_spec)
            return densify(parsed, spec), _labels(parsed)

        records = read_records(self.files)
        if seed is not None:
            records = records.shuffle(
                _SHUFFLE_BUFFER, seed=(seed * 1_000_003 + epochs.start) % 2**31, reshuffle_each_iteration=True
            )
        return records.batch(batch_size, drop_remainder=drop_remainder).map(parse, num_parallel_calls=2).prefetch(2)


def _row_bytes(fields: list[F.Field], max_bag_length: int) -> int:
    """Upper bound on a row's bytes in memory, before the bag lengths are known."""
    return 4 * (len(F.LABELS) + sum(2 * max_bag_length if f.multivalent else 1 for f in fields))


def read_split(
    files, feature_spec: dict, memory_budget_bytes: float, max_bag_length: int, name: str = "split"
) -> tuple[dict, dict] | None:
    """Parses a split into {key: numpy} columns (bags as (values, lengths)) and labels, or None when it
    would take more than the budget."""
    fields = model_fields(feature_spec)
    row_bytes = _row_bytes(fields, max_bag_length)
    parsed_batches = (
        read_records(files)
        .batch(_PARSE_BATCH)
        .map(lambda s: tf.io.parse_example(s, feature_spec), num_parallel_calls=2, deterministic=True)
        .prefetch(2)
    )
    columns = {f.key: [] for f in fields}
    columns.update({f"{f.key}_weight": [] for f in fields if f"{f.key}_weight" in feature_spec})
    labels = {label: [] for label in F.LABELS}
    rows, next_report = 0, 250_000
    try:
        for parsed in parsed_batches:
            for key, parts in columns.items():
                value = parsed[key]
                if isinstance(value, tf.SparseTensor):
                    lengths = tf.math.bincount(tf.cast(value.indices[:, 0], tf.int32), minlength=tf.shape(value)[0])
                    parts.append((value.values.numpy(), lengths.numpy()))
                else:
                    parts.append(value.numpy())
            for label, parts in labels.items():
                parts.append(parsed[label].numpy().astype(np.float32))
            rows += len(labels[F.CLICK][-1])
            if rows * row_bytes > memory_budget_bytes:
                raise _TooLarge
            if rows >= next_report:
                _LOG.info("read %s: %s rows", name, f"{rows:,}")
                next_report += 250_000
    except _TooLarge:
        _LOG.info(
            "%s exceeds the memory budget (%.1f GB): streaming it from its files", name, memory_budget_bytes / 1e9
        )
        return None
    if rows == 0:
        raise ValueError(f"{name}: the transformed files hold no rows: {files[:3]}")
    joined = {}
    for key, parts in columns.items():
        if isinstance(parts[0], tuple):
            joined[key] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        else:
            joined[key] = np.concatenate(parts)
    return joined, {k: np.concatenate(v) for k, v in labels.items()}


def build_spec(feature_spec: dict, cardinalities: dict, columns: dict | None, max_bag_length: int) -> InputSpec:
    """The input spec: sizes from the transform output, bag lengths from the training data (or the cap)."""
    fields = []
    for f in model_fields(feature_spec):
        if f.kind is F.Kind.NUMERIC:
            fields.append(InputField(f.key, NUMERIC))
        elif f.key not in cardinalities:
            raise ValueError(f"the transform output has no vocabulary size for categorical field {f.key}")
        elif f.multivalent:
            longest = int(columns[f.key][1].max()) if columns is not None else max_bag_length
            fields.append(
                InputField(
                    f.key,
                    BAG,
                    cardinalities[f.key],
                    max(1, min(longest, max_bag_length)),
                    f"{f.key}_weight" in feature_spec,
                )
            )
        else:
            fields.append(InputField(f.key, CATEGORICAL, cardinalities[f.key]))
    if not fields:
        raise ValueError("the transform output has no model features")
    return InputSpec(tuple(fields))


def _pad(values: np.ndarray, lengths: np.ndarray, width: int, dtype) -> np.ndarray:
    """[rows, width]: each row's first `width` values, zero-padded."""
    out = np.zeros((len(lengths), width), dtype)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    positions = np.arange(len(values)) - starts
    keep = positions < width
    out[np.repeat(np.arange(len(lengths)), lengths)[keep], positions[keep]] = values[keep]
    return out


def densify_columns(columns: dict, spec: InputSpec) -> dict:
    """The numpy version of `densify`, for splits held in memory."""
    out = {}
    for f in spec.fields:
        if f.kind == BAG:
            values, lengths = columns[f.key]
            out[f.key] = _pad(values, lengths, f.bag_length, np.int32)
            weights = columns[f.weight_key][0] if f.weighted else np.ones(len(values), np.float32)
            out[f.weight_key] = _pad(weights, lengths, f.bag_length, np.float32)
        else:
            out[f.key] = columns[f.key].astype(np.int32 if f.kind == CATEGORICAL else np.float32)
    return out


def load(
    files,
    feature_spec: dict,
    spec: InputSpec | None,
    cardinalities: dict,
    max_bag_length: int,
    memory_budget_gb: float,
    name: str,
) -> Split:
    """A split, in memory if it fits; builds the spec from it when `spec` is None (the training split)."""
    files = expand(files)
    read = read_split(files, feature_spec, memory_budget_gb * 1e9, max_bag_length, name)
    if spec is None:
        spec = build_spec(feature_spec, cardinalities, read[0] if read else None, max_bag_length)
    if read is None:
        return Split(spec, files, feature_spec)
    columns, labels = read
    _LOG.info("%s: %s rows in memory", name, f"{len(labels[F.CLICK]):,}")
    return Split(spec, files, feature_spec, densify_columns(columns, spec), labels)
