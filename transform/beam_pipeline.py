"""The Transform stage on Beam: ExampleGen's raw examples in; transform_graph/ and
transformed/{train,eval,test}/ out.

The analyzers (vocabularies, numeric statistics) see the clean training split only, read with
just the columns they need. Every split is then read in full and transformed with that one
graph; noise injection, when asked for, sits between the read of the training split and its
transform. Data moves as Arrow record batches from the read to the write: transformed examples
are encoded, TFRecord-framed and gzipped per batch, so a batch travels through Beam as one element.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics

from common import IN_PROCESS
from common.beam import (
    FramedRecordSink,
    InputError,
    check_writable,
    clear_outputs,
    counters,
    gzip_member,
    pipeline_options,
)
from common.layout import EXAMPLES, RECORDS, SPLITS, STATS, TRANSFORM_GRAPH, TRANSFORMED
from transform import features as F
from transform import noise
from transform.options import Options

_LOG = logging.getLogger(__name__)
_PROGRESS_EVERY = 250_000


@dataclasses.dataclass
class TransformConfig:
    examples: str  # ExampleGen's output folder: examples/{train,eval,test}/ and stats.json
    output: str  # gets transform_graph/ and transformed/{train,eval,test}/ (+ transformed/stats.json)
    noise_proportion: float = 0.0  # P: share of training rows that get noise
    noise_feature_prob: float = 0.2  # Q: chance that each present feature of a noisy row is replaced
    seed: int = 0
    preprocessing: dict = dataclasses.field(default_factory=dict)  # preprocessing_fn's custom_config
    batch_size: int = 8192
    runner: str = IN_PROCESS
    overwrite: bool = False
    beam_args: list = dataclasses.field(default_factory=list)


class _Progress:
    """Logs a running row count every `_PROGRESS_EVERY` rows."""

    def __init__(self, what: str):
        self._what, self._rows = what, 0

    def add(self, rows: int) -> None:
        before, self._rows = self._rows, self._rows + rows
        if before // _PROGRESS_EVERY != self._rows // _PROGRESS_EVERY:
            _LOG.info("Transform: %s, %s rows", self._what, f"{self._rows:,}")


class _ReadRecordBatches(beam.DoFn):
    """A TFRecord file of tf.Examples in, its Arrow record batches out. tf.data reads and tfx_bsl
    decodes a whole batch in C++, so no single record travels through Beam (reading through
    tfxio's BeamSource, one Beam element per record, took twice as long here)."""

    def __init__(self, feature_spec: dict, batch_size: int, progress: str | None = None):
        self._feature_spec, self._batch_size = feature_spec, batch_size
        self._progress = _Progress(progress) if progress else None

    def setup(self):
        from tensorflow_transform.tf_metadata import schema_utils
        from tfx_bsl.tfxio import dataset_options

        self._schema = schema_utils.schema_from_feature_spec(self._feature_spec)
        self._options = dataset_options.RecordBatchesOptions(
            batch_size=self._batch_size, drop_final_batch=False, num_epochs=1, shuffle=False
        )

    def process(self, path: str):
        from tfx_bsl.public import tfxio

        for batch in tfxio.TFExampleRecord(file_pattern=path, schema=self._schema).RecordBatches(self._options):
            if self._progress:
                self._progress.add(batch.num_rows)
            yield batch


class _EncodeSplit(beam.DoFn):
    """Transformed record batches to TFRecord-framed tf.Examples, one element per batch."""

    def __init__(self, split: str):
        self._split = split
        self._progress = _Progress(f"{split} written")

    def setup(self):
        from tfx_bsl.coders import example_coder

        from common import records

        self._encode, self._frame = example_coder.RecordBatchToExamples, records.tfrecord_frame
        self._written = Metrics.counter(noise.NAMESPACE, f"rows/{self._split}")

    def process(self, element):
        batch, _ = element
        self._written.inc(batch.num_rows)
        self._progress.add(batch.num_rows)
        yield gzip_member(b"".join(map(self._frame, self._encode(batch))))


def _split_files(examples: str, split: str) -> list[str]:
    pattern = FileSystems.join(examples, EXAMPLES, split, RECORDS)
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def _read_example_gen_stats(examples: str) -> dict:
    path = FileSystems.join(examples, STATS)
    try:
        with FileSystems.open(path) as f:
            return json.loads(f.read())
    except Exception as e:  # missing, unreadable, not JSON: all mean "not ExampleGen's output"
        raise InputError(
            f"--examples {examples} is not ExampleGen output: no readable stats.json ({type(e).__name__})"
        ) from None


def build(p: beam.Pipeline, config: TransformConfig, schema: F.Schema, files: dict) -> None:
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio

    from transform import preprocessing

    raw_spec = preprocessing.raw_feature_spec(schema)
    full_source = tfxio.TFExampleRecord(
        file_pattern=files["train"], schema=schema_utils.schema_from_feature_spec(raw_spec)
    )

    def read(split: str, label: str, columns=None, progress=None):
        """Record batches of the split's examples, with only `columns` when given."""
        spec = {k: v for k, v in raw_spec.items() if columns is None or k in columns}
        return (
            p
            | f"{label}Files" >> beam.Create(files[split])
            | f"{label}Spread" >> beam.Reshuffle()
            | label >> beam.ParDo(_ReadRecordBatches(spec, config.batch_size, progress))
        )

    preprocessing_fn = functools.partial(preprocessing.preprocessing_fn, custom_config=config.preprocessing)
    # The analyzers read only the columns they need (tf.Transform's own projection, as TFX does).
    adapter_config = full_source.TensorAdapterConfig()
    analyzed = set(tft.get_analyze_input_columns(preprocessing_fn, full_source.TensorAdapter().TypeSpecs()))
    if config.noise_proportion > 0:
        analyzed |= {F.SAMPLE_ID} | {f.key for f in schema.fields if f.kind is F.Kind.NUMERIC}
    train_for_analysis = read("train", "ReadTrainForAnalysis", analyzed, progress="train read for analysis")
    analysis_config = full_source.Project(sorted(analyzed)).TensorAdapterConfig()
    transform_fn = (train_for_analysis, analysis_config) | "Analyze" >> tft_beam.AnalyzeDataset(preprocessing_fn)
    _ = transform_fn | "WriteTransformGraph" >> tft_beam.WriteTransformFn(
        FileSystems.join(config.output, TRANSFORM_GRAPH)
    )

    fields = list(schema.fields)
    numeric = [f.key for f in fields if f.kind is F.Kind.NUMERIC]
    for split in files:
        raw = read(split, f"Read{split.title()}")
        if split == "train" and config.noise_proportion > 0:
            samples = (
                train_for_analysis | "SampleNumeric" >> beam.CombineGlobally(noise.SampleNumeric(numeric, config.seed))
                if numeric
                else p | "NoNumeric" >> beam.Create([{}])
            )
            raw = raw | "InjectNoise" >> beam.ParDo(
                noise.InjectNoise(fields, config.noise_proportion, config.noise_feature_prob, config.seed),
                beam.pvalue.AsSingleton(transform_fn[0]),
                beam.pvalue.AsSingleton(samples),
            )
        transformed, _ = (
            (raw, adapter_config),
            transform_fn,
        ) | f"Transform{split.title()}" >> tft_beam.TransformDataset(output_record_batches=True)
        _ = (
            transformed
            | f"Encode{split.title()}" >> beam.ParDo(_EncodeSplit(split))
            | f"Write{split.title()}"
            >> beam.io.Write(
                FramedRecordSink(FileSystems.join(config.output, TRANSFORMED, split, "data"), gzipped_elements=True)
            )
        )


def _validate(config: TransformConfig) -> Options:
    """The preprocessing options, after every check that needs no input data."""
    if not 0.0 <= config.noise_proportion <= 1.0:
        raise InputError(f"--noise-proportion {config.noise_proportion} must be in [0, 1]")
    if not 0.0 <= config.noise_feature_prob <= 1.0:
        raise InputError(f"--noise-feature-prob {config.noise_feature_prob} must be in [0, 1]")
    if config.batch_size < 1:
        raise InputError(f"batch_size {config.batch_size} must be positive")
    if not -(2**63) <= config.seed < 2**63:
        raise InputError(f"--seed {config.seed} must fit in 64 bits")
    try:
        return Options.from_config(config.preprocessing)
    except ValueError as e:
        raise InputError(str(e)) from None


def stats_from_counters(counts: dict, config: TransformConfig, schema: F.Schema) -> dict:
    import tensorflow_transform as tft

    graph = tft.TFTransformOutput(FileSystems.join(config.output, TRANSFORM_GRAPH))
    stats = {
        "config": dataclasses.asdict(config),
        "schema": schema.name,
        "rows": {split: counts.get(f"rows/{split}", 0) for split in SPLITS},
        "vocabulary_size": {
            f.key: graph.vocabulary_size_by_name(f.key) for f in schema.fields if f.kind is F.Kind.CATEGORICAL
        },
    }
    if config.noise_proportion > 0:
        per_field = collections.defaultdict(dict)
        for name, n in counts.items():
            parts = name.split("/")
            if parts[0] == "noise" and len(parts) == 3:
                per_field[parts[2]][parts[1]] = n
        stats["noise"] = {
            "rows": counts.get("noise/rows", 0),
            "rows_selected": counts.get("noise/rows_selected", 0),
            "fields": {
                f.key: {
                    "present_in_selected_rows": per_field[f.key].get("present", 0),
                    "replaced": per_field[f.key].get("replaced", 0),
                    "unreplaceable": per_field[f.key].get("unreplaceable", 0),
                }
                for f in schema.fields
            },
        }
    return stats


def check_rows(rows_written: dict, example_gen_stats: dict) -> list[str]:
    """Splits whose row count differs from what ExampleGen wrote (empty when every row came through).

    Transform reads each of ExampleGen's examples once and writes it once, so any gap is a lost
    or doubled row, for example on a runner with several workers."""
    expected = example_gen_stats.get("samples", {}).get("written", {})
    return [
        f"{split}: ExampleGen wrote {expected[split]:,} rows, Transform wrote {rows_written.get(split, 0):,}"
        for split in SPLITS
        if split in expected and expected[split] != rows_written.get(split, 0)
    ]


def _write_raw_metadata(output: str, schema: F.Schema) -> None:
    """The raw schema beside the transform graph, where TFX's Transform puts it
    (`TFTransformOutput.raw_feature_spec()`): the serving export parses requests with it."""
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

    from transform import preprocessing

    metadata = dataset_metadata.DatasetMetadata.from_feature_spec(preprocessing.raw_feature_spec(schema))
    metadata_io.write_metadata(metadata, FileSystems.join(output, TRANSFORM_GRAPH, "metadata"))


def run(config: TransformConfig) -> dict:
    """Runs the Transform stage; returns the stats also written to <output>/transformed/stats.json."""
    options = _validate(config)
    example_gen_stats = _read_example_gen_stats(config.examples)
    try:
        schema = F.schema_of_examples(example_gen_stats)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise InputError(f"--examples {config.examples}: stats.json does not name a known layout ({e})") from None
    try:
        options.check_fields(schema)
    except ValueError as e:
        raise InputError(str(e)) from None
    files = {split: found for split in SPLITS if (found := _split_files(config.examples, split))}
    if "train" not in files:
        raise InputError(f"--examples {config.examples} has no training examples (examples/train/*.tfrecord.gz)")
    options = pipeline_options(config.runner, config.beam_args)
    check_writable(config.output)
    clear_outputs(config.output, (TRANSFORM_GRAPH, TRANSFORMED), "Transform", config.overwrite)
    temp_dir = FileSystems.join(config.output, ".transform-tmp")
    _LOG.info(
        "Transform: %s examples from %s (%s) -> %s", schema.name, config.examples, ", ".join(files), config.output
    )
    started = time.perf_counter()

    import tensorflow_transform.beam as tft_beam

    p = beam.Pipeline(options=options)
    try:
        with tft_beam.Context(temp_dir=temp_dir, desired_batch_size=config.batch_size):
            build(p, config, schema, files)
            result = p.run()
            result.wait_until_finish()
    finally:
        if FileSystems.exists(temp_dir):
            FileSystems.delete([temp_dir])
    _write_raw_metadata(config.output, schema)
    stats = stats_from_counters(counters(result, noise.NAMESPACE), config, schema)
    stats["seconds"] = round(time.perf_counter() - started, 2)
    problems = check_rows(stats["rows"], example_gen_stats)
    if problems:
        raise RuntimeError("Transform lost track of rows: " + "; ".join(problems))
    with FileSystems.create(FileSystems.join(config.output, TRANSFORMED, STATS)) as f:
        f.write(json.dumps(stats, indent=2).encode())
    return stats
