"""Transform: vocabularies from training data only, ids and weights kept, numeric options,
labels kept out of features, Beam/serving parity, and noise injection."""

from __future__ import annotations

import collections
import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from common.sparse import leading
from tests.conftest import NOISE, read_examples, read_records, read_transformed
from transform import features as F
from transform import noise, preprocessing
from transform.options import Options


def graph(output) -> tft.TFTransformOutput:
    return tft.TFTransformOutput(str(pathlib.Path(output, "transform_graph")))


def vocabulary(output, key: str) -> list[int]:
    """A field's vocabulary, in index order ("count token" lines)."""
    return [int(line.split()[1]) for line in graph(output).vocabulary_by_name(key)]


def raw_tokens(row: dict, field: F.Field) -> list[int]:
    """The ids the transform sees for a field of a raw example."""
    ids = row.get(field.key, [])
    return list(ids) if field.multivalent else [ids[0] if ids else F.MISSING_ID]


def binomial_tolerance(n: int, p: float, sigmas: float = 4.5) -> float:
    return sigmas * math.sqrt(n * p * (1 - p))


# --- vocabularies --------------------------------------------------------------------------


def test_vocabularies_come_from_the_training_split_only(ingested_synthetic, transformed_synthetic):
    examples, output = ingested_synthetic[0], transformed_synthetic[0]
    train = read_examples(examples, "train")
    unseen = collections.Counter()
    for field in F.ALICCP_RAW.fields:
        vocab = vocabulary(output, field.key)
        assert set(vocab) == {t for row in train for t in raw_tokens(row, field)}, field.key
        index = {token: i for i, token in enumerate(vocab)}
        for split in ("eval", "test"):
            transformed = read_transformed(output, split)
            for row in read_examples(examples, split):
                got = transformed[row[F.SAMPLE_ID][0]][field.key]
                tokens = raw_tokens(row, field)
                assert len(got) == len(tokens)
                for token, i in zip(tokens, got):
                    if token in index:
                        assert i == index[token]
                    else:  # one OOV bucket by default
                        assert i == len(vocab)
                        unseen[split] += 1
    assert unseen["eval"] > 0 and unseen["test"] > 0  # the synthetic ids' long tail reaches OOV


def test_vocabulary_sizes_reach_the_trainer_through_the_transform_output(
    transformed_synthetic, transformed_torchrechub
):
    for (output, stats), oov in ((transformed_synthetic, 1), (transformed_torchrechub, 2)):
        cardinalities = preprocessing.categorical_cardinalities(graph(output))
        categorical = {f.key for f in F.SCHEMAS[stats["schema"]].fields if f.kind is F.Kind.CATEGORICAL}
        assert set(cardinalities) == categorical == set(stats["vocabulary_size"])
        for key, size in stats["vocabulary_size"].items():
            assert size == graph(output).vocabulary_size_by_name(key) == len(vocabulary(output, key))
            assert cardinalities[key] == size + oov


def test_frequency_threshold_sends_rare_training_ids_to_oov_buckets(ingested_shared, transformed_torchrechub):
    examples, output = ingested_shared["torchrechub_aliccp"][0], transformed_torchrechub[0]
    train = read_examples(examples, "train")
    transformed = read_transformed(output, "train")
    rare_seen = 0
    for field in F.ALICCP_TORCHRECHUB.fields:
        counts = collections.Counter(t for row in train for t in raw_tokens(row, field))
        vocab = vocabulary(output, field.key)
        assert set(vocab) == {t for t, n in counts.items() if n >= 2}, field.key
        for row in train:
            for token, i in zip(raw_tokens(row, field), transformed[row[F.SAMPLE_ID][0]][field.key]):
                if counts[token] < 2:
                    assert len(vocab) <= i < len(vocab) + 2
                    rare_seen += 1
                else:
                    assert vocab[i] == token
    assert rare_seen > 0


def test_multivalued_fields_keep_every_id_and_weight(ingested_synthetic, transformed_synthetic):
    examples, output = ingested_synthetic[0], transformed_synthetic[0]
    transformed = read_transformed(output, "train")
    multivalued = [f for f in F.ALICCP_RAW.fields if f.multivalent]
    bags = 0
    for row in read_examples(examples, "train"):
        out = transformed[row[F.SAMPLE_ID][0]]
        for field in multivalued:
            assert len(out.get(field.key, [])) == len(row.get(field.key, []))
            assert np.array_equal(
                np.float32(out.get(F.weight_key(field), [])), np.float32(row.get(F.weight_key(field), []))
            )
            bags += len(row.get(field.key, [])) > 1
    assert bags > 0


def test_numeric_fields_follow_their_options_with_training_statistics(ingested_shared, transformed_aliexpress):
    examples, output = ingested_shared["aliexpress_fuxictr"][0], transformed_aliexpress[0]
    train_raw = read_examples(examples, "train")

    def column(rows, key):
        return np.array([row[key][0] for row in rows], dtype=np.float64)

    log1p = np.sign(column(train_raw, "numerical_1")) * np.log1p(np.abs(column(train_raw, "numerical_1")))
    stats = {
        "numerical_1": (log1p.mean(), log1p.std()),
        "numerical_2": (column(train_raw, "numerical_2").mean(), column(train_raw, "numerical_2").std()),
    }
    for split in ("eval", "test"):  # the training split of this fixture has noise
        raw = read_examples(examples, split)
        transformed = read_transformed(output, split)
        out = [transformed[row[F.SAMPLE_ID][0]] for row in raw]
        x1, x2 = column(raw, "numerical_1"), column(raw, "numerical_2")
        expected_1 = (np.sign(x1) * np.log1p(np.abs(x1)) - stats["numerical_1"][0]) / stats["numerical_1"][1]
        np.testing.assert_allclose(column(out, "numerical_1"), expected_1, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(
            column(out, "numerical_2"), (x2 - stats["numerical_2"][0]) / stats["numerical_2"][1], rtol=1e-4, atol=1e-4
        )
        # AliExpress' numerics are already scaled: the rest pass through unchanged.
        np.testing.assert_array_equal(np.float32(column(out, "numerical_3")), np.float32(column(raw, "numerical_3")))


def test_a_row_count_that_differs_from_example_gen_s_is_named_by_split():
    from transform.beam_pipeline import check_rows

    example_gen_stats = {"samples": {"written": {"train": 900, "eval": 100, "test": 250}}}
    assert check_rows({"train": 900, "eval": 100, "test": 250}, example_gen_stats) == []
    problems = check_rows({"train": 899, "eval": 100, "test": 251}, example_gen_stats)
    assert problems == [
        "train: ExampleGen wrote 900 rows, Transform wrote 899",
        "test: ExampleGen wrote 250 rows, Transform wrote 251",
    ]
    assert check_rows({"train": 900}, {"samples": {"written": {"train": 900, "eval": 0}}}) == []


def test_unknown_or_invalid_options_are_named():
    with pytest.raises(ValueError, match="unknown keys \\['frequency'\\]"):
        Options.from_config({"frequency": 3})
    with pytest.raises(ValueError, match="numerical_4.*'sqrt'"):
        Options.from_config({"numeric": {"numerical_4": ["sqrt"]}})
    for bad, message in (
        ({"num_oov_buckets": 0}, "num_oov_buckets must be an integer >= 1"),
        ({"num_oov_buckets": 1.5}, "num_oov_buckets must be an integer >= 1"),
        ({"numeric": ["log1p"]}, "numeric must map field names"),
        ({"numeric": {"numerical_1": "log1p"}}, "numerical_1 must be a list"),
        (["log1p"], "must be an object"),
    ):
        with pytest.raises(ValueError, match=message):
            Options.from_config(bad)
    with pytest.raises(ValueError, match="numerical_99.*not numeric fields of aliexpress"):
        Options.from_config({"numeric": {"numerical_99": ["log1p"]}}).check_fields(F.ALIEXPRESS)
    Options.from_config({"numeric": {"numerical_9": ["log1p"]}}).check_fields(F.ALIEXPRESS)


# --- labels ----------------------------------------------------------------------------------


def _type_specs(schema: F.Schema) -> dict:
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio

    raw = schema_utils.schema_from_feature_spec(preprocessing.raw_feature_spec(schema))
    return tfxio.TFExampleRecord(file_pattern="unused", schema=raw).TensorAdapter().TypeSpecs()


def _label_inputs_of_features(preprocessing_fn, schema: F.Schema) -> set[str]:
    """Labels that the non-label outputs read, directly or through an analyzer."""

    def features_only(inputs):
        return {k: v for k, v in preprocessing_fn(inputs).items() if k not in F.LABELS}

    specs = _type_specs(schema)
    read = set(tft.get_analyze_input_columns(features_only, specs)) | set(
        tft.get_transform_input_columns(features_only, specs)
    )
    return read & set(F.LABELS)


@pytest.mark.parametrize("schema", [F.ALICCP_RAW, F.ALICCP_AITM, F.ALIEXPRESS], ids=lambda s: s.name)
def test_no_label_is_an_input_of_a_feature(schema):
    assert _label_inputs_of_features(preprocessing.preprocessing_fn, schema) == set()


def test_the_label_check_finds_a_leak_through_an_analyzer_or_directly():
    def leaks_through_analyzer(inputs):
        outputs = preprocessing.preprocessing_fn(inputs)
        outputs["f101"] = outputs["f101"] + tf.cast(tft.mean(tf.cast(inputs[F.CLICK], tf.float32)) > 0.5, tf.int64)
        return outputs

    def leaks_directly(inputs):
        outputs = preprocessing.preprocessing_fn(inputs)
        outputs["f205"] = outputs["f205"] * inputs[F.CONVERSION]
        return outputs

    assert _label_inputs_of_features(leaks_through_analyzer, F.ALICCP_RAW) == {F.CLICK}
    assert _label_inputs_of_features(leaks_directly, F.ALICCP_RAW) == {F.CONVERSION}


def test_labels_pass_through_unchanged(ingested_synthetic, transformed_synthetic):
    transformed = read_transformed(transformed_synthetic[0], "train")
    for row in read_examples(ingested_synthetic[0], "train"):
        out = transformed[row[F.SAMPLE_ID][0]]
        assert (out[F.CLICK], out[F.CONVERSION]) == (row[F.CLICK], row[F.CONVERSION])


# --- skew: Beam against the exported transform graph ----------------------------------------------


@pytest.mark.parametrize("dataset", ["synthetic", "aliexpress"])
def test_beam_and_the_exported_transform_layer_give_identical_features(
    dataset, ingested_synthetic, ingested_shared, transformed_synthetic, transformed_aliexpress
):
    examples, output, schema = {
        "synthetic": (ingested_synthetic[0], transformed_synthetic[0], F.ALICCP_RAW),
        "aliexpress": (ingested_shared["aliexpress_fuxictr"][0], transformed_aliexpress[0], F.ALIEXPRESS),
    }[dataset]
    serialized = read_records(pathlib.Path(examples, "examples", "test"))
    raw = tf.io.parse_example(tf.constant(serialized), preprocessing.raw_feature_spec(schema))
    sample_ids = raw[F.SAMPLE_ID].numpy()
    # As at serving: the request carries neither labels nor sample ids.
    layer_out = graph(output).transform_features_layer()(
        {k: v for k, v in raw.items() if k not in (*F.LABELS, F.SAMPLE_ID)}
    )
    assert not set(layer_out) & {*F.LABELS, F.SAMPLE_ID}
    beam_out = read_transformed(output, "test")
    assert sorted(sample_ids) == sorted(beam_out)
    for key, value in layer_out.items():
        rows = (tf.RaggedTensor.from_sparse(value) if isinstance(value, tf.SparseTensor) else value).numpy()
        for sample_id, row in zip(sample_ids, rows):
            assert list(np.atleast_1d(row)) == beam_out[sample_id][key], (key, sample_id)
    assert {f.key for f in schema.fields} <= set(layer_out)


# --- noise injection ---------------------------------------------------------------------------


def test_noise_rates_match_the_proportions_within_binomial_tolerance(transformed_synthetic_noisy):
    stats = transformed_synthetic_noisy[1]["noise"]
    p, q = NOISE["noise_proportion"], NOISE["noise_feature_prob"]
    assert stats["rows"] == transformed_synthetic_noisy[1]["rows"]["train"]
    assert abs(stats["rows_selected"] - p * stats["rows"]) <= binomial_tolerance(stats["rows"], p)
    for key, field in stats["fields"].items():
        present = field["present_in_selected_rows"]
        assert present > 0 and field["unreplaceable"] == 0, key
        assert abs(field["replaced"] - q * present) <= binomial_tolerance(present, q), key
    present = sum(f["present_in_selected_rows"] for f in stats["fields"].values())
    replaced = sum(f["replaced"] for f in stats["fields"].values())
    assert abs(replaced - q * present) <= binomial_tolerance(present, q)


def test_every_replacement_is_another_valid_id_and_is_counted(transformed_synthetic, transformed_synthetic_noisy):
    clean_out, noisy_out = transformed_synthetic[0], transformed_synthetic_noisy[0]
    clean, noisy = read_transformed(clean_out, "train"), read_transformed(noisy_out, "train")
    assert clean.keys() == noisy.keys()
    counted = transformed_synthetic_noisy[1]["noise"]["fields"]
    rows_changed = set()
    for field in F.ALICCP_RAW.fields:
        vocab = vocabulary(clean_out, field.key)
        assert vocab == vocabulary(noisy_out, field.key)  # one vocabulary for both runs
        missing = vocab.index(F.MISSING_ID) if F.MISSING_ID in vocab else None
        changed = 0
        for sample_id, before in clean.items():
            after = noisy[sample_id]
            if after[field.key] == before[field.key]:
                continue
            changed += 1
            rows_changed.add(sample_id)
            assert len(after[field.key]) == len(before[field.key])
            for old, new in zip(before[field.key], after[field.key]):
                assert new != old and new < len(vocab) and new != missing, (field.key, old, new)
                assert old != missing, (field.key, "an absent feature must stay absent")
            if field.multivalent:
                assert after.get(F.weight_key(field)) == before.get(F.weight_key(field))
        assert changed == counted[field.key]["replaced"], field.key
    assert len(rows_changed) <= transformed_synthetic_noisy[1]["noise"]["rows_selected"]
    for sample_id, before in clean.items():
        assert {k: noisy[sample_id][k] for k in F.LABELS} == {k: before[k] for k in F.LABELS}


def test_noise_leaves_eval_and_test_record_for_record(transformed_synthetic, transformed_synthetic_noisy):
    for split in ("eval", "test"):
        clean = read_transformed(transformed_synthetic[0], split)
        assert clean and read_transformed(transformed_synthetic_noisy[0], split) == clean


def _raw_train_batch(examples, schema: F.Schema = F.ALICCP_RAW):
    import pyarrow as pa
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio
    from tfx_bsl.tfxio import dataset_options

    source = tfxio.TFExampleRecord(
        file_pattern=str(pathlib.Path(examples, "examples", "train", "*.tfrecord.gz")),
        schema=schema_utils.schema_from_feature_spec(preprocessing.raw_feature_spec(schema)),
    )
    options = dataset_options.RecordBatchesOptions(
        batch_size=1 << 20, drop_final_batch=False, num_epochs=1, shuffle=False
    )
    return pa.Table.from_batches(list(source.RecordBatches(options))).combine_chunks().to_batches()[0]


def _inject(batch, transform_fn_dir, seed, proportion=0.3, feature_prob=0.3):
    dofn = noise.InjectNoise(list(F.ALICCP_RAW.fields), proportion, feature_prob, seed)
    dofn.start_bundle()
    return list(dofn.process(batch, transform_fn_dir, {}))[0]


def test_noise_is_the_same_for_a_seed_whatever_the_batching(ingested_synthetic, transformed_synthetic):
    import pyarrow as pa

    batch = _raw_train_batch(ingested_synthetic[0])
    transform_fn_dir = str(pathlib.Path(transformed_synthetic[0], "transform_graph", "transform_fn"))
    whole = _inject(batch, transform_fn_dir, seed=5)
    cut = batch.num_rows // 3
    pieces = [
        _inject(batch.slice(0, cut), transform_fn_dir, seed=5),
        _inject(batch.slice(cut), transform_fn_dir, seed=5),
    ]
    assert pa.Table.from_batches([whole]).equals(pa.Table.from_batches(pieces))
    assert not pa.Table.from_batches([whole]).equals(pa.Table.from_batches([batch]))
    other_seed = _inject(batch, transform_fn_dir, seed=6)
    assert not pa.Table.from_batches([whole]).equals(pa.Table.from_batches([other_seed]))


def test_numeric_replacements_are_other_training_values(ingested_shared, transformed_aliexpress):
    batch = _raw_train_batch(ingested_shared["aliexpress_fuxictr"][0], F.ALIEXPRESS)
    numeric = [f.key for f in F.ALIEXPRESS.fields if f.kind is F.Kind.NUMERIC]
    sampler = noise.SampleNumeric(numeric, seed=3, size=200)
    samples = sampler.extract_output(
        sampler.merge_accumulators(
            [
                sampler.add_input(sampler.create_accumulator(), batch.slice(0, 400)),
                sampler.add_input(sampler.create_accumulator(), batch.slice(400)),
            ]
        )
    )
    one_pass = sampler.extract_output(sampler.add_input(sampler.create_accumulator(), batch))
    assert all(sorted(samples[k]) == sorted(one_pass[k]) for k in numeric)
    dofn = noise.InjectNoise(list(F.ALIEXPRESS.fields), 0.5, 0.5, seed=3)
    dofn.start_bundle()
    noisy = list(
        dofn.process(batch, str(pathlib.Path(transformed_aliexpress[0], "transform_graph", "transform_fn")), samples)
    )[0]
    replaced = 0
    for key in numeric:
        before = batch.column(key).flatten().to_numpy()
        after = noisy.column(key).flatten().to_numpy()
        assert len(samples[key]) == 200 and set(samples[key]) <= set(before.astype(np.float64))
        changed = before != after
        assert set(after[changed].astype(np.float64)) <= set(samples[key])
        replaced += changed.sum()
        assert changed.sum() == dofn._counts[f"noise/replaced/{key}"]
    assert replaced > 0


def test_numeric_noise_runs_in_the_pipeline(ingested_shared, transformed_aliexpress):
    """AliExpress' fixture has noise: numerical_3 passes through unchanged, so its replaced values
    show directly, and each must be a clean training value."""
    examples, (output, stats) = ingested_shared["aliexpress_fuxictr"][0], transformed_aliexpress
    raw = {row[F.SAMPLE_ID][0]: row for row in read_examples(examples, "train")}
    transformed = read_transformed(output, "train")
    training_values = {row["numerical_3"][0] for row in raw.values()}
    changed = [sid for sid, row in transformed.items() if row["numerical_3"] != raw[sid]["numerical_3"]]
    assert len(changed) == stats["noise"]["fields"]["numerical_3"]["replaced"] > 0
    assert all(transformed[sid]["numerical_3"][0] in training_values for sid in changed)


def test_a_replacement_follows_the_training_distribution_without_the_original():
    distribution = noise.Distribution(np.array([7, 3, 9], np.int64), np.array([1.0, 2.0, 7.0]))
    u = noise.uniform(noise.mix(np.arange(200_000, dtype=np.uint64), 1))
    for original, expected in ((9, {3: 2 / 3, 7: 1 / 3}), (3, {7: 1 / 8, 9: 7 / 8}), (4, {3: 0.2, 7: 0.1, 9: 0.7})):
        draws, drawn = distribution.draw_other(np.full(len(u), original, np.int64), u)
        assert drawn.all() and original not in draws
        for value, share in expected.items():
            assert abs(np.mean(draws == value) - share) <= binomial_tolerance(len(u), share) / len(u)
    single = noise.Distribution(np.array([5], np.int64), np.array([4.0]))
    draws, drawn = single.draw_other(np.array([5, 6], np.int64), np.array([0.5, 0.5]))
    assert list(drawn) == [False, True] and list(draws) == [5, 5]


def test_leading_values_match_the_ragged_padding_they_replace():
    rng = np.random.default_rng(0)
    rows = [list(rng.integers(0, 100, rng.integers(0, 5))) for _ in range(60)] + [[]]
    examples = [
        tf.train.Example(
            features=tf.train.Features(feature={"a": tf.train.Feature(int64_list=tf.train.Int64List(value=r))})
        ).SerializeToString()
        for r in rows
    ]
    parsed = tf.io.parse_example(examples, {"a": tf.io.VarLenFeature(tf.int64)})["a"]
    for length in (1, 3, 6):
        expected = [(r + [-7] * length)[:length] for r in rows]
        assert leading(parsed, length, -7).numpy().tolist() == expected
    none = tf.io.parse_example(tf.constant([b""] * 3), {"a": tf.io.VarLenFeature(tf.int64)})["a"]  # every row empty
    assert leading(none, 2, -1).numpy().tolist() == [[-1, -1]] * 3
    assert leading(tf.sparse.slice(parsed, [0, 0], [0, 5]), 2).shape == (0, 2)  # no rows
