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
    line)")."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._what = what
        self._interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        now = self._clock()
        if now < self._next.get(key, -float("inf")):
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return
        self._next[key] = now + self._interval
        left_out = self._left_out.pop(key, 0)
        if left_out:
            message += f" (and %d more {self._what} since its last line)"
            args = (*args, left_out)
        self._logger.log(level, message, *args)

    def warning(self, key: str, message: str, *args: object) -> None:
        self.log(logging.WARNING, key, message, *args)

    def error(self, key: str, message: str, *args: object) -> None:
        self.log(logging.ERROR, key, message, *args)
