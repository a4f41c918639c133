"""Benchmark child: trains one model on a Transform output and measures its SavedModel.

python bench/train.py TRANSFORMED OUT MODEL [--epochs N] [--mtn] [--patience P]
prints one JSON line: training examples/s after warm-up (input pipeline included), inference
examples/s of the exported SavedModel through `predict` (named raw tensors, batches of 2,048)
and `serving_default` (serialized tf.Examples), AUCs, parameter counts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np
import tensorflow as tf

from trainer import callbacks, export, train

BATCH = 2048
INFER_ROWS = 200_000


def _rate(call, batches) -> float:
    call(batches[0])  # warm-up: tracing and table initialisation
    started = time.perf_counter()
    rows = 0
    for batch in batches:
        out = call(batch)
        rows += int(out["ctr"].shape[0])
    return rows / (time.perf_counter() - started)


def inference(serving_dir: str, examples_dir: str) -> dict:
    files = sorted(tf.io.gfile.glob(os.path.join(examples_dir, "examples", "test", "*.tfrecord.gz")))
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(INFER_ROWS)]
    loaded = tf.saved_model.load(serving_dir)
    predict, serve = loaded.signatures["predict"], loaded.signatures["serving_default"]
    chunks = [records[i : i + BATCH] for i in range(0, len(records) - BATCH + 1, BATCH)]
    tensors = [export.predict_inputs(predict, chunk) for chunk in chunks]
    serialized = [tf.constant(chunk) for chunk in chunks]
    return {
        "predict_rate": _rate(lambda b: predict(**b), tensors),
        "serving_default_rate": _rate(lambda b: serve(examples=b), serialized),
        "infer_rows": len(chunks) * BATCH,
    }


def _raw_examples_dir(transformed: str) -> str:
    """ExampleGen's output folder that Transform read (its stats.json says which)."""
    with open(os.path.join(transformed, "transformed", "stats.json")) as f:
        return json.load(f)["config"]["examples"]


def network_rate(run_dir: str, transformed: str) -> tuple[float, int]:
    """(examples/s, dense kernel weights) of the trained network alone (XLA) on transformed test
    rows held in memory: what DeepCTR's model.predict measures, without parsing or tf.Transform.
    Each dense kernel weight is one multiply-add per example forward, so the dense part costs
    2 FLOPs per weight per example forward and about 6 in a training step."""
    import tensorflow_transform as tft

    from trainer import inputs, models
    from trainer.training_model import dummy_batch
    from transform.preprocessing import categorical_cardinalities

    with open(os.path.join(run_dir, "config.json")) as f:
        saved = json.load(f)
    spec = inputs.InputSpec.from_dict(saved["input_spec"])
    network = models.build(spec.to_dict(), saved["trainer"]["model"])
    network(dummy_batch(spec))
    network.load_weights(os.path.join(run_dir, "best.weights.h5"))
    tft_output = tft.TFTransformOutput(os.path.join(transformed, "transform_graph"))
    split = inputs.load(
        [os.path.join(transformed, "transformed", "test", "*")],
        tft_output.transformed_feature_spec(),
        spec,
        categorical_cardinalities(tft_output),
        32,
        8,
        "test",
    )
    callbacks.predict(network, split, BATCH, xla=True, steps=2)  # compile
    started = time.perf_counter()
    scores, _ = callbacks.predict(network, split, BATCH, xla=True)
    rate = len(scores["ctr"]) / (time.perf_counter() - started)
    kernels = sum(int(np.prod(w.shape)) for w in network.weights if "kernel" in w.path.rsplit("/", 1)[-1])
    return rate, kernels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transformed")
    parser.add_argument("out")
    parser.add_argument("model")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--mtn", action="store_true")
    parser.add_argument("--config", default="{}", help="JSON of extra model keys")
    args = parser.parse_args()
    config = {
        "model": {"name": args.model, **json.loads(args.config)},
        "training": {"epochs": args.epochs, "batch_size": BATCH, "patience": args.patience},
    }
    if args.mtn:
        config["mtn"] = {}
    result = train.train(args.transformed, args.out, config, overwrite=True)
    serving = os.path.join(args.out, "model", "serving")
    rate, kernels = network_rate(os.path.join(args.out, "model"), args.transformed)
    report = {
        "network_rate": rate,
        "dense_kernel_weights": kernels,
        "model": args.model,
        "mtn": args.mtn,
        "train_rate": result["train_examples_per_second"],
        "train_rows": result["rows"]["train"],
        "epochs": result["epochs_done"],
        "best_epoch": result["best_epoch"],
        "load_seconds": result["seconds"]["load"],
        "train_seconds": result["seconds"]["train"],
        "test": result.get("test"),
        "params": result["params"],
        **inference(serving, _raw_examples_dir(args.transformed)),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(report, default=float))


if __name__ == "__main__":
    main()
