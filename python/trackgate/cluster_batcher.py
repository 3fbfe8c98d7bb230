"""The batcher on a Redis Cluster: one `Batcher` per primary, each with its own pipelined connection, its
own writer id and marks, so that the exactly-once rules of one Redis (`batcher.py`, `store.py`) hold per
primary unchanged; this module only routes.

A request's partition batches go to the primary serving their slot (every key of a partition shares its
hash tag, so one slot; computed once per partition). The slot map is read at start (`CLUSTER SLOTS`,
from any node that answers), and again when a write is redirected, and whenever a primary's connection
is made again (a failover, a restart, a new node).

A primary's batcher is bound to a slot it served when it was made, not to an address: when its
connection is lost it connects to whichever node serves that slot now. After a failover that is the
promoted replica, which holds the marks the old primary replicated, so the batcher settles its unanswered
transactions there as it would after any lost connection: applied ones are answered as stored, the
others sent again. A mark that moved away with its slot (a reshard) is read where it is now.

A transaction a node refuses as not its own (MOVED, ASK, TRYAGAIN, CLUSTERDOWN: refused when queued,
so not applied at all) is reported back as redirected; its request's batches for those partitions are
routed again, after the slot map is read again, within the retry window.

A primary that cannot be reached fails only the requests with events for its slots (503); the others
are written as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final

from trackgate._native import PartitionBatch
from trackgate.batcher import Batcher, Connect, Key, Unavailable, UnavailableError, Written
from trackgate.cluster_slots import SlotMap, partition_slot, read_slot_map
from trackgate.flush import ALL_STORED
from trackgate.pipeline import Clock
from trackgate.redis_pipe import Connection, OnLost, OnReply, RedisPipe
from trackgate.redis_target import Address, Cluster

log = logging.getLogger("trackgate.cluster")

MakeBatcher = Callable[[Connect], Batcher]
"""Makes one primary's batcher around the connection it is given (the settings' batcher, following
redirects)."""
ReadMarks = Callable[[list[bytes]], Awaitable[list[Any]]]
ReadSlotMap = Callable[[Cluster, tuple[Address, ...], float], Awaitable[SlotMap]]
"""Reads the slot map from the first of the addresses that answers (`cluster_slots.read_slot_map`)."""

REFRESH_MIN_SECONDS: Final = 0.1
"""A slot map read begun less than this long ago is recent enough for a refused request: an outage
refusing thousands a second reads it ten times a second, not for each."""
NODE_TIMEOUT: Final = 0.5
"""Seconds one node may take to give the slot map before the next is asked."""
RESEND_PAUSE: Final = 0.02
"""Before a redirected batch goes again: a slot being migrated, or a failover, takes a moment."""


def _keys(batches: list[PartitionBatch]) -> set[Key]:
    return {batch.partition for batch in batches}


class _Shard:
    """One primary's batcher; `slot`: one it served when it was made, where it connects after a lost
    connection; `address`: where it is connected (or last was)."""

    __slots__ = ("address", "batcher", "connected", "slot")

    def __init__(self, slot: int, address: Address) -> None:
        self.slot = slot
        self.address = address
        self.connected = False
        self.batcher: Batcher


class _Request:
    """One request's events while its batches are written, maybe on several primaries, maybe again."""

    __slots__ = ("again", "answered", "deadline", "duplicates", "error", "failed", "future", "waiting")

    def __init__(self, future: asyncio.Future[Written], deadline: float) -> None:
        self.future = future
        self.deadline = deadline
        self.waiting = 0
        self.failed: set[Key] = set()
        self.duplicates = 0
        self.again: list[PartitionBatch] = []
        self.error: UnavailableError | None = None
        self.answered = 0  # batches of it a primary's batcher answered (not failed whole)


class ClusterBatcher:
    """The `Sink` of a worker on a Redis Cluster (see the module's docstring)."""

    def __init__(
        self,
        target: Cluster,
        make_batcher: MakeBatcher,
        *,
        retry_window: float,
        read_marks: ReadMarks | None = None,
        read_map: ReadSlotMap = read_slot_map,
        clock: Clock | None = None,
    ) -> None:
        self._target = target
        self._read_slot_map = read_map
        self._make_batcher = make_batcher
        self._retry_window = retry_window
        self._read_marks = read_marks
        self._loop = asyncio.get_running_loop()
        self._clock: Clock = clock if clock is not None else self._loop
        self._map: SlotMap | None = None
        self._read_started = -math.inf
        self._refresh_task: asyncio.Task[None] | None = None
        self._shards: list[_Shard] = []
        self._by_address: dict[Address, _Shard] = {}
        self._slots: dict[Key, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # Lifecycle and health

    async def start(self) -> None:
        """Read the slot map and connect to every primary; a cluster not reachable yet is not fatal (503
        until it is)."""
        try:
            await self.refresh()
        except ConnectionError as err:
            log.warning("Redis Cluster not reachable yet (%s); answering 503 until it is", err)
            return
        assert self._map is not None
        for address, slot in sorted(self._map.first_slots().items()):
            self._add_shard(slot, address)

    async def close(self) -> None:
        self._closing = True
        await asyncio.gather(*(shard.batcher.close() for shard in self._shards))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def not_ready_reason(self) -> str | None:
        """None when every primary takes writes; else which do not, and why."""
        if self._closing:
            return "the worker is stopping"
        if self._map is None:
            return "no node of the Redis Cluster answered"
        reasons = []
        if self._map.uncovered:
            reasons.append(f"{self._map.uncovered} slots have no primary")
        for shard in self._shards:
            why = shard.batcher.not_ready_reason
            if why is not None:
                reasons.append(f"primary {shard.batcher.node or _name(shard.address)}: {why}")
        return "; ".join(reasons) if reasons else None

    @property
    def primaries(self) -> dict[str, str | None]:
        """Each primary written to (`host:port`), and why it does not take writes (None: it does)."""
        return {_name(address): shard.batcher.not_ready_reason for address, shard in self._by_address.items()}

    # The slot map

    async def refresh(self, since: float = -math.inf) -> None:
        """Read the slot map again, unless a read begun at `since` or later has succeeded or is under way:
        its callers share one read at a time. Raises ConnectionError when no node answers."""
        while True:
            task = self._refresh_task
            if task is None or (task.done() and (_failed(task) or self._read_started < since)):
                self._read_started = self._clock.time()
                task = self._refresh_task = self._loop.create_task(self._read_map())
                await asyncio.shield(task)
                return
            if self._read_started >= since:
                await asyncio.shield(task)
                return
            # A read begun before `since`: wait for it, then read again.
            with contextlib.suppress(ConnectionError):
                await asyncio.shield(task)

    async def _read_map(self) -> None:
        known = self._map.nodes if self._map is not None else ()
        # The nodes the last map named first: the seeds may be long gone.
        addresses = tuple(dict.fromkeys((*known, *self._target.addresses)))
        slot_map = await self._read_slot_map(self._target, addresses, NODE_TIMEOUT)
        if self._map is None or slot_map.primaries != self._map.primaries:
            log.info("Redis Cluster primaries: %s", ", ".join(sorted(map(_name, slot_map.primaries))))
        self._map = slot_map

    async def _refresh_quietly(self, since: float | None = None) -> None:
        """Read the slot map again (one read begun up to REFRESH_MIN_SECONDS ago will do, unless `since`
        says when the map was found wrong); a failure is logged."""
        if since is None:
            since = self._clock.time() - REFRESH_MIN_SECONDS
        try:
            await self.refresh(since)
        except ConnectionError as err:
            log.warning("could not read the Redis Cluster's slot map: %s", err)

    # Routing

    def submit(self, batches: list[PartitionBatch], count: int) -> asyncio.Future[Written]:
        """As `Batcher.submit`: the future gives the partitions whose write failed, and the duplicates;
        raises UnavailableError when a primary that the events go to cannot take them now."""
        if self._closing:
            raise UnavailableError(Unavailable.STOPPING)
        groups = self._route(batches)
        counts = _counts(groups, count)
        for shard, events in counts.items():
            refusal = shard.batcher.refusal(events)
            if refusal is not None:
                if refusal is Unavailable.REDIS_UNAVAILABLE:
                    self._in_background(self._refresh_quietly())
                raise UnavailableError(refusal)
        request = _Request(self._loop.create_future(), self._clock.time() + self._retry_window)
        self._send(request, groups, counts)
        return request.future

    def _route(self, batches: list[PartitionBatch]) -> dict[_Shard, list[PartitionBatch]]:
        slot_map = self._map
        if slot_map is None:
            self._in_background(self._refresh_quietly())
            raise UnavailableError(Unavailable.REDIS_UNAVAILABLE)
        groups: dict[_Shard, list[PartitionBatch]] = {}
        slots = self._slots
        for batch in batches:
            key = batch.partition
            slot = slots.get(key)
            if slot is None:
                slot = slots[key] = partition_slot(key)
            address = slot_map.owner(slot)
            if address is None:
                self._in_background(self._refresh_quietly())
                raise UnavailableError(Unavailable.REDIS_UNAVAILABLE)
            shard = self._by_address.get(address) or self._add_shard(slot, address)
            group = groups.get(shard)
            if group is None:
                groups[shard] = [batch]
            else:
                group.append(batch)
        return groups

    def _send(
        self, request: _Request, groups: dict[_Shard, list[PartitionBatch]], counts: dict[_Shard, int]
    ) -> None:
        for shard, group in groups.items():
            try:
                future = shard.batcher.submit(group, counts[shard])
            except UnavailableError:
                request.failed |= _keys(group)
                continue
            request.waiting += 1
            future.add_done_callback(functools.partial(self._written, request, group))
        if not request.waiting:
            self._answer(request)

    def _written(
        self, request: _Request, group: list[PartitionBatch], future: asyncio.Future[Written]
    ) -> None:
        request.waiting -= 1
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            request.failed |= _keys(group)
            if isinstance(error, UnavailableError) and request.error is None:
                request.error = error
        else:
            written = future.result()
            request.answered += 1
            request.failed |= written.failed
            request.duplicates += written.duplicates
            if written.redirected:
                request.again += [b for b in group if b.partition in written.redirected]
        if not request.waiting:
            self._answer(request)

    def _answer(self, request: _Request) -> None:
        if request.again:
            if not self._closing and self._clock.time() < request.deadline:
                again, request.again = request.again, []
                self._in_background(self._route_again(request, again, self._clock.time()))
                return
            request.failed |= _keys(request.again)
            log.error(
                "gave up writing %d partition batches, redirected for %g s",
                len(request.again),
                self._retry_window,
            )
        future = request.future
        if future.done():
            return
        if request.error is not None and not request.answered:
            # Nothing of it was taken: the batcher's reason (stopping, Redis unavailable) says why.
            future.set_exception(request.error)
        elif request.failed:
            future.set_result(Written(frozenset(request.failed), request.duplicates))
        else:
            future.set_result(Written(duplicates=request.duplicates) if request.duplicates else ALL_STORED)

    async def _route_again(self, request: _Request, batches: list[PartitionBatch], since: float) -> None:
        await self._refresh_quietly(since)
        await self._pause(RESEND_PAUSE)
        try:
            groups = self._route(batches)
        except UnavailableError:
            request.failed |= _keys(batches)
            self._answer(request)
            return
        self._send(request, groups, _counts(groups, sum(batch.count for batch in batches)))

    async def _pause(self, seconds: float) -> None:
        done: asyncio.Future[None] = self._loop.create_future()
        timer = self._clock.call_later(seconds, done.set_result, None)
        try:
            await done
        finally:
            timer.cancel()

    def _in_background(self, work: Awaitable[None]) -> None:
        task = self._loop.create_task(_run(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # The primaries' batchers

    def _add_shard(self, slot: int, address: Address) -> _Shard:
        shard = _Shard(slot, address)
        shard.batcher = self._make_batcher(functools.partial(self._connect, shard))
        shard.batcher.node = _name(address)
        if self._read_marks is not None:
            shard.batcher.read_moved_marks = self._read_marks
        self._shards.append(shard)
        self._by_address[address] = shard
        self._in_background(shard.batcher.start())
        return shard

    async def _connect(self, shard: _Shard, on_reply: OnReply, on_lost: OnLost) -> Connection:
        """Connect a primary's batcher to whichever node serves its slot now."""
        if shard.connected:
            # A connection was lost: the primary may have changed.
            await self._refresh_quietly(self._clock.time())
        address = self._owner(shard)
        try:
            pipe = await RedisPipe.open(self._target.node_url(address), on_reply, on_lost)
        except Exception:
            await self._refresh_quietly(self._clock.time())
            moved = self._owner(shard)
            if moved == address:
                raise
            address = moved
            pipe = await RedisPipe.open(self._target.node_url(address), on_reply, on_lost)
        shard.connected = True
        if address != shard.address:
            log.warning("the primary of %s is now %s", _name(shard.address), _name(address))
            if self._by_address.get(shard.address) is shard:
                del self._by_address[shard.address]
            shard.address = address
            shard.batcher.node = _name(address)
            # Another batcher may write to that node already: it keeps the routing, this one finishes
            # what it holds.
            self._by_address.setdefault(address, shard)
        return pipe

    def _owner(self, shard: _Shard) -> Address:
        owner = self._map.owner(shard.slot) if self._map is not None else None
        return shard.address if owner is None else owner


def _counts(groups: dict[_Shard, list[PartitionBatch]], total: int) -> dict[_Shard, int]:
    """The events each primary's batcher is given: a request's `total` when they all go to one (the
    usual case: a request of one event, or of one user's)."""
    if len(groups) == 1:
        return dict.fromkeys(groups, total)
    return {shard: sum(batch.count for batch in group) for shard, group in groups.items()}


def _failed(task: asyncio.Task[None]) -> bool:
    return task.cancelled() or task.exception() is not None


async def _run(work: Awaitable[None]) -> None:
    try:
        await work
    except Exception:
        log.exception("Redis Cluster background work failed")


def _name(address: Address) -> str:
    return f"{address[0]}:{address[1]}"
