"""Training speed of this checkout against a git revision's, measured in one run, runs alternating.

MMoE at a fixed configuration (embedding 16, 8 experts of [128, 64], towers [64], batch 2,048,
embedding L2 1e-3, the tables at the dense rate, the decay over 500 steps: every key set, so
neither revision's defaults matter), 600 steps on a Transform output held in memory
(bench/quality.py's data), examples/s as the Trainer reports them. The revision's code is checked
out into a git worktree beside the data.

    python bench/train_speed_paired.py REV [--data bench/.data/quality_1000000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys

import quality

CONFIG = {
    "model": {"name": "mmoe", "embedding_dim": 16, "expert_units": [128, 64], "num_experts": 8, "tower_units": [64]},
    "training": {
        "batch_size": 2048,
        "embedding_l2": 1e-3,
        "embedding_learning_rate": 1e-3,
        "decay_steps": 500,
        "patience": 100,
        "epochs": 2,
        "steps_per_epoch": 300,
        "seed": 0,
    },
}


def run(code_dir: pathlib.Path, data: pathlib.Path, out: pathlib.Path) -> dict:
    return quality._run(
        [sys.executable, "-c", quality._TRAIN, str(data), str(out), json.dumps(CONFIG)],
        env={**os.environ, "PYTHONPATH": str(code_dir)},
        cwd=str(code_dir),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revision")
    parser.add_argument("--data", default="bench/.data/quality_1000000", help="a bench/quality.py data folder")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    data = pathlib.Path(args.data).resolve()
    if not (data / "transformed").exists():
        sys.exit(f"--data {data}: no Transform output there (make it with bench/quality.py's prepare)")
    here = pathlib.Path(__file__).resolve().parents[1]
    worktree = quality.checkout(data.parent, args.revision)
    rates = {"this checkout": [], args.revision: []}
    for repeat in range(args.repeats):
        for label, code in (("this checkout", here), (args.revision, worktree)):
            measured = run(code, data, data.parent / "speed_runs" / label.replace(" ", "_"))
            rate, auc = measured["train_examples_per_second"], measured["test"]["ctr_auc"]
            rates[label].append(rate)
            print(f"{label}, run {repeat + 1}: {rate:,.0f} ex/s (test CTR AUC {auc:.4f})", flush=True)
    now, before = (statistics.mean(values) for values in rates.values())
    print(f"this checkout {now:,.0f} ex/s, {args.revision} {before:,.0f} ex/s: ratio {now / before:.3f}")


if __name__ == "__main__":
    main()
