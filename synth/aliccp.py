"""Synthetic Ali-CCP in the exact raw format, with labels drawn from a known model.

Writes sample_skeleton_{train,test}.csv and common_features_{train,test}.csv with the real
field ids: user-side fields in the common-features file (one line per user and file, shared
by all that user's samples), ad-side fields and the behaviour x ad crosses (508, 509, 702,
853) in the skeleton. Ids follow Zipf-like frequencies; behaviour fields carry log counts as
weights.

Ground truth: logit_ctr = a + shared + ctr_only and logit_cvr = b + 0.7 * shared + cvr_only,
where `shared` depends on the item, its category and the user's past actions on it, `ctr_only`
on position, user and age x category, and `cvr_only` on shop, consumption level x brand and
the user's past actions on the shop. a and b are solved for the target CTR and CVR. The
Bayes-optimal AUCs (true probabilities as scores) are written to synth.json.

Regimes (`REGIMES`), so that defaults are chosen on more than one shape of data:
- `sessions`: the model above, about 25 rows per user (the project's first generator);
- `sparse`: the same model at Ali-CCP's own conversion rate (ESMM paper: 3.4M clicks, 18K
  conversions, 0.53% of clicks);
- `cold-users`: the same model with about 1.5 rows per user, most users seen once or twice;
- `latent`: latent-factor interactions. 20 fields with one id each, 10 on the user side (in
  common_features) and 9 on the item side plus the position (in the skeleton); every id has a
  latent vector of dimension 8, a user's vector is the sum of its fields' vectors, an item's
  likewise, and the logits are scaled dot products (CVR through a partly rotated user vector),
  so the signal lies in interactions a linear model cannot express.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os

import numpy as np
from tqdm import tqdm

from example_gen import reasons as r
from common.metrics import roc_auc

FILES = {
    "train": ("sample_skeleton_train.csv", "common_features_train.csv"),
    "test": ("sample_skeleton_test.csv", "common_features_test.csv"),
}
PROFILE_CARDINALITY = {"121": 97, "122": 13, "124": 2, "125": 7, "126": 3, "127": 3, "128": 2, "129": 4}
N_CATEGORIES, N_INTENTIONS, N_POSITIONS, MAX_BEHAVIOUR = 400, 300, 3, 16
_CHUNK = 100_000

SAMPLE_DEFECTS = (
    r.EMPTY_LINE,
    r.BAD_ENCODING,
    r.WRONG_COLUMN_COUNT,
    r.BAD_LABEL,
    r.BAD_SAMPLE_ID,
    r.FEATURE_NUM_MISMATCH,
    r.MALFORMED_ENTRY,
    r.UNKNOWN_FIELD,
    r.UNPARSABLE_ID,
    r.UNPARSABLE_WEIGHT,
    r.DUPLICATE_SAMPLE_ID,
    r.UNKNOWN_COMMON_FEATURE_INDEX,
    r.CONVERSION_WITHOUT_CLICK,  # dropped, not rejected
)
COMMON_DEFECTS = (
    r.EMPTY_LINE,
    r.BAD_ENCODING,
    r.WRONG_COLUMN_COUNT,
    r.FEATURE_NUM_MISMATCH,
    r.MALFORMED_ENTRY,
    r.UNKNOWN_FIELD,
    r.UNPARSABLE_ID,
    r.UNPARSABLE_WEIGHT,
    r.DUPLICATE_COMMON_FEATURE_INDEX,
)


# Each regime's settings over `AliccpSynthConfig`'s defaults; `world` picks the ground truth.
REGIMES = {
    "sessions": {},
    "sparse": {"cvr": 0.0053},
    "cold-users": {"rows_per_user": 1.5},
    "latent": {"world": "latent"},
}


@dataclasses.dataclass
class AliccpSynthConfig:
    rows: int = 100_000  # valid skeleton rows over both files
    seed: int = 0
    test_fraction: float = 0.2
    malformed_rate: float = 0.0  # malformed skeleton lines per valid row (common lines likewise)
    rows_per_user: float = 25.0
    ctr: float = 0.04
    cvr: float = 0.05  # conversions per click
    world: str = "sessions"  # the ground truth: "sessions" (_World) or "latent" (_LatentWorld)
    regime: str = "sessions"  # the name the settings came from (`for_regime`), recorded in synth.json


def for_regime(regime: str, **settings) -> AliccpSynthConfig:
    """The config of a named regime (`REGIMES`), with `settings` (rows, seed, ...) on top."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; known: {', '.join(REGIMES)}")
    return AliccpSynthConfig(**{**REGIMES[regime], **settings, "regime": regime})


def _field_id(field: str, index):
    """Globally unique raw ids, as in the real data: each field gets its own range."""
    return 1_000_000 * (1 + _FIELD_ORDER.index(field)) + index


_FIELD_ORDER = (
    "101",
    "121",
    "122",
    "124",
    "125",
    "126",
    "127",
    "128",
    "129",
    "109_14",
    "110_14",
    "127_14",
    "150_14",
    "205",
    "206",
    "207",
    "210",
    "216",
    "508",
    "509",
    "702",
    "853",
    "301",
)


def zipf_probs(n: int, exponent: float = 1.0) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** exponent
    return p / p.sum()


def _weight(x: float) -> str:
    return format(x, ".6g")


class _World:
    """Users, items and the ground-truth model, all drawn from one seed."""

    def __init__(self, config: AliccpSynthConfig, rng: np.random.Generator):
        self.rng = rng
        self.n_users = max(50, int(config.rows / config.rows_per_user))
        self.n_items = max(N_CATEGORIES, config.rows // 10)
        self.n_shops = max(100, self.n_items // 10)
        self.n_brands = max(80, self.n_items // 12)
        u, i = self.n_users, self.n_items
        # Items: every category has at least one; the rest follow category popularity.
        self.item_category = np.concatenate(
            [np.arange(N_CATEGORIES), rng.choice(N_CATEGORIES, i - N_CATEGORIES, p=zipf_probs(N_CATEGORIES))]
        )
        order = np.argsort(self.item_category, kind="stable")
        self.item_category = self.item_category[order]
        self.category_start = np.searchsorted(self.item_category, np.arange(N_CATEGORIES))
        self.category_end = np.searchsorted(self.item_category, np.arange(N_CATEGORIES), side="right")
        self.item_shop = rng.choice(self.n_shops, i, p=zipf_probs(self.n_shops, 0.9))
        self.item_brand = rng.choice(self.n_brands, i, p=zipf_probs(self.n_brands, 0.9))
        self.item_intentions = np.stack(
            [self.item_category % N_INTENTIONS, rng.integers(0, N_INTENTIONS, i), rng.integers(0, N_INTENTIONS, i)], 1
        )
        self.item_n_intentions = rng.integers(1, 4, i)
        # Users: profile fields and 14-day behaviour (ids with log-count weights).
        self.profile = {f: rng.choice(n, u, p=zipf_probs(n, 0.7)) for f, n in PROFILE_CARDINALITY.items()}
        self.behaviour = {
            "109_14": self._behaviour(N_CATEGORIES, 1.0),
            "110_14": self._behaviour(self.n_shops, 0.9),
            "127_14": self._behaviour(self.n_brands, 0.9),
            "150_14": self._behaviour(N_INTENTIONS, 1.0),
        }
        self.user_activity = zipf_probs(u, 0.6)[rng.permutation(u)]
        # Ground-truth effects.
        self.e_item = rng.normal(0, 0.4, i)
        self.e_category = rng.normal(0, 0.5, N_CATEGORIES)
        self.e_position = np.array([0.3, 0.0, -0.4])
        self.e_user = rng.normal(0, 0.3, u)
        self.age_x_category = rng.normal(0, 0.4, (PROFILE_CARDINALITY["125"], 8))
        self.e_shop = rng.normal(0, 0.5, self.n_shops)
        self.consumption_x_brand = rng.normal(0, 0.5, (PROFILE_CARDINALITY["126"], 6))

    def _behaviour(self, n_values: int, exponent: float):
        """(ids, weights) as (users, MAX_BEHAVIOUR) arrays; id -1 pads."""
        rng, u = self.rng, self.n_users
        lengths = np.minimum(1 + rng.poisson(5, u), MAX_BEHAVIOUR)
        ids = rng.choice(n_values, (u, MAX_BEHAVIOUR), p=zipf_probs(n_values, exponent))
        ids = np.where(np.arange(MAX_BEHAVIOUR) < lengths[:, None], ids, -1)
        # Repeated draws of one id are one id: keep the first.
        ids.sort(axis=1)
        ids[:, 1:][ids[:, 1:] == ids[:, :-1]] = -1
        weights = np.round(np.log1p(1 + rng.geometric(0.3, ids.shape)), 5)
        return ids, np.where(ids >= 0, weights, 0.0)

    def impressions(self, n: int):
        """Row arrays: user, item, position; half the items come from the user's categories. Rows
        are ordered by user, as Ali-CCP's files keep a session's samples together."""
        rng = self.rng
        users = rng.choice(self.n_users, n, p=self.user_activity)
        cat_ids, cat_weights = self.behaviour["109_14"]
        cumulative = np.cumsum(cat_weights[users], axis=1)
        pick = (cumulative < rng.random(n)[:, None] * cumulative[:, -1:]).sum(1)
        categories = np.where(
            rng.random(n) < 0.5,
            cat_ids[users, np.minimum(pick, MAX_BEHAVIOUR - 1)],
            rng.choice(N_CATEGORIES, n, p=zipf_probs(N_CATEGORIES)),
        )
        categories = np.where(categories < 0, rng.integers(0, N_CATEGORIES, n), categories)
        start, end = self.category_start[categories], self.category_end[categories]
        items = start + ((end - start) * rng.random(n) ** 2).astype(np.int64)
        positions = rng.choice(N_POSITIONS, n, p=[0.5, 0.3, 0.2])
        order = np.argsort(users, kind="stable")
        return users[order], items[order], positions[order]

    def crosses(self, users, items):
        """The user's behaviour weight on the item's category, shop, brand and intentions."""
        out = {}
        for cross, field, values in (
            ("508", "109_14", self.item_category),
            ("509", "110_14", self.item_shop),
            ("702", "127_14", self.item_brand),
        ):
            ids, weights = self.behaviour[field]
            match = ids[users] == values[items][:, None]
            out[cross] = (weights[users] * match).sum(1)
        ids, weights = self.behaviour["150_14"]
        out["853"] = np.stack(
            [
                np.where(
                    k < self.item_n_intentions[items],
                    (weights[users] * (ids[users] == self.item_intentions[items, k][:, None])).sum(1),
                    0.0,
                )
                for k in range(3)
            ],
            1,
        )
        return out

    def logits(self, users, items, positions, crosses):
        category = self.item_category[items]
        shared = self.e_item[items] + self.e_category[category] + 0.8 * crosses["508"] + 0.4 * (crosses["702"] > 0)
        ctr_only = (
            self.e_position[positions]
            + self.e_user[users]
            + self.age_x_category[self.profile["125"][users], category % 8]
        )
        cvr_only = (
            self.e_shop[self.item_shop[items]]
            + 0.6 * crosses["509"]
            + self.consumption_x_brand[self.profile["126"][users], self.item_brand[items] % 6]
        )
        return shared + ctr_only, 0.7 * shared + cvr_only


# The latent regime's fields: one id each. Cardinalities of the attribute fields (the id fields
# 101 and 205 have one id per user and item); each is capped at half the users (items).
LATENT_USER_FIELDS = {"121": 1000, "122": 400, "124": 100, "125": 50, "126": 20, "127": 8, "128": 3, "129": 200}
LATENT_USER_FIELDS.update({"109_14": 2000})
LATENT_ITEM_FIELDS = {"206": 400, "207": 2000, "210": 300, "216": 1500, "508": 100, "509": 40, "702": 10, "853": 5}
LATENT_DIM = 8
# Logit scales, chosen once (before any Trainer default) for a Bayes CTR AUC near 0.97 at a 4% CTR.
LATENT_CTR_SCALE, LATENT_CVR_SCALE, LATENT_CVR_ROTATION = 3.0, 2.5, 0.6


class _LatentWorld:
    """Users and items as sums of their fields' latent vectors; labels from their dot products."""

    def __init__(self, config: AliccpSynthConfig, rng: np.random.Generator):
        self.rng = rng
        self.n_users = max(50, int(config.rows / config.rows_per_user))
        self.n_items = max(100, config.rows // 20)
        self.user_ids = self._attributes(LATENT_USER_FIELDS, self.n_users, "101")
        self.item_ids = self._attributes(LATENT_ITEM_FIELDS, self.n_items, "205")
        self.user_vectors = self._vectors(self.user_ids)
        self.item_vectors = self._vectors(self.item_ids)
        # CVR reads the user through a partly rotated vector: related to CTR's, not the same.
        rotation, _ = np.linalg.qr(rng.standard_normal((LATENT_DIM, LATENT_DIM)))
        self.cvr_map = LATENT_CVR_ROTATION * np.eye(LATENT_DIM) + np.sqrt(1 - LATENT_CVR_ROTATION**2) * rotation
        self.user_bias = rng.normal(0, 0.3, self.n_users)
        self.item_bias = rng.normal(0, 0.3, self.n_items)
        self.e_position = np.array([0.3, 0.0, -0.4])
        self.user_activity = zipf_probs(self.n_users, 0.6)[rng.permutation(self.n_users)]
        self.item_popularity = zipf_probs(self.n_items, 0.8)[rng.permutation(self.n_items)]

    def _attributes(self, cardinalities: dict, n: int, id_field: str) -> dict:
        """{field: [n] ids}: the entity's own id, and Zipf-like draws of each attribute."""
        ids = {id_field: np.arange(n)}
        for field, cardinality in cardinalities.items():
            cardinality = max(2, min(cardinality, n // 2))
            ids[field] = self.rng.permutation(cardinality)[
                self.rng.choice(cardinality, n, p=zipf_probs(cardinality, 1.0))
            ]
        return ids

    def _vectors(self, ids: dict) -> np.ndarray:
        """[n, LATENT_DIM]: the sum of the entity's fields' vectors, each field an equal share of
        a unit variance per dimension."""
        scale = 1.0 / np.sqrt(len(ids))
        total = 0.0
        for values in ids.values():
            table = self.rng.normal(0, scale, (int(values.max()) + 1, LATENT_DIM))
            total = total + table[values]
        return total

    def impressions(self, n: int):
        rng = self.rng
        users = rng.choice(self.n_users, n, p=self.user_activity)
        items = rng.choice(self.n_items, n, p=self.item_popularity)
        positions = rng.choice(N_POSITIONS, n, p=[0.5, 0.3, 0.2])
        order = np.argsort(users, kind="stable")
        return users[order], items[order], positions[order]

    def crosses(self, users, items):
        return {}

    def logits(self, users, items, positions, crosses):
        u, v = self.user_vectors[users], self.item_vectors[items]
        norm = np.sqrt(LATENT_DIM)
        ctr = LATENT_CTR_SCALE * (u * v).sum(1) / norm + self.user_bias[users] + self.item_bias[items]
        cvr = LATENT_CVR_SCALE * ((u @ self.cvr_map.T) * v).sum(1) / norm
        return ctr + self.e_position[positions], cvr


class _LatentLines:
    """The latent regime's lines: user fields in common_features, item fields and position in the skeleton."""

    def __init__(self, world: _LatentWorld):
        self.world = world
        self.item_text = [
            "\x01".join(f"{f}\x02{_field_id(f, ids[i])}\x031.0" for f, ids in world.item_ids.items())
            for i in range(world.n_items)
        ]
        self.item_entries = len(world.item_ids)
        self.position_text = [f"301\x02{_field_id('301', p)}\x031.0" for p in range(N_POSITIONS)]

    def common(self, split: str, user: int) -> str:
        ids = self.world.user_ids
        entries = [f"{f}\x02{_field_id(f, values[user])}\x031.0" for f, values in ids.items()]
        return f"{_common_index(split, user)},{len(entries)},{chr(1).join(entries)}"

    def skeleton(self, split, sample_id, click, conversion, user, item, position, cross_row) -> str:
        entries = f"{self.item_text[item]}\x01{self.position_text[position]}"
        return f"{sample_id},{click},{conversion},{_common_index(split, user)},{self.item_entries + 1},{entries}"


def _common_index(split: str, user: int) -> str:
    """A user's common_feature_index in a split's files."""
    return format((int(user) * 0x9E3779B97F4A7C15 + (7 if split == "test" else 3)) % (1 << 64), "016x")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def solve_offset(target: float, rate) -> float:
    """The offset o with rate(o) = target, by bisection (rate increases with o)."""
    low, high = -30.0, 30.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if rate(mid) < target else (low, mid)
    return (low + high) / 2


class _Lines:
    """Formats valid lines and their malformed variants."""

    def __init__(self, world: _World):
        w = world
        self.world = w
        self.item_text = [
            "\x01".join(
                [
                    f"205\x02{_field_id('205', i)}\x031.0",
                    f"206\x02{_field_id('206', w.item_category[i])}\x031.0",
                    f"207\x02{_field_id('207', w.item_shop[i])}\x031.0",
                    f"216\x02{_field_id('216', w.item_brand[i])}\x031.0",
                ]
                + [f"210\x02{_field_id('210', t)}\x031.0" for t in w.item_intentions[i, : w.item_n_intentions[i]]]
            )
            for i in range(w.n_items)
        ]
        self.item_entries = 4 + w.item_n_intentions
        self.position_text = [f"301\x02{_field_id('301', p)}\x031.0" for p in range(N_POSITIONS)]

    def common(self, split: str, user: int) -> str:
        w = self.world
        entries = [
            f"{f}\x02{_field_id('101', user) if f == '101' else _field_id(f, w.profile[f][user])}\x031.0"
            for f in ("101",) + tuple(PROFILE_CARDINALITY)
        ]
        for field, (ids, weights) in w.behaviour.items():
            entries += [
                f"{field}\x02{_field_id(field, i)}\x03{_weight(x)}" for i, x in zip(ids[user], weights[user]) if i >= 0
            ]
        return f"{_common_index(split, user)},{len(entries)},{chr(1).join(entries)}"

    def skeleton(self, split, sample_id, click, conversion, user, item, position, cross_row) -> str:
        w = self.world
        entries = [self.item_text[item], self.position_text[position]]
        n = self.item_entries[item] + 1
        for cross, value in (("508", w.item_category[item]), ("509", w.item_shop[item]), ("702", w.item_brand[item])):
            if cross_row[cross] > 0:
                entries.append(f"{cross}\x02{_field_id(cross, value)}\x03{_weight(cross_row[cross])}")
                n += 1
        for k in range(w.item_n_intentions[item]):
            if cross_row["853"][k] > 0:
                entries.append(
                    f"853\x02{_field_id('853', w.item_intentions[item, k])}\x03{_weight(cross_row['853'][k])}"
                )
                n += 1
        return f"{sample_id},{click},{conversion},{_common_index(split, user)},{n},{chr(1).join(entries)}"


def corrupt(line: str, defect: str, fresh_id: str | None = None) -> bytes:
    """A copy of a valid line with exactly one defect (`fresh_id` replaces a skeleton's sample id)."""
    columns = line.split(",")
    if fresh_id is not None:
        columns[0] = fresh_id
    entries = columns[-1].split("\x01")
    first = entries[0].split("\x02")
    if defect == r.EMPTY_LINE:
        return b""
    if defect == r.BAD_ENCODING:
        return ",".join(columns).encode() + b"\xff\xfe"
    if defect == r.WRONG_COLUMN_COUNT:
        columns = columns[:-1]
    elif defect == r.BAD_LABEL:
        columns[1] = "2"
    elif defect == r.BAD_SAMPLE_ID:
        columns[0] = ""
    elif defect == r.FEATURE_NUM_MISMATCH:
        columns[-2] = str(int(columns[-2]) + 1)
    elif defect == r.MALFORMED_ENTRY:
        entries[0] = entries[0].replace("\x03", "")
    elif defect == r.UNKNOWN_FIELD:
        entries[0] = "999\x02" + first[1]
    elif defect == r.UNPARSABLE_ID:
        entries[0] = first[0] + "\x02" + "12a\x03" + first[1].split("\x03")[1]
    elif defect == r.UNPARSABLE_WEIGHT:
        entries[0] = first[0] + "\x02" + first[1].split("\x03")[0] + "\x03one"
    elif defect == r.UNKNOWN_COMMON_FEATURE_INDEX:
        columns[3] = "ffffffffffffffff"
    elif defect == r.CONVERSION_WITHOUT_CLICK:
        columns[1], columns[2] = "0", "1"
    elif defect not in (r.DUPLICATE_SAMPLE_ID, r.DUPLICATE_COMMON_FEATURE_INDEX):
        raise ValueError(f"unknown defect {defect}")
    columns[-1] = "\x01".join(entries)
    return ",".join(columns).encode()


def _defect_plan(rng, n_valid: int, rate: float, defects: tuple, at_least_each: bool):
    """(position among valid lines, defect) pairs; each defect at least once when asked and rate > 0."""
    if rate <= 0 or n_valid == 0:
        return []
    n = round(rate * n_valid)
    if at_least_each:
        n = max(n, len(defects))
    kinds = [defects[k % len(defects)] for k in range(n)]
    rng.shuffle(kinds)
    positions = np.sort(rng.integers(0, n_valid, n))
    return list(zip(positions.tolist(), kinds))


def _write_with_defects(path: str, valid_lines, plan, make_defect, counts: dict) -> int:
    """Writes the valid lines, each followed by the defective lines the plan puts after it;
    counts those per defect into `counts`; returns the number of lines written."""
    plan = collections.deque(plan)
    written, chunk = 0, []
    with open(path, "wb") as f:
        for position, line in enumerate(valid_lines):
            chunk.append(line.encode())
            while plan and plan[0][0] == position:
                defect = plan.popleft()[1]
                chunk.append(make_defect(line, defect))
                counts[defect] = counts.get(defect, 0) + 1
            if len(chunk) >= _CHUNK:
                f.write(b"\n".join(chunk) + b"\n")
                written, chunk = written + len(chunk), []
        if chunk:
            f.write(b"\n".join(chunk) + b"\n")
    return written + len(chunk)


def generate(config: AliccpSynthConfig, out_dir: str, progress: bool = True, truth: dict | None = None) -> dict:
    """Writes the four raw files and synth.json into out_dir; returns what synth.json holds.
    `truth`, when given, receives {split: (p_ctr, p_cvr)}: each valid row's true probabilities,
    in file order."""
    if config.rows < 10:
        raise ValueError(f"--rows {config.rows} is too small: at least 10")
    if not 0 <= config.malformed_rate < 1:
        raise ValueError(f"--malformed-rate {config.malformed_rate} must be in [0, 1)")
    if config.world not in ("sessions", "latent"):
        raise ValueError(f"unknown world {config.world!r}: sessions or latent")
    rng = np.random.default_rng(config.seed)
    world = (_LatentWorld if config.world == "latent" else _World)(config, rng)
    lines = (_LatentLines if config.world == "latent" else _Lines)(world)
    n_test = int(round(config.rows * config.test_fraction))
    counts = {"train": config.rows - n_test, "test": n_test}
    manifest = {
        "generator": "aliccp",
        "config": dataclasses.asdict(config),
        "samples": counts,
        "malformed": {"samples": {}, "common": {}},
        "dropped": {},
        "label_rates": {},
        "bayes_auc": {},
        "files": {},
    }
    os.makedirs(out_dir, exist_ok=True)
    # Solve the label offsets once, on the training impressions.
    draws = {split: world.impressions(n) for split, n in counts.items()}
    crosses = {split: world.crosses(d[0], d[1]) for split, d in draws.items()}
    logits = {split: world.logits(*draws[split], crosses[split]) for split in counts}
    ctr_logit, cvr_logit = logits["train"]
    a = solve_offset(config.ctr, lambda o: sigmoid(ctr_logit + o).mean())
    p_click = sigmoid(ctr_logit + a)
    b = solve_offset(config.cvr, lambda o: (p_click * sigmoid(cvr_logit + o)).sum() / p_click.sum())
    malformed = manifest["malformed"]
    bar = tqdm(total=config.rows, desc="synth aliccp", unit="row", disable=not progress)
    for split, n in counts.items():
        users, items, positions = draws[split]
        p_ctr = sigmoid(logits[split][0] + a)
        p_cvr = sigmoid(logits[split][1] + b)
        if truth is not None:
            truth[split] = (p_ctr, p_cvr)
        click = (rng.random(n) < p_ctr).astype(np.int64)
        conversion = click * (rng.random(n) < p_cvr)
        manifest["label_rates"][split] = {
            "ctr": float(click.mean()) if n else None,
            "cvr": float(conversion.sum() / max(click.sum(), 1)),
            "ctcvr": float(conversion.mean()) if n else None,
        }
        manifest["bayes_auc"][split] = {
            "ctr": roc_auc(click, p_ctr),
            "cvr": roc_auc(conversion[click == 1], p_cvr[click == 1]),
            "ctcvr": roc_auc(conversion, p_ctr * p_cvr),
        }
        skeleton_name, common_name = FILES[split]

        def skeleton_lines():
            for row in range(n):
                cross_row = {c: v[row] for c, v in crosses[split].items()}
                yield lines.skeleton(
                    split, row + 1, click[row], conversion[row], users[row], items[row], positions[row], cross_row
                )
                if row % 10_000 == 9_999 or row == n - 1:
                    bar.update(row % 10_000 + 1)

        fresh_ids = itertools.count(10**9)

        def skeleton_defect(line, defect):
            if defect == r.DUPLICATE_SAMPLE_ID:
                return line.encode()
            return corrupt(line, defect, fresh_id=str(next(fresh_ids)))

        defects = {}
        plan = _defect_plan(rng, n, config.malformed_rate, SAMPLE_DEFECTS, at_least_each=split == "train")
        manifest["files"][skeleton_name] = _write_with_defects(
            os.path.join(out_dir, skeleton_name), skeleton_lines(), plan, skeleton_defect, defects
        )
        for defect, count in defects.items():
            bucket = manifest["dropped"] if defect == r.CONVERSION_WITHOUT_CLICK else malformed["samples"]
            bucket[defect] = bucket.get(defect, 0) + count

        unused_indices = itertools.count(10**12)

        def common_defect(line, defect):
            if defect == r.DUPLICATE_COMMON_FEATURE_INDEX:
                return line.encode()
            # An index no sample refers to, so the defect does not spread to samples.
            return corrupt(format(next(unused_indices), "016x") + line[line.index(",") :], defect)

        split_users = np.unique(users).tolist()
        plan = _defect_plan(
            rng, len(split_users), config.malformed_rate, COMMON_DEFECTS, at_least_each=split == "train"
        )
        manifest["files"][common_name] = _write_with_defects(
            os.path.join(out_dir, common_name),
            (lines.common(split, u) for u in split_users),
            plan,
            common_defect,
            malformed["common"],
        )
    bar.close()
    with open(os.path.join(out_dir, "synth.json"), "w") as f:
        json.dump(manifest, f, indent=2, default=float)
    return manifest
