"""A log that writes a kind of line at most once an interval: an outage or a misbehaving client repeats
the same line thousands of times a second, which would bury the log. The next line of a kind says how
many were left out; the metrics count them all."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class ThrottledLog:
    """Lines of one kind (`key`) go to `logger` at most once per `interval` seconds of `clock`; `what`
    names the lines left out in the note the next one carries ("(and 4 more <what> since its last
    line)").

    With `max_keys`, for kinds that come from clients (an attacker's million paths), at most that many
    kinds are remembered, and one more that the others share: a kind whose interval has passed is
    forgotten (with the count of its lines left out) to make room, and while every place is taken, new
    kinds are logged as one, `OVERFLOW`."""

    OVERFLOW = "\0overflow"

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int | None = None,
    ) -> None:
        self._logger = logger
        self._what = what
        self._interval = interval
        self._clock = clock
        self._max_keys = max_keys
        # In the order of their next line, oldest first: each kind logged moves to the end.
        self._next: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        now = self._clock()
        max_keys = self._max_keys
        if max_keys is not None and key not in self._next and len(self._next) >= max_keys:
            key = self._make_room(now, key, max_keys)
        if now < self._next.get(key, -float("inf")):
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return
        self._next.pop(key, None)
        self._next[key] = now + self._interval
        left_out = self._left_out.pop(key, 0)
        if left_out:
            message += f" (and %d more {self._what} since its last line)"
            args = (*args, left_out)
        self._logger.log(level, message, *args)

    def __len__(self) -> int:
        """The kinds of lines remembered (at most `max_keys`, and `OVERFLOW`)."""
        return len(self._next)

    def _make_room(self, now: float, key: str, max_keys: int) -> str:
        """Forget the kinds whose interval has passed; `key` itself when that made room, else OVERFLOW."""
        while self._next:
            due = next(iter(self._next))
            if self._next[due] > now:
                break
            del self._next[due]
            self._left_out.pop(due, None)
        return key if len(self._next) < max_keys else self.OVERFLOW

    def warning(self, key: str, message: str, *args: object) -> None:
        self.log(logging.WARNING, key, message, *args)

    def error(self, key: str, message: str, *args: object) -> None:
        self.log(logging.ERROR, key, message, *args)
