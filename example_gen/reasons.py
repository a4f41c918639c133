"""Why a raw line is rejected (kept in rejected/) or dropped (counted only)."""

# Rejected:
EMPTY_LINE = "empty_line"
BAD_ENCODING = "bad_encoding"
WRONG_COLUMN_COUNT = "wrong_column_count"
BAD_LABEL = "bad_label"
BAD_SAMPLE_ID = "bad_sample_id"
FEATURE_NUM_MISMATCH = "feature_num_mismatch"
MALFORMED_ENTRY = "malformed_feature_entry"
UNKNOWN_FIELD = "unknown_field"
UNPARSABLE_ID = "unparsable_id"
UNPARSABLE_WEIGHT = "unparsable_weight"
UNPARSABLE_NUMERIC = "unparsable_numeric"
DUPLICATE_SAMPLE_ID = "duplicate_sample_id"
UNKNOWN_COMMON_FEATURE_INDEX = "unknown_common_feature_index"
DUPLICATE_COMMON_FEATURE_INDEX = "duplicate_common_feature_index"
# Dropped (well-formed, but not an example):
CONVERSION_WITHOUT_CLICK = "conversion_without_click"
HEADER = "header"


class Malformed(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
