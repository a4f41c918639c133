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
        config = dict(custom_config or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"custom_config: unknown keys {unknown}; known: {sorted(known)}")
        options = cls(**config)
        if options.frequency_threshold < 1:
            raise ValueError(f"custom_config.frequency_threshold must be >= 1, got {options.frequency_threshold}")
        if options.num_oov_buckets < 1:
            raise ValueError(f"custom_config.num_oov_buckets must be >= 1 (unseen ids need a bucket), got {options.num_oov_buckets}")
        for name, ops in [*options.numeric.items(), ("numeric_default", options.numeric_default)]:
            bad = [op for op in ops if op not in NUMERIC_OP_NAMES]
            if bad:
                raise ValueError(f"custom_config numeric ops for {name}: {bad} are not among {list(NUMERIC_OP_NAMES)}")
        return options

    def ops_for(self, field: F.Field) -> tuple:
        return tuple(self.numeric.get(field.source, self.numeric.get(field.key, self.numeric_default)))
