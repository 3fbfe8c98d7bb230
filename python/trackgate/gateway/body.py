"""Reading a request's body: bounded by the request limit, and by a deadline for its arrival."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

from trackgate.rsgi import HTTPProtocol, PendingRead


class BodyTimeoutError(Exception):
    """The body did not arrive within the deadline."""


class BodyRead:
    """One request's body on its way in: when it began, the read Granian has pending (cancelling it wakes
    the handler with CancelledError), and whether its deadline passed."""

    __slots__ = ("expired", "pending", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.pending: PendingRead | None = None
        self.expired = False


class BodyDeadlines:
    """The bodies still arriving, and a sweep that cancels the reads of those past `timeout`.

    One sweep every SWEEP_SECONDS instead of a timer per request: `asyncio.timeout` makes and cancels a
    timer for every request, a cost the size of a small request's own. A body may so take up to
    SWEEP_SECONDS longer than the timeout. The pending read is cancelled, not the request's task: with
    Granian's Rust task implementation every request shares one task object, whose cancel() does
    nothing. The clock is passed in, so that tests need not wait."""

    SWEEP_SECONDS: Final = 0.5

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._clock = clock
        self._reading: set[BodyRead] = set()

    def begin(self) -> BodyRead:
        read = BodyRead(self._clock())
        self._reading.add(read)
        return read

    def end(self, read: BodyRead) -> None:
        self._reading.discard(read)

    def sweep(self) -> None:
        cutoff = self._clock() - self.timeout
        for read in [r for r in self._reading if r.started <= cutoff]:
            self._reading.discard(read)
            read.expired = True
            if read.pending is not None:
                read.pending.cancel()

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.SWEEP_SECONDS)
            self.sweep()


async def read_body(
    proto: HTTPProtocol, length: str | None, limit: int, deadlines: BodyDeadlines
) -> bytes | None:
    """The body, or None when it is over `limit` bytes (refused before it is all in memory). Raises
    BodyTimeoutError when the deadline sweep cancelled the read, and Granian's ProtocolClosed when the client
    left before its body arrived (a chunked body cut short arrives as a shorter body instead)."""
    read = deadlines.begin()
    try:
        if length is not None:
            if length.isdigit() and int(length) > limit:
                return None
            read.pending = proto()
            return await read.pending
        # Chunked: no length announced, so count while reading.
        chunks = []
        size = 0
        stream = proto.__aiter__()
        while True:
            try:
                read.pending = stream.__anext__()
                chunk = await read.pending
            except StopAsyncIteration:
                break
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not read.expired or (task is not None and task.cancelling()):
            raise  # not (only) the deadline: the request itself is being cancelled
        raise BodyTimeoutError from None
    finally:
        deadlines.end(read)
