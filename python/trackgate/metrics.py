"""The gateway's Prometheus metrics.

With several Granian workers, /metrics is answered by whichever worker the scrape reaches, so each
worker's numbers alone would be wrong. `trackgate serve` therefore runs prometheus-client in
multi-process mode: it sets PROMETHEUS_MULTIPROC_DIR (an empty directory under the data directory)
before the workers start and import this module; every worker writes its values to files there, and a
scrape sums them all. Without that variable (an app served by granian directly) the metrics are the
process's own.

Label values are fixed strings (routes, statuses, error kinds) or the tokens of projects an operator
gave a rate limit, never request data.
"""

from __future__ import annotations

import asyncio
import os
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from trackgate.settings import metrics_dir

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

REQUESTS = Counter("trackgate_requests", "HTTP requests answered, by route and status", ["route", "status"])
EVENTS_ACCEPTED = Counter("trackgate_events_accepted", "events that passed validation")
EVENTS_REJECTED = Counter("trackgate_events_rejected", "events refused, by error kind", ["kind"])
EVENTS_STORED = Counter("trackgate_events_stored", "events written to Redis")
REQUESTS_REJECTED = Counter(
    "trackgate_requests_rejected", "requests refused as a whole, by reason", ["reason"]
)
FLUSH_EVENTS = Histogram(
    "trackgate_flush_events",
    "events per flush (one write of a worker's pending events: a command per partition)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
)
_WRITE_SECONDS: Final = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
FLUSH_SECONDS = Histogram(
    "trackgate_flush_seconds",
    "time from sending a flush to Redis to its last reply, retries included",
    buckets=_WRITE_SECONDS,
)
QUEUE_EVENTS = Gauge(
    "trackgate_queue_events",
    "events accepted and not yet written, summed over workers",
    multiprocess_mode="livesum",
)
FLUSHES_IN_FLIGHT = Gauge(
    "trackgate_flushes_in_flight",
    "flushes sent to Redis and not yet answered, summed over workers (at most --pipeline-depth each)",
    multiprocess_mode="livesum",
)
REDIS_ERRORS = Counter("trackgate_redis_errors", "failed Redis operations, by kind", ["kind"])
EVENTS_OVERFLOWED = Counter(
    "trackgate_events_overflowed",
    "events stored but counted under $overflow: past their project's cap on event or funnel names",
)
PROFILE_PROPERTIES_REFUSED = Counter(
    "trackgate_profile_properties_refused",
    "new profile properties left out: their profile held the most properties a profile may hold",
)
EVENTS_DEDUPLICATED = Counter(
    "trackgate_events_deduplicated",
    "events sent again within --dedup-window of being stored: answered as stored, not stored again",
)
# Labelled by token: only projects an operator gave a limit are ever refused by one, so the label takes as
# many values as there are limited projects.
RATE_LIMITED_REQUESTS = Counter(
    "trackgate_rate_limited_requests", "requests refused (429) past their project's rate limit", ["token"]
)
RATE_LIMITED_EVENTS = Counter(
    "trackgate_rate_limited_events",
    "valid events and profile updates of requests refused past their project's rate limit",
    ["token"],
)
# On a Redis Cluster: per primary (host:port), so their number is the cluster's.
NODE_WRITE_SECONDS = Histogram(
    "trackgate_node_write_seconds",
    "seconds from a flush's first send to its last reply, per Redis Cluster primary written to",
    ["node"],
    buckets=_WRITE_SECONDS,
)
NODE_ERRORS = Counter(
    "trackgate_node_errors", "failed writes per Redis Cluster primary, by kind", ["node", "kind"]
)
REDIRECTS = Counter(
    "trackgate_redis_redirects",
    "write transactions a Redis Cluster node refused as not its own (MOVED, ASK, TRYAGAIN, CLUSTERDOWN)",
    ["kind"],
)
BATCHES_DEDUPLICATED = Counter(
    "trackgate_batches_deduplicated", "retried write commands that Redis had applied already"
)

# How often a worker adds its tally to the shared counters.
PUBLISH_SECONDS: Final = 0.25


class _Tally:
    """The per-request counts, kept as plain integers: a multi-process counter's increment takes a lock
    and writes a memory-mapped file, which per request cost more than the rest of the bookkeeping.
    `publish` adds them to the counters: every PUBLISH_SECONDS, before this worker renders a scrape,
    and when the worker stops."""

    __slots__ = ("accepted", "deduplicated", "in_flight", "pending", "rate_limited", "requests", "stored")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.rate_limited: dict[str, tuple[int, int]] = {}
        self.accepted = 0
        self.stored = 0
        self.deduplicated = 0
        self.pending = 0
        self.in_flight = 0

    def count_request(self, route: str, status: int) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def count_accepted(self, events: int) -> None:
        self.accepted += events

    def count_rate_limited(self, token: str, events: int) -> None:
        """A request of `events` refused past the project's rate limit."""
        requests, refused = self.rate_limited.get(token, (0, 0))
        self.rate_limited[token] = (requests + 1, refused + events)

    def count_stored(self, events: int, *, deduplicated: bool) -> None:
        """One write command answered: `events` are in Redis (`deduplicated`: they had been before)."""
        self.stored += events
        if deduplicated:
            self.deduplicated += 1

    def observe_flush(self, events: int, seconds: float) -> None:
        FLUSH_EVENTS.observe(events)
        FLUSH_SECONDS.observe(seconds)

    def queue(self, pending: int, in_flight: int) -> None:
        """The batcher's state: events not yet written, flushes sent and not answered."""
        self.pending = pending
        self.in_flight = in_flight

    def publish(self) -> None:
        requests, self.requests = self.requests, {}
        for (route, status), n in requests.items():
            REQUESTS.labels(route, str(status)).inc(n)
        rate_limited, self.rate_limited = self.rate_limited, {}
        for token, (requests_refused, events_refused) in rate_limited.items():
            RATE_LIMITED_REQUESTS.labels(token).inc(requests_refused)
            RATE_LIMITED_EVENTS.labels(token).inc(events_refused)
        accepted, self.accepted = self.accepted, 0
        if accepted:
            EVENTS_ACCEPTED.inc(accepted)
        stored, self.stored = self.stored, 0
        if stored:
            EVENTS_STORED.inc(stored)
        deduplicated, self.deduplicated = self.deduplicated, 0
        if deduplicated:
            BATCHES_DEDUPLICATED.inc(deduplicated)
        QUEUE_EVENTS.set(self.pending)
        FLUSHES_IN_FLIGHT.set(self.in_flight)


_tally = _Tally()
count_request = _tally.count_request
count_accepted = _tally.count_accepted
count_rate_limited = _tally.count_rate_limited
count_stored = _tally.count_stored
observe_flush = _tally.observe_flush
queue = _tally.queue
publish = _tally.publish


async def publish_forever() -> None:
    """A worker's task: its tally added to the shared counters every PUBLISH_SECONDS."""
    while True:
        await asyncio.sleep(PUBLISH_SECONDS)
        publish()


def render() -> bytes:
    publish()
    directory = metrics_dir()
    if directory is None:
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def worker_exited() -> None:
    """Drop this worker's live gauges, so that a stopped worker's queue depth is not summed forever."""
    directory = metrics_dir()
    if directory is not None:
        multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]
