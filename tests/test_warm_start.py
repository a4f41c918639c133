"""Warm start's row mapping: an id's embedding row follows the id to its new vocabulary index;
OOV buckets carry over only when their number is unchanged; new ids and dropped fields get nothing."""

from __future__ import annotations

from trainer.blocks import FieldEmbedding
from trainer.warm_start import _layout, _row_pairs


def _table(fields: list[tuple[str, str, int]]) -> FieldEmbedding:
    spec = {
        "fields": [
            {
                "key": k,
                "kind": kind,
                "cardinality": n,
                "bag_length": 2 if kind == "bag" else 0,
                "weighted": kind == "bag",
            }
            for k, kind, n in fields
        ]
    }
    return FieldEmbedding(spec, 4)


def _pairs(new, old, new_vocab, old_vocab) -> dict:
    dst, src = _row_pairs(new, old, new_vocab.get, old_vocab.get)
    return dict(zip(dst.tolist(), src.tolist()))


def test_rows_follow_their_ids_and_oov_buckets_carry_over():
    old = _table([("a", "categorical", 4), ("b", "bag", 3)])  # a: rows 0-3 (3 ids + 1 OOV); b: rows 4-6
    new = _table([("a", "categorical", 4), ("b", "bag", 4)])  # b gains an id: rows 4-7
    old_vocab = {"a": ["x", "y", "z"], "b": ["p", "q"]}
    new_vocab = {"a": ["z", "w", "x"], "b": ["q", "r", "p"]}
    assert _pairs(new, old, new_vocab, old_vocab) == {
        0: 2,
        2: 0,
        3: 3,  # a: z and x moved, w is new, the OOV bucket stays
        4: 5,
        6: 4,
        7: 6,  # b: q and p moved, r is new, b's OOV bucket: old row 6 -> new row 7
    }


def test_another_number_of_oov_buckets_or_a_dropped_field_carries_nothing_over():
    old = _table([("a", "categorical", 5), ("gone", "categorical", 2)])  # a: 3 ids + 2 OOV buckets
    new = _table([("a", "categorical", 4), ("c", "categorical", 2)])  # a: 3 ids + 1 OOV bucket
    vocab = {"a": ["x", "y", "z"], "gone": ["g"], "c": ["g"]}
    assert _pairs(new, old, vocab, vocab) == {0: 0, 1: 1, 2: 2}
    assert _pairs(new, old, {"a": None, "c": ["g"]}, vocab) == {}  # no vocabulary file: nothing is guessed


def test_the_layout_ignores_what_new_data_changes():
    spec = {"fields": [{"key": "a", "kind": "bag", "cardinality": 9, "bag_length": 3, "weighted": True}]}
    grown = {"fields": [{**spec["fields"][0], "cardinality": 12, "bag_length": 5}]}
    unweighted = {"fields": [{**spec["fields"][0], "weighted": False}]}
    renamed = {"fields": [{**spec["fields"][0], "key": "b"}]}
    assert _layout(spec) == _layout(grown)
    assert _layout(spec) != _layout(unweighted) and _layout(spec) != _layout(renamed)
