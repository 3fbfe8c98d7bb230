"""The batcher's writes on their way (see `batcher.py`): the connection they go out on, the commands
whose replies are awaited, the flushes they finish, and what becomes of the commands of a lost connection
(decided in `recovery.py`, carried out here).

Replies are matched to commands by order alone: Redis answers a connection's commands in the order they
were sent. The handlers of replies and of a lost connection are called by the connection and never
await; the batcher's writing task does the waiting, woken by `wake`.

With a durability of `replicas=N` (`durability.py`) each write ends with a WAIT, and the commands of
the write that stored events are answered by its reply, not their own: as stored when N replicas have
them, as failed otherwise. Commands the settle after a lost connection finds stored wait likewise, for a
WAIT sent after a write of their partitions' marks (a WAIT covers the connection's own writes only, and
the marks' EXPIRE makes one past everything they say). Commands waiting for a WAIT when the connection
is lost are settled again, as those whose replies were not read.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

from trackgate import keys, metrics, recovery, store
from trackgate.durability import LOCAL, Durability
from trackgate.flush import Command, Flush, Key, Unavailable
from trackgate.packing import Packer, library_loaded
from trackgate.recovery import Action, Decision, Mark, Sent
from trackgate.redis_pipe import Connection, ReplyError, pack
from trackgate.write_log import WriteLog, error_code

log = logging.getLogger("trackgate.batcher")  # the batcher's log, whichever of its modules writes

FAILING_FOR: Final = 10.0
"""Seconds after a refused or given-up write during which the write path counts as failing (the worker
is not ready), unless a write succeeds first: long enough to span the gaps between a client's retries."""


REDIRECTS: Final = frozenset({"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"})
"""The codes of a Redis Cluster node refusing a command as not its own to run now: a transaction refused
with one, when queued, was not applied at all (EXECABORT), so it can go again to the slot's owner.
Writes to a slot being migrated are sent again, not with ASKING: the function touches keys of the
partition that its call does not declare, so the node importing the slot would answer TRYAGAIN."""


def is_redirect(err: ReplyError) -> bool:
    """Whether a Redis Cluster node refused the command as not its own to run now."""
    return error_code(err) in REDIRECTS


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the batcher times its waits with: the event loop's `time` and `call_later`."""

    def time(self) -> float: ...
    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer: ...


class _LoadLibrary:
    """FUNCTION LOAD sent ahead of the commands Redis refused for want of the library."""

    __slots__ = ()


_LOAD: Final = _LoadLibrary()


class _Wait:
    """WAIT sent after a write: the commands answered before its reply wait for it."""

    __slots__ = ()


_WAIT: Final = _Wait()
_NO_COMMANDS: Final[list[Command]] = []


class Pipeline:
    """`pending`: events accepted and not finished; `flights`: flushes sent and not finished (answered,
    or failed); `resend`: commands to send again, `unsettled`: those of a lost connection that Redis may
    have applied, with that connection's id and the Redis process it was in (`lost_client`,
    `lost_run_id`)."""

    def __init__(
        self,
        packer: Packer,
        clock: Clock,
        *,
        timeout: float,
        retry_window: float,
        wake: Callable[[], None],
        follows_redirects: bool = False,
        durability: Durability = LOCAL,
    ) -> None:
        self._packer = packer
        self._follows_redirects = follows_redirects
        self._durability = durability
        self._clock = clock
        self._timeout = timeout
        self._retry_window = retry_window
        self._wake = wake
        self.pipe: Connection | None = None
        self.pending = 0
        self.flights = 0
        self._sent: deque[Command | _LoadLibrary | _Wait] = deque()  # replies awaited, in send order
        self._unreplicated: list[Command] = []  # answered by Redis, waiting for the next WAIT's reply
        self.resend: list[Command] = []
        self.unsettled: list[Command] = []
        self.lost_client: int | None = None
        self.lost_run_id: bytes | None = None
        self._progress = 0.0  # when the pipe last answered, or was first waited on
        self._watchdog: Timer | None = None
        # Why the last write failed, and when; cleared by the next write that succeeds.
        self._failure: str | None = None
        self._failed_at = 0.0
        self._log = WriteLog(clock.time)

    # Sending

    def send_flush(self, flush: Flush) -> None:
        flush.started = time.perf_counter()
        flush.deadline = self._clock.time() + self._retry_window
        self.flights += 1
        commands = flush.commands()
        flush.outstanding = len(commands)
        metrics.queue(self.pending, self.flights)
        self._write(commands)

    def send_resends(self) -> None:
        """Commands of a lost connection go first, in their order; FCALLs refused for a missing library
        follow a FUNCTION LOAD."""
        resend, self.resend = self.resend, []
        kept = sorted((c for c in resend if not c.reload), key=lambda c: c.seq)
        reload = [c for c in resend if c.reload]
        for command in reload:
            command.reload = False
        self._write(kept, reload)

    def _write(self, commands: list[Command], after_load: list[Command] = _NO_COMMANDS) -> None:
        pipe = self.pipe
        assert pipe is not None
        data, skips = self._packer.write(commands, after_load)
        self._await_replies()
        sent = self._sent
        sent.extend(commands)
        if after_load:
            sent.append(_LOAD)
            sent.extend(after_load)
        pipe.write(data, skips)
        if self._durability.replicas:
            sent.append(_WAIT)
            pipe.write(self._durability.wait, [0])

    def _await_replies(self) -> None:
        """Before a write: the watchdog times the pipe from its first reply awaited."""
        if not self._sent:
            self._progress = self._clock.time()
            self._arm_watchdog()

    # Replies, in send order

    def on_reply(self, reply: Any) -> None:
        if self.pipe is None:
            return  # the pipe was given up while its replies were being read: its commands are settled
        self._progress = self._clock.time()
        item = self._sent[0]
        if item is _WAIT:
            self._sent.popleft()
            self._replicated(reply)
            return
        if item is _LOAD:
            self._sent.popleft()
            if library_loaded(reply):
                log.warning("loaded the trackgate function library again")
            return
        assert isinstance(item, Command)
        self._sent.popleft()
        if item.count_only:
            self._counted(item, reply)
            return
        if isinstance(reply, ReplyError) or reply is None:
            # EXECABORT: a command was refused when queued; the pipe kept why.
            pipe = self.pipe
            passed = pipe.passed_error if pipe is not None else None
            if pipe is not None:
                pipe.passed_error = None
            if passed is None:
                self._refused(item, reply, reply)
            else:
                self._refused(item, ReplyError(f"{reply} ({passed})"), passed)
        else:
            # EXEC's replies: the mark's, one per XADD, the FCALL's. Their types are looked at in C (map,
            # set), not by a Python loop over the events; the XADDs' are read one by one only on an error.
            added = reply[store.MARK_REPLIES : -1]
            if ReplyError in set(map(type, added)):
                failed = [r for r in added if isinstance(r, ReplyError)]
                self._refused(item, failed[0], failed[0], stored=item.count - len(failed))
            else:
                if not self._durability.replicas:
                    self._failure = None  # else once a WAIT confirms it
                counted = reply[-1]
                if isinstance(counted, ReplyError):
                    metrics.count_stored(item.count, deduplicated=False)
                    self._count_failed(item, counted)
                    return
                metrics.count_stored(item.count - self._duplicates(item, counted), deduplicated=False)
                self._log.counted(item, counted)
        self._written(item)

    def _counted(self, item: Command, reply: Any) -> None:
        """The reply to a FCALL sent alone, for a batch whose events are stored."""
        if isinstance(reply, ReplyError):
            self._count_failed(item, reply)
            return
        self._duplicates(item, reply)
        self._log.counted(item, reply)
        self._written(item)

    @property
    def node(self) -> str | None:
        """The Redis Cluster primary written to (`host:port`), as /metrics and the log name it."""
        return self._log.node

    @node.setter
    def node(self, node: str) -> None:
        self._log.node = node

    def _duplicates(self, item: Command, reply: Any) -> int:
        """tg_count's fifth reply, with deduplication: the batch's entries that were duplicates, each
        reported to its request."""
        if not (isinstance(reply, list) and len(reply) > 4 and reply[4]):
            return 0
        entries: list[int] = reply[4]
        item.flush.found_duplicates(item.key, entries)
        self._log.duplicates(item, len(entries))
        return len(entries)

    def _count_failed(self, item: Command, err: ReplyError) -> None:
        item.count_only = True
        self.carry_out(item, recovery.after_counting_refused(err, item.reloads), refusal=err)

    def _count_given_up(self, command: Command, why: str, kind: str) -> None:
        """Its events are stored, and answered as such; its counting is not tried again."""
        self._log.count_given_up(command, why, kind)
        self._written(command)

    def _refused(
        self, command: Command, err: ReplyError | None, cause: ReplyError | None, stored: int = 0
    ) -> None:
        """`err` is what Redis answered; `cause` the error that says why (its code names the kind of
        line in the log)."""
        code = error_code(cause)
        if code in REDIRECTS and not stored:
            metrics.REDIRECTS.labels(code).inc()
            if self._follows_redirects:
                command.flush.redirected.add(command.key)
                return
        command.flush.failed.add(command.key)
        self._write_failed(str(err))
        self._log.refused(command, err, cause, stored)
        if code == "READONLY":
            # A primary demoted under the connection (a Sentinel failover): the next connection asks
            # which node is the primary now.
            self.lost(self.pipe, ConnectionError(f"Redis is a replica now: {cause}"))

    def _write_failed(self, why: str) -> None:
        self._failure = why
        self._failed_at = self._clock.time()

    def failing(self) -> str | None:
        """Why writes are failing: the last one failed (refused, or given up) within FAILING_FOR seconds
        and none succeeded since; None when they are not."""
        if self._failure is not None and self._clock.time() - self._failed_at < FAILING_FOR:
            return self._failure
        return None

    def _written(self, command: Command) -> None:
        """A command Redis has answered, or a settle found applied: with `replicas=N` it waits for the
        next WAIT's reply, unless it failed anyway or was not the node's to store (a cluster's
        redirect)."""
        flush = command.flush
        if self._durability.replicas and not (command.key in flush.failed or command.key in flush.redirected):
            self._unreplicated.append(command)
        else:
            self._finish(command)

    def _replicated(self, reply: Any) -> None:
        """A WAIT's reply: the commands answered before it are stored, or fail for want of replicas."""
        waiting, self._unreplicated = self._unreplicated, []
        durability = self._durability
        if durability.confirmed(reply):
            self._failure = None
        elif waiting:
            why = durability.shortfall(reply)
            self._write_failed(why)
            self._log.not_replicated(sum(c.count for c in waiting), why)
            for command in waiting:
                command.flush.failed.add(command.key)
        for command in waiting:
            self._finish(command)

    def _finish(self, command: Command) -> None:
        flush = command.flush
        flush.outstanding -= 1
        if flush.outstanding:
            return
        self.flights -= 1
        self.pending -= flush.events
        self._log.flush_written(flush.events, time.perf_counter() - flush.started)
        metrics.queue(self.pending, self.flights)
        flush.answer()
        self._wake()

    # A lost connection, and what its commands become

    def lost(self, pipe: Connection | None, err: Exception) -> None:
        """The pipe is gone: the commands whose replies were not read are resent on the next one."""
        if pipe is None or pipe is not self.pipe:
            return  # a connection given up before (its commands were moved then), or never used
        self._log.connection_lost(err)
        self.disconnect()
        # Those waiting for a WAIT are in Redis, but maybe on no replica: settled like the others.
        unanswered = [*self._unreplicated, *(c for c in self._sent if isinstance(c, Command))]
        self._unreplicated = []
        self._sent.clear()
        if unanswered:
            self.unsettled.extend(unanswered)
            self.lost_client, self.lost_run_id = pipe.client_id, pipe.run_id
            # Their retry window runs from now: until a settle has read the marks, failing them would
            # answer 503 for events that may be, or may yet be, stored.
            deadline = self._clock.time() + self._retry_window
            for command in unanswered:
                command.flush.deadline = max(command.flush.deadline, deadline)
        self._wake()

    def disconnect(self) -> None:
        pipe, self.pipe = self.pipe, None
        if pipe is not None:
            pipe.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _arm_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = self._clock.call_later(self._timeout, self._watch)

    def _watch(self) -> None:
        """A connection that answers nothing for `timeout` seconds while commands wait is lost."""
        self._watchdog = None
        if not self._sent or self.pipe is None:
            return
        idle = self._clock.time() - self._progress
        if idle >= self._timeout:
            self.lost(self.pipe, TimeoutError(f"no reply from Redis for {idle:.1f} s"))
        else:
            self._watchdog = self._clock.call_later(self._timeout - idle, self._watch)

    def settled(self, unsettled: list[Command], rings: dict[Key, dict[int, bool]]) -> None:
        """The marks of the unsettled commands are read (`rings`, per partition): each is carried out."""
        self.unsettled, self.lost_client, self.lost_run_id = [], None, None
        now = self._clock.time()
        for command in unsettled:
            mark = Mark.read(rings[command.key], command.seq)
            sent, deadline = Sent.of(command.count_only), command.flush.deadline
            self.carry_out(command, recovery.after_loss(sent, mark, now=now, deadline=deadline))
        if self._unreplicated:
            self._wait_for_replicas(self._unreplicated)

    def _wait_for_replicas(self, stored: list[Command]) -> None:
        """WAIT for commands found stored, after a write of their marks: a connection's WAIT counts only
        its own writes, and the EXPIRE (of a key that exists: each holds a stored batch) is one made
        after everything the marks showed."""
        writer = self._packer.writer
        marks = sorted({keys.mark_key(c.key, writer) for c in stored})
        touch = b"".join(pack("EXPIRE", mark, store.MARK_SECONDS) for mark in marks)
        pipe = self.pipe
        if pipe is None:
            # Lost since the marks were read: nothing can confirm these now, and they are not resent.
            self._replicated(ConnectionError("the Redis connection was lost before WAIT"))
            return
        self._await_replies()
        self._sent.append(_WAIT)
        pipe.write(touch + self._durability.wait, [len(marks)])

    def carry_out(self, command: Command, decision: Decision, refusal: ReplyError | None = None) -> None:
        """`refusal`: the error Redis answered the command with, if that is what the decision is on."""
        action = decision.action
        if decision.found_stored:
            metrics.count_stored(command.count, deduplicated=True)
        if action is Action.STORED:
            self._written(command)
        elif action is Action.RESEND:
            self._packer.number(command)
            self.resend.append(command)
        elif action is Action.RESEND_COUNTING:
            command.count_only = True
            self.resend.append(command)
        elif action is Action.RELOAD_AND_RESEND_COUNTING:
            command.count_only = True
            command.reloads += 1
            command.reload = True
            self.resend.append(command)
            self._wake()
        elif action is Action.GIVE_UP_COUNTING:
            kind = decision.reason if refusal is None else error_code(refusal)
            self._count_given_up(command, decision.reason, kind)
        elif action is Action.FAIL:
            command.flush.failed.add(command.key)
            self._finish(command)

    def expire(self) -> None:
        """Give up the commands whose flush has been retried for `retry_window` seconds: their requests
        fail, except where only the counting was left (the events are stored)."""
        now = self._clock.time()
        expired: list[tuple[Command, Decision]] = []

        def waiting(commands: list[Command]) -> list[Command]:
            kept = []
            for command in commands:
                sent, deadline = Sent.of(command.count_only), command.flush.deadline
                decision = recovery.after_loss(sent, Mark.UNREAD, now=now, deadline=deadline)
                if decision.action is Action.WAIT:
                    kept.append(command)
                else:
                    expired.append((command, decision))
            return kept

        self.resend = waiting(self.resend)
        self.unsettled = waiting(self.unsettled)
        if not expired:
            return
        log.error(
            "gave up on %d events after %g s of Redis errors",
            sum(c.count for c, _ in expired),
            self._retry_window,
        )
        for command, decision in expired:
            # With replicas=N a counting given up fails too: no WAIT has confirmed its stored events.
            if decision.action is Action.FAIL or self._durability.replicas:
                self._write_failed(f"gave up after {self._retry_window:g} s of Redis errors")
                command.flush.failed.add(command.key)
            else:
                metrics.REDIS_ERRORS.labels("count").inc()
            self._finish(command)

    # Failing without Redis' word

    def fail_unsent(self, flush: Flush, reason: Unavailable) -> None:
        """A flush that was never sent, so is certainly not stored, fails."""
        self.pending -= flush.events
        flush.fail(reason)
        metrics.queue(self.pending, self.flights)

    def fail_everything(self, reason: Unavailable, open_flush: Flush) -> None:
        flushes = {id(c.flush): c.flush for c in (*self.resend, *self.unsettled)}
        flushes.update((id(c.flush), c.flush) for c in self._sent if isinstance(c, Command))
        flushes[id(open_flush)] = open_flush
        self.resend = []
        self.unsettled = []
        self._sent.clear()
        self.flights = 0
        for flush in flushes.values():
            self.pending -= flush.events
            flush.events = 0
            flush.fail(reason)
        metrics.queue(self.pending, self.flights)
