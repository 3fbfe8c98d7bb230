"""`/engage` and `/groups`: Mixpanel's profile endpoints, for people and for groups. The ingestion flow
(ingest.py) with the native decoder's reading of profile updates: the same transports, answers and
statuses as `/track`, each update stored in its partition's stream of updates and applied to its
profile in the same transaction (README, "Profiles")."""

from __future__ import annotations

from collections.abc import Callable

from trackgate._native import Options, decode_profile_request
from trackgate.gateway.ingest import Endpoint, Ingestion, NativeDecoder


def engage_endpoint(shared: Ingestion, options: Options, clock: Callable[[], float]) -> Endpoint:
    decoder = NativeDecoder(decode_profile_request, options, shared.tokens, clock, groups=False)
    return Endpoint("engage", decoder, shared)


def groups_endpoint(shared: Ingestion, options: Options, clock: Callable[[], float]) -> Endpoint:
    decoder = NativeDecoder(decode_profile_request, options, shared.tokens, clock, groups=True)
    return Endpoint("groups", decoder, shared)
