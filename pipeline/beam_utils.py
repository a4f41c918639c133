"""Beam plumbing shared by the Beam stages (ExampleGen, Transform): runner options, counters,
pre-framed TFRecord output, output-folder checks."""

from __future__ import annotations

import collections

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import IN_PROCESS


class InputError(ValueError):
    """Bad input paths, layouts or options, found before the pipeline starts."""


def pipeline_options(runner: str, beam_args) -> PipelineOptions:
    if runner == IN_PROCESS:
        # Beam's DirectRunner first tries to download the Prism runner, which fails offline. One
        # worker: with --direct_running_mode=multi_processing --direct_num_workers=2, Beam 2.77
        # lost whole join groups without an error in 2 of 3 runs of 2M rows here (caught by
        # ExampleGen's accounting); the run that kept everything was ~15% faster.
        runner_args = ["--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner"]
    else:
        runner_args = [f"--runner={runner}"]
    return PipelineOptions(runner_args + list(beam_args))


class FramedRecordSink(beam.io.filebasedsink.FileBasedSink):
    """Writes TFRecord files (gzipped when `compressed`) from elements that are already
    TFRecord-framed (`records.tfrecord_frame`), so a whole batch of records travels as one element."""

    def __init__(self, file_path_prefix: str, compressed: bool = True):
        suffix = ".tfrecord.gz" if compressed else ".tfrecord"
        super().__init__(file_path_prefix, beam.coders.BytesCoder(), file_name_suffix=suffix)

    def write_encoded_record(self, file_handle, value: bytes):
        file_handle.write(value)


def counters(result, namespace: str) -> dict[str, int]:
    totals = collections.Counter()
    for counter in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        try:
            value = counter.committed
        except Exception:  # runners without committed metrics
            value = None
        totals[counter.key.metric.name] += value if value is not None else counter.attempted
    return dict(totals)


def check_writable(output: str) -> None:
    probe = FileSystems.join(output, ".mtrank-write-check")
    try:
        FileSystems.create(probe).close()
        FileSystems.delete([probe])
    except (BeamIOError, OSError) as e:
        raise InputError(f"--output {output} is not a writable folder ({type(e).__name__})") from None


def clear_outputs(output: str, names, stage: str, overwrite: bool) -> None:
    """Deletes the stage's earlier outputs under `output`, or refuses unless `overwrite`."""
    targets = [FileSystems.join(output, n) for n in names]
    existing = [t for t in targets if FileSystems.exists(t)]
    if existing and not overwrite:
        raise InputError(f"--output {output} already holds {stage} output; pass --overwrite to replace it")
    for target in existing:
        FileSystems.delete([target])
