"""Typed stub of the private native module. Import from `trackgate`, not from here."""

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Generic, Protocol, Self, TypeVar, final

from trackgate.decode_errors import ErrorDetails, EventErrorKind, RequestErrorKind

__all__ = [
    "DEDUP_HASH_BYTES",
    "EVENT_ERROR_KINDS",
    "IMPORT_EARLIEST_TIME",
    "MAX_FUNNEL_STEP",
    "PACKED_LAYOUT",
    "REQUEST_ERROR_STATUS",
    "RULES",
    "DecodeError",
    "EventDecoder",
    "EventError",
    "Options",
    "PartitionBatch",
    "ReplyError",
    "ReplyReader",
    "Request",
    "Rule",
    "TokenSet",
    "__version__",
    "decode_data",
    "decode_import_request",
    "decode_profile_request",
    "decode_request",
    "profile_partition",
]

__version__: Final[str]

_Event = TypeVar("_Event")
_Funnel = TypeVar("_Funnel")

# The version of the packed argument layout (see `Request.batches`), which the Redis function checks.
# Per event: its UTC day (YYYY-MM-DD), "HH:<event name>", the distinct_id ("" when none), the funnel
# ("" unless mp_funnel); an mp_funnel event adds its time in whole seconds, its step and its goal. Per
# profile update: the operation ("$set", ...), the group key ("" for a person), the distinct_id or group
# id, $last_seen ("" with $ignore_time), and how many arguments follow: name and value JSON per
# property, or the names of $unset.
PACKED_LAYOUT: Final[int]

# The bytes of an event's dedup hash: with deduplication on (`Options.dedup_window`), the last of each
# event's packed arguments, or empty for an event without $insert_id.
DEDUP_HASH_BYTES: Final[int]

# The highest mp_funnel step the decoder accepts (step_invalid above it), and the last a report lists.
MAX_FUNNEL_STEP: Final[int]

# The earliest event time /import takes (1971-01-01T00:00:00Z, in seconds); earlier is `time_too_old`.
IMPORT_EARLIEST_TIME: Final[float]

# The HTTP status of each whole-request error kind: 413 asks mixpanel-browser to retry in smaller batches.
REQUEST_ERROR_STATUS: Final[Mapping[RequestErrorKind, int]]

# Every per-event error kind.
EVENT_ERROR_KINDS: Final[tuple[EventErrorKind, ...]]

@final
class Options:
    """The decoding rules. Limits are inclusive: a value equal to the limit is accepted."""

    @property
    def max_age(self) -> float: ...
    @property
    def max_future_skew(self) -> float: ...
    @property
    def max_event_name_chars(self) -> int: ...
    @property
    def max_distinct_id_chars(self) -> int: ...
    @property
    def max_properties(self) -> int: ...
    @property
    def max_depth(self) -> int: ...
    @property
    def max_array_len(self) -> int: ...
    @property
    def max_event_bytes(self) -> int: ...
    @property
    def max_request_bytes(self) -> int: ...
    @property
    def max_events(self) -> int: ...
    @property
    def partitions(self) -> int: ...
    @property
    def dedup_window(self) -> int: ...
    # The defaults are the decoder's (see RULES, or `inspect.signature(Options)`), not written here twice.
    def __new__(
        cls,
        *,
        max_age: float = ...,
        max_future_skew: float = ...,
        max_event_name_chars: int = ...,
        max_distinct_id_chars: int = ...,
        max_properties: int = ...,
        max_depth: int = ...,
        max_array_len: int = ...,
        max_event_bytes: int = ...,
        max_request_bytes: int = ...,
        max_events: int = ...,
        partitions: int = ...,
        dedup_window: int = ...,
    ) -> Self: ...

@final
class Rule:
    """One decoding rule: its `Options` field, the help text of its setting, its default and its bounds
    (inclusive; `maximum` is None when only the type bounds it)."""

    @property
    def name(self) -> str: ...
    @property
    def help(self) -> str: ...
    @property
    def default(self) -> int | float: ...
    @property
    def minimum(self) -> int | float: ...
    @property
    def maximum(self) -> int | float | None: ...

# Every rule, in the order of `Options`'s fields.
RULES: Final[tuple[Rule, ...]]

@final
class TokenSet:
    """The tokens of known projects; events with any other token fail with kind `unknown_token`."""

    def __new__(cls, tokens: Iterable[str]) -> Self: ...
    def __contains__(self, token: object, /) -> bool: ...
    def __len__(self) -> int: ...

@final
class Request:
    """What one HTTP request carried, decoded and validated."""

    @property
    def verbose(self) -> bool: ...
    @property
    def img(self) -> bool: ...
    @property
    def test(self) -> bool: ...
    @property
    def use_ip(self) -> bool: ...
    @property
    def strict(self) -> bool:
        """/import's `strict=1` (read as `verbose` is; other endpoints ignore it)."""
    @property
    def callback(self) -> str | None: ...
    @property
    def redirect(self) -> str | None: ...
    @property
    def total(self) -> int: ...
    @property
    def accepted(self) -> int: ...
    @property
    def errors(self) -> list[EventError]:
        """One per invalid event, in index order."""
    @property
    def batches(self) -> list[PartitionBatch]:
        """One per partition that received valid events, its events in time order."""

    def events(self) -> list[bytes]:
        """The normalised JSON of each valid event, in request order."""

@final
class EventError:
    """One invalid event: its index in the request, the dotted path of the field at fault ("" when the
    event itself is), why (a stable name) and a message for people."""

    @property
    def index(self) -> int: ...
    @property
    def field(self) -> str: ...
    @property
    def kind(self) -> EventErrorKind: ...
    @property
    def message(self) -> str: ...
    @property
    def insert_id(self) -> str | None:
        """The event's `$insert_id`, when it sent a valid one."""

@final
class PartitionBatch:
    """The valid events (or profile updates) of one request for one (token, partition), ready for Redis:
    `count` events whose
    arguments (see PACKED_LAYOUT) are `args` RESP bulk strings in `packed`, ready to append to an FCALL
    command, and whose `XADD <stream> * data <json>` commands, complete, are `xadds`; the events in time
    order in both."""

    @property
    def token(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def args(self) -> int: ...
    @property
    def packed(self) -> bytes: ...
    @property
    def xadds(self) -> bytes: ...
    def __new__(
        cls, *, token: str, partition: int, count: int, args: int, packed: bytes, xadds: bytes
    ) -> Self: ...

@final
class DecodeError(ValueError):
    """The payload could not be used. `kind` is a stable snake_case name, `status` the HTTP status."""

    @property
    def kind(self) -> RequestErrorKind: ...
    @property
    def status(self) -> int: ...
    @property
    def message(self) -> str: ...
    @property
    def events(self) -> list[object]: ...
    @property
    def verbose(self) -> bool:
        """For a request refused as a whole, its answer-shaping parameters, as its query string and its form
        body say (an encoded, JSON or oversized body is not read for them)."""
    @property
    def img(self) -> bool: ...
    @property
    def strict(self) -> bool: ...
    @property
    def callback(self) -> str | None: ...
    def __new__(
        cls,
        kind: RequestErrorKind,
        message: str,
        status: int = 400,
        errors: Sequence[EventError] | None = None,
        events: Sequence[object] | None = None,
    ) -> Self: ...
    def errors(self) -> list[ErrorDetails]:
        """Per-event errors as dicts with `index`, `loc`, `field`, `kind` and `msg`."""

def decode_request(
    query: str | bytes,
    body: bytes,
    content_type: str | None = None,
    content_encoding: str | None = None,
    *,
    now: float,
    options: Options,
    peer_ip: str | None = None,
    tokens: TokenSet | None = None,
) -> Request:
    """Decode one /track request. Raises DecodeError when the request as a whole is unusable."""

def decode_profile_request(
    query: str | bytes,
    body: bytes,
    content_type: str | None = None,
    content_encoding: str | None = None,
    *,
    groups: bool,
    now: float,
    options: Options,
    peer_ip: str | None = None,
    tokens: TokenSet | None = None,
) -> Request:
    """Decode one /engage request, or with `groups` one /groups request: its profile updates, as `Request`
    holds events (`events()` gives each update's normalised JSON). Raises DecodeError when the request as
    a whole is unusable."""

def decode_import_request(
    query: str | bytes,
    body: bytes,
    content_type: str | None = None,
    content_encoding: str | None = None,
    *,
    token: str,
    now: float,
    options: Options,
    counter_retention_days: int,
    peer_ip: str | None = None,
) -> Request:
    """Decode one /import request for the project whose token is `token` (the caller authenticated it):
    one event, an array or NDJSON, by `options` with /import's own rules besides (no time before
    IMPORT_EARLIEST_TIME; with `strict=1`, `time`, `distinct_id` and `$insert_id` required; `$merge`
    naming two ids). Events of days more than `counter_retention_days` before `now`'s are stored but not
    counted. Raises DecodeError when the request as a whole is unusable."""

def profile_partition(id: str, *, group_key: str | None = None, partitions: int) -> int:
    """The partition of a person's profile (`id` the distinct_id: their events' partition), or with
    `group_key` of that group's (`id` the group id)."""

@final
class EventDecoder(Generic[_Event, _Funnel]):
    """Makes `event` objects (and `funnel` ones for mp_funnel events) as it decodes: `event` is called
    with the keyword arguments event, time, received, token, properties, distinct_id, insert_id, ip,
    funnel and mp_keys; `funnel` with name, step and goal."""

    def __new__(cls, event: Callable[..., _Event], funnel: Callable[[str, int, str], _Funnel]) -> Self: ...
    @property
    def decode(self) -> _Decode[_Event]:
        """`trackgate.decode`: the function that decodes with this decoder."""

class _Decode(Protocol[_Event]):
    def __call__(
        self,
        data: str | bytes,
        *,
        now: float | None = None,
        options: Options | None = None,
        **rules: Any,
    ) -> list[_Event]: ...

def decode_data(data: str | bytes, *, now: float, options: Options) -> Request:
    """Decode the value of one `data` parameter: base64 (any variant), raw JSON, or gzip bytes."""

class ReplyError(Exception):
    """An error reply from Redis (`-ERR ...`): handed over as a value, never raised."""

@final
class ReplyReader:
    """Redis's replies (RESP2) read from the bytes of a connection, in order, as hiredis reads them:
    bytes for status and bulk strings, int, None for nil, list, a ReplyError value for an error reply.
    Raises ValueError for bytes that are not RESP2."""

    def __init__(self) -> None: ...
    def feed(self, data: bytes) -> None: ...
    def has_data(self) -> bool:
        """Whether bytes are waiting that no reply has been read from yet."""
    def skip(self, n: int) -> tuple[int, ReplyError | None]:
        """Pass over up to `n` whole replies without building them: how many, and the last error reply
        among them."""
    def gets(self) -> object:
        """The next whole reply, or False until all of it has arrived."""
