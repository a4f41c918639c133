"""Beam plumbing shared by the Beam stages (ExampleGen, Transform): runner options, counters,
pre-framed TFRecord output, output-folder checks."""

from __future__ import annotations

import collections
import gzip

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
from apache_beam.runners.worker import data_plane

from common import IN_PROCESS

GZIP_LEVEL = 1  # about 4x smaller than uncompressed here, and 3-4x faster to write than level 6


class InputError(ValueError):
    """Bad input paths, layouts or options, found before the pipeline starts."""


def pipeline_options(runner: str, beam_args) -> PipelineOptions:
    """Beam's options for `runner` and the user's `beam_args`; InputError for a combination that
    loses rows. Call it before a stage touches its output folder."""
    if runner == IN_PROCESS:
        # Beam's DirectRunner first tries to download the Prism runner, which fails offline.
        options = PipelineOptions(["--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner", *beam_args])
        direct = options.view_as(DirectOptions)
        if direct.direct_running_mode == "multi_threading" and direct.direct_num_workers != 1:
            # Its workers share this process and flush their output from a timer thread too: Beam
            # loses rows there, and with the lossless stream a 2M-row run never finished here.
            raise InputError(
                "--direct_running_mode=multi_threading with several workers loses rows in Beam 2.77; "
                "use --direct_running_mode=multi_processing"
            )
        use_lossless_data_plane()
        return options
    return PipelineOptions([f"--runner={runner}", *beam_args])


class _LosslessTimeBasedStream(data_plane.TimeBasedBufferingClosableOutputStream):
    """Beam 2.77's time-based output stream with its writes under the flush lock.

    Beam's own flushes from a timer thread: it takes the buffer, hands it to the data channel
    (whose queue may block) and then clears the buffer, while the writing thread goes on writing
    into it unlocked; whatever was written between the take and the clear is lost without an
    error. The in-process runner with several workers (`--direct_num_workers` 2+) sends each
    bundle's input through such streams, and lost 31 MB of 1 GB that way in a 2M-row ExampleGen
    run here (tests/test_beam_data_plane.py reproduces it on Beam's class alone).
    """

    def _locked(method):
        def write(self, *args):
            with self._flush_lock:
                return method(self, *args)

        write.__name__ = method.__name__
        return write

    write = _locked(data_plane.SizeBasedBufferingClosableOutputStream.write)
    write_byte = _locked(data_plane.SizeBasedBufferingClosableOutputStream.write_byte)
    write_var_int64 = _locked(data_plane.SizeBasedBufferingClosableOutputStream.write_var_int64)
    write_var_int32 = _locked(data_plane.SizeBasedBufferingClosableOutputStream.write_var_int32)
    write_bigendian_int64 = _locked(data_plane.SizeBasedBufferingClosableOutputStream.write_bigendian_int64)
    write_bigendian_uint64 = _locked(data_plane.SizeBasedBufferingClosableOutputStream.write_bigendian_uint64)
    write_bigendian_int32 = _locked(data_plane.SizeBasedBufferingClosableOutputStream.write_bigendian_int32)
    write_bigendian_int16 = _locked(data_plane.SizeBasedBufferingClosableOutputStream.write_bigendian_int16)
    write_bigendian_double = _locked(data_plane.SizeBasedBufferingClosableOutputStream.write_bigendian_double)
    write_bigendian_float = _locked(data_plane.SizeBasedBufferingClosableOutputStream.write_bigendian_float)
    del _locked


def use_lossless_data_plane() -> None:
    """Makes this process's Beam data channels build `_LosslessTimeBasedStream`s (idempotent).

    `ClosableOutputStream.create` looks the class up in its module when it builds a stream, so
    the runner's side of every data channel gets it. Workers in other processes
    (`multi_processing`) flush by size only, which has no timer thread and needs no patch."""
    data_plane.TimeBasedBufferingClosableOutputStream = _LosslessTimeBasedStream


class FramedRecordSink(beam.io.filebasedsink.FileBasedSink):
    """Writes gzipped TFRecord files from elements that are already TFRecord-framed
    (`records.tfrecord_frame`), so a whole batch of records travels as one element.

    The file is gzipped here at level 1 (`GZIP_LEVEL`), not by Beam (level 6, about 9% of
    ExampleGen's time). With `gzipped_elements`, each element is already a gzip member
    (`gzip_member`) and is written as it is: a gzip file may be a series of members, and
    TensorFlow's reader reads them all."""

    def __init__(self, file_path_prefix: str, gzipped_elements: bool = False):
        self._gzip_here = not gzipped_elements
        super().__init__(
            file_path_prefix,
            beam.coders.BytesCoder(),
            file_name_suffix=".tfrecord.gz",
            compression_type=CompressionTypes.UNCOMPRESSED,
        )

    def open(self, temp_path):
        handle = super().open(temp_path)
        return _GzipWriter(handle) if self._gzip_here else handle

    def write_encoded_record(self, file_handle, value: bytes):
        file_handle.write(value)


class _GzipWriter:
    """A gzip stream at `GZIP_LEVEL` over a Beam file handle; closing it closes both."""

    def __init__(self, handle):
        self._handle = handle
        self._gzip = gzip.GzipFile(fileobj=handle, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)

    def write(self, data: bytes) -> None:
        self._gzip.write(data)

    def close(self) -> None:
        self._gzip.close()
        self._handle.close()


def gzip_member(data: bytes) -> bytes:
    """`data` as one gzip member at `GZIP_LEVEL`; mtime 0 keeps equal inputs byte-equal."""
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


class CountingDoFn(beam.DoFn):
    """Counts into `self._counts` and flushes to Beam counters in `NAMESPACE` once per bundle
    (one counter update per name per bundle, not per element)."""

    NAMESPACE = "mtrank"

    def start_bundle(self):
        self._counts = collections.Counter()

    def finish_bundle(self):
        for name, n in self._counts.items():
            Metrics.counter(self.NAMESPACE, name).inc(n)


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
