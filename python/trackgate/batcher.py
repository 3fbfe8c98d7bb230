"""Group commit: one worker's accepted events, gathered from many requests, written to Redis in few
round trips.

Requests hand over the decoder's partition batches (already RESP-packed) and wait. Pending batches form
the *open flush*; it comes due when `max_events` are waiting or `linger` seconds after its first event,
and is then written as one command per (project, partition) -- `FCALL tg_write` with the packed events
appended unchanged -- all commands in one pipelined write, one reply read per command. Python does work
per request and per partition, never per event.

One flush is in flight at a time: the next one gathers meanwhile, so under load batches grow by
themselves, and a request waits for at most the write in flight plus its own. It is also what makes the
function's dedupe (a high-water mark of sequence numbers per writer and partition) exact: when a reply
is lost, no later command for that partition has been sent, so a resent command is skipped only if it
was applied. Several flushes in flight would need a dedupe key per batch instead.

Failures: a command Redis refuses fails exactly the requests that had events in it. A lost connection is
reopened with backoff and the commands whose replies were not read are resent under their batch ids (the
function applies a batch id once), for `retry_window` seconds; then their requests fail. While Redis is
unreachable, new requests are refused at once, as they are when `max_pending` events are waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Final

import redis.exceptions
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from trackgate import metrics, store

log = logging.getLogger("trackgate.batcher")

Key = tuple[str, int]
"""A (project token, partition) pair: one stream, one command per flush."""

NO_FAILURES: Final[frozenset[Key]] = frozenset()
BACKOFF_MIN: Final = 0.05
BACKOFF_MAX: Final = 1.0
_LOST: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    asyncio.TimeoutError,
)


class UnavailableError(Exception):
    """Redis cannot take the events now; the request is answered 503."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Flush:
    __slots__ = ("args", "counts", "due", "events", "parts", "waiters")

    def __init__(self) -> None:
        self.parts: dict[Key, list[bytes]] = {}
        self.counts: dict[Key, int] = {}
        self.args: dict[Key, int] = {}
        self.events = 0
        self.waiters: list[asyncio.Future[frozenset[Key]]] = []
        self.due = False


class _Command:
    __slots__ = ("count", "key", "parts")

    def __init__(self, key: Key, count: int, parts: list[bytes]) -> None:
        self.key = key
        self.count = count
        self.parts = parts


class Batcher:
    def __init__(
        self,
        redis_url: str,
        *,
        max_events: int,
        linger: float,
        max_pending: int,
        timeout: float,
        retry_window: float,
        stream_maxlen: int,
        stream_max_age: float,
        funnel_window: Callable[[str], int],
    ) -> None:
        self._pool = ConnectionPool.from_url(
            redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=min(timeout, 1.0),
            # Retrying is this module's job: redis-py must not retry, nor reconnect, on its own.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._max_events = max_events
        self._linger = linger
        self._max_pending = max_pending
        self._retry_window = retry_window
        self._timeout = timeout
        self._headers = store.WriteCommands(stream_maxlen, stream_max_age)
        self._funnel_window = funnel_window
        # One writer per worker lifetime; its sequence numbers make batch ids that Redis dedupes.
        self._writer = secrets.token_hex(8).encode()
        self._seq = 0
        self._open = _Flush()
        self._inflight: _Flush | None = None
        self._pending = 0
        self._conn: AbstractConnection | None = None
        self._healthy = False
        self._closing = False
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()

    @property
    def ready(self) -> bool:
        return self._healthy and not self._closing

    async def start(self) -> None:
        """Connect (a failure is not fatal: the gateway answers 503 and keeps trying) and start writing."""
        with contextlib.suppress(*_LOST):
            await self._connection()
        if not self._healthy:
            log.warning("Redis is not reachable yet; answering 503 until it is")
        self._task = asyncio.create_task(self._run(), name="trackgate-batcher")

    def submit(
        self, batches: list[tuple[str, int, int, int, bytes]], count: int
    ) -> asyncio.Future[frozenset[Key]]:
        """Queue a request's partition batches; the future gives the keys whose write failed (empty when
        all are in Redis). Raises UnavailableError when the events cannot be queued."""
        if not self._healthy or self._closing:
            raise UnavailableError("stopping" if self._closing else "redis_unavailable")
        if self._pending + count > self._max_pending:
            raise UnavailableError("overloaded")
        flush = self._open
        if not flush.events:
            if self._linger > 0:
                self._loop.call_later(self._linger, self._come_due, flush)
            else:
                flush.due = True
                self._kick.set()
        parts, counts, args = flush.parts, flush.counts, flush.args
        for token, partition, n, n_args, packed in batches:
            key = (token, partition)
            chunks = parts.get(key)
            if chunks is None:
                parts[key] = [packed]
                counts[key] = n
                args[key] = n_args
            else:
                chunks.append(packed)
                counts[key] += n
                args[key] += n_args
        flush.events += count
        self._pending += count
        waiter: asyncio.Future[frozenset[Key]] = self._loop.create_future()
        flush.waiters.append(waiter)
        if flush.events >= self._max_events and not flush.due:
            flush.due = True
            self._kick.set()
        return waiter

    def _come_due(self, flush: _Flush) -> None:
        if not flush.due:
            flush.due = True
            self._kick.set()

    async def close(self) -> None:
        """Write everything queued, then disconnect. Requests arriving meanwhile get 503."""
        # Time for the write in flight and the last flush, each with its retries.
        timeout = 2 * (self._timeout + self._retry_window) + 1
        self._closing = True
        self._open.due = self._open.due or bool(self._open.events)
        self._kick.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.error("gave up writing %d queued events after %g s", self._pending, timeout)
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
                for flush in (self._inflight, self._open):
                    if flush is not None:
                        self._fail(flush, "stopping")
        await self._disconnect()
        await self._pool.aclose()

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            flush = self._open
            if self._closing and not flush.events:
                return
            if flush.due:
                self._open, self._inflight = _Flush(), flush
                try:
                    await self._write(flush)
                except Exception:
                    # A bug, not a Redis error: fail these requests, keep serving the next ones.
                    log.exception("writing a batch failed")
                    self._fail(flush, "write_failed")
                self._inflight = None
                continue
            if self._healthy:
                await self._kick.wait()
                self._kick.clear()
                continue
            # Redis is away and nothing is due: try again, waking early should a flush come due.
            with contextlib.suppress(*_LOST):
                await self._connection()
                log.warning("Redis is reachable again")
                backoff = BACKOFF_MIN
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), backoff)
            self._kick.clear()
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _connection(self) -> AbstractConnection:
        if self._conn is None:
            conn = self._pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.connect()
            except BaseException:
                await conn.disconnect(nowait=True)
                raise
            self._conn = conn
            self._healthy = True
        return self._conn

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        self._healthy = False
        if conn is not None:
            await conn.disconnect(nowait=True)

    def _commands(self, flush: _Flush) -> list[_Command]:
        commands = []
        for key, chunks in flush.parts.items():
            self._seq += 1
            count = flush.counts[key]
            token, partition = key
            batch_id = b"%s:%d" % (self._writer, self._seq)
            window = self._funnel_window(token)
            header = self._headers.header(token, partition, window, batch_id, flush.args[key])
            chunks.insert(0, header)
            commands.append(_Command(key, count, chunks))
        return commands

    async def _write(self, flush: _Flush) -> None:
        started = time.perf_counter()
        deadline = self._loop.time() + self._retry_window
        todo = self._commands(flush)
        failed: set[Key] = set()
        stored = 0
        backoff = BACKOFF_MIN
        while todo:
            resend: list[_Command] = []
            sent, todo, index = todo, [], 0
            try:
                conn = await self._connection()
                await conn.send_packed_command(
                    b"".join([p for c in sent for p in c.parts]), check_health=False
                )
                for index, command in enumerate(sent):  # noqa: B007 -- `index` tells how far replies came
                    try:
                        reply = await conn.read_response()
                    except redis.exceptions.ResponseError as err:
                        if store.is_missing_function(err):
                            resend.append(command)
                        else:
                            failed.add(command.key)
                            metrics.REDIS_ERRORS.labels("command").inc()
                            log.error(
                                "Redis refused a write of %d events to %s: %s",
                                command.count,
                                store.stream_key(*command.key),
                                err,
                            )
                        continue
                    stored += command.count
                    metrics.BATCH_EVENTS.observe(command.count)
                    if reply == 0:
                        metrics.BATCHES_DEDUPLICATED.inc()
                else:
                    index = len(sent)
                if resend:
                    # Redis lost the library (restarted without persistence): load it, send again. Not
                    # REPLACE: another worker may have loaded it meanwhile, maybe a newer version.
                    await conn.send_command("FUNCTION", "LOAD", store.FUNCTION_SOURCE)
                    try:
                        await conn.read_response()
                        log.warning("loaded the trackgate function library again")
                    except redis.exceptions.ResponseError as err:
                        if "already exists" not in str(err):
                            raise
                    todo = resend
            except _LOST as err:
                # Replies of sent[index:] never arrived: those commands may or may not have been applied,
                # and their batch ids make resending them safe.
                todo = resend + sent[index:]
                if self._healthy:
                    log.error("Redis connection lost: %s", err)
                metrics.REDIS_ERRORS.labels("connection").inc()
                await self._disconnect()
            except redis.exceptions.ResponseError as err:
                log.error("Redis refused to load the function library: %s", err)
                metrics.REDIS_ERRORS.labels("function_load").inc()
                failed.update(c.key for c in resend)
                todo = []
            if todo:
                if self._loop.time() + backoff > deadline:
                    failed.update(c.key for c in todo)
                    log.error(
                        "gave up on %d events after %g s of Redis errors",
                        sum(c.count for c in todo),
                        self._retry_window,
                    )
                    break
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        self._pending -= flush.events
        flush.events = 0
        metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)
        metrics.EVENTS_STORED.inc(stored)
        metrics.QUEUE_EVENTS.set(self._pending)
        result = frozenset(failed) if failed else NO_FAILURES
        for waiter in flush.waiters:
            if not waiter.done():
                waiter.set_result(result)

    def _fail(self, flush: _Flush, reason: str) -> None:
        self._pending -= flush.events
        flush.events = 0
        metrics.QUEUE_EVENTS.set(self._pending)
        for waiter in flush.waiters:
            if not waiter.done():
                waiter.set_exception(UnavailableError(reason))
