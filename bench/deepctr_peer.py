"""The peer rows of `bench/quality.py`: DeepCTR 0.9.4's MMOE and PLE on the same transformed ids
the Trainer reads (the `bench` extra installs deepctr; it runs on tf-keras, hence
TF_USE_LEGACY_KERAS=1 before TensorFlow is imported).

Inputs: every single-valued field a SparseFeat, every bag a weighted VarLenSparseFeat with sum
pooling (ids shifted by one, so DeepCTR's mask_zero padding never hides a real id), every numeric
field a DenseFeat. DeepCTR's usual settings: its models' constructor defaults (MMOE: 3 experts of
[256, 128], towers [64]; PLE: 2 levels of 1 shared and 1 task-specific expert of [256], towers
[64]; l2_reg_embedding 1e-5 on both), Adam 1e-3 and batch 256 as its documented examples train
them. The embedding size is ours, 16 (DeepCTR's SparseFeat default is 4). The two tasks are DeepCTR's
usual pair, click and conversion over all impressions, so its second output estimates CTCVR:
it scores CTCVR as it is and CVR on clicked rows. Trained for up to `--epochs` epochs; the epoch
kept is the one with the best summed eval log loss (CTR + CVR + CTCVR, the Trainer's monitor),
and test is scored there.
Speed: training examples/s over the epochs after the first (which pays for tracing), and
`model.predict` examples/s on the test split held in memory, batches of 2,048, after a warm-up.
Usage: python bench/deepctr_peer.py TRANSFORMED {mmoe,ple} SEED [--epochs 3]
Prints one JSON line.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

BATCH = 256
PREDICT_BATCH = 2048
EMBEDDING = 16


def load(transformed: str):
    """({split: (features, labels)}, InputSpec) from Transform's output, as the Trainer reads it."""
    import tensorflow_transform as tft

    from trainer import inputs
    from transform.preprocessing import categorical_cardinalities

    tft_output = tft.TFTransformOutput(os.path.join(transformed, "transform_graph"))
    feature_spec, cardinalities = tft_output.transformed_feature_spec(), categorical_cardinalities(tft_output)
    splits, spec = {}, None
    for name in ("train", "eval", "test"):
        split = inputs.load(
            [os.path.join(transformed, "transformed", name, "*.tfrecord.gz")],
            feature_spec,
            spec,
            cardinalities,
            32,
            16.0,
            name,
        )
        spec = split.spec
        splits[name] = (split.features, split.labels)
    return splits, spec


def deepctr_inputs(features: dict, spec) -> dict:
    from trainer.inputs import BAG

    out = {}
    for f in spec.fields:
        if f.kind == BAG:
            weights = features[f.weight_key]
            out[f.key] = np.where(weights != 0, features[f.key] + 1, 0).astype(np.int32)
            out[f.weight_key] = weights[..., None].astype(np.float32)
        else:
            out[f.key] = features[f.key]
    return out


def feature_columns(spec) -> list:
    from deepctr.feature_column import DenseFeat, SparseFeat, VarLenSparseFeat

    from trainer.inputs import BAG, CATEGORICAL

    columns = []
    for f in spec.fields:
        if f.kind == CATEGORICAL:
            columns.append(SparseFeat(f.key, f.cardinality, EMBEDDING))
        elif f.kind == BAG:
            columns.append(
                VarLenSparseFeat(
                    SparseFeat(f.key, f.cardinality + 1, EMBEDDING),
                    f.bag_length,
                    combiner="sum",
                    weight_name=f.weight_key,
                    weight_norm=False,
                )
            )
        else:
            columns.append(DenseFeat(f.key, 1))
    return columns


def build(name: str, columns: list, seed: int):
    from deepctr.models import MMOE, PLE

    common = dict(seed=seed, task_types=("binary", "binary"), task_names=("ctr", "ctcvr"))
    return (MMOE if name == "mmoe" else PLE)(columns, **common)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transformed")
    parser.add_argument("model", choices=("mmoe", "ple"))
    parser.add_argument("seed", type=int)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    import tf_keras  # DeepCTR's Keras 2, which TF_USE_LEGACY_KERAS=1 makes tf.keras inside deepctr

    from common.metrics import task_metrics

    tf_keras.utils.set_random_seed(args.seed)
    splits, spec = load(args.transformed)
    data = {name: (deepctr_inputs(features, spec), labels) for name, (features, labels) in splits.items()}
    model = build(args.model, feature_columns(spec), args.seed)
    model.compile(tf_keras.optimizers.Adam(1e-3), loss=["binary_crossentropy", "binary_crossentropy"])

    def scores(name):
        ctr, ctcvr = model.predict(data[name][0], batch_size=8192, verbose=0)
        ctr, ctcvr = ctr.ravel(), ctcvr.ravel()
        labels = data[name][1]
        return task_metrics(labels["click"], labels["conversion"], ctr, ctcvr, ctcvr)

    features, labels = data["train"]
    rows = len(labels["click"])
    steps = rows // BATCH
    best, history, seconds, examples = None, [], 0.0, 0
    for epoch in range(args.epochs):
        order = np.random.default_rng([args.seed, epoch]).permutation(rows)[: steps * BATCH]
        x = {k: v[order] for k, v in features.items()}
        y = [labels["click"][order], labels["conversion"][order]]
        started = time.perf_counter()
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        took = time.perf_counter() - started
        if epoch:  # the first epoch pays for tracing
            seconds, examples = seconds + took, examples + steps * BATCH
        evaluated = scores("eval")
        value = evaluated["ctr_logloss"] + evaluated["cvr_logloss"] + evaluated["ctcvr_logloss"]
        history.append(
            {"epoch": epoch + 1, "monitor": value, **{k: evaluated[k] for k in ("ctr_auc", "cvr_auc", "ctcvr_auc")}}
        )
        if best is None or value < best[0]:
            best = (value, epoch + 1, scores("test"), evaluated)
    test_features = data["test"][0]
    model.predict(test_features, batch_size=PREDICT_BATCH, verbose=0)  # warm-up: tracing
    started = time.perf_counter()
    model.predict(test_features, batch_size=PREDICT_BATCH, verbose=0)
    predict_rate = len(data["test"][1]["click"]) / (time.perf_counter() - started)
    print(
        json.dumps(
            {
                "model": f"deepctr_{args.model}",
                "seed": args.seed,
                "best_epoch": best[1],
                "test": best[2],
                "eval": best[3],
                "history": history,
                "train_rows": rows,
                "train_examples_per_second": examples / seconds if seconds else None,
                "predict_examples_per_second": predict_rate,
                "params": int(model.count_params()),
            },
            default=float,
        )
    )


if __name__ == "__main__":
    main()
