"""Group commit: one worker's accepted events, gathered from many requests, written to Redis in few
commands, several flushes in flight on one pipelined connection.

Requests hand over the decoder's partition batches (already RESP-packed) and wait. Pending batches form
the *open flush*; it comes due when `max_events` are waiting or `linger` seconds after its first event,
and is then sent as one transaction per (project, partition) -- the decoder's XADDs and an `FCALL
tg_count` with its packed arguments, appended unchanged (see `store.py`) -- in one write. Up to `depth`
flushes are in flight at once: while Redis works through one, the next is already on its way, so
neither the worker nor Redis waits for the other, and under load the open flush grows by itself while
the pipe is full. A request is answered when every transaction of its flush has been answered. Python
builds nothing per event; per event it only passes over the XADD's two short replies.

Exactly once. A transaction records its seq (growing with every transaction sent) in its partition's
mark, a ring of the writer's last batches there, and its FCALL sets the entry's counted byte (see
`store.py`); so a transaction is applied exactly when its seq is in the ring, and counted when the byte is
set:
- a lost connection: the next connection first closes the lost one (CLIENT KILL ID), so that Redis runs
  nothing more of it, then reads the marks; of the commands whose replies were not read, a transaction
  not applied goes again, under a new seq, and one applied but not counted has its FCALL sent alone;
- Redis lost the function library ("function not found": FUNCTION FLUSH, or a restart without
  persistence): a transaction stores its events but its FCALL fails; after a FUNCTION LOAD the FCALL
  goes again alone, under the batch's own seq and slot.

Failures: a transaction Redis refuses fails exactly the requests that had events in it (503); one whose
events are stored but whose counting failed otherwise is answered as stored, and logged. Resending is
tried for `retry_window` seconds from a flush's first send; then its requests fail. A connection that
answers nothing for `timeout` seconds while commands wait counts as lost. While Redis is unreachable new
requests are refused at once, as they are when `max_pending` events are waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from trackgate import metrics, store
from trackgate._native import PartitionBatch
from trackgate.redis_pipe import RedisPipe, ReplyError, pack

log = logging.getLogger("trackgate.batcher")

Key = tuple[str, int]
"""A (project token, partition) pair: one stream, one transaction per flush."""

NO_FAILURES: Final[frozenset[Key]] = frozenset()
BACKOFF_MIN: Final = 0.05
BACKOFF_MAX: Final = 1.0
# Events a flush needs to be sent while others are in flight (see Batcher._has_room): over 4 partitions,
# ~25 events per transaction, whose fixed cost (about 10 µs of Redis CPU) is then a sixth of theirs.
PIPELINE_MIN_EVENTS: Final = 100
# A count refused this many times for a missing function library is given up: loading it is not working.
MAX_RELOADS: Final = 3
_LOST: Final = (ConnectionError, OSError, TimeoutError)


class UnavailableError(Exception):
    """Redis cannot take the events now; the request is answered 503."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Flush:
    __slots__ = (
        "args",
        "counts",
        "deadline",
        "due",
        "events",
        "failed",
        "outstanding",
        "parts",
        "started",
        "waiters",
        "xadds",
    )

    def __init__(self) -> None:
        self.parts: dict[Key, list[bytes]] = {}
        self.xadds: dict[Key, list[bytes]] = {}
        self.counts: dict[Key, int] = {}
        self.args: dict[Key, int] = {}
        self.events = 0
        self.waiters: list[asyncio.Future[frozenset[Key]]] = []
        self.due = False
        self.failed: set[Key] = set()
        self.outstanding = 0
        self.started = 0.0
        self.deadline = 0.0

    def fail(self, reason: str) -> None:
        """Its requests get UnavailableError(reason): they were never stored, or may not be."""
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(UnavailableError(reason))


class _Command:
    """One partition's transaction of one flush, or its FCALL alone (`count_only`) once the events are
    stored. `seq` and `slot` (its entry in its partition's ring) are given when the transaction is first
    sent, new ones when it goes again unapplied; its FCALL alone keeps them. `reload`: the FCALL alone
    waits for a FUNCTION LOAD."""

    __slots__ = (
        "body",
        "count",
        "count_only",
        "flush",
        "key",
        "n_args",
        "reload",
        "reloads",
        "seq",
        "slot",
        "xadds",
    )

    def __init__(
        self, flush: _Flush, key: Key, count: int, n_args: int, body: list[bytes], xadds: list[bytes]
    ) -> None:
        self.flush = flush
        self.key = key
        self.count = count
        self.n_args = n_args
        self.body = body
        self.xadds = xadds
        self.seq = 0
        self.slot = 0
        self.reloads = 0
        self.count_only = False
        self.reload = False


class _LoadLibrary:
    """FUNCTION LOAD sent ahead of the commands Redis refused for want of the library."""

    __slots__ = ()


_LOAD: Final = _LoadLibrary()
_LOAD_COMMAND: Final = pack("FUNCTION", "LOAD", store.FUNCTION_SOURCE)


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
    ) -> None:
        self._url = redis_url
        self._max_events = max_events
        self._linger = linger
        self._depth = depth
        self._max_pending = max_pending
        self._retry_window = retry_window
        self._timeout = timeout
        self._headers = store.WriteCommands(stream_maxlen, stream_max_age, event_max_age)
        self._funnel_window = funnel_window
        # One writer per worker lifetime; its sequence numbers make the batch ids the marks record.
        self._writer = secrets.token_hex(8).encode()
        self._seq = 0
        self._slots: dict[Key, int] = {}  # per partition: the ring slot of its next transaction
        self._open = _Flush()
        self._flights = 0  # flushes sent and not yet finished (answered, or failed)
        self._sent: deque[_Command | _LoadLibrary] = deque()  # replies awaited, in send order
        self._resend: list[_Command] = []
        # Commands of a lost connection that Redis may have applied, and that connection's id and the
        # Redis process it was in.
        self._unsettled: list[_Command] = []
        self._lost_client: int | None = None
        self._lost_run_id: bytes | None = None
        self._pending = 0
        self._pipe: RedisPipe | None = None
        self._progress = 0.0  # when the pipe last answered, or was first waited on
        self._watchdog: asyncio.TimerHandle | None = None
        self._closing = False
        # The last attempt to connect failed: new requests are refused until one succeeds. A connection
        # lost is not an outage yet: requests queue while the next one is made.
        self._unreachable = False
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()

    @property
    def ready(self) -> bool:
        return self._pipe is not None and not self._closing

    async def start(self) -> None:
        """Connect (a failure is not fatal: the gateway answers 503 and keeps trying) and start writing."""
        try:
            await self._connect()
        except Exception as err:  # the writing task keeps trying
            self._unreachable = True
            reason = err or type(err).__name__
            log.warning("Redis is not reachable yet (%s); answering 503 until it is", reason)
        self._task = asyncio.create_task(self._run(), name="trackgate-batcher")

    def submit(self, batches: list[PartitionBatch], count: int) -> asyncio.Future[frozenset[Key]]:
        """Queue a request's partition batches; the future gives the keys whose write failed (empty when
        all are in Redis). Raises UnavailableError when the events cannot be queued."""
        if self._unreachable or self._closing:
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
        parts, xadds, counts, args = flush.parts, flush.xadds, flush.counts, flush.args
        for batch in batches:
            key = (batch.token, batch.partition)
            chunks = parts.get(key)
            if chunks is None:
                parts[key] = [batch.packed]
                xadds[key] = [batch.xadds]
                counts[key] = batch.count
                args[key] = batch.args
            else:
                chunks.append(batch.packed)
                xadds[key].append(batch.xadds)
                counts[key] += batch.count
                args[key] += batch.args
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
        # Time for the writes in flight and the last flush, each with its retries.
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
                self._fail_everything("stopping")
        self._disconnect()

    # The writing task

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            if self._closing and not self._open.events and not self._flights:
                return
            if self._pipe is None:
                self._expire_resends()
                try:
                    await self._connect()
                except Exception as err:  # refused, timed out, TLS, a bad URL: all the same here
                    if not self._unreachable:
                        self._unreachable = True
                        log.warning("Redis not reachable: %s", err or type(err).__name__)
                    self._fail_open_flush()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._kick.wait(), backoff)
                    self._kick.clear()
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                if self._unreachable:
                    log.warning("Redis is reachable again")
                self._unreachable = False
                backoff = BACKOFF_MIN
            if self._unsettled:
                try:
                    await self._settle()
                except (*_LOST, ReplyError) as err:
                    # LOADING after a restart, say: try again, not at once.
                    self._lost(self._pipe, err)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._kick.wait(), backoff)
                    self._kick.clear()
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
            try:
                if self._resend:
                    self._send_resends()
                elif self._open.due and self._open.events and self._has_room():
                    self._send_flush()
                else:
                    await self._kick.wait()
                    self._kick.clear()
            except _LOST as err:
                # The write found the connection gone: what was sent on it goes again on the next one.
                self._lost(self._pipe, err)
            except Exception:
                # A bug, not a Redis error: fail what is waiting, keep serving the next requests.
                log.exception("writing a batch failed")
                self._disconnect()
                self._fail_everything("write_failed")

    def _has_room(self) -> bool:
        """Whether the open flush may go now. With nothing in flight it always may; behind other flushes
        only with PIPELINE_MIN_EVENTS events, since a small flush queued behind another would arrive no
        sooner than if it waited for the reply, and costs Redis a transaction more."""
        return not self._flights or (self._flights < self._depth and self._open.events >= PIPELINE_MIN_EVENTS)

    async def _connect(self) -> None:
        async with asyncio.timeout(min(self._timeout, 1.0)):
            self._pipe = await RedisPipe.open(self._url, self._on_reply, self._lost)

    async def _settle(self) -> None:
        """Find out which commands of a lost connection Redis applied, and queue the others again.

        The lost connection is closed first: until Redis reads its end, it may still run commands that
        connection holds, and one run after the marks are read would be applied twice. The library is
        loaded too (Redis may have restarted without it), so that the resent FCALLs find it."""
        pipe = self._pipe
        assert pipe is not None
        unsettled = sorted(self._unsettled, key=lambda c: c.seq)
        keys = sorted({c.key for c in unsettled})
        commands = [_LOAD_COMMAND]
        # After a restart of Redis the lost connection is gone with its process, and its id may name
        # another client of the new one.
        restarted = self._lost_run_id is not None and self._lost_run_id != pipe.run_id
        kill = self._lost_client is not None and not restarted
        if kill:
            commands.append(pack("CLIENT", "KILL", "ID", str(self._lost_client)))
        commands += [pack("GET", store.mark_key(token, partition, self._writer)) for token, partition in keys]
        async with asyncio.timeout(self._timeout):
            replies = await pipe.call(commands)
        load, marks = replies[0], replies[-len(keys) :]
        if isinstance(load, ReplyError) and "already exists" not in str(load):
            log.error("Redis refused to load the function library: %s", load)
            metrics.REDIS_ERRORS.labels("function_load").inc()
        if self._lost_client is None:
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
        for mark in marks:
            if isinstance(mark, ReplyError):
                raise mark
        rings = {key: store.ring_entries(ring) for key, ring in zip(keys, marks, strict=True)}
        self._unsettled, self._lost_client, self._lost_run_id = [], None, None
        for command in unsettled:
            counted = rings[command.key].get(command.seq)  # None: not applied
            if command.count_only:
                # Its events were stored before; only its counting is in question.
                if counted is None:
                    # Whether it ran cannot be known, and its slot may be another batch's by now.
                    self._count_given_up(command, "its batch has left the partition's ring")
                elif counted:
                    self._finish(command)
                else:
                    self._resend.append(command)
            elif counted is None:
                # Not applied, and the closed connection cannot apply it now: the whole transaction
                # again, as a new one.
                self._number(command)
                self._resend.append(command)
            elif not counted:
                metrics.count_stored(command.count, deduplicated=True)
                command.count_only = True  # its events are in; its FCALL failed
                self._resend.append(command)
            else:
                metrics.count_stored(command.count, deduplicated=True)
                self._finish(command)

    def _number(self, command: _Command) -> None:
        """A transaction's seq, and its slot in its partition's ring."""
        self._seq += 1
        command.seq = self._seq
        slot = self._slots.get(command.key, 0)
        command.slot = slot
        self._slots[command.key] = (slot + 1) % store.RING_SLOTS

    def _disconnect(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _send_flush(self) -> None:
        flush, self._open = self._open, _Flush()
        flush.started = time.perf_counter()
        flush.deadline = self._loop.time() + self._retry_window
        self._flights += 1
        commands = []
        for key, chunks in flush.parts.items():
            commands.append(
                _Command(flush, key, flush.counts[key], flush.args[key], chunks, flush.xadds[key])
            )
        flush.outstanding = len(commands)
        metrics.queue(self._pending, self._flights)
        self._write(commands)

    def _send_resends(self) -> None:
        """Commands of a lost connection go first, in their order; FCALLs refused for a missing library
        follow a FUNCTION LOAD."""
        resend, self._resend = self._resend, []
        kept = sorted((c for c in resend if not c.reload), key=lambda c: c.seq)
        reload = [c for c in resend if c.reload]
        for command in reload:
            command.reload = False
        self._write(kept, reload)

    def _write(self, commands: list[_Command], after_load: list[_Command] | None = None) -> None:
        pipe = self._pipe
        assert pipe is not None
        out: list[bytes] = []
        skips = [self._pack(command, out) for command in commands]
        if after_load:
            out.append(_LOAD_COMMAND)
            skips.append(0)
            skips.extend(self._pack(command, out) for command in after_load)
        sent = self._sent
        if not sent:
            self._progress = self._loop.time()
            self._arm_watchdog()
        sent.extend(commands)
        if after_load:
            sent.append(_LOAD)
            sent.extend(after_load)
        pipe.write(b"".join(out), skips)

    def _pack(self, command: _Command, out: list[bytes]) -> int:
        """Append the command; returns how many of its replies come before the one that answers it."""
        if not command.seq:
            self._number(command)
        token, partition = command.key
        window = self._funnel_window(token)
        if command.count_only:
            batch_id = store.batch_id(self._writer, command.seq, command.slot)
            out.append(self._headers.header(token, partition, window, batch_id, command.n_args))
            out.extend(command.body)
            return 0
        self._headers.transaction(
            out,
            token,
            partition,
            window,
            self._writer,
            command.seq,
            command.slot,
            command.n_args,
            command.body,
            command.xadds,
        )
        return store.transaction_replies(command.count)

    # Replies, in send order (called by the pipe, never awaiting)

    def _on_reply(self, reply: Any) -> None:
        self._progress = self._loop.time()
        item = self._sent[0]
        if item is _LOAD:
            self._sent.popleft()
            if isinstance(reply, ReplyError) and "already exists" not in str(reply):
                log.error("Redis refused to load the function library: %s", reply)
                metrics.REDIS_ERRORS.labels("function_load").inc()
            else:
                log.warning("loaded the trackgate function library again")
            return
        assert isinstance(item, _Command)
        self._sent.popleft()
        if item.count_only:
            self._counted(item, reply)
        elif isinstance(reply, ReplyError) or reply is None:
            # EXECABORT: a command was refused when queued; the pipe kept why.
            pipe = self._pipe
            passed = pipe.passed_error if pipe is not None else None
            if pipe is not None:
                pipe.passed_error = None
            self._refused(item, reply if passed is None else ReplyError(f"{reply} ({passed})"))
        else:
            # EXEC's replies: the mark's, one per XADD, the FCALL's. Their types are looked at in C (map,
            # set), not by a Python loop over the events; the XADDs' are read one by one only on an error.
            added = reply[store.MARK_REPLIES : -1]
            if ReplyError in set(map(type, added)):
                failed = [r for r in added if isinstance(r, ReplyError)]
                self._refused(item, failed[0], stored=item.count - len(failed))
            else:
                metrics.count_stored(item.count, deduplicated=False)
                if isinstance(reply[-1], ReplyError):
                    self._count_failed(item, reply[-1])
                    return
        self._finish(item)

    def _counted(self, item: _Command, reply: Any) -> None:
        """The reply to a FCALL sent alone, for a batch whose events are stored."""
        if isinstance(reply, ReplyError):
            self._count_failed(item, reply)
            return
        self._finish(item)

    def _count_failed(self, item: _Command, err: ReplyError) -> None:
        item.count_only = True
        if store.is_missing_function(err) and item.reloads < MAX_RELOADS:
            item.reloads += 1
            item.reload = True
            self._resend.append(item)
            self._kick.set()
            return
        self._count_given_up(item, f"Redis refused to count them: {err}")

    def _count_given_up(self, command: _Command, why: str) -> None:
        """Its events are stored, and answered as such; its counting is not tried again."""
        metrics.REDIS_ERRORS.labels("count").inc()
        log.error(
            "%d events are stored in %s, but not counted: %s",
            command.count,
            store.stream_key(*command.key),
            why,
        )
        self._finish(command)

    def _refused(self, command: _Command, err: ReplyError | None, stored: int = 0) -> None:
        command.flush.failed.add(command.key)
        metrics.REDIS_ERRORS.labels("command").inc()
        log.error(
            "Redis refused a write of %d events to %s (%d stored): %s",
            command.count,
            store.stream_key(*command.key),
            stored,
            err,
        )

    def _finish(self, command: _Command) -> None:
        flush = command.flush
        flush.outstanding -= 1
        if flush.outstanding:
            return
        self._flights -= 1
        self._pending -= flush.events
        metrics.observe_flush(flush.events, time.perf_counter() - flush.started)
        metrics.queue(self._pending, self._flights)
        result = frozenset(flush.failed) if flush.failed else NO_FAILURES
        for waiter in flush.waiters:
            if not waiter.done():
                waiter.set_result(result)
        self._kick.set()

    def _lost(self, pipe: RedisPipe | None, err: Exception) -> None:
        """The pipe is gone: the commands whose replies were not read are resent on the next one."""
        if pipe is None or pipe is not self._pipe:
            return  # a connection given up before (its commands were moved then), or never used
        log.error("Redis connection lost: %s", err)
        metrics.REDIS_ERRORS.labels("connection").inc()
        self._disconnect()
        unanswered = [c for c in self._sent if isinstance(c, _Command)]
        self._sent.clear()
        if unanswered:
            self._unsettled.extend(unanswered)
            self._lost_client, self._lost_run_id = pipe.client_id, pipe.run_id
            # Their retry window runs from now: until a settle has read the marks, failing them would
            # answer 503 for events that may be, or may yet be, stored.
            deadline = self._loop.time() + self._retry_window
            for command in unanswered:
                command.flush.deadline = max(command.flush.deadline, deadline)
        self._kick.set()

    def _arm_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._timeout, self._watch)

    def _watch(self) -> None:
        """A connection that answers nothing for `timeout` seconds while commands wait is lost."""
        self._watchdog = None
        if not self._sent or self._pipe is None:
            return
        idle = self._loop.time() - self._progress
        if idle >= self._timeout:
            self._lost(self._pipe, TimeoutError(f"no reply from Redis for {idle:.1f} s"))
        else:
            self._watchdog = self._loop.call_later(self._timeout - idle, self._watch)

    def _expire_resends(self) -> None:
        """Give up the commands whose flush has been retried for `retry_window` seconds: their requests
        fail, except where only the counting was left (the events are stored)."""
        now = self._loop.time()
        expired = [c for c in (*self._resend, *self._unsettled) if c.flush.deadline < now]
        if not expired:
            return
        self._resend = [c for c in self._resend if c.flush.deadline >= now]
        self._unsettled = [c for c in self._unsettled if c.flush.deadline >= now]
        log.error(
            "gave up on %d events after %g s of Redis errors",
            sum(c.count for c in expired),
            self._retry_window,
        )
        for command in expired:
            if command.count_only:
                metrics.REDIS_ERRORS.labels("count").inc()
            else:
                command.flush.failed.add(command.key)
            self._finish(command)

    def _fail_open_flush(self) -> None:
        """Requests queued while the connection was being made again: never sent, so certainly not
        stored; they fail now rather than wait for the outage to end."""
        flush = self._open
        if not flush.events:
            return
        self._open = _Flush()
        self._pending -= flush.events
        flush.fail("redis_unavailable")
        metrics.queue(self._pending, self._flights)

    def _fail_everything(self, reason: str) -> None:
        flushes = {id(c.flush): c.flush for c in (*self._resend, *self._unsettled)}
        flushes.update((id(c.flush), c.flush) for c in self._sent if isinstance(c, _Command))
        flushes[id(self._open)] = self._open
        self._resend = []
        self._unsettled = []
        self._sent.clear()
        self._flights = 0
        for flush in flushes.values():
            self._pending -= flush.events
            flush.events = 0
            flush.fail(reason)
        metrics.queue(self._pending, self._flights)
