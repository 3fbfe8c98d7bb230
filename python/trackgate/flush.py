"""A flush: the accepted events of many requests, gathered for one write to Redis, and its commands, one
transaction per partition, with a section per project.

Requests hand over the decoder's partition batches, already RESP-packed; a flush only joins them per
(partition, project). Python builds nothing per event.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from dataclasses import dataclass
from enum import StrEnum
from itertools import accumulate
from typing import Final

from trackgate._native import PartitionBatch

Key = int
"""A partition: one transaction per flush, whichever projects' events it holds (`keys.py`)."""

NO_FAILURES: Final[frozenset[Key]] = frozenset()


@dataclass(frozen=True, slots=True)
class Written:
    """What became of a request's events once its flush is finished: the keys whose write failed (empty
    when all its events are in Redis), and how many of its events were duplicates, sent before and
    stored within the dedup window: answered as stored, not stored or counted again. `redirected`: keys
    a Redis Cluster node refused as not its own (MOVED, ASK, TRYAGAIN, CLUSTERDOWN), so certainly not
    stored, which a cluster's batcher sends again where they belong (only a batcher that follows
    redirects is told of them; to any other they are failed)."""

    failed: frozenset[Key] = NO_FAILURES
    duplicates: int = 0
    redirected: frozenset[Key] = NO_FAILURES


ALL_STORED: Final = Written()


class Unavailable(StrEnum):
    """Why the batcher cannot take or keep a request's events: the gateway answers each with 503 and
    `Retry-After` (see `trackgate.gateway.refusals`), so clients keep their events and retry."""

    REDIS_UNAVAILABLE = "redis_unavailable"
    """No connection to Redis: the events were never sent."""
    OVERLOADED = "overloaded"
    """More events are waiting than `max_pending` allows."""
    STOPPING = "stopping"
    """The worker is closing and could not write them in time."""
    WRITE_FAILED = "write_failed"
    """An unexpected error while writing them: they may or may not be stored."""


class UnavailableError(Exception):
    """Redis cannot take the events now; the request is answered 503."""

    def __init__(self, reason: Unavailable) -> None:
        super().__init__(reason)
        self.reason = reason


class Section:
    """One project's part of a partition's transaction: the decoder's packed arguments and XADDs of its
    requests, in the order they came. `owners` says which request's entries come in which order: (its
    place in the flush's `waiters`, how many)."""

    __slots__ = ("args", "count", "owners", "packed", "token", "xadds")

    def __init__(self, batch: PartitionBatch, request: int) -> None:
        self.token = batch.token
        self.packed = [batch.packed]
        self.xadds = [batch.xadds]
        self.count = batch.count
        self.args = batch.args
        self.owners = [(request, batch.count)]

    def add(self, batch: PartitionBatch, request: int) -> None:
        self.packed.append(batch.packed)
        self.xadds.append(batch.xadds)
        self.count += batch.count
        self.args += batch.args
        self.owners.append((request, batch.count))


Parts = dict[Key, dict[str, Section]]
"""Per partition, a section per project, in the order the projects first came."""


def add_batch(parts: Parts, batch: PartitionBatch, request: int) -> None:
    """`batch`, of request `request`, joins its partition's section for its project."""
    sections = parts.get(batch.partition)
    if sections is None:
        parts[batch.partition] = {batch.token: Section(batch, request)}
        return
    section = sections.get(batch.token)
    if section is None:
        sections[batch.token] = Section(batch, request)
    else:
        section.add(batch, request)


class Flush:
    """Its requests wait on `waiters`, each for what became of its events (`Written`); `parts` holds, per
    partition, a section per project, in the order the projects first came."""

    __slots__ = (
        "deadline",
        "due",
        "duplicates",
        "events",
        "failed",
        "outstanding",
        "parts",
        "redirected",
        "started",
        "waiters",
    )

    def __init__(self) -> None:
        self.parts: Parts = {}
        self.events = 0
        self.waiters: list[asyncio.Future[Written]] = []
        self.duplicates: list[int] | None = None  # per request, once any is found
        self.due = False
        self.failed: set[Key] = set()
        self.redirected: set[Key] = set()
        self.outstanding = 0  # its commands not finished yet, once sent
        self.started = 0.0
        self.deadline = 0.0  # until when its commands are tried again

    def add(self, batches: list[PartitionBatch], count: int, waiter: asyncio.Future[Written]) -> None:
        """One request's batches, `count` events in all, answered through `waiter`."""
        parts = self.parts
        request = len(self.waiters)
        for batch in batches:
            add_batch(parts, batch, request)
        self.events += count
        self.waiters.append(waiter)

    def commands(self) -> list[Command]:
        """Its transactions, one per partition, as it is sent."""
        commands = [Command(self, key, list(sections.values())) for key, sections in self.parts.items()]
        self.outstanding = len(commands)
        return commands

    def found_duplicates(self, key: Key, entries: list[int]) -> None:
        """The function found these entries of `key`'s command (their places among its events and
        profile updates, all sections', from 0) to be duplicates: each is its request's."""
        owners = [owner for section in self.parts[key].values() for owner in section.owners]
        ends = list(accumulate(count for _, count in owners))
        duplicates = self.duplicates
        if duplicates is None:
            duplicates = self.duplicates = [0] * len(self.waiters)
        for entry in entries:
            duplicates[owners[bisect_right(ends, entry)][0]] += 1

    def answer(self) -> None:
        """Every command is finished: its requests get the keys that failed, and their duplicates."""
        failed = frozenset(self.failed) if self.failed else NO_FAILURES
        redirected = frozenset(self.redirected) if self.redirected else NO_FAILURES
        result = Written(failed, 0, redirected) if failed or redirected else ALL_STORED
        duplicates = self.duplicates
        for request, waiter in enumerate(self.waiters):
            if not waiter.done():
                found = duplicates[request] if duplicates is not None else 0
                waiter.set_result(Written(failed, found, redirected) if found else result)

    def fail(self, reason: Unavailable) -> None:
        """Its requests get UnavailableError(reason): they were never stored, or may not be."""
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(UnavailableError(reason))


class Command:
    """One partition's transaction of one flush, or its FCALL alone (`count_only`) once the events are
    stored. `seq` and `slot` (its entry in its partition's ring) are given when the transaction is first
    sent, new ones when it goes again unapplied; its FCALL alone keeps them. `reload`: the FCALL alone
    waits for a FUNCTION LOAD. `count`: its events and profile updates, all sections'."""

    __slots__ = (
        "count",
        "count_only",
        "flush",
        "key",
        "reload",
        "reloads",
        "sections",
        "seq",
        "slot",
    )

    def __init__(self, flush: Flush, key: Key, sections: list[Section]) -> None:
        self.flush = flush
        self.key = key
        self.sections = sections
        self.count = sum(section.count for section in sections)
        self.seq = 0
        self.slot = 0
        self.reloads = 0
        self.count_only = False
        self.reload = False
