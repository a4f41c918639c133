"""The feature schema: every field of every dataset, named once.

Every package imports field names, kinds and labels from here. A raw tf.Example written by
ExampleGen holds, per field, the ids (int64) or value (float) under `Field.key`, and for
weighted fields the parallel float list under `weight_key(field)`; the labels under `LABELS`;
and metadata (`SAMPLE_ID`, ...) that is never a model input.
"""

from __future__ import annotations

import dataclasses
import enum

CLICK = "click"
CONVERSION = "conversion"
LABELS = (CLICK, CONVERSION)

# Stands for an absent single-valued categorical field, so "missing" is a token of its own.
MISSING_ID = -1

SAMPLE_ID = "sample_id"
COMMON_FEATURE_INDEX = "common_feature_index"
SEARCH_ID = "search_id"
METADATA = (SAMPLE_ID, COMMON_FEATURE_INDEX, SEARCH_ID)


class Kind(enum.Enum):
    CATEGORICAL = "categorical"  # int64 ids
    NUMERIC = "numeric"  # one float


@dataclasses.dataclass(frozen=True)
class Field:
    source: str  # the name in the raw data: '109_14', 'categorical_3'
    kind: Kind
    description: str = ""
    multivalent: bool = False  # may hold several ids per example

    @property
    def key(self) -> str:
        """The tf.Example key: Ali-CCP field ids get an `f` so keys are valid identifiers."""
        return f"f{self.source}" if self.source[0].isdigit() else self.source


def weight_key(field: Field) -> str:
    return f"{field.key}_weight"


@dataclasses.dataclass(frozen=True)
class Schema:
    """The fields one dataset layout carries; `weighted` names the fields with weight lists."""

    name: str
    fields: tuple[Field, ...]
    weighted: frozenset[str] = frozenset()

    def __post_init__(self):
        unknown = self.weighted - {f.source for f in self.fields}
        if unknown:
            raise ValueError(f"schema {self.name}: weighted fields {sorted(unknown)} are not fields")

    @property
    def by_source(self) -> dict[str, Field]:
        return {f.source: f for f in self.fields}


def _categorical(source: str, description: str, multivalent: bool = False) -> Field:
    return Field(source, Kind.CATEGORICAL, description, multivalent)


# Ali-CCP (Ma et al., ESMM, SIGIR 2018): user-side fields live in common_features_*.csv,
# ad-side fields in sample_skeleton_*.csv. The `_14` fields are the user's behaviour over
# 14 days; their \x03 value is a (log) count. 508/509/702/853 cross a behaviour field with
# the ad's own id and carry the matched behaviour's value.
ALICCP_USER_FIELDS = (
    _categorical("101", "user id"),
    _categorical("121", "user profile category id"),
    _categorical("122", "user profile group id"),
    _categorical("124", "user gender id"),
    _categorical("125", "user age id"),
    _categorical("126", "user consumption level 1"),
    _categorical("127", "user consumption level 2"),
    _categorical("128", "user occupation"),
    _categorical("129", "user geography"),
    _categorical("109_14", "categories the user acted on, with counts", multivalent=True),
    _categorical("110_14", "shops the user acted on, with counts", multivalent=True),
    _categorical("127_14", "brands the user acted on, with counts", multivalent=True),
    _categorical("150_14", "intention nodes the user acted on, with counts", multivalent=True),
)
ALICCP_AD_FIELDS = (
    _categorical("205", "item id"),
    _categorical("206", "item category id"),
    _categorical("207", "shop id"),
    _categorical("210", "item intention nodes", multivalent=True),
    _categorical("216", "brand id"),
    _categorical("508", "109_14 x 206: the user's count on the item's category", multivalent=True),
    _categorical("509", "110_14 x 207: the user's count on the item's shop", multivalent=True),
    _categorical("702", "127_14 x 216: the user's count on the item's brand", multivalent=True),
    _categorical("853", "150_14 x 210: the user's count on the item's intentions", multivalent=True),
    _categorical("301", "scenario / position"),
)
ALICCP_FIELDS = ALICCP_USER_FIELDS + ALICCP_AD_FIELDS
ALICCP_BEHAVIOUR = ("109_14", "110_14", "127_14", "150_14")
ALICCP_CROSSES = ("508", "509", "702", "853")

# The raw layout keeps every id with its \x03 weight.
ALICCP_RAW = Schema("aliccp-raw", ALICCP_FIELDS, frozenset(f.source for f in ALICCP_FIELDS))
# torch-rechub's preprocessing keeps one id per field, and the weights of 8 fields as `D<field>`.
ALICCP_TORCHRECHUB = Schema("aliccp-torchrechub", ALICCP_FIELDS, frozenset(ALICCP_BEHAVIOUR + ALICCP_CROSSES))
# AITM's preprocessing drops 210 and the behaviour fields, and all weights.
ALICCP_AITM = Schema(
    "aliccp-aitm",
    tuple(f for f in ALICCP_FIELDS if f.source != "210" and f.source not in ALICCP_BEHAVIOUR),
)
# PaddleRec's ESMM sample and FDN's joined sample: `field:id` entries, no weights.
ALICCP_KV = Schema("aliccp-kv", ALICCP_FIELDS)

# AliExpress (MTReclib): 16 categorical and 63 numerical (already scaled) columns.
ALIEXPRESS = Schema(
    "aliexpress",
    tuple(_categorical(f"categorical_{i}", "") for i in range(1, 17))
    + tuple(Field(f"numerical_{i}", Kind.NUMERIC) for i in range(1, 64)),
)

SCHEMAS = {s.name: s for s in (ALICCP_RAW, ALICCP_TORCHRECHUB, ALICCP_AITM, ALICCP_KV, ALIEXPRESS)}


def schema_of_examples(stats: dict) -> Schema:
    """The schema of ExampleGen's output, from its stats.json (format and per-file layouts)."""
    if stats["format"] == "aliccp-raw":
        return ALICCP_RAW
    names = set(stats["layouts"].values())
    if len(names) != 1 or not names <= set(SCHEMAS):
        raise ValueError(f"examples mix or lack known layouts: {sorted(names)}")
    return SCHEMAS[names.pop()]


def fields_in(keys) -> list[Field]:
    """The declared fields whose tf.Example key is among `keys`, in schema order."""
    keys = set(keys)
    seen, found = set(), []
    for schema in SCHEMAS.values():
        for f in schema.fields:
            if f.key in keys and f.key not in seen:
                seen.add(f.key)
                found.append(f)
    return found
