"""Session fixtures: each Beam pipeline runs once per test run and is shared, also across xdist workers."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import pathlib
import pickle
import shutil

import pytest

from example_gen import beam_pipeline
from synth import aliccp

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("MTRANK_SHARED_DATA", REPO.parent / "shared" / "data"))


# `make test` hands whole files to two xdist workers in this order (--no-loadscope-reorder): the
# longest first, so the run does not end with one long file running alone on one worker.
LONGEST_FIRST = (
    "test_transform.py",
    "test_training.py",
    "test_retraining.py",
    "test_distributed.py",
    "test_experiments_ranking.py",
    "test_serving.py",
    "test_evaluator_pusher.py",
)


# The end-to-end tier (`-m e2e`): tests that run a Beam pipeline (these fixtures), train a model or
# start the command line's stages. `pytest -m "not e2e"` runs the unit tier in about a minute.
E2E_FIXTURES = {
    "synthetic_raw",
    "ingested_synthetic",
    "aliexpress_folders",
    "ingested_shared",
    "transformed_synthetic",
    "transformed_synthetic_noisy",
    "transformed_torchrechub",
    "transformed_aliexpress",
    "trainable_synthetic",
    "serving_versions",
}
E2E_FILES = {
    "test_distributed.py",
    "test_example_gen_accounting.py",
    "test_example_gen_roundtrip.py",
    "test_example_gen_shared_data.py",
    "test_experiments.py",
    "test_experiments_ranking.py",
    "test_fdn_ablation.py",
    "test_fdn_tsne.py",
    "test_kubeflow.py",
    "test_kubeflow_hermetic.py",
    "test_retraining.py",
    "test_training.py",
    "test_warm_start.py",
}


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: file order kept
    for item in items:
        if item.path.name in E2E_FILES or E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


def session_fixture(function):
    """A session fixture that runs once per test run even when xdist spreads the tests over worker
    processes (`make test` runs two), so no Beam pipeline is paid twice: the first worker to need
    it computes it under a file lock in the run's shared folder, the others wait and read its
    pickled value. Without xdist it is a plain session fixture."""

    @functools.wraps(function)
    def fixture(**kwargs):
        if "PYTEST_XDIST_WORKER" not in os.environ:
            return function(**kwargs)
        root = kwargs["tmp_path_factory"].getbasetemp().parent  # this run's folder, one per run
        value = root / f"{function.__name__}.pickle"
        with open(root / f"{function.__name__}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not value.exists():
                partial = value.with_suffix(".partial")
                partial.write_bytes(pickle.dumps(function(**kwargs)))
                partial.replace(value)
            return pickle.loads(value.read_bytes())

    return pytest.fixture(scope="session")(fixture)


def read_records(folder: str | os.PathLike) -> list[bytes]:
    """The serialized records of a folder's TFRecord files, read with TensorFlow's own reader."""
    import tensorflow as tf

    files = sorted(str(p) for p in pathlib.Path(folder).glob("*.tfrecord*"))
    assert files, f"no TFRecord files in {folder}"
    compression = "GZIP" if files[0].endswith(".gz") else ""
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type=compression)]


def read_examples(output: str | os.PathLike, split: str) -> list[dict]:
    """ExampleGen's examples of a split as {key: values}."""
    from common import records

    return [records.parse_example(r) for r in read_records(pathlib.Path(output, "examples", split))]


def read_transformed(output: str | os.PathLike, split: str) -> dict[bytes, dict]:
    """Transform's examples of a split as {sample_id: {key: values}}."""
    from common import records

    rows = [records.parse_example(r) for r in read_records(pathlib.Path(output, "transformed", split))]
    return {row["sample_id"][0]: row for row in rows}


def read_rejected(output: str | os.PathLike) -> list[dict]:
    rows = []
    for path in sorted(pathlib.Path(output, "rejected").glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line]
    return rows


def ingest(tmp_root: pathlib.Path, name: str, fmt: str, source) -> tuple[pathlib.Path, dict]:
    output = tmp_root / name
    stats = beam_pipeline.run(beam_pipeline.IngestConfig(format=fmt, input=str(source), output=str(output)))
    return output, stats


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the real data samples are missing: {SHARED_DATA} (set MTRANK_SHARED_DATA)")
    return SHARED_DATA


@session_fixture
def synthetic_raw(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """5,000 rows of raw Ali-CCP with 1% malformed lines of every kind."""
    out = tmp_path_factory.mktemp("synthetic_raw")
    manifest = aliccp.generate(
        aliccp.AliccpSynthConfig(rows=5_000, seed=7, malformed_rate=0.01), str(out), progress=False
    )
    return out, manifest


@session_fixture
def ingested_synthetic(tmp_path_factory, synthetic_raw):
    return ingest(tmp_path_factory.mktemp("ingest"), "synthetic", "aliccp-raw", synthetic_raw[0])


@session_fixture
def aliexpress_folders(tmp_path_factory, shared_data) -> dict[str, pathlib.Path]:
    """The AliExpress samples laid out as MTReclib's AliExpress_XX/{train,test}.csv folders."""
    root = tmp_path_factory.mktemp("aliexpress_folders")
    layouts = {
        "fuxictr": ("fuxictr_tiny_mtl_train_1000.csv", "fuxictr_tiny_mtl_test_1000.csv"),
        "torchrechub": (
            "torchrechub_aliexpress_train_sample.csv",
            "torchrechub_aliexpress_test_sample_orig_labels.csv",
        ),
        "torchrechub_edited": ("torchrechub_aliexpress_train_sample.csv", "torchrechub_aliexpress_test_sample.csv"),
    }
    folders = {}
    for name, (train, test) in layouts.items():
        folder = root / name
        folder.mkdir()
        shutil.copy(shared_data / "aliexpress" / train, folder / "train.csv")
        shutil.copy(shared_data / "aliexpress" / test, folder / "test.csv")
        folders[name] = folder
    return folders


@session_fixture
def ingested_shared(tmp_path_factory, shared_data, aliexpress_folders) -> dict[str, tuple[pathlib.Path, dict]]:
    """Every file in ../shared/data, ingested once."""
    root = tmp_path_factory.mktemp("ingest_shared")
    runs = {
        "torchrechub_aliccp": ("aliccp-csv", shared_data / "ali_ccp" / "preprocessed_csv"),
        "aitm": ("aliccp-csv", shared_data / "ali_ccp" / "aitm_csv"),
        "kv": ("aliccp-csv", shared_data / "ali_ccp" / "kv_format"),
    }
    runs.update({f"aliexpress_{name}": ("aliexpress", folder) for name, folder in aliexpress_folders.items()})
    return {name: ingest(root, name, fmt, source) for name, (fmt, source) in runs.items()}


def allowed_keys(schema) -> set[str]:
    """The keys an example of the schema may have: features, their weights, labels, metadata."""
    from transform import features as F

    return {f.key for f in schema.fields} | {F.weight_key(f) for f in schema.fields} | set(F.LABELS) | set(F.METADATA)


def transform(tmp_root: pathlib.Path, name: str, examples: pathlib.Path, **options) -> tuple[pathlib.Path, dict]:
    from transform import beam_pipeline as transform_pipeline

    output = tmp_root / name
    return output, transform_pipeline.run(
        transform_pipeline.TransformConfig(examples=str(examples), output=str(output), **options)
    )


# One Transform pipeline per fixture (about 35 s of fixed cost each here), shared by all tests.
NOISE = {"noise_proportion": 0.15, "noise_feature_prob": 0.2, "seed": 11}


@session_fixture
def transformed_synthetic(tmp_path_factory, ingested_synthetic):
    return transform(tmp_path_factory.mktemp("transform"), "synthetic", ingested_synthetic[0])


@session_fixture
def transformed_synthetic_noisy(tmp_path_factory, ingested_synthetic):
    return transform(tmp_path_factory.mktemp("transform"), "synthetic_noisy", ingested_synthetic[0], **NOISE)


@session_fixture
def transformed_torchrechub(tmp_path_factory, ingested_shared):
    """torch-rechub's Ali-CCP CSV layout, with a frequency threshold and two OOV buckets."""
    return transform(
        tmp_path_factory.mktemp("transform"),
        "torchrechub",
        ingested_shared["torchrechub_aliccp"][0],
        preprocessing={"frequency_threshold": 2, "num_oov_buckets": 2},
    )


@session_fixture
def transformed_aliexpress(tmp_path_factory, ingested_shared):
    """AliExpress with two numeric fields normalised (the rest already scaled), and noise."""
    return transform(
        tmp_path_factory.mktemp("transform"),
        "aliexpress",
        ingested_shared["aliexpress_fuxictr"][0],
        preprocessing={"numeric": {"numerical_1": ["log1p", "z_score"], "numerical_2": ["z_score"]}},
        noise_proportion=0.3,
        noise_feature_prob=0.3,
        seed=5,
    )


@session_fixture
def trainable_synthetic(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """30,000 clean synthetic rows with high label rates (so 2,400 eval rows hold enough conversions
    for a CVR AUC), ingested and transformed: (Transform's output folder, the generator's manifest)."""
    root = tmp_path_factory.mktemp("trainable")
    manifest = aliccp.generate(
        aliccp.AliccpSynthConfig(rows=30_000, seed=3, ctr=0.2, cvr=0.3), str(root / "raw"), progress=False
    )
    examples, _ = ingest(root, "examples", "aliccp-raw", root / "raw")
    output, _ = transform(root, "transformed", examples)
    return output, manifest


def export_untrained(transformed: pathlib.Path, seed: int, out: pathlib.Path) -> pathlib.Path:
    """A small MMoE, initialised from `seed` and not trained, exported as the Trainer exports:
    what the serving tests serve (scores differ between seeds and between examples)."""
    import dataclasses

    import keras
    import tensorflow_transform as tft

    from trainer import export, inputs, models
    from trainer.config import ModelConfig
    from trainer.training_model import dummy_batch
    from transform.preprocessing import categorical_cardinalities

    tft_output = tft.TFTransformOutput(str(transformed / "transform_graph"))
    spec = inputs.build_spec(tft_output.transformed_feature_spec(), categorical_cardinalities(tft_output), None, 4)
    keras.utils.set_random_seed(seed)
    config = ModelConfig(name="mmoe", embedding_dim=4, expert_units=(8,), tower_units=(4,), num_experts=2)
    network = models.build(spec.to_dict(), dataclasses.asdict(config))
    network(dummy_batch(spec))
    export.export(network, tft_output, spec, str(out))
    return out


@session_fixture
def serving_versions(tmp_path_factory, transformed_synthetic) -> tuple[pathlib.Path, dict]:
    """(Transform output, {1: SavedModel dir, 2: SavedModel dir}) of two differently initialised models."""
    root = tmp_path_factory.mktemp("saved_models")
    transformed = transformed_synthetic[0]
    return transformed, {v: export_untrained(transformed, seed=v, out=root / f"v{v}") for v in (1, 2)}


@pytest.fixture
def eager_functions():
    """tf.functions run eagerly for the test: tracing costs more than a few-row experiment trains."""
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(False)
