"""Group commit: one worker's accepted events, gathered from many requests, written to Redis in few
commands, several flushes in flight on one pipelined connection.

Requests hand over the decoder's partition batches (already RESP-packed) and wait. Pending batches form
the *open flush* (`flush.py`); it comes due when `max_events` are waiting or `linger` seconds after its
first event, and is then sent as one transaction per (project, partition) -- the decoder's XADDs and an
`FCALL tg_count` with its packed arguments, appended unchanged (`packing.py`, `store.py`) -- in one
write. Up to `depth` flushes are in flight at once: while Redis works through one, the next is already
on its way, so neither the worker nor Redis waits for the other, and under load the open flush grows by
itself while the pipe is full. A request is answered when every transaction of its flush has been
answered. Python builds nothing per event; per event it only passes over the XADD's two short replies.

Exactly once. A transaction records its seq in its partition's mark, a ring of the writer's last
batches there, and its FCALL sets the entry's counted byte (see `store.py`):
- a lost connection: the next connection first closes the lost one (CLIENT KILL ID), so that Redis runs
  nothing more of it, then reads the marks, which decide what each command whose reply was not read
  becomes (`recovery.py`): sent again whole under a new seq, its FCALL alone, or answered as stored;
- Redis lost the function library ("function not found": FUNCTION FLUSH, or a restart without
  persistence): a transaction stores its events but its FCALL fails; after a FUNCTION LOAD the FCALL
  goes again alone, under the batch's own seq and slot.

Failures: a transaction Redis refuses fails exactly the requests that had events in it (503); one whose
events are stored but whose counting failed otherwise is answered as stored, and logged. Resending is
tried for `retry_window` seconds from a flush's first send; then its requests fail. A connection that
answers nothing for `timeout` seconds while commands wait counts as lost. While Redis is unreachable new
requests are refused at once, as they are when `max_pending` events are waiting.

The connection (`connect`) and the clock every wait is timed by (`clock`) are the constructor's: Redis
and the event loop by default, a test's scripted connection and a clock it advances otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from trackgate import bounds, keys, store
from trackgate._native import PartitionBatch
from trackgate.durability import LOCAL, Durability
from trackgate.flush import Flush, Key, Unavailable, UnavailableError, Written
from trackgate.packing import LOAD_COMMAND, Packer, library_loaded
from trackgate.pipeline import Clock, Pipeline, is_redirect
from trackgate.redis_pipe import Connection, OnLost, OnReply, RedisPipe, ReplyError, pack

__all__ = ["Batcher", "Clock", "Connect", "Key", "Unavailable", "UnavailableError", "Written"]

log = logging.getLogger("trackgate.batcher")

BACKOFF_MIN: Final = 0.05
BACKOFF_MAX: Final = 1.0
# Events a flush needs to be sent while others are in flight (see Batcher._has_room): enough per
# transaction, over the default partitions, that a transaction's fixed cost to Redis is small beside its
# events'.
PIPELINE_MIN_EVENTS: Final = 100
_LOST: Final = (ConnectionError, OSError, TimeoutError)

Connect = Callable[[OnReply, OnLost], Awaitable[Connection]]
"""Opens a connection that hands its replies to `on_reply` and its loss to `on_lost`."""


class Batcher:
    def __init__(
        self,
        redis_url: str,
        *,
        max_events: int,
        linger: float,
        depth: int,
        max_pending: int,
        timeout: float,
        retry_window: float,
        stream_maxlen: int,
        stream_max_age: float,
        event_max_age: float,
        funnel_window: Callable[[str], int],
        caps: Callable[[str], bounds.Caps] = lambda token: bounds.DEFAULT_CAPS,
        counter_retention_days: int = bounds.DEFAULT_COUNTER_RETENTION_DAYS,
        dedup_window: int = store.DEFAULT_DEDUP_WINDOW,
        durability: Durability = LOCAL,
        connect: Connect | None = None,
        clock: Clock | None = None,
        follows_redirects: bool = False,
    ) -> None:
        self._max_events = max_events
        self._linger = linger
        self._depth = depth
        self._max_pending = max_pending
        self._retry_window = retry_window
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._clock: Clock = clock if clock is not None else self._loop
        self._open_connection: Connect = connect or (
            lambda on_reply, on_lost: RedisPipe.open(redis_url, on_reply, on_lost)
        )
        # One writer per worker lifetime; its sequence numbers make the batch ids the marks record.
        self._packer = Packer(
            store.WriteCommands(
                stream_maxlen, stream_max_age, event_max_age, counter_retention_days, dedup_window
            ),
            funnel_window,
            caps,
        )
        self._kick = asyncio.Event()
        self._pipeline = Pipeline(
            self._packer,
            self._clock,
            timeout=timeout,
            retry_window=retry_window,
            wake=self._kick.set,
            follows_redirects=follows_redirects,
            durability=durability,
        )
        self._open = Flush()
        self._closing = False
        # The last attempt to connect failed: new requests are refused until one succeeds. A connection
        # lost is not an outage yet: requests queue while the next one is made.
        self._unreachable = False
        self._task: asyncio.Task[None] | None = None
        # On a Redis Cluster: reads the marks that a node answered MOVED or ASK for (their slot moved).
        self.read_moved_marks: Callable[[list[bytes]], Awaitable[list[Any]]] | None = None

    @property
    def not_ready_reason(self) -> str | None:
        """Why the worker's writes cannot succeed now (stopping, no connection, recent writes refused or
        given up), or None when they can."""
        if self._closing:
            return "the worker is stopping"
        if self._pipeline.pipe is None:
            return "Redis is not reachable"
        failing = self._pipeline.failing()
        return None if failing is None else f"writes to Redis are failing: {failing}"

    @property
    def ready(self) -> bool:
        return self.not_ready_reason is None

    @property
    def primaries(self) -> dict[str, str | None]:
        """One Redis: no cluster primaries to list."""
        return {}

    @property
    def node(self) -> str | None:
        """The Redis Cluster primary written to (`host:port`), as /metrics and the log name it."""
        return self._pipeline.node

    @node.setter
    def node(self, node: str) -> None:
        self._pipeline.node = node

    async def start(self) -> None:
        """Connect (a failure is not fatal: the gateway answers 503 and keeps trying) and start writing."""
        try:
            await self._connect()
        except Exception as err:  # the writing task keeps trying
            self._unreachable = True
            reason = err or type(err).__name__
            log.warning("Redis is not reachable yet (%s); answering 503 until it is", reason)
        self._task = asyncio.create_task(self._run(), name="trackgate-batcher")

    def submit(self, batches: list[PartitionBatch], count: int) -> asyncio.Future[Written]:
        """Queue a request's partition batches; the future gives what became of them: the keys whose
        write failed (none when all are in Redis), and the duplicates found among its events. Raises
        UnavailableError when the events cannot be queued."""
        refusal = self.refusal(count)
        if refusal is not None:
            raise UnavailableError(refusal)
        pipeline = self._pipeline
        flush = self._open
        if not flush.events:
            if self._linger > 0:
                self._clock.call_later(self._linger, self._come_due, flush)
            else:
                flush.due = True
                self._kick.set()
        waiter: asyncio.Future[Written] = self._loop.create_future()
        flush.add(batches, count, waiter)
        pipeline.pending += count
        if flush.events >= self._max_events and not flush.due:
            flush.due = True
            self._kick.set()
        return waiter

    def refusal(self, count: int) -> Unavailable | None:
        """Why `submit` would refuse `count` events now, or None when it would take them."""
        if self._closing:
            return Unavailable.STOPPING
        if self._unreachable:
            return Unavailable.REDIS_UNAVAILABLE
        if self._pipeline.pending + count > self._max_pending:
            return Unavailable.OVERLOADED
        return None

    def _come_due(self, flush: Flush) -> None:
        if not flush.due:
            flush.due = True
            self._kick.set()

    async def close(self) -> None:
        """Write everything queued, then disconnect. Requests arriving meanwhile get 503."""
        # Time for the writes in flight and the last flush, each with its retries.
        timeout = 2 * (self._timeout + self._retry_window) + 1
        self._closing = True
        self._open.due = self._open.due or bool(self._open.events)
        self._kick.set()
        if self._task is not None:
            try:
                async with self._within(timeout):
                    await asyncio.shield(self._task)
            except TimeoutError:
                log.error("gave up writing %d queued events after %g s", self._pipeline.pending, timeout)
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
                self._pipeline.fail_everything(Unavailable.STOPPING, self._open)
        self._pipeline.disconnect()

    @contextlib.asynccontextmanager
    async def _within(self, seconds: float) -> AsyncIterator[None]:
        """asyncio.timeout(seconds), timed by the clock."""
        async with asyncio.timeout(None) as bound:
            timer = self._clock.call_later(seconds, bound.reschedule, -math.inf)
            try:
                yield
            finally:
                timer.cancel()

    async def _pause(self, seconds: float) -> None:
        """Until the writing task is kicked, or for `seconds`."""
        timer = self._clock.call_later(seconds, self._kick.set)
        try:
            await self._kick.wait()
        finally:
            timer.cancel()
        self._kick.clear()

    async def _sleep(self, seconds: float) -> None:
        """`seconds` of the clock, whatever kicks the writing task meanwhile: nothing can be written
        before the lost connection's commands are settled, so new requests are no reason to wake."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = self._clock.call_later(seconds, done.set_result, None)
        try:
            await done
        finally:
            timer.cancel()

    # The writing task

    async def _run(self) -> None:
        pipeline = self._pipeline
        backoff = BACKOFF_MIN
        while True:
            if self._closing and not self._open.events and not pipeline.flights:
                return
            if pipeline.pipe is None:
                pipeline.expire()
                try:
                    await self._connect()
                except Exception as err:  # refused, timed out, TLS, a bad URL: all the same here
                    if not self._unreachable:
                        self._unreachable = True
                        log.warning("Redis not reachable: %s", err or type(err).__name__)
                    self._fail_open_flush()
                    await self._pause(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                if self._unreachable:
                    log.warning("Redis is reachable again")
                self._unreachable = False
            if pipeline.unsettled:
                try:
                    await self._settle()
                except (*_LOST, ReplyError) as err:
                    # LOADING after a restart, say: try again after a pause that grows, not at once.
                    pipeline.lost(pipeline.pipe, err)
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
            # Connected and settled: the next failure starts from the shortest pause again.
            backoff = BACKOFF_MIN
            try:
                if pipeline.resend:
                    pipeline.send_resends()
                elif self._open.due and self._open.events and self._has_room():
                    flush, self._open = self._open, Flush()
                    pipeline.send_flush(flush)
                else:
                    await self._kick.wait()
                    self._kick.clear()
            except _LOST as err:
                # The write found the connection gone: what was sent on it goes again on the next one.
                pipeline.lost(pipeline.pipe, err)
            except Exception:
                # A bug, not a Redis error: fail what is waiting, keep serving the next requests.
                log.exception("writing a batch failed")
                pipeline.disconnect()
                pipeline.fail_everything(Unavailable.WRITE_FAILED, self._open)

    def _has_room(self) -> bool:
        """Whether the open flush may go now. With nothing in flight it always may; behind other flushes
        only with PIPELINE_MIN_EVENTS events, since a small flush queued behind another would arrive no
        sooner than if it waited for the reply, and costs Redis a transaction more."""
        flights = self._pipeline.flights
        return not flights or (flights < self._depth and self._open.events >= PIPELINE_MIN_EVENTS)

    async def _connect(self) -> None:
        pipeline = self._pipeline
        async with self._within(min(self._timeout, 1.0)):
            pipeline.pipe = await self._open_connection(pipeline.on_reply, pipeline.lost)

    async def _settle(self) -> None:
        """Find out which commands of a lost connection Redis applied, and queue the others again.

        The lost connection is closed first: until Redis reads its end, it may still run commands that
        connection holds, and one run after the marks are read would be applied twice. The library is
        loaded too (Redis may have restarted without it), so that the resent FCALLs find it."""
        pipeline = self._pipeline
        pipe = pipeline.pipe
        assert pipe is not None
        unsettled = sorted(pipeline.unsettled, key=lambda c: c.seq)
        lost = sorted({c.key for c in unsettled})
        commands = [LOAD_COMMAND]
        # After a restart of Redis the lost connection is gone with its process, and its id may name
        # another client of the new one.
        lost_client, lost_run_id = pipeline.lost_client, pipeline.lost_run_id
        restarted = lost_run_id is not None and lost_run_id != pipe.run_id
        kill = lost_client is not None and not restarted
        if kill:
            commands.append(pack("CLIENT", "KILL", "ID", str(lost_client)))
        writer = self._packer.writer
        commands += [pack("GET", keys.mark_key(partition, writer)) for partition in lost]
        async with self._within(self._timeout):
            replies = await pipe.call(commands)
        load, marks = replies[0], replies[-len(lost) :]
        library_loaded(load)
        if lost_client is None:
            log.error(
                "could not close the lost Redis connection (Redis did not give its id): a batch it still "
                "held may be stored twice; the Redis user needs +client|id and +client|kill"
            )
        elif kill and isinstance(replies[1], ReplyError):
            log.error(
                "could not close the lost Redis connection (%s): a batch it still held may be stored "
                "twice; the Redis user needs +client|kill",
                replies[1],
            )
        marks = await self._marks_moved_away(marks, [keys.mark_key(partition, writer) for partition in lost])
        for mark in marks:
            if isinstance(mark, ReplyError):
                raise mark
        rings = {key: store.ring_entries(ring) for key, ring in zip(lost, marks, strict=True)}
        pipeline.settled(unsettled, rings)

    async def _marks_moved_away(self, marks: list[Any], names: list[bytes]) -> list[Any]:
        """`marks`, with those a cluster node answered MOVED or ASK for read where their slot is now."""
        moved = [i for i, mark in enumerate(marks) if isinstance(mark, ReplyError) and is_redirect(mark)]
        if not moved or self.read_moved_marks is None:
            return marks
        async with self._within(self._timeout):
            found = await self.read_moved_marks([names[i] for i in moved])
        marks = list(marks)
        for i, mark in zip(moved, found, strict=True):
            marks[i] = mark
        return marks

    def _fail_open_flush(self) -> None:
        """Requests queued while the connection was being made again: never sent, so certainly not
        stored; they fail now rather than wait for the outage to end."""
        flush = self._open
        if not flush.events:
            return
        self._open = Flush()
        self._pipeline.fail_unsent(flush, Unavailable.REDIS_UNAVAILABLE)
