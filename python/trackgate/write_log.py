"""What the batcher logs and counts of its writes' outcomes. Each kind of line is logged at most once a
second (once a minute for batches past a project's caps), the next one saying how many it stands for, so
an outage that refuses every write is a few lines, not one per write; /metrics counts every one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from trackgate import bounds, keys, metrics
from trackgate.flush import Command
from trackgate.redis_pipe import ReplyError
from trackgate.throttled_log import ThrottledLog

log = logging.getLogger("trackgate.batcher")  # the batcher's log, whichever of its modules writes

OVERFLOW_LOG_SECONDS: Final = 60.0
"""A flood of new names overflows batch after batch: one line a minute says so."""


def error_code(err: ReplyError | None) -> str:
    """A Redis error's code (OOM, WRONGTYPE, ERR, ...), the first word of its message: what the lines of
    the throttled log are kept apart by."""
    return str(err).split(" ", 1)[0]


class WriteLog:
    """One connection's: `node` names the Redis Cluster primary it writes to (None on one Redis), as
    /metrics labels its write time and errors."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.node: str | None = None
        self._errors = ThrottledLog(log, "like it", clock=clock)
        self._overflows = ThrottledLog(log, "overflowing batches", OVERFLOW_LOG_SECONDS, clock=clock)

    def duplicates(self, command: Command, found: int) -> None:
        """`found` of the command's events were duplicates. Counted alone, the function cannot tell their
        entries in the stream apart: there they stay, stored twice but counted once."""
        metrics.EVENTS_DEDUPLICATED.inc(found)
        if command.count_only:
            self._errors.warning(
                "duplicates kept",
                "%d events sent again are stored twice in %s: their batch's counting was resent alone "
                "(after a lost function library or connection), which counts them once but cannot take "
                "them out of the stream",
                found,
                _streams(command, keys.stream_key),
            )

    def counted(self, command: Command, reply: object) -> None:
        """tg_count's reply is [events counted, of them counted under the overflow name], then for a batch
        with profile updates [updates applied, new profile properties left out of full profiles]."""
        over = reply[1] if isinstance(reply, list) and len(reply) > 1 else 0
        left_out = reply[3] if isinstance(reply, list) and len(reply) > 3 else 0
        if left_out:
            metrics.PROFILE_PROPERTIES_REFUSED.inc(left_out)
            self._overflows.warning(
                "profile_full",
                "%d new properties left out of full profiles in %s: a profile holds at most %d "
                "(logged once every %g seconds)",
                left_out,
                _streams(command, keys.profile_updates_key),
                bounds.MAX_PROFILE_PROPERTIES,
                OVERFLOW_LOG_SECONDS,
            )
        if not over:
            return
        metrics.EVENTS_OVERFLOWED.inc(over)
        self._overflows.warning(
            "overflow",
            "%d events of %s counted as %s: the project is past its cap on event or funnel names "
            "(trackgate project set-caps); they are stored in full (logged once every %g seconds)",
            over,
            _streams(command, keys.stream_key),
            bounds.OVERFLOW,
            OVERFLOW_LOG_SECONDS,
        )

    def count_given_up(self, command: Command, why: str, kind: str) -> None:
        """Its events are stored, and answered as such; its counting is not tried again. `kind` keys the
        line: a Redis error's code, or the reason when Redis refused nothing."""
        metrics.REDIS_ERRORS.labels("count").inc()
        self._errors.error(
            "count:" + kind,
            "%d events are stored in %s, but not counted: %s",
            command.count,
            _streams(command, keys.stream_key),
            why,
        )

    def refused(
        self, command: Command, err: ReplyError | None, cause: ReplyError | None, stored: int
    ) -> None:
        """`err` is what Redis answered; `cause` the error that says why (its code keys the line)."""
        metrics.REDIS_ERRORS.labels("command").inc()
        if self.node is not None:
            metrics.NODE_ERRORS.labels(self.node, "command").inc()
        self._errors.error(
            "refused:" + error_code(cause),
            "Redis refused a write of %d events to %s (%d stored): %s",
            command.count,
            _streams(command, keys.stream_key),
            stored,
            err,
        )

    def not_replicated(self, events: int, why: str) -> None:
        metrics.REDIS_ERRORS.labels("replication").inc()
        self._errors.error(
            "replication", "%d events are answered 503, though they may be stored: %s", events, why
        )

    def connection_lost(self, err: Exception) -> None:
        log.error("Redis connection lost%s: %s", "" if self.node is None else f" ({self.node})", err)
        metrics.REDIS_ERRORS.labels("connection").inc()
        if self.node is not None:
            metrics.NODE_ERRORS.labels(self.node, "connection").inc()

    def flush_written(self, events: int, seconds: float) -> None:
        metrics.observe_flush(events, seconds)
        if self.node is not None:
            metrics.NODE_WRITE_SECONDS.labels(self.node).observe(seconds)


NAMED_STREAMS: Final = 3
"""How many of a command's streams a log line names (a batch may hold hundreds of projects')."""


def _streams(command: Command, stream: Callable[[str, int], str]) -> str:
    """The streams of a command's projects (`stream`: the family's key builder), the first few named."""
    names = [stream(section.token, command.key) for section in command.sections[:NAMED_STREAMS]]
    more = len(command.sections) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")
