"""Noise injection for robustness runs (MTN paper, section 3.1), on raw training record batches.

A proportion P of the training rows is selected; in a selected row, each present feature is
replaced with probability Q by another valid value of its field, drawn from the field's clean
training distribution and different from the original:
- categorical fields draw from their vocabulary's counts, so a replacement is an id the
  vocabulary holds (never an out-of-vocabulary id, never the missing-field token);
- a multi-valued field (a bag of ids) is selected as a whole; each id in the bag is replaced by
  its own draw, different from that id, and the bag keeps its length and its weights;
- numeric fields draw from a uniform sample of the field's training values (the `size` rows
  with the smallest row hashes, so the sample does not depend on how data is batched).
An absent feature is not a feature of the row and is left absent.

Every decision comes from a hash of (seed, sample_id, field key, position in the bag), so a re-run
with the same seed selects the same rows and draws the same values, whatever the batching,
bundle order or runner. The step runs after the vocabularies are computed on clean data, so a
noisy and a clean run share one vocabulary.
"""

from __future__ import annotations

import hashlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from common.beam import CountingDoFn
from transform import features as F

NAMESPACE = "transform"
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def row_keys(sample_ids, seed: int) -> np.ndarray:
    """uint64 [N]: a hash of each row's sample id under `seed`."""
    prefix = seed.to_bytes(8, "little", signed=True)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(prefix + s, digest_size=8).digest(), "little") for s in sample_ids),
        dtype=np.uint64,
        count=len(sample_ids),
    )


def mix(keys: np.ndarray, salt) -> np.ndarray:
    """uint64: splitmix64's finalizer of keys + salt * golden ratio; independent streams per salt."""
    with np.errstate(over="ignore"):
        z = keys + (np.asarray(salt, dtype=np.uint64) + np.uint64(1)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def field_salt(key: str) -> int:
    """A field's own hash stream, from its key (never 0, the row-selection stream)."""
    return 1 + int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "little")


def uniform(keys: np.ndarray) -> np.ndarray:
    """float64 in [0, 1) from the top 53 bits of each key."""
    return (keys >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class Distribution:
    """A field's training values with their counts, to draw a value other than a given one."""

    def __init__(self, values: np.ndarray, counts: np.ndarray):
        order = np.argsort(values, kind="stable")
        self.values, self.counts = values[order], counts[order].astype(np.float64)
        self._cumulative = np.cumsum(self.counts)

    @classmethod
    def from_vocabulary(cls, lines) -> "Distribution":
        """From tf.Transform's "count token" vocabulary lines of int ids, less the missing-field token."""
        pairs = [line.split() for line in lines]
        pairs = [(int(token), float(count)) for count, token in pairs if int(token) != F.MISSING_ID]
        values, counts = zip(*pairs) if pairs else ((), ())
        return cls(np.array(values, dtype=np.int64), np.array(counts, dtype=np.float64))

    @classmethod
    def from_sample(cls, values: np.ndarray) -> "Distribution":
        return cls(*np.unique(values, return_counts=True))

    def draw_other(self, originals: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(draws, drawn): per original, a value drawn in proportion to its count among the values
        other than the original (u: uniforms in [0, 1)); `drawn` is False where no other value exists."""
        if not len(self.values):
            return originals, np.zeros(len(originals), bool)
        position = np.minimum(np.searchsorted(self.values, originals), len(self.values) - 1)
        held = self.values[position] == originals
        excluded = np.where(held, self.counts[position], 0.0)
        start = self._cumulative[position] - self.counts[position]
        v = u * (self._cumulative[-1] - excluded)
        v = np.where(held & (v >= start), v + excluded, v)  # skip over the original's share
        index = np.minimum(np.searchsorted(self._cumulative, v, side="right"), len(self.values) - 1)
        drawn = self._cumulative[-1] - excluded > 0
        return np.where(drawn, self.values[index], originals).astype(originals.dtype), drawn


def _column_parts(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, flat values) of a list column, whatever its slice offset."""
    offsets = np.asarray(column.offsets, dtype=np.int64)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return offsets - offsets[0], values


class SampleNumeric(beam.CombineFn):
    """{field key: values} of the `size` rows with the smallest row hashes, per numeric field."""

    def __init__(self, keys: list[str], seed: int, size: int = 10_000):
        self._keys, self._seed, self._size = keys, seed, size

    def create_accumulator(self):
        return {k: (np.empty(0, np.uint64), np.empty(0, np.float64)) for k in self._keys}

    def _keep_smallest(self, hashes, values):
        if len(hashes) > self._size:
            keep = np.argpartition(hashes, self._size - 1)[: self._size]
            hashes, values = hashes[keep], values[keep]
        return hashes, values

    def add_input(self, accumulator, batch: pa.RecordBatch):
        hashes = row_keys(batch.column(F.SAMPLE_ID).flatten().to_pylist(), self._seed)
        for key in self._keys:
            offsets, values = _column_parts(batch.column(key))
            present = np.diff(offsets) > 0
            h, v = accumulator[key]
            accumulator[key] = self._keep_smallest(
                np.concatenate([h, hashes[present]]), np.concatenate([v, values[offsets[:-1][present]]])
            )
        return accumulator

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        return {
            k: self._keep_smallest(
                np.concatenate([a[k][0] for a in accumulators]), np.concatenate([a[k][1] for a in accumulators])
            )
            for k in self._keys
        }

    def extract_output(self, accumulator):
        return {k: v for k, (_, v) in accumulator.items()}


class InjectNoise(CountingDoFn):
    """Raw training record batch in, the same batch with noise out (see the module docstring).

    Side inputs: the tf.Transform output folder of the clean analysis (its vocabularies with
    counts) and `SampleNumeric`'s samples."""

    NAMESPACE = NAMESPACE

    def __init__(self, fields: list[F.Field], proportion: float, feature_prob: float, seed: int):
        self._fields, self._proportion, self._feature_prob, self._seed = fields, proportion, feature_prob, seed
        self._distributions = None

    def _load(self, transform_fn_dir: str, numeric_samples: dict) -> dict:
        distributions = {}
        for field in self._fields:
            if field.kind is F.Kind.NUMERIC:
                distributions[field.key] = Distribution.from_sample(numeric_samples[field.key])
            else:
                with FileSystems.open(FileSystems.join(transform_fn_dir, "assets", field.key)) as f:
                    distributions[field.key] = Distribution.from_vocabulary(f.read().decode().splitlines())
        return distributions

    def process(self, batch: pa.RecordBatch, transform_fn_dir: str, numeric_samples: dict):
        if self._distributions is None:
            self._distributions = self._load(transform_fn_dir, numeric_samples)
        keys = row_keys(batch.column(F.SAMPLE_ID).flatten().to_pylist(), self._seed)
        selected = uniform(mix(keys, 0)) < self._proportion
        self._counts["noise/rows"] += batch.num_rows
        self._counts["noise/rows_selected"] += int(selected.sum())
        columns = dict(zip(batch.schema.names, batch.columns))
        for field in self._fields:
            columns[field.key] = self._noise_field(field, columns[field.key], keys, selected, field_salt(field.key))
        yield pa.RecordBatch.from_arrays(list(columns.values()), schema=batch.schema)

    def _noise_field(self, field: F.Field, column: pa.Array, keys, selected, salt: int) -> pa.Array:
        offsets, values = _column_parts(column)
        lengths = np.diff(offsets)
        feature_keys = mix(keys, salt)
        candidates = selected & (lengths > 0)
        chosen = candidates & (uniform(feature_keys) < self._feature_prob)
        self._counts[f"noise/present/{field.key}"] += int(candidates.sum())
        if not chosen.any():
            return column
        rows = np.repeat(np.arange(len(lengths)), lengths)
        positions = np.nonzero(chosen[rows])[0]
        in_bag = positions - offsets[rows[positions]]
        u = uniform(mix(feature_keys[rows[positions]], in_bag.astype(np.uint64) + np.uint64(1 << 32)))
        draws, drawn = self._distributions[field.key].draw_other(values[positions], u)
        values = values.copy()
        values[positions] = draws
        replaced_rows = np.zeros(len(lengths), bool)
        replaced_rows[rows[positions[drawn]]] = True
        self._counts[f"noise/replaced/{field.key}"] += int(replaced_rows.sum())
        self._counts[f"noise/unreplaceable/{field.key}"] += int(chosen.sum() - replaced_rows.sum())
        return type(column).from_arrays(
            pa.array(offsets, type=column.offsets.type),
            pa.array(values, type=column.type.value_type),
            mask=column.is_null(),
        )
