"""Reading a request's body: bounded by the request limit, by the worker's budget of body bytes in flight,
and by a deadline for its arrival."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

from trackgate.rsgi import HTTPProtocol, PendingRead


class BodyTimeoutError(Exception):
    """The body did not arrive within the deadline."""


class BodyTooLargeError(Exception):
    """The body is over the request limit."""


class BodyBudgetError(Exception):
    """The body would take the worker over its budget of body bytes in flight."""


class BodyBudget:
    """The bytes of request bodies a worker holds at once, up to `limit`.

    Each request's body stays in memory, with what is decoded from it, until the request is answered;
    without a bound, many large uploads at once take a worker's memory as far as the requests in flight
    times the request limit. A body is counted before it is read when its length is announced, else as
    its chunks arrive; its bytes are given back when its request is answered."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def claim(self) -> BodyClaim:
        return BodyClaim(self)


class BodyClaim:
    """One request's bytes of the budget."""

    __slots__ = ("_budget", "held")

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.held = 0

    def take(self, size: int) -> bool:
        """Count `size` more bytes; False, counting nothing, when the budget has not that many left."""
        budget = self._budget
        if budget.held + size > budget.limit:
            return False
        budget.held += size
        self.held += size
        return True

    def release(self) -> None:
        self._budget.held -= self.held
        self.held = 0


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
    proto: HTTPProtocol, length: str | None, limit: int, deadlines: BodyDeadlines, claim: BodyClaim
) -> bytes:
    """The body, counted in `claim`. Refused before it is all in memory: BodyTooLargeError when it is over
    `limit` bytes, BodyBudgetError when the worker's budget has no room for it (an announced length is
    refused before any of the body is read). Raises BodyTimeoutError when the deadline sweep cancelled
    the read, and Granian's ProtocolClosed when the client left before its body arrived (a chunked body
    cut short arrives as a shorter body instead)."""
    if length is not None and length.isdigit():
        size = int(length)
        if size > limit:
            raise BodyTooLargeError
        if not claim.take(size):
            raise BodyBudgetError
    read = deadlines.begin()
    try:
        if length is not None:
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
                raise BodyTooLargeError
            if not claim.take(len(chunk)):
                raise BodyBudgetError
            chunks.append(chunk)
        return b"".join(chunks)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not read.expired or (task is not None and task.cancelling()):
            raise  # not (only) the deadline: the request itself is being cancelled
        raise BodyTimeoutError from None
    finally:
        deadlines.end(read)
