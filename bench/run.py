"""`make bench`: prints the performance table for what the project has built so far.

Each measurement runs in its own process, so its peak RSS is its own. Rows/s exclude each
stage's fixed start-up, measured as the time of the same stage on a 1,000-row input. Transform
is measured on the largest size, without and with noise injection (P=0.1, Q=0.2).
Usage: python bench/run.py [--rows 500000,2000000] [--data-dir bench/.data]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

_INGEST = """
import json, resource, sys, time
from pipeline.example_gen import beam_pipeline
started = time.perf_counter()
stats = beam_pipeline.run(beam_pipeline.IngestConfig(format="aliccp-raw", input=sys.argv[1], output=sys.argv[2], overwrite=True))
print(json.dumps({"seconds": time.perf_counter() - started, "written": stats["written"],
                  "lines": stats["lines_read"], "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
_TRANSFORM = """
import json, resource, sys, time
from transform import beam_pipeline
started = time.perf_counter()
stats = beam_pipeline.run(beam_pipeline.TransformConfig(examples=sys.argv[1], output=sys.argv[2], overwrite=True,
                                                        noise_proportion=float(sys.argv[3])))
print(json.dumps({"seconds": time.perf_counter() - started, "written": sum(stats["rows"].values()),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def synthetic(rows: int, data_dir: pathlib.Path) -> tuple[pathlib.Path, float]:
    """The synthetic raw Ali-CCP folder for `rows` (generated once, then reused) and its generation rate."""
    from pipeline.synth import aliccp

    folder = data_dir / f"aliccp_{rows}"
    manifest_path = folder / "synth.json"
    if manifest_path.exists() and json.loads(manifest_path.read_text())["config"]["rows"] == rows:
        return folder, float("nan")
    started = time.perf_counter()
    aliccp.generate(aliccp.AliccpSynthConfig(rows=rows, seed=0), str(folder), progress=False)
    return folder, rows / (time.perf_counter() - started)


def _child(code: str, *args) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"benchmark child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ingest(folder: pathlib.Path, output: pathlib.Path) -> dict:
    return _child(_INGEST, folder, output)


def transform(examples: pathlib.Path, output: pathlib.Path, noise_proportion: float) -> dict:
    return _child(_TRANSFORM, examples, output, noise_proportion)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="500000,2000000", help="comma-separated sample rows (default: %(default)s)")
    parser.add_argument("--data-dir", default="bench/.data", help="where generated inputs are cached")
    args = parser.parse_args()
    data_dir = pathlib.Path(args.data_dir)
    sizes = [int(n) for n in args.rows.split(",")]
    rows_table = []
    print(f"# Benchmarks on {os.cpu_count()} cores (synthetic aliccp-raw, in-process Beam runner)", flush=True)
    tiny, _ = synthetic(1_000, data_dir)
    startup = ingest(tiny, data_dir / "out_1000")["seconds"]
    for rows in sizes:
        folder, synth_rate = synthetic(rows, data_dir)
        run = ingest(folder, data_dir / f"out_{rows}")
        assert run["written"] == rows, run
        rows_table.append((rows, synth_rate, run, rows / max(run["seconds"] - startup, 1e-9)))
        print(f"  measured ingest of {rows:,} rows", file=sys.stderr, flush=True)
    transform_startup = transform(data_dir / "out_1000", data_dir / "transform_1000", 0.0)["seconds"]
    largest = max(sizes)
    transforms = []
    for noise_proportion in (0.0, 0.1):
        run = transform(data_dir / f"out_{largest}", data_dir / f"transform_{largest}", noise_proportion)
        assert run["written"] == largest, run
        transforms.append((noise_proportion, run, largest / max(run["seconds"] - transform_startup, 1e-9)))
        print(f"  measured transform of {largest:,} rows, noise {noise_proportion}", file=sys.stderr, flush=True)
    print(f"Fixed start-up (1,000-row run): ExampleGen {startup:.1f} s, Transform {transform_startup:.1f} s\n")
    print("| benchmark | rows | wall s | rows/s excl. start-up | peak RSS MB | floor |")
    print("|---|---:|---:|---:|---:|---|")
    for rows, synth_rate, run, rate in rows_table:
        print(f"| ingest aliccp-raw | {rows:,} | {run['seconds']:.1f} | {rate:,.0f} | {run['rss_mb']:,.0f} "
              f"| >= 15,000 rows/s; < 4,096 MB at 2M |")
    for noise_proportion, run, rate in transforms:
        label = f"transform, noise P={noise_proportion} Q=0.2" if noise_proportion else "transform, no noise"
        print(f"| {label} | {largest:,} | {run['seconds']:.1f} | {rate:,.0f} | {run['rss_mb']:,.0f} | >= 10,000 rows/s |")
    for rows, synth_rate, _, _ in rows_table:
        if synth_rate == synth_rate:  # generated in this run, not cached
            print(f"\nsynth aliccp: {rows:,} rows at {synth_rate:,.0f} rows/s")


if __name__ == "__main__":
    main()
