"""ExampleGen on several Beam workers against one: does every row come through, and how fast?

Runs ExampleGen on synthetic raw Ali-CCP rows with the in-process runner, `--runs` times per
worker count, and prints one JSON line per run: seconds, the accounting check's error (null when
read = written + rejected + dropped), the records actually in each split's files, and whether the
parsed examples, keyed by (split, sample id), equal the one-worker run's (slow: about 60 s per
300K rows; `--no-compare` skips it).
`--unpatched` runs Beam 2.77 as released, without `common.beam.use_lossless_data_plane`: its
time-based data-plane stream then loses rows on 2 workers in most runs of 2M rows (README, "Beyond
one machine"; tests/test_beam_workers.py has the minimal reproduction).

Usage: python bench/beam_workers.py [--rows 2000000] [--workers 1,2] [--runs 3] [--unpatched]
                                    [--no-compare] [--mode multi_processing] [--data-dir bench/.data]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import pathlib
import struct
import sys
import time

_HEADER = struct.Struct("<QI")


def framed_records(folder: pathlib.Path) -> list[bytes]:
    """The records of a folder's gzipped TFRecord files (length, length CRC, data, data CRC)."""
    found = []
    for path in sorted(folder.glob("*.tfrecord.gz")):
        data, offset = gzip.decompress(path.read_bytes()), 0
        while offset < len(data):
            (length, _), offset = _HEADER.unpack_from(data, offset), offset + _HEADER.size
            found.append(data[offset : offset + length])
            offset += length + 4
    return found


def examples_by_id(output: pathlib.Path) -> dict[tuple[str, bytes], bytes]:
    """{(split, sample id): a digest of the parsed example}: workers may order a record's fields
    differently, so records are compared parsed, and as digests to fit 2M of them in memory."""
    from common import records
    from common.layout import EXAMPLES, SPLITS

    examples = {}
    for split in SPLITS:
        for record in framed_records(output / EXAMPLES / split):
            example = records.parse_example(record)
            digest = hashlib.blake2b(repr(sorted(example.items())).encode(), digest_size=16).digest()
            examples[split, example["sample_id"][0]] = digest
    return examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated; 1 is the reference")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mode", default="multi_processing", choices=("multi_processing", "multi_threading"))
    parser.add_argument("--data-dir", default="bench/.data")
    parser.add_argument("--unpatched", action="store_true", help="Beam's own data-plane stream, which loses rows")
    parser.add_argument("--no-compare", action="store_true", help="skip parsing and comparing the examples")
    args = parser.parse_args()
    if args.unpatched:
        import common.beam

        common.beam.use_lossless_data_plane = lambda: None

    from common.layout import SPLITS
    from example_gen import beam_pipeline
    from synth import aliccp

    data_dir = pathlib.Path(args.data_dir)
    source = data_dir / f"aliccp_{args.rows}"
    if not (source / "synth.json").exists():
        aliccp.generate(aliccp.AliccpSynthConfig(rows=args.rows, seed=0), str(source), progress=False)
    reference = None
    for workers in sorted(int(n) for n in args.workers.split(",")):
        beam_args = [] if workers == 1 else [f"--direct_running_mode={args.mode}", f"--direct_num_workers={workers}"]
        for run in range(args.runs):
            output = data_dir / f"workers_{args.rows}_{workers}_{run}"
            config = beam_pipeline.IngestConfig(
                format="aliccp-raw", input=str(source), output=str(output), overwrite=True, beam_args=beam_args
            )
            started, error = time.perf_counter(), None
            try:
                beam_pipeline.run(config)
            except RuntimeError as e:  # the accounting check
                error = str(e)
            seconds = time.perf_counter() - started
            examples = None if args.no_compare else examples_by_id(output)
            if reference is None and error is None:
                reference = examples
            line = {
                "workers": workers,
                "run": run,
                "seconds": round(seconds, 1),
                "rows_per_s": round(args.rows / seconds),
                "accounting_error": error,
                "records": None
                if examples is None
                else {split: sum(1 for s, _ in examples if s == split) for split in SPLITS},
                "equal_to_one_worker": None if reference is None else examples == reference,
            }
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    sys.exit(main())
