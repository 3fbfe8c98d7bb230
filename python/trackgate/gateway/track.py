"""`/track`: Mixpanel's event endpoint, the ingestion flow (ingest.py) with the native decoder's reading
of a track request."""

from __future__ import annotations

from collections.abc import Callable

from trackgate._native import Options, decode_request
from trackgate.gateway.ingest import Endpoint, Ingestion, NativeDecoder


def track_endpoint(shared: Ingestion, options: Options, clock: Callable[[], float]) -> Endpoint:
    return Endpoint("track", NativeDecoder(decode_request, options, shared.tokens, clock), shared)
