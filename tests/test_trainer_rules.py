"""The Trainer's defaults that follow the training split (`trainer.config.resolve`): the rule's values
where the config leaves a key null, the user's value wherever it sets one."""

from __future__ import annotations

import pytest

from trainer import config as C


def _resolved(rows, **training):
    return C.resolve(C.from_dict({"training": training}), rows)


def test_a_small_split_gets_smaller_batches_longer_patience_and_more_l2():
    config, resolved = _resolved(90_000)
    # 90,000 // 2,048 = 43 steps a pass (< 64): batch 1,024, 87 steps, 4 rounds of 21 steps; 200 steps
    # take 10 rounds; L2 180 / 90,000; the tables learn at the dense rate.
    assert resolved == {
        "training.batch_size": 1024,
        "training.patience": 10,
        "training.embedding_l2": 2e-3,
        "training.embedding_learning_rate": 1e-3,
        "training.embedding_l2_rows": "touched",
    }
    assert (config.training.batch_size, config.training.patience) == (1024, 10)
    assert config.training.embedding_l2 == pytest.approx(2e-3)


def test_a_large_split_keeps_the_large_batch_one_pass_of_patience_and_fast_lightly_held_tables():
    large = {
        "training.batch_size": 2048,
        "training.patience": 4,
        "training.embedding_l2": 1e-5,
        "training.embedding_learning_rate": 8e-3,
        "training.embedding_l2_rows": "table",
    }
    # 439 steps a pass: 4 rounds of 109 steps already span 200 steps.
    assert _resolved(900_000)[1] == large
    assert _resolved(None)[1] == large  # streamed, its length unknown: taken as large
    # The switch: 180 / 499,999 just below it, the large values from 500,000 on.
    below = _resolved(499_999)[1]
    assert below["training.embedding_l2"] == pytest.approx(180 / 499_999)
    assert below["training.embedding_learning_rate"] == 1e-3
    assert below["training.embedding_l2_rows"] == "touched"
    assert _resolved(500_000)[1]["training.embedding_l2"] == 1e-5
    # The factor follows the dense rate, and applies to Adam on the tables only.
    assert _resolved(900_000, learning_rate=2e-3)[1]["training.embedding_learning_rate"] == pytest.approx(1.6e-2)
    adagrad = _resolved(900_000, embedding_optimizer="adagrad", learning_rate=0.05)[1]
    assert adagrad["training.embedding_learning_rate"] == 0.05


def test_tiny_splits_hit_the_floors_and_caps():
    _, resolved = _resolved(1_000)
    # 3 steps a pass at the smallest batch: 3 rounds of one step, 200 rounds of patience; L2 capped.
    assert resolved == {
        "training.batch_size": 256,
        "training.patience": 200,
        "training.embedding_l2": 1e-2,
        "training.embedding_learning_rate": 1e-3,
        "training.embedding_l2_rows": "touched",
    }


def test_a_value_the_user_sets_always_wins_and_the_rest_follow_it():
    config, resolved = _resolved(
        90_000, batch_size=512, embedding_l2=0.0, embedding_learning_rate=0.01, embedding_l2_rows="table"
    )
    assert config.training.batch_size == 512 and config.training.embedding_l2 == 0.0
    assert config.training.embedding_learning_rate == 0.01 and config.training.embedding_l2_rows == "table"
    # Patience follows the user's batch: 175 steps a pass, rounds of 43 steps, 5 rounds span 200.
    assert resolved == {"training.patience": 5}
    assert _resolved(900_000, embedding_l2=1e-3, embedding_learning_rate=1e-3)[0].training.embedding_l2 == 1e-3
    config, resolved = _resolved(
        90_000, batch_size=512, embedding_l2=2e-3, patience=2, embedding_learning_rate=1e-3, embedding_l2_rows="touched"
    )
    assert resolved == {} and config.training.patience == 2
    assert C.resolve(config, 90_000)[0] == config  # resolving twice changes nothing


def test_rule_driven_keys_take_null_and_are_still_checked():
    nulls = {
        "batch_size": None,
        "patience": None,
        "embedding_l2": None,
        "embedding_learning_rate": None,
        "embedding_l2_rows": None,
    }
    assert C.from_dict({"training": nulls}) == C.TrainerConfig()
    for key, bad in (
        ("batch_size", 0),
        ("patience", 1.5),
        ("embedding_l2", -1e-3),
        ("embedding_learning_rate", -1.0),
        ("embedding_l2_rows", "all"),
    ):
        with pytest.raises(ValueError, match=f"training.{key}"):
            C.from_dict({"training": {key: bad}})
