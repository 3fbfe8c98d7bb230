"""trackgate: a high-throughput gateway for the Mixpanel /track API.

`decode` turns a Mixpanel `data` payload into typed events; `decode_request` is the gateway's own entry
point for a whole HTTP request. Both run in the native extension.
"""

from trackgate._native import (
    PACKED_LAYOUT,
    DecodeError,
    EventError,
    Options,
    PartitionBatch,
    Request,
    TokenSet,
    __version__,
    decode_request,
)
from trackgate.decode_errors import ErrorDetails
from trackgate.events import Event, Funnel, decode

__all__ = [
    "PACKED_LAYOUT",
    "DecodeError",
    "ErrorDetails",
    "Event",
    "EventError",
    "Funnel",
    "Options",
    "PartitionBatch",
    "Request",
    "TokenSet",
    "__version__",
    "decode",
    "decode_request",
]
