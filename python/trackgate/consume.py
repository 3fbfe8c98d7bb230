"""Reading what the gateway stores: every partition stream of a project (its events, and its profile
updates), through a Redis consumer group, each entry handed on before it is acknowledged.

Delivery is at least once. An entry is acknowledged (XACK) only after the handler returned for it, so a
consumer that dies between the two leaves it pending: when it starts again under the same name it reads
its own pending entries first, and any consumer of the group claims (XAUTOCLAIM) entries another left
pending for `claim_idle` seconds. A handler may thus see an entry twice; events carry `$insert_id` to
deduplicate on, as Mixpanel does. Several consumers of one group share the entries: Redis gives each new
entry to one of them.

Each stream is read by a command of its own, never one naming several streams: a stream's keys carry its
partition's hash tag, so the streams of a project live in different slots of a Redis Cluster, where a
command may name one slot's keys only.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Literal

import msgspec
from redis.exceptions import ResponseError

from trackgate import keys
from trackgate.redis_target import RedisClient

log = logging.getLogger("trackgate.consume")

Kind = Literal["event", "update"]
KINDS: Final[tuple[Kind, ...]] = ("event", "update")

_STREAM_OF: Final[dict[Kind, Callable[[str, int], str]]] = {
    "event": keys.stream_key,
    "update": keys.profile_updates_key,
}


class Entry(msgspec.Struct, frozen=True):
    """One stream entry: what it is (an event or a profile update), its partition, its stream id (its
    arrival time in ms, then a sequence number) and its JSON as stored."""

    kind: Kind
    partition: int
    id: str
    data: bytes

    def json_line(self) -> bytes:
        """The entry as one line of JSON: `{"kind", "partition", "id", "data"}`, `data` as stored."""
        head = b'{"kind":"%s","partition":%d,"id":"%s","data":' % (
            self.kind.encode(),
            self.partition,
            self.id.encode(),
        )
        return head + self.data + b"}\n"


Handler = Callable[[Entry], Awaitable[object] | object]
"""Called with each entry; the entry is acknowledged once it returns (once its awaitable is done)."""


class _Stream(msgspec.Struct):
    kind: Kind
    partition: int
    key: str
    claim_cursor: str = "0-0"
    own_pending: bool = True  # entries delivered to this consumer before it (re)started: read them first


class Consumer:
    """Reads the project's streams as `consumer` of `group`. `start` is where a group created now begins:
    "0" (everything the streams still hold) or "$" (what arrives from now on)."""

    def __init__(
        self,
        client: RedisClient,
        token: str,
        partitions: int,
        group: str,
        consumer: str,
        *,
        kinds: Sequence[Kind] = KINDS,
        start: str = "0",
        count: int = 500,
        claim_idle: float = 30.0,
        poll: float = 0.2,
    ) -> None:
        self._client = client
        self._group = group
        self._consumer = consumer
        self._start = start
        self._count = count
        self._claim_idle_ms = int(claim_idle * 1000)
        self._poll = poll
        self._streams = [
            _Stream(kind, p, _STREAM_OF[kind](token, p)) for kind in kinds for p in range(partitions)
        ]
        self._groups_made = False
        self.handed_on = 0
        self.trimmed = 0
        """Pending entries found trimmed from their stream before they could be handed on: lost to this
        group (the stream's `--stream-max-age` / `--stream-maxlen` passed them)."""

    async def run(
        self, handle: Handler, stop: asyncio.Event | None = None, flush: Callable[[], object] | None = None
    ) -> None:
        """Hand every entry on, acknowledging each after `handle` returned for it (and `flush`, if given,
        after a stream's batch of them), until `stop` is set."""
        while stop is None or not stop.is_set():
            if not await self.step(handle, flush):
                if stop is None:
                    await asyncio.sleep(self._poll)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self._poll)

    async def step(self, handle: Handler, flush: Callable[[], object] | None = None) -> int:
        """One pass over the streams: this consumer's own pending entries, entries idle elsewhere past
        `claim_idle`, then new ones; returns how many were handed on."""
        if not self._groups_made:
            await self._make_groups()
        handed = 0
        for stream in self._streams:
            entries = await self._next_entries(stream)
            if not entries:
                continue
            ids = []
            for entry_id, data in entries:
                entry = Entry(stream.kind, stream.partition, entry_id, data)
                result = handle(entry)
                if inspect.isawaitable(result):
                    await result
                ids.append(entry_id)
            if flush is not None:
                flush()
            await self._client.xack(stream.key, self._group, *ids)
            handed += len(ids)
        self.handed_on += handed
        return handed

    async def _make_groups(self) -> None:
        for stream in self._streams:
            try:
                await self._client.xgroup_create(stream.key, self._group, id=self._start, mkstream=True)
            except ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise
        self._groups_made = True

    async def _next_entries(self, stream: _Stream) -> list[tuple[str, bytes]]:
        if stream.own_pending:
            read = await self._read(stream, "0")
            if read:
                return read
            stream.own_pending = False
        claimed = await self._claim(stream)
        if claimed:
            return claimed
        return await self._read(stream, ">")

    async def _read(self, stream: _Stream, since: str) -> list[tuple[str, bytes]]:
        # The client returns bytes (no decode_responses): [[key, [[id, {field: value} or None], ...]]].
        reply: list[
            tuple[bytes, list[tuple[bytes, dict[bytes, bytes] | None]]]
        ] = await self._client.xreadgroup(self._group, self._consumer, {stream.key: since}, count=self._count)  # type: ignore[assignment]
        if not reply:
            return []
        [(_, entries)] = reply
        return _entries(entries)

    async def _claim(self, stream: _Stream) -> list[tuple[str, bytes]]:
        reply = await self._client.xautoclaim(
            stream.key,
            self._group,
            self._consumer,
            self._claim_idle_ms,
            start_id=stream.claim_cursor,
            count=self._count,
        )
        cursor, entries = reply[0], reply[1]
        deleted = reply[2] if len(reply) > 2 else []
        stream.claim_cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        if deleted:
            self.trimmed += len(deleted)
            log.warning(
                "%d entries pending in %s were trimmed before group %s could hand them on",
                len(deleted),
                stream.key,
                self._group,
            )
        return _entries(entries)


def _entries(entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> list[tuple[str, bytes]]:
    """(id, data) of each entry that still exists (XREADGROUP of pending ids gives None for an entry
    trimmed since it was delivered)."""
    return [(entry_id.decode(), fields[b"data"]) for entry_id, fields in entries if fields]
