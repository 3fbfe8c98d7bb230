"""What a `DecodeError` says, as types: the kinds of errors, and the dicts of `DecodeError.errors()`.

The native module holds the kinds as values (`REQUEST_ERROR_STATUS`, `EVENT_ERROR_KINDS`), made from its
own enums; these Literals are their copies for type checkers, held equal to them by a test.
"""

from typing import Literal, TypeAlias, TypedDict

# Why a request, or a `trackgate.decode` call, was refused as a whole (`DecodeError.kind`). The same names,
# in the same order, as REQUEST_ERROR_STATUS's keys (tests/test_native_types.py holds them so).
RequestErrorKind: TypeAlias = Literal[
    "empty",
    "body_too_large",
    "decompressed_too_large",
    "invalid_gzip",
    "unsupported_encoding",
    "invalid_base64",
    "invalid_utf8",
    "invalid_json",
    "not_events",
    "empty_batch",
    "too_many_events",
    "invalid_parameter",
    "invalid_events",
]

# Why one event (or profile update) was rejected while the others of its request were not. The same names,
# in the same order, as EVENT_ERROR_KINDS.
EventErrorKind: TypeAlias = Literal[
    "not_an_object",
    "event_missing",
    "event_invalid",
    "event_too_long",
    "properties_invalid",
    "token_missing",
    "token_invalid",
    "unknown_token",
    "time_invalid",
    "time_too_old",
    "distinct_id_invalid",
    "distinct_id_too_long",
    "insert_id_invalid",
    "ip_invalid",
    "funnel_invalid",
    "step_invalid",
    "goal_invalid",
    "too_many_properties",
    "too_many_keys",
    "too_deep",
    "array_too_long",
    "duplicate_property",
    "number_out_of_range",
    "event_too_large",
    # Profile updates (/engage, /groups) only.
    "distinct_id_missing",
    "group_invalid",
    "operation_missing",
    "too_many_operations",
    "operation_invalid",
    "flag_invalid",
    # /import only: what `strict=1` requires, and `$merge` events.
    "time_missing",
    "insert_id_missing",
    "merge_invalid",
]


class ErrorDetails(TypedDict):
    """One invalid event, as `DecodeError.errors()` describes it (the shape of pydantic's error dicts)."""

    index: int
    # The event's index, then the field's path: (3,), (1, "properties", "token").
    loc: tuple[int | str, ...]
    # The dotted path of the field ("properties.token"); empty when the event itself is at fault.
    field: str
    kind: EventErrorKind
    msg: str
