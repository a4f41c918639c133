"""The Transform stage's preprocessing options (`custom_config` in TFX), checked without TensorFlow."""

from __future__ import annotations

import dataclasses

from transform import features as F

NUMERIC_OP_NAMES = ("log1p", "z_score")  # signed log(1 + |x|); (x - mean) / std over the training split


@dataclasses.dataclass(frozen=True)
class Options:
    """`custom_config` of the Transform stage (TFX passes it through unchanged)."""

    frequency_threshold: int = 1  # an id seen fewer times in training goes to an OOV bucket
    num_oov_buckets: int = 1
    numeric: dict = dataclasses.field(default_factory=dict)  # field source or key -> ops, applied in order
    numeric_default: tuple = ()  # ops for numeric fields not in `numeric` (AliExpress' are already scaled)

    @classmethod
    def from_config(cls, custom_config: dict | None) -> "Options":
        """The options of a `custom_config` dict; ValueError naming the key for anything wrong."""
        if custom_config is not None and not isinstance(custom_config, dict):
            raise ValueError(f"custom_config must be an object of options, got {type(custom_config).__name__}")
        config = dict(custom_config or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"custom_config: unknown keys {unknown}; known: {sorted(known)}")
        for key in ("frequency_threshold", "num_oov_buckets"):
            value = config.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"custom_config.{key} must be an integer >= 1, got {value!r}")
        numeric = config.get("numeric", {})
        if not isinstance(numeric, dict):
            raise ValueError(f"custom_config.numeric must map field names to lists of ops, got {numeric!r}")
        for name, ops in [*numeric.items(), ("numeric_default", config.get("numeric_default", ()))]:
            if not isinstance(ops, (list, tuple)):
                raise ValueError(f"custom_config numeric ops for {name} must be a list, got {ops!r}")
            bad = [op for op in ops if op not in NUMERIC_OP_NAMES]
            if bad:
                raise ValueError(f"custom_config numeric ops for {name}: {bad} are not among {list(NUMERIC_OP_NAMES)}")
        return cls(**config)

    def check_fields(self, schema: F.Schema) -> None:
        """ValueError if `numeric` names a field that is not a numeric field of `schema`."""
        numeric = {name for f in schema.fields if f.kind is F.Kind.NUMERIC for name in (f.source, f.key)}
        unknown = sorted(set(self.numeric) - numeric)
        if unknown:
            raise ValueError(f"custom_config.numeric names {unknown}, which are not numeric fields of {schema.name}")

    def ops_for(self, field: F.Field) -> tuple:
        return tuple(self.numeric.get(field.source, self.numeric.get(field.key, self.numeric_default)))
