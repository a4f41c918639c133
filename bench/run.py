"""`make bench`: prints the performance table for what the project has built so far.

Each measurement runs in its own process, so its peak RSS is its own. Rows/s exclude each
stage's fixed start-up, measured as the time of the same stage on a 1,000-row input. ExampleGen
is also measured at the largest size on two worker processes, and on data with about one user
(one common-features line) per sample. Transform is measured on the largest size, without and
with noise injection (P=0.1, Q=0.2).
The Trainer is measured on 1.4M synthetic rows (1M training rows after the test and eval
splits): one epoch per model at the reference configuration (embedding 16, experts [128, 64],
MMoE 8 experts, towers [64], batch 2,048), MMoE with and without MTN, the SavedModel's
inference rate, and MMoE trained to early stopping against the generator's Bayes-optimal AUC.
MMoE and PLE are measured against DeepCTR 0.9.4's on the same rows in the same run (the `bench`
extra installs it), with the dense part's share of the FP32 matmul peak.
Serving runs `mtrank serve` on that MMoE under a load generator on loopback (bench/serve.py).
Usage: python bench/run.py [--rows 500000,2000000] [--only pipeline,train,serve] [--models mmoe,...]
                           [--data-dir bench/.data]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from trainer.config import MODEL_NAMES

_INGEST = """
import json, resource, sys, time
from example_gen import beam_pipeline
started = time.perf_counter()
config = beam_pipeline.IngestConfig(format="aliccp-raw", input=sys.argv[1], output=sys.argv[2], overwrite=True,
                                    beam_args=sys.argv[3:])
stats = beam_pipeline.run(config)
print(json.dumps({"seconds": time.perf_counter() - started, "written": stats["written"],
                  "lines": stats["lines_read"], "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
_TRANSFORM = """
import json, resource, sys, time
from transform import beam_pipeline
started = time.perf_counter()
stats = beam_pipeline.run(beam_pipeline.TransformConfig(examples=sys.argv[1], output=sys.argv[2], overwrite=True,
                                                        noise_proportion=float(sys.argv[3]), beam_args=sys.argv[4:]))
print(json.dumps({"seconds": time.perf_counter() - started, "written": sum(stats["rows"].values()),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


_MATMUL_PEAK = """
import json, time
import tensorflow as tf
a = tf.random.normal([2048, 2048])
matmul = tf.function(tf.linalg.matmul)
matmul(a, a).numpy()
best = 0.0
for _ in range(5):
    started = time.perf_counter()
    for _ in range(10):
        out = matmul(a, a)
    out.numpy()
    best = max(best, 10 * 2 * 2048**3 / (time.perf_counter() - started) / 1e9)
print(json.dumps({"gflops": best}))
"""

SESSION_ROWS_PER_USER = 25.0  # the generator's default: users with about 25 impressions each


def synthetic(rows: int, data_dir: pathlib.Path, rows_per_user: float = SESSION_ROWS_PER_USER) -> tuple:
    """The synthetic raw Ali-CCP folder for `rows` (generated once, then reused) and its generation
    rate. `rows_per_user` 1: about one common-features line per sample, sessions of one or two."""
    from synth import aliccp

    suffix = "" if rows_per_user == SESSION_ROWS_PER_USER else f"_per_user{rows_per_user:g}"
    folder = data_dir / f"aliccp_{rows}{suffix}"
    manifest_path = folder / "synth.json"
    if manifest_path.exists() and json.loads(manifest_path.read_text())["config"]["rows"] == rows:
        return folder, float("nan")
    started = time.perf_counter()
    config = aliccp.AliccpSynthConfig(rows=rows, seed=0, rows_per_user=rows_per_user)
    aliccp.generate(config, str(folder), progress=False)
    return folder, rows / (time.perf_counter() - started)


def _python(*args) -> dict:
    """Runs `python ARGS` in its own process (so its peak RSS is its own); its last stdout line, as JSON."""
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"benchmark child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _child(code: str, *args) -> dict:
    return _python("-c", code, *args)


def worker_args(workers: int) -> list[str]:
    """Beam's in-process runner on `workers` worker processes (one: in this process)."""
    return [] if workers == 1 else ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]


def ingest(folder: pathlib.Path, output: pathlib.Path, workers: int = 1) -> dict:
    return _child(_INGEST, folder, output, *worker_args(workers))


def transform(examples: pathlib.Path, output: pathlib.Path, noise_proportion: float, workers: int = 1) -> dict:
    return _child(_TRANSFORM, examples, output, noise_proportion, *worker_args(workers))


TRAIN_ROWS = 1_400_000  # x 0.8 (train file) x 0.9 (not eval) = 1,008,000 training rows


def _prepared(data_dir: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """Ingested and transformed synthetic data for the Trainer benchmark (cached)."""
    folder, _ = synthetic(TRAIN_ROWS, data_dir)
    out = data_dir / f"trainer_{TRAIN_ROWS}"
    if not (out / "stats.json").exists():
        ingest(folder, out)
    if not (out / "transformed" / "stats.json").exists():
        transform(out, out, 0.0)
    return out, json.loads((folder / "synth.json").read_text())


def _train_child(transformed: pathlib.Path, out: pathlib.Path, model: str, *flags) -> dict:
    return _python("bench/train.py", transformed, out, model, *flags)


# DeepCTR's PLE as bench/deepctr_peer.py builds it (2 levels, 2 specific experts per task): our
# PLE's defaults differ (experts [64], 1 shared expert), so the speed ratio is taken at these.
PEER_PLE = {"expert_units": [128, 64], "shared_experts": 4, "specific_experts": 2, "levels": 2}
PLE_AS_PEER = "ple (DeepCTR's configuration)"


def _peer_child(transformed: pathlib.Path, model: str) -> dict:
    """DeepCTR 0.9.4's `model` on the same transformed rows, 2 epochs (speed from the second)."""
    return _python("bench/deepctr_peer.py", transformed, model, 0, "--epochs", 2)


def _paper_params(transformed: pathlib.Path) -> dict:
    """Parameters at the FDN paper's settings (embedding 32, experts [128, 64]) on the 23 Ali-CCP
    fields of the benchmark data: {model: (all, without embeddings)}."""
    import dataclasses

    import tensorflow_transform as tft

    from trainer import inputs, models
    from trainer.config import ModelConfig
    from trainer.training_model import dummy_batch
    from transform.preprocessing import categorical_cardinalities

    tft_output = tft.TFTransformOutput(str(transformed / "transform_graph"))
    spec = inputs.build_spec(tft_output.transformed_feature_spec(), categorical_cardinalities(tft_output), None, 16)
    counts = {}
    for label, changes in (
        ("mmoe", {"name": "mmoe"}),
        ("cgc", {"name": "cgc", "shared_experts": 4}),
        ("ple", {"name": "ple", "shared_experts": 4}),
        ("fdn (2 DCPs)", {"name": "fdn", "pairs": 2}),
        ("fdn (4 DCPs)", {"name": "fdn", "pairs": 4}),
    ):
        model = models.build(
            spec.to_dict(), dataclasses.asdict(ModelConfig(embedding_dim=32, expert_units=(128, 64), **changes))
        )
        model(dummy_batch(spec))
        embedding = sum(
            int(np.prod(v.shape))
            for layer in model._flatten_layers()
            if type(layer).__name__ == "FieldEmbedding"
            for v in layer.weights
        )
        counts[label] = (model.count_params(), model.count_params() - embedding)
    return counts


def bench_trainer(data_dir: pathlib.Path, model_names: list[str]) -> None:
    transformed, manifest = _prepared(data_dir)
    runs = {}
    for model in model_names:
        runs[model] = _train_child(transformed, data_dir / "train_runs" / model, model)
        print(f"  measured training of {model}", file=sys.stderr, flush=True)
    if "ple" in model_names:  # at DeepCTR's PLE configuration, for the side-by-side run below
        runs[PLE_AS_PEER] = _train_child(
            transformed, data_dir / "train_runs" / "ple_as_peer", "ple", "--config", json.dumps(PEER_PLE)
        )
    runs["mmoe+mtn"] = _train_child(transformed, data_dir / "train_runs" / "mmoe_mtn", "mmoe", "--mtn")
    best = _train_child(transformed, data_dir / "train_runs" / "mmoe_best", "mmoe", "--epochs", "4")
    bayes = manifest["bayes_auc"]["test"]
    runs = {"mmoe": runs.get("mmoe") or _train_child(transformed, data_dir / "train_runs" / "mmoe", "mmoe"), **runs}
    rows = runs["mmoe"]["train_rows"]
    print(f"\n## Trainer: {rows:,} training rows, batch {2048}, one epoch (reference configuration)\n")
    print(
        "| model | train ex/s after warm-up | network infer ex/s | SavedModel predict ex/s | serving_default ex/s "
        "| test AUC CTR / CVR / CTCVR after 1 epoch | exported params |"
    )
    print("|---|---:|---:|---:|---:|---|---:|")
    for name, r in runs.items():
        t = r["test"]
        print(
            f"| {name} | {r['train_rate']:,.0f} | {r['network_rate']:,.0f} | {r['predict_rate']:,.0f} "
            f"| {r['serving_default_rate']:,.0f} "
            f"| {t['ctr_auc']:.4f} / {t['cvr_auc']:.4f} / {t['ctcvr_auc']:.4f} | {r['params']['exported']:,} |"
        )
    overhead = runs["mmoe"]["train_rate"] / runs["mmoe+mtn"]["train_rate"] - 1
    print(
        f"\nFloors: serving_default >= 150,000 ex/s in batches of 2,048 (measured "
        f"{runs['mmoe']['serving_default_rate']:,.0f}); MTN adds <= 15% to the step time (measured {overhead:+.1%})."
    )
    peers = {name: ours for name, ours in (("mmoe", "mmoe"), ("ple", PLE_AS_PEER)) if ours in runs}
    if peers:
        measured = {ours: _peer_child(transformed, name) for name, ours in peers.items()}
        _print_peers(runs, measured, _child(_MATMUL_PEAK)["gflops"])
    t = best["test"]
    print(
        f"\nMMoE to early stopping ({best['epochs']} epochs, best {best['best_epoch']}): "
        f"test AUC CTR {t['ctr_auc']:.4f} "
        f"(Bayes-optimal {bayes['ctr']:.4f}, gap {bayes['ctr'] - t['ctr_auc']:.4f}; floor: gap <= 0.02), "
        f"CVR {t['cvr_auc']:.4f} (Bayes {bayes['cvr']:.4f}), CTCVR {t['ctcvr_auc']:.4f} (Bayes {bayes['ctcvr']:.4f})"
    )
    print(
        "\nParameters at the FDN paper's settings (embedding 32, experts [128, 64], 8 experts; CGC/PLE 2 specific"
        " per task + 4 shared per level, PLE 2 levels):\n"
    )
    print("| model | parameters | without embeddings |\n|---|---:|---:|")
    for name, (total, dense) in _paper_params(transformed).items():
        print(f"| {name} | {total:,} | {dense:,} |")


def _print_peers(runs: dict, peers: dict, peak_gflops: float) -> None:
    """Ours against DeepCTR on the same rows in this run, and the dense part's share of the FP32 peak."""
    print(
        f"\nAgainst DeepCTR 0.9.4 on the same rows, this run (floors: >= 2x in training and in the network's "
        f"inference). The dense part's FLOPs: 6 per dense kernel weight per training example (forward and two "
        f"backward products); its peak: a 2,048^3 FP32 matmul in this run, {peak_gflops:,.0f} GFLOP/s.\n"
    )
    print(
        "| model | train ex/s | DeepCTR train ex/s | ratio | network infer ex/s | DeepCTR predict ex/s | ratio "
        "| dense GFLOP/s in training | share of FP32 peak | test AUC CTR / CTCVR: ours, DeepCTR |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, peer in peers.items():
        ours = runs[name]
        dense = ours["train_rate"] * 6 * ours["dense_kernel_weights"] / 1e9
        print(
            f"| {name} | {ours['train_rate']:,.0f} | {peer['train_examples_per_second']:,.0f} "
            f"| {ours['train_rate'] / peer['train_examples_per_second']:.2f}x | {ours['network_rate']:,.0f} "
            f"| {peer['predict_examples_per_second']:,.0f} "
            f"| {ours['network_rate'] / peer['predict_examples_per_second']:.2f}x | {dense:,.1f} "
            f"| {dense / peak_gflops:.1%} | {ours['test']['ctr_auc']:.4f} / {ours['test']['ctcvr_auc']:.4f}, "
            f"{peer['test']['ctr_auc']:.4f} / {peer['test']['ctcvr_auc']:.4f} |"
        )


SECTIONS = {"pipeline", "train", "serve"}


def bench_serving(data_dir: pathlib.Path) -> None:
    """`mtrank serve` on the Trainer section's MMoE (trained first if the train section has not run)."""
    transformed, _ = _prepared(data_dir)
    run_dir = data_dir / "train_runs" / "mmoe"
    if not (run_dir / "model" / "serving" / "saved_model.pb").exists():
        _train_child(transformed, run_dir, "mmoe")
    r = _python("bench/serve.py", run_dir / "model" / "serving", transformed)
    print(f"\n## Serving: `mtrank serve` on loopback, the reference MMoE, {r['clients']} concurrent clients\n")
    print("| load | requests/s | p50 ms | p99 ms | floor |\n|---|---:|---:|---:|---|")
    for key, label, floor in (
        ("serving_default", "1 row, `serving_default` (b64 tf.Example)", ">= 2,500/s at p99 <= 20 ms"),
        ("predict", "1 row, `predict` (JSON features)", ">= 600/s at p99 <= 50 ms"),
        ("serving_default_no_batching", "1 row, `serving_default`, --no-batching", ""),
    ):
        m = r[key]
        print(f"| {label} | {m['requests_per_s']:,.0f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {floor} |")
    for key, m in r["rows_1000"].items():
        print(
            f"| 1,000 rows, `{key}`, one at a time | {1000 / m['p50_ms']:,.1f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} "
            f"| <= 60 ms |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="500000,2000000", help="comma-separated sample rows (default: %(default)s)")
    parser.add_argument("--data-dir", default="bench/.data", help="where generated inputs are cached")
    parser.add_argument(
        "--only",
        default=",".join(sorted(SECTIONS)),
        help="sections: pipeline (ExampleGen, Transform), train, serve (default: all)",
    )
    parser.add_argument(
        "--models", default=",".join(MODEL_NAMES), help="models the train section measures (default: all)"
    )
    args = parser.parse_args()
    data_dir = pathlib.Path(args.data_dir)
    sections = set(args.only.split(","))
    if set(args.models.split(",")) - set(MODEL_NAMES) - {""}:
        sys.exit(f"--models: unknown models; known: {', '.join(MODEL_NAMES)}")
    if sections - SECTIONS:
        sys.exit(f"--only: unknown sections {sorted(sections - SECTIONS)}; known: {', '.join(sorted(SECTIONS))}")
    if "pipeline" in sections:
        bench_pipeline(args, data_dir)
    if "train" in sections:
        bench_trainer(data_dir, args.models.split(","))
    if "serve" in sections:
        bench_serving(data_dir)


def bench_pipeline(args, data_dir: pathlib.Path) -> None:
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
    largest = max(sizes)
    # The same largest input on two worker processes (Beam's multi_processing mode); their own
    # start-up is included, as it is what a user pays, and their memory is not in the peak RSS.
    two_workers = ingest(synthetic(largest, data_dir)[0], data_dir / f"out_{largest}_2w", workers=2)
    assert two_workers["written"] == largest, two_workers
    print(f"  measured ingest of {largest:,} rows on 2 workers", file=sys.stderr, flush=True)
    # Small sessions: one user per sample or so, so about as many common-features lines as samples.
    per_sample_folder, _ = synthetic(largest, data_dir, rows_per_user=1.0)
    per_sample = {}
    for workers in (1, 2):
        per_sample[workers] = ingest(per_sample_folder, data_dir / f"out_{largest}_per_user1", workers=workers)
        assert per_sample[workers]["written"] == largest, per_sample[workers]
        print(f"  measured ingest of {largest:,} rows, one user per sample, {workers} worker(s)", file=sys.stderr)
    transform_startup = transform(data_dir / "out_1000", data_dir / "transform_1000", 0.0)["seconds"]
    transforms = []
    for noise_proportion, workers in ((0.0, 1), (0.1, 1), (0.0, 2)):
        output = data_dir / f"transform_{largest}" if workers == 1 else data_dir / f"transform_{largest}_2w"
        run = transform(data_dir / f"out_{largest}", output, noise_proportion, workers)
        assert run["written"] == largest, run
        transforms.append((noise_proportion, workers, run, largest / max(run["seconds"] - transform_startup, 1e-9)))
        print(f"  measured transform, noise {noise_proportion}, {workers} worker(s)", file=sys.stderr, flush=True)
    print(f"Fixed start-up (1,000-row run): ExampleGen {startup:.1f} s, Transform {transform_startup:.1f} s\n")
    print("| benchmark | rows | wall s | rows/s excl. start-up | peak RSS MB | floor |")
    print("|---|---:|---:|---:|---:|---|")
    # Floors: the performance issue's, at 2M rows on this 2-core machine.
    for rows, synth_rate, run, rate in rows_table:
        print(
            f"| ingest aliccp-raw | {rows:,} | {run['seconds']:.1f} | {rate:,.0f} | {run['rss_mb']:,.0f} "
            f"| >= 30,000 rows/s; < 4,096 MB at 2M |"
        )
    rate = largest / max(two_workers["seconds"] - startup, 1e-9)
    print(
        f"| ingest aliccp-raw, 2 worker processes | {largest:,} | {two_workers['seconds']:.1f} | {rate:,.0f} "
        f"| {two_workers['rss_mb']:,.0f} (runner only) | >= 30,000 rows/s |"
    )
    for workers, run in per_sample.items():
        rate = largest / max(run["seconds"] - startup, 1e-9)
        label = f"ingest aliccp-raw, one user per sample ({run['lines'] - largest:,} common lines)"
        label += ", 2 worker processes" if workers == 2 else ""
        rss = f"{run['rss_mb']:,.0f}" + (" (runner only)" if workers == 2 else "")
        print(f"| {label} | {largest:,} | {run['seconds']:.1f} | {rate:,.0f} | {rss} | >= 15,000 rows/s |")
    for noise_proportion, workers, run, rate in transforms:
        label = f"transform, noise P={noise_proportion} Q=0.2" if noise_proportion else "transform, no noise"
        label += ", 2 worker processes" if workers == 2 else ""
        floor = ">= 20,000 rows/s" if workers == 1 else ""
        rss = f"{run['rss_mb']:,.0f}" + (" (runner only)" if workers == 2 else "")
        print(f"| {label} | {largest:,} | {run['seconds']:.1f} | {rate:,.0f} | {rss} | {floor} |")
    for rows, synth_rate, _, _ in rows_table:
        if synth_rate == synth_rate:  # generated in this run, not cached
            print(f"\nsynth aliccp: {rows:,} rows at {synth_rate:,.0f} rows/s")


if __name__ == "__main__":
    main()
